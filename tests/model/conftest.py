"""A tiny LAS dataset (12 samples of 32 px) built once for the model tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from las_builder.cli import app

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "demo.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core runner, 2 spinning OpenMP threads can be 10x
    slower than one when other processes compete for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def las_tiny(served_world: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plan + build 12 samples of 32 px (NAIP at 4x) from the served tiny world."""
    out = tmp_path_factory.mktemp("model-las") / "las"
    sets = [
        f"stac.url={served_world['stac_url']}",
        "sample.size_px=32",
        "sample.count=12",
        f"output.path={out}",
        "output.samples_per_shard=4",
        "imagery.naip.factor=4",
    ]
    args = [str(RECIPE)] + [a for s in sets for a in ("--set", s)]
    runner = CliRunner()
    for command in ("plan", "build"):
        result = runner.invoke(app, [command, *args, "--quiet"])
        assert result.exit_code == 0, result.output
    return out
