"""Fixtures of the fault tests: the served tiny world behind fault-injecting proxies."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from faultkit import FAKE_AWS, TOKEN, Proxied, edit_items
from proxy import FaultProxy


@pytest.fixture(scope="session")
def proxied_world(served_world: dict) -> Iterator[Proxied]:
    assets = FaultProxy(served_world["assets_url"])
    stac = FaultProxy(served_world["stac_url"])
    assets.start()
    stac.start()
    proxied = Proxied(stac, assets, served_world["world"])
    upstream_assets = re.escape(served_world["assets_url"])

    def rewrite(text: str) -> str:
        # Asset hrefs point at the asset proxy and carry a token; links at the STAC proxy.
        text = re.sub(
            upstream_assets + r'([^"?\s]+)',
            lambda m: f"{assets.url}{m.group(1)}?{TOKEN}&g={proxied.generation}",
            text,
        )
        text = text.replace(served_world["stac_url"], stac.url)
        if proxied.edits:
            data = json.loads(text)
            edit_items(data, proxied.edits)
            text = json.dumps(data)
        return text

    stac.rewrite = rewrite
    try:
        yield proxied
    finally:
        stac.stop()
        assets.stop()


@pytest.fixture
def proxies(proxied_world: Proxied, monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxied]:
    """The proxies, clean before and after the test; short timeouts, fake AWS keys in env."""
    for key, value in FAKE_AWS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "2")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")
    monkeypatch.setenv("LAS_STAC_TIMEOUT_S", "2")
    proxied_world.reset()
    yield proxied_world
    proxied_world.reset()
