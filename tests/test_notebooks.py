"""The notebooks run top to bottom (nbclient) on a small dataset built from the offline world."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # a dev extra: imported below with importorskip
    from nbformat import NotebookNode

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the dev extra")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the dev extra")
pytest.importorskip("ipykernel", reason="ipykernel is in the dev extra")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
OURS = ("01_explore_shards.ipynb", "03_training_quickstart.ipynb")
KERNEL = "las-test-python"


@pytest.fixture(scope="module")
def dataset(small_las: Path) -> Path:
    return small_las


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset: Path) -> Path:
    """A kernelspec running this interpreter (not whatever `python3` kernel a user has)."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "las tests", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("LAS_DATASET", str(dataset))
    monkeypatch.setenv("LAS_TRAIN_OUT", str(tmp_path / "train"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    work = tmp_path / "work"
    work.mkdir()
    return work


def _execute(name: str, work: Path) -> NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name=KERNEL, resources={"metadata": {"path": str(work)}}
    )
    client.execute()
    return nb


def _outputs(nb: NotebookNode) -> tuple[str, list[str]]:
    text, kinds = [], []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            kinds += list(output.get("data", {}))
            text.append(output.get("text", ""))
            text.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(text), kinds


@pytest.mark.parametrize("name", OURS)
def test_notebook_is_small_clean_nbformat4(name: str) -> None:
    path = NOTEBOOKS / name
    assert path.stat().st_size < 50_000
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit it cleared"


def test_explore_shards(kernel_env: Path) -> None:
    nb = _execute("01_explore_shards.ipynb", kernel_env)
    text, kinds = _outputs(nb)
    assert "Sentinel-2 bands: ['B01', 'B02', 'B03', 'B04'" in text
    assert "'B12']" in text
    assert "sentinel-1 bands: ['vv', 'vh']" in text.lower()
    assert "labels/esa-worldcover/native" in text
    assert "ok" in text and "EPSG:" in text
    assert "image/png" in kinds, "the sample plot is missing"


def test_training_quickstart(kernel_env: Path) -> None:
    if importlib.util.find_spec("las_builder.model.train") is None:
        pytest.skip("las_builder.model (LandSegmenter) is not in this checkout yet")
    nb = _execute("03_training_quickstart.ipynb", kernel_env)
    text, _ = _outputs(nb)
    assert "losses: [" in text and "checkpoint:" in text
    assert (kernel_env.parent / "train" / "checkpoints" / "last.pt").is_file()
