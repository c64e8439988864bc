"""Label product catalog: every YAML loads, legends agree with recorded STAC, errors are clear."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from las_builder._paths import catalog_dir
from las_builder.catalog import (
    CatalogError,
    EarthEngineRef,
    LabelProduct,
    LabelVersion,
    label_product_ids,
    label_products,
    load_label_product,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "stac"
PC_COLLECTIONS = FIXTURES / "planetary-computer" / "collections"

EXPECTED_IDS = {
    "esa-worldcover",
    "io-lulc-annual-v02",
    "esa-cci-lc",
    "modis-12Q1-061",
    "dynamic-world-v1",
    "chesapeake-lc-13",
}

REPO_LABELS = Path(__file__).resolve().parents[2] / "catalog" / "labels"


def _pc_product_ids() -> list[str]:
    ids = []
    for path in sorted(REPO_LABELS.glob("*.yaml")):
        stac = (yaml.safe_load(path.read_text()) or {}).get("stac") or {}
        if stac.get("planetary_computer", True) and stac.get("collection"):
            ids.append(path.stem)
    return ids


# --- every file loads ------------------------------------------------------------------------


def test_every_yaml_loads() -> None:
    products = label_products()
    assert set(products) == EXPECTED_IDS
    assert sorted(products) == label_product_ids()
    for product_id, product in products.items():
        assert isinstance(product, LabelProduct)
        assert product.id == product_id
        assert load_label_product(product_id) == product
        assert (catalog_dir() / "labels" / f"{product_id}.yaml").is_file()


@pytest.mark.parametrize("product_id", sorted(EXPECTED_IDS))
def test_codes_colours_and_lookup(product_id: str) -> None:
    product = load_label_product(product_id)
    codes = product.codes
    assert codes == sorted(codes)
    assert product.nodata not in codes
    colors = product.color_table()
    for code in codes:
        cls = product.class_by_value(code)
        assert cls.value == code and cls.name.strip()
        assert cls.color is not None and cls.color == cls.color.lower()
        assert colors[code] == cls.rgb
        assert all(0 <= c <= 255 for c in colors[code])
        if cls.key is not None:
            assert product.class_by_key(cls.key) is cls
    with pytest.raises(KeyError, match="no class with value"):
        product.class_by_value(-1)
    nodata_class = product.nodata_class
    if nodata_class is not None:
        assert nodata_class.value == product.nodata
        assert product.class_by_value(product.nodata) is nodata_class


def test_products_not_on_planetary_computer_say_where_they_are() -> None:
    for product in label_products().values():
        if product.stac is not None and not product.stac.planetary_computer:
            assert product.stac.note, product.id
            assert product.earth_engine is not None, product.id


def _ee_ref(product: LabelProduct, version: LabelVersion | str) -> EarthEngineRef:
    """``product.earth_engine_for(version)``, which must exist."""
    ref = product.earth_engine_for(version)
    assert ref is not None, (product.id, version)
    return ref


def test_esa_worldcover_details() -> None:
    wc = load_label_product("esa-worldcover")
    assert wc.codes == [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]
    assert wc.nodata == 0 and wc.nodata_class is None
    assert wc.crs == "EPSG:4326"
    assert wc.resolution.unit == "degree"
    assert wc.resolution.value == pytest.approx(1 / 12000)
    assert wc.stac is not None
    assert (wc.stac.collection, wc.stac.asset) == ("esa-worldcover", "map")
    assert [(v.name, v.years()) for v in wc.versions] == [("v100", [2020]), ("v200", [2021])]
    v100 = wc.version_for_year(2020)
    assert _ee_ref(wc, v100).asset == "ESA/WorldCover/v100"
    assert _ee_ref(wc, "v200").asset == "ESA/WorldCover/v200"
    assert _ee_ref(wc, "v200").band == "Map"
    assert wc.color_table()[10] == (0, 100, 0)
    with pytest.raises(KeyError, match="no version covers 2019"):
        wc.version_for_year(2019)


def test_other_products_details() -> None:
    io = load_label_product("io-lulc-annual-v02")
    assert io.codes == [1, 2, 4, 5, 7, 8, 9, 10, 11]
    assert io.is_utm and io.years() == list(range(2017, 2024))
    assert 0 not in io.color_table()
    assert io.class_by_value(10).ignore

    cci = load_label_product("esa-cci-lc")
    regional = {11, 12, 61, 62, 71, 72, 81, 82, 121, 122, 151, 152, 153, 201, 202}
    assert regional <= set(cci.codes)
    assert {c.value for c in cci.classes if c.regional} == regional
    assert cci.codes[0] == 10 and cci.codes[-1] == 220 and 0 not in cci.codes
    assert cci.years() == list(range(1992, 2021))
    assert cci.version_for_year(2015).name == "v2.0.7cds"
    assert cci.version_for_year(2016).name == "v2.1.1"
    assert cci.resolution.value == pytest.approx(1 / 360)

    modis = load_label_product("modis-12Q1-061")
    assert modis.codes == list(range(1, 18))
    assert modis.nodata == 255
    assert "+proj=sinu" in modis.crs and "+R=6371007.181" in modis.crs
    assert (modis.resolution.value, modis.resolution.unit) == (463.312716528, "metre")
    assert modis.years() == list(range(2001, 2023))
    assert modis.stac is not None
    assert (modis.stac.collection, modis.stac.asset) == ("modis-12Q1-061", "LC_Type1")

    dw = load_label_product("dynamic-world-v1")
    assert dw.codes == list(range(9))
    assert [dw.class_by_value(v).key for v in dw.codes] == [
        "water", "trees", "grass", "flooded_vegetation", "crops",
        "shrub_and_scrub", "built", "bare", "snow_and_ice",
    ]  # fmt: skip
    assert dw.class_by_value(8).color == "#b39fe1"
    assert dw.earth_engine is not None and dw.stac is not None
    assert (dw.earth_engine.asset, dw.earth_engine.band) == ("GOOGLE/DYNAMICWORLD/V1", "label")
    assert (dw.stac.collection, dw.stac.asset) == ("dynamic-world-v1", "label")
    assert dw.versions[0].ongoing
    assert dw.years(until=2024) == list(range(2015, 2025))

    ches = load_label_product("chesapeake-lc-13")
    assert ches.codes == list(range(1, 14))
    assert ches.resolution.value == 1 and ches.nominal_resolution_m == 1
    assert ches.version_for_year(2014).name == "2013-2014"


# --- agreement with the recorded Planetary Computer collections --------------------------------


def _fixture(collection_id: str) -> dict[str, Any]:
    path = PC_COLLECTIONS / f"{collection_id}.json"
    if not path.is_file():
        pytest.skip(f"fixture {path} not present")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _fixture_legend(asset: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Normalise a STAC legend (classification or file extension) to {value: entry}."""
    legend: dict[int, dict[str, Any]] = {}
    if "classification:classes" in asset:
        for c in asset["classification:classes"]:
            hint = c.get("color_hint", c.get("color-hint"))
            legend[c["value"]] = {
                "name": c["description"],
                "key": c.get("name"),
                "color": f"#{hint.lower()}" if hint else None,
                "no_data": c.get("no_data"),
                "regional": c.get("regional", False),
            }
    elif "file:values" in asset:
        for entry in asset["file:values"]:
            for value in entry["values"]:
                legend[value] = {"name": entry["summary"], "key": None, "color": None,
                                 "no_data": None, "regional": None}  # fmt: skip
    return legend


def _fixture_band(collection: dict[str, Any], asset: dict[str, Any]) -> dict[str, Any]:
    bands = asset.get("raster:bands") or (collection.get("summaries") or {}).get("raster:bands")
    assert bands, "fixture has no raster:bands"
    return dict(bands[0])


def _year_span(collection: dict[str, Any]) -> tuple[int, int]:
    start, end = collection["extent"]["temporal"]["interval"][0]
    t0 = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
    t1 = dt.datetime.fromisoformat(end.replace("Z", "+00:00"))
    if (t1.month, t1.day, t1.hour, t1.minute, t1.second) == (1, 1, 0, 0, 0):
        t1 -= dt.timedelta(seconds=1)  # an exclusive end at New Year belongs to the year before
    return t0.year, t1.year


@pytest.mark.parametrize("product_id", _pc_product_ids())
def test_legend_agrees_with_planetary_computer(product_id: str) -> None:
    product = load_label_product(product_id)
    assert product.stac is not None
    collection = _fixture(product.stac.collection)
    assert collection["id"] == product.stac.collection
    asset = collection["item_assets"][product.stac.asset]
    legend = _fixture_legend(asset)
    assert legend, f"fixture {product.stac.collection} has no legend on asset {product.stac.asset}"

    ours = {c.value: c for c in product.classes}
    assert set(ours) == set(legend)
    band = _fixture_band(collection, asset)
    for value, expected in legend.items():
        cls = ours[value]
        assert cls.name == expected["name"], value
        if expected["key"] is not None:
            assert cls.key == expected["key"], value
        if expected["color"] is not None:
            assert cls.color == expected["color"], value
        if expected["regional"] is not None:
            assert cls.regional == expected["regional"], value
        listed_as_nodata = expected["no_data"] or value == band.get("nodata")
        assert cls.is_nodata == bool(listed_as_nodata), value


@pytest.mark.parametrize("product_id", _pc_product_ids())
def test_encoding_licence_and_years_agree_with_planetary_computer(product_id: str) -> None:
    product = load_label_product(product_id)
    assert product.stac is not None
    collection = _fixture(product.stac.collection)
    asset = collection["item_assets"][product.stac.asset]
    band = _fixture_band(collection, asset)
    assert product.nodata == band["nodata"]
    if "data_type" in band:
        assert product.dtype == band["data_type"]
    assert product.nominal_resolution_m == band["spatial_resolution"]
    assert product.license == collection["license"]
    first, last = _year_span(collection)
    assert (product.years()[0], product.years()[-1]) == (first, last)
    summaries = collection.get("summaries") or {}
    for version in product.versions:
        for key, value in version.stac_query.items():
            assert value in summaries[key], (version.name, key)


# --- bad files ---------------------------------------------------------------------------------


def _base(product_id: str = "esa-worldcover") -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO_LABELS / f"{product_id}.yaml").read_text())
    return data


def _write(tmp_path: Path, stem: str, text: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "labels"
    folder.mkdir(exist_ok=True)
    path = folder / f"{stem}.yaml"
    path.write_text(text)
    monkeypatch.setenv("LAS_CATALOG", str(tmp_path))
    return path


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return mutate


def _drop(path: tuple[Any, ...]) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]

    return mutate


def _append_class(entry: dict[str, Any]) -> Any:
    return lambda data: data["classes"].append(entry)


BAD_CASES = [
    ("bad-colour", _set(("classes", 2, "color"), "#12345"), "classes[2].color", "#rrggbb"),
    ("colour-missing", _drop(("classes", 2, "color")), "classes[2].color", "quoted string"),
    ("empty-name", _set(("classes", 1, "name"), "   "), "classes[1].name", "at least 1"),
    ("typo-field", _set(("classes", 1, "colour"), "#000000"), "classes[1].colour",
     "allowed here: value, name"),
    ("duplicate-value", _append_class({"value": 10, "name": "Again", "color": "#000000"}),
     "classes", "class value listed more than once: 10"),
    ("nodata-as-class", _append_class({"value": 0, "name": "No data", "color": "#000000"}),
     "classes", "set `is_nodata: true` if the official legend lists it"),
    ("nodata-flag-wrong", _append_class({"value": 7, "name": "X", "is_nodata": True}),
     "classes", "is_nodata is set but the product's nodata is 0"),
    ("value-too-big", _set(("classes", 1, "value"), 300), "classes", "300 does not fit uint8"),
    ("value-not-int", _set(("classes", 1, "value"), "20"), "classes[1].value", "valid integer"),
    ("bad-dtype", _set(("dtype",), "uint9"), "dtype", "'uint8'"),
    ("missing-title", _drop(("title",)), "title", "required field is missing"),
    ("bad-crs", _set(("crs",), "not-a-crs"), "crs", "EPSG:<code>"),
    ("unit-mismatch", _set(("crs",), "EPSG:32633"), "resolution", "use 'metre'"),
    ("overlapping-versions", _set(("versions", 1, "year"), 2020), "versions",
     "overlap or are out of order"),
    ("year-and-start", _set(("versions", 0, "start_year"), 2020), "versions[0]",
     "either `year` or `start_year`"),
    ("stac-typo", _set(("stac", "colection"), "x"), "stac.colection", "allowed here: collection"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "field", "hint"),
    [case[1:] for case in BAD_CASES],
    ids=[case[0] for case in BAD_CASES],
)
def test_bad_yaml_names_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mutate: Any, field: str, hint: str
) -> None:
    data = copy.deepcopy(_base())
    mutate(data)
    path = _write(tmp_path, "esa-worldcover", yaml.safe_dump(data, sort_keys=False), monkeypatch)
    with pytest.raises(CatalogError) as info:
        load_label_product("esa-worldcover")
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == path
    assert err.field == field
    assert str(path) in str(err)
    assert f"field {field!r}" in str(err)
    assert hint in str(err)
    with pytest.raises(CatalogError, match="esa-worldcover.yaml"):
        label_products()


def test_id_must_match_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "renamed", yaml.safe_dump(_base()), monkeypatch)
    with pytest.raises(CatalogError) as info:
        load_label_product("renamed")
    assert info.value.path == path
    assert info.value.field == "id"
    assert "must equal the file name" in str(info.value)


def test_unparsable_and_non_mapping_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "broken", "id: [unclosed\n", monkeypatch)
    with pytest.raises(CatalogError, match="not valid YAML") as info:
        load_label_product("broken")
    assert info.value.path == path
    path.write_text("- just\n- a list\n")
    with pytest.raises(CatalogError, match="must be a YAML mapping"):
        load_label_product("broken")


def test_unknown_product(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "esa-worldcover", yaml.safe_dump(_base()), monkeypatch)
    with pytest.raises(CatalogError, match=r"no label product 'nope'; known: esa-worldcover"):
        load_label_product("nope")


def test_several_problems_are_all_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _base()
    data["classes"][0]["color"] = "green"
    data["classes"][3]["name"] = ""
    data["license"] = ""
    _write(tmp_path, "esa-worldcover", yaml.safe_dump(data), monkeypatch)
    with pytest.raises(CatalogError) as info:
        load_label_product("esa-worldcover")
    assert set(info.value.fields) == {"classes[0].color", "classes[3].name", "license"}
    assert "3 problems" in str(info.value)
    assert "[class with value 10]" in str(info.value)


def test_nodata_listed_by_official_legend_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _base()
    data["classes"].insert(0, {"value": 0, "name": "No data", "is_nodata": True})
    _write(tmp_path, "esa-worldcover", yaml.safe_dump(data), monkeypatch)
    product = load_label_product("esa-worldcover")
    assert product.nodata_class is not None and product.nodata_class.color is None
    assert 0 not in product.codes and 0 not in product.color_table()
    assert product.class_by_value(0).name == "No data"
