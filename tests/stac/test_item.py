"""The normalised item model against real Planetary Computer and Earth Search JSON."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac
import pytest
from shapely.geometry import MultiPolygon, Polygon

from las_builder.stac import (
    AssetInfo,
    ItemParseError,
    SceneItem,
    parse_item,
    parse_item_collection,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "stac"

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"STAC fixtures not found at {FIXTURES}"
)

ITEM_FILES = sorted(FIXTURES.glob("*/items/*.json")) if FIXTURES.is_dir() else []


def _load(rel: str) -> dict[str, Any]:
    return json.loads((FIXTURES / rel).read_text())


def _features(rel: str) -> list[dict[str, Any]]:
    return _load(rel)["features"]


def _by_id(items: list[SceneItem]) -> dict[str, SceneItem]:
    return {i.id: i for i in items}


def _bbox(item: SceneItem) -> tuple[float, float, float, float]:
    """``item.bbox``, which must be set."""
    assert item.bbox is not None, item.id
    return item.bbox


def _minimal_item(collection: str, assets: dict[str, Any], **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"synthetic-{collection}",
        "collection": collection,
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [[-76.0, 38.0], [-75.0, 38.0], [-75.0, 39.0], [-76.0, 39.0], [-76.0, 38.0]]
            ],
        },
        "bbox": [-76.0, 38.0, -75.0, 39.0],
        "properties": {"datetime": "2021-01-01T00:00:00Z", **props},
        "assets": assets,
        "links": [],
    }


# --------------------------------------------------------------------------- every fixture


@pytest.mark.parametrize("path", ITEM_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_every_fixture_item_parses(path: Path) -> None:
    fc = json.loads(path.read_text())
    items = parse_item_collection(fc)
    assert [i.id for i in items] == [f["id"] for f in fc["features"]]
    for item, feature in zip(items, fc["features"], strict=True):
        assert item.collection == feature["collection"] == path.stem
        assert item.datetime.tzinfo is not None
        offset = item.datetime.utcoffset()
        assert offset is not None and offset.total_seconds() == 0
        assert item.start_datetime <= item.datetime <= item.end_datetime
        assert item.bbox == pytest.approx(tuple(feature["bbox"]))
        assert set(item.assets) == set(feature.get("assets", {}))
        assert (item.geometry is None) == (feature.get("geometry") is None)
        assert item.footprint() is not None
        for key, asset in item.assets.items():
            assert asset.href == feature["assets"][key]["href"]
            box = asset.geobox()
            if asset.shape and asset.transform and asset.crs:
                assert box is not None and box.shape == asset.shape
            else:
                assert box is None


@pytest.mark.parametrize("path", ITEM_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_every_fixture_item_parses_with_its_collection(path: Path) -> None:
    fc = json.loads(path.read_text())
    coll = json.loads((path.parent.parent / "collections" / path.name).read_text())
    bare = parse_item_collection(fc)
    full = parse_item_collection(fc, coll)
    for b, f in zip(bare, full, strict=True):
        for key, asset in f.assets.items():
            # The template only ever adds band metadata, and never touches the pixel grid.
            assert len(asset.bands) >= len(b.assets[key].bands)
            assert (asset.crs, asset.shape, asset.transform) == (
                b.assets[key].crs,
                b.assets[key].shape,
                b.assets[key].transform,
            )


# --------------------------------------------------------------------------- Planetary Computer


def test_pc_sentinel2_first_item_facts() -> None:
    item = parse_item_collection(_load("planetary-computer/items/sentinel-2-l2a.json"))[0]
    assert item.id == "S2A_MSIL2A_20190101T000001_R116_T58UFE_20201007T214651"
    assert item.datetime == datetime(2019, 1, 1, 0, 0, 1, 24000, tzinfo=UTC)
    assert item.platform == "sentinel-2a" and item.properties["platform"] == "Sentinel-2A"
    assert item.constellation == "sentinel-2" and item.properties["constellation"] == "Sentinel 2"
    assert item.cloud_cover == pytest.approx(46.556288)
    assert item.processing_baseline == "02.12"
    assert item.mgrs_tile == "58UFE"
    assert (item.orbit_state, item.relative_orbit) == ("descending", 116)
    assert item.epsg == 32658

    b02 = item.asset("B02")
    assert b02.epsg == 32658 and b02.crs == "EPSG:32658"
    assert b02.shape == (10980, 10980)
    assert b02.transform == (10.0, 0.0, 600000.0, 0.0, -10.0, 6000000.0)
    assert b02.proj_bbox == (600000.0, 5890200.0, 709800.0, 6000000.0)
    assert b02.gsd == 10.0
    [band] = b02.bands
    assert (band.name, band.common_name) == ("B02", "blue")
    assert band.center_wavelength == pytest.approx(0.49)
    assert band.full_width_half_max == pytest.approx(0.098)
    # PC declares no raster:bands: nothing is invented.
    assert band.scale is None and band.offset is None and band.nodata is None

    scl = item.asset("SCL")
    assert scl.shape == (5490, 5490) and scl.transform is not None
    assert scl.transform[0] == 20.0 and scl.bands == ()
    assert [b.name for b in item.asset("visual").bands] == ["B04", "B03", "B02"]


def test_pc_sentinel2_processing_baselines_and_earth_search_are_on_both_sides_of_04_00() -> None:
    pc = parse_item_collection(_load("planetary-computer/items/sentinel-2-l2a.json"))
    es = parse_item_collection(_load("earth-search/items/sentinel-2-l2a.json"))
    pc_baselines = {i.processing_baseline for i in pc}
    es_baselines = {i.processing_baseline for i in es}
    # The recorded PC page holds only pre-04.00 scenes (all from 2019-01-01).
    assert pc_baselines == {"02.12"}
    assert es_baselines == {"05.09", "05.11"}
    assert all(i.baseline_version is not None and i.baseline_version < (4, 0) for i in pc)
    assert all(i.baseline_version is not None and i.baseline_version >= (4, 0) for i in es)


def test_pc_sentinel2_spans_several_utm_zones() -> None:
    items = parse_item_collection(_load("planetary-computer/items/sentinel-2-l2a.json"))
    assert len(items) == 33
    assert {i.epsg for i in items} == {32658, 32659, 32660}
    for item in items:
        assert item.asset("B04").epsg == item.epsg
        assert item.mgrs_tile is not None and item.id.split("_")[4] == f"T{item.mgrs_tile}"


def test_pc_sentinel2_collection_summary_fills_aot_band() -> None:
    coll = _load("planetary-computer/collections/sentinel-2-l2a.json")
    feature = _features("planetary-computer/items/sentinel-2-l2a.json")[0]
    assert parse_item(feature).asset("AOT").bands == ()
    # item_assets has no eo:bands for AOT; the summary lists exactly one band named AOT.
    [band] = parse_item(feature, coll).asset("AOT").bands
    assert band.name == "AOT" and band.common_name is None


def test_pc_naip_nine_number_transform_and_bands() -> None:
    items = _by_id(parse_item_collection(_load("planetary-computer/items/naip.json")))
    assert len(items) == 20
    fl = items["fl_m_2608004_nw_17_060_20191215_20200113"]
    assert fl.epsg == 26917 and fl.gsd == 0.6
    assert fl.properties["proj:transform"][6:] == [0.0, 0.0, 1.0]
    image = fl.asset("image")
    assert image.transform == (0.6, 0.0, 537006.0, 0.0, -0.6, 2986710.0)
    assert image.shape == (12240, 11040)
    assert image.proj_bbox == (537006.0, 2979366.0, 543630.0, 2986710.0)
    assert [(b.name, b.common_name) for b in image.bands] == [
        ("Red", "red"),
        ("Green", "green"),
        ("Blue", "blue"),
        ("NIR", "nir"),
    ]
    # The item-level grid is the image's grid: the geobox reproduces proj:bbox.
    image_box = image.geobox()
    assert image_box is not None
    bb = image_box.boundingbox
    assert (bb.left, bb.bottom, bb.right, bb.top) == pytest.approx(image.proj_bbox)
    # Non-raster assets inherit neither the grid nor the gsd.
    assert fl.asset("metadata").crs is None and fl.asset("metadata").gsd is None
    assert fl.asset("thumbnail").geobox() is None
    # Only the 2019 Florida tile has a metadata asset.
    assert [i for i, it in items.items() if "metadata" in it.assets] == [fl.id]
    assert {it.properties["naip:year"] for it in items.values()} == {"2019", "2023"}


def test_pc_landsat_item_level_projection_scale_offset_and_bitfields() -> None:
    items = parse_item_collection(_load("planetary-computer/items/landsat-c2-l2.json"))
    assert len(items) == 10
    item = items[0]
    assert item.id == "LC09_L2SP_084068_20250722_02_T2"
    assert item.platform == "landsat-9" and item.instruments == ("oli", "tirs")
    assert item.cloud_cover == pytest.approx(5.07)
    red = item.asset("red")
    # The landsat assets carry no proj:* of their own: the item's grid applies.
    assert "proj:transform" not in red.raw
    assert red.epsg == 32658
    assert red.shape == (7731, 7611)
    assert red.transform == (30.0, 0.0, 351885.0, 0.0, -30.0, -1163085.0)
    [band] = red.bands
    assert (band.name, band.common_name) == ("OLI_B4", "red")
    assert (band.scale, band.offset, band.nodata) == (2.75e-05, -0.2, 0)
    lwir = item.asset("lwir11").bands[0]
    assert (lwir.scale, lwir.offset, lwir.unit) == (0.00341802, 149.0, "kelvin")
    assert item.asset("lwir11").gsd == 100.0
    assert item.asset("mtl.json").crs is None

    qa = item.asset("qa_pixel")
    fields = {b.name: b for b in qa.bitfields}
    assert (fields["cloud"].offset, fields["cloud"].length) == (3, 1)
    assert (fields["cloud_confidence"].offset, fields["cloud_confidence"].length) == (8, 2)
    assert fields["cloud"].extract(0b1000) == 1 and fields["cloud"].extract(0b0111) == 0
    assert fields["cloud_confidence"].extract(0b11_0000_0000) == 3
    assert sum("lwir11" in i.assets for i in items) == 2


# --------------------------------------------------------------------------- Earth Search


def test_earth_search_sentinel2_red_scale_offset_and_mgrs() -> None:
    items = _by_id(parse_item_collection(_load("earth-search/items/sentinel-2-l2a.json")))
    old = items["S2A_13TDE_20231008_0_L2A"]
    assert old.processing_baseline == "05.09" and old.mgrs_tile == "13TDE"
    assert old.properties["earthsearch:boa_offset_applied"] is True
    red = old.asset("red")
    [band] = red.bands
    assert (band.scale, band.offset, band.nodata, band.data_type) == (0.0001, -0.1, 0, "uint16")
    assert band.spatial_resolution == 10.0
    assert (band.name, band.common_name) == ("red", "red")  # 2023 items name bands by colour
    assert red.epsg == 32613 and red.shape == (10980, 10980)
    assert red.transform == (10.0, 0.0, 399960.0, 0.0, -10.0, 4500000.0)
    new = items["S2B_20EPT_20250731_0_L2A"]
    assert new.asset("red").bands[0].name == "B04"  # 2025 items use the band id
    assert new.mgrs_tile == "20EPT" and new.epsg == 32720
    assert new.platform == "sentinel-2b" and new.constellation == "sentinel-2"
    assert new.asset("scl").bands[0].data_type == "uint8"


def test_earth_search_collection_template_never_overrides_item_values() -> None:
    coll = _load("earth-search/collections/sentinel-2-l2a.json")
    feature = _features("earth-search/items/sentinel-2-l2a.json")[0]
    # The collection's template says offset 0 and a sample tile's transform ...
    assert coll["item_assets"]["red"]["raster:bands"][0]["offset"] == 0
    assert coll["item_assets"]["scl"]["proj:transform"][2:6:3] == [399960, 4900020]
    item = parse_item(feature, coll)
    # ... but the item's own values win, and the template's grid is never used.
    assert item.asset("red").bands[0].offset == -0.1
    assert item.asset("scl").transform == (20.0, 0.0, 399960.0, 0.0, -20.0, 4500000.0)
    assert item.asset("red").bands[0].description == "Red (band 4)"  # filled from template

    stripped = copy.deepcopy(feature)
    for key in ("proj:shape", "proj:transform"):
        stripped["assets"]["scl"].pop(key)
    scl = parse_item(stripped, coll).asset("scl")
    assert scl.transform is None and scl.shape is None and scl.geobox() is None
    assert scl.epsg == 32613  # from the item's properties


def test_earth_search_sentinel2_c1_offsets_and_partial_features() -> None:
    fc = _load("earth-search/items/sentinel-2-c1-l2a.json")
    items = parse_item_collection(fc)
    assert len(items) == 16
    full = [i for i in items if i.assets]
    partial = [i for i in items if not i.assets]
    assert len(full) == 6 and len(partial) == 10
    for item in partial:
        # Fields-restricted search results: id, bbox, collection and datetime only.
        assert item.geometry is None and item.platform is None and item.cloud_cover is None
        assert item.mgrs_tile is None and item.processing_baseline is None
        assert isinstance(item.footprint(), Polygon)
        footprint = item.footprint()
        assert footprint is not None and footprint.bounds == pytest.approx(item.bbox)
    for item in full:
        assert item.processing_baseline == "05.11"
        red = item.asset("red").bands[0]
        assert (red.scale, red.offset) == (0.0001, -0.1)
        aot = item.asset("aot").bands[0]
        assert (aot.scale, aot.offset) == (0.001, 0.0)
    first = _by_id(items)["S2B_T20EPT_20250731T131905_L2A"]
    assert first.mgrs_tile == "20EPT" and first.properties["grid:code"] == "MGRS-20EPT"
    assert first.asset("red").transform == (10.0, 0.0, 600000.0, 0.0, -10.0, 3300040.0)


def test_earth_search_sentinel1_grd_orbit_and_time_range() -> None:
    items = parse_item_collection(_load("earth-search/items/sentinel-1-grd.json"))
    assert len(items) == 3
    item = items[0]
    assert item.orbit_state == "ascending" and item.relative_orbit == 56
    assert item.platform == "sentinel-1a" and item.constellation == "sentinel-1"
    assert item.start_datetime == datetime(2025, 7, 31, 13, 56, 8, 210318, tzinfo=UTC)
    assert item.end_datetime == datetime(2025, 7, 31, 13, 56, 37, 254452, tzinfo=UTC)
    assert item.datetime == datetime(2025, 7, 31, 13, 56, 22, 732385, tzinfo=UTC)
    assert item.properties["sar:polarizations"] == ["HH"]
    hh = item.asset("hh")
    assert hh.epsg == 4326 and hh.shape == (25386, 19623)
    assert hh.bands[0].data_type == "uint16" and hh.bands[0].nodata == 0
    hh_box = hh.geobox()
    assert hh_box is not None and hh_box.crs is not None
    assert hh_box.crs.epsg == 4326
    assert item.asset("thumbnail").crs is None  # a PNG quick-look, not a raster to read
    assert all(i.orbit_state == "ascending" for i in items)


# --------------------------------------------------------------------------- legends


def test_esa_worldcover_classes_from_item_assets() -> None:
    coll = _load("planetary-computer/collections/esa-worldcover.json")
    item = parse_item(
        _minimal_item("esa-worldcover", {"map": {"href": "https://example.test/map.tif"}}), coll
    )
    m = item.asset("map")
    assert m.roles == ("data",) and m.media_type is not None
    assert m.media_type.startswith("image/tiff")
    assert [c.value for c in m.classes] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]
    tree = m.class_map()[10]
    assert (tree.description, tree.color_hint, tree.label) == ("Tree cover", "006400", "Tree cover")
    assert tree.name is None  # classification v1.0 legends have no names here
    assert m.class_map()[95].label == "Mangroves"
    [band] = m.bands
    assert (band.name, band.data_type, band.nodata, band.spatial_resolution) == (
        "Band1",
        "uint8",
        0,
        10.0,
    )


def test_esa_cci_lc_classes_with_no_data_and_names() -> None:
    coll = _load("planetary-computer/collections/esa-cci-lc.json")
    item = parse_item(
        _minimal_item(
            "esa-cci-lc",
            {
                "lccs_class": {"href": "https://example.test/lccs.tif"},
                "processed_flag": {"href": "https://example.test/flag.tif"},
            },
        ),
        coll,
    )
    lccs = item.asset("lccs_class")
    assert len(lccs.classes) == 38
    nodata = lccs.class_map()[0]
    assert nodata.nodata is True and nodata.name == "no-data" and nodata.color_hint == "000000"
    urban = lccs.class_map()[190]
    assert (urban.name, urban.description, urban.color_hint) == ("urban", "Urban areas", "C31400")
    assert [c.nodata for c in lccs.classes].count(True) == 1
    assert lccs.bands[0].nodata == 0 and lccs.bands[0].spatial_resolution == 300.0
    assert len(item.asset("processed_flag").classes) == 2


def test_io_lulc_file_values_become_classes() -> None:
    coll = _load("planetary-computer/collections/io-lulc-annual-v02.json")
    item = parse_item(
        _minimal_item("io-lulc-annual-v02", {"data": {"href": "https://example.test/lulc.tif"}}),
        coll,
    )
    data = item.asset("data")
    assert [c.value for c in data.classes] == [0, 1, 2, 4, 5, 7, 8, 9, 10, 11]
    assert {c.source for c in data.classes} == {"file:values"}
    assert data.class_map()[1].label == "Water"
    assert data.class_map()[11].description == "Rangeland"
    # No raster:bands in item_assets: the summary's nodata/resolution fill the one band.
    [band] = data.bands
    assert band.nodata == 0 and band.spatial_resolution == 10.0


def test_chesapeake_classes_from_color_dash_hint() -> None:
    coll = _load("planetary-computer/collections/chesapeake-lc-13.json")
    assert "color-hint" in coll["item_assets"]["data"]["classification:classes"][0]
    item = parse_item(
        _minimal_item("chesapeake-lc-13", {"data": {"href": "https://example.test/lc.tif"}}), coll
    )
    data = item.asset("data")
    assert len(data.classes) == 13
    last = data.class_map()[13]
    assert (last.description, last.color_hint) == ("Aberdeen Proving Ground", "C500FF")
    assert data.class_map()[1].label == "Water"
    assert data.bands[0].spatial_resolution == 1.0


def test_item_classes_override_template() -> None:
    coll = _load("planetary-computer/collections/chesapeake-lc-13.json")
    own = [{"value": 1, "name": "water", "color_hint": "#0000ff"}]
    asset = {"href": "https://example.test/lc.tif", "classification:classes": own}
    data = parse_item(_minimal_item("chesapeake-lc-13", {"data": asset}), coll).asset("data")
    assert [(c.value, c.name, c.color_hint) for c in data.classes] == [(1, "water", "0000FF")]


# --------------------------------------------------------------------------- projection forms


def test_projection_v2_code_wkt2_and_projjson() -> None:
    wkt = 'GEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,298.257223563]],CS[ellipsoidal,2],AXIS["latitude",north],AXIS["longitude",east],ANGLEUNIT["degree",0.0174532925199433]]'  # noqa: E501
    projjson = {
        "type": "ProjectedCRS",
        "name": "WGS 84 / UTM zone 33N",
        "id": {"authority": "EPSG", "code": 32633},
    }
    grid = {"proj:shape": [100, 200], "proj:transform": [10, 0, 500000, 0, -10, 4000000]}
    item = parse_item(
        _minimal_item(
            "x",
            {
                "a": {"href": "a.tif", "type": "image/tiff", **grid},
                "b": {"href": "b.tif", "type": "image/tiff", "proj:code": "EPSG:32634", **grid},
                "c": {"href": "c.tif", "type": "image/tiff", "proj:wkt2": wkt, **grid},
                "d": {"href": "d.tif", "type": "image/tiff", "proj:projjson": projjson},
                "e": {"href": "e.tif", "type": "image/tiff", "proj:code": "IAU_2015:30100"},
            },
            **{"proj:code": "EPSG:32633"},
        )
    )
    assert item.epsg == 32633
    assert (item.asset("a").epsg, item.asset("a").crs) == (32633, "EPSG:32633")
    assert (item.asset("b").epsg, item.asset("b").crs) == (32634, "EPSG:32634")
    assert item.asset("c").epsg is None and item.asset("c").crs == wkt
    c_box = item.asset("c").geobox()
    assert c_box is not None and c_box.crs is not None
    assert c_box.crs.epsg == 4326
    assert item.asset("d").epsg == 32633
    d_crs = item.asset("d").crs
    assert d_crs is not None and json.loads(d_crs) == projjson
    assert item.asset("e").epsg is None and item.asset("e").crs == "IAU_2015:30100"
    box = item.asset("b").geobox()
    assert box is not None and box.crs is not None
    assert box.crs.epsg == 32634 and box.shape == (100, 200)
    assert (box.resolution.x, box.resolution.y) == (10, -10)


def test_stac_1_1_bands_with_asset_level_defaults() -> None:
    asset = {
        "href": "s2.tif",
        "type": "image/tiff; application=geotiff",
        "nodata": 0,
        "data_type": "uint16",
        "raster:scale": 0.0001,
        "bands": [
            {"name": "B04", "eo:common_name": "red", "eo:center_wavelength": 0.665},
            {"name": "B08", "eo:common_name": "nir", "raster:offset": -0.1, "nodata": "nan"},
        ],
    }
    feature = _minimal_item("x", {"img": asset})
    feature["stac_version"] = "1.1.0"
    red, nir = parse_item(feature).asset("img").bands
    assert (red.name, red.common_name, red.center_wavelength) == ("B04", "red", 0.665)
    assert (red.scale, red.offset, red.nodata, red.data_type) == (0.0001, None, 0, "uint16")
    assert (nir.scale, nir.offset) == (0.0001, -0.1) and nir.nodata is not None
    assert math.isnan(nir.nodata)


# --------------------------------------------------------------------------- geobox


def test_geobox_of_pc_and_earth_search_assets() -> None:
    pc = parse_item(_features("planetary-computer/items/sentinel-2-l2a.json")[0])
    box = pc.asset("B02").geobox()
    assert box is not None and box.crs is not None
    assert box.crs.epsg == 32658 and box.shape == (10980, 10980)
    bb = box.boundingbox
    assert (bb.left, bb.bottom, bb.right, bb.top) == (600000.0, 5890200.0, 709800.0, 6000000.0)
    scl = pc.asset("SCL").geobox()
    assert scl is not None
    assert scl.shape == (5490, 5490) and scl.boundingbox == bb
    assert pc.asset("product-metadata").geobox() is None

    es = parse_item(_features("earth-search/items/sentinel-2-l2a.json")[0])
    es_box = es.asset("nir").geobox()
    assert es_box is not None and es_box.crs is not None
    assert es_box.crs.epsg == 32613 and es_box.resolution.x == 10
    assert es_box.boundingbox.left == 399960.0 and es_box.boundingbox.top == 4500000.0


# --------------------------------------------------------------------------- geometry and time


def test_unsplit_antimeridian_polygon_is_split() -> None:
    feature = _minimal_item("x", {})
    feature.pop("bbox")
    feature["geometry"] = {
        "type": "Polygon",
        "coordinates": [
            [[179.0, -17.0], [-179.0, -17.0], [-179.0, -16.0], [179.0, -16.0], [179.0, -17.0]]
        ],
    }
    item = parse_item(feature)
    assert isinstance(item.geometry, MultiPolygon) and len(item.geometry.geoms) == 2
    assert item.geometry.area == pytest.approx(2.0)
    assert item.crosses_antimeridian
    assert item.bbox == pytest.approx((179.0, -17.0, -179.0, -16.0))


def test_split_multipolygon_and_wrapping_bbox() -> None:
    feature = _minimal_item("x", {})
    feature["geometry"] = {
        "type": "MultiPolygon",
        "coordinates": [
            [[[179.0, 60.0], [180.0, 60.0], [180.0, 61.0], [179.0, 61.0], [179.0, 60.0]]],
            [[[-180.0, 60.0], [-179.5, 60.0], [-179.5, 61.0], [-180.0, 61.0], [-180.0, 60.0]]],
        ],
    }
    feature["bbox"] = [179.0, 60.0, -179.5, 61.0]
    item = parse_item(feature)
    assert item.crosses_antimeridian
    assert item.geometry is not None
    assert item.geometry.area == pytest.approx(1.5)
    no_geom = parse_item({**feature, "geometry": None})
    assert no_geom.crosses_antimeridian
    footprint = no_geom.footprint()
    assert footprint is not None and footprint.area == pytest.approx(1.5)


def test_fixture_footprints_do_not_cross_antimeridian() -> None:
    items = parse_item_collection(_load("planetary-computer/items/sentinel-2-l2a.json"))
    assert not any(i.crosses_antimeridian for i in items)
    assert max(_bbox(i)[2] for i in items) < 180.0


def test_null_datetime_uses_start_and_offsets_become_utc() -> None:
    feature = _minimal_item("x", {})
    feature["properties"] = {
        "datetime": None,
        "start_datetime": "2020-06-01T02:00:00+02:00",
        "end_datetime": "2020-06-30T23:59:59Z",
    }
    item = parse_item(feature)
    assert item.datetime == item.start_datetime == datetime(2020, 6, 1, 0, 0, tzinfo=UTC)
    assert item.end_datetime == datetime(2020, 6, 30, 23, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"), [("04.00", "04.00"), ("4.0", "04.00"), (5.1, "05.10"), ("N0400", "04.00")]
)
def test_processing_baseline_forms(raw: Any, expected: str) -> None:
    item = parse_item(_minimal_item("x", {}, **{"s2:processing_baseline": raw}))
    assert item.processing_baseline == expected


# --------------------------------------------------------------------------- inputs


def test_pystac_item_and_collection_give_the_same_result() -> None:
    feature = _features("planetary-computer/items/sentinel-2-l2a.json")[0]
    coll = _load("planetary-computer/collections/sentinel-2-l2a.json")
    from_dict = parse_item(feature, coll)
    from_pystac = parse_item(pystac.Item.from_dict(feature), pystac.Collection.from_dict(coll))
    assert from_pystac.id == from_dict.id and from_pystac.datetime == from_dict.datetime
    assert from_pystac.asset("B02") == from_dict.asset("B02")
    assert from_pystac.asset("AOT").bands == from_dict.asset("AOT").bands


def test_parse_item_collection_with_mapping_of_collections() -> None:
    pc_s2 = _load("planetary-computer/items/sentinel-2-l2a.json")["features"][:2]
    naip = _load("planetary-computer/items/naip.json")["features"][:1]
    colls = {
        "sentinel-2-l2a": _load("planetary-computer/collections/sentinel-2-l2a.json"),
        "naip": _load("planetary-computer/collections/naip.json"),
    }
    items = parse_item_collection({"type": "FeatureCollection", "features": pc_s2 + naip}, colls)
    assert [i.collection for i in items] == ["sentinel-2-l2a", "sentinel-2-l2a", "naip"]
    assert items[0].asset("AOT").bands[0].name == "AOT"
    assert len(items[2].asset("image").bands) == 4


def test_asset_lookup_error_lists_available_keys() -> None:
    item = parse_item(_features("earth-search/items/sentinel-1-grd.json")[0])
    with pytest.raises(KeyError) as err:
        item.asset("vv")
    message = str(err.value)
    assert "'vv'" in message and "hh, safe-manifest" in message and item.id in message
    assert isinstance(item.asset("hh"), AssetInfo)


# --------------------------------------------------------------------------- bad input


def _bad(feature: dict[str, Any], collection: dict[str, Any] | None = None) -> ItemParseError:
    with pytest.raises(ItemParseError) as err:
        parse_item(feature, collection)
    return err.value


def test_error_transform_with_five_numbers_names_item_and_field() -> None:
    feature = copy.deepcopy(_features("planetary-computer/items/sentinel-2-l2a.json")[0])
    feature["assets"]["B02"]["proj:transform"] = [10.0, 0.0, 600000.0, 0.0, -10.0]
    err = _bad(feature)
    assert err.item_id == feature["id"] and err.field == "assets.B02.proj:transform"
    assert feature["id"] in str(err) and "assets.B02.proj:transform" in str(err)
    assert "expected 6 or 9 numbers, got 5" in str(err)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("mutate", "field", "text"),
    [
        (lambda f: f["properties"].pop("datetime"), "properties.datetime", "no start_datetime"),
        (
            lambda f: f["properties"].update(datetime="yesterday"),
            "properties.datetime",
            "not an RFC 3339 time",
        ),
        (
            lambda f: f["properties"].update({"proj:transform": [0.6, 0, 1, 0, -0.6, 2, 1, 0, 1]}),
            "properties.proj:transform",
            "must end with 0, 0, 1",
        ),
        (
            lambda f: f["properties"].update({"proj:shape": [12240]}),
            "properties.proj:shape",
            "expected 2 numbers",
        ),
        (
            lambda f: f["properties"].update({"proj:epsg": "UTM17"}),
            "properties.proj:epsg",
            "expected an integer",
        ),
        (lambda f: f["assets"]["image"].pop("href"), "assets.image.href", "missing"),
        (
            lambda f: f["assets"]["image"]["eo:bands"][0].update(center_wavelength="red"),
            "assets.image.bands[0].center_wavelength",
            "expected a number",
        ),
        (lambda f: f.update(bbox=[1, 2, 3]), "bbox", "expected 4 or 6 numbers, got 3"),
        (lambda f: f.update(geometry={"coordinates": []}), "geometry", "not a GeoJSON geometry"),
    ],
)
def test_errors_name_item_and_field(mutate: Any, field: str, text: str) -> None:
    feature = copy.deepcopy(_features("planetary-computer/items/naip.json")[0])
    mutate(feature)
    err = _bad(feature)
    assert err.item_id == "fl_m_2608004_nw_17_060_20191215_20200113"
    assert err.field == field
    assert text in str(err) and err.item_id in str(err)


def test_error_bad_class_value_and_wrong_collection() -> None:
    coll = _load("planetary-computer/collections/esa-worldcover.json")
    bad_classes = copy.deepcopy(coll)
    bad_classes["item_assets"]["map"]["classification:classes"][2]["value"] = "grass"
    feature = _minimal_item("esa-worldcover", {"map": {"href": "m.tif"}})
    err = _bad(feature, bad_classes)
    assert err.field == "assets.map.classification:classes[2].value"
    assert "synthetic-esa-worldcover" in str(err) and "'grass'" in str(err)

    naip = _features("planetary-computer/items/naip.json")[0]
    err = _bad(naip, coll)
    assert err.field == "collection" and "'naip'" in str(err) and "'esa-worldcover'" in str(err)


def test_error_wrong_container_types() -> None:
    fc = _load("earth-search/items/sentinel-1-grd.json")
    with pytest.raises(ItemParseError, match="use parse_item_collection"):
        parse_item({**fc, "id": "page-1"})
    with pytest.raises(ItemParseError, match="use parse_item"):
        parse_item_collection(fc["features"][0])
    with pytest.raises(ItemParseError, match="'id'"):
        parse_item({"type": "Feature", "properties": {}})
