"""Adversarial inputs to the catalog: legends, mappings, taxonomy and `las catalog add`."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from las_builder._paths import catalog_dir
from las_builder.catalog import (
    WARNING,
    CatalogError,
    check_catalog,
    load_label_product,
    load_mapping,
)
from las_builder.catalog.suggest import AddError, add_product
from las_builder.catalog.taxonomy import TODO_MARK
from las_builder.catalog.yamlio import load_yaml
from las_builder.cli_catalog import catalog_app

ROOT = Path(__file__).resolve().parents[2]
NLCD = ROOT / "docs" / "examples" / "nlcd-2019.json"
WC_LABEL = "labels/esa-worldcover.yaml"
WC_MAP = "taxonomy/mappings/esa-worldcover.yaml"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _errors(problems: list[str]) -> list[str]:
    return [p for p in problems if not p.startswith(WARNING)]


# --- the catalog's own files -----------------------------------------------------------------


def test_sparse_32_bit_codes_map_without_a_table_up_to_the_largest_code(
    catalog_copy: Path,
) -> None:
    # map() built a table of 3e9 bytes per call (13.7 s per sample) for a code of 3e9
    _edit(catalog_copy / WC_LABEL, "dtype: uint8", "dtype: uint32")
    _edit(catalog_copy / WC_LABEL, "  - value: 20\n", "  - value: 3000000000\n")
    _edit(catalog_copy / WC_MAP, "  20: shrubland", "  3000000000: shrubland")
    assert _errors(check_catalog()) == []
    mapping = load_mapping("esa-worldcover")
    tracemalloc.start()
    try:
        got = mapping.map(np.array([[10, 3_000_000_000], [0, 95]], dtype=np.uint32))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.tolist() == [[2, 3], [0, 10]]
    assert peak < 2**20
    with pytest.raises(ValueError, match="would need a table of 3,000,000,001 entries"):
        mapping.lut()


def test_a_large_nodata_with_small_codes_keeps_a_small_table(catalog_copy: Path) -> None:
    _edit(catalog_copy / WC_LABEL, "dtype: uint8", "dtype: uint32")
    _edit(catalog_copy / WC_LABEL, "nodata: 0\n", "nodata: 4294967295\n")
    mapping = load_mapping("esa-worldcover")
    assert mapping.lut().shape == (101,)
    native = np.array([10, 4_294_967_295, 100], dtype=np.uint32)
    assert mapping.map(native).tolist() == [2, 0, 11]


def test_a_mapping_onto_another_taxonomy_is_refused(catalog_copy: Path) -> None:
    # The build labels with las.yaml's codes: a mapping onto a copy whose classes are in
    # another order wrote that copy's codes (trees as LAS water) and the check said ok.
    text = (catalog_copy / "taxonomy/las.yaml").read_text(encoding="utf-8")
    text = text.replace("id: las", "id: other").replace("key: water", "key: tmp")
    text = text.replace("key: trees", "key: water").replace("key: tmp", "key: trees")
    (catalog_copy / "taxonomy/other.yaml").write_text(text, encoding="utf-8")
    _edit(catalog_copy / WC_MAP, "taxonomy: las", "taxonomy: other")
    errors = _errors(check_catalog())
    assert any(
        "esa-worldcover.yaml: taxonomy: 'other': LAS labels use the classes of taxonomy 'las'" in e
        for e in errors
    ), errors
    with pytest.raises(CatalogError) as info:
        load_mapping("esa-worldcover")
    assert info.value.field == "taxonomy"


def test_a_legend_using_every_value_of_its_dtype_needs_a_nodata(catalog_copy: Path) -> None:
    # `fill` (the value builds read where no file covers a sample) went to -1, outside uint8
    used = {10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100}
    rest = [v for v in range(256) if v not in used]
    label = catalog_copy / WC_LABEL
    _edit(label, "nodata: 0\n", "nodata: null\n")
    label.write_text(
        label.read_text(encoding="utf-8")
        + "".join(f'  - {{value: {v}, name: "c{v}", color: "#000000"}}\n' for v in rest),
        encoding="utf-8",
    )
    mapping = catalog_copy / WC_MAP
    mapping.write_text(
        mapping.read_text(encoding="utf-8") + "".join(f"  {v}: ignore\n" for v in rest),
        encoding="utf-8",
    )
    with pytest.raises(CatalogError, match="uses every value of uint8, so none is left"):
        load_label_product("esa-worldcover")
    # one value free: it is the fill, and maps to LAS nodata
    _edit(label, '  - {value: 255, name: "c255", color: "#000000"}\n', "")
    _edit(mapping, "  255: ignore\n", "")
    assert load_label_product("esa-worldcover").fill == 255
    assert load_mapping("esa-worldcover").target(255) == 0


def test_files_that_are_not_utf8_are_named(catalog_copy: Path) -> None:
    # a Latin-1 "é" stopped `las catalog check` (and every recipe load) with a traceback
    with (catalog_copy / WC_MAP).open("ab") as f:
        f.write(b"# r\xe9sum\xe9\n")
    with (catalog_copy / "labels/chesapeake-lc-13.yaml").open("ab") as f:
        f.write(b"\xff\n")
    errors = _errors(check_catalog())
    assert any(
        "taxonomy/mappings/esa-worldcover.yaml: is not UTF-8 text (byte 0xe9 at line" in e
        for e in errors
    ), errors
    assert any("labels/chesapeake-lc-13.yaml: is not UTF-8 text (byte 0xff" in e for e in errors)
    result = CliRunner().invoke(catalog_app, ["check"])
    assert result.exit_code == 1 and result.exception is not None  # typer's Exit, no traceback
    assert isinstance(result.exception, SystemExit), result.exception
    assert "save the file as UTF-8" in result.output


@pytest.mark.parametrize(
    ("text", "value"),
    [("010", "8"), ("0_12", "10"), ("1:30", "90")],
)
def test_integers_yaml_versions_read_differently_are_refused(
    catalog_copy: Path, text: str, value: str
) -> None:
    # `010: built_up` was code 8 (YAML 1.1 octal): a zero-padded key picked another class
    _edit(catalog_copy / "taxonomy/mappings/chesapeake-lc-13.yaml", "  8: built_up", f"  {text}: x")
    errors = _errors(check_catalog())
    assert any(f"'{text}' is ambiguous" in e and "chesapeake-lc-13.yaml" in e for e in errors)
    with pytest.raises(yaml.YAMLError, match="ambiguous"):
        load_yaml(f"value: {text}")
    assert yaml.safe_load(f"v: {text}")["v"] == int(value)  # what it silently was
    assert load_yaml("a: 00\nb: 0x0A\nc: '010'\nd: 1_000") == {
        "a": 0,
        "b": 10,
        "c": "010",
        "d": 1000,
    }


def test_check_warns_about_files_it_does_not_read(catalog_copy: Path) -> None:
    shutil.copy(catalog_copy / WC_LABEL, catalog_copy / "labels/nlcd.yml")
    assert f"{WARNING}labels/nlcd.yml is not read: catalog files end in .yaml" in check_catalog()


def test_product_names_are_shown_as_text(catalog_copy: Path) -> None:
    shutil.copy(catalog_copy / WC_LABEL, catalog_copy / "labels/t[red].yaml")
    result = CliRunner().invoke(catalog_app, ["check"])
    assert result.exit_code == 1, result.output
    assert "t[red]" in result.output


# --- `las catalog add` on hostile collections -------------------------------------------------


def _nlcd() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(NLCD.read_text(encoding="utf-8"))
    return data


def _landcover(c: dict[str, Any]) -> dict[str, Any]:
    asset: dict[str, Any] = c["item_assets"]["landcover"]
    return asset


Mutation = Callable[[dict[str, Any]], object]

REFUSED: dict[str, tuple[Mutation, str]] = {
    "item_assets is a list": (
        lambda c: c.update(item_assets=[c["item_assets"]["landcover"]]),
        "`item_assets` must be a JSON object (STAC), not a list",
    ),
    "summaries is a list": (
        lambda c: c.update(summaries=[1]),
        "`summaries` must be a JSON object (STAC), not a list",
    ),
    "classes is an object": (
        lambda c: _landcover(c).update({"classification:classes": {"value": 11}}),
        "classification:classes must be a list of class objects, not an object",
    ),
    "a class that is not an object": (
        lambda c: _landcover(c)["classification:classes"].append("Open Water"),
        'classification:classes[21] = "Open Water" is not a class object',
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_collections_are_refused_by_name(tmp_path: Path, case: str) -> None:
    mutate, expected = REFUSED[case]
    collection = _nlcd()
    mutate(collection)
    source = tmp_path / "collection.json"
    source.write_text(json.dumps(collection), encoding="utf-8")
    with pytest.raises(AddError) as info:
        add_product(source, out=tmp_path / "catalog", suggest=False)
    assert expected in str(info.value)
    assert not (tmp_path / "catalog").exists()


DRAFTED: dict[str, tuple[Mutation, str, str]] = {
    # case: (mutation, field checked, what the drafted file must say)
    "C1 control in the title": (
        lambda c: c.update(title="NLCD\x80 2019"),
        "title",
        "NLCD\ufffd 2019",
    ),
    "lone surrogate in the title": (
        lambda c: c.update(title="NLCD \ud83d 2019"),
        "title",
        "NLCD \ufffd 2019",
    ),
    "unicode title": (
        lambda c: c.update(title="NLCD 2019 — Carte d'occupation 🌍"),
        "title",
        "NLCD 2019 — Carte d'occupation 🌍",
    ),
    "line separator in a class name": (
        lambda c: _landcover(c)["classification:classes"][1].update(title="Open\u2028Water"),
        "class 11",
        "Open Water",
    ),
    "newline in the data type": (
        lambda c: _landcover(c)["raster:bands"][0].update(data_type="float32\nnodata: 11"),
        "nodata",
        "0",
    ),
    "newline in a CRS code": (
        lambda c: c["summaries"].update({"proj:code": ["EPSG:5070", "EPSG:3857\nnodata: 11"]}),
        "nodata",
        "0",
    ),
    "newline in a release": (
        lambda c: c["summaries"].update(version=["1\nnodata: 11"]),
        "nodata",
        "0",
    ),
    "temporal extent that is not a date": (
        lambda c: c["extent"]["temporal"].update(interval=[["2019", None]]),
        "todo",
        'the temporal extent starts at "2019", not a date',
    ),
    "temporal extent before 1970": (
        lambda c: c["extent"]["temporal"].update(interval=[["1938-01-01T00:00:00Z", None]]),
        "todo",
        "the collection says 1938; a version's years lie in 1970..2100",
    ),
    "raster:bands is an object": (
        lambda c: _landcover(c).update({"raster:bands": {"nodata": 0}}),
        "nodata",
        "0",  # from the class the collection flags as no data
    ),
    "raster:bands entries that are text": (
        lambda c: _landcover(c).update({"raster:bands": ["uint8", *_landcover(c)["raster:bands"]]}),
        "nodata",
        "0",
    ),
    "roles as one string": (lambda c: _landcover(c).update(roles="data"), "asset", "landcover"),
    "infinite pixel size": (
        lambda c: (
            _landcover(c)["raster:bands"][0].update(spatial_resolution=float("inf")),
            c["summaries"].pop("gsd"),
        ),
        "todo",
        "the collection gives no pixel size",
    ),
    "band nodata that is a class": (
        lambda c: _landcover(c)["raster:bands"][0].update(nodata=11),
        "todo",
        "its legend also lists as the class 'Open Water': is it no data, or that class?",
    ),
    "long URL in the citation": (
        lambda c: c.update({"sci:citation": "See https://example.org/" + "a" * 120 + " now."}),
        "citation",
        "See https://example.org/" + "a" * 120 + " now.",
    ),
}


@pytest.mark.parametrize("case", sorted(DRAFTED))
def test_hostile_collections_draft_files_the_catalog_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    mutate, field, expected = DRAFTED[case]
    collection = _nlcd()
    mutate(collection)
    source = tmp_path / "collection.json"
    # ensure_ascii: a lone surrogate cannot be written as UTF-8, only as a JSON escape
    source.write_text(json.dumps(collection), encoding="utf-8")
    catalog = tmp_path / "catalog"
    shutil.copytree(catalog_dir(), catalog)
    result = add_product(source, out=catalog, product_id="hostile", suggest=False)
    monkeypatch.setenv("LAS_CATALOG", str(catalog))
    assert [e for e in _errors(check_catalog()) if "hostile" in e] == []
    product = load_mapping("hostile").product
    text = result.label_path.read_text(encoding="utf-8")
    got = {
        "title": product.title,
        "class 11": product.class_by_value(11).name,
        "nodata": str(product.nodata),
        "asset": result.asset,
        "citation": product.citation,
        "todo": "\n".join(line for line in text.splitlines() if TODO_MARK in line),
    }[field]
    assert expected in got, got
    # the draft adds no key: every top-level line is a field of the original draft
    keys = [line.split(":")[0] for line in text.splitlines() if line[:1].isalpha()]
    assert len(keys) == len(set(keys)), keys


def test_hostile_names_are_printed_as_text(tmp_path: Path) -> None:
    # Rich read `[/x]` as a closing tag: a MarkupError after the files were written
    collection = _nlcd()
    collection["item_assets"]["[/x]"] = collection["item_assets"].pop("landcover")
    source = tmp_path / "collection.json"
    source.write_text(json.dumps(collection), encoding="utf-8")
    out = tmp_path / "[/y]"
    result = CliRunner().invoke(
        catalog_app, ["add", str(source), "--no-suggest", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "asset: [/x]" in result.output
    assert f"wrote {out / 'labels' / 'nlcd-2019.yaml'}" in result.output.replace("\n", "")


# --- the shipped legends against the recorded public collections ------------------------------


def _declared(asset: dict[str, Any]) -> dict[int, str]:
    """Codes a collection's asset declares, read straight from its JSON, with their names."""
    declared: dict[int, str] = {}
    for c in asset.get("classification:classes") or []:
        declared[int(c["value"])] = str(c.get("title") or c.get("description") or c["name"])
    for entry in asset.get("file:values") or []:
        for value in entry["values"]:
            declared[int(value)] = str(entry["summary"])
    return declared


@pytest.mark.parametrize(
    "product_id", ["chesapeake-lc-13", "esa-cci-lc", "esa-worldcover", "io-lulc-annual-v02"]
)
def test_every_declared_code_is_in_the_legend_and_mapped(
    stac_fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, product_id: str
) -> None:
    product = load_label_product(product_id)
    mapping = load_mapping(product_id)
    assert product.stac is not None
    path = stac_fixtures / "planetary-computer" / "collections" / f"{product.stac.collection}.json"
    collection = json.loads(path.read_text(encoding="utf-8"))
    declared = _declared(collection["item_assets"][product.stac.asset])
    assert declared
    assert product.names() == declared  # every code, by its official name, and nothing more
    for code in declared:
        assert code == product.nodata or code in mapping.rules, code

    # round trip: the draft of the same collection holds the same legend, and loads
    catalog = tmp_path / "catalog"
    shutil.copytree(catalog_dir(), catalog)
    drafted = add_product(path, out=catalog, product_id=f"rt-{product_id}", suggest=False)
    assert drafted.asset == product.stac.asset
    monkeypatch.setenv("LAS_CATALOG", str(catalog))
    again = load_label_product(f"rt-{product_id}")
    assert again.names() == declared
    assert again.nodata == product.nodata and again.dtype == product.dtype
    ours = {c.value: (c.color, c.regional, c.is_nodata) for c in product.classes if c.color}
    theirs = {c.value: (c.color, c.regional, c.is_nodata) for c in again.classes if c.value in ours}
    if product_id != "io-lulc-annual-v02":  # file:values carries no colours (generated)
        assert theirs == ours
