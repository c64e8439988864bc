"""Sentinel-2 radiometry: baseline harmonisation, catalog key resolution, cloud composite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from las_builder.build.sample import SCL_CLOUD, median_composite
from las_builder.imagery import S2_BANDS, asset_key, harmonize_s2, s1_to_units, s2_offset_dn
from las_builder.stac import parse_item


def _item(
    baseline: str | None, collection: str = "sentinel-2-l2a", offset: float | None = None
) -> dict:
    band: dict = {"name": "B04", "center_wavelength": 0.665}
    asset = {"href": "x.tif", "type": "image/tiff", "roles": ["data"], "eo:bands": [band]}
    if offset is not None:
        asset["raster:bands"] = [{"scale": 0.0001, "offset": offset}]
    props = {"datetime": "2022-07-19T10:36:21Z"}
    if baseline:
        props["s2:processing_baseline"] = baseline
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"S2-{baseline}",
        "collection": collection,
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
        "bbox": [0, 0, 1, 1],
        "properties": props,
        "assets": {"B04": asset, "SCL": dict(asset)},
        "links": [],
    }


@pytest.mark.parametrize(
    ("baseline", "expected"),
    [("02.12", 0), ("03.01", 0), ("03.99", 0), ("04.00", 1000), ("05.11", 1000)],
)
def test_offset_follows_the_processing_baseline(baseline: str, expected: int) -> None:
    assert s2_offset_dn(parse_item(_item(baseline))) == expected


def test_offset_from_raster_bands_when_no_baseline() -> None:
    assert s2_offset_dn(parse_item(_item(None, offset=-0.1))) == 1000
    assert s2_offset_dn(parse_item(_item(None))) == 0


@pytest.mark.parametrize("baseline", ["02.12", "03.01"])
def test_a_baseline_before_0400_has_no_offset_whatever_raster_bands_says(baseline: str) -> None:
    # Earth Search's older items repeat raster:bands offset -0.1 on items of every baseline
    assert s2_offset_dn(parse_item(_item(baseline, offset=-0.1))) == 0
    assert s2_offset_dn(parse_item(_item("04.00", offset=-0.1))) == 1000


def test_earth_search_collection_1_follows_its_raster_bands_offset() -> None:
    """Collection 1 keeps the BOA offset in its pixels and declares it (-0.1 at 0.0001)."""
    c1 = parse_item(_item("05.11", collection="sentinel-2-c1-l2a", offset=-0.1))
    assert s2_offset_dn(c1) == 1000


@pytest.mark.parametrize(("flag", "expected"), [(True, 0), (False, 1000), ("false", 1000)])
def test_only_a_true_boa_offset_applied_flag_means_harmonised(flag: object, expected: int) -> None:
    raw = _item("05.11", offset=-0.1)
    raw["properties"]["earthsearch:boa_offset_applied"] = flag
    assert s2_offset_dn(parse_item(raw)) == expected


def test_harmonize_removes_offset_and_keeps_nodata() -> None:
    dn = np.array([[[0, 1000, 1500, 11000]]], dtype=np.uint16)
    after = harmonize_s2(dn, parse_item(_item("04.00")))
    assert after.tolist() == [[[0, 1, 500, 10000]]]
    before = harmonize_s2(dn, parse_item(_item("03.01")))
    assert before.tolist() == dn.tolist()


def test_both_sides_of_0400_agree_after_harmonisation() -> None:
    reflectance = np.array([[[0.05, 0.12, 0.3]]])
    old = harmonize_s2((reflectance * 10000).astype(np.uint16), parse_item(_item("03.01")))
    new = harmonize_s2((reflectance * 10000 + 1000).astype(np.uint16), parse_item(_item("04.00")))
    np.testing.assert_array_equal(old, new)


def test_real_items_resolve_every_band(stac_fixtures: Path) -> None:
    files = [
        "planetary-computer/items/sentinel-2-l2a.json",
        "earth-search/items/sentinel-2-l2a.json",
        "earth-search/items/sentinel-2-c1-l2a.json",
    ]
    offsets: dict[str, set[int]] = {}
    for name in files:
        for raw in json.loads((stac_fixtures / name).read_text())["features"]:
            if "assets" not in raw:
                continue  # a few Earth Search features are summaries without assets
            item = parse_item(raw)
            keys = [asset_key(item, "sentinel-2-l2a", b) for b in (*S2_BANDS, "SCL")]
            assert len(set(keys)) == len(S2_BANDS) + 1
            assert item.collection is not None
            offsets.setdefault(name.split("/")[0] + "/" + item.collection, set()).add(
                s2_offset_dn(item)
            )
    assert offsets["planetary-computer/sentinel-2-l2a"] == {0}  # all baseline 02.12
    assert offsets["earth-search/sentinel-2-l2a"] == {0}  # earthsearch:boa_offset_applied
    # Collection 1 keeps the offset in its pixels (raster:bands offset -0.1, baseline 05.11).
    assert offsets["earth-search/sentinel-2-c1-l2a"] == {1000}


def test_missing_band_names_the_item_and_assets() -> None:
    item = parse_item(_item("04.00"))
    with pytest.raises(KeyError, match="S2-04.00.*B11.*assets: B04, SCL"):
        asset_key(item, "sentinel-2-l2a", "B11")


def test_median_composite_uses_only_clear_pixels() -> None:
    a = np.full((1, 2, 2), 100, dtype=np.uint16)
    b = np.full((1, 2, 2), 200, dtype=np.uint16)
    c = np.full((1, 2, 2), 900, dtype=np.uint16)  # a cloud where flagged
    clear, cloud = 4, SCL_CLOUD[1]
    scl_a = np.array([[clear, clear], [clear, cloud]], dtype=np.uint8)
    scl_b = np.array([[clear, clear], [cloud, cloud]], dtype=np.uint8)
    scl_c = np.array([[clear, cloud], [cloud, cloud]], dtype=np.uint8)
    out = median_composite([a, b, c], [scl_a, scl_b, scl_c])
    assert out[0].tolist() == [[200, 150], [100, 100]]  # last pixel: no clear view -> first scene


def test_sentinel1_units() -> None:
    linear = np.array([1.0, 0.1, np.nan, 0.0], dtype=np.float32)
    db = s1_to_units(linear, "db")
    assert db[:2].tolist() == pytest.approx([0.0, -10.0])
    assert np.isnan(db[2:]).all()
    with pytest.raises(ValueError, match="linear.*db"):
        s1_to_units(linear, "dB!")
