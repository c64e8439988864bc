"""Recipes: loading, ${ENV} substitution, --set overrides and errors that say what is wrong."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from las_builder.recipe import Recipe, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """\
name: las-test
stac:
  url: ${LAS_TEST_STAC_URL}
  sign: none
time: {start: 2021-06-01, end: 2022-09-30}
sample:
  count: 32
  size_px: 128
  seed: 3
sampling:
  frame: {collection: las-world-truth}
  stratify: {collection: esa-cci-lc, asset: lccs_class}
imagery:
  sentinel-2: {collection: sentinel-2-l2a, max_cloud: 60, composite: null}
  sentinel-1: {collection: sentinel-1-rtc, units: linear}
labels:
  - {product: esa-worldcover, collection: esa-worldcover, asset: map, year: 2021}
  - {product: dynamic-world-v1, collection: dynamic-world-v1, asset: label, year: null}
output: {path: "${LAS_TEST_OUT:-out/test}", samples_per_shard: 4}
"""


@pytest.fixture
def recipe_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LAS_TEST_STAC_URL", "http://127.0.0.1:9999/")
    monkeypatch.delenv("LAS_TEST_OUT", raising=False)
    path = tmp_path / "test.yaml"
    path.write_text(RECIPE)
    return path


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edited.yaml"
    path.write_text(text)
    return path


def test_valid_recipe_loads_with_defaults(recipe_file: Path) -> None:
    recipe = load_recipe(recipe_file)
    assert isinstance(recipe, Recipe)
    assert recipe.source == recipe_file
    assert recipe.name == "las-test"
    assert recipe.stac.url == "http://127.0.0.1:9999/"
    assert (recipe.time.start, recipe.time.end) == (date(2021, 6, 1), date(2022, 9, 30))
    assert recipe.sample.resolution_m == 10.0 and recipe.sample.spacing_m is None
    assert recipe.sample.spacing == 1600.0  # 1.25 * 128 px * 10 m
    assert recipe.sampling.stratify is not None
    assert recipe.sampling.stratify.asset == "lccs_class"
    assert recipe.imagery.sentinel_2.max_cloud == 60
    assert recipe.imagery.sentinel_1 is not None and recipe.imagery.sentinel_1.units == "linear"
    assert recipe.imagery.naip is None
    assert [lab.product for lab in recipe.labels] == ["esa-worldcover", "dynamic-world-v1"]
    assert recipe.labels[1].year is None
    assert recipe.max_nodata == 0.2
    assert recipe.output.path == "out/test"  # ${VAR:-default}
    dumped = recipe.model_dump(by_alias=True)
    assert "sentinel-2" in dumped["imagery"]


def test_shipped_recipes_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAS_STAC_URL", "http://127.0.0.1:8000/")
    demo = load_recipe(ROOT / "recipes" / "demo.yaml")
    assert demo.stac.url == "http://127.0.0.1:8000/"
    assert (demo.sample.count, demo.sample.size_px) == (32, 128)
    assert demo.sampling.frame.collection == "las-world-truth"
    years = {lab.product: lab.year for lab in demo.labels}
    assert years == {
        "esa-worldcover": 2021,
        "io-lulc-annual-v02": 2021,
        "esa-cci-lc": 2020,
        "modis-12Q1-061": 2021,
        "dynamic-world-v1": None,
    }
    v1 = load_recipe(ROOT / "recipes" / "las-v1.yaml")
    assert v1.stac.sign == "planetary-computer"
    assert v1.stac.url == "https://planetarycomputer.microsoft.com/api/stac/v1"
    assert v1.sample.count >= 100_000 and v1.sample.size_px == 256
    assert v1.sampling.frame.collection == "esa-worldcover"
    assert "dynamic-world-v1" not in {lab.product for lab in v1.labels}


def test_env_substitution(recipe_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAS_TEST_OUT", "s3://bucket/las")
    monkeypatch.delenv("LAS_TEST_NAME", raising=False)
    text = recipe_file.read_text().replace("name: las-test", "name: ${LAS_TEST_NAME:-las}-v0")
    text = text.replace("sentinel-1-rtc", "'s1-$${LAS_TEST_OUT}'")
    recipe = load_recipe(_write(recipe_file.parent, text))
    assert recipe.output.path == "s3://bucket/las"  # set: the default is not used
    assert recipe.name == "las-v0"  # unset: the default is used
    assert recipe.imagery.sentinel_1 is not None
    assert recipe.imagery.sentinel_1.collection == "s1-${LAS_TEST_OUT}"  # $$ is a literal $
    monkeypatch.setenv("LAS_TEST_NAME", "mine")
    assert load_recipe(_write(recipe_file.parent, text)).name == "mine-v0"


def test_missing_env_var_names_variable_key_and_file(
    recipe_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAS_TEST_STAC_URL")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file)
    message = str(info.value)
    assert str(recipe_file) in message
    assert "stac.url" in message
    assert "LAS_TEST_STAC_URL is not set" in message
    assert info.value.keys == ["stac.url"]


def test_set_overrides(recipe_file: Path) -> None:
    recipe = load_recipe(
        recipe_file,
        [
            "sample.count=64",
            "sample.spacing_m=2000",
            "labels[0].year=2020",
            "labels.1.asset=probabilities",
            "sampling.stratify=null",
            "imagery.naip.factor=5",
            "stac.url=http://example.org/stac",
        ],
    )
    assert recipe.sample.count == 64
    assert recipe.sample.spacing == 2000.0
    assert [lab.year for lab in recipe.labels] == [2020, None]
    assert recipe.labels[1].asset == "probabilities"
    assert recipe.sampling.stratify is None
    assert recipe.imagery.naip is not None and recipe.imagery.naip.factor == 5
    assert recipe.stac.url == "http://example.org/stac"


def test_sentinel_1_can_be_left_out_sentinel_2_cannot(recipe_file: Path) -> None:
    from las_builder.build.config import config_from_recipe

    recipe = load_recipe(recipe_file, ["imagery.sentinel-1=null"])
    assert recipe.imagery.sentinel_1 is None
    cfg = config_from_recipe(recipe)
    assert cfg.s1_collection is None and cfg.s2_collection == "sentinel-2-l2a"
    assert not any(name.startswith("s1_") for name in cfg.record_columns())
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file, ["imagery.sentinel-2=null"])
    assert "imagery.sentinel-2 = null (from --set): Sentinel-2 cannot be left out" in str(
        info.value
    )


def test_bad_value_names_file_key_value_and_rule(recipe_file: Path) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file, ["sample.size_px=-3"])
    assert str(info.value) == f"{recipe_file}: sample.size_px = -3 (from --set): must be > 0"

    text = recipe_file.read_text().replace("max_cloud: 60", "max_cloud: 150")
    text = text.replace("units: linear", "units: decibel")
    with pytest.raises(RecipeError) as info:
        load_recipe(_write(recipe_file.parent, text))
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("imagery.sentinel-2.max_cloud = 150: must be <= 100")
    assert lines[1].endswith(
        "imagery.sentinel-1.units = 'decibel': must be one of 'linear' or 'db'"
    )
    assert all(line.startswith(f"{recipe_file.parent / 'edited.yaml'}: ") for line in lines)


def test_unknown_key_lists_allowed_keys(recipe_file: Path) -> None:
    text = recipe_file.read_text().replace("sample:\n", "sampel:\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(_write(recipe_file.parent, text))
    message = str(info.value)
    assert "sampel: unknown key 'sampel'; allowed: name, stac, time, sample, sampling," in message
    assert "sample: required key is missing" in message

    with pytest.raises(
        RecipeError, match=r"sample\.sizepx: unknown key 'sizepx'; allowed: count, "
    ):
        load_recipe(recipe_file, ["sample.sizepx=3"])
    with pytest.raises(RecipeError, match=r"allowed: sentinel-2, sentinel-1, naip"):
        load_recipe(recipe_file, ["imagery.landsat.collection=x"])


def test_unknown_label_product(recipe_file: Path) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file, ["labels[1].product=glc-fcs30"])
    message = str(info.value)
    assert "labels[1].product = 'glc-fcs30'" in message
    assert "unknown label product; allowed:" in message and "esa-worldcover" in message


def test_other_rules(recipe_file: Path) -> None:
    with pytest.raises(RecipeError, match=r"time\.end = 2020-01-01 \(from --set\): must not be"):
        load_recipe(recipe_file, ["time.end=2020-01-01"])
    with pytest.raises(RecipeError, match=r"sample\.spacing_m = 100 .*>= one sample edge"):
        load_recipe(recipe_file, ["sample.spacing_m=100"])
    with pytest.raises(RecipeError, match=r"stac\.sign = 'pc' .*'none' or 'planetary-computer'"):
        load_recipe(recipe_file, ["stac.sign=pc"])
    with pytest.raises(RecipeError, match=r"sample\.count = 'many' .*must be an integer"):
        load_recipe(recipe_file, ["sample.count=many"])
    with pytest.raises(RecipeError, match=r"labels .*'esa-worldcover' is listed twice"):
        load_recipe(
            recipe_file,
            ["labels[1]={product: esa-worldcover, collection: x, asset: map, year: 2020}"],
        )


def test_bad_set_syntax_and_paths(recipe_file: Path) -> None:
    with pytest.raises(RecipeError, match=r"--set 'sample\.count': expected KEY=VALUE"):
        load_recipe(recipe_file, ["sample.count"])
    with pytest.raises(RecipeError, match=r"labels has no item 7"):
        load_recipe(recipe_file, ["labels[7].year=2020"])
    with pytest.raises(RecipeError, match=r"name is not a mapping"):
        load_recipe(recipe_file, ["name.first=x"])


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot be read"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(RecipeError, match="is not valid YAML"):
        load_recipe(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(_write(tmp_path, "- just\n- a list\n"))


# --- odd input --------------------------------------------------------------------------------


def test_a_repeated_key_is_an_error_not_the_last_one(recipe_file: Path) -> None:
    # A second `labels:` section used to replace the first silently.
    extra = "labels:\n  - {product: esa-cci-lc, collection: esa-cci-lc, asset: a, year: 2020}\n"
    path = _write(recipe_file.parent, recipe_file.read_text() + extra)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: is not valid YAML")
    assert "key 'labels' is repeated" in message
    assert f"at line {RECIPE.count(chr(10)) + 1}, column 1" in message


def test_merge_keys_still_work(recipe_file: Path) -> None:
    # `<<: *anchor` then the same key is YAML's override, not a repeated key
    dw = "  - {product: dynamic-world-v1"
    merged = "  - {<<: *wc, product: esa-cci-lc, collection: esa-cci-lc, year: 2020}\n"
    text = recipe_file.read_text().replace(
        "  - {product: esa-worldcover", "  - &wc {product: esa-worldcover"
    )
    text = text.replace(dw, merged + dw)
    cci = load_recipe(_write(recipe_file.parent, text)).labels[1]
    assert (cci.product, cci.collection, cci.asset, cci.year) == (
        "esa-cci-lc",
        "esa-cci-lc",
        "map",
        2020,
    )


def test_an_impossible_date_is_a_recipe_error(recipe_file: Path) -> None:
    # PyYAML raised a bare ValueError: `las plan` printed a traceback.
    text = recipe_file.read_text().replace("start: 2021-06-01", "start: 2021-02-30")
    with pytest.raises(RecipeError, match=r"'2021-02-30' looks like a date but is not one"):
        load_recipe(_write(recipe_file.parent, text))
    with pytest.raises(RecipeError, match=r"--set 'time\.end=2022-02-30': '2022-02-30' looks"):
        load_recipe(recipe_file, ["time.end=2022-02-30"])


def test_booleans_are_not_integers(recipe_file: Path) -> None:
    # pydantic read `count: yes` (a YAML 1.1 boolean) as 1 sample
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file, ["sample.count=yes", "output.samples_per_shard=false"])
    assert info.value.keys == ["sample.count", "output.samples_per_shard"]
    assert "sample.count = true (from --set): must be an integer, not true" in str(info.value)
    assert load_recipe(recipe_file, ["sample.count=64.0"]).sample.count == 64


def test_year_must_fit_the_product_cadence(recipe_file: Path) -> None:
    # A per-scene product with a year mosaicked a year of scenes of any date; an annual one
    # without a year gave an empty layer. Neither was noticed before the build.
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file, ["labels.1.year=2021"])
    assert info.value.keys == ["labels[1].year"]
    assert "dynamic-world-v1 has a map per satellite scene" in str(info.value)
    assert "write `year: null`" in str(info.value)
    text = recipe_file.read_text().replace("asset: map, year: 2021}", "asset: map}")
    with pytest.raises(RecipeError) as info:
        load_recipe(_write(recipe_file.parent, text))
    assert info.value.keys == ["labels[0].year"]
    assert "esa-worldcover has one map per year (cadence annual): give the year" in str(info.value)
    assert "(v100: 2020, v200: 2021)" in str(info.value)


def test_a_product_whose_catalog_entry_is_broken_is_a_recipe_error(
    recipe_file: Path, catalog_copy: Path
) -> None:
    # The recipe only checked that catalog/labels/<product>.yaml existed; the build found the
    # missing or broken mapping shard by shard.
    mapping = catalog_copy / "taxonomy" / "mappings" / "esa-worldcover.yaml"
    text = mapping.read_text()
    mapping.write_text(text.replace("  95: mangroves ", "  # 95 removed "))
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file)
    assert info.value.keys == ["labels[0].product"]
    assert "legend codes 95 are neither mapped nor ignored in" in str(info.value)
    mapping.write_text(text.replace("  95: mangroves", "  95: mangrove"))
    with pytest.raises(RecipeError, match=r"its catalog entry does not load .*target 'mangrove'"):
        load_recipe(recipe_file)
    mapping.unlink()
    with pytest.raises(RecipeError, match=r"no mapping for product 'esa-worldcover'"):
        load_recipe(recipe_file)


def test_a_missing_catalog_folder_is_a_recipe_error(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAS_CATALOG", str(tmp_path / "absent"))
    with pytest.raises(RecipeError, match=r"labels\[0\]\.product = .*catalog folder .* not found"):
        load_recipe(recipe_file)
