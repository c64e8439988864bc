"""Sensor definitions in catalog/sensors resolve the real catalogs' items."""

from __future__ import annotations

import json
from pathlib import Path

from las_builder.imagery import sensor
from las_builder.stac import parse_item


def _items(stac_fixtures: Path, name: str) -> list:
    return [
        parse_item(f)
        for f in json.loads((stac_fixtures / name).read_text())["features"]
        if "assets" in f
    ]


def test_naip_items_of_both_catalogs_match_the_band_table(stac_fixtures: Path) -> None:
    spec = sensor("naip")
    names = [b["name"] for b in spec["bands"]]
    items = _items(stac_fixtures, "planetary-computer/items/naip.json")
    assert items
    for item in items:
        asset = item.asset(spec["asset"])
        assert [b.name for b in asset.bands] == names
        assert [b.common_name for b in asset.bands] == [b["common_name"] for b in spec["bands"]]
    collection = json.loads((stac_fixtures / "earth-search/collections/naip.json").read_text())
    es_bands = collection["item_assets"][spec["asset"]]["eo:bands"]
    assert [b["name"] for b in es_bands] == names


def test_sentinel1_grd_items_use_the_polarisation_keys(stac_fixtures: Path) -> None:
    spec = sensor("sentinel-1-grd")
    keys = {b["name"] for b in spec["bands"]}
    items = _items(stac_fixtures, "earth-search/items/sentinel-1-grd.json")
    assert items
    for item in items:
        data = {k for k, a in item.assets.items() if "data" in a.roles}
        assert data and data <= keys
        for key in data:
            band = item.asset(key).bands[0]
            assert band.data_type == spec["dtype"] and band.nodata == spec["nodata"]


def test_sentinel1_rtc_collection_matches_the_band_table(stac_fixtures: Path) -> None:
    spec = sensor("sentinel-1-rtc")
    collection = json.loads(
        (stac_fixtures / "planetary-computer/collections/sentinel-1-rtc.json").read_text()
    )
    for band in spec["bands"]:
        raster = collection["item_assets"][band["name"]]["raster:bands"][0]
        assert raster["data_type"] == spec["dtype"]
        assert raster["nodata"] == spec["nodata"]
