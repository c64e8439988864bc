"""Adversarial recipes and plans: bad numbers, odd frames, damaged outputs."""

from __future__ import annotations

import itertools
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import typer
from pyproj import Transformer
from pystac_client import Client
from shapely.geometry import MultiPolygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union
from typer.testing import CliRunner

from las_builder import plan as plan_mod
from las_builder.cli_plan import plan as plan_command
from las_builder.geobox import cell_at
from las_builder.plan import make_plan
from las_builder.recipe import Recipe, RecipeError, load_recipe
from las_builder.stac.item import parse_item

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo.yaml"


@pytest.fixture(scope="module")
def stac_url(served_world: dict) -> str:
    """The STAC API of the session's served copy of the tiny world (tests/conftest.py)."""
    return served_world["stac_url"]


@pytest.fixture(scope="module")
def frame(stac_url: str) -> BaseGeometry:
    """The tiny world's frame (the union of the las-world-truth footprints)."""
    items = Client.open(stac_url).search(collections=["las-world-truth"]).items_as_dicts()
    union = unary_union([parse_item(i).footprint() for i in items])
    shapely.prepare(union)
    return union


@pytest.fixture
def offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recipes that are only loaded, never planned, need ${LAS_STAC_URL} set to something."""
    monkeypatch.setenv("LAS_STAC_URL", "http://127.0.0.1:9/")


def _recipe(stac_url: str, tmp_path: Path, *overrides: str) -> Recipe:
    return load_recipe(
        DEMO,
        [
            f"stac.url={stac_url}",
            "sample.size_px=32",
            "sample.count=20",
            f"output.path={tmp_path / 'out'}",
            "output.samples_per_shard=4",
            *overrides,
        ],
    )


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("plan")(plan_command)
    app.command("other")(lambda: None)  # two commands: `plan` stays a subcommand
    return app


# --------------------------------------------------------------------------- recipe numbers


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("max_nodata=yes", "max_nodata"),  # was 1.0: samples of any nodata kept
        ("sample.resolution_m=true", "sample.resolution_m"),  # was 1 m pixels
        ("imagery.sentinel-2.max_cloud=on", "imagery.sentinel-2.max_cloud"),
    ],
)
def test_a_yaml_boolean_is_not_a_number(offline_env: None, override: str, key: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(DEMO, [override])
    assert err.value.keys == [key]
    assert f"{key} = true (from --set): must be a number, not true" in str(err.value)


@pytest.mark.parametrize(
    "override", ["sample.resolution_m=.inf", "sample.spacing_m=.inf", "sample.spacing_m=.nan"]
)
def test_infinite_or_nan_sizes_are_recipe_errors(offline_env: None, override: str) -> None:
    """`.inf` loaded and `las plan` died of a ZeroDivisionError in the grid arithmetic."""
    with pytest.raises(RecipeError) as err:
        load_recipe(DEMO, [override])
    assert err.value.keys == [override.split("=")[0]]
    assert "must be a finite number" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        # ZeroDivisionError (1e-300) and a shapely "linearring" ValueError (1e-12) in make_plan.
        (["sample.resolution_m=1e-300"], "sample.resolution_m", "must be >= 0.001"),
        (["sample.resolution_m=0.000000000001"], "sample.resolution_m", "must be >= 0.001"),
        # OverflowError in make_plan.
        (["sample.spacing_m=1e200"], "sample.spacing_m", "must be <= 1.00188e+07"),
        (
            ["sample.resolution_m=1e300"],
            "sample.resolution_m",
            "a sample edge of size_px * resolution_m = 1.28e+302 m is more than 1e+06 m",
        ),
        # A 10,000 km sample: GEOSException in the overlap check of a global frame.
        (
            ["sample.size_px=1000", "sample.resolution_m=10000"],
            "sample.resolution_m",
            "use fewer pixels (size_px) or smaller ones",
        ),
    ],
)
def test_sizes_the_grid_cannot_hold_are_recipe_errors(
    offline_env: None, overrides: list[str], key: str, message: str
) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(DEMO, overrides)
    assert err.value.keys == [key]
    assert message in str(err.value)


def test_sizes_at_the_bounds_still_plan(stac_url: str, tmp_path: Path) -> None:
    """The finest pixel and the largest edge the recipe allows give a plan or a PlanError,
    never a traceback."""
    tiny = make_plan(_recipe(stac_url, tmp_path, "sample.resolution_m=0.001", "sample.size_px=1"))
    assert len(tiny) == 20 and tiny["sample_id"].is_unique
    huge = _recipe(stac_url, tmp_path, "sample.size_px=1000", "sample.resolution_m=1000")
    assert huge.sample.edge_m == 1_000_000
    with pytest.raises(plan_mod.PlanError, match="no sample of 1000 px x 1000 m fits"):
        make_plan(huge)


def test_a_negative_seed_is_a_recipe_error(offline_env: None) -> None:
    """It loaded, and numpy refused it in make_plan (`expected non-negative integer`)."""
    with pytest.raises(RecipeError) as err:
        load_recipe(DEMO, ["sample.seed=-1"])
    assert err.value.keys == ["sample.seed"]
    assert "sample.seed = -1 (from --set): must be >= 0" in str(err.value)


def test_a_huge_seed_plans_deterministically(stac_url: str, tmp_path: Path) -> None:
    recipe = _recipe(stac_url, tmp_path, f"sample.seed={10**30}", "sampling.stratify=null")
    first, again = make_plan(recipe), make_plan(recipe)
    assert list(first["sample_id"]) == list(again["sample_id"])
    other = make_plan(_recipe(stac_url, tmp_path, "sample.seed=0", "sampling.stratify=null"))
    assert list(first["sample_id"]) != list(other["sample_id"])


def test_a_recipe_that_is_not_utf8_is_a_recipe_error(tmp_path: Path) -> None:
    """A Latin-1 recipe raised UnicodeDecodeError (a traceback from `las plan`)."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(
        DEMO.read_text(encoding="utf-8").replace("las-demo", "las-d\xe9mo").encode("latin-1")
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: is not UTF-8 text (byte 0xe9 at offset ")
    assert "save it as UTF-8" in str(err.value)


def test_credentials_in_output_path_are_refused_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`output.path: s3://KEY:SECRET@bucket/x` reached s3fs as the bucket `KEY:SECRET@bucket`,
    and `las plan` printed it: `no bucket 'KEY:topsecretvalue@bucket' at s3://`."""
    monkeypatch.setenv("LAS_STAC_URL", "http://127.0.0.1:1/")
    override = "output.path=s3://AKIAEXAMPLE:topsecretvalue@bucket/las"
    with pytest.raises(RecipeError) as err:
        load_recipe(DEMO, [override])
    assert err.value.keys == ["output.path"]
    assert "must not carry credentials" in str(err.value)
    assert "topsecretvalue" not in str(err.value) and "AKIAEXAMPLE" not in str(err.value)
    result = CliRunner().invoke(_app(), ["plan", str(DEMO), "--set", override, "-q"])
    assert result.exit_code == 2
    assert "must not carry credentials" in result.output
    assert "topsecretvalue" not in result.output
    # An @ elsewhere in a path is no credential.
    assert load_recipe(DEMO, ["output.path=s3://bucket/a@b"]).output.path == "s3://bucket/a@b"
    assert load_recipe(DEMO, [f"output.path={tmp_path}/u@h"]).output.path == f"{tmp_path}/u@h"


@pytest.mark.parametrize("path", ["{tmp}/loc::x", "s3://bucket/a::b", "memory://x::file://y"])
def test_an_output_path_with_fsspec_chaining_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """`output.path: /x/loc::x`: fsspec reads `::` as chained URLs, so `las plan` said it
    wrote `loc::x/plan.parquet` and wrote a file at `/x/loc`."""
    monkeypatch.setenv("LAS_STAC_URL", "http://127.0.0.1:1/")
    with pytest.raises(RecipeError) as err:
        load_recipe(DEMO, [f"output.path={path.format(tmp=tmp_path)}"])
    assert err.value.keys == ["output.path"]
    assert "must not contain '::'" in str(err.value)
    assert not (tmp_path / "loc").exists()


def test_a_recipe_error_does_not_show_a_token(offline_env: None) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(DEMO, ["stac.url=ftp://user:topsecretvalue@host/stac?token=topsecrettoken"])
    assert err.value.keys == ["stac.url"]
    assert "topsecret" not in str(err.value)
    assert "stac.url = 'ftp://***@host/stac' (from --set): must be an http://" in str(err.value)


# --------------------------------------------------------------------------- drawn cells


def test_drawing_cells_ends_once_the_frame_is_exhausted(frame: BaseGeometry) -> None:
    """The miss limit grew with sample.count: a count above what the frame holds drew on for
    minutes (10,000 samples over the tiny world: over 2 minutes), 10**22 forever."""
    drawn = list(plan_mod._drawn_cells(frame, 400.0, 0, limit=10**30))
    assert len(drawn) == len(set(drawn))
    assert set(drawn) == set(plan_mod._listed_cells(frame, 400.0, 0))


def test_an_enormous_count_over_a_drawn_frame_plans_every_candidate(
    stac_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(stac_url, tmp_path, f"sample.count={10**22}", "sampling.stratify=null")
    listed = make_plan(recipe)
    monkeypatch.setattr(plan_mod, "ENUMERATE_LIMIT", 0)  # cells drawn, as for a global frame
    drawn = make_plan(recipe)
    assert len(drawn) == drawn.attrs["candidates"] > 0
    assert f"only {len(drawn)} of the {10**22} requested samples" in drawn.attrs["plan_note"]
    assert set(drawn["sample_id"]) == set(listed["sample_id"])


# --------------------------------------------------------------------------- re-planning


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        ("[]", "TypeError"),  # was a TypeError traceback
        ("not json", "JSONDecodeError"),  # was `cannot write the plan to ...: Expecting value`
        ('{"zarr_format": 3, "node_type": "array"}', "ContainsArrayError"),
    ],
)
def test_planning_over_a_damaged_store_is_refused_before_planning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, cause: str
) -> None:
    # An API that cannot answer: the store's error comes first, so it came before planning.
    monkeypatch.setenv("LAS_STAC_URL", "http://127.0.0.1:1/")
    out = tmp_path / "out"
    (out / "las.zarr").mkdir(parents=True)
    (out / "las.zarr" / "zarr.json").write_text(content)
    args = ["plan", str(DEMO), "--set", f"output.path={out}", "-q"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"{out}/las.zarr cannot be read ({cause}" in result.output
    assert "the plan was not written" in result.output
    assert not (out / "plan.parquet").exists()


# --------------------------------------------------------------------------- poles, antimeridian


def _plan_over(frame: BaseGeometry, tmp_path: Path, *overrides: str) -> gpd.GeoDataFrame:
    """make_plan's steps over a frame given as geometry (no STAC API has polar items here)."""
    recipe = load_recipe(
        DEMO,
        [
            "stac.url=http://127.0.0.1:9/",
            "sampling.stratify=null",
            f"output.path={tmp_path}",
            *overrides,
        ],
    )
    spec = recipe.sample
    shapely.prepare(frame)
    cells = plan_mod._listed_cells(frame, spec.spacing, spec.seed)
    stats = plan_mod._Stats()
    pool = plan_mod._gather(recipe, frame, cells, None, 10 * spec.count, stats, lambda _m: None)
    chosen = plan_mod._allocate(pool, spec.count, spec.edge_m)
    return plan_mod._to_frame(recipe, chosen)


@pytest.mark.parametrize(
    ("frame", "common_epsg"),
    [
        (box(-180, 89.5, 180, 90), 3413),  # the North Pole (UPS North)
        (box(-180, -90, 180, -89.5), 3031),  # the South Pole (UPS South)
        (box(0, 83.8, 2, 84.2), 3413),  # UTM 31N meets UPS North at 84N
        (MultiPolygon([box(179.9, -0.5, 180, 0.5), box(-180, -0.5, -179.9, 0.5)]), 3832),
    ],
)
def test_touching_samples_at_poles_and_antimeridian_are_disjoint_and_in_the_frame(
    tmp_path: Path, frame: BaseGeometry, common_epsg: int
) -> None:
    """Checked independently: each sample's pixel grid is densified and projected with pyproj
    into one CRS for the whole frame, and no two of them share area."""
    gdf = _plan_over(
        frame, tmp_path, "sample.count=60", "sample.size_px=64", "sample.spacing_m=640"
    )
    assert len(gdf) == 60 and gdf["sample_id"].is_unique
    boxes = []
    for row in gdf.itertuples():
        a, _, c, _, e, f = row.transform
        h, w = row.shape
        edge = shapely.segmentize(box(c, f + e * h, c + a * w, f), abs(a))
        to_common = Transformer.from_crs(int(row.epsg), common_epsg, always_xy=True)
        boxes.append(
            shapely.transform(edge, lambda xy, t=to_common: np.column_stack(t.transform(*xy.T)))
        )
        assert frame.covers(row.geometry)
    for one, other in itertools.combinations(boxes, 2):
        assert one.intersection(other).area < 1e-6 * one.area
    curve = plan_mod.hilbert_order(gdf["lon"].to_numpy(), gdf["lat"].to_numpy())
    assert (np.diff(curve) >= 0).all()


def test_a_plan_write_that_fails_leaves_the_previous_plan_whole(tmp_path: Path) -> None:
    """The plan was written in place: a write that failed half-way (Ctrl-C, a full disk, a
    value Parquet cannot hold) left a truncated plan.parquet instead of the previous one."""
    target = tmp_path / "out" / "plan.parquet"
    good = gpd.GeoDataFrame({"sample_id": ["a", "b"]}, geometry=[box(0, 0, 1, 1)] * 2, crs=4326)
    plan_mod.write_plan(good, target)
    before = target.read_bytes()
    bad = good.assign(broken=[object(), object()])  # Parquet has no type for these
    with pytest.raises(Exception, match="object"):
        plan_mod.write_plan(bad, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["plan.parquet"]
    assert gpd.read_parquet(target)["sample_id"].tolist() == ["a", "b"]


# --------------------------------------------------------------------------- nested plans


def test_a_plan_of_more_samples_holds_every_sample_of_a_plan_of_fewer(tmp_path: Path) -> None:
    """Growing `sample.count` gave a new plan: each stratum's candidates were shuffled anew
    for each pool size, so a plan of 50 samples shared 2 of a plan of 25 (over a frame larger
    than the pool). Samples are now taken in the order the seeded cell order found them: a
    bigger dataset holds the smaller one, which need not be built again."""
    frame = box(0, 0, 3, 3)
    shapely.prepare(frame)
    plans = {
        n: set(_plan_over(frame, tmp_path, f"sample.count={n}")["sample_id"]) for n in (25, 50, 200)
    }
    assert len(plans[25]) == 25 and len(plans[200]) == 200
    assert plans[25] <= plans[50] <= plans[200]
    other_seed = set(_plan_over(frame, tmp_path, "sample.count=25", "sample.seed=1")["sample_id"])
    assert len(other_seed & plans[25]) < 5  # still another seed's samples


def _candidate(i: int, stratum: int) -> plan_mod._Candidate:
    """A candidate far from every other (no overlap), in a given stratum."""
    cell = cell_at(2 * i, 0, 1600.0)
    cand = plan_mod._candidate(cell.row, cell.col, _plan_recipe(), box(-180, -90, 180, 90))
    assert cand is not None
    cand.stratum = stratum
    return cand


def _plan_recipe() -> Recipe:
    return load_recipe(DEMO, ["stac.url=http://127.0.0.1:9/"])


def test_stratified_allocation_of_a_longer_pool_keeps_the_shorter_pools_choice() -> None:
    """With strata: the pool for a larger count extends the smaller count's pool (the same
    seeded cell order, read further); round-robin over each stratum's queue in found order
    then chooses a superset, as long as no stratum runs dry in the shorter pool."""
    rng = np.random.default_rng(4)
    strata = rng.choice([10, 20, 30], size=240, p=[0.6, 0.3, 0.1]).tolist()
    pool = [_candidate(i, s) for i, s in enumerate(strata)]
    edge = _plan_recipe().sample.edge_m
    small = plan_mod._allocate(pool[:120], 12, edge)
    large = plan_mod._allocate(pool, 24, edge)
    ids = {(c.row, c.col) for c in small}
    assert len(small) == 12 and ids <= {(c.row, c.col) for c in large}
    assert {c.stratum for c in small} == {10, 20, 30}  # still balanced: 4 of each
    assert sorted(sum(c.stratum == s for c in small) for s in (10, 20, 30)) == [4, 4, 4]
