"""LAS taxonomy and product mappings: complete, faithful, checked, and usable as lookup tables."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from las_builder._paths import catalog_dir
from las_builder.catalog import (
    IGNORE,
    LAS_IGNORE,
    LAS_NODATA,
    LUT_UNMAPPED,
    WARNING,
    CatalogError,
    MappingRule,
    ProductMapping,
    UnknownCodeError,
    check_catalog,
    label_product_ids,
    load_label_product,
    load_mapping,
    load_taxonomy,
    mapping_ids,
)
from las_builder.cli_catalog import catalog_app

REQUIRED_KEYS = {
    "water",
    "trees",
    "shrubland",
    "grassland",
    "cropland",
    "built_up",
    "bare_sparse_vegetation",
    "snow_and_ice",
    "herbaceous_wetland",
    "flooded_vegetation",
    "mangroves",
    "moss_and_lichen",
}
PRODUCTS = sorted(label_product_ids())


def code(key: str) -> int:
    return load_taxonomy().by_key(key).code


# --- the taxonomy ----------------------------------------------------------------------------


def test_taxonomy_classes() -> None:
    tax = load_taxonomy()
    assert tax.id == "las"
    assert (tax.nodata, tax.ignore) == (LAS_NODATA, LAS_IGNORE) == (0, 255)
    assert REQUIRED_KEYS <= set(tax.keys)
    assert tax.codes == list(range(1, len(tax) + 1))
    assert LUT_UNMAPPED not in tax.codes and LAS_IGNORE not in tax.codes
    assert len({c.color for c in tax.classes}) == len(tax)
    for c in tax.classes:
        assert re.fullmatch(r"#[0-9a-f]{6}", c.color)
        assert c.name.strip() and len(c.definition) > 80
        assert tax.by_code(c.code) is c and tax.by_key(c.key) is c
        assert tax.color_table()[c.code] == c.rgb
    assert "5 m" in tax.by_key("trees").definition and "10 %" in tax.by_key("trees").definition
    assert tax.code_of(IGNORE) == LAS_IGNORE
    with pytest.raises(KeyError, match="no class 'forest'"):
        tax.by_key("forest")
    with pytest.raises(KeyError, match="no class with code 0"):
        tax.by_code(0)


# --- every product fully mapped --------------------------------------------------------------


def test_every_product_has_a_mapping() -> None:
    assert mapping_ids() == PRODUCTS
    assert len(PRODUCTS) == 6


@pytest.mark.parametrize("product_id", PRODUCTS)
def test_product_fully_mapped(product_id: str) -> None:
    mapping = load_mapping(product_id)
    product = load_label_product(product_id)
    tax = load_taxonomy()
    assert mapping.unmapped == []
    assert sorted(mapping.rules) == product.codes
    assert set(mapping.mapped) | set(mapping.ignored) == set(product.codes)
    assert not set(mapping.mapped) & set(mapping.ignored)
    assert product.nodata not in mapping.rules
    for native, rule in mapping.rules.items():
        assert rule.to == IGNORE or rule.to in tax.keys
        if product.class_by_value(native).ignore:
            assert rule.to == IGNORE
        if rule.to == IGNORE:
            assert rule.why, f"{product_id} {native}: an ignore needs a why"


@pytest.mark.parametrize(
    ("product_id", "native", "expected"),
    [
        ("modis-12Q1-061", 14, IGNORE),  # Cropland/Natural Vegetation Mosaics
        ("modis-12Q1-061", 9, IGNORE),  # Savannas
        ("modis-12Q1-061", 11, "flooded_vegetation"),
        ("modis-12Q1-061", 1, "trees"),
        ("io-lulc-annual-v02", 10, IGNORE),  # Clouds
        ("io-lulc-annual-v02", 11, IGNORE),  # Rangeland: grass + shrub
        ("io-lulc-annual-v02", 4, "flooded_vegetation"),
        ("esa-worldcover", 95, "mangroves"),
        ("esa-worldcover", 90, "herbaceous_wetland"),
        ("esa-worldcover", 100, "moss_and_lichen"),
        ("esa-cci-lc", 11, "cropland"),
        ("esa-cci-lc", 12, "cropland"),
        ("esa-cci-lc", 30, IGNORE),
        ("esa-cci-lc", 40, IGNORE),
        ("esa-cci-lc", 100, IGNORE),
        ("esa-cci-lc", 110, IGNORE),
        ("esa-cci-lc", 170, "mangroves"),
        ("esa-cci-lc", 153, "bare_sparse_vegetation"),
        ("dynamic-world-v1", 0, "water"),
        ("dynamic-world-v1", 3, "flooded_vegetation"),
        ("chesapeake-lc-13", 5, IGNORE),  # Low Vegetation: grass + crops
        ("chesapeake-lc-13", 13, IGNORE),  # Aberdeen Proving Ground
        ("chesapeake-lc-13", 2, "herbaceous_wetland"),
        ("chesapeake-lc-13", 12, "trees"),
    ],
)
def test_mapping_decisions(product_id: str, native: int, expected: str) -> None:
    mapping = load_mapping(product_id)
    assert mapping.rules[native].to == expected
    want = LAS_IGNORE if expected == IGNORE else code(expected)
    assert mapping.target(native) == want


def test_every_las_class_is_used() -> None:
    used = {r.to for p in PRODUCTS for r in load_mapping(p).rules.values()}
    assert REQUIRED_KEYS <= used


# --- lookup table and map --------------------------------------------------------------------


def test_lut_worldcover() -> None:
    wc = load_mapping("esa-worldcover")
    lut = wc.lut()
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert lut[0] == LAS_NODATA
    assert lut[10] == code("trees") and lut[95] == code("mangroves")
    unmapped = np.setdiff1d(np.arange(256), [0, *wc.product.codes])
    assert (lut[unmapped] == LUT_UNMAPPED).all()
    native = np.array([[10, 20, 0], [95, 100, 80]], dtype=np.uint8)
    expected = np.array(
        [
            [code("trees"), code("shrubland"), LAS_NODATA],
            [code("mangroves"), code("moss_and_lichen"), code("water")],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(lut[native], expected)
    out = wc.map(native)
    assert out.dtype == np.uint8 and out.shape == native.shape
    np.testing.assert_array_equal(out, expected)
    # any integer dtype, same result
    np.testing.assert_array_equal(wc.map(native.astype(np.int64)), expected)
    np.testing.assert_array_equal(wc.map(native.astype(np.uint16)), expected)


def test_lut_nodata_and_ignore_per_product() -> None:
    dw = load_mapping("dynamic-world-v1")  # 0 is Water, 255 the fill
    np.testing.assert_array_equal(
        dw.map(np.array([0, 255, 3], dtype=np.uint8)),
        [code("water"), LAS_NODATA, code("flooded_vegetation")],
    )
    modis = load_mapping("modis-12Q1-061")  # 255 Unclassified is nodata
    np.testing.assert_array_equal(
        modis.map(np.array([255, 14, 17], dtype=np.uint8)),
        [LAS_NODATA, LAS_IGNORE, code("water")],
    )
    esri = load_mapping("io-lulc-annual-v02")
    np.testing.assert_array_equal(
        esri.map(np.array([0, 10, 11, 2], dtype=np.uint8)),
        [LAS_NODATA, LAS_IGNORE, LAS_IGNORE, code("trees")],
    )


def test_lut_dtype_max() -> None:
    cci = load_mapping("esa-cci-lc")
    lut = cci.lut(dtype_max=1000)
    assert lut.shape == (1001,) and (lut[221:] == LUT_UNMAPPED).all()
    assert lut[220] == code("snow_and_ice")
    with pytest.raises(ValueError, match="below legend code 220"):
        cci.lut(dtype_max=200)


def test_unknown_codes_raise() -> None:
    wc = load_mapping("esa-worldcover")
    data = np.array([[10, 7, 7], [300, 10, -1]], dtype=np.int32)
    with pytest.raises(UnknownCodeError) as info:
        wc.map(data)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.product == "esa-worldcover"
    assert err.codes == {-1: 1, 7: 2, 300: 1}
    assert err.unmapped == []
    text = str(err)
    assert text.startswith("esa-worldcover:")
    assert "7 (2 px)" in text and "300 (1 px)" in text and "-1 (1 px)" in text
    assert "10 (" not in text
    with pytest.raises(UnknownCodeError, match="dynamic-world-v1: codes not in the legend: 9 "):
        load_mapping("dynamic-world-v1").map(np.array([9, 0], dtype=np.uint8))
    with pytest.raises(TypeError, match="integer array"):
        wc.map(np.array([10.0]))


def test_partial_mapping_is_detected() -> None:
    full = load_mapping("esa-worldcover")
    rules = {c: r for c, r in full.rules.items() if c != 95}
    partial = ProductMapping(product=full.product, taxonomy=full.taxonomy, rules=rules)
    assert partial.unmapped == [95]
    assert partial.lut()[95] == LUT_UNMAPPED
    np.testing.assert_array_equal(partial.map(np.array([10], dtype=np.uint8)), [code("trees")])
    with pytest.raises(UnknownCodeError, match="missing from taxonomy/mappings") as info:
        partial.map(np.array([95, 95, 10], dtype=np.uint8))
    assert info.value.unmapped == [95] and info.value.codes == {95: 2}


def test_product_mapping_validates_rules() -> None:
    full = load_mapping("io-lulc-annual-v02")
    for rules, match in [
        ({1: MappingRule(to="forest")}, "not a class of taxonomy"),
        ({3: MappingRule(to="grassland")}, "code 3 is not in the legend"),
        ({0: MappingRule(to="water")}, "nodata"),
        ({10: MappingRule(to="built_up")}, "map it to ignore"),
    ]:
        with pytest.raises(ValidationError, match=match):
            ProductMapping(product=full.product, taxonomy=full.taxonomy, rules=rules)
    assert MappingRule.model_validate("trees") == MappingRule(to="trees")


# --- check_catalog ---------------------------------------------------------------------------


def test_check_catalog_clean() -> None:
    assert check_catalog() == []


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


WC = "taxonomy/mappings/esa-worldcover.yaml"
DW = "taxonomy/mappings/dynamic-world-v1.yaml"


def _zero_without_nodata(catalog: Path, target: str) -> None:
    """Give WorldCover no nodata value and its tree cover class the code 0, mapped to target."""
    _edit(catalog / "labels/esa-worldcover.yaml", "nodata: 0\n", "nodata: null\n")
    _edit(catalog / "labels/esa-worldcover.yaml", "  - value: 10\n", "  - value: 0\n")
    _edit(catalog / WC, "  10: trees", f"  0: {target}")


# Breakers return whatever their last call does (shutil.copy: the destination); it is unused.
BROKEN: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing code": (
        lambda c: _edit(c / WC, "  95: mangroves ", "  # 95 removed "),
        "esa-worldcover.yaml: legend codes neither mapped nor ignored: 95 (Mangroves)",
    ),
    "unknown code": (
        lambda c: _edit(c / WC, "  10: trees", "  7: trees\n  10: trees"),
        "esa-worldcover.yaml: map.7: code 7 is not in the legend of esa-worldcover",
    ),
    "unknown target": (
        lambda c: _edit(c / WC, "  10: trees", "  10: forest"),
        "map.10: target 'forest' is not a class of taxonomy las",
    ),
    "repeated code": (
        lambda c: _edit(c / WC, "  10: trees", "  10: trees\n  10: shrubland"),
        "key 10 is repeated",
    ),
    "ignored legend entry mapped": (
        lambda c: _edit(c / "taxonomy/mappings/io-lulc-annual-v02.yaml", "to: ignore", "to: water"),
        "io-lulc-annual-v02.yaml: map.10: the legend marks 10 (Clouds)",
    ),
    "missing mapping file": (
        lambda c: (c / WC).unlink(),
        "no mapping for product 'esa-worldcover'",
    ),
    "mapping without product": (
        lambda c: shutil.copy(c / WC, c / "taxonomy/mappings/nowhere.yaml"),
        "nowhere.yaml: no label product 'nowhere'",
    ),
    "class without colour": (
        lambda c: _edit(c / "taxonomy/las.yaml", '    color: "#ffbb22"\n', ""),
        "taxonomy/las.yaml: classes[2] (code 3).color: required field is missing",
    ),
    "class without name": (
        lambda c: _edit(c / "taxonomy/las.yaml", "    name: Grassland\n", '    name: " "\n'),
        "classes[3] (code 4).name",
    ),
    "gap in codes": (
        lambda c: _edit(c / "taxonomy/las.yaml", "code: 12", "code: 13"),
        "class codes must be 1..12 in ascending order without gaps",
    ),
    "duplicate colour": (
        lambda c: _edit(c / "taxonomy/las.yaml", '"#ffbb22"', '"#006400"'),
        "class color used more than once: #006400",
    ),
    "legend problem": (
        lambda c: _edit(c / "labels/esa-worldcover.yaml", 'color: "#006400"', 'color: "green"'),
        "labels/esa-worldcover.yaml: classes[0].color: 'green' is not a colour",
    ),
    # a rule's `also` (classes its vote supports besides its target)
    "also naming no class": (
        lambda c: _edit(c / DW, "also: [mangroves]", "also: [mangrove]"),
        "dynamic-world-v1.yaml: map.1.also: 'mangrove' is not a class of taxonomy las",
    ),
    "also naming the rule's own target": (
        lambda c: _edit(c / DW, "also: [mangroves]", "also: [trees]"),
        "map.1.also: 'trees' is the rule's own target; remove it",
    ),
    "also on an ignored code": (
        lambda c: _edit(
            c / DW,
            "  8:                          # Snow and ice\n    to: ignore",
            "  8:                          # Snow and ice\n    to: ignore\n"
            "    also: [snow_and_ice]",
        ),
        "map.8.also: code 8 maps to ignore, which casts no vote to share",
    ),
    "also listing a class twice": (
        lambda c: _edit(c / DW, "also: [mangroves]", "also: [mangroves, mangroves]"),
        "map.1.also: mangroves listed more than once",
    ),
    # pydantic read "20" as 20: with `20:` beside it one rule silently replaced the other
    "quoted code beside the same code": (
        lambda c: _edit(c / WC, "  20: shrubland", '  20: shrubland\n  "20": cropland'),
        "map: keys must be native codes written as plain integers",
    ),
    # YAML's `true:` was read as code 1
    "boolean code": (
        lambda c: _edit(c / WC, "  10: trees", "  10: trees\n  true: water"),
        "got True (bool)",
    ),
    "taxonomy that does not exist": (
        lambda c: _edit(c / WC, "taxonomy: las", "taxonomy: lass"),
        "esa-worldcover.yaml: taxonomy: no taxonomy 'lass' in",
    ),
    # label files were read without the repeated-key check: the last value won silently
    "repeated key in a legend": (
        lambda c: _edit(c / "labels/esa-worldcover.yaml", "nodata: 0\n", "nodata: 0\nnodata: 20\n"),
        "labels/esa-worldcover.yaml: is not valid YAML: while constructing a mapping",
    ),
    # PyYAML raised a bare ValueError: a traceback instead of a catalog error
    "impossible date": (
        lambda c: _edit(c / "labels/esa-worldcover.yaml", "name: v100", "name: 2021-02-30"),
        "'2021-02-30' looks like a date but is not one (day is out of range for month)",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_catalog_reports_broken(catalog_copy: Path, case: str) -> None:
    breaker, expected = BROKEN[case]
    breaker(catalog_copy)
    problems = check_catalog()
    errors = [p for p in problems if not p.startswith(WARNING)]
    assert errors, problems
    assert any(expected in p for p in errors), problems


def test_load_mapping_raises_catalog_error(catalog_copy: Path) -> None:
    _edit(catalog_copy / WC, "  10: trees", "  10: forest")
    with pytest.raises(CatalogError) as info:
        load_mapping("esa-worldcover")
    assert info.value.field == "map.10"
    assert info.value.path == catalog_copy / WC


def test_yaml_errors_give_the_line(catalog_copy: Path) -> None:
    _edit(catalog_copy / "labels/esa-worldcover.yaml", "name: v100", "name: 2021-02-30")
    with pytest.raises(CatalogError) as info:
        load_label_product("esa-worldcover")
    line = (catalog_copy / "labels/esa-worldcover.yaml").read_text().split("2021-02-30")[0]
    assert f"at line {line.count(chr(10)) + 1}, column" in str(info.value)
    assert info.value.path == catalog_copy / "labels/esa-worldcover.yaml"


def test_merged_keys_may_be_overridden(catalog_copy: Path) -> None:
    # `<<: *anchor` then the same key is YAML's override, not a repeated key
    _edit(catalog_copy / WC, "  10: trees ", "  10: &rule {to: trees, why: Tree cover.}\n  11: ")
    _edit(catalog_copy / WC, "  11: ", "")
    _edit(catalog_copy / WC, "  20: shrubland", "  20: {<<: *rule, to: shrubland}")
    mapping = load_mapping("esa-worldcover")
    assert (mapping.rules[10].to, mapping.rules[20].to) == ("trees", "shrubland")
    assert mapping.rules[20].why == "Tree cover."


def test_a_product_without_nodata_is_filled_with_a_value_no_class_uses(
    catalog_copy: Path,
) -> None:
    """Builds read such a product with ``fill`` where no file covers the sample (GDAL's 0
    would have been tree cover here, or an unknown code failing the sample); it maps to LAS
    nodata, and 0 stays a class."""
    _zero_without_nodata(catalog_copy, "trees")
    assert check_catalog() == []
    product = load_label_product("esa-worldcover")
    assert product.nodata is None and product.fill == 255
    mapping = load_mapping("esa-worldcover")
    trees = mapping.taxonomy.code_of("trees")
    assert mapping.map(np.array([0, 255, 20], dtype=np.uint8)).tolist() == [trees, LAS_NODATA, 3]
    # the largest value no legend entry uses, also for wide dtypes mapped without a full table
    _edit(catalog_copy / "labels/esa-worldcover.yaml", "dtype: uint8", "dtype: uint16")
    _edit(catalog_copy / "labels/esa-worldcover.yaml", "  - value: 20\n", "  - value: 65535\n")
    _edit(catalog_copy / WC, "  20: shrubland", "  65535: shrubland")
    mapping = load_mapping("esa-worldcover")
    assert mapping.product.fill == 65534
    got = mapping.map(np.array([0, 65534, 65535], dtype=np.uint16)).tolist()
    assert got == [trees, LAS_NODATA, mapping.taxonomy.code_of("shrubland")]


def test_32_bit_products_map_without_a_table_of_the_whole_range(catalog_copy: Path) -> None:
    # lut() used to cover the dtype: 4 GiB for uint32, allocated for every sample
    _edit(catalog_copy / "labels/esa-worldcover.yaml", "dtype: uint8", "dtype: uint32")
    mapping = load_mapping("esa-worldcover")
    assert mapping.lut().shape == (101,)
    native = np.array([[10, 0], [100, 95]], dtype=np.uint32)
    assert mapping.map(native).tolist() == [[2, LAS_NODATA], [11, 10]]
    with pytest.raises(UnknownCodeError, match=r"codes not in the legend: 4000000000 \(1 px\)"):
        mapping.map(np.array([10, 4_000_000_000], dtype=np.uint32))


def test_negative_legend_codes_map(catalog_copy: Path) -> None:
    # `las catalog check` accepted them, then every build failed in lut() with a ValueError
    label = catalog_copy / "labels/esa-worldcover.yaml"
    _edit(label, "dtype: uint8", "dtype: int16")
    _edit(label, "nodata: 0\n", "nodata: -9999\n")
    _edit(label, "  - value: 20\n", "  - value: -20\n")
    _edit(catalog_copy / WC, "  20: shrubland", "  -20: shrubland")
    assert not [p for p in check_catalog() if not p.startswith(WARNING)]
    mapping = load_mapping("esa-worldcover")
    native = np.array([[-20, 10], [-9999, 100]], dtype=np.int16)
    assert mapping.map(native).tolist() == [[3, 2], [LAS_NODATA, 11]]
    with pytest.raises(UnknownCodeError) as info:
        mapping.map(np.array([-21, 0, 20], dtype=np.int16))
    assert info.value.codes == {-21: 1, 0: 1, 20: 1}
    huge = np.array([2**64 - 20], dtype=np.uint64)  # -20 once wrapped to int64
    with pytest.raises(UnknownCodeError):
        mapping.map(huge)


def test_check_catalog_warns_on_unused_class(catalog_copy: Path) -> None:
    _edit(catalog_copy / WC, "  95: mangroves", "  95: trees")
    _edit(catalog_copy / "taxonomy/mappings/esa-cci-lc.yaml", "    to: mangroves", "    to: trees")
    assert check_catalog() == [f"{WARNING}LAS class 10 'mangroves' is the target of no product"]


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_check_ok() -> None:
    result = CliRunner().invoke(catalog_app, ["check"])
    assert result.exit_code == 0, result.output
    for product_id in PRODUCTS:
        assert product_id in result.output
    assert "catalog ok" in result.output


def test_cli_check_fails_on_problems(catalog_copy: Path) -> None:
    _edit(catalog_copy / WC, "  95: mangroves ", "  # 95 removed ")
    _edit(catalog_copy / "taxonomy/mappings/modis-12Q1-061.yaml", "  1: trees", "  1: forest")
    result = CliRunner().invoke(catalog_app, ["check"])
    assert result.exit_code == 1, result.output
    assert "incomplete" in result.output and "invalid" in result.output
    assert "95 (Mangroves)" in result.output
    assert "map.1: target 'forest'" in result.output


def test_cli_check_without_a_catalog_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAS_CATALOG", str(tmp_path / "absent"))
    result = CliRunner().invoke(catalog_app, ["check"])
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, FileNotFoundError)  # no traceback
    assert f"catalog folder {tmp_path / 'absent'} not found" in result.output


def test_cli_check_strict_warnings(catalog_copy: Path) -> None:
    _edit(
        catalog_copy / "taxonomy/mappings/chesapeake-lc-13.yaml",
        "to: herbaceous_wetland",
        "to: ignore",
    )
    _edit(catalog_copy / WC, "  90: herbaceous_wetland", "  90: ignore")
    assert load_mapping("esa-worldcover").rules[90].to == IGNORE
    result = CliRunner().invoke(catalog_app, ["check"])
    assert result.exit_code == 0, result.output
    assert "herbaceous_wetland" in result.output
    result = CliRunner().invoke(catalog_app, ["check", "--strict"])
    assert result.exit_code == 1, result.output


def test_yaml_is_plain_data() -> None:
    # mapping files load with a plain safe loader too: keys are ints, values keys or {to, why}
    for path in sorted((catalog_dir() / "taxonomy" / "mappings").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert data["product"] == path.stem
        assert all(isinstance(k, int) for k in data["map"])
