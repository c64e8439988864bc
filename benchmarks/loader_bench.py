"""Benchmark the LAS training loader against TorchGeo and the raw Zarr decode bound.

A benchmark, not a test: every figure comes from one run of this script, in one process (the
DataLoader workers are its children), on one machine; targets are reported, never asserted.

What is timed (samples/s, same batch size and worker counts for the two loaders):

1. **LAS loader**: :class:`las_builder.model.data.LASDataset` (Sentinel-2 + Sentinel-1 +
   ESA WorldCover mapped to LAS classes, normalised, 128 x 128 px at 10 m) in a
   ``torch.utils.data.DataLoader`` with the default collate, random access over all the
   store's usable samples, with 0 and 2 workers. Also, for information, the same loader
   with :class:`las_builder.model.data.ShardBatchSampler` (batches drawn shard by shard,
   fewer zarr calls, less mixed batches).
2. **Raw Zarr decode**: the same samples (the same index sequence) and the same three arrays
   read straight with zarr into numpy (``group[name][i]``, arrays opened once), one process,
   no torch, no normalisation: what the loader could reach at most. For information, also one
   zarr call per shard (8 samples at once).
3. **TorchGeo**: ``RasterDataset`` subclasses over the SAME source GeoTIFFs the store was
   built from (the offline world's COGs): Sentinel-2 (12 band files, 10/20/60 m, resampled to
   10 m), Sentinel-1 (vv, vh) and the ESA WorldCover tile (EPSG:4326, reprojected on the fly),
   intersected with ``&``, sampled by ``RandomGeoSampler(size=128 px, res=10)`` and collated by
   ``stack_samples``; with 0 and 2 workers.

TorchGeo warps everything into one CRS, so it reads the files of ONE region (one UTM zone):
by default the region with most samples in the store, the Sentinel-2 and Sentinel-1 scenes most
of its samples were built from and its WorldCover tile (one scene per modality, so every query
reads one file per band, as the store holds one scene per sample). The LAS loader draws from
all the store's samples: every sample has the same shape and codecs, whatever its region.

Fairness: the page cache is warm for all three (every file read once before timing), every
loader is timed over one epoch of ``--samples`` random samples after its first batches
(``max(1, 2 * workers)``: worker start-up, lazy opens, TorchGeo's file-handle cache filling),
TorchGeo uses its documented idiom (``filename_glob``/``filename_regex``, ``bands``,
``is_image``, ``separate_files``, ``res=10``, cached file handles) and both DataLoaders fork
their workers.

Run it with the bench environment (TorchGeo needs torchvision, which does not import beside
the torch of ``.venv``)::

    bash scripts/bench-venv.sh                     # once: creates .venv-bench
    .venv-bench/bin/python benchmarks/loader_bench.py
    .venv-bench/bin/python benchmarks/loader_bench.py --samples 320 --workers 0

The store defaults to the build benchmark's (``out/bench/runs/build-demo-128px-100``, made
by ``make bench``); without it, the script plans and builds its own 100-sample store from the
demo world (``out/bench/runs/loader-demo-128px-100``, a few minutes once). Results go to
``benchmarks/results-loader.json`` and a table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "demo.yaml"
RUNS = ROOT / "out" / "bench" / "runs"
DEFAULT_STORE = RUNS / "build-demo-128px-100"  # made by benchmarks/build_bench.py
OWN_STORE = RUNS / "loader-demo-128px-100"  # made here when the build benchmark's is absent
DEFAULT_WORLD = ROOT / "out" / "bench" / "world-demo"
RESULTS = Path(__file__).resolve().parent / "results-loader.json"

TARGET_VS_TORCHGEO = 20.0  # LAS loader samples/s over TorchGeo's
MODALITIES = ("sentinel-2", "sentinel-1")
PRODUCT = "esa-worldcover"  # served in LAS classes (ProductSpec "esa-worldcover")
LABEL_COLLECTION = "esa-worldcover"
SIZE_PX = 128
RES_M = 10.0

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# the store (and, when it is missing, the world it is built from)


def is_store(path: Path) -> bool:
    """Whether ``path`` holds a built LAS store (``las.zarr`` and ``index.parquet``)."""
    return (path / "las.zarr").is_dir() and (path / "index.parquet").is_file()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _las(*args: str) -> None:
    """Run the ``las`` CLI of this interpreter; raise with its output on failure."""
    cmd = [sys.executable, "-m", "las_builder.cli", *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")


def build_store(world: Path, output: Path, log: Log, samples: int = 100) -> None:
    """Plan and build a demo store from ``world`` into ``output`` as the build benchmark does.

    Creates the demo world (seed 0) when it is missing and serves it for the build when
    nothing answers at its ``serve.json`` (stopping only what it started).

    Args:
        world: World folder (created with the ``demo`` preset if it has no ``world.json``).
        output: Dataset folder to create (plan, ``las.zarr``, ``index.parquet``).
        log: Progress messages.
        samples: Samples to plan (128 x 128 px, 8 per shard).

    """
    from las_builder.world.serve import ServeError, serve_world, stop_world

    if not (world / "world.json").exists():
        from las_builder.world.create import create_world

        if world.exists() and any(world.iterdir()):
            raise SystemExit(f"{world} exists but holds no world.json: remove it or pass --world")
        log(f"creating the demo world in {world} (one-off)")
        create_world(world, seed=0, preset="demo", progress=False)
    started_serving = False
    state_path = world / "serve.json"
    stac_url = None
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if _answers(state["stac_url"]) and _answers(state["assets_url"] + "world.json"):
            stac_url = str(state["stac_url"])
    if stac_url is None:
        with contextlib.redirect_stdout(io.StringIO()):
            stac_url = serve_world(world, detach=True).stac_url
        started_serving = True
    try:
        sets = [
            f"stac.url={stac_url}",
            f"sample.size_px={SIZE_PX}",
            f"sample.count={samples}",
            f"output.path={output}",
            "output.samples_per_shard=8",
        ]
        args = [a for s in sets for a in ("--set", s)]
        log(f"planning and building {samples} samples into {output} (a few minutes, once)")
        _las("plan", str(RECIPE), *args, "--quiet")
        _las("build", str(RECIPE), *args, "--quiet")
    finally:
        if started_serving:
            with contextlib.suppress(ServeError), contextlib.redirect_stdout(io.StringIO()):
                stop_world(world)


def resolve_store(store: Path | None, world: Path, log: Log) -> Path:
    """The store to read: ``--store``, else the build benchmark's, else one built here."""
    if store is not None:
        if not is_store(store):
            raise SystemExit(
                f"{store} holds no las.zarr + index.parquet: run `make bench` first "
                "(or omit --store to let this benchmark build its own)"
            )
        return store
    for candidate in (DEFAULT_STORE, OWN_STORE):
        if is_store(candidate):
            return candidate
    log(f"{DEFAULT_STORE} is missing (`make bench` makes it): building a store here")
    build_store(world, OWN_STORE, log)
    return OWN_STORE


def warm_page_cache(paths: Iterable[Path]) -> int:
    """Read every file under ``paths`` once so that all timed runs see a warm page cache."""
    total = 0
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            with path.open("rb") as f:
                while chunk := f.read(1 << 22):
                    total += len(chunk)
    return total


# --------------------------------------------------------------------------------------------
# the TorchGeo side: which files of the world, and the datasets over them


def _items(world: Path, collection: str) -> dict[str, dict[str, Any]]:
    """``{item id: item}`` of one collection of the world's static STAC."""
    data = json.loads((world / "stac" / "items" / f"{collection}.json").read_text())
    features = data["features"] if isinstance(data, dict) else data
    return {str(f["id"]): f for f in features}


def torchgeo_sources(index: Any, world: Path, epsg: int | None) -> dict[str, Any]:
    """Pick the region TorchGeo reads and the source files of its samples.

    Args:
        index: The store's ``index.parquet`` (pandas), usable samples only.
        world: The world the store was built from.
        epsg: UTM zone to use; ``None``: the one with most samples (lowest code on ties).

    Returns:
        ``epsg``, ``region``, ``samples`` (in that zone), the chosen item ids and the paths
        to hand to TorchGeo (``s2_dir``, ``s1_dir``, ``label_file``).

    """
    counts = Counter(int(e) for e in index["epsg"])
    if epsg is None:
        epsg = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    if epsg not in counts:
        raise SystemExit(f"no sample of the store is in EPSG:{epsg}; zones: {sorted(counts)}")
    rows = index[index["epsg"] == epsg]
    s2_item, s1_item = Counter(zip(rows["s2_item"], rows["s1_item"], strict=True)).most_common(1)[
        0
    ][0]
    label_items = Counter(
        i for text in rows[f"{PRODUCT}_items"] for i in json.loads(text)
    ).most_common()
    label_item = label_items[0][0]
    s2 = _items(world, "sentinel-2-l2a")[s2_item]["assets"]
    s1 = _items(world, "sentinel-1-rtc")[s1_item]["assets"]
    label = _items(world, LABEL_COLLECTION)[label_item]["assets"]
    regions = json.loads((world / "world.json").read_text()).get("regions", [])
    region = next((r["id"] for r in regions if int(r.get("epsg", 0)) == epsg), None)
    s2_href = next(a["href"] for k, a in s2.items() if k.upper() == "B02")
    return {
        "epsg": epsg,
        "region": region,
        "samples_in_zone": int(counts[epsg]),
        "s2_item": s2_item,
        "s1_item": s1_item,
        "label_item": label_item,
        "label_items_in_zone": [i for i, _ in label_items],
        "s2_dir": (world / s2_href).parent,
        "s1_dir": (world / s1["vv"]["href"]).parent,
        "label_file": world / next(iter(label.values()))["href"],
    }


def torchgeo_dataset(sources: dict[str, Any], s2_bands: Sequence[str]) -> Any:
    """``Sentinel-2 & Sentinel-1 & ESA WorldCover`` as TorchGeo users build it.

    The world lays each Sentinel-2 scene out flat (``T15TVG_<date>_B05_20m.tif`` beside the
    10 m bands, no ``R20m`` folders), so the Sentinel-2 class keeps TorchGeo's own
    ``Sentinel2`` (glob, regex, bands, resolutions) and only swaps the resolution in the file
    name instead of the folder. Sentinel-1 RTC scenes hold ``vv.tif`` and ``vh.tif``.
    """
    from torchgeo.datasets import RasterDataset, Sentinel2

    class WorldSentinel2(Sentinel2):  # type: ignore[misc]
        """TorchGeo's Sentinel-2 over flat L2A scene folders."""

        def _update_filepath(self, band: str, filepath: str) -> str:
            filepath = RasterDataset._update_filepath(self, band, filepath)
            directory, filename = os.path.split(filepath)
            match = re.match(self.filename_regex, filename, re.VERBOSE)
            if match and match.group("resolution"):
                start, end = match.start("resolution"), match.end("resolution")
                filename = filename[:start] + self.resolutions[band] + filename[end:]
            return os.path.join(directory, filename)

    class WorldSentinel1(RasterDataset):  # type: ignore[misc]
        """Sentinel-1 RTC scene folders of ``vv.tif`` / ``vh.tif`` (linear gamma0)."""

        filename_glob = "vv.tif"
        filename_regex = r"^(?P<band>v[vh])\.tif$"
        all_bands = ("vv", "vh")
        separate_files = True

    class WorldCover(RasterDataset):  # type: ignore[misc]
        """ESA WorldCover 10 m map tiles (EPSG:4326), the segmentation mask."""

        filename_glob = "ESA_WorldCover_10m_*_Map.tif"
        is_image = False

    # TorchGeo prints the CRS it converts each dataset from: keep the table readable.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s2 = WorldSentinel2([sources["s2_dir"]], bands=list(s2_bands), res=RES_M)
        s1 = WorldSentinel1([sources["s1_dir"]], res=RES_M)
        label = WorldCover([sources["label_file"]], res=RES_M)
        return s2 & s1 & label


# --------------------------------------------------------------------------------------------
# timing


def time_batches(
    batches: Iterable[Any], count: Callable[[Any], int], skip: int
) -> dict[str, float | int]:
    """Consume ``batches``; time those after the first ``skip`` (the steady state).

    Args:
        batches: Any iterable of batches (a DataLoader, a generator).
        count: Samples in a batch.
        skip: Batches consumed before the clock starts (worker start-up, lazy opens).

    Returns:
        ``samples``/``seconds``/``samples_per_s`` of the timed part, ``skipped_samples``,
        ``startup_s`` (until the clock started) and ``wall_s``/``wall_samples_per_s`` of the
        whole epoch.

    """
    began = time.perf_counter()
    clock = began if skip <= 0 else None
    total = timed = 0
    for i, batch in enumerate(batches):
        n = count(batch)
        total += n
        if clock is None:
            if i + 1 >= skip:
                clock = time.perf_counter()
        else:
            timed += n
    end = time.perf_counter()
    if clock is None or timed == 0:  # fewer batches than skipped: time the whole epoch
        clock, timed = began, total
    seconds = end - clock
    return {
        "samples": timed,
        "seconds": seconds,
        "samples_per_s": timed / seconds if seconds > 0 else float("nan"),
        "skipped_samples": total - timed,
        "startup_s": clock - began,
        "wall_s": end - began,
        "wall_samples_per_s": total / (end - began),
    }


def skip_batches(workers: int) -> int:
    """Batches left out of the timing: one, or the batches the workers prefetch at start."""
    return max(1, 2 * workers)


def draw_indices(n_items: int, samples: int, seed: int) -> list[int]:
    """``samples`` random positions in ``[0, n_items)`` (with replacement), from torch's RNG."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [int(i) for i in torch.randint(0, n_items, (samples,), generator=generator)]


def _chunks(seq: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def run_las(dataset: Any, indices: Sequence[int], batch_size: int, workers: int) -> dict[str, Any]:
    """Time the LAS loader over ``indices`` (dataset positions)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(indices),
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
    )
    skip = skip_batches(workers)
    out = time_batches(loader, lambda b: len(b["sample_id"]), skip)
    return {**out, "batch_size": batch_size, "workers": workers, "skipped_batches": skip}


def run_las_shards(
    dataset: Any, samples: int, batch_size: int, workers: int, seed: int
) -> dict[str, Any]:
    """Time the LAS loader with ``ShardBatchSampler`` over ``samples`` (repeated epochs)."""
    import torch
    from torch.utils.data import DataLoader

    from las_builder.model.data import ShardBatchSampler

    sampler = ShardBatchSampler(dataset, batch_size, generator=torch.Generator().manual_seed(seed))
    batches: list[list[int]] = []
    while len(batches) * batch_size < samples:
        batches += list(sampler)  # each pass is a new shuffled epoch
    batches = batches[: -(-samples // batch_size)]
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
    )
    skip = skip_batches(workers)
    out = time_batches(loader, lambda b: len(b["sample_id"]), skip)
    return {**out, "batch_size": batch_size, "workers": workers, "skipped_batches": skip}


def run_raw_zarr(
    store: Path, zarr_indices: Sequence[int], arrays: Sequence[str], batch_size: int
) -> dict[str, Any]:
    """Time plain zarr reads of the same samples and arrays (one call per sample and array)."""
    import numpy as np
    import zarr

    root = zarr.open_group(str(store / "las.zarr"), mode="r")
    handles = [root[name] for name in arrays]

    def batches() -> Iterator[int]:
        for chunk in _chunks(zarr_indices, batch_size):
            for i in chunk:
                for arr in handles:
                    np.asarray(arr[i])
            yield len(chunk)

    out = time_batches(batches(), lambda n: n, skip_batches(0))
    return {**out, "batch_size": batch_size, "workers": 0, "arrays": list(arrays)}


def run_raw_zarr_shards(store: Path, arrays: Sequence[str], samples: int) -> dict[str, Any]:
    """Time zarr reads of whole shards (``arr[k * s:(k + 1) * s]``), cycling over the store."""
    import numpy as np
    import zarr

    root = zarr.open_group(str(store / "las.zarr"), mode="r")
    handles = [root[name] for name in arrays]
    per_shard = int(handles[0].shards[0]) if handles[0].shards else int(handles[0].chunks[0])
    n = int(handles[0].shape[0])
    starts = list(range(0, n, per_shard))

    def batches() -> Iterator[int]:
        done = 0
        while done < samples:
            for start in starts:
                stop = min(start + per_shard, n)
                for arr in handles:
                    np.asarray(arr[start:stop])
                done += stop - start
                yield stop - start
                if done >= samples:
                    return

    out = time_batches(batches(), lambda k: k, 1)
    return {**out, "batch_size": per_shard, "workers": 0, "arrays": list(arrays)}


def run_torchgeo(
    sources: dict[str, Any],
    s2_bands: Sequence[str],
    samples: int,
    batch_size: int,
    workers: int,
    seed: int,
) -> dict[str, Any]:
    """Time TorchGeo's RasterDataset + RandomGeoSampler + stack_samples over ``samples``."""
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import stack_samples
    from torchgeo.samplers import RandomGeoSampler, Units

    dataset = torchgeo_dataset(sources, s2_bands)  # fresh: no file handles cached yet
    sampler = RandomGeoSampler(
        dataset,
        size=SIZE_PX,
        length=samples,
        units=Units.PIXELS,
        generator=torch.Generator().manual_seed(seed),
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=stack_samples,
        multiprocessing_context="fork" if workers else None,
    )
    skip = skip_batches(workers)
    shapes: dict[str, list[int]] = {}

    def count(batch: dict[str, Any]) -> int:
        if not shapes:
            shapes.update(image=list(batch["image"].shape), mask=list(batch["mask"].shape))
        return int(batch["image"].shape[0])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = time_batches(loader, count, skip)
    return {
        **out,
        "batch_size": batch_size,
        "workers": workers,
        "skipped_batches": skip,
        "batch_shapes": shapes,
    }


# --------------------------------------------------------------------------------------------
# report


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:  # not installed or no version: say so in the JSON
        return None


def machine() -> dict[str, Any]:
    """Where and with what the figures were measured."""
    import rasterio

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "versions": {
            "torch": _version("torch"),
            "torchgeo": _version("torchgeo"),
            "torchvision": _version("torchvision"),
            "zarr": _version("zarr"),
            "numpy": _version("numpy"),
            "rasterio": rasterio.__version__,
            "gdal": rasterio.__gdal_version__,
        },
        "git_commit": commit,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def print_table(results: dict[str, Any]) -> None:
    """The results as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    t = results["timings"]
    r = results["ratios"]
    tg = results["torchgeo_setup"]
    table = Table(
        title=f"LAS loader benchmark: {results['store']['samples_ok']} samples of "
        f"{SIZE_PX} x {SIZE_PX} px at {RES_M:g} m (S2 + S1 + {PRODUCT}), batch "
        f"{results['config']['batch_size']}, {results['machine']['cpus']} cores"
    )
    for col, justify in (
        ("figure", "left"),
        ("workers", "right"),
        ("samples", "right"),
        ("seconds", "right"),
        ("samples/s", "right"),
        ("target", "left"),
        ("status", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]

    def row(label: str, v: dict[str, Any] | None) -> None:
        if v is None:
            return
        table.add_row(
            label,
            str(v["workers"]),
            str(v["samples"]),
            f"{v['seconds']:.2f}",
            f"{v['samples_per_s']:.1f}",
            "",
            "",
        )

    for w, v in t["las_loader"].items():
        row("LAS loader (LASDataset + DataLoader)", v | {"workers": w})
    for w, v in t.get("las_loader_shard", {}).items():
        row("LAS loader + ShardBatchSampler (info)", v | {"workers": w})
    row("raw Zarr decode, one call per sample", t["raw_zarr"])
    row("raw Zarr decode, one call per shard (info)", t["raw_zarr_shard"])
    for w, v in t["torchgeo"].items():
        row(f"TorchGeo ({tg['region'] or 'EPSG:' + str(tg['epsg'])}, 1 zone)", v | {"workers": w})
    table.add_section()
    for w, ratio in r["las_vs_torchgeo"].items():
        table.add_row(
            "LAS loader / TorchGeo",
            w,
            "",
            "",
            f"{ratio:.1f}x",
            f">= {TARGET_VS_TORCHGEO:.0f}x",
            _met(r["las_vs_torchgeo_met"][w]),
        )
    for w, ratio in r.get("las_shard_vs_torchgeo", {}).items():
        table.add_row(
            "LAS loader + ShardBatchSampler / TorchGeo", w, "", "", f"{ratio:.1f}x", "(info)", ""
        )
    for w, frac in r["las_vs_raw_zarr"].items():
        table.add_row("LAS loader / raw Zarr", w, "", "", f"{100 * frac:.0f}%", "(info)", "")
    console.print(table)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help=f"dataset folder (las.zarr + index.parquet); default {DEFAULT_STORE.relative_to(ROOT)}"
        f", else {OWN_STORE.relative_to(ROOT)} (built if missing)",
    )
    parser.add_argument(
        "--world",
        type=Path,
        default=DEFAULT_WORLD,
        help="the offline world the store was built from (TorchGeo reads its COGs)",
    )
    parser.add_argument("--samples", type=int, default=640, help="samples per timed epoch")
    parser.add_argument(
        "--torchgeo-samples", type=int, default=None, help="TorchGeo's epoch (default --samples)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--workers", default="0,2", help="DataLoader worker counts, comma-separated"
    )
    parser.add_argument("--epsg", type=int, default=None, help="UTM zone TorchGeo reads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torchgeo", action="store_true", help="skip TorchGeo")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    tg_samples = args.torchgeo_samples or args.samples

    from rich.console import Console

    console = Console(stderr=True)

    def log(msg: str) -> None:
        console.log(msg)

    began = time.perf_counter()
    load_start = list(os.getloadavg())
    world = args.world.resolve()
    store = resolve_store(args.store.resolve() if args.store else None, world, log)
    has_torchgeo = not args.no_torchgeo
    if has_torchgeo:
        try:
            import torchgeo  # noqa: F401
        except ImportError as err:
            raise SystemExit(
                f"TorchGeo is not importable here ({err}): run `bash scripts/bench-venv.sh` and "
                "then `.venv-bench/bin/python benchmarks/loader_bench.py` (or pass --no-torchgeo)"
            ) from err

    import zarr

    from las_builder.model.data import LASDataset, ProductSpec, read_index

    index = read_index(store)
    index = index[index["status"] == "ok"].reset_index(drop=True)
    dataset = LASDataset(store, modalities=MODALITIES, products=(PRODUCT,))
    root = zarr.open_group(str(store / "las.zarr"), mode="r")
    s2_bands = [str(b) for b in root["sentinel-2"].attrs["bands"]]
    arrays = [*MODALITIES, ProductSpec.parse(PRODUCT).array]
    zarr_of = [row["zarr_index"] for row in dataset.rows]

    sources = torchgeo_sources(index, world, args.epsg) if has_torchgeo else None
    warm = [store / "las.zarr"]
    if sources is not None:
        warm += [sources["s2_dir"], sources["s1_dir"], sources["label_file"]]
    log(f"warming the page cache: {warm_page_cache(warm) / 2**20:.0f} MiB")

    indices = draw_indices(len(dataset), args.samples, args.seed)
    timings: dict[str, Any] = {"las_loader": {}, "las_loader_shard": {}, "torchgeo": {}}

    log(f"raw Zarr decode: {args.samples} samples, {', '.join(arrays)}")
    timings["raw_zarr"] = run_raw_zarr(
        store, [zarr_of[i] for i in indices], arrays, args.batch_size
    )
    timings["raw_zarr_shard"] = run_raw_zarr_shards(store, arrays, args.samples)
    for w in workers:
        log(f"LAS loader, {w} workers: {args.samples} samples")
        timings["las_loader"][str(w)] = run_las(dataset, indices, args.batch_size, w)
        log(f"LAS loader + ShardBatchSampler, {w} workers: {args.samples} samples")
        timings["las_loader_shard"][str(w)] = run_las_shards(
            dataset, args.samples, args.batch_size, w, args.seed
        )
        if sources is not None:
            log(f"TorchGeo, {w} workers: {tg_samples} samples")
            timings["torchgeo"][str(w)] = run_torchgeo(
                sources, s2_bands, tg_samples, args.batch_size, w, args.seed
            )

    las = {w: v["samples_per_s"] for w, v in timings["las_loader"].items()}
    raw = timings["raw_zarr"]["samples_per_s"]
    vs_tg = {w: las[w] / v["samples_per_s"] for w, v in timings["torchgeo"].items()}
    las_shard = {w: v["samples_per_s"] for w, v in timings["las_loader_shard"].items()}
    shard_vs_tg = {w: las_shard[w] / v["samples_per_s"] for w, v in timings["torchgeo"].items()}
    tg_setup: dict[str, Any] = {"skipped": True}
    if sources is not None:
        tg_setup = {
            **{k: v for k, v in sources.items() if not k.endswith(("_dir", "_file"))},
            "paths": {
                k: str(Path(v).relative_to(ROOT) if Path(v).is_relative_to(ROOT) else v)
                for k, v in sources.items()
                if k.endswith(("_dir", "_file"))
            },
            "crs": f"EPSG:{sources['epsg']} (the Sentinel-2 scene's; the others warp into it)",
            "res": RES_M,
            "size_px": SIZE_PX,
            "s2_bands": s2_bands,
            "s1_bands": ["vv", "vh"],
            "sampler": "RandomGeoSampler(size=128, units=PIXELS)",
            "collate": "torchgeo.datasets.stack_samples",
        }
    results: dict[str, Any] = {
        "machine": machine(),
        "store": {
            "path": str(store.relative_to(ROOT) if store.is_relative_to(ROOT) else store),
            "samples_ok": len(dataset),
            "shape": list(dataset.shape),
            "modalities": list(MODALITIES),
            "products": [PRODUCT],
            "arrays": arrays,
            "samples_per_zone": {str(k): int(v) for k, v in sorted(Counter(index["epsg"]).items())},
        },
        "world": str(world.relative_to(ROOT) if world.is_relative_to(ROOT) else world),
        "config": {
            "samples": args.samples,
            "torchgeo_samples": tg_samples if sources is not None else None,
            "batch_size": args.batch_size,
            "workers": workers,
            "seed": args.seed,
            "skipped_batches": "max(1, 2 * workers) first batches of each epoch are untimed",
            "multiprocessing_context": "fork",
        },
        "timings": timings,
        "ratios": {
            "las_vs_torchgeo": vs_tg,
            "las_vs_torchgeo_target": TARGET_VS_TORCHGEO,
            "las_vs_torchgeo_met": {w: bool(v >= TARGET_VS_TORCHGEO) for w, v in vs_tg.items()},
            "las_shard_vs_torchgeo": shard_vs_tg,
            "las_vs_raw_zarr": {w: v / raw for w, v in las.items()},
            "raw_zarr_per_sample_vs_per_shard": raw / timings["raw_zarr_shard"]["samples_per_s"],
        },
        "torchgeo_setup": tg_setup,
        "notes": [
            "All figures come from this one run and process (DataLoader workers are forked "
            "children); page cache warmed by reading every file once before timing.",
            "LAS loader: LASDataset(modalities=sentinel-2,sentinel-1; products=esa-worldcover "
            "in LAS classes), default collate, random samples drawn with replacement from all "
            "usable samples of every region (same shapes and codecs in every region).",
            "LAS loader + ShardBatchSampler (info): the same dataset and collate, batches of "
            "shuffled samples of shuffled shards (a batch spans one or two shards), epochs "
            "repeated up to --samples; fewer zarr calls per batch, less mixed batches.",
            "Raw Zarr: the same sample sequence and arrays read with zarr into numpy, arrays "
            "opened once, no torch and no normalisation, one process; it bounds the loader "
            "with 0 workers. The per-shard figure reads 8 samples per zarr call (info).",
            "TorchGeo reads ONE region / UTM zone (torchgeo_setup): one Sentinel-2 scene (12 "
            "band files at 10/20/60 m, bilinear-resampled to 10 m), one Sentinel-1 scene "
            "(vv, vh) and the WorldCover tile (EPSG:4326, warped into the UTM zone on the "
            "fly, nearest), i.e. the scenes most of that region's store samples were built "
            "from, so every query reads one file per band as the store has one scene per "
            "sample. Restricting to one zone avoids TorchGeo warping other zones' scenes "
            "into one CRS.",
            "TorchGeo idiom: its Sentinel2 class (glob, regex, bands, resolutions) with "
            "_update_filepath adapted to the world's flat scene folders (no R20m/ folders), "
            "RasterDataset subclasses with filename_glob/filename_regex/separate_files/"
            "is_image for Sentinel-1 and WorldCover, '&' intersection, RandomGeoSampler, "
            "stack_samples, res=10, cache=True (its LRU of open file handles).",
            "TorchGeo returns raw float32 DN and native WorldCover codes; LAS returns "
            "normalised float32 and LAS-class indices: each loader does its own idiomatic "
            "work per sample. The reprojection/resampling TorchGeo does per sample is what "
            "the LAS build did once, ahead of training.",
            "Targets are reported, never asserted. Ratios use the same worker count on both "
            "sides. A 2-core machine: 2 workers compete with the main process.",
        ],
    }
    results["machine"]["loadavg_start"] = load_start
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["total_s"] = time.perf_counter() - began
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
    print_table(results)
    log(f"results written to {args.results}  (total {results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
