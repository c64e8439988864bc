"""Shared fixtures: generated worlds, small built datasets, the real STAC fixtures, waiting for
processes to end."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from las_builder.world.create import create_world

SHARED_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "stac"
DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny offline world (three regions), generated once per test session."""
    path = tmp_path_factory.mktemp("world") / "tiny"
    create_world(path, seed=7, preset="tiny", progress=False)
    return path


@pytest.fixture(scope="session")
def stac_fixtures() -> Path:
    """The recorded public STAC JSON (../shared/fixtures/stac); skips when absent."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip("../shared/fixtures/stac is absent (a user's clone has no ../shared)")
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def served_world(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A copy of the tiny world served by rustac and the range server for the whole session.

    A copy is served because serving writes serve.json and .serve/ into the world folder, and
    ``tiny_world`` must stay byte-identical for the determinism test.
    """
    from las_builder.world.serve import serve_world, stop_world

    world = tmp_path_factory.mktemp("served") / "tiny"
    shutil.copytree(tiny_world, world)
    info = serve_world(world, detach=True)
    try:
        yield {"world": world, "stac_url": info.stac_url, "assets_url": info.assets_url}
    finally:
        stop_world(world)


BuildLas = Callable[[Path, int], Path]


@pytest.fixture(scope="session")
def build_las(served_world: dict) -> BuildLas:
    """Plan and build ``count`` samples of 32 px (4 a shard, NAIP at 4x) from the served tiny
    world into ``out`` with the CLI, as a user would; returns ``out``."""
    from typer.testing import CliRunner

    from las_builder.cli import app

    def build(out: Path, count: int) -> Path:
        sets = [
            f"stac.url={served_world['stac_url']}",
            "sample.size_px=32",
            f"sample.count={count}",
            f"output.path={out}",
            "output.samples_per_shard=4",
            "imagery.naip.factor=4",
        ]
        args = [str(DEMO_RECIPE)] + [a for s in sets for a in ("--set", s)]
        for command in ("plan", "build"):
            result = CliRunner().invoke(app, [command, *args, "--quiet"])
            assert result.exit_code == 0, result.output
        return out

    return build


@pytest.fixture(scope="session")
def small_las(build_las: BuildLas, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 samples built once per session, shared read-only by the report, notebook and browser
    tests (a test that writes into a dataset builds its own)."""
    return build_las(tmp_path_factory.mktemp("las-small") / "las", 24)


def _runs(process: psutil.Process) -> bool:
    # A zombie has exited; an orphan's new parent (PID 1, in a container often not an init
    # that reaps at once) may take seconds to reap it, or never.
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


WaitExited = Callable[[list[psutil.Process], float], list[psutil.Process]]


@pytest.fixture
def wait_exited() -> WaitExited:
    """``wait(processes, timeout_s)``: the processes still running after up to ``timeout_s``."""

    def wait(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout_s
        while True:
            alive = [p for p in processes if _runs(p)]
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.05)

    return wait


@pytest.fixture
def catalog_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of catalog/ that LAS_CATALOG points at (tests edit it freely)."""
    from las_builder._paths import catalog_dir

    dest = tmp_path / "catalog"
    shutil.copytree(catalog_dir(), dest)
    monkeypatch.setenv("LAS_CATALOG", str(dest))
    return dest
