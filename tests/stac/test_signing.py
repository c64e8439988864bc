"""Planetary Computer signing against a real token endpoint on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from las_builder.stac.signing import PlanetaryComputerSigner, SigningError, make_signer

BLOB = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/58/U/FE/B02_10m.tif"


@pytest.fixture()
def token_server() -> Iterator[tuple[str, list[str]]]:
    requests_seen: list[str] = []
    expiry = {"value": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            requests_seen.append(self.path)
            if "broken" in self.path:
                self.send_response(503)
                self.end_headers()
                return
            body = json.dumps(
                {
                    "token": f"sv=2021&sig=SECRET{len(requests_seen)}",
                    "msft:expiry": expiry["value"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/token/{{collection}}", requests_seen
    finally:
        server.shutdown()


def test_blob_hrefs_are_signed_once_per_collection(token_server: tuple[str, list[str]]) -> None:
    url, seen = token_server
    sign = PlanetaryComputerSigner(url)
    first = sign(BLOB, "sentinel-2-l2a")
    second = sign(BLOB.replace("B02", "B03"), "sentinel-2-l2a")
    assert first == f"{BLOB}?sv=2021&sig=SECRET1"
    assert second.endswith("?sv=2021&sig=SECRET1")
    assert seen == ["/token/sentinel-2-l2a"]
    sign(BLOB, "naip")
    assert seen[-1] == "/token/naip"


def test_other_hrefs_pass_unchanged(token_server: tuple[str, list[str]]) -> None:
    url, seen = token_server
    sign = PlanetaryComputerSigner(url)
    assert (
        sign("http://127.0.0.1:9/assets/x.tif", "sentinel-2-l2a")
        == "http://127.0.0.1:9/assets/x.tif"
    )
    assert sign(f"{BLOB}?already=signed", "sentinel-2-l2a") == f"{BLOB}?already=signed"
    assert seen == []
    assert make_signer("none")(BLOB, "sentinel-2-l2a") == BLOB


def test_expired_tokens_are_refreshed(token_server: tuple[str, list[str]]) -> None:
    url, seen = token_server
    sign = PlanetaryComputerSigner(url)
    sign(BLOB, "sentinel-2-l2a")
    token, _ = sign._tokens["sentinel-2-l2a"]
    sign._tokens["sentinel-2-l2a"] = (token, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
    assert sign(BLOB, "sentinel-2-l2a").endswith("SECRET2")
    assert len(seen) == 2


def test_token_failure_names_the_url(token_server: tuple[str, list[str]]) -> None:
    url, _ = token_server
    sign = PlanetaryComputerSigner(url.replace("/token/", "/broken/"))
    with pytest.raises(SigningError, match=r"127\.0\.0\.1.*/broken/sentinel-2-l2a.*503"):
        sign(BLOB, "sentinel-2-l2a")


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="'none' or 'planetary-computer'"):
        make_signer("aws")
