"""`las inspect`, `las stats` and `las build --status` on odd datasets: unfinished builds,
every sample skipped, damaged index rows, unwritable outputs, changed plans, poles."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import cast

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import typer
import zarr
from shapely.geometry import Polygon
from typer.testing import CliRunner

from las_builder.build.run import StatusError, build_status, plan_shards
from las_builder.cli_inspect import inspect as inspect_command
from las_builder.cli_stats import stats as stats_command
from las_builder.geobox import geobox_footprint, sample_geobox
from las_builder.inspect import InspectError, _rings, inspect_dataset, summarise_dataset
from las_builder.stats import StatsError, compute_stats, read_index

DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


def _app(command: Callable[..., None]) -> typer.Typer:
    app = typer.Typer()
    app.command()(command)
    return app


def _one_line_error(output: str) -> str:
    """The CLI's error: one line, starting with ``error:``, no traceback."""
    assert "Traceback" not in output and "╭" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture
def las(small_las: Path, tmp_path: Path) -> Path:
    """A private copy of the session's 24-sample dataset (6 shards of 4), to damage freely."""
    copy = tmp_path / "las"
    shutil.copytree(small_las, copy, ignore=shutil.ignore_patterns("inspect", "stats"))
    return copy


def _edit_index(path: Path, **columns: object) -> gpd.GeoDataFrame:
    index = gpd.read_parquet(path / "index.parquet")
    for name, values in columns.items():
        index[name] = values
    index.to_parquet(path / "index.parquet")
    return index


# --- unfinished builds -------------------------------------------------------------------------


def test_partial_build_is_inspected_from_its_finished_shards(las: Path) -> None:
    # A build killed after 4 of 6 shards: no index.parquet yet, the parts of shards 0-3.
    (las / "index.parquet").unlink()
    for shard in (4, 5):
        (las / "index-parts" / f"shard-{shard:06d}.parquet").unlink()
    result = CliRunner().invoke(_app(inspect_command), [str(las), "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "partial build" in result.output and "4 of 6 finished shards" in result.output
    summary = json.loads((las / "inspect" / "summary.json").read_text())
    assert summary["samples"] == 16
    assert summary["ok"] + summary["skipped"] + summary["failed"] == 16
    assert summary["partial"] == {"shards_done": 4, "shards_planned": 6, "samples_planned": 24}
    assert all(p["zarr_index"] < 16 for p in summary["panels"].values())
    assert "partial build" in (las / "inspect" / "report.html").read_text(encoding="utf-8")

    # las stats counts exactly the ok samples of the finished shards
    stats = compute_stats(las)
    parts = pd.concat(pd.read_parquet(p) for p in sorted((las / "index-parts").iterdir()))
    ok = np.sort(parts.loc[parts["status"] == "ok", "zarr_index"].to_numpy())
    assert stats.samples_total == 16 and stats.samples_ok == len(ok) > 0
    root = zarr.open_group(las / "las.zarr", mode="r")
    product = stats.products[0]
    array = cast(zarr.Array, root[f"labels/{product}/las"])
    data = cast(np.ndarray, array[:])[ok]
    np.testing.assert_array_equal(stats.counts[product], np.bincount(data.ravel(), minlength=256))
    assert stats.to_dict()["partial"]["shards_done"] == 4


def test_nothing_built_yet_is_one_clear_error(las: Path) -> None:
    (las / "index.parquet").unlink()
    shutil.rmtree(las / "index-parts")
    for command in (inspect_command, stats_command):
        result = CliRunner().invoke(_app(command), [str(las)])
        assert result.exit_code == 2
        line = _one_line_error(result.output)
        assert "index.parquet is missing and no shard is finished yet" in line
        assert "run `las build RECIPE` first" in line


def test_index_older_than_the_finished_shards_is_said(las: Path) -> None:
    # index.parquet of a build that stopped after 5 shards; a later run finished shard 5.
    index = gpd.read_parquet(las / "index.parquet")
    index[index["shard"] < 5].to_parquet(las / "index.parquet")
    loaded = read_index(las)
    assert loaded.partial is None and loaded.stale_shards == [5]
    result = inspect_dataset(las, las / "inspect", samples=0)
    assert result.summary["stale_shards"] == [5]
    assert "older than 1 finished shard(s)" in result.report.read_text(encoding="utf-8")


# --- every sample skipped or failed; optional columns empty ------------------------------------


def test_every_sample_skipped_or_failed_shows_no_figures_of_nothing(las: Path) -> None:
    n = len(gpd.read_parquet(las / "index.parquet"))
    status = ["skipped"] * (n - 2) + ["failed"] * 2
    reason = ["too cloudy: 80 % > 60 %"] * (n - 2) + ["unexpected ValueError: boom"] * 2
    _edit_index(las, status=status, reason=reason)
    result = inspect_dataset(las, las / "inspect", samples=3)
    summary = result.summary
    assert (summary["ok"], summary["skipped"], summary["failed"]) == (0, n - 2, 2)
    assert result.samples == []
    assert summary["reasons"] == [
        {"status": "skipped", "reason": "too cloudy", "samples": n - 2},
        {"status": "failed", "reason": "unexpected ValueError", "samples": 2},
    ]
    # no ok pixel: shares are unknown, not 0 %
    assert all(p["classified_pct"] is None for p in summary["products"])
    assert summary["mean_sample_agreement"] is None

    run = CliRunner().invoke(_app(stats_command), [str(las)])
    assert run.exit_code == 0, run.output
    assert "no ok sample among 24: nothing to count" in run.output
    water = next(line for line in run.output.splitlines() if "Water" in line)
    assert "0.0" not in water and "-" in water
    data = json.loads((las / "stats" / "stats.json").read_text())
    assert all(v is None for v in data["class_counts"]["consensus"]["frequencies"].values())


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_nan_and_none_in_optional_columns(las: Path) -> None:
    n = len(gpd.read_parquet(las / "index.parquet"))
    _edit_index(
        las,
        agreement=np.nan,
        cloud_pct=np.nan,
        naip_item=None,
        s1_datetime=None,
        s2_datetime=None,
        reason=None,
        stratum=None,
    )
    result = inspect_dataset(las, las / "inspect", samples=1)
    assert result.summary["samples"] == n
    assert result.summary["mean_sample_agreement"] is None  # no sample had votes: not NaN
    facts = result.samples[0].facts
    assert facts["cloud %"] == "-" and facts["agreement"] == "-" and facts["Sentinel-2"] == "-"
    json.loads((las / "inspect" / "summary.json").read_text())  # valid JSON: no NaN token


def test_summary_mean_agreement_ignores_nan_samples() -> None:
    index = pd.DataFrame(
        {"status": ["ok", "ok", "ok", "skipped"], "agreement": [0.5, np.nan, 1.0, 0.0]}
    )
    summary = summarise_dataset(index, {}, {})
    assert summary["mean_sample_agreement"] == pytest.approx(0.75)
    assert summary["reasons"] == [{"status": "skipped", "reason": "(no reason)", "samples": 1}]


# --- damaged index rows ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "edit", "message"),
    [
        ("status", lambda s: ["ok"] * (len(s) - 1) + ["pending"], "has status 'pending'"),
        ("status", lambda s: [None] + ["ok"] * (len(s) - 1), "has no status"),
        ("zarr_index", lambda s: [1, *s[1:]], "zarr_index 1 appears 2 times"),
        ("zarr_index", lambda s: s + 100, "but las.zarr holds 24 samples"),
        ("zarr_index", lambda s: [np.nan, *s[1:]], "has zarr_index nan"),
    ],
)
def test_damaged_index_rows_are_one_line_errors(
    las: Path, column: str, edit: object, message: str
) -> None:
    index = gpd.read_parquet(las / "index.parquet")
    index[column] = edit(index[column])  # type: ignore[operator]
    index.to_parquet(las / "index.parquet")
    for command in (inspect_command, stats_command):
        result = CliRunner().invoke(_app(command), [str(las)])
        assert result.exit_code == 2, result.output
        line = _one_line_error(result.output)
        assert message in line and "sample" in line, line
    assert not (las / "inspect").exists()  # refused before writing anything


def test_sample_without_a_place_is_named(las: Path) -> None:
    index = _edit_index(las)
    index.loc[3, "lat"] = np.nan
    index.to_parquet(las / "index.parquet")
    with pytest.raises(InspectError, match=f"sample {index.loc[3, 'sample_id']} has no lat"):
        inspect_dataset(las, las / "inspect")


def test_unreadable_index_part_is_named(las: Path) -> None:
    (las / "index.parquet").unlink()
    (las / "index-parts" / "shard-000002.parquet").write_bytes(b"not parquet")
    with pytest.raises(StatsError, match=r"shard-000002\.parquet is unreadable .*delete it"):
        read_index(las)


# --- outputs that cannot be written ------------------------------------------------------------


def test_unwritable_output_names_the_path(las: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    result = CliRunner().invoke(_app(inspect_command), [str(las), "-q", "-o", str(blocker / "x")])
    assert result.exit_code == 2
    line = _one_line_error(result.output)
    assert f"cannot write {blocker / 'x'}" in line and "--out" in line

    (las / "stats").write_text("a file where the folder goes")
    result = CliRunner().invoke(_app(stats_command), [str(las), "-q"])
    assert result.exit_code == 2
    assert f"cannot write {las / 'stats'}" in _one_line_error(result.output)
    result = CliRunner().invoke(_app(stats_command), [str(las), "-q", "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "stats.json").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(las: Path, tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = CliRunner().invoke(
            _app(inspect_command), [str(las), "-q", "-n", "1", "-o", str(out)]
        )
    finally:
        out.chmod(0o755)
    assert result.exit_code == 2
    line = _one_line_error(result.output)
    assert "cannot write" in line and str(out) in line


# --- odd places, paths and layouts -------------------------------------------------------------


def test_one_sample_without_sentinel1_on_a_unicode_path(las: Path, tmp_path: Path) -> None:
    odd = tmp_path / "my datasets ü 数据" / "las v1"
    odd.parent.mkdir()
    las.rename(odd)
    index = gpd.read_parquet(odd / "index.parquet")
    one = index[index["status"] == "ok"].iloc[[0]]
    one.drop(columns=[c for c in one.columns if c.startswith("s1_")]).to_parquet(
        odd / "index.parquet"
    )
    # as a store built with `imagery.sentinel-1: null` has it: no arrays of Sentinel-1
    for name in ("sentinel-1", "s1_band"):
        shutil.rmtree(odd / "las.zarr" / name)
    result = CliRunner().invoke(_app(inspect_command), [str(odd), "-n", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(odd / "inspect" / "report.html")
    summary = json.loads((odd / "inspect" / "summary.json").read_text(encoding="utf-8"))
    assert summary["dataset"] == str(odd) and summary["samples"] == summary["ok"] == 1
    (panels,) = summary["panels"].values()
    keys = {p["key"] for p in panels["panels"]}
    assert "s2" in keys and "s1" not in keys
    drawn = [panel["path"] for panel in panels["panels"] if panel["path"]]
    assert len(drawn) >= 2 and all((odd / "inspect" / path).is_file() for path in drawn)
    text = (odd / "inspect" / "report.html").read_text(encoding="utf-8")
    assert "数据" in text and 'data-panel="s2"' in text and 'data-panel="s1"' not in text


def test_polar_caps_stay_whole_and_antimeridian_rings_unwrap() -> None:
    north = geobox_footprint(sample_geobox(0.0, 89.999, 128, 10))
    (ring,) = _rings([north])
    assert ring[:, 0].min() == pytest.approx(-180) and ring[:, 0].max() == pytest.approx(180)

    across = Polygon([(179.9, 0), (-179.9, 0), (-179.9, 0.1), (179.9, 0.1)])
    (ring,) = _rings([across])
    assert ring[:, 0].min() == pytest.approx(179.9) and ring[:, 0].max() == pytest.approx(180.1)

    antarctica = Polygon([(-180, -90), (180, -90), (180, -70), (-180, -65)])
    (ring,) = _rings([antarctica], unwrap=False)
    assert ring[:, 0].min() == -180 and ring[:, 0].max() == 180


def test_samples_at_a_pole_and_the_antimeridian_render(las: Path) -> None:
    index = gpd.read_parquet(las / "index.parquet")
    places = [(0.0, 89.999), (45.0, -89.99), (180.0, 5.0)]
    for row, (lon, lat) in zip(index.index[:3], places, strict=True):
        index.loc[row, ["lon", "lat"]] = [lon, lat]
        index.loc[row, "geometry"] = geobox_footprint(sample_geobox(lon, lat, 32, 10))
    index.to_parquet(las / "index.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = inspect_dataset(las, las / "inspect", samples=0)
    assert result.figures["world"].stat().st_size > 0
    assert result.figures["regions"].stat().st_size > 0


# --- las build --status -------------------------------------------------------------------------


def _status(out: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    from las_builder.cli import app

    # --status reads only output.path: an unset ${LAS_STAC_URL} must not stop it
    monkeypatch.delenv("LAS_STAC_URL", raising=False)
    result = CliRunner().invoke(
        app, ["build", str(DEMO_RECIPE), "--set", f"output.path={out}", "--status"]
    )
    return result.exit_code, result.output


def test_status_counts_samples_of_finished_shards_only(
    las: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = gpd.read_parquet(las / "index.parquet")
    for shard in (4, 5):
        (las / "index-parts" / f"shard-{shard:06d}.parquet").unlink()
    code, output = _status(las, monkeypatch)
    assert code == 0, output
    status = json.loads(output)
    done = index[index["shard"] < 4]
    assert status["shards"] == 6 and status["shards_done"] == 4
    assert status["samples"] == 24 and status["samples_done"] == len(done) == 16
    assert status["samples_remaining"] == 8
    for name in ("ok", "skipped", "failed"):
        assert status[name] == int((done["status"] == name).sum())
    assert status["ok"] + status["skipped"] + status["failed"] == status["samples_done"]


def test_status_of_an_output_not_planned_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output = _status(tmp_path / "nothing here", monkeypatch)
    assert code == 2
    line = _one_line_error(output)
    assert "plan.parquet not found" in line and "run `las plan RECIPE` first" in line


def test_status_of_a_plan_written_again(las: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = gpd.read_parquet(las / "plan.parquet")
    original = plan.copy()
    # same length, other samples (another seed): the old parts must not count as done
    plan["sample_id"] = list(reversed(plan["sample_id"]))
    plan.to_parquet(las / "plan.parquet")
    code, output = _status(las, monkeypatch)
    assert code == 2
    line = _one_line_error(output)
    assert "shard-000000.parquet holds sample" in line and "plan.parquet changed" in line

    # a longer plan over a store of the old length
    longer = pd.concat(
        [original, original.iloc[:4].assign(plan_index=range(24, 28), shard=6)], ignore_index=True
    )
    gpd.GeoDataFrame(longer, geometry="geometry", crs=original.crs).to_parquet(las / "plan.parquet")
    code, output = _status(las, monkeypatch)
    assert code == 2
    assert "las.zarr holds 24 samples, plan.parquet 28" in _one_line_error(output)

    # the plain counts (as the build's progress bar uses them) do not check the plan
    assert build_status(str(las), plan_shards(str(las)))["shards_done"] == 6
    with pytest.raises(StatusError, match="plan.parquet changed"):
        build_status(str(las), plan_shards(str(las)), check_plan=True)


def test_status_names_an_unreadable_part(las: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (las / "index-parts" / "shard-000003.parquet").write_bytes(b"\0" * 10)
    code, output = _status(las, monkeypatch)
    assert code == 2
    line = _one_line_error(output)
    assert "shard-000003.parquet is unreadable" in line and "rebuild shard 3" in line
