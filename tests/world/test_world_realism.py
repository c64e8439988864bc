"""The served offline world against the recorded public catalogs (``../shared/fixtures/stac``).

The world promises that the code reading Planetary Computer reads it unchanged. These tests
hold what it serves (over its real STAC API and range server) to the layout of the recorded
Planetary Computer collections and items: asset keys and templates, legends in the spelling of
each collection's classification extension, where ``raster:bands`` and ``proj:*`` sit, item
id shapes, property types; and the served COGs to what their items declare.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rasterio
import requests
from pystac_client import Client

from las_builder.stac import parse_item

PC = "planetary-computer"
# Collections the world serves that Planetary Computer serves too (a recorded collection each).
SHARED = [
    "sentinel-2-l2a",
    "sentinel-1-rtc",
    "naip",
    "esa-worldcover",
    "esa-cci-lc",
    "io-lulc-annual-v02",
]
# Of those, the ones whose items were recorded as well.
WITH_ITEMS = ["sentinel-2-l2a", "naip"]


@pytest.fixture(scope="module")
def served(served_world: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every collection and item of the served tiny world, as raw JSON from its STAC API."""
    url = served_world["stac_url"]
    client = Client.open(url)
    collections: dict[str, Any] = {}
    items: dict[str, list[dict[str, Any]]] = {}
    for c in client.get_collections():
        answer = requests.get(f"{url.rstrip('/')}/collections/{c.id}", timeout=30)
        answer.raise_for_status()
        collections[c.id] = answer.json()
        items[c.id] = list(client.search(collections=[c.id], max_items=None).items_as_dicts())
    yield {"collections": collections, "items": items}


def _real(stac_fixtures: Path, kind: str, cid: str) -> Any:
    return json.loads((stac_fixtures / PC / kind / f"{cid}.json").read_text())


def _shape(text: str) -> str:
    """An id's shape: digits as 9, capitals as A, small letters as a, the rest kept."""
    return re.sub("[a-z]", "a", re.sub("[A-Z]", "A", re.sub("[0-9]", "9", text)))


def _kind(value: Any) -> str:
    """A JSON value's type, integers and floats alike (a catalog writes 0 for 0.0)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _template(asset: dict[str, Any]) -> dict[str, Any]:
    """An item's asset as its collection's ``item_assets`` states it (no href, no grid)."""
    return {k: v for k, v in asset.items() if k != "href" and not k.startswith("proj:")}


def _extension_names(urls: list[str]) -> set[str]:
    """Extension names without versions (``.../projection/v1.1.0/...`` is ``projection``)."""
    return {u.split("stac-extensions.github.io/")[-1].split("/")[0] for u in urls}


@pytest.mark.parametrize("cid", SHARED)
def test_served_assets_repeat_the_real_collection_templates(
    served: dict[str, Any], stac_fixtures: Path, cid: str
) -> None:
    real = _real(stac_fixtures, "collections", cid)
    templates = real["item_assets"]
    ours = served["items"][cid]
    assert ours, f"the world serves no {cid} items"
    for item in ours:
        # Every asset the world writes is one the real collection has, written as it does:
        # type, roles, title, description, eo:bands, raster:bands, the legend's spelling.
        assert set(item["assets"]) <= set(templates), item["id"]
        for key, asset in item["assets"].items():
            assert _template(asset) == templates[key], f"{item['id']}: asset {key}"
    collection = served["collections"][cid]
    for key, template in collection["item_assets"].items():
        assert template == templates[key], f"{cid}: item_assets.{key}"
    # Band facts that the real collection keeps only in its summaries (io-lulc's nodata).
    if "raster:bands" in real.get("summaries", {}):
        assert collection["summaries"]["raster:bands"] == real["summaries"]["raster:bands"]
    # The classification extension in the version whose spelling the legend uses.
    for name in ("classification", "file"):
        ext = [u for u in real["stac_extensions"] if f"/{name}/" in u]
        if ext and any(name in _extension_names(i["stac_extensions"]) for i in ours):
            assert all(set(ext) <= set(i["stac_extensions"]) for i in ours), cid


@pytest.mark.parametrize("cid", WITH_ITEMS)
def test_served_items_have_the_real_items_layout(
    served: dict[str, Any], stac_fixtures: Path, cid: str
) -> None:
    real = _real(stac_fixtures, "items", cid)["features"]
    shapes = {_shape(r["id"]) for r in real}
    props = {k: _kind(v) for r in real for k, v in r["properties"].items()}
    item_proj = {k for k in real[0]["properties"] if k.startswith("proj:")}
    asset_proj = {
        key: {k for k in a if k.startswith("proj:")} for key, a in real[0]["assets"].items()
    }
    extensions = _extension_names(real[0]["stac_extensions"])
    for item in served["items"][cid]:
        where = item["id"]
        assert _shape(item["id"]) in shapes, f"{where}: id unlike {sorted(shapes)}"
        # No property the real items lack (code must not come to rely on one), each of the
        # same type; the grid stated at the same level (item or asset) as there.
        extra = set(item["properties"]) - set(props)
        assert not extra, f"{where}: properties the real items lack: {sorted(extra)}"
        for key, value in item["properties"].items():
            assert _kind(value) == props[key], f"{where}: {key}"
        assert {k for k in item["properties"] if k.startswith("proj:")} == item_proj, where
        for key, asset in item["assets"].items():
            assert {k for k in asset if k.startswith("proj:")} == asset_proj[key], where
            if "proj:transform" in asset:
                assert len(asset["proj:transform"]) == len(real[0]["assets"][key]["proj:transform"])
        if "proj:transform" in item_proj:
            assert len(item["properties"]["proj:transform"]) == len(
                real[0]["properties"]["proj:transform"]
            )
        assert _extension_names(item["stac_extensions"]) == extensions, where


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_served_files_are_what_their_items_declare(served: dict[str, Any]) -> None:
    """Each served raster, read over HTTP, has the grid, type and nodata its item states."""
    checked = 0
    for cid, items in sorted(served["items"].items()):
        collection = served["collections"][cid]
        for raw in items:
            item = parse_item(raw, collection)
            for key, asset in item.assets.items():
                if not asset.is_raster:
                    continue
                where = f"{cid} {item.id} asset {key}"
                grid = asset.geobox()
                assert grid is not None, f"{where}: no grid in its item"
                with rasterio.open(asset.href) as ds:
                    assert grid.crs is not None and grid.crs == ds.crs.to_wkt(), where
                    assert tuple(ds.transform)[:6] == pytest.approx(tuple(grid.transform)[:6])
                    assert (ds.height, ds.width) == tuple(grid.shape.yx), where
                    assert ds.tags().get("AREA_OR_POINT") == "Area", where
                    assert ds.profile.get("tiled"), f"{where}: not a tiled COG"
                    if asset.bands:
                        assert ds.count == len(asset.bands), where
                    for band in asset.bands:
                        if band.data_type is not None:
                            assert ds.dtypes[0] == band.data_type, where
                        if band.nodata is not None:
                            # The file carries the nodata its catalog declares (GDAL reads it).
                            assert _same(ds.nodata, float(band.nodata)), f"{where}: {ds.nodata}"
                checked += 1
    assert checked > 100  # every collection's files, not a handful


def test_served_items_across_the_antimeridian_are_not_global(served: dict[str, Any]) -> None:
    """The world's antimeridian scenes (Fiji) parse to their small footprint, not the globe."""
    crossing = 0
    for cid, items in served["items"].items():
        for raw in items:
            item = parse_item(raw, served["collections"][cid])
            if not item.crosses_antimeridian:
                continue
            crossing += 1
            footprint = item.footprint()
            assert footprint is not None and footprint.area < 1.0, item.id
            assert footprint.bounds[0] == -180.0 and footprint.bounds[2] == 180.0, item.id
    assert crossing >= len(SHARED)  # Fiji is in every product but NAIP, the truth too
