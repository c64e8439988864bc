"""``las build``: a Dask graph with one task per shard, resumable shard by shard."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import dataclasses
import datetime as dt
import functools
import gc
import itertools
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import dask
import fsspec
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyproj
import shapely
from shapely import wkb

from las_builder import __version__
from las_builder.build.config import BuildConfig
from las_builder.build.read import (
    DatasetCache,
    close_pooled_datasets,
    gdal_env,
    read_pool_threads,
    samples_at_once,
)
from las_builder.build.sample import SampleOutcome, build_sample, build_sample_earthengine
from las_builder.build.search import ParsedItems, SearchError, StacSearcher
from las_builder.build.store import (
    ArraySpec,
    abort_unfinished_uploads,
    array_specs,
    build_lock,
    check_output_paths,
    create_store,
    describe_storage_error,
    direct_arrays,
    discard_index,
    done_shards,
    index_part_path,
    normalize_output,
    plan_digest,
    storage_access,
    store_complete,
    whole_or_absent,
    write_index_part,
    write_shard,
)
from las_builder.security import install_log_redaction, redact
from las_builder.stac import SceneItem, parse_item
from las_builder.stac.signing import SigningError, make_signer
from las_builder.zarr_shards import ShardedArray

log = logging.getLogger(__name__)

_SHARD_ERRORS_SHOWN = 3


class BuildIncomplete(ValueError):  # noqa: N818 - the CLI reports ValueErrors as one-line errors
    """Some shards could not be built (STAC down, signing failed, store unwritable ...).

    The other shards are built and indexed; the failed ones have no index part, so running
    ``las build`` again builds exactly them.
    """


def _failed_sample(err: Exception) -> SampleOutcome:
    """An unexpected error of one sample, recorded instead of crashing the shard."""
    log.exception("unexpected error while building a sample")
    return SampleOutcome("failed", f"unexpected {type(err).__name__}: {err}")


_searchers: dict[tuple[str, str, int], StacSearcher] = {}
_parsed_items: dict[tuple[str, str], ParsedItems] = {}
_searchers_lock = threading.Lock()


def _searcher(cfg: BuildConfig) -> StacSearcher:
    """The STAC client of this build and thread.

    The catalog root and collections are fetched once per build, not once per shard, and a new
    build (a retry after an outage) starts afresh. The parsed items are shared by the build's
    threads.
    """
    key = (cfg.stac_url, cfg.run_id, threading.get_ident())
    with _searchers_lock:
        if key not in _searchers:
            for old in [k for k in _searchers if k[1] != cfg.run_id]:
                del _searchers[old]  # earlier builds' clients
            for old_items in [k for k in _parsed_items if k[1] != cfg.run_id]:
                del _parsed_items[old_items]
            parsed = _parsed_items.setdefault((cfg.stac_url, cfg.run_id), ParsedItems())
            _searchers[key] = StacSearcher(cfg.stac_url, parsed=parsed)
        return _searchers[key]


def _search_shard(rows: list[dict[str, Any]], cfg: BuildConfig) -> dict[str, list[SceneItem]]:
    """One search per collection for all the samples of a shard."""
    searcher = _searcher(cfg) if cfg.run_id else StacSearcher(cfg.stac_url)
    footprints = [row["geometry"] for row in rows]
    found: dict[str, list[SceneItem]] = {}
    if cfg.s2_collection:
        found[cfg.s2_collection] = searcher.search(
            cfg.s2_collection, footprints, cfg.start, cfg.end
        )
    if cfg.s1_collection:
        # Sentinel-1 is matched to the Sentinel-2 date, which may sit at the window's edge.
        margin = dt.timedelta(days=30)
        found[cfg.s1_collection] = searcher.search(
            cfg.s1_collection, footprints, cfg.start - margin, cfg.end + margin
        )
    if cfg.naip_collection:
        found[cfg.naip_collection] = searcher.search(cfg.naip_collection, footprints)
    for spec in cfg.labels:
        if spec.collection not in found:
            found[spec.collection] = searcher.search(spec.collection, footprints)
    return found


def _index_row(row: dict[str, Any], outcome: SampleOutcome, cfg: BuildConfig) -> dict[str, Any]:
    """The index row of a sample: plan row, status, reason (redacted) and record.

    Every column of :meth:`BuildConfig.record_columns` is there, in that order.
    """
    return {
        **{k: v for k, v in row.items() if k != "geometry"},
        "geometry": wkb.dumps(row["geometry"]),
        "status": outcome.status,
        "reason": redact(outcome.reason),
        "zarr_index": row["plan_index"],
        **dict.fromkeys(cfg.record_columns()),
        **outcome.record,
    }


class _ShardArrays:
    """A shard's arrays, filled sample by sample from the threads that build them.

    Arrays of the store's own layout (one inner chunk per sample: :func:`direct_arrays`) are
    kept as each sample's compressed chunk, made as the sample arrives (zstd releases the
    GIL, so the sample threads compress in parallel): a shard's raw arrays never exist whole,
    nor twice (an aerial-image shard is 13 MB raw at 64 px, 52 MB at 128 px). Other arrays are
    allocated (at their fill value) when a sample first brings data.
    """

    def __init__(
        self, specs: dict[str, ArraySpec], count: int, direct: dict[str, ShardedArray]
    ) -> None:
        self._specs = specs
        self._count = count
        self._direct = direct
        self._lock = threading.Lock()
        self.filled: dict[str, np.ndarray] = {}
        self.encoded: dict[str, list[bytes | None]] = {}

    def put(self, slot: int, arrays: dict[str, np.ndarray]) -> None:
        """Place one sample's arrays (paths the store lacks are ignored) in its slot."""
        for path, data in arrays.items():
            spec = self._specs.get(path)
            if spec is None:
                continue
            sharded = self._direct.get(path)
            if sharded is not None:
                # Placed in a chunk at the fill value, exactly as in a whole shard's array.
                chunk = np.full((1, *spec.shape), spec.fill, dtype=spec.dtype)
                chunk[0] = data
                compressed = sharded.encode_chunk(chunk)
                with self._lock:
                    self.encoded.setdefault(path, [None] * self._count)[slot] = compressed
                continue
            with self._lock:
                if path not in self.filled:
                    shape = (self._count, *spec.shape)
                    self.filled[path] = np.full(shape, spec.fill, dtype=spec.dtype)
            self.filled[path][slot] = data

    @property
    def empty(self) -> list[str]:
        """Array paths no sample of the shard brought data to (wholly fill value)."""
        return [path for path in self._specs if path not in self.filled | self.encoded]

    def write(self, url: str, start: int, run_id: str) -> None:
        """Write the shard's arrays (:func:`write_shard`), letting go of each once written."""
        empty = self.empty
        filled, self.filled = self.filled, {}
        encoded, self.encoded = self.encoded, {}
        write_shard(url, start, filled, empty, run_id, encoded=encoded)


def _build_rows_earthengine(
    rows: list[dict[str, Any]], cfg: BuildConfig, arrays: _ShardArrays, start: int
) -> list[dict[str, Any]]:
    """The samples of a shard from Earth Engine (the client initialises once per process).

    Credentials refused while the shard builds (a key revoked, a token renewal refused) stop
    the shard, unfinished: every sample would fail alike, and as failed samples they would be
    rebuilt only by ``--retry-failed``; an unfinished shard is rebuilt by the next build.
    """
    from las_builder.sources.earthengine import EarthEngineAuthError, EarthEngineSource

    source = EarthEngineSource.from_config(cfg, cfg.ee_auth)
    index_rows = []
    for row in rows:
        try:
            outcome = build_sample_earthengine(row, source, cfg)
        except EarthEngineAuthError:
            raise
        except Exception as err:  # never let one sample crash the build
            outcome = _failed_sample(err)
        if outcome.status == "ok":
            arrays.put(row["plan_index"] - start, outcome.arrays)
        index_rows.append(_index_row(row, outcome, cfg))
    return index_rows


_libc: Any = None
_M_MMAP_THRESHOLD = -3  # mallopt parameters (malloc.h)
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2
"""glibc malloc arenas of a build process (glibc's default: 8 per core)."""
MALLOC_MMAP_THRESHOLD = 1 << 20
"""Allocations from this size (bytes) get their own mapping, returned to the system when freed."""


def _glibc() -> Any:
    """The C library when it is glibc (malloc_trim and mallopt), else None."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
        except OSError:
            libc = None
        _libc = libc if libc is not None and hasattr(libc, "malloc_trim") else False
    return _libc or None


def tune_malloc() -> None:
    """Keep a long build's resident memory from creeping up (glibc only).

    A build allocates and frees the same large arrays shard after shard on many threads. By
    default glibc gives threads arenas of their own (up to 8 per core), each fragmenting on its
    own, and after a large block is freed it raises its mmap threshold, so later arrays of a
    few MB come from those heaps instead of mappings that go back to the system when freed:
    the peak RSS grew from 381 MiB (100 samples) to 709 MiB (2,000). Arenas are capped at
    :data:`MALLOC_ARENAS` and the threshold is pinned at :data:`MALLOC_MMAP_THRESHOLD`, unless
    the ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` environment variables say otherwise.
    Threads made after this call share the capped arenas.
    """
    libc = _glibc()
    if libc is None:
        return
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)


_blas_on_one_thread_in: int | None = None


def blas_on_one_thread() -> None:
    """Keep numpy's BLAS on the threads that call it, in this process from now on.

    The build's matrix products are small (placement lattices: 256 x 9 by 9 x 256) and a
    process per core already keeps the cores busy. OpenBLAS splits such products over threads
    of its own, which then spin waiting for the next call: at 256 px they burnt ~45 % of a
    single-process build's CPU (perf: ``blas_thread_server``), the other core's time that the
    build's other worker needed. Per process, for good: a worker is the build's alone.
    """
    global _blas_on_one_thread_in
    if _blas_on_one_thread_in == os.getpid():
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    _blas_on_one_thread_in = os.getpid()


@contextlib.contextmanager
def objects_of_before_left_to_refcounting() -> Iterator[None]:
    """Spare the cyclic garbage collector the objects that exist when a build starts.

    A build allocates many small containers, so the collector runs often, and each of its
    older passes walks every object the imports made (~150,000: dask, zarr, pandas, pyproj).
    It took 6-7 % of a build's CPU. Frozen (``gc.freeze``), those objects are left out of its
    passes (refcounting still frees them): 2.8 %. Forked workers inherit the freeze. A garbage
    pass first would cost ~75 ms; the few cycles left from the imports wait until the build
    ends, when the objects are unfrozen and collected as before.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def release_freed_memory() -> None:
    """Give the memory a finished shard freed back to the operating system (glibc only).

    glibc keeps freed blocks in its arenas; ``malloc_trim`` returns their free pages, so what
    one shard freed does not stay resident while the next is built.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def build_shard(
    shard: int,
    rows: list[dict[str, Any]],
    cfg: BuildConfig,
    output: str,
    n_samples: int,
    samples_per_shard: int,
) -> list[dict[str, Any]]:
    """Build and write one shard; returns its index rows. Runs as one Dask task.

    A sample that cannot be built is recorded (``skipped`` or ``failed`` with its reason) and
    the shard goes on. Errors that concern the whole shard (the STAC search failed after its
    retries, no signing token) raise: the shard then has no index part and is built again by
    the next run. The arrays are written before the index part, so an index part never exists
    without its arrays.
    """
    install_log_redaction()  # also in dask worker processes
    tune_malloc()
    blas_on_one_thread()
    start = shard * samples_per_shard
    specs = array_specs(cfg)
    store = f"{output.rstrip('/')}/las.zarr"
    arrays = _ShardArrays(
        specs,
        min(samples_per_shard, n_samples - start),
        direct_arrays(store, specs, start, cfg.run_id),
    )
    index_rows = []
    if cfg.backend == "earthengine":
        index_rows = _build_rows_earthengine(rows, cfg, arrays, start)
        arrays.write(store, start, cfg.run_id)
        write_index_part(output, shard, index_rows)  # last: marks the shard complete
        release_freed_memory()
        return index_rows
    cache = DatasetCache(make_signer(cfg.sign), cfg.run_id)
    try:
        with _alone_where_near(), gdal_env():
            items = _search_shard(rows, cfg)

        def one(row: dict[str, Any]) -> SampleOutcome:
            with _alone_where_near(), gdal_env():  # GDAL options are per thread
                try:
                    outcome = build_sample(row, items, cfg, cache)
                except SigningError:
                    raise
                except Exception as err:  # never let one sample crash the build
                    return _failed_sample(err)
            if outcome.status == "ok":  # into the shard now, not held until its last sample
                arrays.put(row["plan_index"] - start, outcome.arrays)
                outcome = dataclasses.replace(outcome, arrays={})
            return outcome

        # Samples are independent: building a few at a time overlaps their reads (network
        # latency) and their decoding and warping (GDAL releases the GIL); where the storage
        # answers at once there is nothing to overlap and one at a time is quickest. Results
        # keep plan order, so the shard is the same whatever the thread count.
        threads = max(1, min(samples_at_once(cfg.read_threads), len(rows)))
        if threads == 1:
            outcomes = [one(row) for row in rows]
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix=f"shard{shard}") as pool:
                outcomes = list(pool.map(one, rows))
        index_rows = [
            _index_row(row, outcome, cfg) for row, outcome in zip(rows, outcomes, strict=True)
        ]
    finally:
        with gdal_env():
            cache.close()
    with _alone_where_near():
        arrays.write(store, start, cfg.run_id)
        write_index_part(output, shard, index_rows)  # last: marks the shard complete
    release_freed_memory()
    return index_rows


_near_sample_lock = threading.Lock()


def _forget_near_sample_lock() -> None:
    global _near_sample_lock
    _near_sample_lock = threading.Lock()  # a thread of the parent may have held it


os.register_at_fork(after_in_child=_forget_near_sample_lock)


@contextlib.contextmanager
def _alone_where_near() -> Iterator[None]:
    """Build one sample at a time in this process where its storage answers at once.

    A worker runs :data:`SHARD_TASKS_PER_WORKER` shard tasks: under latency one's search,
    writing and last slow sample overlap the other's reads. Where the storage answers at once
    there is no waiting to overlap, and two samples built together only take turns at the GIL
    (a hand-off every few milliseconds); one at a time, a shard task waits here between its
    samples while the other's run, and its search and writing still overlap them.
    """
    if read_pool_threads() != (1, 1):
        yield
        return
    with _near_sample_lock:
        yield


_PROGRESS_FIELDS = ("sample_id", "status", "reason")
"""What a shard task reports of each sample (see :func:`_shard_task`)."""


def _shard_task(
    shard: int,
    rows: pa.Table | list[dict[str, Any]],
    cfg: BuildConfig,
    output: str,
    n_samples: int,
    samples_per_shard: int,
) -> dict[str, Any]:
    """:func:`build_shard` as a Dask task: a shard's failure is returned, not raised.

    Returns:
        ``{"shard", "rows", "error"}``: each sample's ``sample_id``, ``status`` and ``reason``
        (the whole rows are in the shard's index part; a task result stays in the scheduler's
        memory until the build ends, so it is kept small), or None and the (redacted) error.
    """
    try:
        built = [
            {key: row[key] for key in _PROGRESS_FIELDS}
            for row in build_shard(
                shard, _plan_rows(rows), cfg, output, n_samples, samples_per_shard
            )
        ]
    except (SearchError, SigningError) as err:
        message = redact(str(err))
    except OSError as err:  # the storage failed after its retries: the error names the object
        message = redact(f"{type(err).__name__}: {err}")
    except Exception as err:  # a store that cannot be written, a bug: report, do not crash
        if type(err).__name__ == "EarthEngineAuthError":  # by name: EE is an optional extra
            message = redact(f"Earth Engine credentials refused: {err}")
        else:
            log.exception("shard %d failed", shard)
            message = redact(f"{type(err).__name__}: {err}")
    else:
        return {"shard": shard, "rows": built, "error": None, **_process_state()}
    log.error("shard %d not built: %s", shard, message)
    return {"shard": shard, "rows": None, "error": message, **_process_state()}


def _peak_rss_mib() -> float | None:
    """The peak resident memory of this process (``VmHWM``), MiB; None without /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _process_state() -> dict[str, Any]:
    """Which process ran a shard task, its peak memory and its read pools (for the summary)."""
    return {
        "process": _process_key(),
        "peak_rss_mib": _peak_rss_mib(),
        "read_threads": list(read_pool_threads()),
    }


def _process_key() -> str:
    """``host:pid``: a process among a cluster's machines."""
    return f"{socket.gethostname()}:{os.getpid()}"


def read_plan(output: str) -> gpd.GeoDataFrame:
    """The plan written by ``las plan`` (``OUTPUT/plan.parquet``)."""
    fs, fs_path = _plan_file(output)
    with storage_access(_plan_url(output), "read"), fs.open(fs_path, "rb") as f:
        # Every parquet file read through a Python file object here is read with
        # use_threads=False: pyarrow's threads reading one could abort the process at exit
        # ("terminate called without an active exception", ~1 run in 10 beside GDAL); the
        # plan, index and its parts are small.
        return gpd.read_parquet(f, use_threads=False)


def _plan_url(output: str) -> str:
    return f"{output.rstrip('/')}/plan.parquet"


def _plan_file(output: str) -> tuple[Any, str]:
    """The plan's file system and path.

    Raises:
        FileNotFoundError: There is no plan.
        OutputUnreachable: The storage cannot be reached or read (credentials, endpoint).
    """
    path = _plan_url(output)
    with storage_access(path, "read"):
        fs, fs_path = fsspec.core.url_to_fs(path)
        if not fs.exists(fs_path):
            raise FileNotFoundError(f"{path} not found: run `las plan RECIPE` first")
    return fs, fs_path


def _plan_columns(output: str, columns: list[str]) -> pa.Table:
    """Columns of the plan (a storage error raises :class:`OutputUnreachable`)."""
    fs, fs_path = _plan_file(output)
    with storage_access(_plan_url(output), "read"), fs.open(fs_path, "rb") as f:
        return pq.read_table(f, columns=columns, use_threads=False)


def plan_shards(output: str) -> list[int]:
    """The shard of each planned sample, in plan order (the plan's ``shard`` column only)."""
    table = _plan_columns(output, ["shard"])
    return [int(s) for s in table.column("shard").to_pylist()]


def _plan_digest(output: str) -> str | None:
    """:func:`~las_builder.build.store.plan_digest` of the plan (None: a plan without ids)."""
    fs, fs_path = _plan_file(output)
    with storage_access(_plan_url(output), "read"), fs.open(fs_path, "rb") as f:
        names = pq.ParquetFile(f).schema_arrow.names
    if not {"plan_index", "sample_id"} <= set(names):
        return None
    table = _plan_columns(output, ["plan_index", "sample_id"]).sort_by("plan_index")
    return plan_digest(str(s) for s in table.column("sample_id").to_pylist())


def check_sources(cfg: BuildConfig, searcher: StacSearcher | None = None) -> None:
    """Fail before any shard when the STAC API lacks what the recipe names.

    A missing collection, a label product's year without any item, or a label asset its
    items do not have would otherwise fail (or, for the year, empty) every sample alike,
    and no rebuild could mend them: they are recipe errors.

    Raises:
        ValueError: Naming the recipe field, what the API has instead, and that nothing was
            built.
    """
    searcher = searcher or StacSearcher(cfg.stac_url)
    url = redact(cfg.stac_url)
    try:
        _ = searcher.client  # opened once, before the threads below share it
    except SearchError as err:
        raise ValueError(f"recipe stac.url: {err}; nothing was built") from None

    def collection(field: str, collection_id: str) -> dict[str, Any]:
        try:
            return searcher.collection(collection_id)
        except SearchError as err:
            raise ValueError(f"recipe {field}: {err}; nothing was built") from None

    def check_parsed(field: str, found: dict[str, Any], items: list[dict[str, Any]]) -> None:
        # A search leaves out an item it cannot parse (with a warning): when none of a few
        # parses, the collection's metadata is not what the build reads, and every sample
        # would be skipped for want of a scene.
        errors = []
        for raw in items:
            try:
                parse_item(raw, found)
            except ValueError as err:
                errors.append(f"item {raw.get('id')}: {err}")
            else:
                return
        if errors:
            raise ValueError(
                f"recipe {field}: none of the first {len(errors)} items of "
                f"{found.get('id')!r} at {url} can be read ({redact(errors[0])}); nothing "
                "was built"
            )

    def check_imagery(field: str, collection_id: str) -> None:
        found = collection(field, collection_id)
        try:
            items = searcher.first_items(collection_id, cfg.start, cfg.end)
        except SearchError as err:
            raise ValueError(f"recipe {field}: {err}; nothing was built") from None
        check_parsed(field, found, items)

    def check_label(i: int) -> None:
        spec = cfg.labels[i]
        where = f"labels[{i}] ({spec.product})"
        found = collection(f"{where}.collection", spec.collection)
        assets = set(found.get("item_assets") or {})
        if spec.year is not None:
            # From one second into the year: items of the year before that end at its first
            # instant (Esri's 2021 maps end 2022-01-01T00:00:00Z) would fill the page.
            start = dt.datetime(spec.year, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
            end = dt.datetime(spec.year, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
            try:
                items = searcher.first_items(spec.collection, start, end)
            except SearchError as err:
                raise ValueError(f"recipe {where}: {err}; nothing was built") from None
            items = [it for it in items if _start_year(it) == spec.year]
            if not items:
                extent = (found.get("extent") or {}).get("temporal", {}).get("interval")
                raise ValueError(
                    f"recipe {where}.year = {spec.year}: collection {spec.collection!r} at {url} "
                    f"has no item of that year (its temporal extent: {extent}); nothing was built"
                )
            check_parsed(f"{where}.collection", found, items)
            if not assets and not any(spec.asset in it.get("assets", {}) for it in items):
                assets = {key for it in items for key in it.get("assets", {})}
        if assets and spec.asset not in assets:
            raise ValueError(
                f"recipe {where}.asset = {spec.asset!r}: the items of {spec.collection!r} have "
                f"no such asset (they have: {', '.join(sorted(assets))}); nothing was built"
            )

    checks: list[Callable[[], object]] = [
        functools.partial(check_imagery, field, collection_id)
        for field, collection_id in (
            ("imagery.sentinel-2.collection", cfg.s2_collection),
            ("imagery.sentinel-1.collection", cfg.s1_collection),
            ("imagery.naip.collection", cfg.naip_collection),
        )
        if collection_id
    ]
    checks += [functools.partial(check_label, i) for i in range(len(cfg.labels))]
    # Together: each check is a round trip or two, serial they cost ~10 of them per build
    # (seconds against a distant API). Results come back in recipe order, so the error
    # raised is the first one in the recipe whatever answered first.
    with ThreadPoolExecutor(max_workers=min(8, len(checks)) or 1) as pool:
        for _ in pool.map(lambda check: check(), checks):
            pass


def _start_year(item: dict[str, Any]) -> int | None:
    """The year an item's time starts in (as the build picks a label product's year)."""
    props = item.get("properties") or {}
    when = props.get("start_datetime") or props.get("datetime")
    try:
        moment = dt.datetime.fromisoformat(str(when))
    except ValueError:
        return None
    return (moment.astimezone(dt.UTC) if moment.tzinfo else moment).year


def check_earthengine(cfg: BuildConfig) -> None:
    """Fail before any shard when Earth Engine cannot serve the recipe.

    That is: a label product or year it does not have, or credentials missing or refused.

    Raises:
        ValueError: The reason, and that nothing was built.
    """
    from las_builder.sources.earthengine import EarthEngineAuthError, EarthEngineSource

    try:
        source = EarthEngineSource.from_config(cfg, cfg.ee_auth)
    except ValueError as err:
        raise ValueError(f"recipe labels (backend earthengine): {err}; nothing was built") from None
    try:
        source.check_sign_in()
    except EarthEngineAuthError as err:
        raise ValueError(f"{err}; nothing was built") from None


def _connect(client_type: Any, address: str) -> Any:
    """A client of the scheduler at ``address``, or a ValueError that says what to check."""
    try:
        return client_type(address)
    except (OSError, TimeoutError, ValueError) as err:
        raise ValueError(
            f"cannot reach the dask scheduler at {address} ({type(err).__name__}: {err}); is "
            "it running, and is this the address it printed (tcp://HOST:PORT)? Without "
            "--scheduler, `las build` starts its own workers"
        ) from None


def _plan_by_shard(output: str) -> tuple[int, dict[int, pa.Table]]:
    """The plan's length and its rows by shard, each shard's rows as a compact Arrow table.

    Not as Python rows: a plan row's footprint (a densified polygon) and arrays are ~12 KB of
    objects but ~1 KB in Arrow, and the build holds every unbuilt shard's rows until its end
    (they are its tasks' arguments), so a plan of 150,000 samples held as rows would take
    gigabytes. A shard's table is made into rows when its task runs (:func:`_plan_rows`).
    """
    fs, fs_path = _plan_file(output)
    with storage_access(_plan_url(output), "read"), fs.open(fs_path, "rb") as f:
        table = pq.read_table(f, use_threads=False)
    order = np.argsort(table.column("plan_index").to_numpy(), kind="stable")
    shards = table.column("shard").to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])
    by_shard: dict[int, list[np.ndarray]] = {}
    for start, stop in zip(starts, [*starts[1:], len(order)], strict=True):
        by_shard.setdefault(int(shards[start]), []).append(order[start:stop])
    # take() copies: each shard's table owns its few rows (a slice would keep, and pickle
    # to a worker, the whole plan).
    return table.num_rows, {s: table.take(np.concatenate(i)) for s, i in by_shard.items()}


def _plan_rows(rows: pa.Table | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A shard's plan rows as dicts, exactly as ``read_plan(...).to_dict("records")`` has them."""
    if isinstance(rows, list):
        return rows
    frame = rows.to_pandas()
    frame["geometry"] = gpd.GeoSeries.from_wkb(frame["geometry"].to_numpy())
    records: list[dict[str, Any]] = gpd.GeoDataFrame(frame, geometry="geometry").to_dict("records")
    return records


class StatusError(ValueError):
    """The output's finished shards do not match its plan (the CLI prints it as one line)."""


def finished_shards(output: str) -> set[int]:
    """The shards that finished: their index part is there, beside a finished store.

    Parts beside a store that is missing or unfinished (``las.zarr`` deleted by hand, as the
    errors about another recipe or plan advise) mark no shard finished: their arrays are gone
    (the build deletes them: :func:`~las_builder.build.store.discard_index`).
    """
    if not store_complete(f"{output.rstrip('/')}/las.zarr"):
        return set()
    return done_shards(output)


def build_status(output: str, shards: Iterable[int], *, check_plan: bool = False) -> dict[str, int]:
    """Done / remaining shards and samples, and ok / skipped / failed samples of finished shards.

    ``ok``, ``skipped`` and ``failed`` count the samples of finished shards only (what
    ``index-parts/`` records); a sample of an unfinished shard is in ``samples_remaining``,
    never counted as done.

    Args:
        output: The build's output folder or URL.
        shards: Each planned sample's shard (:func:`plan_shards`).
        check_plan: Also check that each finished shard holds the plan's samples, and that an
            existing store has the plan's length (``las build --status``): a plan written
            again after the build started would otherwise count another plan's shards as done.

    Raises:
        StatusError: A finished shard's part is unreadable, holds samples the plan does not
            put there or a status other than ok/skipped/failed, or the store's length differs
            from the plan's (``check_plan`` only for the last two plan checks).
    """
    shards = [int(s) for s in shards]
    planned = sorted(set(shards))
    try:
        finished = finished_shards(output)
    except ValueError as err:  # the store's metadata is not JSON
        raise StatusError(str(err)) from None
    done = [s for s in planned if s in finished]
    per_shard = collections.Counter(shards)
    base = output.rstrip("/")
    expected: dict[int, dict[int, str]] = {}
    if check_plan:
        _check_store_length(base, len(shards))
        fs, fs_path = _plan_file(output)
        with fs.open(fs_path, "rb") as f:
            columns = ["shard", "plan_index", "sample_id"]
            plan = pq.read_table(f, columns=columns, use_threads=False).to_pydict()
        for shard, i, sid in zip(plan["shard"], plan["plan_index"], plan["sample_id"], strict=True):
            expected.setdefault(int(shard), {})[int(i)] = str(sid)
    statuses: dict[str, int] = {"ok": 0, "skipped": 0, "failed": 0}
    for s in done:
        path = index_part_path(output, s)
        part = _read_part(output, s, ["status", "plan_index", "sample_id"] if check_plan else None)
        if check_plan:
            _check_part(path, part, expected.get(s, {}), per_shard[s])
        for status, n in part["status"].value_counts(dropna=False).items():
            if status not in statuses:
                raise StatusError(
                    f"{path}: {n} sample(s) with status {status!r}, not ok, skipped or failed; "
                    f"delete it and run `las build` again to rebuild shard {s}"
                )
            statuses[str(status)] += int(n)
    samples_done = sum(per_shard[s] for s in done)
    return {
        "shards": len(planned),
        "shards_done": len(done),
        "shards_remaining": len(planned) - len(done),
        "samples": len(shards),
        "samples_done": samples_done,
        "samples_remaining": len(shards) - samples_done,
        **statuses,
    }


def _read_part(output: str, shard: int, columns: list[str] | None = None) -> pd.DataFrame:
    """The ``status`` column (and ``columns``) of a finished shard's index part.

    Raises:
        StatusError: The part cannot be read, or lacks a column; naming it and what to do.
    """
    path = index_part_path(output, shard)
    try:
        with fsspec.open(path, "rb") as f:
            return pd.read_parquet(f, columns=columns or ["status"], use_threads=False)
    except (OSError, pa.ArrowException, ValueError, KeyError) as err:
        raise StatusError(
            f"{path} is unreadable ({type(err).__name__}: {err}); delete it and run "
            f"`las build` again to rebuild shard {shard}"
        ) from None


_CHANGED_PLAN = (
    "plan.parquet changed after the build started; build the new plan into a new output.path, "
    "or put the old plan.parquet back"
)


def _check_part(path: str, part: pd.DataFrame, plan: dict[int, str], count: int) -> None:
    """Refuse a finished shard whose samples are not the ones the plan puts in it."""
    if len(part) != count:
        raise StatusError(
            f"{path} holds {len(part)} samples where the plan puts {count}: {_CHANGED_PLAN}"
        )
    if {"plan_index", "sample_id"} - set(part.columns):
        return  # a part of an older builder: nothing to compare
    for i, sid in zip(part["plan_index"], part["sample_id"], strict=True):
        if plan.get(int(i)) != str(sid):
            raise StatusError(
                f"{path} holds sample {sid} at plan_index {i}, the plan has "
                f"{plan.get(int(i), 'no sample')} there: {_CHANGED_PLAN}"
            )


def _check_store_length(output: str, planned: int) -> None:
    """Refuse a store made for another plan length (``las build`` itself would refuse it)."""
    path = f"{output}/las.zarr/zarr.json"
    fs, fs_path = fsspec.core.url_to_fs(path)
    if not fs.exists(fs_path):
        return  # not created yet: nothing built
    try:
        with fs.open(fs_path, "rb") as f:
            attrs = json.load(f).get("attributes", {})
    except (OSError, ValueError) as err:
        raise StatusError(f"{path} is unreadable ({type(err).__name__}: {err})") from None
    n = attrs.get("n_samples")
    if isinstance(n, int) and n != planned:
        raise StatusError(
            f"{output}/las.zarr holds {n} samples, plan.parquet {planned}: {_CHANGED_PLAN}"
        )


def reopen_failed_shards(output: str, finished: set[int]) -> set[int]:
    """Mark the finished shards that hold a failed sample unfinished (their index part goes).

    The part is deleted before anything is rebuilt, so a build killed while rebuilding leaves
    the shard unfinished, never indexed with arrays of another attempt. ``index.parquet`` goes
    first: it lists those shards' old rows, which would not describe the arrays of the shards a
    killed retry rebuilt (until a build of the output ends, it reads as a partial build).

    Raises:
        StatusError: A part cannot be read (named); nothing was deleted.
    """
    failing: dict[int, str] = {}
    for shard in sorted(finished):  # every part read before any is deleted
        if (_read_part(output, shard)["status"] == "failed").any():
            failing[shard] = index_part_path(output, shard)
    if failing:
        fs, index_path = fsspec.core.url_to_fs(f"{output.rstrip('/')}/index.parquet")
        if fs.exists(index_path):
            fs.rm_file(index_path)
    for path in failing.values():
        fs, fs_path = fsspec.core.url_to_fs(path)
        fs.rm_file(fs_path)
    reopened = set(failing)
    if reopened:
        log.info("rebuilding %d shards with failed samples", len(reopened))
    return reopened


def run_build(
    cfg: BuildConfig,
    output: str,
    samples_per_shard: int,
    *,
    workers: int | Literal["auto"] | None = None,
    scheduler: str | None = None,
    on_shard: Callable[[int, list[dict[str, Any]]], None] | None = None,
    attrs: dict[str, Any] | None = None,
    client: Any | None = None,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Build every unfinished shard of the plan and write ``index.parquet``.

    Args:
        cfg: Build configuration.
        output: Output folder (local path or ``s3://``).
        samples_per_shard: Samples per Zarr shard (the plan's ``shard`` column agrees).
        workers: Start a dask.distributed LocalCluster of this many worker processes (each
            running :data:`SHARD_TASKS_PER_WORKER` shard tasks at once); ``"auto"``: one per
            usable core (at most one per shard to build) where there are two or more
            (:func:`auto_workers`), else threads; None or 0: threads in this process, one
            shard per core.
        scheduler: Address of an existing dask.distributed scheduler to join.
        on_shard: Called with (shard, [{sample_id, status, reason}]) as each shard finishes
            (progress; the whole rows are in the shard's index part).
        attrs: Extra attributes for the store (recipe name ...).
        client: A connected ``dask.distributed.Client`` to run on (dask-gateway, Coiled,
            dask-kubernetes); it is left open.
        retry_failed: Build again the finished shards that hold a ``failed`` sample (a
            catalog outage, a fixed mapping); ``skipped`` samples stay skipped.

    Returns:
        Sample counts by status and skip reason (the index itself is ``OUTPUT/index.parquet``,
        written without holding it in memory: :func:`write_index`), and ``memory``: the peak
        resident memory of this process and of each process that built shards
        (:func:`_memory_summary`).

    Raises:
        BuildIncomplete: Some shards could not be built; the others are built and indexed,
            and running the build again builds the missing ones.
        BuildLocked: Another build of ``output`` is running (local outputs:
            :func:`~las_builder.build.store.build_lock`).
        ValueError: The plan holds no samples, or the STAC API lacks a collection, a
            year or an asset the recipe names (:func:`check_sources`).
    """
    install_log_redaction()
    tune_malloc()  # before the build's threads exist
    _check_workers(workers, scheduler, client)
    output = normalize_output(output)
    cfg = dataclasses.replace(cfg, run_id=uuid.uuid4().hex)
    shards = plan_shards(output)  # the shard column only: the rows are read after the fork
    if not shards:
        raise ValueError(
            f"{output.rstrip('/')}/plan.parquet holds no samples: nothing to build; "
            "plan again with a recipe whose samples fit in its frame"
        )
    with storage_access(output, "read"):
        check_output_paths(output)
        unbuilt = set(shards) - finished_shards(output)
    if unbuilt:
        if cfg.backend == "stac":
            check_sources(cfg)
        else:
            check_earthengine(cfg)
    with build_lock(output), objects_of_before_left_to_refcounting():
        return _build_planned(
            cfg,
            output,
            shards,
            samples_per_shard,
            workers,
            scheduler,
            on_shard,
            attrs,
            client,
            retry_failed,
        )


def _build_planned(
    cfg: BuildConfig,
    output: str,
    shards: list[int],
    samples_per_shard: int,
    workers: int | Literal["auto"] | None,
    scheduler: str | None,
    on_shard: Callable[[int, list[dict[str, Any]]], None] | None,
    attrs: dict[str, Any] | None,
    client: Any | None,
    retry_failed: bool,
) -> dict[str, Any]:
    """:func:`run_build` once the output is locked."""
    n = len(shards)
    store = f"{output}/las.zarr"
    digest = _plan_digest(output)
    with storage_access(store, "write"):
        if not store_complete(store):  # before the store is marked finished: a kill repeats it
            discard_index(output)
        create_store(
            store,
            n,
            samples_per_shard,
            cfg,
            {"las_builder": __version__, **(attrs or {})},
            plan=digest,
        )
        finished = done_shards(output)
    abort_unfinished_uploads(output)
    if retry_failed:
        finished -= reopen_failed_shards(output, finished)
    todo = sorted(set(shards) - finished)
    log.info("%d shards to build, %d already done", len(todo), len(set(shards)) - len(todo))
    errors: dict[int, str] = {}
    peaks: dict[str, float] = {}  # host:pid -> peak RSS (MiB) of the processes that built shards
    pools: dict[str, list[int]] = {}  # host:pid -> its read pools' sizes after its last shard
    if workers == "auto":
        workers = auto_workers(len(todo)) if client is None and not scheduler else None

    def finished_task(result: dict[str, Any]) -> None:
        if result.get("peak_rss_mib") is not None:
            key = result["process"]
            peaks[key] = max(peaks.get(key, 0.0), result["peak_rss_mib"])
        if result.get("read_threads"):
            pools[result["process"]] = result["read_threads"]
        if result["error"] is not None:
            errors[result["shard"]] = result["error"]
        elif on_shard:
            on_shard(result["shard"], result["rows"])

    indexed: Future[dict[str, Any]] | None = None
    lost: str | None = None  # why the cluster stopped answering, if it did
    if client is not None or scheduler or workers:
        from dask.distributed import Client

        with contextlib.ExitStack() as stack:
            dask_log = logging.getLogger("distributed")
            stack.callback(dask_log.setLevel, dask_log.level)  # quieted after a Ctrl-C
            # A scheduler that goes away makes the client log "Batched Comm Closed" at INFO,
            # with a traceback, before the build can tell; the build says it in one line.
            batched_log = logging.getLogger("distributed.batched")
            stack.callback(batched_log.setLevel, batched_log.level)
            batched_log.setLevel(logging.WARNING)
            # Entered first, left last: the index is written while the cluster closes.
            index_writer = stack.enter_context(ThreadPoolExecutor(1, "las-index"))
            stack.enter_context(dask.config.set(CLUSTER_CONFIG))
            queued = _QUEUED_PER_THREAD_MIN
            cluster = None
            if client is None:
                if scheduler:
                    client = stack.enter_context(_connect(Client, scheduler))
                else:
                    assert isinstance(workers, int)
                    log.info("building on %d worker processes", workers)
                    # Before the plan's rows are read: forked workers start without them.
                    cluster = stack.enter_context(_local_cluster(workers))
                    client = stack.enter_context(Client(cluster))
                    queued = 0
            if cluster is None and todo:
                _check_workers_see(client, store)  # a cluster of other machines, perhaps
            _, by_shard = _plan_by_shard(output)

            def submit(shard: int) -> Any:
                rows = by_shard.pop(shard)
                return client.submit(
                    _shard_task,
                    *(shard, rows, cfg, output, n, samples_per_shard),
                    key=f"las-shard-{shard}-{cfg.run_id}",
                )

            # Workers forked from this process inherit its freeze; an existing cluster's
            # freeze for the build (objects_of_before_left_to_refcounting).
            _run_on_workers(client, gc.freeze, "freeze the objects before the build")
            interrupted = False
            try:
                _run_submitted(client, todo, submit, finished_task, queued)
            except _SchedulerLost as err:
                lost = str(err)
                # The error says it; dask's client would go on logging its reconnect tries.
                dask_log.setLevel(logging.CRITICAL)
            except KeyboardInterrupt:
                interrupted = cluster is not None
                if interrupted:
                    _end_workers_now(cluster)
                raise
            finally:
                if not interrupted:
                    _run_on_workers(client, close_pooled_datasets, "close the pooled datasets")
                    _run_on_workers(client, gc.unfreeze, "unfreeze the objects")
            if not errors and lost is None:
                # Both are the driver's alone, after the last shard (~50 ms each on the demo
                # plan): the index needs only the shards' parts, the cluster's close waits on
                # its processes.
                indexed = index_writer.submit(write_index, output, cfg.record_columns())
    else:
        from dask.base import compute
        from dask.callbacks import Callback
        from dask.delayed import delayed

        class _Progress(Callback):
            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
                if isinstance(result, dict) and {"shard", "rows", "error"} <= result.keys():
                    finished_task(result)

        _, by_shard = _plan_by_shard(output)
        tasks = [
            delayed(_shard_task, pure=False)(s, by_shard[s], cfg, output, n, samples_per_shard)
            for s in todo
        ]
        try:
            with _Progress():  # type: ignore[no-untyped-call]  # dask's __init__ is untyped
                compute(*tasks, scheduler="threads")
        finally:
            close_pooled_datasets()
    if not errors and lost is None:
        return {
            **(
                indexed.result()
                if indexed is not None
                else write_index(output, cfg.record_columns())
            ),
            "memory": _memory_summary(peaks),
            # [I/O, source] threads per process that built shards, as its storage set them.
            "read_threads": [pools[key] for key in sorted(pools)],
        }
    built = done_shards(output)
    if built:
        write_index(output, cfg.record_columns())  # what is built so far
    if lost is not None:
        planned = set(shards)
        raise BuildIncomplete(
            f"{lost}; {len(built & planned)} of {len(planned)} shards are built and kept: run "
            "`las build` again once the cluster is back (or without --scheduler, on this "
            "machine) to build the rest"
        )
    shown = "; ".join(f"shard {s}: {errors[s]}" for s in sorted(errors)[:_SHARD_ERRORS_SHOWN])
    more = len(errors) - _SHARD_ERRORS_SHOWN
    raise BuildIncomplete(
        f"{len(errors)} of {len(set(shards))} shards were not built ({shown}"
        f"{f'; {more} more' if more > 0 else ''}); run `las build` again to build them"
    )


def _check_workers(
    workers: int | Literal["auto"] | None, scheduler: str | None, client: Any | None
) -> None:
    """Refuse worker counts that mean nothing, or a count for a cluster started elsewhere.

    Raises:
        ValueError: Naming the option and what it takes.
    """
    if workers is None or workers == "auto":
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(
            f"--workers {workers!r}: give a number of worker processes, 0 for threads in this "
            "process, or leave it out for one per core"
        )
    if scheduler or client is not None:
        where = f"--scheduler {scheduler}" if scheduler else "the client given"
        raise ValueError(
            f"--workers {workers} starts workers on this machine, {where} builds on a cluster "
            "started elsewhere: give one of them"
        )


def _output_seen(store: str, expected: bytes) -> str | None:
    """On a worker: None where it reads the build's store as the build does, else why not.

    Args:
        store: The store's URL or absolute path.
        expected: Its ``zarr.json`` as the build's own process reads it.
    """
    install_log_redaction()
    url = f"{store}/zarr.json"
    try:
        fs, path = fsspec.core.url_to_fs(url)
        seen = fs.cat_file(path)
    except FileNotFoundError:
        return f"{url} does not exist there"
    except Exception as err:  # every error is the answer here, reported by the build
        return f"cannot read {url} ({describe_storage_error(err)})"
    if seen != expected:
        return f"{url} is another store's there"
    return None


def _check_workers_see(client: Any, store: str) -> None:
    """Fail before any shard when a worker of the cluster cannot read the build's store.

    A cluster started elsewhere may run on other machines: a local output path is then
    another folder (or none) on each of them, and a worker without the credentials or the
    endpoint cannot reach object storage. Every shard would fail alike.

    Raises:
        ValueError: Naming a worker, what it found and what to do; nothing was built.
    """
    with storage_access(store, "read"):
        fs, path = fsspec.core.url_to_fs(f"{store}/zarr.json")
        expected = fs.cat_file(path)
    try:
        seen = client.run(_output_seen, store, expected)
    except Exception as err:  # the workers could not run las-builder's code at all
        raise ValueError(
            f"the cluster's workers could not check that they reach {store} "
            f"({type(err).__name__}: {redact(str(err))}): every worker needs the same "
            "las-builder as this process (docs/cluster.md); nothing was built"
        ) from None
    failed = {worker: why for worker, why in seen.items() if why}
    if not failed:
        return
    worker, why = sorted(failed.items())[0]
    if "://" not in store:
        fix = (
            "a local output.path is only right for one machine: write to storage that every "
            "worker reaches (output.path: s3://BUCKET/PREFIX), see docs/cluster.md"
        )
    else:
        fix = (
            "give every worker the same credentials and AWS_ENDPOINT_URL as this process "
            "(docs/cluster.md, 'What every worker needs')"
        )
    raise ValueError(
        f"{len(failed)} of {len(seen)} workers of the cluster cannot read the output "
        f"(worker {worker}: {why}): {fix}; nothing was built"
    )


def _end_workers_now(cluster: Any) -> None:
    """After a Ctrl-C: end the worker processes of the cluster this build started, at once.

    A shard is complete or absent whatever moment its worker ends at (as after ``kill -9``),
    so nothing is lost; closing the cluster politely instead would have each worker log its
    cancelled tasks and its lost scheduler, with tracebacks, over the user's terminal.
    """
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # the scheduler's complaints
    for nanny in list(getattr(cluster, "workers", {}).values()):
        pid = getattr(nanny, "pid", None)
        if isinstance(pid, int):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _run_on_workers(client: Any, call: Callable[[], Any], what: str) -> None:
    """``call()`` on each of the cluster's workers; one gone (and its state with it) is logged."""
    try:
        client.run(call)
    except Exception as err:
        log.info("could not %s on every worker: %s", what, err)


_QUEUED_PER_THREAD = 2
"""Shard tasks a cluster holds per worker thread (running and queued), so that a task is
ready wherever one ends but the scheduler does not hold every task of the plan: each costs the
driver ~75 KB (its rows, its state in the scheduler and the client), ~1.4 GB for the full LAS's
18,750 shards if all were submitted at once."""
_QUEUED_PER_THREAD_MIN = 256
"""At least this many tasks queued on a cluster this build did not start: an adaptive cluster
(dask-gateway, Coiled, dask-kubernetes) scales with the work it sees waiting."""


class _SchedulerLost(Exception):  # noqa: N818 - a state, raised to leave the loop
    """The client lost its scheduler: the tasks submitted are cancelled, no new one runs."""


def _run_submitted(
    client: Any,
    todo: list[int],
    submit: Callable[[int], Any],
    finished: Callable[[dict[str, Any]], None],
    at_least: int,
) -> None:
    """Run the shard tasks on a cluster, a bounded number submitted at a time.

    Args:
        client: The cluster's client.
        todo: Shards to build, in order.
        submit: Submits one shard's task; returns its future.
        finished: Called with each task's result as it arrives.
        at_least: The fewest tasks to keep submitted, whatever the cluster's size now.

    A task that ends in an error of the cluster's (``KilledWorker``: each worker that ran it
    died) is reported as that shard's error, as a shard's own failure is.

    A cluster without workers (all died, or an adaptive one scaled to none) would keep the
    build waiting without a word: after :data:`NO_WORKERS_WARN_S` a warning says so, and
    again each time as long again passes (an autoscaler may still bring workers: not an error).

    Raises:
        _SchedulerLost: The client lost the scheduler (its tasks were cancelled).
    """
    from dask.distributed import as_completed

    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
    window = max(_QUEUED_PER_THREAD * max(threads, 1), at_least)
    waiting = iter(todo)
    shard_of: dict[Any, int] = {}

    def start(shard: int) -> Any:
        future = submit(shard)
        shard_of[future.key] = shard
        return future

    futures = as_completed([start(s) for s in itertools.islice(waiting, window)])
    left = [len(todo)]
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_workers, args=(client, stop, left), name="las-workers", daemon=True
    )
    watcher.start()
    try:
        _collect(client, futures, shard_of, waiting, start, finished, left)
    finally:
        stop.set()
        watcher.join()


def _collect(
    client: Any,
    futures: Any,
    shard_of: dict[Any, int],
    waiting: Iterator[int],
    start: Callable[[int], Any],
    finished: Callable[[dict[str, Any]], None],
    left: list[int],
) -> None:
    """Hand each finished shard task's result to ``finished``; submit the next shard."""
    from concurrent.futures import CancelledError

    for future in futures:
        shard = shard_of.pop(future.key)
        try:
            result = future.result()
        except CancelledError as err:
            reason = getattr(err, "reason", None) or "cancelled"
            address = getattr(getattr(client, "scheduler", None), "address", None) or "?"
            raise _SchedulerLost(
                f"lost the dask scheduler at {address} while shards were building ({reason})"
            ) from None
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            result = {
                "shard": shard,
                "rows": None,
                "error": redact(f"{type(err).__name__}: {first}"),
            }
        future.release()  # the scheduler forgets the task and its result
        left[0] -= 1
        finished(result)
        following = next(waiting, None)
        if following is not None:
            futures.add(start(following))


NO_WORKERS_WARN_S = 60.0
"""Seconds a cluster may have no worker, shards waiting, before the build warns (and again)."""
_NO_WORKERS_CHECK_S = 5.0


def _watch_workers(client: Any, stop: threading.Event, left: list[int]) -> None:
    """Warn while the cluster has no worker and shards wait (see :func:`_run_submitted`)."""
    idle_since: float | None = None
    warned_at: float | None = None
    address = getattr(getattr(client, "scheduler", None), "address", None) or "the scheduler"
    while not stop.wait(min(_NO_WORKERS_CHECK_S, NO_WORKERS_WARN_S)):
        try:
            workers = len(client.scheduler_info()["workers"])
        except Exception:  # a lost scheduler is the collecting loop's to report
            continue
        now = time.monotonic()
        if workers:
            if warned_at is not None:
                log.warning("%d dask workers connected to %s: building again", workers, address)
            idle_since = warned_at = None
            continue
        idle_since = now if idle_since is None else idle_since
        due = warned_at is None or now - warned_at >= NO_WORKERS_WARN_S
        if now - idle_since >= NO_WORKERS_WARN_S and due:
            warned_at = now
            log.warning(
                "no dask worker connected to %s for %.0f s; %d shards wait: start workers "
                "(`dask worker %s`) or press Ctrl-C (the same command resumes)",
                *(address, now - idle_since, left[0], address),
            )


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_workers(shards: int) -> int | None:
    """Worker processes for ``las build`` on this machine: one per core, None for threads.

    A threaded build is held by Python's GIL (rasterio's set-up of each warp, the opens and
    the Python that drives them), so it keeps ~1.5 of 2 cores busy; a process per core builds
    ~40 % more samples per second on 2 cores. With one core, or one shard to build, there is
    nothing to share out and threads start at once.
    """
    n = min(usable_cores(), shards)
    return n if n >= 2 else None


CLUSTER_CONFIG: dict[str, Any] = {
    # Every connection (client -> scheduler, scheduler -> each worker) keeps its last this-many
    # messages for debugging, and a shard task's message carries its plan rows (~35 KB): by
    # default 1,000 of them per worker in the scheduler, growing with the build until then.
    "distributed.admin.low-level-log-length": 16,
    # The statistical profiler samples every worker thread's stack each 10 ms, holding the
    # GIL that the build's threads want, and keeps an hour of it (~10 MiB more per worker after
    # 1,000 samples). Nobody reads it in a build.
    "distributed.worker.profile.enabled": False,
    # Every scheduler, nanny and worker wakes its event loop each 20 ms only to time it (a
    # warning past 3 s), each nanny and worker checks its worker's memory each 100 ms, and each
    # samples CPU and network use for a dashboard each 500 ms: 4.7 % of a core in an idle
    # 2-worker LocalCluster's driver and 3.7 % in its workers, wake-ups that take the GIL from
    # the build's threads. At these intervals 0.8 % and 0.3 %; memory is still checked twice a
    # second (the build's workers hold a few hundred MiB).
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
}
"""Dask settings of a distributed build, in this process (client, and a LocalCluster's
scheduler and workers); a cluster started elsewhere keeps its own (docs/cluster.md)."""

SHARD_TASKS_PER_WORKER = 2
"""Shard tasks each worker process of a LocalCluster runs at once (its Dask threads).

One task's shard ends with a slow sample or two (an aerial image under latency: 0.5 s alone of
a 1.1 s shard) and starts with its search and first opens; a second task's samples fill those
gaps. Under 20 ms of latency the demo build took 12-16 % less time than with one task a worker,
at the same CPU; on a loopback server, where the two take turns (:func:`_alone_where_near`),
the same time."""

WORKER_START_METHOD_ENV = "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"
"""Set it (``spawn``, ``forkserver``, ``fork``) to choose how local workers start."""


PARENT_POLL_S = 0.5
"""How often a forked worker checks that the build that started it is still there."""

_parent_watch_installed = False
_forking_pid = 0  # set in the parent just before each fork, read by the child


def _remember_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _exit_with_parent() -> None:
    """In a process just forked from the build: exit as soon as the build is gone.

    Dask ends a worker whose parent dies by waiting for its end of a pipe to close, but a
    forked worker also inherits the pipes of the workers forked beside it. When two workers'
    pipes are made before either is forked, each holds the other's open, neither hears the
    build die, and both live on as orphans after a ``kill -9`` (seen in the kill-and-resume
    test). The parent's pid does not lie: an orphan is re-parented. It is the pid the parent
    noted before the fork: a parent killed before the child first ran would make the child's
    own ``getppid()`` the new parent's (PID 1), and the child would watch that one instead.

    It also ignores SIGINT: a Ctrl-C in the terminal reaches the whole process group, and the
    build's process, which stops its cluster, is the one to act on it (a worker would only
    print the traceback of its cancelled tasks).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = _forking_pid

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="las-parent-watch", daemon=True).start()


_held_for_fork: list[logging.Handler] = []


def _hold_log_handlers() -> None:
    """Before a fork: take every logging handler's lock, so no thread is inside ``emit``.

    A thread writing a record while the cluster forks a worker leaves the stream's buffer lock
    held in the child for ever (CPython does not reset ``io`` locks after a fork; logging only
    resets its handlers' own locks): the worker's first log line then hangs it, and the build
    waits for it without end (seen under pytest, whose root handler writes to ``/dev/null``).
    Handlers take their lock around each write, so holding them all keeps the buffers free.
    """
    handlers = [ref() for ref in list(logging._handlerList)]  # type: ignore[attr-defined]
    for handler in handlers:
        if handler is not None and handler.lock is not None:
            handler.acquire()
            _held_for_fork.append(handler)


def _release_log_handlers() -> None:
    """After a fork, in the parent (the child's locks are reset by logging itself)."""
    while _held_for_fork:
        _held_for_fork.pop().release()


def _forget_held_log_handlers() -> None:
    """After a fork, in the child: logging has reset those locks; forget them."""
    _held_for_fork.clear()


def _forked_children_exit_with_this_process() -> None:
    """Make every process forked from now on exit when this one is gone (once per process).

    Also keep log writes and forks apart (:func:`_hold_log_handlers`).
    """
    global _parent_watch_installed
    if not _parent_watch_installed:
        os.register_at_fork(before=_remember_forking_pid, after_in_child=_exit_with_parent)
        os.register_at_fork(
            before=_hold_log_handlers,
            after_in_parent=_release_log_handlers,
            after_in_child=_forget_held_log_handlers,
        )
        _parent_watch_installed = True


def _local_cluster(workers: int) -> Any:
    """A LocalCluster of ``workers`` processes, forked on Linux.

    Each runs :data:`SHARD_TASKS_PER_WORKER` shard tasks at once; where its storage answers at
    once they take turns, a sample at a time (:func:`_alone_where_near`).

    Spawned workers import the whole build again (~3 s of CPU each, as long as a 100-sample
    build's gain from a second process); forked ones start as copies of this process with
    its imports done. This process runs no reads or warps before the fork, and the state it
    shares is made again in the children (the read and codec pools are per process, zarr and
    fsspec reset their event loops at fork, the build lock's descriptor is closed:
    :func:`~las_builder.build.store.build_lock`). Other systems keep dask's default (spawn;
    fork is unsafe on macOS), as does a start method set in :data:`WORKER_START_METHOD_ENV`.
    Forked workers exit when this process is gone, even if killed (:func:`_exit_with_parent`).
    """
    from dask.distributed import LocalCluster

    settings = {}
    if sys.platform == "linux" and WORKER_START_METHOD_ENV not in os.environ:
        settings["distributed.worker.multiprocessing-method"] = "fork"
    with dask.config.set(settings):
        if dask.config.get("distributed.worker.multiprocessing-method") == "fork":
            _forked_children_exit_with_this_process()
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=SHARD_TASKS_PER_WORKER,
            processes=True,
            dashboard_address=None,
        )


def _memory_summary(peaks: dict[str, float]) -> dict[str, Any]:
    """Peak resident memory of the build: this process and the processes that built shards.

    ``total_peak_rss_mib`` adds the processes' peaks, an upper bound of the build's memory
    (they need not peak together, and forked workers share their parent's unchanged pages,
    counted in each).
    """
    here = _process_key()
    workers = {key: mib for key, mib in peaks.items() if key != here}
    own = max(_peak_rss_mib() or 0.0, peaks.get(here, 0.0))
    return {
        "processes": 1 + len(workers),
        "driver_peak_rss_mib": round(own, 1),
        "worker_peak_rss_mib": [round(mib, 1) for _, mib in sorted(workers.items())],
        "total_peak_rss_mib": round(own + sum(workers.values()), 1),
    }


INDEX_ROW_GROUP_ROWS = 256
"""Rows per row group of ``index.parquet`` (at least; whole shard parts are not split).

Parquet's encoder holds ~4x a row group's data while it writes it: 1,024 rows (~1.5 KB each)
took the index step 39 MiB above the build, 256 rows 27 MiB, as for a 100-sample build's
single group. The full LAS's index then has ~600 row groups and a ~4 MB footer (7 KB each),
small beside its ~200 MB of rows."""


def write_index(output: str, types: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Stream the shard parts into ``OUTPUT/index.parquet`` (GeoParquet, plan order).

    Only one row group's parts (:data:`INDEX_ROW_GROUP_ROWS` rows) are in memory at a time, so
    the index step needs about the same memory for the full LAS's 18,750 parts as for a few
    hundred (a pandas concat of every part held the whole index, twice, at the end of the
    build). Shards are contiguous runs of
    the plan (``shard = plan_index // samples_per_shard``), so parts in shard order, each in
    ``plan_index`` order, are the plan's order. Parts whose columns differ (a shard without
    aerial imagery, a column all null) are brought to one schema as a concat would.

    Args:
        output: The dataset's folder or URL.
        types: Arrow types (``string``, ``double`` ...) by column, for columns null in every
            part (no NAIP image anywhere, every sample skipped): typed, not ``null``.

    Returns:
        The index's :func:`summarise` counts.

    Raises:
        BuildIncomplete: No shard is built yet.
    """
    finished = done_shards(output)
    paths = [index_part_path(output, s) for s in sorted(set(plan_shards(output))) if s in finished]
    if not paths:
        raise BuildIncomplete(f"{output}: no shard is built yet")
    schemas: list[pa.Schema] = []  # the distinct ones: parts mostly share a few
    for path in paths:  # footers only
        with fsspec.open(path, "rb") as f:
            schema = _part_schema(pq.ParquetFile(f))
        if schema not in schemas:
            schemas.append(schema)
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as err:
        raise ValueError(
            f"{output}: the shards' index parts disagree on a column's type ({err}); "
            "rebuild the shards of an older las-builder (delete their index-parts/*.parquet)"
        ) from None
    for name, type_name in (types or {}).items():
        i = schema.get_field_index(name)
        if i >= 0 and pa.types.is_null(schema.field(i).type):
            schema = schema.set(i, pa.field(name, pa.type_for_alias(type_name)))
    geo = _GeoColumnStats()
    counts = _SummaryCounts()
    # No ARROW:schema in the footer: without it readers take the file's key-value metadata as
    # the schema's, so the "geo" metadata, known only once every part is read, is found by
    # pyarrow as by geopandas (the columns' types are plain Parquet ones either way). A build
    # killed while writing it leaves no half index for a reader to trip on.
    with (
        whole_or_absent(f"{output.rstrip('/')}/index.parquet") as sink,
        pq.ParquetWriter(sink, schema, store_schema=False) as writer,
    ):
        batch: list[pa.Table] = []
        for i, path in enumerate(paths):
            with fsspec.open(path, "rb") as f:
                part = _conform(pq.read_table(f, use_threads=False), schema)
            part = part.sort_by("plan_index")
            geo.add(part.column("geometry"))
            counts.add(part.column("status"), part.column("reason"))
            batch.append(part)
            if sum(len(t) for t in batch) >= INDEX_ROW_GROUP_ROWS or i == len(paths) - 1:
                # row groups of whole parts: few (a footer of 18,750 row groups is itself
                # megabytes, in the writer's memory and every reader's), each still small
                writer.write_table(pa.concat_tables(batch), row_group_size=2**31 - 1)
                batch = []
                pa.default_memory_pool().release_unused()  # the encoder's pages, ~4x the data
        writer.add_key_value_metadata({"geo": json.dumps(geo.metadata())})
    return counts.summary()


def _part_schema(part: pq.ParquetFile) -> pa.Schema:
    """An index part's schema, with its all-null columns typed ``null``.

    pandas writes a column that is missing in every row of a shard (no aerial image under any
    of its samples) as ``double``, where other shards hold strings; null-typed, it takes the
    other shards' type.
    """
    schema = part.schema_arrow.remove_metadata()
    meta = part.metadata
    nulls: dict[str, int] = {}
    for r in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            column = meta.row_group(r).column(c)
            stats = column.statistics
            if "." in column.path_in_schema or stats is None or not stats.has_null_count:
                continue  # a nested column, or no count: keep its type
            nulls[column.path_in_schema] = nulls.get(column.path_in_schema, 0) + stats.null_count
    for name, count in nulls.items():
        if count == meta.num_rows and meta.num_rows:
            i = schema.get_field_index(name)
            schema = schema.set(i, pa.field(name, pa.null()))
    return schema


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order (missing ones null)."""
    columns = []
    for field in schema:
        # A null type is a column null in every part (arrow casts nothing else to null).
        if field.name in table.column_names and not pa.types.is_null(field.type):
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(columns, schema=schema)


# shapely.get_type_id's numbering, named as GeoParquet names geometry types
_GEOMETRY_TYPES = (
    "Point",
    "LineString",
    "LineString",  # a LinearRing is written as a LineString
    "Polygon",
    "MultiPoint",
    "MultiLineString",
    "MultiPolygon",
    "GeometryCollection",
)


class _GeoColumnStats:
    """The GeoParquet 1.1 metadata of a WKB geometry column written part by part."""

    def __init__(self) -> None:
        self._bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
        self._types: set[str] = set()

    def add(self, column: pa.ChunkedArray) -> None:
        geometries = shapely.from_wkb(column.to_numpy(zero_copy_only=False))
        if len(geometries):
            box = shapely.total_bounds(geometries)
            if not np.isnan(box).all():
                self._bounds[:2] = np.fmin(self._bounds[:2], box[:2])
                self._bounds[2:] = np.fmax(self._bounds[2:], box[2:])
        kinds = np.unique(shapely.get_type_id(geometries))
        self._types |= {_GEOMETRY_TYPES[k] for k in kinds if k >= 0}  # -1: a missing geometry

    def metadata(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "encoding": "WKB",
            "crs": pyproj.CRS.from_epsg(4326).to_json_dict(),
            "geometry_types": sorted(self._types),
        }
        if np.isfinite(self._bounds).all():
            column["bbox"] = [float(v) for v in self._bounds]
        return {
            "version": "1.1.0",
            "primary_column": "geometry",
            "columns": {"geometry": column},
            "creator": {"library": "las_builder", "version": __version__},
        }


class _SummaryCounts:
    """:func:`summarise`'s counts, gathered part by part."""

    def __init__(self) -> None:
        self._statuses: dict[str, int] = {}
        self._reasons: dict[str, int] = {}

    def add(self, status: pa.ChunkedArray, reason: pa.ChunkedArray) -> None:
        for s, r in zip(status.to_pylist(), reason.to_pylist(), strict=True):
            self._statuses[s] = self._statuses.get(s, 0) + 1
            if s != "ok":
                key = str(r).split(":")[0]
                self._reasons[key] = self._reasons.get(key, 0) + 1

    def summary(self) -> dict[str, Any]:
        return _summary(self._statuses, self._reasons)


def _summary(statuses: dict[str, int], reasons: dict[str, int]) -> dict[str, Any]:
    """Counts by status and by skip reason (its text before the first colon).

    ``ok``, ``skipped`` and ``failed`` are always there; reasons come most common first.
    """

    def most_common(counts: dict[str, int]) -> dict[str, int]:
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))  # stable: ties keep order

    return {
        "samples": sum(statuses.values()),
        **dict.fromkeys(("ok", "skipped", "failed"), 0),  # always there, zero or not
        **most_common(statuses),
        "reasons": most_common(reasons),
    }
