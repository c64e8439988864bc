"""Handles shared by a shard's samples, waited for when busy, and kept between a build's shards."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from las_builder.build import read as read_mod
from las_builder.build.read import DatasetCache, ReadError, close_pooled_datasets


def _tif(path: Path, seed: int) -> str:
    data = np.random.default_rng(seed).integers(1, 200, (64, 64), dtype="uint8")
    profile = {
        "driver": "GTiff",
        "width": 64,
        "height": 64,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(10, 0, 400_000, 0, -10, 5_000_000),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return str(path)


@pytest.fixture
def hrefs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("LAS_ALLOWED_FILE_ROOTS", str(tmp_path))
    return [_tif(tmp_path / f"b{i}.tif", i) for i in range(3)]


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The hrefs opened (not taken from a pool or a free handle), in order."""
    opened: list[str] = []
    real = DatasetCache._open_checked

    def counting(href: str) -> rasterio.io.DatasetReader:
        opened.append(href)
        return real(href)

    monkeypatch.setattr(DatasetCache, "_open_checked", staticmethod(counting))
    yield opened
    close_pooled_datasets()


def test_a_busy_href_is_waited_for_instead_of_opened_again(
    hrefs: list[str], opens: list[str]
) -> None:
    cache = DatasetCache()
    held = threading.Event()
    order: list[str] = []

    def first() -> None:
        with cache.borrow(hrefs[0]) as (ds,):
            held.set()
            time.sleep(0.2)
            order.append("first done")
            assert ds.read(1).shape == (64, 64)

    def second() -> None:
        held.wait()
        with cache.borrow(hrefs[0]) as (ds,):
            order.append("second got it")
            assert ds.read(1).shape == (64, 64)

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(first), pool.submit(second)]
        for f in futures:
            f.result(timeout=10)
    cache.close()
    assert opens == [hrefs[0]]
    assert order == ["first done", "second got it"]


def test_a_set_with_an_href_never_opened_opens_without_waiting(
    hrefs: list[str], opens: list[str]
) -> None:
    cache = DatasetCache()
    with cache.borrow(hrefs[0]) as (held,):
        # hrefs[1] has no handle to wait for: the set is opened at once, hrefs[0] a second time
        with cache.borrow(hrefs[0], hrefs[1]) as (again, other):
            assert again is not held
            assert other.name.endswith("b1.tif")
    cache.close()
    assert sorted(opens) == sorted([hrefs[0], hrefs[0], hrefs[1]])


def test_threads_borrowing_sets_in_opposite_orders_never_wait_for_each_other(
    hrefs: list[str], opens: list[str]
) -> None:
    cache = DatasetCache()
    with cache.borrow(*hrefs):  # every href has a handle: later borrows may wait
        pass

    def work(k: int) -> int:
        total = 0
        for _ in range(20):
            chosen = hrefs if k % 2 else hrefs[::-1]
            with cache.borrow(*chosen) as datasets:
                total += sum(int(ds.read(1, window=((0, 4), (0, 4))).sum()) for ds in datasets)
        return total

    with ThreadPoolExecutor(6) as pool:
        results = [f.result(timeout=30) for f in [pool.submit(work, k) for k in range(6)]]
    cache.close()
    assert len(set(results)) == 1  # every thread read the same pixels
    assert len(opens) == len(hrefs)  # all waited for the one handle of each href


def test_a_failed_open_reaches_the_threads_that_waited_for_it(
    hrefs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = DatasetCache()
    with cache.borrow(hrefs[0]):
        pass
    started = threading.Event()

    def slow_failure(href: str) -> rasterio.io.DatasetReader:
        started.set()
        time.sleep(0.2)
        raise ReadError(f"cannot open {href}: broken")

    monkeypatch.setattr(DatasetCache, "_open_checked", staticmethod(slow_failure))

    def opener() -> None:
        with cache.borrow(hrefs[0], hrefs[1]):  # hrefs[1] is opened (and fails)
            pass

    def waiter() -> None:
        started.wait()
        with cache.borrow(hrefs[0], hrefs[1]):  # waits for both, then learns the failure
            pass

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(opener), pool.submit(waiter)]
        for f in futures:
            with pytest.raises(ReadError, match="broken"):
                f.result(timeout=10)
    cache.close()


def test_a_builds_handles_outlive_its_shards_and_a_new_build_closes_them(
    hrefs: list[str], opens: list[str]
) -> None:
    first_shard = DatasetCache(run_id="build-1")
    with first_shard.borrow(hrefs[0]) as (ds,):
        pass
    first_shard.close()
    assert not ds.closed  # kept for the build's next shard
    next_shard = DatasetCache(run_id="build-1")
    with next_shard.borrow(hrefs[0]) as (again,):
        assert again is ds
    next_shard.close()
    assert opens == [hrefs[0]]

    other_build = DatasetCache(run_id="build-2")
    with other_build.borrow(hrefs[0]) as (fresh,):
        assert fresh is not ds
    other_build.close()
    assert ds.closed  # the earlier build's handle was closed, not reused
    assert opens == [hrefs[0], hrefs[0]]
    close_pooled_datasets()
    assert fresh.closed


def test_without_a_build_handles_are_closed_with_the_shard(
    hrefs: list[str], opens: list[str]
) -> None:
    cache = DatasetCache()
    with cache.borrow(hrefs[0]) as (ds,):
        pass
    cache.close()
    assert ds.closed


def test_failures_are_remembered_per_shard_only(
    tmp_path: Path, hrefs: list[str], opens: list[str]
) -> None:
    late = str(tmp_path / "late.tif")
    shard = DatasetCache(run_id="build-1")
    with pytest.raises(ReadError), shard.borrow(late):
        pass
    shard.close()
    _tif(Path(late), 9)  # the file appears (a transient outage ended)
    next_shard = DatasetCache(run_id="build-1")
    with next_shard.borrow(late) as (ds,):
        assert ds.read(1).shape == (64, 64)
    next_shard.close()


def test_the_pool_keeps_its_limit_closing_the_least_recently_returned(hrefs: list[str]) -> None:
    pool = read_mod._DatasetPool(limit=2)
    datasets = [rasterio.open(href) for href in hrefs]
    for href, ds in zip(hrefs, datasets, strict=True):
        pool.give("build", [(href, ds)])
    assert len(pool) == 2
    assert datasets[0].closed and not datasets[1].closed and not datasets[2].closed
    assert pool.take("build", hrefs[0]) is None
    assert pool.take("other build", hrefs[1]) is None
    assert pool.take("build", hrefs[1]) is datasets[1]
    pool.close()
    assert datasets[2].closed
    assert datasets[1] is not None  # (the `is` above narrowed it to take()'s optional type)
    datasets[1].close()


def test_a_forked_child_drops_the_parents_handles_unclosed(hrefs: list[str]) -> None:
    pool = read_mod._DatasetPool(limit=4)
    ds = rasterio.open(hrefs[0])
    pool.give("build", [(hrefs[0], ds)])
    pool._after_fork()  # what os.register_at_fork runs in the child
    assert len(pool) == 0
    assert pool.take("build", hrefs[0]) is None
    assert not ds.closed  # its connections belong to the parent too
    ds.close()


def _threads_used(calls: int) -> set[int]:
    """The pool threads that ran ``calls`` slow-ish calls handed to ``_parallel`` together."""

    def which() -> int:
        time.sleep(0.01)  # long enough for every idle thread to take a call
        return threading.get_ident()

    results = read_mod._parallel([which for _ in range(calls)])
    return {r for r in results if isinstance(r, int)}


def test_storage_that_answers_at_once_narrows_the_pools(
    hrefs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local files open at once: after NEAR_OPENS opens the build's read pools shrink to the
    near sizes; until then they stay wide."""
    speed = read_mod._StorageSpeed()
    monkeypatch.setattr(read_mod, "_storage_speed", speed)
    more = [_tif(tmp_path / f"c{i}.tif", 10 + i) for i in range(read_mod.NEAR_OPENS)]
    cache = DatasetCache()
    with cache.borrow(*more[: read_mod.NEAR_OPENS - 1]):
        pass
    assert speed.threads(8, 2) == 8
    assert len(_threads_used(read_mod.IO_THREADS)) > read_mod.NEAR_IO_THREADS
    with cache.borrow(more[-1]):
        pass
    cache.close()
    assert speed.threads(8, 2) == 2, speed._hosts
    assert len(_threads_used(read_mod.IO_THREADS)) <= read_mod.NEAR_IO_THREADS
    with read_mod.background() as start:
        futures = [start(lambda: threading.get_ident()) for _ in range(8)]
    assert len({f.result() for f in futures}) <= read_mod.NEAR_SOURCE_THREADS


def test_on_storage_that_answers_at_once_every_read_runs_on_the_calling_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool of one is no pool: reads, source reads and a shard's samples run one after
    another on the calling thread, errors handed back as from a pool."""
    speed = read_mod._StorageSpeed()
    monkeypatch.setattr(read_mod, "_storage_speed", speed)
    assert read_mod.samples_at_once(2) == 2  # not judged yet: remote until shown otherwise
    for i in range(read_mod.NEAR_OPENS):
        speed.note(f"/data/{i}.tif", 0.0)
    assert read_mod.read_pool_threads() == (1, 1)
    assert read_mod.samples_at_once(2) == 1
    me = threading.get_ident()
    order: list[int] = []

    def call(i: int) -> int:
        order.append(i)
        if i == 2:
            raise ValueError("broken window")
        return threading.get_ident()

    results = read_mod._parallel([functools.partial(call, i) for i in range(4)])
    assert results[:2] == [me, me] and results[3] == me
    assert isinstance(results[2], ValueError)
    with read_mod.background() as start:
        first = start(lambda: call(10))
        assert order[-1] == 10 and first.done()  # ran before start() returned
        broken = start(lambda: call(2))
    assert first.result() == me
    with pytest.raises(ValueError, match="broken window"):
        broken.result()
    assert order == [0, 1, 2, 3, 10, 2]


def test_on_remote_storage_the_caller_makes_the_last_call_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Wide pools: in the build's GDAL options all but the last call go to the pool and the
    caller makes the last (it would only wait otherwise); results and errors come back in the
    calls' order. A caller outside those options hands every call to the pool's threads."""
    monkeypatch.setattr(read_mod, "_storage_speed", read_mod._StorageSpeed())
    assert read_mod.read_pool_threads()[0] == read_mod.IO_THREADS
    me = threading.get_ident()

    def run(calls: int) -> list[object]:
        started = threading.Barrier(calls, timeout=5)  # all run at once

        def call(i: int) -> int:
            started.wait()
            if i == 1:
                raise ValueError("broken window")
            return threading.get_ident()

        return read_mod._parallel([functools.partial(call, i) for i in range(calls)])

    with read_mod.gdal_env():
        results = run(3)
        assert read_mod._parallel([lambda: 3, lambda: 4]) == [3, 4]
    assert isinstance(results[1], ValueError)
    assert results[2] == me and results[0] not in (me, None)
    results = run(3)
    assert isinstance(results[1], ValueError)
    assert me not in results


def test_the_slowest_host_sets_the_read_pools_size() -> None:
    speed = read_mod._StorageSpeed()
    step = read_mod.OPEN_S_PER_THREAD
    assert speed.threads(8, 2) == 8  # nothing opened yet: remote until shown otherwise
    for i in range(read_mod.NEAR_OPENS - 1):
        speed.note(f"http://127.0.0.1:8000/{i}.tif?sig=x", step / 10)
    speed.note("http://127.0.0.1:8000/0.tif?sig=x", step / 10)  # opened again: not counted
    assert speed.threads(8, 2) == 8
    speed.note("http://127.0.0.1:8000/a.tif?sig=x", step / 10)
    assert speed.threads(8, 2) == 2
    # A second host (object storage, say) opened fewer times: not judged yet.
    for i in range(read_mod.NEAR_OPENS - 1):
        speed.note(f"https://example.blob.core.windows.net/{i}.tif", 20 * step)
    assert speed.threads(8, 2) == 8
    speed.note("https://example.blob.core.windows.net/c.tif", 2.5 * step)
    assert speed.threads(8, 2) == 3  # its quickest open counts: a little latency after all
    for i in range(read_mod.NEAR_OPENS):
        speed.note(f"s3://bucket/{i}.tif", 16 * step)
    assert speed.threads(8, 2) == 8
    # Once a host's TIMED_OPENS first opens are in, later ones change nothing (bounded memory).
    for i in range(read_mod.TIMED_OPENS):
        speed.note(f"s3://bucket/more-{i}.tif", 16 * step)
    speed.note("s3://bucket/late.tif", 0.0)
    assert speed.threads(8, 2) == 8


def test_a_forked_child_judges_its_own_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    speed = read_mod._StorageSpeed()
    for i in range(read_mod.NEAR_OPENS):
        speed.note(f"/data/{i}.tif", 0.0)
    assert speed.threads(8, 2) == 2
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as seen from a forked child
    assert speed.threads(8, 2) == 8
    speed.note("/data/0.tif", 0.0)
    assert speed.threads(8, 2) == 8  # one open of its own so far


def test_a_sample_keeps_its_pool_while_the_process_moves_to_the_near_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sample's background block holds its pool; another sample moving the process to the
    near size (or to new GDAL options) must not close it under the first one."""
    speed = read_mod._StorageSpeed()
    monkeypatch.setattr(read_mod, "_storage_speed", speed)
    with read_mod.background() as start:
        first = start(lambda: 1)
        for i in range(read_mod.NEAR_OPENS):
            speed.note(f"/data/{i}.tif", 0.0)
        with read_mod.background() as start_other:  # another sample: the near pool
            other = start_other(lambda: 2)
        monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "13")  # and a pool for other options
        assert read_mod._parallel([lambda: 3, lambda: 4]) == [3, 4]
        late = start(lambda: 5)  # raised "cannot schedule new futures after shutdown"
    assert (first.result(), other.result(), late.result()) == (1, 2, 5)


def test_a_pool_let_go_ends_its_threads() -> None:
    """A pool replaced by one of another size is not shut down under its users, nor kept."""
    pool = read_mod._pool("las-test", 3)
    assert read_mod._pool("las-test", 3) is pool
    list(pool.map(lambda _: time.sleep(0.01), range(3)))
    threads = list(pool._threads)
    assert threads
    assert read_mod._pool("las-test", 2) is not pool
    assert pool.submit(lambda: 7).result() == 7  # still usable by whoever holds it
    del pool
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads)
    del read_mod._pools["las-test"]
