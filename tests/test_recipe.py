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
            "labels.1.year=2022",
            "sampling.stratify=null",
            "imagery.naip.factor=5",
            "stac.url=http://example.org/stac",
        ],
    )
    assert recipe.sample.count == 64
    assert recipe.sample.spacing == 2000.0
    assert [lab.year for lab in recipe.labels] == [2020, 2022]
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
        load_recipe(recipe_file, ["labels[1].product=esa-worldcover"])


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
