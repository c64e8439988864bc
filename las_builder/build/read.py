"""Read only the needed window of a (remote) COG and reproject it onto a sample GeoBox."""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj.exceptions import ProjError
from rasterio.crs import CRS as RioCRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.io import DatasetReader
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from las_builder.build.resample import (
    _thread_transformer,
    place_average,
    place_bilinear_zoom,
    place_nearest,
)
from las_builder.security import HrefRefused, check_href, open_asset, redact, register_secret
from las_builder.stac import SceneItem

log = logging.getLogger(__name__)
T = TypeVar("T")

# GDAL settings for COGs over HTTP: no directory listings, merged range requests, retries.
# GDAL retries HTTP 429/5xx, timeouts and connection resets itself (GDAL_HTTP_MAX_RETRY times,
# GDAL_HTTP_RETRY_DELAY seconds apart, doubling). An environment variable of the same name
# overrides each value (e.g. GDAL_HTTP_TIMEOUT=10 on a fast network).
GDAL_ENV: dict[str, Any] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "30",
    "VSI_CACHE": "TRUE",
    # GDAL keeps downloaded ranges of every file in one process-wide cache (16 MB by default)
    # that fills slowly as a build reads on, so a long build held ~12 MB more than a short one.
    # 8 MB made as many requests as 16 on the demo build (4 MB: 7 % more) and no slower.
    "CPL_VSIL_CURL_CACHE_SIZE": str(8 << 20),
    # GDAL's block cache defaults to 5% of RAM and fills as a build reads on, so peak memory
    # would grow with the number of samples; a shard's tiles fit in far less.
    "GDAL_CACHEMAX": 128,  # MB (rasterio wants an int)
}

READ_RETRIES = 2
"""Retries of an open or a window read that failed transiently after GDAL's own retries."""
RETRY_BACKOFF_S = 0.25
"""Wait before the first of those retries; it doubles each time."""

# Errors worth another try: HTTP 408/429/5xx, timeouts, resets, short reads. Anything else (404,
# 403, a corrupt tile, not a TIFF) fails at once.
_TRANSIENT = re.compile(
    r"HTTP response code: (?:408|429|5\d\d)|timed? ?out|Connection reset|Connection was reset|"
    r"Empty reply|transfer closed|Recv failure|Send failure|Couldn't connect|"
    r"got \d+ bytes, expected \d+",
    re.IGNORECASE,
)
# While retrying an open, GDAL must not answer from its cache of failed requests. The option is
# a ':'-separated list of path prefixes, so the colon-free prefix of the href's scheme is used.
_NON_CACHED = {"http": "/vsicurl/http", "https": "/vsicurl/http", "s3": "/vsis3/"}


def quiet_spurious_warnings() -> None:
    """Filter, process-wide, the warning rasterio gives for warps of in-memory arrays.

    rasterio warns "no geotransform" for cross-CRS warps of in-memory arrays although both
    transforms are given; the result equals a WarpedVRT of the dataset pixel for pixel (an
    asset without georeferencing is refused by name when it is opened). A process-wide filter
    because ``catch_warnings()`` is not thread-safe; checked again before each read (a scan of
    a short list), since a filter set inside someone's ``catch_warnings()`` (pytest's
    collection, a notebook's) ends with it.
    """
    if not any(
        entry[0] == "ignore" and entry[2] is NotGeoreferencedWarning for entry in warnings.filters
    ):
        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module="rasterio.warp")


quiet_spurious_warnings()


class ReadError(RuntimeError):
    """An asset could not be read; the message names the href (no credentials) and the cause."""


def _messages(err: BaseException) -> list[str]:
    """The messages of an exception and the exceptions it was raised from (GDAL's causes)."""
    out: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text and text not in out:
            out.append(text)
        current = current.__cause__ or current.__context__
    return out


def _cause(err: BaseException) -> str:
    """The most specific message of a GDAL error chain (its root cause), redacted."""
    messages = [m for m in _messages(err) if not m.startswith("Read failed. See previous")]
    return redact(messages[-1] if messages else type(err).__name__)


def _transient(err: BaseException) -> bool:
    return any(_TRANSIENT.search(m) for m in _messages(err))


def _shown(name: str) -> str:
    """An href or GDAL path as it may appear in a message: no /vsicurl/, no query, no secret."""
    return redact(name.removeprefix("/vsicurl/"))


def _non_cached(name: str) -> dict[str, str] | None:
    """GDAL options under which ``name`` (an href or a path) bypasses GDAL's HTTP cache."""
    scheme = urlsplit(name.removeprefix("/vsicurl/")).scheme.lower()
    return {"CPL_VSIL_CURL_NON_CACHED": _NON_CACHED[scheme]} if scheme in _NON_CACHED else None


def _forget(name: str) -> None:
    """Drop what GDAL cached of ``name`` (a short or failed read is cached like a good one).

    Closing a handle opened while the file is marked non-cached invalidates GDAL's cached
    data of that URL, so the next read, even through an already open dataset, fetches again.
    """
    options = _non_cached(name)
    if options is None:
        return
    try:
        with rasterio.Env(**options), open_asset(name):  # the same drivers as the first open
            pass
    except RasterioError:
        pass  # still failing: the retry will say so


def _retrying(call: Callable[[], T], verb: str, name: str, *, reopen: bool = False) -> T:
    """``call()``, tried again after transient GDAL errors (bounded, with backoff).

    Before each retry GDAL's cache of ``name`` is bypassed: an open is retried with the file
    marked non-cached (``reopen``), a read after :func:`_forget` has invalidated the cache.
    """
    for attempt in range(READ_RETRIES + 1):
        try:
            options = _non_cached(name) if attempt and reopen else None
            if options:
                with rasterio.Env(**options):
                    return call()
            return call()
        except RasterioIOError as err:
            if attempt == READ_RETRIES or not _transient(err):
                raise
            log.info("retrying %s %s after: %s", verb, _shown(name), _cause(err))
            time.sleep(RETRY_BACKOFF_S * 2**attempt)
            if not reopen:
                _forget(name)
    raise AssertionError("unreachable")


WARP_MEM_LIMIT_MB = 16
"""GDAL's working memory per warp (its default is 64 MB): a large warp is done in chunks."""

READ_BUDGET_BYTES = 24 * 2**20
"""Memory that window reads and their placing may hold at once in a process (source windows,
results, warp working memory: :attr:`_StackRead.memory_bytes`). Sentinel-2 bands under a
sample take a few hundred KB, an aerial image 17 MB at 64 px (a 4.6 MB window, 1.6 MB placed,
the warp's chunks) and more than the budget at 128 px: such reads wait for each other instead of
coinciding, which set a long build's peak memory (two or three aerial warps at once: +40 MB).
A read over the budget runs with small reads only (:meth:`_ByteBudget.share`)."""


class _ByteBudget:
    """A counting semaphore of bytes: hold ``n`` while at most ``limit`` are held in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._changed = threading.Condition()

    def share(self, n: int) -> int:
        """What holding ``n`` bytes takes of the budget.

        A request over three quarters of it takes three quarters, so such requests wait for
        each other but leave small ones room.
        """
        return min(n, self.limit * 3 // 4)

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        n = self.share(n)
        with self._changed:
            self._changed.wait_for(lambda: self._held + n <= self.limit)
            self._held += n
        try:
            yield
        finally:
            with self._changed:
                self._held -= n
                self._changed.notify_all()


_read_budget = _ByteBudget(READ_BUDGET_BYTES)

IO_THREADS = 8
"""Reads and opens of one sample in flight at a time (the band files of a scene)."""
SOURCE_THREADS = 8
"""Sources (a label product, NAIP, Sentinel-1) read at once by the samples of a process.

Every thread that opens, places or warps keeps its own PROJ state (~0.5-1.5 MB, filling as it
meets the build's CRSs); 16 threads were no faster than 8, even under 20 ms of latency."""
NEAR_IO_THREADS = 1
""":data:`IO_THREADS` where the storage answers at once (see :class:`_StorageSpeed`).

Threads only hide waiting: where a read waits for nothing, more of them just take turns at the
GIL, each turn a pair of futex calls and a cold cache (the demo build on a loopback server: 2 + 2
threads 10-15 % faster and cheaper than 8 + 8, and every read on the calling thread, one
sample at a time, 15-20 % faster again; under 20 ms of latency 2 + 2 took twice as long). A pool
of one is no pool: its calls run on the calling thread, and a process per core keeps the cores
busy."""
NEAR_SOURCE_THREADS = 1
""":data:`SOURCE_THREADS` where the storage answers at once."""
OPEN_S_PER_THREAD = 0.004
"""Each this much of a host's quickest open asks for one more read thread (up to the wide
sizes). An open is a request or two plus ~2 ms of CPU: a loopback server's opens take 1-8 ms
in a build (the first ones, on new connections, the longest: 2 threads), opens under 20 ms of
latency 40 ms and more (8)."""
NEAR_OPENS = 4
"""Opens of a host before its speed is judged (the quickest of them counts)."""
TIMED_OPENS = 64
"""Opens of a host timed at most; its speed is settled then (the memory stays bounded)."""


class _StorageSpeed:
    """How many read threads this process's storage needs, judged from its opens.

    The quickest first open of a host's files is its latency plus an open's CPU: threads busy
    with other reads only ever make an open slower, so the least time of several is a fair
    measure even on a loaded machine. Only the first open of each href counts: opened again,
    a file's header comes from GDAL's cache without a request, as quick on remote storage as
    on a local disk. A host with fewer than :data:`NEAR_OPENS` such opens gets the wide pools
    (a wrong guess that way costs some CPU, the other way the build's speed under latency);
    the slowest host sets the size.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._hosts: dict[str, tuple[set[str], float]] = {}  # host -> (hrefs timed, quickest)

    def note(self, href: str, seconds: float) -> None:
        """Record that an open of ``href`` took ``seconds``."""
        parts = urlsplit(href)
        host = f"{parts.scheme}://{parts.netloc}" if parts.netloc else "local"
        with self._lock:
            if self._pid != os.getpid():  # a forked child judges its own opens
                self._pid, self._hosts = os.getpid(), {}
            timed, quickest = self._hosts.setdefault(host, (set(), math.inf))
            if href in timed or len(timed) >= TIMED_OPENS:
                return
            timed.add(href)
            self._hosts[host] = (timed, min(quickest, seconds))

    def threads(self, wide: int, near: int) -> int:
        """A read pool's size, from ``near`` (storage that answers at once) to ``wide``."""
        with self._lock:
            if self._pid != os.getpid() or not self._hosts:
                return wide
            needed = [
                math.ceil(quickest / OPEN_S_PER_THREAD) if len(timed) >= NEAR_OPENS else wide
                for timed, quickest in self._hosts.values()
            ]
        return min(wide, max(near, *needed))


_storage_speed = _StorageSpeed()


def read_pool_threads() -> tuple[int, int]:
    """The sizes this process's read pools have now: (I/O threads, source threads)."""
    return (
        _storage_speed.threads(IO_THREADS, NEAR_IO_THREADS),
        _storage_speed.threads(SOURCE_THREADS, NEAR_SOURCE_THREADS),
    )


def samples_at_once(wanted: int) -> int:
    """How many samples a shard task should build at a time: ``wanted``, or one.

    One where this process's storage answers at once: its reads then run on the calling
    thread, and more samples in flight would only take turns at the GIL.
    """
    return 1 if read_pool_threads() == (1, 1) else wanted


_pools: dict[str, tuple[tuple[Any, ...], ThreadPoolExecutor]] = {}
_pools_lock = threading.Lock()


_held = threading.local()
"""``options``: the GDAL options this thread holds now (:func:`gdal_env`, a pool thread's)."""


def _thread_env(options: dict[str, Any]) -> None:
    """Enter the GDAL environment of a pool thread once, for the thread's life.

    GDAL options are per thread, and a pool thread only ever reads in the one configuration
    its pool was made for: entering and leaving ``rasterio.Env`` around every call (tens of
    times per sample, each rebuilding the environment and checking the process's variables)
    held the GIL the build's other threads wait for.
    """
    _reuse_rasterio_aws_sessions()
    _pin_data_dirs()
    rasterio.Env(**options).__enter__()  # left when the thread ends
    _held.options = options


def _pool(name: str, size: int, options: dict[str, Any] | None = None) -> ThreadPoolExecutor:
    """A thread pool of this process whose threads read in the caller's GDAL options.

    Made again after a fork, when the size changes (a process moves to the near size once its
    storage has shown that it answers at once), and when the options (or the AWS variables
    rasterio takes its credentials from) differ from those the pool was made with. The pool it
    replaces is let go, not shut down: a thread may still be handing it calls (a sample's
    :func:`background` block keeps its pool); its threads end once nobody holds it.
    ``options``: :func:`gdal_options`, where the caller has them already.
    """
    options = gdal_options() if options is None else options
    key = (
        os.getpid(),
        size,
        tuple(sorted((k, str(v)) for k, v in options.items())),
        tuple(os.environ.get(var) for var in _AWS_ENV),
    )
    with _pools_lock:
        entry = _pools.get(name)
        if entry is None or entry[0] != key:
            pool = ThreadPoolExecutor(
                size, thread_name_prefix=name, initializer=_thread_env, initargs=(options,)
            )
            entry = _pools[name] = (key, pool)
        return entry[1]


def _parallel(calls: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run independent reads or opens at once; results (or their exceptions) in order.

    Against remote storage each request waits for the network: a scene's band files are read
    together, not one after another. Each call runs in the caller's GDAL options (the pool's
    threads hold them; a caller that holds them too, in :func:`gdal_env` or on a pool thread,
    makes the last call itself: it would only wait otherwise, and at 20 ms of latency that
    hand-off cost ~2.5 % of the build's CPU). The pool is per process; its calls submit
    nothing further, so it cannot deadlock.
    """
    size = read_pool_threads()[0]
    if len(calls) <= 1 or size == 1:
        return [_outcome(call) for call in calls]
    options = gdal_options()
    pool = _pool("las-io", size, options)
    if getattr(_held, "options", None) != options:  # a caller outside the build's options
        return [f.result() for f in [pool.submit(_outcome, call) for call in calls]]
    futures = [pool.submit(_outcome, call) for call in calls[:-1]]
    last = _outcome(calls[-1])
    return [*(f.result() for f in futures), last]


@contextmanager
def background() -> Iterator[Callable[[Callable[[], T]], Future[T]]]:
    """Start independent source reads that run while the caller goes on.

    Yields ``start(call) -> Future``. Each call runs in the caller's GDAL options (the pool's
    threads hold them); every call has finished when the block exits (also on an error), so
    no read outlives the sample that borrowed its datasets. Calls may use :func:`_parallel`,
    never ``start`` itself.
    """
    size = read_pool_threads()[1]
    pool = _pool("las-src", size) if size > 1 else None
    futures: list[Future[Any]] = []

    def start(call: Callable[[], T]) -> Future[T]:
        if pool is None:  # storage that answers at once: the call runs now, on this thread
            ran: Future[T] = Future()
            try:
                ran.set_result(call())
            except BaseException as err:  # the caller's result() raises it, as from a pool
                ran.set_exception(err)
            return ran
        future = pool.submit(call)
        futures.append(future)
        return future

    try:
        yield start
    finally:
        wait(futures)


def _outcome(call: Callable[[], T]) -> T | BaseException:
    try:
        return call()
    except Exception as err:  # handed back to the caller, which raises the first
        return err


POOLED_DATASETS = 96
"""Idle open datasets a process keeps from one shard of a build to the next (least recently
used closed first). An open costs 0.7-2 ms of CPU, most of it with the GIL held (the header's
requests and parsing, the CRS identified in PROJ's database); a demo shard uses ~35 handles, so
the pool holds a few shards' worth. Neighbouring shards share scenes where samples are dense."""


class _DatasetPool:
    """Idle datasets of one build (``run_id``) kept by this process between shards.

    A new build's handles replace an earlier build's, which are closed: a later build may read
    files rewritten under the same href. A forked child drops the parent's handles unclosed:
    they share its connections.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._run = ""
        self._idle: OrderedDict[str, list[DatasetReader]] = OrderedDict()
        self._count = 0
        self._orphans: list[DatasetReader] = []

    def take(self, run_id: str, href: str) -> DatasetReader | None:
        """An idle dataset of ``href`` opened earlier in this build, or None."""
        with self._lock:
            if run_id != self._run:
                return None
            free = self._idle.get(href)
            if not free:
                return None
            ds = free.pop()
            if not free:
                del self._idle[href]
            self._count -= 1
            return ds

    def give(self, run_id: str, datasets: list[tuple[str, DatasetReader]]) -> None:
        """Keep ``datasets`` (href, dataset) for the build's next shards; close the overflow."""
        closing: list[DatasetReader] = []
        with self._lock:
            if run_id != self._run:
                closing.extend(self._drain())
                self._run = run_id
            for href, ds in datasets:
                self._idle.setdefault(href, []).append(ds)
                self._idle.move_to_end(href)
                self._count += 1
            while self._count > self._limit:
                href, free = next(iter(self._idle.items()))
                closing.append(free.pop(0))
                self._count -= 1
                if not free:
                    del self._idle[href]
        for ds in closing:
            ds.close()

    def close(self) -> None:
        """Close every idle dataset (a build in this process ended)."""
        with self._lock:
            closing = self._drain()
            self._run = ""
        for ds in closing:
            ds.close()

    def __len__(self) -> int:
        return self._count

    def _drain(self) -> list[DatasetReader]:
        closing = [ds for free in self._idle.values() for ds in free]
        self._idle.clear()
        self._count = 0
        return closing

    def _after_fork(self) -> None:
        # Kept, never closed: closing would shut connections the parent still uses.
        self._orphans.extend(self._drain())
        self._run = ""
        self._lock = threading.Lock()


_idle_datasets = _DatasetPool(POOLED_DATASETS)
os.register_at_fork(after_in_child=_idle_datasets._after_fork)


def close_pooled_datasets() -> None:
    """Close the datasets this process keeps between shards (call when a build ends)."""
    with gdal_env():
        _idle_datasets.close()


class DatasetCache:
    """Open datasets by href, shared by all the samples of one shard, then closed together.

    Samples of a shard lie close together, so they read the same few assets: opening each once
    saves the header requests that dominate small window reads over HTTP. A GDAL dataset must
    not be read from two threads at once, so handles are borrowed: a thread takes a free handle
    of the href, or opens another when every handle is in use by other threads. With a
    ``run_id`` (one build), handles come from and go back to the process's pool of idle
    datasets (:data:`POOLED_DATASETS`) instead of being opened and closed per shard; failures
    are still remembered per shard only.
    """

    def __init__(self, sign: Callable[[str, str], str] | None = None, run_id: str = "") -> None:
        self._free: dict[str, list[DatasetReader]] = {}
        self._busy: dict[str, int] = {}  # href -> borrowers now (reading or opening)
        self._all: list[tuple[str, DatasetReader]] = []
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        self._sign = sign
        self._run_id = run_id

    def href(self, item: SceneItem, key: str) -> str:
        """The href of an item's asset, signed when the catalog needs it."""
        href = item.asset(key).href
        if self._sign is not None:
            signed = self._sign(href, item.collection or "")
            if signed != href and "?" in signed:
                register_secret(signed.split("?", 1)[1])  # masked in every message and log
            href = signed
        return href

    @contextmanager
    def assets(self, item: SceneItem, *keys: str) -> Iterator[list[DatasetReader]]:
        """Borrow the open datasets of an item's assets (see :meth:`borrow`)."""
        with self.borrow(*(self.href(item, key) for key in keys)) as datasets:
            yield datasets

    @contextmanager
    def borrow(self, *hrefs: str) -> Iterator[list[DatasetReader]]:
        """Borrow an open dataset of each href for the calling thread, returned on exit.

        When every href already has a handle but some are borrowed by other threads, the call
        waits for them rather than opening more: a window read takes a few milliseconds, an
        open ~2 ms of CPU with the GIL held. The hrefs are taken all at once, so a waiting
        thread holds none and threads cannot wait for each other in a circle. An href not
        opened yet is opened (all of the call's missing hrefs in parallel).

        The href must pass :func:`las_builder.security.check_href`; a transient failure is
        retried; a failure is remembered, so the other samples of the shard fail at once.

        Raises:
            ReadError: An href is refused, cannot be opened, or is not georeferenced.
        """
        taken: list[tuple[str, DatasetReader]] = []
        claimed: list[str] = []
        try:
            with self._returned:
                ready = self._wait_for_free(hrefs)
                for href in hrefs:
                    self._busy[href] = self._busy.get(href, 0) + 1
                claimed = list(hrefs)
                if ready:
                    taken = [(href, self._free[href].pop()) for href in hrefs]
            if not ready:
                # mypy cannot infer a lambda whose default binds the loop variable.
                results = _parallel(
                    [lambda href=href: self._take(href) for href in hrefs]  # type: ignore[misc]
                )
                taken = [
                    (href, ds)
                    for href, ds in zip(hrefs, results, strict=True)
                    if not isinstance(ds, BaseException)
                ]
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
            yield [ds for _, ds in taken]
        finally:
            with self._returned:
                for href, ds in taken:
                    self._free.setdefault(href, []).append(ds)
                for href in claimed:
                    self._busy[href] -= 1
                self._returned.notify_all()

    def _wait_for_free(self, hrefs: tuple[str, ...]) -> bool:
        """True once every href has a free handle, waiting for borrowed ones to come back.

        False when some href has no handle to wait for (it must be opened). Called with the
        lock held; idle handles of the build are taken from the process's pool first.
        """
        if len(set(hrefs)) != len(hrefs):
            return False
        while True:
            for href in hrefs:
                if not self._free.get(href):
                    if href in self._failed:
                        raise ReadError(self._failed[href])
                    idle = _idle_datasets.take(self._run_id, href) if self._run_id else None
                    if idle is not None:
                        self._all.append((href, idle))
                        self._free.setdefault(href, []).append(idle)
            if all(self._free.get(href) for href in hrefs):
                return True
            if not all(self._free.get(href) or self._busy.get(href) for href in hrefs):
                return False
            self._returned.wait()

    def _take(self, href: str) -> DatasetReader:
        with self._lock:
            free = self._free.get(href)
            if free:
                return free.pop()
            if href in self._failed:
                raise ReadError(self._failed[href])
        try:  # outside the lock: other threads open their datasets meanwhile
            ds = self._open_checked(href)
        except ReadError as err:
            with self._lock:
                self._failed[href] = str(err)
            raise
        with self._lock:
            self._all.append((href, ds))
        return ds

    @staticmethod
    def _open_checked(href: str) -> DatasetReader:
        # _shown(href) (redaction scans the environment) only where an error needs it
        try:
            target = check_href(href)
        except HrefRefused as err:
            raise ReadError(f"refused {err}") from None
        try:
            started = time.perf_counter()
            # Single-file formats only: a VRT would make GDAL read the files it names.
            ds = _retrying(lambda: open_asset(target), "open", target, reopen=True)
            _storage_speed.note(target, time.perf_counter() - started)
        except RasterioError as err:
            raise ReadError(f"cannot open {_shown(href)}: {_cause(err)}") from None
        if ds.crs is None:
            ds.close()
            raise ReadError(f"{_shown(href)} has no CRS: it cannot be placed on the sample grid")
        if ds.transform == Affine.identity() and not ds.gcps[0]:
            ds.close()
            raise ReadError(
                f"{_shown(href)} has no geotransform: it cannot be placed on the sample grid"
            )
        return ds

    def close(self) -> None:
        """Close every open dataset, or with a ``run_id`` give them to the process's pool."""
        with self._lock:
            datasets = list(self._all)
            self._all.clear()
            self._free.clear()
        if self._run_id:
            _idle_datasets.give(self._run_id, datasets)
        else:
            for _, ds in datasets:
                ds.close()


_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
)
_session_lock = threading.Lock()


def _reuse_rasterio_aws_sessions() -> None:
    """Let rasterio build its AWS session from the environment once, not at every ``Env()``.

    With ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` set (as for ``s3://`` output),
    every ``rasterio.Env()`` builds a boto3 session (about 20 ms), and rasterio's warp enters
    several Envs per ``reproject``: a build ran three times slower. Sessions are reused while
    those variables keep their values (idempotent, process-wide).
    """
    from rasterio.session import Session

    with _session_lock:
        if getattr(Session.from_environ, "_las_reused", False):
            return
        original = Session.from_environ
        sessions: dict[tuple[str | None, ...], Any] = {}

        def from_environ(*args: Any, **kwargs: Any) -> Any:
            if args or kwargs:
                return original(*args, **kwargs)
            key = tuple(os.environ.get(name) for name in _AWS_ENV)
            with _session_lock:
                if key not in sessions:
                    sessions[key] = original()
                return sessions[key]

        from_environ._las_reused = True  # type: ignore[attr-defined]
        Session.from_environ = staticmethod(from_environ)


def gdal_options() -> dict[str, Any]:
    """:data:`GDAL_ENV`, each value overridden by an environment variable of the same name."""
    options = {key: os.environ.get(key, value) for key, value in GDAL_ENV.items()}
    options["GDAL_CACHEMAX"] = int(options["GDAL_CACHEMAX"])
    return options


_data_dirs_pinned = False


def _pin_data_dirs() -> None:
    """Point ``GDAL_DATA`` and ``PROJ_DATA`` at rasterio's own data folders, where unset.

    Without them rasterio looks both folders up again (a ``stat`` each) every time it starts
    its environment, which it does on entering every ``rasterio.Env`` and on leaving every
    nested one (each ``open``, ``read`` and ``reproject``): thousands of times per shard. Each
    ``stat`` releases the GIL and the thread then waits to get it back behind the build's
    other threads, so these look-ups cost far more than their ~10 us. The folders set are the
    ones rasterio finds first anyway (inside its wheel). ``PROJ_DATA`` is set only while
    pyproj reads its own bundled data, which an environment variable does not redirect.
    """
    global _data_dirs_pinned
    if _data_dirs_pinned:
        return
    _data_dirs_pinned = True
    package = Path(rasterio.__file__).parent
    gdal_data = package / "gdal_data"
    if "GDAL_DATA" not in os.environ and (gdal_data / "gdalvrt.xsd").is_file():
        os.environ["GDAL_DATA"] = str(gdal_data)
    proj_data = package / "proj_data"
    if "PROJ_DATA" in os.environ or "PROJ_LIB" in os.environ:
        return
    try:
        import pyproj.datadir

        own = Path(pyproj.__file__).parent / "proj_dir" / "share" / "proj"
        pyproj_own = Path(pyproj.datadir.get_data_dir()) == own
    except Exception:  # no pyproj, or no data for it: leave PROJ alone
        pyproj_own = False
    if pyproj_own and (proj_data / "proj.db").is_file():
        os.environ["PROJ_DATA"] = str(proj_data)


@contextmanager
def gdal_env() -> Iterator[None]:
    """The GDAL configuration for reading COGs over HTTP."""
    _reuse_rasterio_aws_sessions()
    _pin_data_dirs()
    options = gdal_options()
    outer = getattr(_held, "options", None)
    with rasterio.Env(**options):
        _held.options = options
        try:
            yield
        finally:
            _held.options = outer


@functools.lru_cache(maxsize=64)
def _rio_crs(crs: Any) -> RioCRS:
    """The rasterio CRS of a GeoBox's CRS, made once per CRS (a build has a few UTM zones).

    Handing rasterio WKT made it parse the WKT into a new CRS at every window and warp,
    which held the GIL the build's other threads wait for.
    """
    return RioCRS.from_wkt(crs.to_wkt())


def _bounds_in(crs: RioCRS, geobox: GeoBox) -> tuple[float, float, float, float]:
    """The GeoBox's bounds in ``crs``, densified along the edges (21 points per edge).

    Into a projected CRS through the thread's PROJ transformer for the pair: GDAL builds the
    coordinate transformation again at every call, looking both CRSs up in PROJ's database
    (~3.5 ms a call into MODIS's sinusoidal CRS, against ~0.15 ms here; the same bounds but
    for the last digit now and then). Into a geographic CRS pyproj's pipeline-only
    transformer has no target CRS to wrap longitudes by, so GDAL answers there, and wherever
    no single pipeline joins the pair.
    """
    left, bottom, right, top = geobox.boundingbox
    assert geobox.crs is not None  # sample grids always have a CRS
    if not crs.is_geographic:
        transformer = _thread_transformer(geobox.crs.to_wkt(), crs.to_wkt())
        if transformer is not None:
            try:
                bounds = transformer.transform_bounds(left, bottom, right, top, densify_pts=21)
            except ProjError:
                bounds = (math.nan,) * 4
            if all(math.isfinite(v) for v in bounds):
                return bounds
    rio_bounds: tuple[float, float, float, float] = transform_bounds(
        _rio_crs(geobox.crs), crs, left, bottom, right, top, densify_pts=21
    )
    return rio_bounds


def _source_window(ds: DatasetReader, geobox: GeoBox, margin_px: int) -> Window | None:
    """The window of ``ds`` that covers ``geobox`` (plus a margin), or None if disjoint.

    A GeoBox across the antimeridian has geographic bounds with west > east. For a geographic
    ``ds`` each side is placed separately (shifted by 360 degrees) and the windows joined: a
    tile beside the line gives its few columns (not every column between the two edges), and
    a raster whose own frame runs past 180 degrees gives the part beyond it too.
    """
    west, south, east, north = _bounds_in(ds.crs, geobox)
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise ValueError(f"the sample's bounds are not finite in {ds.crs}")
    if ds.crs.is_geographic and west > east:
        boxes = [(west, south, east + 360.0, north), (west - 360.0, south, east, north)]
    else:
        boxes = [(west, south, east, north)]
    spans = []
    for box in boxes:
        window = from_bounds(*box, transform=ds.transform)
        col0 = max(math.floor(window.col_off) - margin_px, 0)
        row0 = max(math.floor(window.row_off) - margin_px, 0)
        col1 = min(math.ceil(window.col_off + window.width) + margin_px, ds.width)
        row1 = min(math.ceil(window.row_off + window.height) + margin_px, ds.height)
        if col1 > col0 and row1 > row0:
            spans.append((col0, row0, col1, row1))
    if not spans:
        return None
    col0, row0 = min(s[0] for s in spans), min(s[1] for s in spans)
    col1, row1 = max(s[2] for s in spans), max(s[3] for s in spans)
    return Window(col0, row0, col1 - col0, row1 - row0)


def _pixel_zoom(ds: DatasetReader, geobox: GeoBox) -> tuple[int, int, int] | None:
    """(col, row, k) when the GeoBox's pixels subdivide those of ``ds`` k by k.

    Both share the CRS, and the GeoBox's pixels are ``ds``'s pixels split k times along each
    axis (k = 1: the same pixels), on a lattice that continues ``ds``'s: target pixel (r, c)
    then lies inside source pixel ((row + r) // k, (col + c) // k), with (col, row) the
    GeoBox's corner counted in target pixels from ``ds``'s corner. No target pixel centre falls
    on a source pixel edge, so nearest resampling returns exactly that source pixel (and for
    k = 1 any resampling does: centres coincide).
    """
    src, dst = ds.transform, geobox.transform
    if (src.b, src.d, dst.b, dst.d) != (0, 0, 0, 0) or not dst.a or not dst.e:
        return None
    k = src.a / dst.a
    if round(k) < 1 or abs(k - round(k)) > 1e-9 or abs(src.e / dst.e - round(k)) > 1e-9:
        return None
    col = (dst.c - src.c) / dst.a
    row = (dst.f - src.f) / dst.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    assert geobox.crs is not None  # sample grids always have a CRS
    epsg = geobox.crs.epsg
    if epsg is None or ds.crs is None or ds.crs.to_epsg() != epsg:
        return None
    return round(col), round(row), round(k)


def _source_pixels(first: int, size: int, k: int, limit: int) -> tuple[slice, np.ndarray] | None:
    """The target pixels ``first``.. ``first + size - 1`` that lie on a source of ``limit``.

    Returns their slice in the target and the source pixel under each, or None if none does.
    """
    under = (first + np.arange(size)) // k
    inside = np.flatnonzero((under >= 0) & (under < limit))
    if not inside.size:
        return None
    return slice(int(inside[0]), int(inside[-1]) + 1), under[inside]


def _grid_key(ds: DatasetReader) -> tuple[Any, ...]:
    """What datasets must share to be read and reprojected as one stack."""
    return (ds.crs, ds.transform, ds.width, ds.height, ds.nodata, ds.dtypes[0])


def _read_calls(
    layers: list[tuple[DatasetReader, list[int]]], window: Window
) -> list[Callable[[], np.ndarray]]:
    """One call per (dataset, bands) reading the same window (transient errors retried)."""
    # mypy cannot infer a lambda whose defaults bind the loop variables.
    return [
        lambda ds=ds, bands=bands: _retrying(  # type: ignore[misc]
            lambda: ds.read(bands, window=window), "read of", ds.name
        )
        for ds, bands in layers
    ]


def _stacked(layers: list[tuple[DatasetReader, list[int]]], results: list[Any]) -> np.ndarray:
    """The results of :func:`_read_calls` stacked (bands, rows, cols); the first error raised."""
    parts = []
    for (ds, _), result in zip(layers, results, strict=True):
        if isinstance(result, RasterioError):
            raise ReadError(f"cannot read {_shown(ds.name)}: {_cause(result)}") from None
        if isinstance(result, BaseException):
            raise result
        parts.append(result)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _StackRead:
    """The bands of datasets that share one grid, read with one window, placed by one warp.

    One window and one warp serve the whole stack: the warper's coordinate transformation is
    computed once instead of once per band (Sentinel-2's four 10 m bands, Sentinel-1's VV/VH).
    Made in two steps so that several stacks' reads can be in flight together: :attr:`calls`
    (none when the sample lies outside the source), then :meth:`finish` with their results.
    """

    def __init__(
        self,
        layers: list[tuple[DatasetReader, list[int]]],
        geobox: GeoBox,
        resampling: Resampling,
        fill: float,
        dtype: str,
        src_nodata: float | None = None,
    ) -> None:
        self.layers = layers
        self.geobox = geobox
        self.resampling = resampling
        self.fill = fill
        ref = layers[0][0]
        # The file's own nodata wins; the sensor's (given) stands in where a file declares
        # none, so its empty pixels are neither interpolated nor averaged into values.
        self.src_nodata: float | None = ref.nodata if ref.nodata is not None else src_nodata
        n_bands = sum(len(bands) for _, bands in layers)
        self.out = np.full((n_bands, *geobox.shape.yx), fill, dtype=dtype)
        self.calls: list[Callable[[], np.ndarray]] = []
        self.source_bytes = 0  # of the window the calls read
        self._copy_to: tuple[slice, slice] | None = None
        self._src_transform: Affine | None = None
        self._take: tuple[np.ndarray, np.ndarray] | None = None
        self._zoomed_at: tuple[int, int, int] | None = None
        zoom = _pixel_zoom(ref, geobox)
        if zoom is not None and (zoom[2] == 1 or resampling == Resampling.nearest):
            # Each target pixel lies in one source pixel whose value it takes: read the source
            # pixels and repeat them (k = 1: a plain copy), exactly what GDAL's warp returns.
            col, row, k = zoom
            height, width = geobox.shape.yx
            cols = _source_pixels(col, width, k, ref.width)
            rows = _source_pixels(row, height, k, ref.height)
            if cols is not None and rows is not None:
                (to_cols, src_cols), (to_rows, src_rows) = cols, rows
                c0, r0 = int(src_cols[0]), int(src_rows[0])
                window = Window(c0, r0, int(src_cols[-1]) + 1 - c0, int(src_rows[-1]) + 1 - r0)
                self._copy_to = (to_rows, to_cols)
                if k > 1:
                    self._take = (src_rows - r0, src_cols - c0)
                self.calls = _read_calls(layers, window)
                self.source_bytes = _window_bytes(layers, window.height, window.width)
            return
        try:
            window = _source_window(ref, geobox, margin_px=2)
        except (RasterioError, ValueError, OverflowError) as err:
            shown = _shown(ref.name)
            raise ReadError(
                f"cannot place {shown} on the sample grid: {redact(str(err))}"
            ) from None
        if window is None:
            return
        self._src_transform = ref.window_transform(window)
        if zoom is not None and resampling == Resampling.bilinear:
            # The GeoBox's corner counted in its own pixels from the window's corner, and k.
            col, row, k = zoom
            self._zoomed_at = (col - k * int(window.col_off), row - k * int(window.row_off), k)
        self.calls = _read_calls(layers, window)
        self.source_bytes = _window_bytes(layers, int(window.height), int(window.width))

    @property
    def memory_bytes(self) -> int:
        """Bytes reading and placing the stack holds at most.

        The window twice (GDAL's decoded tiles, then the array they are copied into; measured
        on an aerial window), the result, and a warp's working memory (none for a copy).
        """
        if not self.calls:
            return 0
        held = 2 * self.source_bytes + self.out.nbytes
        if self._copy_to is not None:
            return held
        return held + min(WARP_MEM_LIMIT_MB * 2**20, self.source_bytes + self.out.nbytes)

    def finish(self, results: list[Any]) -> np.ndarray:
        """The stack on the GeoBox from the results of :attr:`calls` (or the first error)."""
        if not self.calls:
            return self.out
        data = _stacked(self.layers, results)
        ref = self.layers[0][0]
        if self._copy_to is not None:
            nodata = self.src_nodata
            if nodata is not None:  # source nodata becomes the target's fill, as a warp does
                missing = np.isnan(data) if np.isnan(nodata) else data == nodata
                data = np.where(missing, self.fill, data)
            if self._take is not None:
                data = data[:, self._take[0][:, None], self._take[1]]
            self.out[(slice(None), *self._copy_to)] = data
            return self.out
        # Calls outside a plain copy exist only once the window, hence its transform, is known.
        assert self._src_transform is not None
        parts = self._parts_by_nodata(data, self.src_nodata)
        for first, stop in parts:
            self._place(data[first:stop], self.out[first:stop], ref)
        return self.out

    def _parts_by_nodata(self, data: np.ndarray, nodata: float | None) -> list[tuple[int, int]]:
        """Band ranges to place together: the whole stack, or each dataset's own bands.

        A warp takes a pixel as nodata where every band is (GDAL's unified source nodata):
        right for one file's bands, wrong for files stacked here for speed where one lacks
        data the others have (a 60 m band's edge) -- its zeros would be interpolated into
        values. Such a stack is placed dataset by dataset, as :func:`read_onto` would.
        """
        whole = [(0, data.shape[0])]
        if nodata is None or len(self.layers) == 1:
            return whole
        spans, first = [], 0
        for _ds, bands in self.layers:
            spans.append((first, first + len(bands)))
            first += len(bands)
        missing = np.isnan(data) if math.isnan(nodata) else data == nodata
        masks = [missing[a:b].all(axis=0) for a, b in spans]
        if all(np.array_equal(mask, masks[0]) for mask in masks[1:]):
            return whole
        return spans

    def _place(self, data: np.ndarray, out: np.ndarray, ref: DatasetReader) -> None:
        """Place ``data`` (bands of the window) onto ``out`` (the same bands on the GeoBox)."""
        assert self._src_transform is not None
        if self._zoomed_at is not None and place_bilinear_zoom(
            data, *self._zoomed_at, self.src_nodata, out
        ):
            return
        if self.resampling == Resampling.nearest and place_nearest(
            data, self._src_transform, ref.crs, self.src_nodata, self.geobox, out
        ):
            return
        if self.resampling == Resampling.average and place_average(
            data, self._src_transform, ref.crs, self.src_nodata, self.geobox, out, self.fill
        ):
            return
        try:
            reproject(
                data,
                out,
                src_transform=self._src_transform,
                src_crs=ref.crs,
                src_nodata=self.src_nodata,
                dst_transform=self.geobox.transform,
                dst_crs=_rio_crs(self.geobox.crs),
                dst_nodata=self.fill,
                resampling=self.resampling,
                num_threads=1,
                warp_mem_limit=WARP_MEM_LIMIT_MB,
            )
        except RasterioError as err:
            raise ReadError(f"cannot reproject {_shown(ref.name)}: {_cause(err)}") from None


def _window_bytes(layers: list[tuple[DatasetReader, list[int]]], height: int, width: int) -> int:
    """Bytes of a window of ``height`` x ``width`` over the bands of ``layers``."""
    return sum(
        int(height) * int(width) * np.dtype(ds.dtypes[band - 1]).itemsize
        for ds, bands in layers
        for band in bands
    )


def _read_stacks(stacks: list[_StackRead]) -> list[np.ndarray]:
    """Read several stacks' windows together (one round of requests), then place each.

    Within the process's :data:`READ_BUDGET_BYTES`: a build's peak memory is otherwise set by
    the rare moments when several large reads coincide, and so grows with the length of the
    build rather than with what one sample needs.
    """
    quiet_spurious_warnings()
    with _read_budget.hold(sum(stack.memory_bytes for stack in stacks)):
        return _read_and_place(stacks)


def _read_and_place(stacks: list[_StackRead]) -> list[np.ndarray]:
    results = _parallel([call for stack in stacks for call in stack.calls])
    out = []
    for stack in stacks:
        out.append(stack.finish(results[: len(stack.calls)]))
        results = results[len(stack.calls) :]
    return out


def _fill_of(ds: DatasetReader, nodata: float | None) -> float:
    return nodata if nodata is not None else (ds.nodata if ds.nodata is not None else 0)


def read_onto(
    ds: DatasetReader,
    geobox: GeoBox,
    *,
    bands: list[int] | None = None,
    resampling: Resampling = Resampling.nearest,
    nodata: float | None = None,
    dtype: str | None = None,
    src_nodata: float | None = None,
) -> np.ndarray:
    """Read the part of ``ds`` under ``geobox`` and reproject it onto ``geobox``.

    Only the source window that covers the GeoBox is read.

    Args:
        ds: An open dataset.
        geobox: The target grid.
        bands: 1-based band indexes (default: all).
        resampling: Resampling for the reprojection.
        nodata: Value for pixels without data (default: the dataset's nodata, else 0).
        dtype: Output dtype (default: the dataset's).
        src_nodata: The source's nodata where the file declares none (its sensor's).

    Returns:
        Array (bands, rows, cols) on ``geobox``.
    """
    bands = bands or list(range(1, ds.count + 1))
    dtype = dtype or ds.dtypes[bands[0] - 1]
    fill = _fill_of(ds, nodata)
    stack = _StackRead([(ds, bands)], geobox, resampling, fill, dtype, src_nodata)
    return _read_stacks([stack])[0]


def read_stack_onto(
    datasets: list[DatasetReader],
    geobox: GeoBox,
    *,
    resampling: Resampling = Resampling.nearest,
    nodata: float | None = None,
    dtype: str | None = None,
    src_nodata: float | None = None,
) -> np.ndarray:
    """The first band of each dataset on ``geobox``, stacked (one layer per dataset).

    Datasets on the same grid (CRS, transform, size, nodata, dtype) are read with one window
    and reprojected by one warp; each layer equals :func:`read_onto` of its dataset.

    Args:
        datasets: Open single-band datasets (e.g. the band files of one Sentinel-2 scene).
        geobox: The target grid.
        resampling: Resampling for the reprojection.
        nodata: Value for pixels without data (default: each dataset's nodata, else 0).
        dtype: Output dtype (default: the first dataset's).
        src_nodata: The sources' nodata where a file declares none (their sensor's).

    Returns:
        Array (len(datasets), rows, cols) on ``geobox``.
    """
    dtype = dtype or datasets[0].dtypes[0]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, ds in enumerate(datasets):
        groups.setdefault(_grid_key(ds), []).append(i)
    stacks = [
        _StackRead(
            [(datasets[i], [1]) for i in members],
            geobox,
            resampling,
            _fill_of(datasets[members[0]], nodata),
            dtype,
            src_nodata,
        )
        for members in groups.values()
    ]
    out = np.empty((len(datasets), *geobox.shape.yx), dtype=dtype)
    # Every grid's window is requested at once: one round trip for the scene, not one per grid.
    for members, stacked in zip(groups.values(), _read_stacks(stacks), strict=True):
        out[members] = stacked
    return out
