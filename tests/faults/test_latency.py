"""Read pools sized by the storage's answers: a server that answers late keeps the wide pools."""

from __future__ import annotations

import pytest
from faultkit import Proxied
from proxy import Fault

from las_builder.build import read as read_mod
from las_builder.build.read import DatasetCache, close_pooled_datasets

WC_PATH = "assets/esa-worldcover/v200/2021/map/ESA_WorldCover_10m_2021_v200_N42W096_Map.tif"


def _judged(hrefs: list[str], monkeypatch: pytest.MonkeyPatch) -> read_mod._StorageSpeed:
    """The storage's speed as judged from opening ``hrefs``: half at once (as a build's first
    sample does, each thread's first request setting up its connection), then one by one."""
    speed = read_mod._StorageSpeed()
    monkeypatch.setattr(read_mod, "_storage_speed", speed)
    cache = DatasetCache()
    half = len(hrefs) // 2
    try:
        with cache.borrow(*hrefs[:half]) as datasets:
            assert all(ds.crs is not None for ds in datasets)
        for href in hrefs[half:]:
            with cache.borrow(href) as (ds,):
                assert ds.crs is not None
    finally:
        cache.close()
        close_pooled_datasets()
    return speed


def test_the_loopback_range_server_answers_at_once(
    served_world: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Distinct URLs (GDAL caches by URL) for as many opens as the judgement needs.
    href = served_world["assets_url"] + WC_PATH
    hrefs = [f"{href}?open={i}" for i in range(2 * read_mod.NEAR_OPENS)]
    speed = _judged(hrefs, monkeypatch)
    # The quickest open counts, even on a loaded machine.
    assert speed.threads(8, 2) <= 4, speed._hosts


def test_a_server_that_answers_late_keeps_the_wide_pools(
    proxies: Proxied, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxies.assets.set_faults([Fault(r"\.tif", "delay", delay_s=0.05)])
    hrefs = [f"{proxies.href(WC_PATH)}?open={i}" for i in range(2 * read_mod.NEAR_OPENS)]
    speed = _judged(hrefs, monkeypatch)
    assert speed.threads(8, 2) == 8, speed._hosts
