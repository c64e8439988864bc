"""Benchmark ``las build`` against a per-sample WarpedVRT baseline and the raw read bound.

    .venv/bin/python benchmarks/build_bench.py                 # demo world, 100 x 128 px, ~3-5 min
    .venv/bin/python benchmarks/build_bench.py --large         # + peak RSS on the bench world
    .venv/bin/python benchmarks/build_bench.py --profile-only  # only the cProfile breakdown

One run, one plan:

1. create (or reuse, under ``out/bench/world-<preset>``) and serve an offline world, and plan
   the demo recipe on it;
2. time ``las build`` (the CLI, threaded Dask scheduler) in a child process;
3. time the straightforward baseline (``baseline_warpedvrt.py``) over the samples the build
   made: one WarpedVRT per source and sample, nothing reused, sequential and with as many
   threads as the build;
4. time the raw read-and-decode bound: the same source windows, read without warping, each
   asset opened once per shard, as many threads as the build;
5. peak RSS of the build at two plan sizes (a quarter of the plan and the whole plan; with
   ``--large``, N and 4N samples on the bench world);
6. print a table and write ``benchmarks/results.json``; targets are reported, never
   asserted;
7. when the build misses its speed target (or with ``--profile``), profile a few shards of the
   build sequentially with cProfile and break the time down.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import hashlib
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # baseline_warpedvrt, when imported from elsewhere

RECIPE = ROOT / "recipes" / "demo.yaml"
RESULTS = HERE / "results.json"
CACHE = ROOT / "out" / "bench"

TARGET_SPEEDUP = 3.0  # build samples/s over the straightforward baseline's
TARGET_RAW_FRACTION = 0.60  # build samples/s over the raw read bound's
TARGET_RSS_FLAT = 0.10  # |peak RSS large / small - 1|


# --------------------------------------------------------------------------------------------
# world, serving, plan


def _world_fingerprint(preset: str) -> str:
    """Hash of what a world depends on: its generator code and the catalog it renders."""
    digest = hashlib.sha256(preset.encode())
    paths = sorted(
        [
            *(ROOT / "las_builder" / "world").glob("*.py"),
            *(ROOT / "catalog" / "world").rglob("*.yaml"),
            *(ROOT / "catalog" / "sensors").glob("*.yaml"),
            *(ROOT / "catalog" / "labels").glob("*.yaml"),
        ]
    )
    for path in paths:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _stop_if_served(world: Path) -> None:
    from las_builder.world.serve import ServeError, stop_world

    if (world / "serve.json").exists():
        try:
            with redirect_stdout(StringIO()):
                stop_world(world)
        except ServeError:
            pass


def ensure_world(preset: str, log: Callable[[str], None]) -> tuple[Path, float | None]:
    """The cached world of ``preset`` (re-created when its generator changed)."""
    from las_builder.world.create import create_world

    world = CACHE / f"world-{preset}"
    stamp = CACHE / f"world-{preset}.fingerprint"
    fingerprint = _world_fingerprint(preset)
    if (world / "world.json").exists() and stamp.exists() and stamp.read_text() == fingerprint:
        return world, None
    if world.exists():
        log(f"world {world} is stale or incomplete: re-creating it")
        _stop_if_served(world)
        shutil.rmtree(world)
    log(f"creating the {preset} world in {world} (one-off; cached afterwards)")
    started = time.perf_counter()
    create_world(world, seed=0, preset=preset, progress=False)
    seconds = time.perf_counter() - started
    stamp.write_text(fingerprint)
    return world, seconds


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def ensure_served(world: Path) -> tuple[str, bool]:
    """The STAC URL of ``world`` (serving it if nothing answers); True if we started it."""
    from las_builder.world.serve import serve_world

    state_path = world / "serve.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if _answers(state["stac_url"]) and _answers(state["assets_url"] + "world.json"):
            return str(state["stac_url"]), False
    with redirect_stdout(StringIO()):
        info = serve_world(world, detach=True)
    return info.stac_url, True


def _las(*args: str) -> None:
    cmd = [sys.executable, "-m", "las_builder.cli", *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")


def recipe_sets(
    stac_url: str, output: Path, samples: int, size_px: int, per_shard: int
) -> list[str]:
    """The ``--set`` overrides of the demo recipe for a benchmark run."""
    sets = [
        f"stac.url={stac_url}",
        f"sample.size_px={size_px}",
        f"sample.count={samples}",
        f"output.path={output}",
        f"output.samples_per_shard={per_shard}",
    ]
    return [a for s in sets for a in ("--set", s)]


def make_plan(sets: list[str]) -> None:
    """``las plan`` with the benchmark's overrides."""
    _las("plan", str(RECIPE), *sets, "--quiet")


def fresh_output(path: Path, plan_from: Path, shards: int | None = None) -> int:
    """An empty output folder holding the plan of ``plan_from`` (its first ``shards`` shards)."""
    import geopandas as gpd

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    plan = gpd.read_parquet(plan_from / "plan.parquet")
    if shards is not None:
        plan = plan[plan["shard"] < shards].reset_index(drop=True)
    plan.to_parquet(path / "plan.parquet", index=False)
    return len(plan)


def warm_page_cache(world: Path) -> int:
    """Read every asset once so all timed runs see the same (warm) page cache."""
    total = 0
    for path in sorted((world / "assets").rglob("*.tif")):
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
    return total


# --------------------------------------------------------------------------------------------
# the build in a child process: its own time and peak RSS


def _child_build(argv: list[str]) -> int:
    """Child mode: run ``las build`` in-process after the imports, print its seconds as JSON."""
    # The CLI imports these lazily; import them first so the timing is the build's alone.
    import dask  # noqa: F401
    import geopandas  # noqa: F401
    import rasterio  # noqa: F401
    import zarr  # noqa: F401

    import las_builder.build.run  # noqa: F401
    import las_builder.recipe  # noqa: F401
    from las_builder.cli import app

    if argv and argv[0] == "--imports-only":
        print(json.dumps({"seconds": 0.0}))
        return 0
    started = time.perf_counter()
    code = app(["build", *argv, "--quiet"], standalone_mode=False)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "exit": code or 0}))
    return int(code or 0)


def run_child_build(args: list[str]) -> dict[str, float]:
    """Run the child build; return its build seconds, wall seconds and peak RSS (MiB)."""
    log_path = CACHE / "child-build.log"
    with log_path.open("w") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child-build", *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # wait4 gives this child's own resource usage: ru_maxrss is its peak RSS (KiB on Linux).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"the child build failed ({proc.returncode}):\n{text[-4000:]}")
    last = [line for line in text.splitlines() if line.startswith("{")][-1]
    return {
        "seconds": float(json.loads(last)["seconds"]),
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }


# --------------------------------------------------------------------------------------------
# the raw read-and-decode bound


def resolve_hrefs(rows: Iterable[dict[str, Any]], cfg: Any, stac_url: str) -> dict[tuple, str]:
    """(collection, item, asset) -> href for every source of ``rows`` (fetched once, untimed)."""
    from baseline_warpedvrt import fetch_item, sample_sources

    items: dict[tuple[str, str], dict[str, Any]] = {}
    hrefs: dict[tuple, str] = {}
    for row in rows:
        for src in sample_sources(row, cfg):
            key = (src.collection, src.item_id)
            if key not in items:
                items[key] = fetch_item(stac_url, src.collection, src.item_id)
            hrefs[(*key, src.asset)] = items[key]["assets"][src.asset]["href"]
    return hrefs


def raw_read_bound(
    rows: list[dict[str, Any]], cfg: Any, hrefs: dict[tuple, str], threads: int
) -> dict[str, float]:
    """Read the same source windows as the build (no warping), one open per asset and shard."""
    import rasterio
    from affine import Affine
    from baseline_warpedvrt import sample_sources
    from odc.geo.geobox import GeoBox

    from las_builder.build.read import GDAL_ENV, _source_window

    by_shard: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_shard.setdefault(int(row["shard"]), []).append(row)

    def shard_task(shard_rows: list[dict[str, Any]]) -> tuple[int, int, int]:
        opened: dict[str, Any] = {}
        reads = pixels = 0
        with rasterio.Env(**GDAL_ENV):
            try:
                for row in shard_rows:
                    geobox = GeoBox(
                        tuple(row["shape"]), Affine(*row["transform"]), f"EPSG:{row['epsg']}"
                    )
                    for src in sample_sources(row, cfg):
                        href = hrefs[(src.collection, src.item_id, src.asset)]
                        ds = opened.get(href)
                        if ds is None:
                            ds = opened[href] = rasterio.open(href)
                        window = _source_window(ds, geobox, margin_px=2)
                        if window is not None:
                            data = ds.read(window=window)
                            pixels += data.size
                        reads += 1
            finally:
                for ds in opened.values():
                    ds.close()
        return reads, len(opened), pixels

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(shard_task, by_shard.values()))
    seconds = time.perf_counter() - started
    return {
        "samples": len(rows),
        "threads": threads,
        "seconds": seconds,
        "reads": sum(r[0] for r in results),
        "opens": sum(r[1] for r in results),
        "pixels": sum(r[2] for r in results),
    }


# --------------------------------------------------------------------------------------------
# profile


PROFILE_BUCKETS: list[tuple[str, str, str]] = [
    # (label, file suffix, function); cumulative time unless marked tottime below
    ("STAC search (once per shard)", "las_builder/build/run.py", "_search_shard"),
    ("open datasets over HTTP (rasterio.open)", "las_builder/build/read.py", "get"),
    ("window read + decode (read_onto - warp)", "las_builder/build/read.py", "read_onto-"),
    ("reproject onto the sample grid", "rasterio/warp.py", "reproject"),
    ("transform_bounds (source window)", "rasterio/warp.py", "transform_bounds"),
    (
        "label legend YAML (load_label_product)",
        "las_builder/build/sample.py",
        "load_label_product@",
    ),
    ("label mapping YAML (load_mapping)", "las_builder/build/sample.py", "load_mapping@"),
    ("write Zarr shard", "las_builder/build/store.py", "write_shard"),
    ("write index part", "las_builder/build/store.py", "write_index_part"),
]


_WARP = ("reproject", "transform_bounds")


def _bucket_seconds(stats: pstats.Stats, suffix: str, func: str) -> tuple[float, int]:
    """Cumulative seconds (and calls) of a function; ``name*``: its own time; ``name-``: its
    cumulative time less rasterio's reproject and transform_bounds; ``name@``: the cumulative
    time of calls to ``name`` made from files ending in ``suffix``."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    seconds, calls = 0.0, 0
    if func.endswith("@"):
        name = func[:-1]
        for (_, _, fname), (_, _, _, _, callers) in table.items():
            if fname != name:
                continue
            for (cfile, _, _), (_, ncalls, _, ct) in callers.items():
                if cfile.endswith(suffix):
                    seconds += ct
                    calls += ncalls
        return seconds, calls
    if func.endswith("-"):  # a reader's time less the warping it calls
        whole, calls = _bucket_seconds(stats, suffix, func[:-1])
        warp = sum(_bucket_seconds(stats, "rasterio/warp.py", f)[0] for f in _WARP)
        return max(whole - warp, 0.0), calls
    own = func.endswith("*")
    name = func.rstrip("*")
    for (filename, _, fname), (_, ncalls, tt, ct, _) in table.items():
        if fname == name and filename.endswith(suffix):
            seconds += tt if own else ct
            calls += ncalls
    return seconds, calls


def profile_build(
    cfg: Any, plan_from: Path, output: Path, shards: int, per_shard: int
) -> dict[str, Any]:
    """cProfile ``build_shard`` over the first ``shards`` shards, sequentially, in-process."""
    import geopandas as gpd

    from las_builder.build.run import build_shard
    from las_builder.build.store import create_store

    n = fresh_output(output, plan_from, shards)
    plan = gpd.read_parquet(output / "plan.parquet")
    by_shard: dict[int, list[dict[str, Any]]] = {}
    for row in plan.to_dict("records"):
        by_shard.setdefault(int(row["shard"]), []).append(row)
    create_store(f"{output}/las.zarr", n, per_shard, cfg, {})
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for shard, rows in sorted(by_shard.items()):
        build_shard(shard, rows, cfg, str(output), n, per_shard)
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    buckets = []
    accounted = 0.0
    for label, suffix, func in PROFILE_BUCKETS:
        seconds, calls = _bucket_seconds(stats, suffix, func)
        accounted += seconds
        buckets.append({"what": label, "seconds": seconds, "calls": calls})
    buckets.append(
        {
            "what": "everything else (numpy, mapping, consensus, ...)",
            "seconds": max(total - accounted, 0.0),
            "calls": 0,
        }
    )
    for b in buckets:
        b["share"] = b["seconds"] / total if total else 0.0
    yaml_s, yaml_calls = _bucket_seconds(stats, "yaml/__init__.py", "load")
    top = StringIO()
    pstats.Stats(profiler, stream=top).sort_stats("tottime").print_stats(15)
    (CACHE / "profile-build.txt").write_text(top.getvalue())
    profiler.dump_stats(str(CACHE / "profile-build.prof"))
    return {
        "samples": n,
        "shards": len(by_shard),
        "wall_s": wall,
        "profiled_s": total,
        "note": "sequential (one thread) under cProfile, which inflates pure-Python code",
        "buckets": buckets,
        "yaml_load_s": yaml_s,
        "yaml_load_calls": yaml_calls,
        "top_tottime_file": str((CACHE / "profile-build.txt").relative_to(ROOT)),
    }


# --------------------------------------------------------------------------------------------
# main


def _machine() -> dict[str, Any]:
    import rasterio

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--", "las_builder"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "git_commit": commit + ("+dirty" if dirty else ""),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _rate(samples: int, seconds: float) -> float:
    return samples / seconds if seconds > 0 else float("nan")


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def print_table(results: dict[str, Any]) -> None:
    """The results as a rich table."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    t = results["timings"]
    r = results["ratios"]
    m = results["memory"]
    table = Table(
        title=f"las build benchmark — {results['world']['preset']} world, "
        f"{results['plan']['samples']} x {results['plan']['size_px']} px, "
        f"{results['machine']['cpus']} cores"
    )
    table.add_column("figure")
    table.add_column("samples", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("samples/s", justify="right")
    table.add_column("target")
    table.add_column("status")
    for key, label in (
        ("build", f"las build (threaded Dask, {t['build']['threads']} threads)"),
        ("baseline", "baseline: WarpedVRT per source, sequential"),
        ("baseline_threads", f"baseline: WarpedVRT, {t['build']['threads']} threads"),
        ("raw", f"raw window reads, {t['raw']['threads']} threads"),
    ):
        v = t[key]
        if v is None:
            continue
        table.add_row(
            label, str(v["samples"]), f"{v['seconds']:.1f}", f"{v['samples_per_s']:.2f}", "", ""
        )
    table.add_section()
    table.add_row(
        "build / baseline (sequential)",
        "",
        "",
        f"{r['build_vs_baseline']:.2f}x",
        f">= {TARGET_SPEEDUP:.0f}x",
        _met(r["build_vs_baseline_met"]),
    )
    if r["build_vs_baseline_threads"] is not None:
        table.add_row(
            "build / baseline (same threads)",
            "",
            "",
            f"{r['build_vs_baseline_threads']:.2f}x",
            "(info)",
            "",
        )
    table.add_row(
        "build / raw read bound",
        "",
        "",
        f"{100 * r['build_vs_raw']:.0f}%",
        f">= {100 * TARGET_RAW_FRACTION:.0f}%",
        _met(r["build_vs_raw_met"]),
    )
    table.add_section()
    table.add_row(
        f"peak RSS, build of {m['small']['samples']} samples",
        str(m["small"]["samples"]),
        f"{m['small']['seconds']:.1f}",
        f"{m['small']['peak_rss_mib']:.0f} MiB",
        "",
        "",
    )
    table.add_row(
        f"peak RSS, build of {m['large']['samples']} samples",
        str(m["large"]["samples"]),
        f"{m['large']['seconds']:.1f}",
        f"{m['large']['peak_rss_mib']:.0f} MiB",
        "",
        "",
    )
    table.add_row(
        "peak RSS large / small",
        "",
        "",
        f"{m['ratio']:.2f}",
        f"1 ± {TARGET_RSS_FLAT:.2f}",
        _met(m["flat_met"]),
    )
    table.add_row("peak RSS, imports only (floor)", "", "", f"{m['floor_mib']:.0f} MiB", "", "")
    console.print(table)
    if results.get("profile"):
        p = results["profile"]
        pt = Table(
            title=f"where the build's time goes: {p['samples']} samples, {p['shards']} "
            f"shards, sequential, cProfile ({p['profiled_s']:.1f} s profiled)"
        )
        pt.add_column("what")
        pt.add_column("calls", justify="right")
        pt.add_column("seconds", justify="right")
        pt.add_column("share", justify="right")
        pt.add_column("per sample", justify="right")
        for b in p["buckets"]:
            pt.add_row(
                b["what"],
                str(b["calls"] or ""),
                f"{b['seconds']:.2f}",
                f"{100 * b['share']:.0f}%",
                f"{1000 * b['seconds'] / p['samples']:.0f} ms",
            )
        console.print(pt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="world preset for the timings")
    parser.add_argument("--samples", type=int, default=100, help="samples to plan")
    parser.add_argument("--size-px", type=int, default=128, choices=(128, 256))
    parser.add_argument("--per-shard", type=int, default=8, help="samples per shard")
    parser.add_argument(
        "--large",
        action="store_true",
        help="peak RSS at N and 4N samples on the bench world (creating it "
        "takes several minutes the first time)",
    )
    parser.add_argument("--profile", action="store_true", help="profile even if targets are met")
    parser.add_argument("--no-profile", action="store_true", help="never profile")
    parser.add_argument("--profile-only", action="store_true", help="only the profile")
    parser.add_argument("--profile-shards", type=int, default=3)
    parser.add_argument("--skip-threaded-baseline", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the baseline's .npy files")
    parser.add_argument("--results", type=Path, default=RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child-build"]:
        return _child_build(argv[1:])
    args = parser.parse_args(argv)

    import geopandas as gpd
    from baseline_warpedvrt import run_baseline
    from dask.system import CPU_COUNT
    from rich.console import Console

    from las_builder.build.config import config_from_recipe
    from las_builder.recipe import load_recipe

    console = Console(stderr=True)

    def log(msg: str) -> None:
        console.log(msg)

    CACHE.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    world, created_s = ensure_world(args.preset, log)
    stac_url, started_serving = ensure_served(world)
    log(f"world {world} served at {stac_url}")
    runs = CACHE / "runs"
    tag = f"{args.preset}-{args.size_px}px-{args.samples}"
    plan_dir = runs / f"plan-{tag}"
    served_here: list[Path] = [world] if started_serving else []
    try:
        make_plan(recipe_sets(stac_url, plan_dir, args.samples, args.size_px, args.per_shard))
        n = len(gpd.read_parquet(plan_dir / "plan.parquet"))
        shards = -(-n // args.per_shard)
        log(f"planned {n} samples in {shards} shards ({plan_dir / 'plan.parquet'})")
        spec = load_recipe(RECIPE, [f"stac.url={stac_url}"])
        cfg = config_from_recipe(spec)
        threads = int(CPU_COUNT)

        if args.profile_only:
            prof = profile_build(
                cfg, plan_dir, runs / "profile", args.profile_shards, args.per_shard
            )
            print(json.dumps(prof, indent=1))
            return 0

        log(f"warming the page cache: {warm_page_cache(world) / 2**20:.0f} MiB of assets")

        def build_args(output: Path, samples: int) -> list[str]:
            return [
                str(RECIPE),
                *recipe_sets(stac_url, output, samples, args.size_px, args.per_shard),
            ]

        floor = run_child_build(["--imports-only"])

        # Peak RSS (small) first: a quarter of the plan's shards; also warms the servers.
        small_shards = max(1, shards // 4)
        small_out = runs / f"build-{tag}-small"
        n_small = fresh_output(small_out, plan_dir, small_shards)
        log(f"build of {n_small} samples (peak RSS, small)")
        small = run_child_build(build_args(small_out, n_small))

        build_out = runs / f"build-{tag}"
        fresh_output(build_out, plan_dir)
        log(f"timing las build on {n} samples")
        build = run_child_build(build_args(build_out, n))
        index = gpd.read_parquet(build_out / "index.parquet")
        ok_rows = index[index["status"] == "ok"].to_dict("records")
        statuses = {str(k): int(v) for k, v in index["status"].value_counts().items()}
        n_ok = len(ok_rows)
        log(
            f"build: {build['seconds']:.1f} s, {statuses}, peak RSS {build['peak_rss_mib']:.0f} MiB"
        )

        npy = runs / f"baseline-{tag}"
        shutil.rmtree(npy, ignore_errors=True)
        log(f"timing the WarpedVRT baseline on the {n_ok} samples built ok (sequential)")
        baseline = run_baseline(ok_rows, cfg, stac_url, npy, threads=1)
        log(f"baseline: {baseline['seconds']:.1f} s")
        baseline_threads = None
        if not args.skip_threaded_baseline:
            shutil.rmtree(npy, ignore_errors=True)
            log(f"timing the WarpedVRT baseline with {threads} threads")
            baseline_threads = run_baseline(ok_rows, cfg, stac_url, npy, threads=threads)
            log(f"baseline ({threads} threads): {baseline_threads['seconds']:.1f} s")
        if not args.keep:
            shutil.rmtree(npy, ignore_errors=True)

        hrefs = resolve_hrefs(ok_rows, cfg, stac_url)
        log(f"timing raw window reads of the same sources ({threads} threads)")
        raw = raw_read_bound(ok_rows, cfg, hrefs, threads)
        log(f"raw: {raw['seconds']:.1f} s")

        large_world = None
        if args.large:
            bench_world, bench_created = ensure_world("bench", log)
            bench_url, bench_started = ensure_served(bench_world)
            if bench_started:
                served_here.append(bench_world)
            bench_plan = runs / f"plan-bench-{args.size_px}px-{4 * n}"
            make_plan(recipe_sets(bench_url, bench_plan, 4 * n, args.size_px, args.per_shard))
            n_large = len(gpd.read_parquet(bench_plan / "plan.parquet"))
            big_shards = -(-n_large // args.per_shard)
            mem = {}
            for label, count in (("small", max(1, big_shards // 4)), ("large", big_shards)):
                out = runs / f"build-bench-{label}"
                k = fresh_output(out, bench_plan, count)
                log(f"bench world: build of {k} samples (peak RSS, {label})")
                mem[label] = {
                    "samples": k,
                    **run_child_build(
                        [str(RECIPE), *recipe_sets(bench_url, out, k, args.size_px, args.per_shard)]
                    ),
                }
            large_world = {"created_s": bench_created, **mem}
            mem_small, mem_large = mem["small"], mem["large"]
        else:
            mem_small = {"samples": n_small, **small}
            mem_large = {"samples": n, **build}

        def timing(samples: int, seconds: float, **extra: Any) -> dict[str, Any]:
            return {
                "samples": samples,
                "seconds": seconds,
                "samples_per_s": _rate(samples, seconds),
                **extra,
            }

        t_build = timing(
            n_ok,
            build["seconds"],
            planned=n,
            statuses=statuses,
            threads=threads,
            wall_s=build["wall_s"],
            cpu_s=build["cpu_s"],
            peak_rss_mib=build["peak_rss_mib"],
        )
        t_base = timing(
            n_ok,
            baseline["seconds"],
            **{k: baseline[k] for k in ("threads", "reads", "items_fetched")},
        )
        t_base_t = (
            None
            if baseline_threads is None
            else timing(
                n_ok,
                baseline_threads["seconds"],
                **{k: baseline_threads[k] for k in ("threads", "reads", "items_fetched")},
            )
        )
        t_raw = timing(
            n_ok, raw["seconds"], threads=threads, reads=raw["reads"], opens=raw["opens"]
        )
        speedup = t_build["samples_per_s"] / t_base["samples_per_s"]
        speedup_t = (
            None if t_base_t is None else t_build["samples_per_s"] / t_base_t["samples_per_s"]
        )
        raw_fraction = t_build["samples_per_s"] / t_raw["samples_per_s"]
        rss_ratio = mem_large["peak_rss_mib"] / mem_small["peak_rss_mib"]
        results: dict[str, Any] = {
            "machine": _machine(),
            "world": {
                "preset": args.preset,
                "path": str(world.relative_to(ROOT)),
                "created_s": created_s,
            },
            "plan": {
                "samples": n,
                "size_px": args.size_px,
                "samples_per_shard": args.per_shard,
                "shards": shards,
                "recipe": str(RECIPE.relative_to(ROOT)),
            },
            "timings": {
                "build": t_build,
                "baseline": t_base,
                "baseline_threads": t_base_t,
                "raw": t_raw,
            },
            "ratios": {
                "build_vs_baseline": speedup,
                "build_vs_baseline_target": TARGET_SPEEDUP,
                "build_vs_baseline_met": bool(speedup >= TARGET_SPEEDUP),
                "build_vs_baseline_threads": speedup_t,
                "build_vs_raw": raw_fraction,
                "build_vs_raw_target": TARGET_RAW_FRACTION,
                "build_vs_raw_met": bool(raw_fraction >= TARGET_RAW_FRACTION),
            },
            "memory": {
                "world": "bench" if args.large else args.preset,
                "small": mem_small,
                "large": mem_large,
                "ratio": rss_ratio,
                "target": f"1 +- {TARGET_RSS_FLAT}",
                "flat_met": bool(abs(rss_ratio - 1) <= TARGET_RSS_FLAT),
                "floor_mib": floor["peak_rss_mib"],
                "large_world": large_world,
            },
            "profile": None,
        }
        missed = not (
            results["ratios"]["build_vs_baseline_met"] and results["ratios"]["build_vs_raw_met"]
        )
        results["total_s"] = time.perf_counter() - began
        args.results.write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
        if (missed or args.profile) and not args.no_profile:
            log(f"profiling {args.profile_shards} shards of the build (sequential, cProfile)")
            try:
                results["profile"] = profile_build(
                    cfg, plan_dir, runs / "profile", args.profile_shards, args.per_shard
                )
            except Exception as err:  # a broken profile must not lose the timings
                log(f"profiling failed: {type(err).__name__}: {err}")
                results["profile_error"] = f"{type(err).__name__}: {err}"
        results["total_s"] = time.perf_counter() - began
        args.results.write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
        print_table(results)
        log(f"results written to {args.results}  (total {results['total_s']:.0f} s)")
        return 0
    finally:
        for w in served_here:
            _stop_if_served(w)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
