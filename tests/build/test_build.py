"""`las plan` + `las build` end to end on the served tiny world."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
import zarr
from affine import Affine
from rasterio.warp import Resampling, reproject
from typer.testing import CliRunner
from zarr.core.metadata import ArrayV3Metadata

from las_builder.build import read as read_mod
from las_builder.build import run as run_mod
from las_builder.build.config import config_from_recipe
from las_builder.build.search import StacSearcher
from las_builder.catalog import load_label_product, load_mapping
from las_builder.cli import app
from las_builder.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "demo.yaml"


def _args(served_world: dict, out: Path, *extra: str) -> list[str]:
    sets = [
        f"stac.url={served_world['stac_url']}",
        "sample.size_px=32",
        "sample.count=24",
        f"output.path={out}",
        "output.samples_per_shard=4",
        "imagery.naip.factor=4",
        *extra,
    ]
    return [str(RECIPE)] + [a for s in sets for a in ("--set", s)]


def _plan_and_build(
    served_world: dict, out: Path, *extra: str, build_flags: tuple[str, ...] = ()
) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["plan", *_args(served_world, out, *extra), "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["build", *_args(served_world, out, *extra), "--quiet", *build_flags]
    )
    assert result.exit_code == 0, result.output


def _zarr_digest(store: Path) -> dict[str, str]:
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(served_world: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build") / "las"
    _plan_and_build(served_world, out)
    return out


def test_index_has_one_row_per_planned_sample(built: Path) -> None:
    plan = gpd.read_parquet(built / "plan.parquet")
    index = gpd.read_parquet(built / "index.parquet")
    assert len(plan) == 24
    assert index["sample_id"].tolist() == plan["sample_id"].tolist()
    assert index["epsg"].tolist() == plan["epsg"].tolist()
    assert all(a.equals(b) for a, b in zip(index.geometry, plan.geometry, strict=True))
    assert set(index["status"]) <= {"ok", "skipped", "failed"}
    ok = index[index["status"] == "ok"]
    assert len(ok) >= 20
    assert ok["s2_item"].str.startswith("S2").all()
    assert ok["s1_orbit_state"].isin(["ascending", "descending"]).all()
    counts = json.loads(ok["class_counts"].iloc[0])
    assert set(counts) >= {"esa-worldcover", "consensus"}
    assert sum(counts["consensus"].values()) == 32 * 32


def test_index_columns_are_the_recipes_whatever_was_found(built: Path, tmp_path: Path) -> None:
    """Every index has the columns its recipe implies, in one order, typed even where no
    sample filled them (no aerial image anywhere, every sample skipped early)."""
    import pyarrow.parquet as pq

    from las_builder.build.config import config_from_recipe

    recipe = load_recipe(RECIPE, overrides=["stac.url=http://127.0.0.1:1/"])
    columns = config_from_recipe(recipe).record_columns()
    plan = [name for name in pq.read_schema(built / "plan.parquet").names if name != "geometry"]
    index = pq.read_schema(built / "index.parquet")
    assert index.names == [*plan, "geometry", "status", "reason", "zarr_index", *columns]
    assert {"naip_item", "naip_datetime", "agreement"} <= set(columns)
    for name, type_name in columns.items():
        assert str(index.field(name).type) in (type_name, "large_string"), name

    # the same when a column is null in every shard's part: typed, not null
    out = tmp_path / "las"
    shutil.copytree(built, out)
    for part in sorted((out / "index-parts").glob("shard-*.parquet")):
        frame = pd.read_parquet(part)
        frame["naip_datetime"] = None
        frame["agreement"] = None
        frame.to_parquet(part, index=False)
        assert str(pq.read_schema(part).field("naip_datetime").type) == "null"
    run_mod.write_index(str(out), columns)
    again = pq.read_schema(out / "index.parquet")
    assert again.names == index.names
    assert str(again.field("naip_datetime").type) == "string"
    assert str(again.field("agreement").type) == "double"


def _array(group: zarr.Group, path: str) -> zarr.Array:
    """``group[path]``, an array of the store (zarr types a member as an array or a group)."""
    node = group[path]
    assert isinstance(node, zarr.Array), path
    return node


def _read(group: zarr.Group, path: str, selection: int | slice = slice(None)) -> np.ndarray:
    """``group[path][selection]``: numpy data (zarr types it as any array-like or a scalar)."""
    return cast(np.ndarray, _array(group, path)[selection])


def test_store_layout(built: Path) -> None:
    root = zarr.open_group(built / "las.zarr", mode="r")
    s2 = _array(root, "sentinel-2")
    assert s2.shape == (24, 12, 32, 32)
    assert s2.shards == (4, 12, 32, 32)
    assert isinstance(s2.metadata, ArrayV3Metadata)
    assert s2.metadata.dimension_names == ("sample", "s2_band", "y", "x")
    # Attributes are typed as any JSON value: cast to what the store writes.
    assert _read(root, "s2_band").tolist() == s2.attrs["bands"]
    assert cast(list[str], s2.attrs["bands"])[:4] == ["B01", "B02", "B03", "B04"]
    assert cast(list[float], s2.attrs["center_wavelength_um"])[3] == pytest.approx(0.665)
    assert _array(root, "naip").shape == (24, 4, 128, 128)
    worldcover = _array(root, "labels/esa-worldcover/native")
    classes = cast(list[dict[str, Any]], worldcover.attrs["classes"])
    assert classes[0]["value"] == 10
    taxonomy = cast(list[dict[str, Any]], root.attrs["taxonomy"])
    assert {c["key"] for c in taxonomy} >= {"water", "trees", "cropland"}


def _independent_labels(
    row: dict, product: str, asset: str, item_ids: list[str], items_by_id: dict
) -> np.ndarray:
    legend = load_label_product(product)
    out = np.full(tuple(row["shape"]), legend.nodata, dtype=legend.dtype)
    for item_id in item_ids:
        href = items_by_id[item_id]["assets"][asset]["href"]
        with rasterio.open(href) as src:
            tmp = np.full(out.shape, legend.nodata, dtype=legend.dtype)
            reproject(
                rasterio.band(src, 1),
                tmp,
                dst_transform=Affine(*row["transform"]),
                dst_crs=f"EPSG:{row['epsg']}",
                dst_nodata=legend.nodata,
                resampling=Resampling.nearest,
            )
        fill = out == legend.nodata
        out[fill] = tmp[fill]
    return out


def test_labels_equal_an_independent_reprojection(built: Path, served_world: dict) -> None:
    served = served_world["world"] / ".serve"
    items_by_id = {}
    for path in served.rglob("*.json"):
        data = json.loads(path.read_text())
        for feature in data.get("features", []) if isinstance(data, dict) else []:
            items_by_id[feature["id"]] = feature
    assert items_by_id, "served item copies not found"
    index = gpd.read_parquet(built / "index.parquet")
    root = zarr.open_group(built / "las.zarr", mode="r")
    products = {
        "esa-worldcover": "map",
        "io-lulc-annual-v02": "data",
        "modis-12Q1-061": "LC_Type1",
        "dynamic-world-v1": "label",
    }
    ok = index[index["status"] == "ok"]
    checked = 0
    for _, row in ok.iloc[:: max(1, len(ok) // 5)].iterrows():
        for product, asset in products.items():
            item_ids = json.loads(row[f"{product}_items"])
            expected = _independent_labels(row, product, asset, item_ids, items_by_id)
            native = root[f"labels/{product}/native"][row["zarr_index"]]
            np.testing.assert_array_equal(native, expected, err_msg=f"{row['sample_id']} {product}")
            las = root[f"labels/{product}/las"][row["zarr_index"]]
            np.testing.assert_array_equal(las, load_mapping(product).map(expected))
            checked += 1
    assert checked >= 16


def test_second_run_is_byte_identical(built: Path, served_world: dict, tmp_path: Path) -> None:
    again = tmp_path / "las"
    _plan_and_build(served_world, again)
    first, second = _zarr_digest(built / "las.zarr"), _zarr_digest(again / "las.zarr")
    assert first == second


def test_read_threads_do_not_change_the_output(
    built: Path, served_world: dict, tmp_path: Path
) -> None:
    # The fixture builds with the default 2 samples at a time per shard; 1 must be identical.
    one = tmp_path / "las"
    _plan_and_build(served_world, one, build_flags=("--read-threads", "1"))
    assert _zarr_digest(built / "las.zarr") == _zarr_digest(one / "las.zarr")
    first = gpd.read_parquet(built / "index.parquet")
    second = gpd.read_parquet(one / "index.parquet")
    assert first.drop(columns="geometry").equals(second.drop(columns="geometry"))


def test_a_recipe_without_sentinel_1_builds_the_rest_alike(
    built: Path, served_world: dict, tmp_path: Path
) -> None:
    """``imagery.sentinel-1: null``: no Sentinel-1 array or index columns; the scene choice
    and everything else are those of the full recipe."""
    out = tmp_path / "las"
    _plan_and_build(served_world, out, "imagery.sentinel-1=null")
    root = zarr.open_group(out / "las.zarr", mode="r")
    assert "sentinel-1" not in root and "s1_band" not in root
    index, full = pd.read_parquet(out / "index.parquet"), pd.read_parquet(built / "index.parquet")
    assert not any(name.startswith("s1_") for name in index.columns)
    kept = [name for name in full.columns if not name.startswith("s1_")]
    pd.testing.assert_frame_equal(index[kept], full[kept])
    reference = zarr.open_group(built / "las.zarr", mode="r")
    for name in ("sentinel-2", "consensus", "labels/esa-worldcover/las"):
        np.testing.assert_array_equal(_read(root, name), _read(reference, name))


def test_cloudy_samples_are_skipped_with_a_reason(served_world: dict, tmp_path: Path) -> None:
    out = tmp_path / "las"
    _plan_and_build(served_world, out, "imagery.sentinel-2.max_cloud=0", "sample.count=8")
    index = gpd.read_parquet(out / "index.parquet")
    skipped = index[index["status"] == "skipped"]
    assert len(skipped) >= 1
    assert skipped["reason"].str.startswith("too cloudy").all()
    root = zarr.open_group(out / "las.zarr", mode="r")
    for i in skipped["zarr_index"]:
        assert not _read(root, "sentinel-2", i).any()
        assert not _read(root, "consensus", i).any()


def test_an_empty_plan_is_refused_by_name(built: Path, served_world: dict, tmp_path: Path) -> None:
    """A plan without rows (written by another tool, or an older `las plan`) is a clear
    error, not a traceback from the middle of the build."""
    out = tmp_path / "las"
    out.mkdir()
    plan = gpd.read_parquet(built / "plan.parquet")
    plan.iloc[:0].to_parquet(out / "plan.parquet")
    result = CliRunner().invoke(app, ["build", *_args(served_world, out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"{out}/plan.parquet holds no samples: nothing to build" in result.output
    assert not (out / "las.zarr").exists()


def test_nodata_pct_counts_scl_0_and_missing_bands(built: Path) -> None:
    """Every ok sample's nodata_pct is the share of its pixels without Sentinel-2 data (SCL 0
    or a band missing), within the recipe's limit (tests/faults: a band without data)."""
    index = pd.read_parquet(built / "index.parquet")
    root = zarr.open_group(built / "las.zarr", mode="r")
    for row in index[index["status"] == "ok"].to_dict("records"):
        i = int(row["zarr_index"])
        bands, scl = _read(root, "sentinel-2", i), _read(root, "sentinel-2-scl", i)
        gap = (scl == 0) | (bands == 0).any(axis=0)
        assert row["nodata_pct"] == pytest.approx(100 * gap.mean(), abs=1e-3), row["sample_id"]
        assert float(row["nodata_pct"]) <= 100 * 0.2  # the demo recipe's max_nodata


def test_unknown_code_fails_the_sample_and_names_it(served_world: dict, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(ROOT / "catalog", catalog)
    # Code 5 (crops) out of the legend and the mapping: the product's files hold a code its
    # catalog entry does not know (an incomplete mapping alone is refused with the recipe).
    mapping = catalog / "taxonomy" / "mappings" / "io-lulc-annual-v02.yaml"
    lines = [ln for ln in mapping.read_text().splitlines() if not ln.strip().startswith("5:")]
    mapping.write_text("\n".join(lines) + "\n")
    legend_file = catalog / "labels" / "io-lulc-annual-v02.yaml"
    legend = yaml.safe_load(legend_file.read_text())
    legend["classes"] = [c for c in legend["classes"] if c["value"] != 5]
    legend_file.write_text(yaml.safe_dump(legend, sort_keys=False))
    out = tmp_path / "las"
    env = {**os.environ, "LAS_CATALOG": str(catalog)}
    for command in ("plan", "build"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "las_builder.cli",
                command,
                *_args(served_world, out, "sample.count=8"),
                "--quiet",
            ],
            check=True,
            env=env,
        )
    index = gpd.read_parquet(out / "index.parquet")
    failed = index[index["status"] == "failed"]
    assert len(failed) >= 1
    assert failed["reason"].str.contains("io-lulc-annual-v02").all()
    assert failed["reason"].str.contains(r"\b5\b").all()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_threads_and_worker_processes_match_the_default_build(
    built: Path, served_world: dict, tmp_path: Path, workers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default is a process per core (forked workers) where there are two or more cores.
    out = tmp_path / "las"
    write_index, index_threads = run_mod.write_index, []

    def recorded(output: str, types: Any = None) -> dict:
        index_threads.append(threading.current_thread().name)
        return write_index(output, types)

    monkeypatch.setattr(run_mod, "write_index", recorded)
    _plan_and_build(served_world, out, build_flags=("--workers", workers))
    # With a cluster the index is written while the cluster closes, on a thread of its own.
    assert len(index_threads) == 1
    assert index_threads[0].startswith("las-index") == (workers == "2")
    assert _zarr_digest(out / "las.zarr") == _zarr_digest(built / "las.zarr")
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "index.parquet"), pd.read_parquet(built / "index.parquet")
    )


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[str]:
    """A dask.distributed scheduler and two worker processes started apart from the build.

    As on a cluster started by its operator: `dask scheduler` and `dask worker` in processes of
    their own (not forked from the build), found through a scheduler file.
    """
    from dask.distributed import Client

    file = tmp_path / "scheduler.json"
    dask_cli = [sys.executable, "-m", "dask"]
    started = [
        subprocess.Popen(
            [*dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0"]
            + ["--no-dashboard", "--scheduler-file", str(file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for _ in range(600):
            if file.exists() and file.stat().st_size:
                break
            assert started[0].poll() is None, "the dask scheduler exited"
            time.sleep(0.1)
        started.append(
            subprocess.Popen(
                [*dask_cli, "worker", "--scheduler-file", str(file), "--nworkers", "2"]
                + ["--nthreads", "2", "--no-dashboard"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        with Client(scheduler_file=str(file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            address = str(client.scheduler.address)
        yield address
    finally:
        for proc in reversed(started):
            proc.terminate()
        for proc in reversed(started):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_build_on_a_scheduler_started_apart_matches_the_default_build(
    built: Path, served_world: dict, tmp_path: Path, scheduler: str
) -> None:
    """`las build --scheduler tcp://...`: the shards built by workers that are not the
    build's children (they import the package themselves) are the default build's, byte for
    byte, and the build reports each worker's memory."""
    assert scheduler.startswith("tcp://127.0.0.1:")
    out = tmp_path / "las"
    runner = CliRunner()
    assert runner.invoke(app, ["plan", *_args(served_world, out), "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["build", *_args(served_world, out), "--scheduler", scheduler])
    assert result.exit_code == 0, result.output
    assert "built 24 of 24 samples" in result.output
    # one line, not wrapped at 80 columns where the output is no terminal (CI logs)
    assert f"-> {out}/las.zarr, {out}/index.parquet\n" in result.output
    assert "in the largest of 2 workers" in result.output
    assert _zarr_digest(out / "las.zarr") == _zarr_digest(built / "las.zarr")
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "index.parquet"), pd.read_parquet(built / "index.parquet")
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "labels.0.collection=nope",
            "recipe labels[0] (esa-worldcover).collection: no collection 'nope' at http",
        ),
        (
            "labels.0.year=2019",
            "recipe labels[0] (esa-worldcover).year = 2019: collection 'esa-worldcover' at",
        ),
        (
            "labels.0.asset=nope",
            "recipe labels[0] (esa-worldcover).asset = 'nope': the items of 'esa-worldcover' "
            "have no such asset (they have: map)",
        ),
        (
            "imagery.sentinel-1.collection=sentinel-1-nope",
            "recipe imagery.sentinel-1.collection: no collection 'sentinel-1-nope'",
        ),
    ],
)
def test_what_the_stac_api_lacks_is_a_recipe_error_before_any_shard(
    built: Path, served_world: dict, tmp_path: Path, override: str, message: str
) -> None:
    """A collection, a label year or a label asset the API does not have would fail (or
    empty) every sample alike, and no rebuild could mend it: exit 2 before building."""
    out = tmp_path / "las"
    out.mkdir()
    shutil.copy(built / "plan.parquet", out / "plan.parquet")
    result = CliRunner().invoke(app, ["build", *_args(served_world, out, override), "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "nothing was built" in result.output
    if "collection" in override:
        assert "(it has: " in result.output and "esa-worldcover" in result.output
    assert not (out / "las.zarr").exists() and not (out / "index-parts").exists()


def test_the_recipe_check_reports_the_first_mistake_in_recipe_order(served_world: dict) -> None:
    """The checks run together; whichever answers first, the error is the recipe's first."""
    recipe = load_recipe(
        RECIPE,
        [
            f"stac.url={served_world['stac_url']}",
            "labels.1.collection=nope-2",
            "labels.0.asset=nope",
            "imagery.sentinel-1.collection=sentinel-1-nope",
        ],
    )
    cfg = config_from_recipe(recipe)
    for _ in range(3):
        with pytest.raises(ValueError, match=r"^recipe imagery\.sentinel-1\.collection: no coll"):
            run_mod.check_sources(cfg)
    recipe = load_recipe(RECIPE, [f"stac.url={served_world['stac_url']}", "labels.1.year=2019"])
    with pytest.raises(ValueError, match=r"^recipe labels\[1\] \(\S+\)\.year = 2019"):
        run_mod.check_sources(config_from_recipe(recipe))
    run_mod.check_sources(
        config_from_recipe(load_recipe(RECIPE, [f"stac.url={served_world['stac_url']}"]))
    )


def test_an_unreachable_stac_api_is_named_as_the_recipe_stac_url() -> None:
    recipe = load_recipe(RECIPE, ["stac.url=http://127.0.0.1:1/"])
    searcher = StacSearcher(recipe.stac.url, retries=0)
    with pytest.raises(ValueError, match=r"^recipe stac\.url: STAC open at http://127\.0\.0\.1"):
        run_mod.check_sources(config_from_recipe(recipe), searcher)


@pytest.mark.parametrize(
    ("entry", "folder", "message"),
    [
        ("las.zarr", False, "las.zarr is a file, where the build writes the Zarr store"),
        ("index-parts", False, "index-parts is a file, where the build writes the shards'"),
        ("index.parquet", True, "index.parquet is a folder, where the build writes the index"),
    ],
)
def test_an_output_entry_of_the_wrong_kind_is_refused_before_building(
    built: Path, served_world: dict, tmp_path: Path, entry: str, folder: bool, message: str
) -> None:
    out = tmp_path / "las"
    out.mkdir()
    shutil.copy(built / "plan.parquet", out / "plan.parquet")
    if folder:
        (out / entry).mkdir()
    else:
        (out / entry).write_text("not mine")
    result = CliRunner().invoke(app, ["build", *_args(served_world, out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "choose another output.path" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["plan.parquet", entry]
    )


def test_an_unreachable_scheduler_is_a_one_line_error(
    built: Path, served_world: dict, tmp_path: Path
) -> None:
    import dask

    out = tmp_path / "las"
    out.mkdir()
    shutil.copy(built / "plan.parquet", out / "plan.parquet")
    args = [*_args(served_world, out), "--quiet", "--scheduler", "tcp://127.0.0.1:1"]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = CliRunner().invoke(app, ["build", *args])
    assert result.exit_code == 2, result.output
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:1 (OSError: " in result.output
    assert "Traceback" not in result.output


def test_build_reports_the_peak_memory_of_each_process(served_world: dict, tmp_path: Path) -> None:
    out, events = tmp_path / "las", tmp_path / "events.jsonl"
    runner = CliRunner()
    assert runner.invoke(app, ["plan", *_args(served_world, out), "--quiet"]).exit_code == 0
    result = runner.invoke(
        app,
        ["--log-json", str(events), "build", *_args(served_world, out), "--workers", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "in the largest of 2 workers" in result.output
    done = [
        e
        for e in map(json.loads, events.read_text().splitlines())
        if e.get("event") == "build_done"
    ]
    memory = done[-1]["memory"]
    assert memory["processes"] == 3
    assert len(memory["worker_peak_rss_mib"]) == 2
    assert all(mib > 50 for mib in memory["worker_peak_rss_mib"])  # a worker holds the build
    assert memory["total_peak_rss_mib"] == pytest.approx(
        memory["driver_peak_rss_mib"] + sum(memory["worker_peak_rss_mib"]), abs=0.2
    )
    # Each worker's read pools as its own opens of the loopback world sized them.
    pools = done[-1]["read_threads"]
    assert len(pools) == 2
    for io, source in pools:
        assert read_mod.NEAR_IO_THREADS <= io <= read_mod.IO_THREADS
        assert read_mod.NEAR_SOURCE_THREADS <= source <= read_mod.SOURCE_THREADS
    assert "read threads (I/O + source) per process" in result.output


def test_resume_rebuilds_only_missing_shards(
    built: Path, served_world: dict, tmp_path: Path
) -> None:
    out = tmp_path / "las"
    shutil.copytree(built, out)
    (out / "index-parts" / "shard-000002.parquet").unlink()
    removed = [p for p in (out / "las.zarr").rglob("c/2") if p.is_dir()]
    assert removed
    for shard_dir in removed:  # shard 2 of every array, as a crash before it finished leaves it
        shutil.rmtree(shard_dir)
    untouched = out / "index-parts" / "shard-000001.parquet"
    before = untouched.stat().st_mtime_ns
    result = CliRunner().invoke(app, ["build", *_args(served_world, out), "--status"])
    assert json.loads(result.output)["shards_remaining"] == 1
    result = CliRunner().invoke(app, ["build", *_args(served_world, out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert untouched.stat().st_mtime_ns == before
    assert _zarr_digest(out / "las.zarr") == _zarr_digest(built / "las.zarr")


def test_naip_grid_covers_the_sample_exactly(built: Path) -> None:
    from odc.geo.geobox import GeoBox

    index = gpd.read_parquet(built / "index.parquet")
    root = zarr.open_group(built / "las.zarr", mode="r")
    factor = 4
    for _, row in index[index["status"] == "ok"].iterrows():
        geobox = GeoBox(tuple(row["shape"]), Affine(*row["transform"]), f"EPSG:{row['epsg']}")
        fine = geobox.zoom_out(1 / factor)
        assert tuple(fine.shape.yx) == (32 * factor, 32 * factor)
        assert fine.boundingbox == pytest.approx(geobox.boundingbox, abs=1e-6)
        assert fine.resolution.x == pytest.approx(10 / factor)
    with_naip = index[index["naip_item"].notna() & (index["status"] == "ok")]
    assert len(with_naip) >= 1, "the tiny world's NAIP should fully cover at least one sample"
    for i in with_naip["zarr_index"]:
        assert (_read(root, "naip", i) > 0).all(), "NAIP must cover every fine pixel of the sample"
    for i in index.loc[index["naip_item"].isna(), "zarr_index"]:
        assert not _read(root, "naip", i).any()


def test_median_composite_clears_clouds(built: Path, served_world: dict, tmp_path: Path) -> None:
    out = tmp_path / "las"
    _plan_and_build(served_world, out, "imagery.sentinel-2.composite=median")
    single = gpd.read_parquet(built / "index.parquet").set_index("sample_id")
    composite = gpd.read_parquet(out / "index.parquet").set_index("sample_id")
    ok = composite[composite["status"] == "ok"]
    assert len(ok) >= 20
    for sample_id, row in ok.iterrows():
        items = json.loads(row["s2_composite_items"])
        assert 1 <= len(items) <= 3
        assert row["cloud_pct"] <= single.loc[sample_id, "cloud_pct"] + 1e-9


def test_store_opens_with_xarray_showing_band_names(built: Path) -> None:
    import xarray as xr

    ds = xr.open_zarr(built / "las.zarr", zarr_format=3, consolidated=False, mask_and_scale=False)
    assert ds["sentinel-2"].dims == ("sample", "s2_band", "y", "x")
    assert ds["s2_band"].values.tolist()[:4] == ["B01", "B02", "B03", "B04"]
    assert ds["s1_band"].values.tolist() == ["vv", "vh"]
    assert ds["sentinel-2"].sel(s2_band="B04").shape == (24, 32, 32)


def test_json_lines_log_for_batch_runs(served_world: dict, tmp_path: Path) -> None:
    out = tmp_path / "las"
    log = tmp_path / "build.jsonl"
    runner = CliRunner()
    args = _args(served_world, out, "sample.count=8")
    assert runner.invoke(app, ["plan", *args, "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["--log-json", str(log), "build", *args, "--quiet"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in log.read_text().splitlines()]
    shards = [e for e in events if e.get("event") == "shard_done"]
    assert sorted(e["shard"] for e in shards) == [0, 1]
    assert sum(e["ok"] + e["skipped"] + e["failed"] for e in shards) == 8
    (done,) = [e for e in events if e.get("event") == "build_done"]
    assert done["samples"] == 8 and done["level"] == "info" and "time" in done
    assert done["ok"] + done["skipped"] + done["failed"] == 8  # each count, zero or not


def test_retry_failed_rebuilds_only_shards_with_failures(
    built: Path, served_world: dict, tmp_path: Path
) -> None:
    import pandas as pd

    out = tmp_path / "las"
    shutil.copytree(built, out)
    parts = sorted((out / "index-parts").glob("shard-*.parquet"))
    part = pd.read_parquet(parts[1])
    part.loc[0, ["status", "reason"]] = ["failed", "ReadError: HTTP 503 (simulated outage)"]
    part.to_parquet(parts[1], index=False)
    untouched = {p.name: p.stat().st_mtime_ns for p in parts if p != parts[1]}
    runner = CliRunner()
    plain = runner.invoke(app, ["build", *_args(served_world, out), "--quiet"])
    assert plain.exit_code == 0, plain.output
    assert (gpd.read_parquet(out / "index.parquet")["status"] == "failed").sum() == 1
    retried = runner.invoke(app, ["build", *_args(served_world, out), "--quiet", "--retry-failed"])
    assert retried.exit_code == 0, retried.output
    index = gpd.read_parquet(out / "index.parquet")
    reference = gpd.read_parquet(built / "index.parquet")
    assert index["status"].tolist() == reference["status"].tolist()
    assert {p.name: p.stat().st_mtime_ns for p in parts if p != parts[1]} == untouched
    assert _zarr_digest(out / "las.zarr") == _zarr_digest(built / "las.zarr")


def test_a_killed_retry_leaves_no_index_of_old_rows(
    built: Path, served_world: dict, tmp_path: Path
) -> None:
    """Once ``--retry-failed`` has reopened a shard, ``index.parquet`` (with that shard's old
    rows) is gone: a retry killed there or later reads as a partial build, never as a dataset
    whose index describes arrays of another attempt; the next plain build finishes it."""
    import pandas as pd

    from las_builder.build.run import reopen_failed_shards
    from las_builder.build.store import done_shards
    from las_builder.model.data import read_index
    from las_builder.stats import read_index as load_index

    out = tmp_path / "las"
    shutil.copytree(built, out)
    part_path = sorted((out / "index-parts").glob("shard-*.parquet"))[2]
    part = pd.read_parquet(part_path)
    part.loc[1, ["status", "reason"]] = ["failed", "ReadError: HTTP 503 (simulated outage)"]
    part.to_parquet(part_path, index=False)
    finished = done_shards(str(out))
    assert reopen_failed_shards(str(out), finished) == {2}  # the state a kill here leaves
    assert not (out / "index.parquet").exists() and not part_path.exists()
    partial = load_index(out)
    assert partial.partial is not None
    assert partial.partial["shards_done"] == len(finished) - 1
    assert 2 not in set(partial.frame["shard"])
    with pytest.raises(FileNotFoundError, match="build the dataset first"):
        read_index(out)
    status = CliRunner().invoke(app, ["build", *_args(served_world, out), "--status"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["shards_remaining"] == 1
    resumed = CliRunner().invoke(app, ["build", *_args(served_world, out), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    index = gpd.read_parquet(out / "index.parquet")
    assert index["status"].tolist() == gpd.read_parquet(built / "index.parquet")["status"].tolist()
    assert _zarr_digest(out / "las.zarr") == _zarr_digest(built / "las.zarr")


def test_shard_tasks_report_slim_rows_and_the_index_keeps_the_rest(
    served_world: dict, tmp_path: Path
) -> None:
    """A shard task's result stays in the scheduler until the build ends, so it carries only
    each sample's id, status and reason; the index has every field of every sample."""
    from las_builder.build.config import config_from_recipe
    from las_builder.build.run import run_build

    out = tmp_path / "las"
    args = _args(served_world, out, "sample.count=8")
    assert CliRunner().invoke(app, ["plan", *args, "--quiet"]).exit_code == 0
    sets = [a for a in args[1:] if a != "--set"]
    cfg = config_from_recipe(load_recipe(Path(args[0]), sets))
    reported: dict[int, list[dict]] = {}
    frozen: list[int] = []  # objects kept out of the garbage collector's passes during the build

    def on_shard(shard: int, rows: list[dict]) -> None:
        reported.setdefault(shard, rows)
        frozen.append(gc.get_freeze_count())

    assert gc.get_freeze_count() == 0
    summary = run_build(cfg, str(out), 4, on_shard=on_shard)
    assert len(frozen) == 2 and min(frozen) > 10_000  # the imports' objects, at least
    assert gc.get_freeze_count() == 0  # and back to the collector once the build ended
    index = gpd.read_parquet(out / "index.parquet")
    assert summary["samples"] == len(index) == 8
    assert summary.get("ok", 0) == (index["status"] == "ok").sum()
    assert sorted(reported) == [0, 1]
    slim = [row for rows in reported.values() for row in rows]
    assert all(set(row) == {"sample_id", "status", "reason"} for row in slim)
    by_id = {row["sample_id"]: row for row in slim}
    assert sorted(by_id) == sorted(index["sample_id"])
    for row in index.to_dict("records"):
        assert (by_id[row["sample_id"]]["status"], by_id[row["sample_id"]]["reason"]) == (
            row["status"],
            row["reason"],
        )
    assert {"class_counts", "geometry", "s2_item"} <= set(index.columns)


def test_an_existing_clusters_workers_freeze_for_the_build_only(
    served_world: dict, tmp_path: Path
) -> None:
    """On a cluster the caller connected (its workers not forked from the build), the objects
    each worker holds are kept out of the collector's passes while the build runs."""
    from dask.distributed import Client

    from las_builder.build import run
    from las_builder.build.config import config_from_recipe

    out = tmp_path / "las"
    args = _args(served_world, out, "sample.count=8")
    assert CliRunner().invoke(app, ["plan", *args, "--quiet"]).exit_code == 0
    sets = [a for a in args[1:] if a != "--set"]
    cfg = config_from_recipe(load_recipe(Path(args[0]), sets))
    with run._local_cluster(1) as cluster, Client(cluster) as client:
        assert list(client.run(gc.get_freeze_count).values()) == [0]  # forked before the build
        during: list[int] = []

        def on_shard(shard: int, rows: list[dict]) -> None:
            during.extend(client.run(gc.get_freeze_count).values())

        run.run_build(cfg, str(out), 4, client=client, on_shard=on_shard)
        assert len(during) == 2 and min(during) > 10_000
        assert list(client.run(gc.get_freeze_count).values()) == [0]
    assert gc.get_freeze_count() == 0


def test_shard_rows_ride_as_compact_tables_and_equal_the_plans_rows(built: Path) -> None:
    """The build holds each unbuilt shard's plan rows until its task runs: as a small Arrow
    table of its own (not a slice of the plan, which pickles whole), made into exactly the
    rows ``read_plan`` gives when the task runs."""
    import pickle

    from las_builder.build.run import _plan_by_shard, _plan_rows, plan_shards, read_plan

    n, by_shard = _plan_by_shard(str(built))
    plan = read_plan(str(built))
    assert n == len(plan)
    assert plan_shards(str(built)) == [int(s) for s in plan["shard"]]
    expected: dict[int, list[dict]] = {}
    for row in plan.to_dict("records"):
        expected.setdefault(int(row["shard"]), []).append(row)
    assert sorted(by_shard) == sorted(expected)
    whole = len(pickle.dumps(_plan_table(built)))
    for shard, table in by_shard.items():
        rows = _plan_rows(table)
        assert [r["plan_index"] for r in rows] == [r["plan_index"] for r in expected[shard]]
        for got, want in zip(rows, expected[shard], strict=True):
            assert got.keys() == want.keys()
            assert got["geometry"].equals(want["geometry"])
            np.testing.assert_array_equal(got["transform"], want["transform"])
            np.testing.assert_array_equal(got["shape"], want["shape"])
            rest = [k for k in want if k not in ("geometry", "transform", "shape")]
            assert {k: got[k] for k in rest} == {k: want[k] for k in rest}
        assert len(pickle.dumps(table)) < whole / 2  # its own rows, not the plan's


def _plan_table(built: Path) -> Any:  # a pyarrow Table (pyarrow is untyped)
    import pyarrow.parquet as pq

    return pq.read_table(built / "plan.parquet")


def test_an_index_column_null_in_every_part_is_written(built: Path, tmp_path: Path) -> None:
    """No NAIP image under any sample, the column written as float by pandas in some parts
    and as null in others: the index holds it as nulls (arrow casts nothing to null)."""
    import pandas as pd

    from las_builder.build import run

    out = tmp_path / "las"
    shutil.copytree(built, out)
    for i, part in enumerate(sorted((out / "index-parts").glob("shard-*.parquet"))):
        frame = pd.read_parquet(part)
        frame["naip_item"] = np.nan if i % 2 else None
        frame.to_parquet(part, index=False)
    summary = run.write_index(str(out))
    got = gpd.read_parquet(out / "index.parquet")
    assert got["naip_item"].isna().all() and summary["samples"] == len(got)


def test_index_is_streamed_from_the_parts_in_plan_order(built: Path, tmp_path: Path) -> None:
    """``write_index`` writes the parts one batch at a time, each part in ``plan_index``
    order, under one schema: a part whose aerial column is all null (pandas writes it as
    float) and a part that lacks a column take the others' types; the result equals the
    parts concatenated in plan order, with GeoParquet metadata and the summary of a count."""
    import pandas as pd
    import pyarrow.parquet as pq
    from shapely import wkb

    from las_builder.build import run

    out = tmp_path / "las"
    shutil.copytree(built, out)
    parts = sorted((out / "index-parts").glob("shard-*.parquet"))
    aerial = [p for p in parts if pd.read_parquet(p)["naip_item"].notna().any()]
    assert aerial, "a US sample with a NAIP image: its part holds the column as strings"
    nulled, dropped = [p for p in parts if p != aerial[0]][:2]
    first = pd.read_parquet(nulled).iloc[::-1]  # rows out of plan order
    first["naip_item"] = np.nan  # all null, as a float column
    first.to_parquet(nulled, index=False)
    pd.read_parquet(dropped).drop(columns=["naip_item"]).to_parquet(dropped, index=False)
    assert pq.read_schema(nulled).field("naip_item").type == "double"

    frames = [pd.read_parquet(p) for p in parts]
    want = pd.concat(frames, ignore_index=True).sort_values("plan_index", ignore_index=True)

    summary = run.write_index(str(out))
    got = gpd.read_parquet(out / "index.parquet")

    assert got.crs == "EPSG:4326"
    assert list(got["plan_index"]) == sorted(got["plan_index"])
    assert list(got.columns) == list(want.columns)
    assert str(got["naip_item"].dtype) in ("str", "string", "object")
    assert all(isinstance(v, str) or pd.isna(v) for v in got["naip_item"])
    for column in want.columns.drop("geometry"):
        assert [_plain(v) for v in got[column]] == [_plain(v) for v in want[column]], column
    expected = gpd.GeoSeries(want["geometry"].map(wkb.loads), crs=got.crs)
    assert got.geometry.geom_equals_exact(expected, 0).all()
    geo = json.loads(pq.read_schema(out / "index.parquet").metadata[b"geo"])
    np.testing.assert_allclose(geo["columns"]["geometry"]["bbox"], got.total_bounds)
    assert geo["columns"]["geometry"]["geometry_types"] == ["Polygon"]
    assert summary["samples"] == len(want)
    assert {k: summary[k] for k in want["status"].unique()} == dict(want["status"].value_counts())
    assert pq.ParquetFile(out / "index.parquet").metadata.num_row_groups == 1  # 24 rows


def _plain(value: object) -> object:
    """A cell as a comparable Python value: arrays as lists, every kind of missing as None."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def test_index_parts_that_disagree_on_a_type_fail_with_what_to_do(
    built: Path, tmp_path: Path
) -> None:
    import pandas as pd

    from las_builder.build import run

    out = tmp_path / "las"
    shutil.copytree(built, out)
    part = sorted((out / "index-parts").glob("shard-*.parquet"))[0]
    frame = pd.read_parquet(part)
    frame["lon"] = frame["lon"].map(str)  # a string where every other part has a number
    frame.to_parquet(part, index=False)
    with pytest.raises(ValueError, match=r"disagree on a column's type.*delete their index-parts"):
        run.write_index(str(out))


def test_a_second_build_of_one_output_fails_naming_the_first(
    built: Path, served_world: dict, tmp_path: Path
) -> None:
    """While a build holds the output's lock (another thread, then another process), `las
    build` fails at once naming it and changes nothing; a build killed with kill -9 leaves a
    lock file whose lock the kernel dropped, and the next build goes on and removes it."""
    import signal
    import threading

    from las_builder.build.store import LOCK_NAME, BuildLocked, build_lock

    out = tmp_path / "las"
    shutil.copytree(built, out)
    (out / "index-parts" / "shard-000002.parquet").unlink()  # one shard left to build
    before = sorted(p.name for p in (out / "index-parts").iterdir())
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with build_lock(str(out)):
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(30)
        assert f"las build pid {os.getpid()} on " in (out / LOCK_NAME).read_text()
        for flags in ((), ("--retry-failed",)):
            result = CliRunner().invoke(app, ["build", *_args(served_world, out), *flags])
            assert result.exit_code == 2
            assert f"is being built by las build pid {os.getpid()}" in result.output
            assert "wait for that build to finish or stop it" in result.output
        with pytest.raises(BuildLocked), build_lock(str(out)):
            pass
    finally:
        release.set()
        holder.join()
    assert not (out / LOCK_NAME).exists()
    assert sorted(p.name for p in (out / "index-parts").iterdir()) == before
    script = (
        "import sys, time\n"
        "from las_builder.build.store import build_lock\n"
        "with build_lock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "locked"
        with pytest.raises(BuildLocked, match=f"pid {other.pid} on "), build_lock(str(out)):
            pass
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    assert (out / LOCK_NAME).exists()  # left by the killed process, its lock dropped
    result = CliRunner().invoke(app, ["build", *_args(served_world, out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert not (out / LOCK_NAME).exists()
    assert _zarr_digest(out / "las.zarr") == _zarr_digest(built / "las.zarr")
    assert (out / "index-parts" / "shard-000002.parquet").exists()


def test_a_shard_task_keeps_numpys_blas_on_its_own_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenBLAS's threads spin between the build's small products, taking CPU from the other
    workers: a build process limits them to one, once."""
    from threadpoolctl import threadpool_info

    from las_builder.build import run as run_mod

    monkeypatch.setattr(run_mod, "_blas_on_one_thread_in", None)
    run_mod.blas_on_one_thread()
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert blas and all(lib["num_threads"] == 1 for lib in blas)

    import threadpoolctl

    monkeypatch.setattr(threadpoolctl, "threadpool_limits", lambda **_: pytest.fail("again"))
    run_mod.blas_on_one_thread()  # the same process: nothing to do


def test_another_plan_is_not_written_over_a_built_output(
    built: Path, served_world: dict, tmp_path: Path
) -> None:
    """The store keeps its plan's digest: a plan of other samples would lose the one the
    store was built from; the same plan is written again as it was."""
    out = tmp_path / "las"
    out.mkdir()
    for name in ("plan.parquet", "las.zarr"):
        (shutil.copytree if name == "las.zarr" else shutil.copy)(built / name, out / name)
    before = (out / "plan.parquet").read_bytes()
    result = CliRunner().invoke(app, ["plan", *_args(served_world, out, "sample.seed=5"), "-q"])
    assert result.exit_code == 2, result.output
    assert "las.zarr was built from another plan" in result.output
    assert "the plan was not written" in result.output
    assert (out / "plan.parquet").read_bytes() == before
    result = CliRunner().invoke(app, ["plan", *_args(served_world, out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert gpd.read_parquet(out / "plan.parquet").equals(gpd.read_parquet(built / "plan.parquet"))
