"""`las train` / `las eval` / `las predict` on a tiny built dataset: checkpoints, resume, metrics,
zero-shot prediction."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import rasterio
import torch
import typer
import yaml
import zarr
from affine import Affine
from typer.testing import CliRunner

from las_builder.cli_train import eval_, predict, train
from las_builder.model.train import load_checkpoint

app = typer.Typer()
app.command("train")(train)
app.command("eval")(eval_)
app.command("predict")(predict)
runner = CliRunner()


def _config(las: Path, out: Path, steps: int, keep: int = 1) -> Path:
    cfg = {
        "name": "test",
        "dataset": str(las),
        "products": ["esa-worldcover", "dynamic-world-v1:native"],
        "product_sampling": "sample",
        "inputs": [["sentinel-2"], ["sentinel-1"], ["sentinel-2", "sentinel-1"], ["naip"]],
        "eval_inputs": ["sentinel-2"],
        "naip_factor": 1,
        "val_fraction": 0.25,
        "model": {"size": "tiny"},
        "optim": {"lr": 0.002, "batch_size": 4, "steps": steps, "warmup_steps": 2},
        "seed": 3,
        "log_every": 1,
        "checkpoint_every": 2,
        "keep_checkpoints": keep,
        "out_dir": str(out),
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def run(las_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    _invoke("train", str(_config(las_tiny, out, 4)), "--quiet")
    return out


def test_train_writes_checkpoints_and_metrics(run: Path) -> None:
    assert (run / "checkpoints" / "last.pt").is_file()
    assert [p.name for p in (run / "checkpoints").glob("step-*.pt")] == ["step-0000004.pt"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [int(r["step"]) for r in train_rows] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r["loss"])) for r in train_rows)
    assert any(r["split"] == "val" and r["miou"] for r in rows)
    try:
        import tensorboard  # noqa: F401 - optional; `make install` brings it
    except ImportError:
        assert not (run / "tb").exists()  # CSV only, with a warning
    else:
        assert (run / "tb").is_dir()


def test_resume_continues_from_the_saved_step(run: Path, las_tiny: Path, tmp_path: Path) -> None:
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    _invoke("train", str(_config(las_tiny, resumed, 6)), "--resume", "--quiet")
    rows = [r for r in csv.DictReader((resumed / "metrics.csv").open()) if r["split"] == "train"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    _, _, ckpt = load_checkpoint(resumed)
    assert ckpt["step"] == 6


def test_resume_matches_an_uninterrupted_run(las_tiny: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    _invoke("train", str(_config(las_tiny, straight, 6, keep=3)), "--quiet")
    partial = tmp_path / "partial"
    shutil.copytree(straight, partial)
    ckpts = partial / "checkpoints"
    shutil.copy(ckpts / "step-0000004.pt", ckpts / "last.pt")
    _invoke("train", str(_config(las_tiny, partial, 6, keep=3)), "--resume", "--quiet")
    _, _, ref = load_checkpoint(straight)
    _, _, got = load_checkpoint(partial)
    assert got["step"] == 6
    # data order, augmentation RNG, optimiser and schedule are restored: identical weights
    for name, tensor in ref["model"].items():
        torch.testing.assert_close(got["model"][name], tensor, msg=name)


def test_resume_without_checkpoint_fails(las_tiny: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(_config(las_tiny, tmp_path / "none", 2)), "--resume"])
    assert result.exit_code == 2
    assert "no checkpoint" in result.output


def test_checkpoint_round_trip(run: Path, las_tiny: Path) -> None:
    model, prompter, ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    again, _, _ = load_checkpoint(run)
    assert ckpt["step"] == 4
    assert ckpt["model_config"]["size"] == "tiny"
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, ckpt["model"][name])
    names = ckpt["class_names"]["dynamic-world-v1:native"]
    text = prompter.embed(names)  # cached in the checkpoint: no encoder needed
    assert prompter._encode is None
    x = torch.rand(1, 12, 32, 32)
    wl = torch.tensor(ckpt["bands"]["sentinel-2"][0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, wl, text)["logits"], again(x, wl, text)["logits"])


def test_eval_scores_products_and_truth(run: Path, las_tiny: Path, served_world: dict) -> None:
    out = run / "eval" / "metrics.json"
    text = _invoke(
        "eval", str(run), str(las_tiny), "--truth", str(served_world["world"]),
        "--split", "all", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert "metrics written" in text
    metrics = json.loads(out.read_text())
    assert set(metrics["products"]) == {"esa-worldcover", "dynamic-world-v1"}
    report = metrics["products"]["esa-worldcover"]
    assert 0.0 <= report["miou"] <= 1.0
    assert set(report["per_class_iou"]) <= set(metrics["classes"])
    truth = metrics["truth"]
    assert truth["best_label_product"] in {"esa-worldcover", "dynamic-world-v1"}
    assert truth["labels"]["esa-worldcover"]["miou"] > 0.3  # weak labels resemble the truth
    assert 0.0 <= truth["model_fused"]["miou"] <= 1.0


def test_predict_zero_shot_on_a_sample(run: Path, las_tiny: Path, tmp_path: Path) -> None:
    sample = LASDatasetIds.first(las_tiny)
    out = tmp_path / "pred.tif"
    names = ["lake", "pine forest", "parking lot"]
    _invoke(
        "predict", str(run), f"{las_tiny}:{sample['sample_id']}", "--classes", ",".join(names),
        "--scores", "--out", str(out),
    )  # fmt: skip
    with rasterio.open(out) as src:
        assert src.count == 1 + len(names)
        assert src.crs.to_epsg() == sample["epsg"]
        assert src.transform == Affine(*sample["transform"][:6])
        cls = src.read(1)
        assert set(np.unique(cls)) <= {0, 1, 2, 255}
        assert json.loads(src.tags()["classes"]) == names
        scores = src.read()[1:].astype(int)
        valid = cls != 255
        assert (np.abs(scores.sum(0)[valid] - 100) <= 2).all()


def test_predict_a_raster_from_band_descriptions(run: Path, las_tiny: Path, tmp_path: Path) -> None:
    sample = LASDatasetIds.first(las_tiny)
    root = zarr.open_group(las_tiny / "las.zarr", mode="r")
    s2 = cast(zarr.Array, root["sentinel-2"])[sample["zarr_index"]]
    assert isinstance(s2, np.ndarray)
    data = s2[[1, 2, 3, 7]]
    src_path = tmp_path / "s2.tif"
    profile = {
        "driver": "GTiff", "width": 32, "height": 32, "count": 4, "dtype": "uint16",
        "crs": f"EPSG:{sample['epsg']}", "transform": Affine(*sample["transform"][:6]),
    }  # fmt: skip
    with rasterio.open(src_path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(["B02", "B03", "B04", "B08"], start=1):
            dst.set_band_description(i, name)
    out = tmp_path / "pred.tif"
    _invoke(
        "predict", str(run), str(src_path), "--classes", "water,trees", "--fusion",
        "--out", str(out),
    )  # fmt: skip
    with rasterio.open(out) as src:
        assert src.count == 1 and src.shape == (32, 32)
    profile["count"] = 1
    unknown = tmp_path / "unknown.tif"
    with rasterio.open(unknown, "w", **profile) as dst:
        dst.write(data[:1])
    result = runner.invoke(app, ["predict", str(run), str(unknown), "--out", str(out)])
    assert result.exit_code == 2 and "--wavelengths" in result.output


class LASDatasetIds:
    """The first usable sample of a dataset."""

    @staticmethod
    def first(las: Path) -> dict:
        import geopandas as gpd

        index = gpd.read_parquet(las / "index.parquet")
        row = index[index["status"] == "ok"].iloc[0]
        return {
            "sample_id": row["sample_id"],
            "zarr_index": int(row["zarr_index"]),
            "epsg": int(row["epsg"]),
            "transform": [float(v) for v in row["transform"]],
        }
