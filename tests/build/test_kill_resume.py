"""`las build` killed with SIGKILL mid-run, then run again: the bytes of an uninterrupted build.

A shard is complete (its arrays, then its index part) or absent: the index parts present after
the kill hold arrays equal to the reference build; a shard whose arrays were (partly) written
without its index part is rebuilt; finished shards are not touched again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import psutil
import pytest
import zarr
from typer.testing import CliRunner

from las_builder.cli import app

if TYPE_CHECKING:
    from conftest import WaitExited

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "demo.yaml"
SEED = int(os.environ.get("LAS_KILL_SEED", "20240607"))
SAMPLES, PER_SHARD = 16, 2
SHARDS = SAMPLES // PER_SHARD


def _args(stac_url: str, out: Path) -> list[str]:
    sets = [
        f"stac.url={stac_url}",
        "sample.size_px=32",
        f"sample.count={SAMPLES}",
        f"output.path={out}",
        f"output.samples_per_shard={PER_SHARD}",
        "imagery.naip.factor=4",
    ]
    return [str(RECIPE)] + [a for s in sets for a in ("--set", s)]


def _digest(store: Path) -> dict[str, str]:
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


def _parts(out: Path) -> dict[int, int]:
    """Finished shards and the mtime of their index part."""
    folder = out / "index-parts"
    if not folder.is_dir():
        return {}
    return {int(p.name[6:12]): p.stat().st_mtime_ns for p in folder.glob("shard-??????.parquet")}


def _array(group: zarr.Group, path: str) -> zarr.Array:
    """``group[path]``, an array of the store (zarr types a member as an array or a group)."""
    node = group[path]
    assert isinstance(node, zarr.Array), path
    return node


@pytest.fixture(scope="module")
def reference(served_world: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kill-reference") / "las"
    runner = CliRunner()
    for command in ("plan", "build"):
        result = runner.invoke(app, [command, *_args(served_world["stac_url"], out), "--quiet"])
        assert result.exit_code == 0, result.output
    return out


def _kill_mid_build(
    command: list[str], out: Path, delay: float, wait_exited: WaitExited
) -> tuple[dict[int, int], int]:
    """Start the build, SIGKILL it ``delay`` s after its first finished shard.

    Returns the finished shards and how many worker processes the build had.
    """
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not _parts(out):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no shard finished within 120 s"
            time.sleep(0.01)
        time.sleep(delay)
        workers = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        # Its worker processes (the default on 2+ cores) end with it, not as orphans that
        # would go on writing shards under the next build.
        alive = wait_exited(workers, 30.0)  # exited, if not yet reaped by their new parent
        assert not alive, f"worker processes outlived the killed build: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    return _parts(out), len(workers)


def test_sigkill_then_resume_is_byte_identical(
    reference: Path, served_world: dict, tmp_path: Path, wait_exited: WaitExited
) -> None:
    out = tmp_path / "las"
    command = [
        sys.executable,
        "-m",
        "las_builder.cli",
        "build",
        *_args(served_world["stac_url"], out),
        "--quiet",
    ]
    rng = random.Random(SEED)
    delay = rng.uniform(0.0, 0.4)
    # On a fast, quiet machine every shard can finish within the delay: a kill that came too
    # late tests nothing, so it is tried again sooner (the delay quartered, then none).
    for attempt_delay in (delay, delay / 4, 0.0):
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        shutil.copy(reference / "plan.parquet", out / "plan.parquet")  # the same recipe's plan
        done, n_workers = _kill_mid_build(command, out, attempt_delay, wait_exited)
        print(
            f"seed {SEED}: killed {attempt_delay:.3f} s after the first shard ({n_workers} "
            f"worker processes); done {sorted(done)}"
        )
        if len(done) < SHARDS:
            break
    assert 1 <= len(done) < SHARDS, f"the kill came too late (seed {SEED}): {sorted(done)}"
    assert not (out / "index.parquet").exists()

    # An index part never exists without its arrays.
    built, ref = (
        zarr.open_group(out / "las.zarr", mode="r"),
        zarr.open_group(reference / "las.zarr", mode="r"),
    )
    labels = ref["labels"]
    assert isinstance(labels, zarr.Group)
    paths = [p for p, a in ref.arrays()] + [
        f"labels/{g}/{k}" for g, group in labels.groups() for k, _ in group.arrays()
    ]
    assert "sentinel-2" in paths and "labels/esa-worldcover/native" in paths
    for shard in done:
        rows = slice(shard * PER_SHARD, (shard + 1) * PER_SHARD)
        for path in paths:
            np.testing.assert_array_equal(
                _array(built, path)[rows], _array(ref, path)[rows], err_msg=path
            )

    # A shard cut short: garbage where its arrays' objects are, and beside each the file zarr
    # writes an object into before renaming it (a kill in between leaves it); no index part.
    torn = min(set(range(SHARDS)) - set(done))
    sharded = (p for p in paths if _array(built, p).shards is not None)  # not the band-name arrays
    for path in sharded:
        target = (out / "las.zarr" / path / "c" / str(torn)).joinpath(
            *["0"] * (_array(built, path).ndim - 1)
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"half-written shard")
        target.with_name(f"0.{uuid.uuid4().hex}.partial").write_bytes(b"half-written shard")

    runner = CliRunner()
    status = json.loads(
        runner.invoke(app, ["build", *_args(served_world["stac_url"], out), "--status"]).output
    )
    assert status["shards"] == SHARDS
    assert status["shards_done"] == len(done)
    assert status["shards_remaining"] == SHARDS - len(done)
    assert status["ok"] + status["skipped"] + status["failed"] == PER_SHARD * len(done)

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    after = _parts(out)
    assert set(after) == set(range(SHARDS))
    assert {s: after[s] for s in done} == done, "finished shards were built again"
    assert _digest(out / "las.zarr") == _digest(reference / "las.zarr")
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "index.parquet"), pd.read_parquet(reference / "index.parquet")
    )


def test_ctrl_c_stops_the_build_and_the_same_command_goes_on(
    reference: Path, served_world: dict, tmp_path: Path, wait_exited: WaitExited
) -> None:
    """SIGINT to the build's process group (a terminal's Ctrl-C reaches the workers too):
    exit 130 with one line saying what to do, no worker traceback, no orphan; the same
    command then finishes, byte-identical to an uninterrupted build."""
    out = tmp_path / "las"
    out.mkdir()
    shutil.copy(reference / "plan.parquet", out / "plan.parquet")
    args = ["build", *_args(served_world["stac_url"], out), "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "las_builder.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 120
        while not _parts(out) and proc.poll() is None:
            assert time.monotonic() < deadline, "no shard finished within 120 s"
            time.sleep(0.01)
        workers = psutil.Process(proc.pid).children(recursive=True)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    stderr = err.decode()
    if len(_parts(out)) < SHARDS:  # stopped before the end (else it finished first)
        assert proc.returncode == 130, stderr
        assert "interrupted: finished shards are kept" in stderr
        assert "run the same command again" in stderr
        assert "Traceback" not in stderr, stderr
    assert not wait_exited(workers, 30.0)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _digest(out / "las.zarr") == _digest(reference / "las.zarr")
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "index.parquet"), pd.read_parquet(reference / "index.parquet")
    )
