"""Attacks on the security rules, against the served world and loopback servers.

Asset hrefs that try to escape ``check_href`` (case, encoding, ``..``, symlinks, GDAL paths and
connection strings), asset files that make GDAL read other files (a VRT), redirects, a SAS
token sent to the wrong host, credentials in STAC and collection URLs, and YAML bombs.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from faultkit import ROOT, Proxied, build_args, world_items
from proxy import Fault
from typer.testing import CliRunner

from las_builder.build.read import DatasetCache, ReadError
from las_builder.catalog import CatalogError, load_label_product
from las_builder.catalog.yamlio import load_yaml
from las_builder.cli import app
from las_builder.model.truth import TRUTH_COLLECTION, truth_items
from las_builder.recipe import RecipeError, load_recipe
from las_builder.security import (
    MAX_YAML_CHARS,
    HrefRefused,
    check_href,
    redact,
)
from las_builder.stac.signing import PlanetaryComputerSigner, SigningError

# Credentials an attacker (or a careless URL) puts where they could leak.
URL_USER, URL_PASSWORD, URL_TOKEN = "stacuser", "StacPassw0rdSecret", "UrlToken0Secret0123"
SAS_TOKEN = "sv=2024-05-04&sp=r&sig=SignerToken0Secret0XYZ%3D"
SUBSCRIPTION_KEY = "Subscription0Key0Secret0456"
LEAKS = (URL_PASSWORD, URL_TOKEN, "SignerToken0Secret0XYZ", SUBSCRIPTION_KEY)
SECRET_VALUE = 42  # the pixel value of the raster outside the allowed roots


def _raster(path: Path, value: int) -> Path:
    profile = {
        "driver": "GTiff",
        "width": 64,
        "height": 64,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(10, 0, 400_000, 0, -10, 5_000_000),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, 64, 64), value, "uint8"))
    return path


def _vrt(path: Path, source: str) -> Path:
    """A VRT, georeferenced like :func:`_raster`, whose one band is read from ``source``."""
    path.write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32633</SRS>'
        "<GeoTransform>400000, 10, 0, 5000000, 0, -10</GeoTransform>"
        '<VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{source}</SourceFilename>'
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    return path


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """An allowed root (with a good raster) and a folder outside it (with a secret raster)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    _raster(root / "good.tif", 7)
    _raster(outside / "secret.tif", SECRET_VALUE)
    monkeypatch.setenv("LAS_ALLOWED_FILE_ROOTS", str(root))
    return root, outside


class _Server:
    """A loopback HTTP server answering ``routes[path] -> (status, headers, body)``."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                self._answer()

            def do_GET(self) -> None:  # noqa: N802
                self._answer()

            def _answer(self) -> None:
                server.requests.append(self.path)
                status, headers, body = server.routes.get(self.path.split("?")[0], (404, {}, b""))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    served = _Server()
    try:
        yield served
    finally:
        served.stop()


# ------------------------------------------------------------------------------- hrefs


@pytest.mark.parametrize(
    ("href", "why"),
    [
        ("FILE:///etc/passwd", "outside the allowed roots"),
        ("{root}/../outside/secret.tif", "outside the allowed roots"),
        ("file://{root}/%2e%2e/outside/secret.tif", "outside the allowed roots"),
        ("file://{root}/%2E%2E/%2e%2E/%2e%2e/etc/passwd", "outside the allowed roots"),
        ("{root}/link.tif", "outside the allowed roots"),  # a symlink out of the root
        ("{root}\\..\\outside\\secret.tif", "outside the allowed roots"),  # a file name
        ("/VSICURL/http://127.0.0.1:9/a.tif", "virtual file system|outside the allowed"),
        ("/vsistdin/", "virtual file system"),
        ("/vsis3/bucket/a.tif", "virtual file system"),
        ("/vsizip/{root}/a.zip/a.tif", "virtual file system"),
        ("vrt:///etc/passwd", "scheme vrt:// is not allowed"),
        ("vrt://{root}/good.tif?bands=1", "scheme vrt:// is not allowed"),
        ("GTIFF_DIR:1:/etc/passwd", "outside the allowed roots"),
        ("NETCDF:/etc/passwd:band", "scheme netcdf:// is not allowed"),
        ("zip+https://host/a.zip!a.tif", "scheme zip\\+https:// is not allowed"),
        ("gs://bucket/a.tif", "scheme gs:// is not allowed"),
        ("data:image/tiff;base64,SUkqAA==", "scheme data:// is not allowed"),
        ("https:/vsicurl/x", "needs a host"),
        ("good.tif", "outside the allowed roots"),  # relative: the working folder's
    ],
)
def test_hrefs_escaping_the_rules_are_refused(
    roots: tuple[Path, Path], href: str, why: str
) -> None:
    root, outside = roots
    (root / "link.tif").symlink_to(outside / "secret.tif")
    with pytest.raises(HrefRefused, match=why):
        check_href(href.format(root=root))


@pytest.mark.parametrize("href", ["//vsicurl/http://127.0.0.1:9/a.tif", "/./vsis3/b/a.tif"])
def test_a_path_that_resolves_to_a_gdal_virtual_path_is_refused(href: str) -> None:
    # With "/" allowed (a careless setting), such a path would reach GDAL as /vsicurl/...
    with pytest.raises(HrefRefused, match="virtual file system"):
        check_href(href, roots=[Path("/")])


def test_scheme_case_and_encoding_do_not_change_what_is_allowed(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    good = str((root / "good.tif").resolve())
    assert check_href("HTTP://127.0.0.1:9/a.tif") == "HTTP://127.0.0.1:9/a.tif"
    assert check_href("FILE://" + good) == good
    assert check_href("file://" + good.replace("good", "%67ood")) == good
    # A credential in an allowed URL is read as the catalog wrote it, but never shown.
    href = f"https://{URL_USER}:{URL_PASSWORD}@127.0.0.1:9/a.tif?{SAS_TOKEN}"
    assert check_href(href) == href
    with pytest.raises(HrefRefused) as refused:
        check_href(href.replace("https", "gs"))
    assert URL_PASSWORD not in str(refused.value) and "sig=" not in str(refused.value)


def test_a_vrt_under_an_allowed_root_is_not_followed(roots: tuple[Path, Path]) -> None:
    """A VRT passes check_href (it lies under the root) but names a file outside it."""
    root, outside = roots
    for name in ("evil.vrt", "evil.tif"):  # the name does not matter to GDAL
        _vrt(root / name, str(outside / "secret.tif"))
        cache = DatasetCache()
        try:
            with (
                pytest.raises(ReadError, match=f"{name}: not a GeoTIFF or JPEG 2000"),
                cache.borrow(str(root / name)),
            ):
                pass
        finally:
            cache.close()
    cache = DatasetCache()
    try:
        with cache.borrow(str(root / "good.tif")) as (ds,):
            assert ds.driver == "GTiff" and ds.read(1)[0, 0] == 7
    finally:
        cache.close()


def test_a_vrt_served_over_http_is_not_followed(
    proxies: Proxied, roots: tuple[Path, Path], tmp_path: Path
) -> None:
    """The asset server answers a VRT naming a local file and another URL: neither is read."""
    _, outside = roots
    for source in (str(outside / "secret.tif"), f"/vsicurl/{proxies.assets.url}other.tif"):
        vrt = _vrt(tmp_path / "served.vrt", source)
        proxies.assets.set_faults(
            [
                Fault(r"/evil\.tif", "file", path=vrt),
                Fault(r"/other\.tif", "file", path=outside / "secret.tif"),
            ]
        )
        cache = DatasetCache()
        try:
            with (
                pytest.raises(ReadError, match="evil.tif: not a GeoTIFF or JPEG 2000"),
                cache.borrow(f"{proxies.assets.url}evil.tif?g={time.monotonic_ns()}"),
            ):
                pass
        finally:
            cache.close()
        assert proxies.assets.count("file", r"/evil\.tif") >= 1  # it was fetched ...
        assert proxies.assets.count("file", r"/other\.tif") == 0  # ... and not followed


def test_a_redirect_to_a_local_file_is_not_followed(
    server: _Server, roots: tuple[Path, Path]
) -> None:
    _, outside = roots
    server.routes["/a.tif"] = (302, {"Location": (outside / "secret.tif").as_uri()}, b"")
    cache = DatasetCache()
    try:
        with (
            pytest.raises(ReadError, match=r"a\.tif.*(302|file)"),
            cache.borrow(server.url + "a.tif"),
        ):
            pass
    finally:
        cache.close()
    assert any(r.startswith("/a.tif") for r in server.requests)


def test_truth_hrefs_of_a_stac_api_are_checked(proxies: Proxied) -> None:
    """``las eval --truth URL`` opened whatever the truth items named."""
    ids = [
        i
        for i, item in world_items(proxies.world).items()
        if item.get("collection") == TRUTH_COLLECTION
    ]
    assert ids
    assert len(truth_items(proxies.stac.url)) == len(ids)  # as served: readable
    proxies.edits[ids[0]] = {"truth": "/etc/passwd"}
    with pytest.raises(ValueError, match=f"truth item '{ids[0]}'.*refused.*local file"):
        truth_items(proxies.stac.url)
    proxies.edits[ids[0]] = {"truth": "/vsicurl/http://127.0.0.1:9/t.tif"}
    with pytest.raises(ValueError, match="virtual file system"):
        truth_items(proxies.stac.url)


# --------------------------------------------------------------------------- credentials


def _token_server(server: _Server, status: int = 200) -> str:
    expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    body = json.dumps({"token": SAS_TOKEN, "msft:expiry": expiry}).encode()
    server.routes["/token/c"] = (status, {"Content-Type": "application/json"}, body)
    return server.url + "token/{collection}?subscription-key=" + SUBSCRIPTION_KEY


@pytest.mark.parametrize(
    "href",
    [
        "https://evil.example/acct.blob.core.windows.net/a.tif",  # the name in the path
        "https://acct.blob.core.windows.net.evil.example/a.tif",  # ... in another host's name
        "https://evil.example/a.tif#.blob.core.windows.net/",
        "http://acct.blob.core.windows.net/c/a.tif",  # the token in clear text
        "https://user:pw@acct.blob.core.windows.net/c/a.tif",
        "https://acct.blob.core.windows.net/c/a.tif?already=signed",
    ],
)
def test_the_sas_token_goes_to_azure_blob_storage_only(server: _Server, href: str) -> None:
    signer = PlanetaryComputerSigner(_token_server(server))
    assert signer(href, "c") == href
    assert not server.requests  # no token was even asked for


def test_a_signed_href_is_masked_and_a_failed_token_request_shows_no_key(
    server: _Server,
) -> None:
    signer = PlanetaryComputerSigner(_token_server(server))
    href = "https://acct.blob.core.windows.net/c/a.tif"
    assert signer(href, "c") == f"{href}?{SAS_TOKEN}"
    # The token is masked wherever it appears, even out of its href (a GDAL message, say).
    assert "SignerToken0Secret0XYZ" not in redact(f"curl said {SAS_TOKEN.split('&')[-1]}")
    failing = PlanetaryComputerSigner(_token_server(server, status=403))
    with pytest.raises(SigningError, match="cannot get a Planetary Computer token") as err:
        failing(href, "c")
    assert SUBSCRIPTION_KEY not in str(err.value) and "403" in str(err.value)


def _leaks(*texts: str, folder: Path | None = None) -> list[str]:
    found = [f"{s} in output" for t in texts for s in LEAKS if s in t]
    if folder is not None:
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found += [f"{s} in {path}" for s in LEAKS if s.encode() in data]
    return found


def _secret_url(url: str, path: str = "") -> str:
    return (
        url.replace("http://", f"http://{URL_USER}:{URL_PASSWORD}@") + f"{path}?token={URL_TOKEN}"
    )


def test_credentials_in_the_stac_url_reach_no_message_or_output(
    proxies: Proxied, tmp_path: Path
) -> None:
    runner = CliRunner()
    url = _secret_url(proxies.stac.url)
    out = tmp_path / "las"
    outputs = []
    for command in ("plan", "build"):
        result = runner.invoke(app, [command, *build_args(url, out, "sample.count=4")])
        assert result.exit_code == 0, redact(result.output)
        outputs.append(result.output)
    status = runner.invoke(app, ["build", *build_args(url, out, "sample.count=4"), "--status"])
    assert status.exit_code == 0 and json.loads(status.output)["ok"] == 4
    # Failures name the URL: a 403, then an unreachable server, for plan and build.
    proxies.stac.set_faults([Fault("/", "status", status=403)])
    down = _secret_url("http://127.0.0.1:9/")
    for n, (stac, command) in enumerate(
        ((url, "plan"), (url, "build"), (down, "plan"), (down, "build"))
    ):
        failing = tmp_path / f"failing-{n}"
        if command == "build":  # a build of the plan made above, not yet built here
            failing.mkdir()
            shutil.copy(out / "plan.parquet", failing / "plan.parquet")
        result = runner.invoke(app, [command, *build_args(stac, failing, "sample.count=4")])
        assert result.exit_code == 2 and "error:" in result.output
        assert "127.0.0.1" in result.output, result.output  # it still says where
        outputs.append(result.output)
    assert not _leaks(*outputs, status.output, folder=tmp_path)


def test_a_collection_url_with_credentials_is_not_written_into_the_catalog(
    proxies: Proxied, tmp_path: Path
) -> None:
    runner = CliRunner()
    url = _secret_url(proxies.stac.url, "collections/esa-worldcover")
    args = ["catalog", "add", url, "--no-suggest", "--product-id", "wc-copy"]
    added = runner.invoke(app, [*args, "--out", str(tmp_path / "ok")])
    assert added.exit_code == 0, redact(added.output)
    label = (tmp_path / "ok" / "labels" / "wc-copy.yaml").read_text()
    assert "Collection read from http://***@127.0.0.1" in label
    proxies.stac.set_faults([Fault("/collections", "status", status=403)])
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 2 and "403" in refused.output
    assert not _leaks(added.output, refused.output, folder=tmp_path)


# ---------------------------------------------------------------------------------- YAML


def _laughs(depth: int) -> str:
    """Anchors whose last expands to 9**depth strings ("billion laughs" at depth 9)."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, depth)]
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("where", "why"),
    [
        (_laughs(9) + "\nname: *l8", "expand to more than"),
        (_laughs(9) + "\nname: las-demo", "expand to more than"),  # anchors never used
        ("loop: &loop [1, *loop]\nname: las-demo", "refers to a value that contains it"),
    ],
)
def test_a_recipe_bomb_is_refused_at_once(tmp_path: Path, where: str, why: str) -> None:
    text = (ROOT / "recipes" / "demo.yaml").read_text()
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(text.replace("name: las-demo", where))
    started = time.perf_counter()
    with pytest.raises(RecipeError, match=f"bomb.yaml.*not valid YAML.*{why}"):
        load_recipe(recipe)
    result = CliRunner().invoke(app, ["plan", str(recipe), "--quiet"])
    assert result.exit_code == 2 and why in result.output
    assert time.perf_counter() - started < 10  # unchecked, it ran out of time or memory


def test_a_catalog_bomb_and_a_huge_catalog_file_are_refused(catalog_copy: Path) -> None:
    product = catalog_copy / "labels" / "esa-worldcover.yaml"
    original = product.read_text()
    product.write_text(_laughs(9) + "\n" + original.replace("\nname:", "\nnotes: *l8\nname:", 1))
    with pytest.raises(CatalogError, match="esa-worldcover.*expand to more than"):
        load_label_product("esa-worldcover")
    product.write_text(original + "\n# " + "x" * MAX_YAML_CHARS + "\n")
    with pytest.raises(CatalogError, match="esa-worldcover.*characters, more than"):
        load_label_product("esa-worldcover")
    # Ordinary anchors and aliases still load, and so does a small "bomb" (9**4 strings).
    assert load_yaml("a: &a [1, 2]\nb: *a\n") == {"a": [1, 2], "b": [1, 2]}
    assert len(load_yaml(_laughs(4))["l3"]) == 9


def test_a_recipe_with_anchors_still_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAS_STAC_URL", "http://127.0.0.1:9/")
    text = (ROOT / "recipes" / "demo.yaml").read_text()
    recipe = tmp_path / "anchors.yaml"
    recipe.write_text(
        text.replace("sign: none", "sign: &sign none").replace(
            "name: las-demo", "name: las-demo-anchored"
        )
    )
    assert load_recipe(recipe).name == "las-demo-anchored"


def test_index_reasons_of_a_served_vrt_name_the_format(
    proxies: Proxied, tmp_path: Path, roots: tuple[Path, Path]
) -> None:
    """End to end: every ESA WorldCover tile answers a VRT onto a secret raster."""
    _, outside = roots
    vrt = _vrt(tmp_path / "wc.vrt", str(outside / "secret.tif"))
    out = tmp_path / "las"
    runner = CliRunner()
    # Planned before the fault: plan.py reads label strata with its own open (see the report).
    planned = runner.invoke(app, ["plan", *build_args(proxies.stac.url, out, "sample.count=4")])
    assert planned.exit_code == 0, planned.output
    proxies.assets.set_faults(
        [Fault(r"ESA_WorldCover_10m_2021_v200_\w+_Map\.tif", "file", path=vrt)]
    )
    built = runner.invoke(app, ["build", *build_args(proxies.stac.url, out, "sample.count=4")])
    assert built.exit_code == 0, built.output
    index = pd.read_parquet(out / "index.parquet")
    assert (index["status"] == "failed").all()
    assert index["reason"].str.contains("not a GeoTIFF or JPEG 2000").all()


def test_planning_does_not_follow_a_served_vrt(
    proxies: Proxied, tmp_path: Path, roots: tuple[Path, Path]
) -> None:
    """The plan reads the stratification product's pixels itself: a VRT served for them is
    refused there too (naming the item), not read through onto a file outside the roots."""
    _, outside = roots
    vrt = _vrt(tmp_path / "cci.vrt", str(outside / "secret.tif"))
    proxies.assets.set_faults(
        [Fault(r"C3S-LC-L4-LCCS-Map-300m-P1Y-\d+-v[\d.]+-\w+\.tif", "file", path=vrt)]
    )
    out = tmp_path / "las"
    planned = CliRunner().invoke(
        app, ["plan", *build_args(proxies.stac.url, out, "sample.count=4")]
    )
    assert planned.exit_code == 2, planned.output
    assert "cannot read asset 'lccs_class' of esa-cci-lc item" in planned.output
    assert "not a GeoTIFF or JPEG 2000" in planned.output
    assert not (out / "plan.parquet").exists()


def test_every_command_s_error_line_is_redacted(tmp_path: Path) -> None:
    """A dataset given as a URL with credentials: a Path folds ``//`` to ``/``, and the
    error line of ``las stats`` / ``las inspect`` named the password."""
    secret = "Passw0rdXYZ42"
    runner = CliRunner()
    for command in ("stats", "inspect"):
        result = runner.invoke(app, [command, f"https://user:{secret}@127.0.0.1:9/ds"])
        assert result.exit_code == 2, result.output
        assert "is not a built LAS dataset" in result.output
        assert secret not in result.output
