"""Attacks on resuming, `--status`, `--retry-failed`, the build lock and distributed builds.

A hand-edited or half-deleted output, a lock path taken by a folder, a store of another
version, a scheduler that goes away mid-build, a shard whose worker dies: each is a one-line
error naming what to do, or a build that finishes byte-identical to an uninterrupted one,
never a dataset indexed as built over arrays that are not there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import fsspec
import numpy as np
import pandas as pd
import psutil
import pytest
import zarr
from dask.distributed import Client
from typer.testing import CliRunner

from las_builder.build import run as run_mod
from las_builder.build.store import LOCK_NAME, build_lock
from las_builder.cli import app

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "demo.yaml"
SAMPLES, PER_SHARD = 8, 2
SHARDS = SAMPLES // PER_SHARD


def _args(stac_url: str, out: Path | str) -> list[str]:
    sets = [
        f"stac.url={stac_url}",
        "sample.size_px=32",
        f"sample.count={SAMPLES}",
        f"output.path={out}",
        f"output.samples_per_shard={PER_SHARD}",
        "imagery.naip.factor=4",
    ]
    return [str(RECIPE)] + [a for s in sets for a in ("--set", s)]


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _refused(*args: str) -> str:
    """The error line of a command that must fail with one (exit 2, no traceback)."""
    code, output = _invoke(*args)
    assert code == 2, output
    assert output.startswith("error: ") and "Traceback" not in output, output
    return output


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _status(stac_url: str, out: Path | str) -> dict[str, int]:
    code, output = _invoke("build", *_args(stac_url, out), "--status")
    assert code == 0, output
    counts: dict[str, int] = json.loads(output)
    return counts


def _same_dataset(out: Path, reference: Path) -> None:
    assert _digest(out / "las.zarr") == _digest(reference / "las.zarr")
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "index.parquet"), pd.read_parquet(reference / "index.parquet")
    )


@pytest.fixture(scope="module")
def reference(served_world: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 samples in 4 shards, planned and built without interruption."""
    out = tmp_path_factory.mktemp("resume-reference") / "las"
    for command in ("plan", "build"):
        code, output = _invoke(command, *_args(served_world["stac_url"], out), "--quiet")
        assert code == 0, output
    return out


@pytest.fixture
def copy(reference: Path, tmp_path: Path) -> Path:
    """A copy of the reference build, for a test to damage."""
    out = tmp_path / "las"
    shutil.copytree(reference, out)
    return out


def test_a_store_deleted_by_hand_is_built_again_not_indexed_as_built(
    copy: Path, reference: Path, served_world: dict
) -> None:
    """`las.zarr` deleted, as the errors about another recipe or plan advise, its index parts
    left: they marked every shard finished, so `--status` said all done and the build
    "built 8 of 8 samples" into a new, empty store. Now the parts count for nothing and go."""
    stac = served_world["stac_url"]
    shutil.rmtree(copy / "las.zarr")
    status = _status(stac, copy)
    assert (status["shards_done"], status["shards_remaining"]) == (0, SHARDS)
    assert status["ok"] + status["skipped"] + status["failed"] == 0
    code, output = _invoke("build", *_args(stac, copy), "--quiet")
    assert code == 0, output
    _same_dataset(copy, reference)
    assert _status(stac, copy)["shards_done"] == SHARDS


def test_a_store_deleted_from_object_storage_is_built_again(
    s3: str, reference: Path, served_world: dict
) -> None:
    """The same on S3: the stale parts are found by listing and deleted there."""
    stac, out = served_world["stac_url"], f"{s3}/deleted-store"
    code, output = _invoke("plan", *_args(stac, out), "--quiet")
    assert code == 0, output
    code, output = _invoke("build", *_args(stac, out), "--quiet", "--workers", "0")
    assert code == 0, output
    fs = fsspec.filesystem("s3")
    fs.rm(f"{out}/las.zarr", recursive=True)
    fs.invalidate_cache()
    assert _status(stac, out)["shards_done"] == 0
    code, output = _invoke("build", *_args(stac, out), "--quiet", "--workers", "0")
    assert code == 0, output
    remote = zarr.open_group(f"{out}/las.zarr", mode="r")
    local = zarr.open_group(reference / "las.zarr", mode="r")
    for path in ("sentinel-2", "sentinel-1", "labels/esa-worldcover/las", "consensus"):
        expected = local[path]
        assert isinstance(expected, zarr.Array)
        got = remote[path]
        assert isinstance(got, zarr.Array)
        np.testing.assert_array_equal(got[:], expected[:], err_msg=path)
    with fsspec.open(f"{out}/index.parquet", "rb") as f:
        index = pd.read_parquet(f)
    pd.testing.assert_frame_equal(index, pd.read_parquet(reference / "index.parquet"))


def test_retry_failed_over_an_unreadable_part_is_one_line_and_deletes_nothing(
    copy: Path, served_world: dict
) -> None:
    """It was pyarrow's traceback (ArrowInvalid), raised by the CLI before the build."""
    failing = copy / "index-parts" / "shard-000001.parquet"
    part = pd.read_parquet(failing)
    part.loc[0, ["status", "reason"]] = ["failed", "ReadError: HTTP 503 (simulated outage)"]
    part.to_parquet(failing, index=False)
    (copy / "index-parts" / "shard-000002.parquet").write_bytes(b"PAR1 torn by a copy")
    before = _digest(copy)
    output = _refused("build", *_args(served_world["stac_url"], copy), "--retry-failed", "-q")
    assert "index-parts/shard-000002.parquet is unreadable (ArrowInvalid: " in output
    assert "delete it and run `las build` again to rebuild shard 2" in output
    assert _digest(copy) == before  # the failing shard's part and the index are still there


def test_a_folder_where_the_lock_goes_is_one_line_and_builds_nothing(
    copy: Path, served_world: dict
) -> None:
    """It was IsADirectoryError's traceback."""
    (copy / "index-parts" / "shard-000003.parquet").unlink()
    (copy / LOCK_NAME).mkdir()
    before = _digest(copy)
    output = _refused("build", *_args(served_world["stac_url"], copy), "--quiet")
    assert f"cannot create the build lock {copy / LOCK_NAME} (IsADirectoryError: " in output
    assert "a folder is in its place: remove it" in output
    assert _digest(copy) == before


def test_a_lock_file_removed_while_held_ends_the_build_cleanly(tmp_path: Path) -> None:
    """A build whose lock file was deleted (by hand, or with the output) ended in
    FileNotFoundError after its last shard; the next build locks as before."""
    with build_lock(str(tmp_path)):
        (tmp_path / LOCK_NAME).unlink()
    with build_lock(str(tmp_path)):
        assert (tmp_path / LOCK_NAME).is_file()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_store_of_another_version_is_refused_not_made_again(
    copy: Path, served_world: dict
) -> None:
    """A store made by a las-builder that writes another store version was created again
    over (every array made anew, every shard lost)."""
    meta_path = copy / "las.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["las_store_version"] = 99
    meta_path.write_text(json.dumps(meta))
    (copy / "index-parts" / "shard-000003.parquet").unlink()
    before = _digest(copy)
    output = _refused("build", *_args(served_world["stac_url"], copy), "--quiet")
    assert "las.zarr is a store of version 99, this las-builder writes version 1" in output
    assert _digest(copy) == before
    status = _status(served_world["stac_url"], copy)  # its parts still count
    assert status["shards_done"] == SHARDS - 1


def test_store_metadata_that_is_not_json_is_named(copy: Path, served_world: dict) -> None:
    """The build said only "error: Expecting value: line 1 column 1 (char 0)"."""
    stac = served_world["stac_url"]
    (copy / "las.zarr" / "zarr.json").write_bytes(b"\x00\x01 not json")
    before = _digest(copy)
    for flags in (("--quiet",), ("--status",)):
        output = _refused("build", *_args(stac, copy), *flags)
        assert f"{copy}/las.zarr/zarr.json is not a Zarr store's metadata (" in output
        assert "delete" in output and "choose another output.path" in output
    assert _digest(copy) == before


def test_a_shard_whose_workers_die_is_its_error_and_the_others_finish() -> None:
    """A task whose worker process died (out of memory, a crash in a C library) raised
    dask's KilledWorker out of the build's loop: a traceback, the other shards' results
    lost. Now it is that shard's error, as a shard that failed on its own."""
    results: list[dict[str, Any]] = []
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        run_mod._local_cluster(1) as cluster,
        Client(cluster) as client,
    ):

        def submit(shard: int) -> Any:
            if shard == 1:  # its worker process exits mid-task
                return client.submit(os._exit, 1, key=f"dies-{shard}")
            return client.submit(dict, shard=shard, rows=[], error=None, key=f"ok-{shard}")

        run_mod._run_submitted(client, [0, 1, 2, 3], submit, results.append, 0)
    by_shard = {r["shard"]: r for r in results}
    assert sorted(by_shard) == [0, 1, 2, 3]  # each reported once, none lost
    error = by_shard[1]["error"]
    assert error.startswith("KilledWorker: ") and "\n" not in error
    # Tasks running beside it on that worker die with it (rebuilt by the next build).
    for shard in (0, 2, 3):
        assert by_shard[shard]["error"] is None or by_shard[shard]["error"].startswith(
            "KilledWorker: "
        )


@pytest.fixture
def external_cluster(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A dask scheduler and one worker (one thread) started apart: (address, scheduler)."""
    file = tmp_path / "scheduler.json"
    dask_cli = [sys.executable, "-m", "dask"]
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [*dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
        + ["--scheduler-file", str(file)],
        **quiet,
    )
    started = [scheduler]
    try:
        for _ in range(600):
            if file.exists() and file.stat().st_size:
                break
            assert scheduler.poll() is None, "the dask scheduler exited"
            time.sleep(0.1)
        started.append(
            subprocess.Popen(
                [*dask_cli, "worker", "--scheduler-file", str(file), "--nworkers", "1"]
                + ["--nthreads", "1", "--no-dashboard"],
                **quiet,
            )
        )
        with Client(scheduler_file=str(file), timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            address = str(client.scheduler.address)
        yield address, scheduler
    finally:
        for proc in reversed(started):
            for child in psutil.Process(proc.pid).children(recursive=True) if _alive(proc) else []:
                child.kill()
            proc.kill()
            proc.wait(timeout=30)


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def test_losing_the_scheduler_is_one_line_and_the_same_build_goes_on(
    reference: Path,
    served_world: dict,
    tmp_path: Path,
    external_cluster: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """The scheduler killed after the first shard: the build ended in dask's traceback
    (FutureCancelledError: scheduler-connection-lost). Now one line says what happened and
    what is kept, and the same build without the cluster completes the dataset."""
    address, scheduler = external_cluster
    out = tmp_path / "las"
    out.mkdir()
    shutil.copy(reference / "plan.parquet", out / "plan.parquet")
    args = ["build", *_args(served_world["stac_url"], out), "--quiet"]
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}  # its reconnect
    build = subprocess.Popen(
        [sys.executable, "-m", "las_builder.cli", *args, "--scheduler", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((out / "index-parts").glob("shard-*.parquet")):
            assert build.poll() is None, build.stderr.read().decode() if build.stderr else ""
            assert time.monotonic() < deadline, "no shard finished within 120 s"
            time.sleep(0.01)
        scheduler.send_signal(signal.SIGKILL)
        _, err = build.communicate(timeout=120)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait(timeout=30)
    stderr = err.decode()
    done = len(list((out / "index-parts").glob("shard-*.parquet")))
    assert done < SHARDS, "every shard finished before the scheduler was killed"
    assert build.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert f"error: lost the dask scheduler at {address} while shards were building" in stderr
    assert f"{done} of {SHARDS} shards are built and kept: run `las build` again" in stderr
    code, output = _invoke(*args, "--workers", "0")
    assert code == 0, output
    _same_dataset(out, reference)


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A moto S3 server on a free loopback port with a bucket, reached through the AWS
    variables only (as tests/build/test_s3.py's)."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        mp.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.delenv("AWS_PROFILE", raising=False)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("las-resume")
        try:
            yield "s3://las-resume"
        finally:
            fsspec.filesystem("s3").clear_instance_cache()
            server.stop()
