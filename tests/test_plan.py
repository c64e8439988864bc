"""The sample plan against the tiny offline world served on loopback."""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import typer
from pystac_client import Client
from shapely.geometry import Point, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union
from typer.testing import CliRunner

from las_builder import plan as plan_mod
from las_builder.cli_plan import plan as plan_command
from las_builder.geobox import sample_geobox
from las_builder.plan import PLAN_COLUMNS, make_plan, plan_path, write_plan
from las_builder.recipe import Recipe, load_recipe
from las_builder.stac.item import parse_item

ROOT = Path(__file__).resolve().parents[1]
SIZE_PX = 32  # 320 m samples in the tiny world's 1.92 km regions


@pytest.fixture(scope="module")
def stac_url(served_world: dict) -> str:
    """The STAC API of the session's served copy of the tiny world (tests/conftest.py)."""
    return served_world["stac_url"]


def _recipe(stac_url: str, tmp_path: Path, *overrides: str) -> Recipe:
    return load_recipe(
        ROOT / "recipes" / "demo.yaml",
        [
            f"stac.url={stac_url}",
            f"sample.size_px={SIZE_PX}",
            "sample.count=20",
            f"output.path={tmp_path / 'out'}",
            "output.samples_per_shard=4",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def frame(stac_url: str) -> BaseGeometry:
    items = Client.open(stac_url).search(collections=["las-world-truth"]).items_as_dicts()
    return unary_union([parse_item(i).footprint() for i in items])


@pytest.fixture(scope="module")
def plan20(stac_url: str, tmp_path_factory: pytest.TempPathFactory) -> gpd.GeoDataFrame:
    return make_plan(_recipe(stac_url, tmp_path_factory.mktemp("p20")))


@pytest.fixture(scope="module")
def plan_all(stac_url: str, tmp_path_factory: pytest.TempPathFactory) -> gpd.GeoDataFrame:
    return make_plan(_recipe(stac_url, tmp_path_factory.mktemp("pall"), "sample.count=1000"))


def _utm_box(row: Any) -> BaseGeometry:
    """The UTM box of a plan row (a pandas itertuples row: its fields are dynamic)."""
    a, _, c, _, e, f = row.transform
    h, w = row.shape
    return box(c, f + e * h, c + a * w, f)


def test_plan_columns_and_order(plan20: gpd.GeoDataFrame) -> None:
    assert list(plan20.columns) == list(PLAN_COLUMNS)
    assert len(plan20) == 20
    assert plan20.crs.to_epsg() == 4326
    assert plan20["sample_id"].is_unique
    assert plan20["sample_id"].str.match(r"^10m32px_\d{4,}[UD]_\d{4,}[RL]$").all()
    assert list(plan20["plan_index"]) == list(range(20))
    assert list(plan20["shard"]) == [i // 4 for i in range(20)]
    assert (plan20["resolution_m"] == 10.0).all()
    assert all(tuple(s) == (SIZE_PX, SIZE_PX) for s in plan20["shape"])
    assert plan20.attrs["plan_note"] == ""
    # Each row's grid is the sample_geobox of its centre, in the UTM zone of the centre.
    for row in plan20.itertuples():
        gb = sample_geobox(row.lon, row.lat, SIZE_PX, 10)
        assert gb.crs is not None
        assert gb.crs.epsg == row.epsg
        assert list(gb.transform)[:6] == pytest.approx(list(row.transform))
        assert row.geometry.covers(Point(row.lon, row.lat))


def test_plan_rows_follow_the_hilbert_curve(plan_all: gpd.GeoDataFrame) -> None:
    curve = plan_mod.hilbert_order(plan_all["lon"].to_numpy(), plan_all["lat"].to_numpy())
    assert (np.diff(curve) >= 0).all()


def test_the_hilbert_curve_visits_every_cell_once_stepping_to_a_neighbour() -> None:
    bits = 5
    xs, ys = np.meshgrid(np.arange(1 << bits), np.arange(1 << bits))
    x, y = xs.ravel().astype(np.int64), ys.ravel().astype(np.int64)
    d = plan_mod._hilbert_d(x, y, bits)
    assert sorted(d.tolist()) == list(range(1 << (2 * bits)))
    order = np.argsort(d)
    assert (np.abs(np.diff(x[order])) + np.abs(np.diff(y[order])) == 1).all()


def test_shards_of_a_global_plan_are_compact_along_the_curve() -> None:
    """150,000 points spread over the globe in runs of 64 (a LAS v1 shard): along grid rows a
    run spans the world, along the curve a few degrees, so it shares label tiles."""
    rng = np.random.default_rng(0)
    lat = np.degrees(
        np.arcsin(rng.uniform(np.sin(np.radians(-60)), np.sin(np.radians(75)), 150_000))
    )
    lon = rng.uniform(-180, 180, lat.size)
    rows = np.floor(lat * 111_195 / 3200).astype(int)  # Major TOM rows of 3.2 km

    def tiles_per_run(order: np.ndarray) -> float:  # ESA WorldCover's 3 x 3 degree tiles
        tiles = (np.floor(lat / 3) * 1000 + np.floor(lon / 3))[order].reshape(-1, 64)
        return float(np.mean([len(set(run)) for run in tiles]))

    by_row = np.lexsort((lon, -rows))[: 150_000 // 64 * 64]
    by_curve = np.argsort(plan_mod.hilbert_order(lon, lat), kind="stable")[: 150_000 // 64 * 64]
    assert tiles_per_run(by_row) > 40  # nearly one tile per sample
    assert tiles_per_run(by_curve) < 10


def test_plan_is_deterministic_for_a_seed(stac_url: str, tmp_path: Path) -> None:
    first = make_plan(_recipe(stac_url, tmp_path, "sample.seed=11", "sample.count=12"))
    again = make_plan(_recipe(stac_url, tmp_path, "sample.seed=11", "sample.count=12"))
    other = make_plan(_recipe(stac_url, tmp_path, "sample.seed=12", "sample.count=12"))
    assert first.drop(columns="geometry").equals(again.drop(columns="geometry"))
    assert first.geometry.geom_equals(again.geometry).all()
    assert set(first["sample_id"]) != set(other["sample_id"])
    assert len(other) == 12


def test_samples_do_not_overlap(plan_all: gpd.GeoDataFrame) -> None:
    assert len(plan_all) > 30
    for _epsg, group in plan_all.groupby("epsg"):
        boxes = [_utm_box(r) for r in group.itertuples()]
        for a, b in itertools.combinations(boxes, 2):
            assert a.intersection(b).area == 0
    # Across zones (the antimeridian region has samples in zones 60S and 1S): lon/lat footprints.
    for a, b in itertools.combinations(plan_all.geometry, 2):
        assert a.intersection(b).area < 1e-12


def test_touching_spacing_still_gives_disjoint_samples(stac_url: str, tmp_path: Path) -> None:
    # Cells exactly one sample edge wide: snapping and grid convergence would make neighbours
    # overlap by a few metres; the plan leaves such candidates out.
    gdf = make_plan(
        _recipe(stac_url, tmp_path, f"sample.spacing_m={SIZE_PX * 10}", "sample.count=500")
    )
    assert len(gdf) < gdf.attrs["candidates"]
    for _epsg, group in gdf.groupby("epsg"):
        boxes = [_utm_box(r) for r in group.itertuples()]
        for a, b in itertools.combinations(boxes, 2):
            assert a.intersection(b).area == 0
    assert gdf["sample_id"].str.startswith("10m32px320s_").all()


def test_samples_lie_inside_the_frame(plan_all: gpd.GeoDataFrame, frame: BaseGeometry) -> None:
    for geom in plan_all.geometry:
        assert frame.covers(geom)
    # All three regions are used, the antimeridian one on both sides of 180.
    assert {32615, 32635, 32760, 32701} <= set(plan_all["epsg"])
    fiji = plan_all[plan_all["epsg"].isin([32760, 32701])]
    assert (fiji["lon"] > 179).any() and (fiji["lon"] < -179).any()


def test_strata_are_balanced(plan20: gpd.GeoDataFrame) -> None:
    candidates = plan20.attrs["candidates_per_stratum"]
    assert len(candidates) >= 5
    counts = Counter(int(v) for v in plan20["stratum"])
    assert set(counts) <= set(candidates)
    top = max(counts.values())
    for stratum, available in candidates.items():
        got = counts.get(stratum, 0)
        # Round-robin: every class gets within one of the most-sampled class, unless it ran out.
        assert got >= top - 1 or got == available
        assert got <= available
    assert sum(counts.values()) == 20


def test_too_few_candidates_plans_all_and_warns(
    stac_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="las_builder.plan"):
        gdf = make_plan(_recipe(stac_url, tmp_path, "sample.count=1000"))
    assert len(gdf) == gdf.attrs["candidates"] < 1000
    assert sum(gdf.attrs["candidates_per_stratum"].values()) == len(gdf)
    assert f"only {len(gdf)} of the 1000 requested samples" in gdf.attrs["plan_note"]
    assert any("requested samples" in r.getMessage() for r in caplog.records)


def test_unstratified_plan(stac_url: str, tmp_path: Path) -> None:
    gdf = make_plan(_recipe(stac_url, tmp_path, "sampling.stratify=null", "sample.count=25"))
    assert len(gdf) == 25
    assert gdf["stratum"].isna().all()
    assert gdf["sample_id"].is_unique


def test_drawn_cells_for_large_frames(
    stac_url: str, tmp_path: Path, frame: BaseGeometry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan_mod, "ENUMERATE_LIMIT", 0)  # force random drawing of cells
    gdf = make_plan(_recipe(stac_url, tmp_path, "sample.count=15"))
    assert len(gdf) == 15 and gdf["sample_id"].is_unique
    for geom in gdf.geometry:
        assert frame.covers(geom)
    again = make_plan(_recipe(stac_url, tmp_path, "sample.count=15"))
    assert list(again["sample_id"]) == list(gdf["sample_id"])


def test_write_plan_round_trips(plan20: gpd.GeoDataFrame, stac_url: str, tmp_path: Path) -> None:
    recipe = _recipe(stac_url, tmp_path)
    path = write_plan(plan20, plan_path(recipe))
    assert path == str(tmp_path / "out" / "plan.parquet")
    back = gpd.read_parquet(path)
    assert list(back.columns) == list(PLAN_COLUMNS)
    assert back.crs.to_epsg() == 4326
    assert list(back["sample_id"]) == list(plan20["sample_id"])
    assert np.allclose(np.stack(back["transform"]), np.stack(plan20["transform"]))
    assert back.geometry.geom_equals(plan20.geometry).all()
    assert list(back["stratum"]) == list(plan20["stratum"])


def test_plan_command(stac_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = typer.Typer()
    app.command("plan")(plan_command)
    app.command("other")(lambda: None)  # two commands: `plan` stays a subcommand
    monkeypatch.setenv("LAS_STAC_URL", stac_url)
    out = tmp_path / "cli"
    args = ["plan", str(ROOT / "recipes" / "demo.yaml"), "--set", f"sample.size_px={SIZE_PX}"]
    result = CliRunner().invoke(app, [*args, "--set", f"output.path={out}", "-q"])
    assert result.exit_code == 0, result.output
    assert "planned 32 samples (4 shards" in result.output
    assert str(out / "plan.parquet") in result.output
    assert len(gpd.read_parquet(out / "plan.parquet")) == 32

    bad = CliRunner().invoke(app, [*args, "--set", "sample.count=0"])
    assert bad.exit_code == 2
    assert "sample.count = 0 (from --set): must be > 0" in bad.output


def test_no_sample_fits_is_an_error_not_an_empty_plan(
    stac_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Samples larger than every region of the frame: `las plan` says so and writes nothing
    (an empty plan only failed later, in `las build`)."""
    app = typer.Typer()
    app.command("plan")(plan_command)
    app.command("other")(lambda: None)
    monkeypatch.setenv("LAS_STAC_URL", stac_url)
    out = tmp_path / "cli"
    args = [str(ROOT / "recipes" / "demo.yaml"), "--set", f"output.path={out}", "-q"]
    result = CliRunner().invoke(app, ["plan", *args, "--set", "sample.size_px=1024"])
    assert result.exit_code == 2, result.output
    assert "no sample of 1024 px x 10 m fits in the frame (las-world-truth)" in result.output
    assert "sample.size_px" in result.output
    assert not (out / "plan.parquet").exists()


@pytest.mark.parametrize(
    "href", ["file:///etc/passwd", "/etc/passwd", "ftp://example.org/x.tif", "/vsizip/x.zip"]
)
def test_stratify_hrefs_outside_the_allowlist_are_refused(
    href: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from las_builder.plan import PlanError, _StratumReader

    monkeypatch.delenv("LAS_ALLOWED_FILE_ROOTS", raising=False)
    reader = object.__new__(_StratumReader)  # only what _open needs
    reader.asset, reader.collection, reader._datasets = "map", "esa-worldcover", {}
    reader.sign = lambda h, _collection: h
    item = SimpleNamespace(id="wc-1", assets={"map": SimpleNamespace(href=href)})
    with pytest.raises(PlanError, match="refused"):
        reader._open(item)  # type: ignore[arg-type]
    assert reader._datasets == {}
