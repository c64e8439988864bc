"""The generated world: deterministic, realistic grids, valid COGs and real-looking STAC."""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import rasterio
from shapely.geometry import shape
from typer.testing import CliRunner

from las_builder.cli import app
from las_builder.stac import parse_item
from las_builder.world.config import load_preset, load_truth
from las_builder.world.create import create_world
from las_builder.world.grids import MODIS_ORIGIN, mgrs_tile, utm_epsg, utm_zone


def _items(world: Path, collection: str) -> list[dict]:
    return json.loads((world / "stac" / "items" / f"{collection}.json").read_text())["features"]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes(tiny_world: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    create_world(again, seed=7, preset="tiny", progress=False, workers=1)
    first, second = _digest(tiny_world), _digest(again)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_other_seed_gives_other_truth(tiny_world: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    create_world(other, seed=8, preset="tiny", progress=False)
    with (
        rasterio.open(tiny_world / "truth/iowa-us.tif") as a,
        rasterio.open(other / "truth/iowa-us.tif") as b,
    ):
        assert a.transform == b.transform
        assert (a.read(1) != b.read(1)).mean() > 0.2


def test_demo_preset_spreads_over_the_globe() -> None:
    preset = load_preset("demo")
    regions = preset.regions
    assert len(regions) >= 6
    assert len({utm_epsg(r.lon, r.lat) for r in regions}) == len(regions)
    assert any(r.lat < 0 for r in regions) and any(r.lat > 0 for r in regions)
    assert any(r.lat > 60 for r in regions)
    conus = [r for r in regions if -125 < r.lon < -66 and 24 < r.lat < 50 and r.naip]
    assert len(conus) >= 2
    # a region crossing the antimeridian: its square reaches both sides of 180 degrees
    assert any(
        abs(abs(r.lon) - 180) * 111_000 * np.cos(np.radians(r.lat)) < preset.region_size_m / 2
        for r in regions
    )
    assert len(load_truth().classes) >= 10


def test_truth_is_coherent_and_rich(tiny_world: Path) -> None:
    with rasterio.open(tiny_world / "truth/iowa-us.tif") as src:
        truth = src.read(1)
        assert src.res == (2.0, 2.0)
        assert src.crs.to_epsg() == 32615
    counts = np.bincount(truth.ravel(), minlength=13)
    assert (counts[1:] > 0).sum() >= 6
    # spatially coherent: most horizontal neighbours share a class
    assert (truth[:, 1:] == truth[:, :-1]).mean() > 0.9


def test_every_file_is_a_valid_cog(tiny_world: Path) -> None:
    files = sorted(tiny_world.rglob("*.tif"))
    assert len(files) > 50
    for path in files:
        with rasterio.open(path) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", path
            assert src.profile["tiled"], path
            assert src.crs is not None, path
            if max(src.width, src.height) > 256:
                assert src.overviews(1), f"{path} has no overviews"


def test_products_sit_on_their_global_lattices(tiny_world: Path) -> None:
    for item in _items(tiny_world, "esa-worldcover"):
        a, _, c, _, e, f = item["assets"]["map"]["proj:transform"]
        assert Fraction(a).limit_denominator(100000) == Fraction(1, 12000)
        assert abs((c + 180) * 12000 - round((c + 180) * 12000)) < 1e-6
        assert abs((90 - f) * 12000 - round((90 - f) * 12000)) < 1e-6
        tile = item["properties"]["esa_worldcover:product_tile"]
        lat, lon = int(tile[1:3]), int(tile[4:7])
        assert lat % 3 == 0 and lon % 3 == 0
    for item in _items(tiny_world, "modis-12Q1-061"):
        a, _, c, _, _, f = item["assets"]["LC_Type1"]["proj:transform"]
        assert a == pytest.approx(463.312716528)
        col = (c - MODIS_ORIGIN[0]) / a
        assert abs(col - round(col)) < 1e-6
        h = item["properties"]["modis:horizontal-tile"]
        assert int(col) // 2400 == h
    for item in _items(tiny_world, "sentinel-2-l2a"):
        for key in ("B02", "B05", "B01"):
            a, _, c, _, _, f = item["assets"][key]["proj:transform"]
            assert c % 60 == 0 and f % 60 == 0
        assert item["assets"]["B02"]["proj:transform"][0] == 10
        assert item["assets"]["B05"]["proj:transform"][0] == 20
        assert item["assets"]["B01"]["proj:transform"][0] == 60


def test_antimeridian_region_is_split(tiny_world: Path) -> None:
    fiji_s2 = [
        i
        for i in _items(tiny_world, "sentinel-2-l2a")
        if i["properties"]["proj:epsg"] in (32701, 32760)
    ]
    assert {i["properties"]["proj:epsg"] for i in fiji_s2} == {32701, 32760}
    assert {i["properties"]["s2:mgrs_tile"][:2] for i in fiji_s2} == {"01", "60"}
    for item in fiji_s2:
        assert item["geometry"]["type"] == "MultiPolygon"
        geom = shape(item["geometry"])
        assert geom.bounds[0] == pytest.approx(-180) and geom.bounds[2] == pytest.approx(180)
    tiles = {
        i["properties"]["esa_worldcover:product_tile"] for i in _items(tiny_world, "esa-worldcover")
    }
    assert {"S18E177", "S18W180"} <= tiles
    assert utm_zone(180.0) == 1 and utm_zone(179.99) == 60


def test_sentinel2_baselines_and_clouds(tiny_world: Path) -> None:
    items = [
        i
        for i in _items(tiny_world, "sentinel-2-l2a")
        if i["properties"]["s2:mgrs_tile"] == mgrs_tile(-93.62, 42.03)
    ]
    by_baseline = {i["properties"]["s2:processing_baseline"]: i for i in items}
    assert set(by_baseline) == {"03.01", "04.00"}
    lows = {}
    for baseline, item in by_baseline.items():
        with rasterio.open(tiny_world / item["assets"]["B04"]["href"]) as src:
            dn = src.read(1)
        with rasterio.open(tiny_world / item["assets"]["SCL"]["href"]) as src:
            scl = np.repeat(np.repeat(src.read(1), 2, 0), 2, 1)
        clear = np.isin(scl, (4, 5, 6))
        lows[baseline] = np.percentile(dn[clear], 1)
        cloudy = np.isin(scl, (8, 9, 10)).mean() * 100
        assert item["properties"]["eo:cloud_cover"] == pytest.approx(cloudy, abs=0.5)
    # baseline 04.00 adds the +1000 BOA offset
    assert lows["04.00"] >= 1000 > lows["03.01"]


def test_label_products_derive_from_truth_and_disagree(tiny_world: Path) -> None:
    truth_ids = {c.name: c.id for c in load_truth().classes}
    item = next(
        i for i in _items(tiny_world, "io-lulc-annual-v02") if i["properties"]["proj:epsg"] == 32615
    )
    with rasterio.open(tiny_world / item["assets"]["data"]["href"]) as src:
        lulc = src.read(1)
    with rasterio.open(tiny_world / "truth/iowa-us.tif") as src:
        truth = src.read(1)[::5, ::5][2::1, 2::1]  # near the centre of each 10 m cell
    lulc = lulc[: truth.shape[0], : truth.shape[1]]
    crops = truth == truth_ids["cropland"]
    agree = (lulc[crops] == 5).mean()
    assert 0.6 < agree < 1.0  # mostly cropland, but with confusions
    codes = set(np.unique(lulc)) - {0}
    assert codes <= {1, 2, 4, 5, 7, 8, 9, 10, 11}


def test_naip_only_over_the_us(tiny_world: Path) -> None:
    items = _items(tiny_world, "naip")
    assert [i["properties"]["naip:state"] for i in items] == ["ia"]
    with rasterio.open(tiny_world / items[0]["assets"]["image"]["href"]) as src:
        assert src.count == 4 and src.dtypes[0] == "uint8"
        assert src.res == pytest.approx((0.6, 0.6))
        assert src.crs.to_epsg() == 26915


def test_world_items_parse_like_real_items(tiny_world: Path, stac_fixtures: Path) -> None:
    real = json.loads((stac_fixtures / "planetary-computer/items/sentinel-2-l2a.json").read_text())
    real_item = parse_item(real["features"][0])
    ours = parse_item(_items(tiny_world, "sentinel-2-l2a")[0])
    bands = [f"B{i:02d}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12)] + ["B8A", "SCL"]
    for key in bands:
        mine, theirs = ours.asset(key), real_item.asset(key)
        assert mine.gsd == theirs.gsd
        assert [b.center_wavelength for b in mine.bands] == [
            b.center_wavelength for b in theirs.bands
        ]
        assert mine.geobox() is not None and theirs.geobox() is not None
    assert type(ours) is type(real_item)
    assert ours.processing_baseline in ("03.01", "04.00")
    real_collection = json.loads(
        (stac_fixtures / "planetary-computer/collections/esa-worldcover.json").read_text()
    )
    wc_real = {c["value"] for c in real_collection["item_assets"]["map"]["classification:classes"]}
    wc_ours = parse_item(_items(tiny_world, "esa-worldcover")[0])
    assert {c.value for c in wc_ours.asset("map").classes} == wc_real


def test_cli_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["world", "create", str(tmp_path / "x"), "--preset", "tiny"])
    assert result.exit_code == 2
    assert "not empty" in result.output
    result = CliRunner().invoke(app, ["world", "create", str(tmp_path / "y"), "--preset", "huge"])
    assert result.exit_code == 2
    assert "unknown preset 'huge'" in result.output and "demo" in result.output
