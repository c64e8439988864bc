"""Benchmark ``las build``: against a per-sample WarpedVRT baseline, the raw read bound, 1 vs 2
workers, and peak memory at 100 vs 2,000 samples; extrapolate to the full LAS.

    make bench                                                  # this, then the loader bench
    .venv/bin/python benchmarks/build_bench.py                  # ~10 min the first time
    .venv/bin/python benchmarks/build_bench.py --quick          # no 2,000-sample memory run
    .venv/bin/python benchmarks/build_bench.py --profile-only   # only the cProfile breakdown

One run, one plan (the demo recipe on the demo world, 100 samples of 128 x 128 px):

1. create (or reuse, under ``out/bench/world-<preset>``) the offline world and plan it;
2. for each storage scenario -- ``loopback`` (the file server answers at once) and ``remote``
   (it waits ``--latency-ms`` before each answer, like cloud object storage) -- time:
   ``las build`` (the CLI, threaded Dask scheduler, in a child process); the straightforward
   baseline (``baseline_warpedvrt.py``: search STAC per sample, one WarpedVRT per source,
   ``.npy`` files; sequential and with as many threads as the build); and the raw
   read-and-decode bound (the build's source windows read without warping, with the build's
   concurrency);
3. ``las build --workers 1`` and ``--workers 2`` (dask.distributed LocalCluster);
4. peak RSS of ``las build`` at 100 and 2,000 samples (64 x 64 px on the bench world), and
   the imports-only floor;
5. the full-scale extrapolation (~150,000 samples of 256 x 256 px);
6. print a table, write ``benchmarks/results.json`` (every figure, with
   ``benchmarks/results-loader.json`` merged in when present) and the docs table
   ``docs/benchmark-results.md``. Targets are reported, never asserted.
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
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext, redirect_stdout
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
PRODUCTION_SIZE_PX = 256  # recipes/las-v1.yaml's samples
PRODUCTION_PER_SHARD = 27  # 4 shards of the ~108 that fit the bench world: 2 per worker
PRODUCTION_SAMPLES = 128


# --------------------------------------------------------------------------------------------
# world, serving, plan


def _world_fingerprint(preset: str) -> str:
    """Hash of what a world depends on: its generator code and the catalog it renders."""
    digest = hashlib.sha256(preset.encode())
    paths = sorted(
        [
            # serve.py serves a world; it does not change what a world holds.
            *(f for f in (ROOT / "las_builder" / "world").glob("*.py") if f.name != "serve.py"),
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


def ensure_served(world: Path, latency_ms: float = 0.0) -> tuple[str, str, bool]:
    """Serve ``world`` with the given file-server latency (restarting it if it differs).

    Returns:
        The STAC URL, the assets URL and whether this call started the servers.
    """
    from las_builder.world.serve import serve_world

    state_path = world / "serve.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        same = float(state.get("latency_ms") or 0.0) == latency_ms
        if same and _answers(state["stac_url"]) and _answers(state["assets_url"] + "world.json"):
            return str(state["stac_url"]), str(state["assets_url"]), False
        _stop_if_served(world)
    with redirect_stdout(StringIO()):
        info = serve_world(world, detach=True, latency_ms=latency_ms)
    return info.stac_url, info.assets_url, True


def asset_stats(assets_url: str) -> dict[str, int]:
    """Requests served and bytes sent by the world's file server so far."""
    from las_builder.world.serve import STATS_PATH

    with urllib.request.urlopen(assets_url.rstrip("/") + STATS_PATH, timeout=10) as response:
        return {k: int(v) for k, v in json.loads(response.read()).items()}


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


def fresh_output(
    path: Path,
    plan_from: Path,
    shards: int | None = None,
    samples: int | None = None,
    spread: int | None = None,
) -> int:
    """An empty output folder holding the plan of ``plan_from``: its first ``shards`` shards,
    its first ``samples`` samples, or (``spread``) about that many samples in whole shards
    taken evenly across the plan, renumbered, so they cover the same regions as the whole."""
    import geopandas as gpd

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    plan = gpd.read_parquet(plan_from / "plan.parquet")
    if shards is not None:
        plan = plan[plan["shard"] < shards].reset_index(drop=True)
    if samples is not None:
        plan = plan[plan["plan_index"] < samples].reset_index(drop=True)
    if spread is not None and spread < len(plan):
        per_shard = int(plan.groupby("shard").size().max())
        all_shards = sorted(set(int(s) for s in plan["shard"]))
        step = max(1, round(len(all_shards) * per_shard / spread))
        kept = all_shards[::step]
        plan = plan[plan["shard"].isin(kept)].sort_values("plan_index").reset_index(drop=True)
        plan["shard"] = plan["shard"].map({old: new for new, old in enumerate(kept)})
        plan["plan_index"] = [
            int(shard) * per_shard + k
            for shard, k in zip(plan["shard"], plan.groupby("shard").cumcount(), strict=True)
        ]
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
    import dask.distributed  # noqa: F401 - the build's cluster (imported lazily by it)
    import geopandas  # noqa: F401
    import rasterio  # noqa: F401
    import zarr  # noqa: F401

    import las_builder.build.run  # noqa: F401
    import las_builder.recipe  # noqa: F401
    from las_builder.cli import app

    if argv and argv[0] == "--imports-only":
        print(json.dumps({"seconds": 0.0, "peak_rss_kib": _own_peak_rss_kib()}))
        return 0
    # The build's JSON log carries its summary, with the peak memory of each worker process.
    events = CACHE / f"child-build-{os.getpid()}.jsonl"
    events.unlink(missing_ok=True)
    started = time.perf_counter()
    code = app(["--log-json", str(events), "build", *argv, "--quiet"], standalone_mode=False)
    seconds = time.perf_counter() - started
    memory = None
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "build_done":
            memory = event.get("memory")
    events.unlink()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "exit": code or 0,
                "peak_rss_kib": _own_peak_rss_kib(),
                "worker_peak_rss_mib": (memory or {}).get("worker_peak_rss_mib", []),
            }
        )
    )
    return int(code or 0)


def _own_peak_rss_kib() -> int | None:
    """This process's own peak RSS (``VmHWM``), KiB; None where /proc is not there.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark across fork and exec into
    the child's ``ru_maxrss``, so a child of a big benchmark process "peaks" at the parent's
    size (every build then read the same 771 MiB). ``VmHWM`` belongs to the process's own
    address space, made new by exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def run_child_build(args: list[str]) -> dict[str, Any]:
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
        # wait4: this child's CPU time (its ru_maxrss would include the parent's, see
        # _own_peak_rss_kib: the child reports its own peak).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"the child build failed ({proc.returncode}):\n{text[-4000:]}")
    last = json.loads([line for line in text.splitlines() if line.startswith("{")][-1])
    own = last.get("peak_rss_kib")
    driver = (own if own is not None else usage.ru_maxrss) / 1024
    workers = [float(mib) for mib in last.get("worker_peak_rss_mib") or []]
    return {
        "seconds": float(last["seconds"]),
        "wall_s": wall,
        # The build's memory: its own process and, with worker processes (the default on two
        # or more cores), each worker's peak added (an upper bound: see _memory_summary).
        "peak_rss_mib": driver + sum(workers),
        "driver_peak_rss_mib": driver,
        "worker_peak_rss_mib": workers,
        # wait4 counts the workers too: they are the child's children, reaped by it.
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


RAW_IO_THREADS = 24
"""The raw bound's read threads: the most the build has read with (8 + 16 until round 8), so
that the build using fewer threads cannot lower the bound it is measured against. A variant
with the build's near pools (4 threads) is timed too, and the fastest counts: where the storage
answers at once, fewer threads read faster (round 21)."""


def raw_read_bound(
    rows: list[dict[str, Any]],
    cfg: Any,
    hrefs: dict[tuple, str],
    threads: int,
    shared: bool = False,
    io_threads: int | None = None,
) -> dict[str, float]:
    """Read the build's source windows without warping: the I/O and decode floor.

    With the build's concurrency: ``threads`` samples at a time (shard tasks x read threads),
    each sample's windows all read at once on one pool of :data:`RAW_IO_THREADS` threads, at
    least as many as the build reads with (its ``IO_THREADS`` band-file threads plus its
    ``SOURCE_THREADS`` source threads), or of ``io_threads`` (the build's pools where the
    storage answers at once: fewer threads take fewer turns at the GIL). Each I/O thread opens
    an asset once and keeps it; with ``shared``, the process opens each asset once and its
    threads take turns on that handle (a GDAL dataset serves one thread at a time), as the
    build's shard tasks share theirs.
    """
    import threading

    import rasterio
    from odc.geo.geobox import GeoBox

    from las_builder.build.read import IO_THREADS, SOURCE_THREADS, _source_window, gdal_options

    io_threads = io_threads or max(RAW_IO_THREADS, IO_THREADS + SOURCE_THREADS)

    local = threading.local()
    opened: list[Any] = []
    lock = threading.Lock()
    shared_handles: dict[str, tuple[threading.Lock, dict[str, Any]]] = {}
    options = gdal_options()

    def read_one(href: str, geobox: GeoBox) -> int:
        turn: AbstractContextManager[Any]
        datasets: dict[str, Any]
        if shared:
            with lock:
                turn, datasets = shared_handles.setdefault(href, (threading.Lock(), {}))
        else:
            if not hasattr(local, "datasets"):
                local.datasets = {}
            turn, datasets = nullcontext(), local.datasets
        with nullcontext() if serial else rasterio.Env(**options), turn:
            ds = datasets.get(href)
            if ds is None:
                ds = datasets[href] = rasterio.open(href)
                with lock:
                    opened.append(ds)
            window = _source_window(ds, geobox, margin_px=2)
            return 0 if window is None else int(ds.read(window=window).size)

    # One sample at a time, its windows one after another on the calling thread (in the GDAL
    # options entered once): the build's layout where the storage answers at once.
    serial = threads == 1 and io_threads == 1
    if serial:

        def read_all() -> list[tuple[int, int]]:
            with rasterio.Env(**options):
                done = []
                for row in rows:
                    geobox, assets = _sample_assets(row, cfg, hrefs)
                    sizes = [read_one(href, geobox) for href in assets]
                    done.append((len(sizes), sum(sizes)))
                return done

        started = time.perf_counter()
        # On a thread of its own, as a build worker's: a forked child's main thread would
        # reuse GDAL's HTTP connections of the parent's main thread (shared sockets).
        with ThreadPoolExecutor(max_workers=1) as one:
            results = one.submit(read_all).result()
        seconds = time.perf_counter() - started
    else:
        results, seconds = _raw_pooled(rows, cfg, hrefs, threads, io_threads, read_one)
    for ds in opened:
        ds.close()
    return {
        "samples": len(rows),
        "threads": threads,
        "io_threads": io_threads,
        "shared": shared,
        "seconds": seconds,
        "reads": sum(r[0] for r in results),
        "opens": len(opened),
        "pixels": sum(r[1] for r in results),
    }


def _raw_pooled(
    rows: list[dict[str, Any]],
    cfg: Any,
    hrefs: dict[tuple, str],
    threads: int,
    io_threads: int,
    read_one: Callable[[str, Any], int],
) -> tuple[list[tuple[int, int]], float]:
    """``threads`` samples at a time, each one's windows at once on ``io_threads`` threads."""
    with ThreadPoolExecutor(max_workers=io_threads) as io_pool:

        def sample_task(row: dict[str, Any]) -> tuple[int, int]:
            geobox, assets = _sample_assets(row, cfg, hrefs)
            futures = [io_pool.submit(read_one, href, geobox) for href in assets]
            return len(futures), sum(f.result() for f in futures)

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(sample_task, rows))
        return results, time.perf_counter() - started


def _sample_assets(row: dict[str, Any], cfg: Any, hrefs: dict[tuple, str]) -> tuple[Any, list[str]]:
    """A sample's grid and the hrefs of the source windows the raw bound reads for it."""
    from affine import Affine
    from baseline_warpedvrt import sample_sources
    from odc.geo.geobox import GeoBox

    geobox = GeoBox(tuple(row["shape"]), Affine(*row["transform"]), f"EPSG:{row['epsg']}")
    return geobox, [
        hrefs[(src.collection, src.item_id, src.asset)] for src in sample_sources(row, cfg)
    ]


def _raw_part(
    args: tuple[list[dict[str, Any]], Any, dict[tuple, str], int, bool, int | None],
) -> dict[str, float]:
    return raw_read_bound(*args)


def raw_read_bound_processes(
    rows: list[dict[str, Any]],
    cfg: Any,
    hrefs: dict[tuple, str],
    threads: int,
    processes: int,
    shared: bool = False,
    io_threads: int | None = None,
) -> dict[str, float]:
    """:func:`raw_read_bound` split over ``processes`` forked processes, as the build is.

    Each process reads ``threads / processes`` samples at a time: every ``processes``-th
    sample, or with ``shared`` (one handle per asset and process) every ``processes``-th
    shard, as the build hands whole shards to its workers, so a process's samples share
    scenes. The time includes starting the processes.
    """
    import multiprocessing

    per_process = max(1, threads // processes)
    if shared:
        shards = sorted({int(row["shard"]) for row in rows})
        mine = [set(shards[i::processes]) for i in range(processes)]
        split = [[row for row in rows if int(row["shard"]) in m] for m in mine]
    else:
        split = [rows[i::processes] for i in range(processes)]
    parts = [(part, cfg, hrefs, per_process, shared, io_threads) for part in split]
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.map(_raw_part, parts)
    seconds = time.perf_counter() - started
    return {
        "samples": len(rows),
        "threads": threads,
        "processes": processes,
        "io_threads": results[0]["io_threads"],
        "shared": shared,
        "seconds": seconds,
        "reads": sum(r["reads"] for r in results),
        "opens": sum(r["opens"] for r in results),
        "pixels": sum(r["pixels"] for r in results),
    }


# --------------------------------------------------------------------------------------------
# profile


PROFILE_BUCKETS: list[tuple[str, str, str]] = [
    # (label, file suffix, function); cumulative time unless marked tottime below
    ("STAC search (once per shard)", "las_builder/build/run.py", "_search_shard"),
    ("open datasets over HTTP (rasterio.open)", "las_builder/build/read.py", "_open_checked"),
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
    import dataclasses

    import geopandas as gpd

    from las_builder.build.run import build_shard
    from las_builder.build.store import create_store

    n = fresh_output(output, plan_from, shards)
    plan = gpd.read_parquet(output / "plan.parquet")
    by_shard: dict[int, list[dict[str, Any]]] = {}
    for row in plan.to_dict("records"):
        by_shard.setdefault(int(row["shard"]), []).append(row)
    create_store(f"{output}/las.zarr", n, per_shard, cfg, {})
    # cProfile sees only the calling thread; run_id: the STAC client is reused as in a build
    cfg = dataclasses.replace(cfg, read_threads=1, run_id="profile")
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for shard, rows in sorted(by_shard.items()):
        build_shard(shard, rows, cfg, str(output), n, per_shard)
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    buckets: list[dict[str, Any]] = []
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


def _timing(samples: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": _rate(samples, seconds),
        **extra,
    }


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _build_args(
    stac_url: str, output: Path, samples: int, size_px: int, per_shard: int
) -> list[str]:
    return [str(RECIPE), *recipe_sets(stac_url, output, samples, size_px, per_shard)]


def run_scenario(
    name: str,
    latency_ms: float,
    world: Path,
    plan_dir: Path,
    args: argparse.Namespace,
    threads: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Build, baseline and raw bound on one plan, with the file server at ``latency_ms``."""
    import geopandas as gpd
    from baseline_warpedvrt import run_baseline

    from las_builder.build.config import BuildConfig, config_from_recipe
    from las_builder.recipe import load_recipe

    stac_url, assets_url, _ = ensure_served(world, latency_ms)
    cfg: BuildConfig = config_from_recipe(load_recipe(RECIPE, [f"stac.url={stac_url}"]))
    read_threads = cfg.read_threads
    runs = CACHE / "runs"
    out = runs / f"build-{name}"
    n = fresh_output(out, plan_dir)
    plan_rows = gpd.read_parquet(plan_dir / "plan.parquet").to_dict("records")
    npy = runs / f"baseline-{name}"
    raw_threads = threads * read_threads
    few = 4  # a few I/O threads a process: the build's near pools (2 + 2) until round 24
    # Each of build, baseline and raw bound runs --repeats times, interleaved, and the fastest
    # run of each is compared (the machine's speed drifts by 20 % and more between runs).
    builds: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    raws: list[dict[str, Any]] = []
    ok_rows: list[dict[str, Any]] = []
    statuses: dict[str, int] = {}
    hrefs: dict[tuple, str] = {}
    for repeat in range(args.repeats):
        note = f" (run {repeat + 1}/{args.repeats})" if args.repeats > 1 else ""
        n = fresh_output(out, plan_dir)
        log(f"[{name}] las build of {n} samples (file server latency {latency_ms:g} ms){note}")
        before = asset_stats(assets_url)
        builds.append(run_child_build(_build_args(stac_url, out, n, args.size_px, args.per_shard)))
        after = asset_stats(assets_url)
        index = gpd.read_parquet(out / "index.parquet")
        ok_rows = index[index["status"] == "ok"].to_dict("records")
        statuses = {str(k): int(v) for k, v in index["status"].value_counts().items()}
        builds[-1]["requests"] = after["requests"] - before["requests"]
        builds[-1]["bytes"] = after["bytes"] - before["bytes"]
        log(f"[{name}] build: {builds[-1]['seconds']:.1f} s, {statuses}")
        shutil.rmtree(npy, ignore_errors=True)
        log(f"[{name}] baseline: search + WarpedVRT per sample, sequential{note}")
        baselines.append(run_baseline(plan_rows, cfg, stac_url, npy, threads=1))
        shutil.rmtree(npy, ignore_errors=True)
        hrefs = hrefs or resolve_hrefs(ok_rows, cfg, stac_url)
        log(f"[{name}] raw window reads, {raw_threads} samples at a time{note}")
        raws.append(raw_read_bound(ok_rows, cfg, hrefs, raw_threads))
        if threads > 1:  # the build's layout: a process per core (the fastest variant counts)
            log(f"[{name}] raw window reads in {threads} processes{note}")
            raws.append(raw_read_bound_processes(ok_rows, cfg, hrefs, raw_threads, threads))
            log(f"[{name}] raw window reads in {threads} processes, one handle per asset{note}")
            raws.append(
                raw_read_bound_processes(ok_rows, cfg, hrefs, raw_threads, threads, shared=True)
            )
            log(f"[{name}] raw window reads in {threads} processes, {few} I/O threads each{note}")
            raws.append(
                raw_read_bound_processes(
                    ok_rows, cfg, hrefs, raw_threads, threads, shared=True, io_threads=few
                )
            )
        if threads > 1 and latency_ms == 0:
            # The build's layout where the storage answers at once (a judged-near process):
            # one sample at a time, its windows one after another on the calling thread.
            log(f"[{name}] raw window reads in {threads} processes, one read at a time{note}")
            raws.append(
                raw_read_bound_processes(
                    ok_rows, cfg, hrefs, threads, threads, shared=True, io_threads=1
                )
            )
    build = min(builds, key=lambda r: r["seconds"])
    baseline = min(baselines, key=lambda r: r["seconds"])
    raw = min(raws, key=lambda r: r["seconds"])
    # Every layout must read the same windows, or the fastest would bound other work.
    if len({(r["reads"], r["pixels"]) for r in raws}) != 1:
        raise RuntimeError(
            f"[{name}] the raw bound's layouts read different windows: "
            f"{[(r['reads'], r['pixels']) for r in raws]}"
        )
    log(f"[{name}] baseline with {threads} threads")
    baseline_t = run_baseline(plan_rows, cfg, stac_url, npy, threads=threads)
    shutil.rmtree(npy, ignore_errors=True)
    t_build = _timing(
        n,
        build["seconds"],
        ok=len(ok_rows),
        statuses=statuses,
        shard_tasks=threads,
        read_threads=read_threads,
        wall_s=build["wall_s"],
        cpu_s=build["cpu_s"],
        peak_rss_mib=build["peak_rss_mib"],
        asset_requests=build["requests"],
        asset_bytes=build["bytes"],
        stored_bytes=_du(out / "las.zarr"),
        runs_s=[r["seconds"] for r in builds],
    )
    keys = ("threads", "reads", "searches", "bytes_written")
    t_base = _timing(
        n,
        baseline["seconds"],
        runs_s=[r["seconds"] for r in baselines],
        **{k: baseline[k] for k in keys},
    )
    t_base_t = _timing(n, baseline_t["seconds"], **{k: baseline_t[k] for k in keys})
    t_raw = _timing(
        len(ok_rows),
        raw["seconds"],
        threads=raw_threads,
        processes=raw.get("processes", 1),
        io_threads=raw["io_threads"],
        reads=raw["reads"],
        opens=raw["opens"],
        pixels=raw["pixels"],
        shared=raw.get("shared", False),
        runs_s=[r["seconds"] for r in raws if "processes" not in r],
        runs_processes_s=[r["seconds"] for r in raws if "processes" in r and not r["shared"]],
        runs_shared_s=[
            r["seconds"] for r in raws if r["shared"] and r["io_threads"] not in (few, 1)
        ],
        runs_few_threads_s=[r["seconds"] for r in raws if r["shared"] and r["io_threads"] == few],
        runs_serial_s=[r["seconds"] for r in raws if r["shared"] and r["io_threads"] == 1],
        few_io_threads=few,
        opens_by_variant={
            "thread_handles": next((r["opens"] for r in raws if not r["shared"]), None),
            "process_handles": next((r["opens"] for r in raws if r["shared"]), None),
        },
    )
    vs_base = t_build["samples_per_s"] / t_base["samples_per_s"]
    vs_raw = t_build["samples_per_s"] / t_raw["samples_per_s"]
    return {
        "latency_ms": latency_ms,
        "timings": {
            "build": t_build,
            "baseline": t_base,
            "baseline_threads": t_base_t,
            "raw": t_raw,
        },
        "ratios": {
            "build_vs_baseline": vs_base,
            "build_vs_baseline_met": bool(vs_base >= TARGET_SPEEDUP),
            "build_vs_baseline_threads": t_build["samples_per_s"] / t_base_t["samples_per_s"],
            "build_vs_raw": vs_raw,
            "build_vs_raw_met": bool(vs_raw >= TARGET_RAW_FRACTION),
        },
    }


def run_workers(
    world: Path, plan_dir: Path, args: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, Any]:
    """``las build --workers 1`` and ``--workers 2`` (LocalCluster start-up included)."""
    stac_url, _, _ = ensure_served(world, 0.0)
    out: dict[str, Any] = {}
    for workers in (1, 2):
        path = CACHE / "runs" / f"build-workers-{workers}"
        n = fresh_output(path, plan_dir)
        log(f"las build --workers {workers} ({n} samples, loopback)")
        result = run_child_build(
            [
                *_build_args(stac_url, path, n, args.size_px, args.per_shard),
                "--workers",
                str(workers),
            ]
        )
        out[str(workers)] = _timing(n, result["seconds"], workers=workers, wall_s=result["wall_s"])
    out["speedup_2_vs_1"] = out["2"]["samples_per_s"] / out["1"]["samples_per_s"]
    return out


def run_production(
    args: argparse.Namespace, threads: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Build and raw bound at LAS v1's sample size, the basis of :func:`full_scale`.

    256 x 256 px samples on the bench world (the demo world holds only ~17 that far apart),
    :data:`PRODUCTION_PER_SHARD` to a shard so that each worker gets whole shards, under
    the remote scenario's latency and on loopback; no baseline (its minute per run says
    nothing new). Each build and raw layout runs ``--repeats`` times; the fastest counts.
    """
    import geopandas as gpd

    from las_builder.build.config import config_from_recipe
    from las_builder.recipe import load_recipe

    size, per_shard = PRODUCTION_SIZE_PX, PRODUCTION_PER_SHARD
    world, _ = ensure_world(args.rss_preset, log)
    try:
        stac_url, _, _ = ensure_served(world, 0.0)
        plan_dir = CACHE / "runs" / f"plan-{args.rss_preset}-{size}px-production"
        if not (plan_dir / "plan.parquet").exists():
            make_plan(recipe_sets(stac_url, plan_dir, PRODUCTION_SAMPLES, size, per_shard))
        n = len(gpd.read_parquet(plan_dir / "plan.parquet"))
        processes = threads
        out: dict[str, Any] = {
            "world": args.rss_preset,
            "size_px": size,
            "samples_per_shard": per_shard,
            "samples": n,
        }
        for name, latency in (("loopback", 0.0), ("remote", args.latency_ms)):
            stac_url, assets_url, _ = ensure_served(world, latency)
            cfg = config_from_recipe(load_recipe(RECIPE, [f"stac.url={stac_url}"]))
            path = CACHE / "runs" / f"build-production-{name}"
            builds, raws = [], []
            ok_rows: list[dict[str, Any]] = []
            hrefs: dict[tuple, str] = {}
            for repeat in range(args.repeats):
                fresh_output(path, plan_dir)
                log(f"[production {name}] las build of {n} samples of {size} px ({repeat + 1})")
                before = asset_stats(assets_url)
                builds.append(run_child_build(_build_args(stac_url, path, n, size, per_shard)))
                after = asset_stats(assets_url)
                builds[-1]["requests"] = after["requests"] - before["requests"]
                builds[-1]["bytes"] = after["bytes"] - before["bytes"]
                index = gpd.read_parquet(path / "index.parquet")
                ok_rows = index[index["status"] == "ok"].to_dict("records")
                hrefs = hrefs or resolve_hrefs(ok_rows, cfg, stac_url)
                log(f"[production {name}] raw window reads, the build's layouts ({repeat + 1})")
                # One read at a time is the build's layout only where nothing is waited for.
                for io_threads in (RAW_IO_THREADS, 4) + ((1,) if latency == 0 else ()):
                    per_process = 1 if io_threads == 1 else processes * cfg.read_threads
                    raws.append(
                        raw_read_bound_processes(
                            ok_rows,
                            cfg,
                            hrefs,
                            per_process,
                            processes,
                            shared=True,
                            io_threads=io_threads,
                        )
                    )
            build = min(builds, key=lambda r: r["seconds"])
            raw = min(raws, key=lambda r: r["seconds"])
            t_build = _timing(
                n,
                build["seconds"],
                ok=len(ok_rows),
                shard_tasks=processes,
                cpu_s=build["cpu_s"],
                peak_rss_mib=build["peak_rss_mib"],
                asset_requests=build["requests"],
                asset_bytes=build["bytes"],
                stored_bytes=_du(path / "las.zarr"),
                runs_s=[r["seconds"] for r in builds],
            )
            t_raw = _timing(
                len(ok_rows),
                raw["seconds"],
                io_threads=raw["io_threads"],
                runs_by_io_threads_s={
                    str(k): [r["seconds"] for r in raws if r["io_threads"] == k]
                    for k in sorted({r["io_threads"] for r in raws})
                },
            )
            out[name] = {
                "latency_ms": latency,
                "build": t_build,
                "raw": t_raw,
                "build_vs_raw": t_build["samples_per_s"] / t_raw["samples_per_s"],
            }
        return out
    finally:
        _stop_if_served(world)


def run_memory(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Peak RSS of ``las build`` at two plan sizes on the bench world (loopback)."""
    import geopandas as gpd

    small_n, large_n = args.rss_samples
    world, created = ensure_world(args.rss_preset, log)
    try:
        stac_url, _, _ = ensure_served(world, 0.0)
        plan_dir = CACHE / "runs" / f"plan-{args.rss_preset}-{args.rss_size_px}px-{large_n}"
        if not (plan_dir / "plan.parquet").exists():
            log(
                f"planning {large_n} samples of {args.rss_size_px} px "
                f"on the {args.rss_preset} world"
            )
            make_plan(recipe_sets(stac_url, plan_dir, large_n, args.rss_size_px, args.per_shard))
        planned = len(gpd.read_parquet(plan_dir / "plan.parquet"))
        out: dict[str, Any] = {
            "world": args.rss_preset,
            "size_px": args.rss_size_px,
            "world_created_s": created,
        }
        # A build's peak RSS varies run to run (thread timing decides how many samples and
        # GDAL blocks are alive at once), so each size is built several times, alternating,
        # and the medians are compared.
        runs: dict[str, list[dict[str, float]]] = {"small": [], "large": []}
        asked = {"small": small_n, "large": min(large_n, planned)}
        sizes = dict(asked)  # samples actually built (whole shards)
        for repeat in range(args.rss_repeats):
            for label, count in asked.items():
                path = CACHE / "runs" / f"build-rss-{label}"
                # The small build takes whole shards spread over the large plan: the same
                # regions, sensors (NAIP in the US) and shard make-up, only fewer of them.
                # (The plan's first 100 samples all lie in one UTM zone without NAIP.)
                k = fresh_output(path, plan_dir, spread=count)
                sizes[label] = k
                log(f"peak RSS: las build of {k} samples ({label}, run {repeat + 1})")
                result = run_child_build(
                    _build_args(stac_url, path, k, args.rss_size_px, args.per_shard)
                )
                runs[label].append(result)
        for label, count in sizes.items():
            peaks = [r["peak_rss_mib"] for r in runs[label]]
            seconds = statistics.median(r["seconds"] for r in runs[label])
            out[label] = {
                "samples": count,
                "peak_rss_mib": statistics.median(peaks),
                "peak_rss_mib_runs": peaks,
                "driver_peak_rss_mib_runs": [r["driver_peak_rss_mib"] for r in runs[label]],
                "worker_peak_rss_mib_runs": [r["worker_peak_rss_mib"] for r in runs[label]],
                "seconds": seconds,
                "samples_per_s": _rate(count, seconds),
            }
        out["repeats"] = args.rss_repeats
        out["ratio"] = out["large"]["peak_rss_mib"] / out["small"]["peak_rss_mib"]
        out["flat_met"] = bool(abs(out["ratio"] - 1) <= TARGET_RSS_FLAT)
        out["planned"] = planned
        return out
    finally:
        _stop_if_served(world)


FULL_SCALE_RECIPE = ROOT / "recipes" / "las-v1.yaml"


def full_scale(results: dict[str, Any]) -> dict[str, Any]:
    """Extrapolate the measured per-sample costs to the full LAS recipe (``las-v1.yaml``).

    From the production run (256 x 256 px, the recipe's size, under the remote scenario's
    latency): per-sample worker time, stored bytes, bytes and requests read, linear in the
    sample count; its shards hold fewer samples than the recipe's 64, so each sample bears
    more of a shard's searches and writing (an upper bound). Without a production run, from
    the main plan scaled by the pixel count (linear, an upper bound for the fixed costs) and
    requests by 2 (a window twice as wide crosses about twice as many 512 px COG tiles per
    row). STAC searches: one per collection per shard.
    """
    from las_builder.recipe import load_recipe

    spec = load_recipe(FULL_SCALE_RECIPE, ["stac.url=https://example.invalid/"])
    samples = spec.sample.count
    production = (results.get("production") or {}).get("remote")
    if production is not None:
        build = production["build"]
        measured_px = results["production"]["size_px"]
        latency = production["latency_ms"]
    else:
        build = results["scenarios"]["remote"]["timings"]["build"]
        measured_px = results["plan"]["size_px"]
        latency = results["scenarios"]["remote"]["latency_ms"]
    pixel_scale = (spec.sample.size_px / measured_px) ** 2
    request_scale = 1.0 if pixel_scale == 1 else 2.0
    n = build["samples"]
    # A worker = one Dask worker process building one shard at a time.
    worker_s = build["seconds"] * build["shard_tasks"] / n * pixel_scale
    stored = build["stored_bytes"] / max(build["ok"], 1) * pixel_scale
    read = build["asset_bytes"] / n * pixel_scale
    requests = build["asset_requests"] / n * request_scale
    collections = 2 + (1 if spec.imagery.naip else 0) + len({s.collection for s in spec.labels})
    shards = -(-samples // spec.output.samples_per_shard)
    worker_hours = samples * worker_s / 3600
    return {
        "recipe": str(FULL_SCALE_RECIPE.relative_to(ROOT)),
        "samples": samples,
        "size_px": spec.sample.size_px,
        "measured_at": f"{measured_px} px, file server latency {latency:g} ms, "
        f"{results['machine']['cpus']} cores",
        "pixel_scale": pixel_scale,
        "worker_s_per_sample": worker_s,
        "worker_hours": worker_hours,
        "wall_hours_32_workers": worker_hours / 32,
        "stored_bytes_per_sample": stored,
        "stored_tb": samples * stored / 1e12,
        "read_bytes_per_sample": read,
        "read_tb": samples * read / 1e12,
        "asset_requests_per_sample": requests,
        "asset_requests": samples * requests,
        "stac_searches": shards * collections,
        "shards": shards,
        "assumptions": " ".join(
            line.strip() for line in (full_scale.__doc__ or "").split("\n\n")[1].splitlines()
        ),
    }


def _peaks(run: dict[str, Any]) -> str:
    """A median peak RSS and the runs it is the median of."""
    each = run.get("peak_rss_mib_runs") or [run["peak_rss_mib"]]
    return f"{run['peak_rss_mib']:.0f} MiB ({', '.join(f'{p:.0f}' for p in each)})"


def _runs(timing: dict[str, Any]) -> str:
    """``(s)`` of a timing: its seconds, or the fastest and every run when it was repeated."""
    each = timing.get("runs_s") or [timing["seconds"]]
    if len(each) == 1:
        return f"({timing['seconds']:.1f} s)"
    return f"(fastest of {', '.join(f'{v:.1f}' for v in each)} s)"


def _raw_runs(raw: dict[str, Any]) -> str:
    """The raw bound's variants and their runs (seconds); the fastest run is the bound."""
    variants = [
        ("one process", raw.get("runs_s")),
        ("a process per core", raw.get("runs_processes_s")),
        ("a process per core, one handle per asset", raw.get("runs_shared_s")),
        (
            f"the same with {raw.get('few_io_threads')} I/O threads",
            raw.get("runs_few_threads_s"),
        ),
        ("the same, one read at a time", raw.get("runs_serial_s")),
    ]
    shown = [f"{what} {', '.join(f'{v:.1f}' for v in runs)}" for what, runs in variants if runs]
    return f"(fastest of: {'; '.join(shown)} s)" if shown else _runs(raw)


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, status) rows: the table printed and written to the docs."""
    rows: list[tuple[str, str, str, str]] = []
    for name, sc in results["scenarios"].items():
        t, r = sc["timings"], sc["ratios"]
        where = f"{name} (file server latency {sc['latency_ms']:g} ms)"
        b = t["build"]
        rows += [
            (
                f"{where}: las build ({b['shard_tasks']} shard tasks x "
                f"{b['read_threads']} read threads)",
                f"{b['samples_per_s']:.2f} samples/s {_runs(b)}",
                "",
                "",
            ),
            (
                f"{where}: baseline, search + WarpedVRT per sample, sequential",
                f"{t['baseline']['samples_per_s']:.2f} samples/s {_runs(t['baseline'])}",
                "",
                "",
            ),
            (
                f"{where}: baseline, {t['baseline_threads']['threads']} threads",
                f"{t['baseline_threads']['samples_per_s']:.2f} samples/s",
                "",
                "",
            ),
            (
                f"{where}: raw window reads, {t['raw']['threads']} samples x "
                f"{t['raw'].get('io_threads', 1)} I/O threads",
                f"{t['raw']['samples_per_s']:.2f} samples/s {_raw_runs(t['raw'])}",
                "",
                "",
            ),
            (
                f"{where}: build / baseline",
                f"{r['build_vs_baseline']:.2f}x",
                f">= {TARGET_SPEEDUP:g}x",
                _met(r["build_vs_baseline_met"]),
            ),
            (
                f"{where}: build / baseline with threads",
                f"{r['build_vs_baseline_threads']:.2f}x",
                "(info)",
                "",
            ),
            (
                f"{where}: build / raw read bound",
                f"{100 * r['build_vs_raw']:.1f}%",  # a rounded 60 % could be 59.8 %, not met
                f">= {100 * TARGET_RAW_FRACTION:.0f}%",
                _met(r["build_vs_raw_met"]),
            ),
        ]
    w = results.get("workers")
    if w:
        rows += [
            (
                "las build --workers 1 (LocalCluster, loopback)",
                f"{w['1']['samples_per_s']:.2f} samples/s ({w['1']['seconds']:.1f} s)",
                "",
                "",
            ),
            (
                "las build --workers 2",
                f"{w['2']['samples_per_s']:.2f} samples/s ({w['2']['seconds']:.1f} s)",
                "",
                "",
            ),
            ("2 workers / 1 worker", f"{w['speedup_2_vs_1']:.2f}x", "(info)", ""),
        ]
    prod = results.get("production")
    for name in ("loopback", "remote"):
        sc = (prod or {}).get(name)
        if not sc:
            continue
        assert prod is not None  # sc came from it
        where = (
            f"LAS v1 size ({prod['size_px']} px, {prod['samples_per_shard']} a shard), "
            f"{name} ({sc['latency_ms']:g} ms)"
        )
        b, raw = sc["build"], sc["raw"]
        rows += [
            (f"{where}: las build", f"{b['samples_per_s']:.2f} samples/s {_runs(b)}", "", ""),
            (
                f"{where}: raw window reads (fastest layout: {raw['io_threads']} I/O threads)",
                f"{raw['samples_per_s']:.2f} samples/s",
                "",
                "",
            ),
            (f"{where}: build / raw read bound", f"{100 * sc['build_vs_raw']:.1f}%", "(info)", ""),
        ]
    m = results.get("memory")
    if m:
        rows += [
            (
                f"peak RSS, {m['small']['samples']} samples "
                f"({m['world']} world, {m['size_px']} px; median of {m.get('repeats', 1)})",
                _peaks(m["small"]),
                "",
                "",
            ),
            (
                f"peak RSS, {m['large']['samples']} samples",
                _peaks(m["large"]),
                "",
                "",
            ),
            (
                "peak RSS large / small",
                f"{m['ratio']:.3f}",
                f"1 +- {TARGET_RSS_FLAT:g}",
                _met(m["flat_met"]),
            ),
        ]
    loader = results.get("loader")
    if loader:
        for name, by_workers in loader.get("timings", {}).items():
            for w, t in by_workers.items():
                if isinstance(t, dict) and "samples_per_s" in t:
                    rows.append(
                        (
                            f"loader: {name}, {w} workers",
                            f"{t['samples_per_s']:.0f} samples/s",
                            "",
                            "",
                        )
                    )
        for w, ratio in loader.get("ratios", {}).get("las_vs_torchgeo", {}).items():
            rows.append(
                (f"loader / TorchGeo ({w} workers)", f"{ratio:.1f}x", ">= 20x", _met(ratio >= 20))
            )
    f = results.get("full_scale")
    if f:
        rows += [
            (
                f"full LAS ({f['samples']:,} x {f['size_px']} px): worker-hours",
                f"{f['worker_hours']:,.0f} h ({f['wall_hours_32_workers']:,.1f} h on 32 workers)",
                "(estimate)",
                "",
            ),
            (
                "full LAS: stored",
                f"{f['stored_tb']:.2f} TB ({f['stored_bytes_per_sample'] / 2**20:.1f} MiB/sample)",
                "(estimate)",
                "",
            ),
            (
                "full LAS: read from storage",
                f"{f['read_tb']:.2f} TB, {f['asset_requests']:,.0f} requests",
                "(estimate)",
                "",
            ),
            (
                "full LAS: STAC searches",
                f"{f['stac_searches']:,} ({f['shards']:,} shards)",
                "(estimate)",
                "",
            ),
        ]
    return rows


def print_table(results: dict[str, Any]) -> None:
    """The summary as a rich table (and the cProfile breakdown when present)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    plan = results["plan"]
    table = Table(
        title=f"las build benchmark: {plan['samples']} x {plan['size_px']} px, "
        f"{results['machine']['cpus']} cores"
    )
    for column in ("figure", "value", "target", "status"):
        table.add_column(column)
    for row in summary_rows(results):
        table.add_row(*row)
    console.print(table)
    if results.get("profile"):
        p = results["profile"]
        pt = Table(
            title=f"where the build's time goes: {p['samples']} samples, {p['shards']} "
            f"shards, sequential, cProfile ({p['profiled_s']:.1f} s profiled)"
        )
        for column in ("what", "calls", "seconds", "share", "per sample"):
            pt.add_column(column)
        for b in p["buckets"]:
            pt.add_row(
                b["what"],
                str(b["calls"] or ""),
                f"{b['seconds']:.2f}",
                f"{100 * b['share']:.0f}%",
                f"{1000 * b['seconds'] / p['samples']:.0f} ms",
            )
        console.print(pt)


DOCS_TABLE = ROOT / "docs" / "benchmark-results.md"


def write_docs_table(results: dict[str, Any], path: Path = DOCS_TABLE) -> None:
    """The summary rows as a Markdown page (regenerated by every full ``make bench``)."""
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` on {m['date']} (commit {m['git_commit']}, {m['cpus']} cores, "
        f"Python {m['python']}, GDAL {m['gdal']}). Method and caveats: "
        "[benchmarks.md](benchmarks.md). Every figure is in `benchmarks/results.json`.",
        "",
        "| figure | value | target | status |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(results)]
    f = results.get("full_scale")
    if f:
        lines += ["", f"Full-scale assumptions: {f['assumptions']}"]
    path.write_text("\n".join(lines) + "\n")


def load_loader_results(path: Path) -> dict[str, Any] | None:
    """The loader benchmark's figures (``benchmarks/loader_bench.py``), if it has run."""
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="world preset for the timings")
    parser.add_argument("--samples", type=int, default=100, help="samples to plan")
    parser.add_argument("--size-px", type=int, default=128, choices=(64, 128, 256))
    parser.add_argument("--per-shard", type=int, default=8, help="samples per shard")
    parser.add_argument(
        "--latency-ms", type=float, default=20.0, help="file server latency of the remote scenario"
    )
    parser.add_argument("--quick", action="store_true", help="skip the 2,000-sample memory run")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of build, baseline and raw bound (fastest)"
    )
    parser.add_argument("--rss-samples", type=int, nargs=2, default=(100, 2000))
    parser.add_argument("--rss-preset", default="bench")
    parser.add_argument("--rss-size-px", type=int, default=64)
    parser.add_argument(
        "--rss-repeats", type=int, default=3, help="builds of each size (medians compared)"
    )
    parser.add_argument("--profile", action="store_true", help="append a cProfile breakdown")
    parser.add_argument("--profile-only", action="store_true", help="only the profile")
    parser.add_argument("--profile-shards", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--loader-results", type=Path, default=HERE / "results-loader.json")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the docs table")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child-build"]:
        return _child_build(argv[1:])
    args = parser.parse_args(argv)

    import geopandas as gpd
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
    try:
        stac_url, _, _ = ensure_served(world, 0.0)
        log(f"world {world} served at {stac_url}")
        tag = f"{args.preset}-{args.size_px}px-{args.samples}"
        plan_dir = CACHE / "runs" / f"plan-{tag}"
        make_plan(recipe_sets(stac_url, plan_dir, args.samples, args.size_px, args.per_shard))
        n = len(gpd.read_parquet(plan_dir / "plan.parquet"))
        shards = -(-n // args.per_shard)
        log(f"planned {n} samples in {shards} shards ({plan_dir / 'plan.parquet'})")
        threads = int(CPU_COUNT)
        if args.profile_only:
            cfg = config_from_recipe(load_recipe(RECIPE, [f"stac.url={stac_url}"]))
            prof = profile_build(
                cfg, plan_dir, CACHE / "runs" / "profile", args.profile_shards, args.per_shard
            )
            print(json.dumps(prof, indent=1))
            return 0
        log(f"warming the page cache: {warm_page_cache(world) / 2**20:.0f} MiB of assets")
        floor = run_child_build(["--imports-only"])
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
            "targets": {
                "build_vs_baseline": TARGET_SPEEDUP,
                "build_vs_raw": TARGET_RAW_FRACTION,
                "rss_flat": TARGET_RSS_FLAT,
            },
            "scenarios": {},
            "imports_only_rss_mib": floor["peak_rss_mib"],
        }
        for name, latency in (("loopback", 0.0), ("remote", args.latency_ms)):
            results["scenarios"][name] = run_scenario(
                name, latency, world, plan_dir, args, threads, log
            )
        results["workers"] = run_workers(world, plan_dir, args, log)
        _stop_if_served(world)
        results["production"] = run_production(args, threads, log)
        results["memory"] = None if args.quick else run_memory(args, log)
        results["loader"] = load_loader_results(args.loader_results)
        results["full_scale"] = full_scale(results)
        if args.profile:
            stac_url, _, _ = ensure_served(world, 0.0)
            cfg = config_from_recipe(load_recipe(RECIPE, [f"stac.url={stac_url}"]))
            results["profile"] = profile_build(
                cfg, plan_dir, CACHE / "runs" / "profile", args.profile_shards, args.per_shard
            )
        results["total_s"] = time.perf_counter() - began
        args.results.write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
        if not args.no_docs:
            write_docs_table(results)
        print_table(results)
        log(f"results written to {args.results}  (total {results['total_s']:.0f} s)")
        return 0
    finally:
        _stop_if_served(world)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
