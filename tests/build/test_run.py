"""The build's process choices: workers per core, bounded submission, memory, forked locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
from dask.distributed import Client, LocalCluster

from las_builder.build import read, run, store
from las_builder.build.run import _memory_summary, _process_key, _run_submitted, auto_workers

if TYPE_CHECKING:
    from conftest import WaitExited


@pytest.mark.parametrize(
    ("cores", "shards", "expected"),
    [(1, 50, None), (2, 50, 2), (8, 50, 8), (8, 3, 3), (8, 1, None), (4, 0, None)],
)
def test_auto_workers_is_one_per_core_and_threads_below_two(
    monkeypatch: pytest.MonkeyPatch, cores: int, shards: int, expected: int | None
) -> None:
    monkeypatch.setattr(run, "usable_cores", lambda: cores)
    assert auto_workers(shards) == expected


def test_usable_cores_follows_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this system")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert run.usable_cores() == 3


def _slow_square(x: int) -> dict[str, Any]:
    time.sleep(0.02)
    return {"shard": x, "square": x * x}


@pytest.mark.parametrize(("threads", "at_least", "window"), [(1, 3, 3), (2, 0, 4)])
def test_run_submitted_keeps_a_bounded_window_and_runs_every_task(
    threads: int, at_least: int, window: int
) -> None:
    in_flight, most, results = 0, 0, []
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=threads, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):

        def submit(shard: int) -> Any:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            return client.submit(_slow_square, shard, key=f"square-{shard}")

        def finished(result: dict[str, Any]) -> None:
            nonlocal in_flight
            in_flight -= 1
            results.append(result)

        _run_submitted(client, list(range(17)), submit, finished, at_least)
        assert most == window  # the window was filled, never exceeded
        assert in_flight == 0
        assert sorted(r["shard"] for r in results) == list(range(17))
        assert all(r["square"] == r["shard"] ** 2 for r in results)
        # Released as they finished: the scheduler holds none of them now.
        deadline = time.monotonic() + 10
        while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
            assert time.monotonic() < deadline, "finished tasks were kept by the scheduler"
            time.sleep(0.05)


def test_memory_summary_adds_the_driver_and_each_worker() -> None:
    here = _process_key()
    summary = _memory_summary({"node-a:11": 300.0, "node-b:12": 250.5, here: 1.0})
    assert summary["processes"] == 3
    assert summary["worker_peak_rss_mib"] == [300.0, 250.5]
    driver = summary["driver_peak_rss_mib"]
    assert driver > 1.0  # this process's VmHWM, not the 1 MiB a task reported
    assert summary["total_peak_rss_mib"] == pytest.approx(driver + 550.5, abs=0.1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")
def test_a_forked_child_drops_the_build_lock(tmp_path: Path) -> None:
    with store.build_lock(str(tmp_path)):
        (fd,) = store._held_fds
        pid = os.fork()
        if pid == 0:  # the child: its copy of the descriptor is closed, no lock is held
            try:
                closed = False
                try:
                    os.fstat(fd)
                except OSError:
                    closed = True
                ok = closed and not store._held and not store._held_fds
                ok = ok and store._held_lock.acquire(timeout=1)
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        os.fstat(fd)  # the parent still holds its own
    assert not store._held_fds


def test_the_fork_reset_makes_a_fresh_lock_for_held_state() -> None:
    # A thread held the registry's lock at the fork: the child's copy would never be released.
    holder = threading.Lock()
    saved = store._held_lock
    store._held_lock = holder
    holder.acquire()
    try:
        store._forget_locks_after_fork()
        assert store._held_lock is not holder
        assert store._held_lock.acquire(blocking=False)
    finally:
        holder.release()
        store._held_lock = saved


def _judged_storage(monkeypatch: pytest.MonkeyPatch, open_s: float) -> None:
    """This process's storage judged from opens of ``open_s`` seconds each."""
    speed = read._StorageSpeed()
    for i in range(read.NEAR_OPENS):
        speed.note(f"http://storage.example/{i}.tif", open_s)
    monkeypatch.setattr(read, "_storage_speed", speed)


def test_shard_tasks_build_a_sample_at_a_time_where_the_storage_answers_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _judged_storage(monkeypatch, 0.001)
    assert read.read_pool_threads() == (read.NEAR_IO_THREADS, read.NEAR_SOURCE_THREADS)
    inside, most = 0, 0
    count = threading.Lock()

    def shard_task() -> None:
        nonlocal inside, most
        for _ in range(20):
            with run._alone_where_near():
                with count:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.001)
                with count:
                    inside -= 1

    tasks = [threading.Thread(target=shard_task) for _ in range(run.SHARD_TASKS_PER_WORKER)]
    for task in tasks:
        task.start()
    for task in tasks:
        task.join()
    assert most == 1


def test_shard_tasks_overlap_where_the_storage_has_latency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _judged_storage(monkeypatch, 0.040)
    both_inside = threading.Barrier(2, timeout=10)  # broken unless both tasks are in at once

    def shard_task() -> None:
        with run._alone_where_near():
            both_inside.wait()

    tasks = [threading.Thread(target=shard_task) for _ in range(2)]
    for task in tasks:
        task.start()
    for task in tasks:
        task.join()
    assert not both_inside.broken


def test_a_forked_child_gets_a_free_near_sample_lock() -> None:
    held = run._near_sample_lock
    with held:
        run._forget_near_sample_lock()
        try:
            assert run._near_sample_lock is not held
            assert not run._near_sample_lock.locked()
        finally:
            run._near_sample_lock = held


def _worker_settings(dask_worker: Any) -> tuple[Any, ...]:
    import dask

    return (
        dask.config.get("distributed.worker.profile.enabled"),
        dask.config.get("distributed.admin.low-level-log-length"),
        dask_worker.batched_stream.recent_message_log.maxlen,
        _periods(dask_worker),
    )


def _periods(server: Any) -> dict[str, float]:
    """Milliseconds between the wake-ups of a Dask server's timers that tick, check memory
    or sample the system."""
    wanted = ("tick", "memory_monitor", "monitor")
    return {k: pc.callback_time for k, pc in server.periodic_callbacks.items() if k in wanted}


def test_a_local_build_cluster_keeps_no_profile_and_short_message_logs() -> None:
    """The settings reach the forked workers and bound the scheduler's per-worker logs."""
    import dask

    with (
        dask.config.set(run.CLUSTER_CONFIG),
        run._local_cluster(1) as cluster,
        Client(cluster) as client,
    ):
        settings = client.run(_worker_settings)
        assert list(client.nthreads().values()) == [run.SHARD_TASKS_PER_WORKER]
        worker_periods = {"tick": 1000, "memory_monitor": 500, "monitor": 2000}
        assert list(settings.values()) == [(False, 16, 16, worker_periods)]
        streams = list(cluster.scheduler.stream_comms.values())
        assert streams and all(s.recent_message_log.maxlen == 16 for s in streams)
        # The scheduler and the nannies in this process wake as seldom.
        assert _periods(cluster.scheduler) == {"tick": 1000, "monitor": 2000}
        for nanny in cluster.workers.values():
            assert _periods(nanny) == worker_periods


_FORKING_PARENT = """
import os, sys, time
from las_builder.build import run
if sys.argv[1] == "late":
    # A child that runs only once its parent is gone: its first after-fork hook (they run in
    # the order registered) waits for that, then the watch's own hook runs.
    forking = os.getpid()
    def wait_for_the_parent_to_go():
        while os.getppid() == forking:
            time.sleep(0.01)
    os.register_at_fork(after_in_child=wait_for_the_parent_to_go)
if sys.argv[1] in ("watch", "late"):
    run._forked_children_exit_with_this_process()
pid = os.fork()
if pid == 0:
    time.sleep(120)
    os._exit(0)
print(pid, flush=True)
time.sleep(120)
"""


def _orphan_lives(wait_exited: WaitExited, mode: str, within_s: float = 5.0) -> bool:
    """Fork a child from a process, SIGKILL that process: is the child alive ``within_s`` on?

    ``mode``: ``plain`` (no watch), ``watch``, or ``late`` (watched, and the parent is killed
    before the child has run at all).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _FORKING_PARENT, mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    child = psutil.Process(int(proc.stdout.readline()))
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return bool(wait_exited([child], within_s))
    finally:
        if child.is_running():
            child.kill()
        proc.stdout.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")
def test_forked_workers_exit_when_the_build_is_killed(wait_exited: WaitExited) -> None:
    # Without the watch a forked child outlives a killed parent (the test is not vacuous);
    # with it, the child exits after its next poll (0.5 s), and then stays a zombie until
    # PID 1 reaps it (1-2 s here): a zombie counts as exited.
    assert _orphan_lives(wait_exited, "plain")
    assert not _orphan_lives(wait_exited, "watch", within_s=30.0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")
def test_a_child_that_first_runs_after_the_build_died_exits_too(wait_exited: WaitExited) -> None:
    # The child must watch the pid that forked it, not its getppid() when it first runs: by
    # then an orphan's is PID 1's, which never goes (the whole suite's load once delayed a
    # forked child that long, and it lived on).
    assert not _orphan_lives(wait_exited, "late", within_s=30.0)


_FORK_WHILE_LOGGING = """
import logging, os, sys, threading, time
from las_builder.build import run
if sys.argv[1] == "hold":
    run._forked_children_exit_with_this_process()
log = logging.getLogger("forked-while-logging")
log.propagate = False
log.addHandler(logging.FileHandler(os.devnull))
log.setLevel(logging.INFO)
threading.Thread(target=lambda: [log.info("x" * 20000) for _ in iter(int, 1)], daemon=True).start()
hung = 0
for _ in range(int(sys.argv[2])):
    pid = os.fork()
    if pid == 0:
        log.info("the child's first record")
        os._exit(0)
    started = time.monotonic()
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() - started > 1.0:
            hung += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.001)
print(hung)
"""


def test_a_process_forked_while_another_thread_logs_does_not_hang() -> None:
    """A worker forked while a thread of the build writes a log record inherited the stream's
    buffer lock held, and hung at its own first record (a LocalCluster that never started).
    The build's fork hooks hold every handler's lock across the fork."""

    def hung(mode: str, forks: int) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _FORK_WHILE_LOGGING, mode, str(forks)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return int(done.stdout.strip())

    assert hung("plain", 3) > 0  # the hazard is real here: without the hooks children hang
    assert hung("hold", 100) == 0


_READ_AND_EXIT = """
import sys
from las_builder.build import run
output = sys.argv[1]
run.read_plan(output)
n, by_shard = run._plan_by_shard(output)
run.build_status(output, sorted(by_shard))
"""


def test_reading_plan_and_index_never_aborts_the_process_at_exit(small_las: Path) -> None:
    """pyarrow's threads reading a parquet file through a Python file object (fsspec's) could
    abort the process as it exited, beside GDAL: "terminate called without an active
    exception", exit 134, in 48 of 60 runs of such a read on a loaded machine (a CLI run of
    `las build --status` in ~1 of 30). Those reads run without pyarrow's threads."""
    # Eight at once: a loaded machine, where the abort was likeliest (and a quarter the time).
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _READ_AND_EXIT, str(small_las)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-2000:]
        assert "terminate called" not in stderr


def test_a_cluster_without_workers_is_warned_about_and_the_build_goes_on_when_they_come(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An external cluster whose workers all died (or an adaptive one at zero) kept `las
    build` waiting without a word. Now a warning says so, again while it lasts, and the
    build finishes once a worker connects (an autoscaler may bring one: no error)."""
    monkeypatch.setattr(run, "NO_WORKERS_WARN_S", 0.3)
    monkeypatch.setattr(run, "_NO_WORKERS_CHECK_S", 0.05)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
        caplog.at_level("WARNING", logger="las_builder.build.run"),
    ):

        def submit(shard: int) -> Any:
            return client.submit(_slow_square, shard, key=f"square-{shard}")

        def build() -> None:
            try:
                _run_submitted(client, [0, 1, 2], submit, results.append, 2)
            except BaseException as err:  # reported below, in the test's thread
                errors.append(err)

        thread = threading.Thread(target=build)
        thread.start()
        deadline = time.monotonic() + 30
        while sum("no dask worker connected" in r.getMessage() for r in caplog.records) < 2:
            assert time.monotonic() < deadline, "no repeated warning about the missing workers"
            time.sleep(0.05)
        assert not results  # nothing could run
        cluster.scale(1)
        thread.join(timeout=60)
        assert not thread.is_alive() and not errors, errors
    assert sorted(r["shard"] for r in results) == [0, 1, 2]
    messages = [r.getMessage() for r in caplog.records]
    first = next(m for m in messages if "no dask worker connected" in m)
    address = cluster.scheduler_address
    assert f"no dask worker connected to {address} for " in first
    assert "3 shards wait: start workers (`dask worker " in first and "press Ctrl-C" in first
    assert any("dask workers connected" in m and "building again" in m for m in messages)
