"""A tiny LAS dataset (12 samples of 32 px) built once for the model tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

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
def las_tiny(
    build_las: Callable[[Path, int], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Plan + build 12 samples of 32 px (NAIP at 4x) from the served tiny world."""
    return build_las(tmp_path_factory.mktemp("model-las") / "las", 12)
