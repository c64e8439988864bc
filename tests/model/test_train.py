"""`las train` / `las eval` / `las predict` on a tiny built dataset: checkpoints, resume, metrics,
zero-shot prediction."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, cast

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
from las_builder.model.train import load_checkpoint, resolve_device

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
    assert "IoU per class" in text and "label esa-worldcover" in text
    assert max(len(line) for line in text.splitlines()) <= 80  # readable in a terminal
    metrics = json.loads(out.read_text())
    assert set(metrics["products"]) == {"esa-worldcover", "dynamic-world-v1"}
    report = metrics["products"]["esa-worldcover"]
    assert 0.0 <= report["miou"] <= 1.0
    assert set(report["per_class_iou"]) <= set(metrics["classes"])
    truth = metrics["truth"]
    assert truth["best_label_product"] in {"esa-worldcover", "dynamic-world-v1"}
    assert truth["labels"]["esa-worldcover"]["miou"] > 0.3  # weak labels resemble the truth
    assert 0.0 <= truth["model_fused"]["miou"] <= 1.0


def test_eval_options_choose_products_inputs_and_fusion_not_the_scores(
    run: Path, las_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--products and --inputs choose what is scored; the batch size does not change a score;
    --fusion-gamma reaches the fusion; unknown names fail with what is known."""
    from las_builder.model import evaluate
    from las_builder.model.fusion import fuse as real_fuse

    gammas: list[float] = []

    def fuse(seg: Any, presence: Any, gamma: float = 1.0) -> Any:
        gammas.append(gamma)  # recorded, then the real fusion
        return real_fuse(seg, presence, gamma)

    monkeypatch.setattr(evaluate, "fuse", fuse)

    def metrics(name: str, *options: str) -> dict:
        out = tmp_path / f"{name}.json"
        _invoke("eval", str(run), str(las_tiny), "--split", "all", "--out", str(out), "--quiet",
                *options)  # fmt: skip
        return cast(dict, json.loads(out.read_text()))

    default = metrics("default")
    assert gammas and set(gammas) == {1.0}
    gammas.clear()
    chosen = metrics(
        "chosen", "--products", "esa-worldcover", "--inputs", "sentinel-2",
        "--batch-size", "1", "--fusion-gamma", "8",
    )  # fmt: skip
    assert set(chosen["products"]) == {"esa-worldcover"}
    assert chosen["inputs"] == ["sentinel-2"] and chosen["fusion_gamma"] == 8.0
    assert chosen["samples"] == default["samples"]
    assert chosen["products"]["esa-worldcover"]["miou"] == pytest.approx(
        default["products"]["esa-worldcover"]["miou"], abs=1e-6
    )
    assert set(chosen["products_fused"]) == {"esa-worldcover"}
    # The fused scores are the fusion's at gamma 8 (whether they differ from gamma 1's depends
    # on how much this briefly trained prior says: an uninformative one changes nothing).
    assert gammas and set(gammas) == {8.0}
    for args, message in (
        (["--products", "nope"], "(its label products: dynamic-world-v1, esa-cci-lc,"),
        (["--inputs", "radar"], "unknown modalities ['radar']; known: sentinel-2"),
    ):
        result = runner.invoke(app, ["eval", str(run), str(las_tiny), *args, "--quiet"])
        assert result.exit_code != 0 and message in result.output, result.output


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


def _s2_raster(path: Path, height: int, width: int) -> Path:
    rng = np.random.default_rng(0)
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 4, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": Affine(10, 0, 500000, 0, -10, 5000000),
    }  # fmt: skip
    data = (rng.random((4, height, width)) * 3000 + 200).astype("uint16")
    data[:, :5, :7] = 0  # a corner without data
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(["B02", "B03", "B04", "B08"], start=1):
            dst.set_band_description(i, name)
    return path


def test_predict_a_raster_tile_by_tile(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raster is predicted and written tile by tile: the model never sees more than a tile
    and its halo, and a halo that reaches the raster's edges gives the one-piece prediction
    exactly. The summary counts the written class band."""
    from las_builder.model import evaluate

    src = _s2_raster(tmp_path / "s2.tif", 70, 100)
    whole, tiled, wide = tmp_path / "whole.tif", tmp_path / "tiled.tif", tmp_path / "wide.tif"
    evaluate.predict(run, str(src), whole, scores=True, tile=1024)
    seen: list[tuple[int, int]] = []
    scores = evaluate._scores

    def recorded(model: Any, image: torch.Tensor, *args: Any) -> torch.Tensor:
        seen.append((int(image.shape[-2]), int(image.shape[-1])))
        return scores(model, image, *args)

    monkeypatch.setattr(evaluate, "_scores", recorded)
    result = evaluate.predict(run, str(src), tiled, scores=True, tile=32, halo=8)
    assert len(seen) == 3 * 4  # ceil(70 / 32) x ceil(100 / 32) tiles
    assert all(h <= 32 + 2 * 8 and w <= 32 + 2 * 8 for h, w in seen)
    assert (32 + 8, 32 + 8) in seen and (70 - 64 + 8, 100 - 96 + 8) in seen  # edges cut
    seen.clear()
    evaluate.predict(run, str(src), wide, scores=True, tile=32, halo=100)
    assert set(seen) == {(70, 100)}  # every tile read with the whole raster around it
    classes_only = tmp_path / "classes.tif"
    evaluate.predict(run, str(src), classes_only, tile=32, halo=8)
    with rasterio.open(whole) as a, rasterio.open(tiled) as b, rasterio.open(wide) as c:
        reference = a.read()
        np.testing.assert_array_equal(c.read(), reference)
        near = b.read()
        classes = json.loads(b.tags()["classes"])
        assert classes == json.loads(a.tags()["classes"])
        assert b.descriptions == a.descriptions
    with rasterio.open(classes_only) as d:
        assert d.count == 1 and len(d.colormap(1)) == 256  # the legend's colours
        np.testing.assert_array_equal(d.read(1), near[0])
    for band in (near, reference):
        assert (band[:, :5, :7] == 255).all()  # nodata where the raster has none
        assert (band[0, 5:, :] != 255).all() and (band[0, :, 7:] != 255).all()
    # Tiles with a halo are close to the one-piece prediction (a few score points at most).
    assert np.abs(near[1:].astype(int) - reference[1:]).max() <= 5
    counts = np.bincount(near[0][near[0] != 255], minlength=len(classes))
    expected = {n: c / counts.sum() for n, c in zip(classes, counts, strict=True)}
    assert result["share"] == pytest.approx(expected)


def test_predict_shows_its_tiles_progress_unless_quiet(run: Path, tmp_path: Path) -> None:
    """A bar over the tiles (on stderr), none with -q; never the text encoder's own loading
    bar (zero-shot names load it)."""
    src = _s2_raster(tmp_path / "s2.tif", 70, 100)
    args = ["predict", str(run), str(src), "--classes", "lake,pine forest", "--tile", "32"]
    shown = runner.invoke(app, [*args, "--out", str(tmp_path / "a.tif")])
    quiet = runner.invoke(app, [*args, "--out", str(tmp_path / "b.tif"), "-q"])
    assert shown.exit_code == quiet.exit_code == 0, shown.output + quiet.output
    assert "predict" in shown.stderr and "predict" not in quiet.stderr
    for result in (shown, quiet):
        assert "Loading weights" not in result.output
        assert result.stdout.startswith(f"wrote {tmp_path}")


def test_predict_output_has_overviews_and_is_never_left_half_written(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from las_builder.model import evaluate

    src = _s2_raster(tmp_path / "s2.tif", 300, 600)
    out = tmp_path / "pred.tif"
    evaluate.predict(run, str(src), out, tile=256, halo=0)
    with rasterio.open(out) as pred:
        assert pred.overviews(1) == [2, 4]  # 600 -> 300 -> 150 px on the long side
        assert pred.tags(ns="rio_overview") == {"resampling": "nearest"}
        full = pred.read(1)
        assert pred.read(1, out_shape=(75, 150)).tolist() == full[::4, ::4].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.tif", "s2.tif"]
    calls = 0
    scores = evaluate._scores

    def failing_later(*args: Any) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("out of memory")
        return scores(*args)

    monkeypatch.setattr(evaluate, "_scores", failing_later)
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate.predict(run, str(src), tmp_path / "failed.tif", tile=256, halo=0)
    # The earlier prediction is untouched; the failed one left nothing behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.tif", "s2.tif"]


def test_predict_reads_values_as_told_scale_sar_units_and_wavelengths(
    run: Path, tmp_path: Path
) -> None:
    """The same scene written two ways predicts the same: 16-bit reflectance x 10000 or float
    reflectance with --scale 1; Sentinel-2 band names or their wavelengths; SAR backscatter
    linear or in dB with --sar-units db."""
    rng = np.random.default_rng(5)
    transform = Affine(10, 0, 500000, 0, -10, 5000000)

    def raster(name: str, data: np.ndarray) -> str:
        path = tmp_path / name
        profile = {
            "driver": "GTiff", "width": 24, "height": 24, "count": len(data),
            "dtype": data.dtype.name, "crs": "EPSG:32633", "transform": transform,
        }  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return str(path)

    def predicted(source: str, *options: str) -> np.ndarray:
        out = tmp_path / f"pred-{len(list(tmp_path.iterdir()))}.tif"
        _invoke("predict", str(run), source, "--scores", "--out", str(out), *options)
        with rasterio.open(out) as src:
            return src.read().astype(int)

    counts = (rng.random((4, 24, 24)) * 3000 + 200).astype("uint16")
    optical = [
        predicted(raster("int.tif", counts), "--wavelengths", "B02,B03,B04,B08"),
        predicted(
            raster("float.tif", counts.astype("float32") / np.float32(10000)),
            "--scale",
            "1",
            "--wavelengths",
            "0.49,0.56,0.665,0.842",
        ),  # fmt: skip
    ]
    linear = (rng.random((2, 24, 24)) * 0.3 + 0.001).astype("float32")
    sar = [
        predicted(raster("linear.tif", linear), "--wavelengths", "vv,vh"),
        predicted(
            raster("db.tif", (10 * np.log10(linear)).astype("float32")),
            "--wavelengths",
            "vv,vh",
            "--sar-units",
            "db",
        ),  # fmt: skip
    ]
    for first, second in (optical, sar):
        np.testing.assert_array_equal(first[0], second[0])  # the same classes
        assert np.abs(first[1:] - second[1:]).max() <= 1  # scores to a point
    assert not np.array_equal(optical[0], sar[0])  # (the two scenes do differ)


def test_predict_a_raster_by_url(run: Path, served_world: dict, tmp_path: Path) -> None:
    """A raster URL is read by GDAL (here from the world's range server): the prediction
    equals the local file's. A URL that cannot be read fails with its name, token removed."""
    world = Path(served_world["world"])
    smallest = min((world / "assets").rglob("*.tif"), key=lambda p: p.stat().st_size)
    url = served_world["assets_url"] + smallest.relative_to(world).as_posix()
    local, remote = tmp_path / "local.tif", tmp_path / "remote.tif"
    for source, out in ((str(smallest), local), (url, remote)):
        _invoke("predict", str(run), source, "--wavelengths", "B04", "--out", str(out))
    with rasterio.open(local) as a, rasterio.open(remote) as b:
        np.testing.assert_array_equal(b.read(), a.read())
        assert b.transform == a.transform and b.crs == a.crs
    missing = served_world["assets_url"] + "assets/none.tif?sig=SECRET-TOKEN"
    result = runner.invoke(app, ["predict", str(run), missing, "--wavelengths", "B04"])
    assert result.exit_code == 2, result.output
    assert "assets/none.tif: cannot be read as a raster" in result.output
    assert "SECRET-TOKEN" not in result.output


def test_device_names_are_checked_against_the_machine(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("tpu")
    with monkeypatch.context() as patched:
        patched.setattr(torch.cuda, "is_available", lambda: True)
        patched.setattr(torch.cuda, "device_count", lambda: 2)
        assert resolve_device("cuda:1") == torch.device("cuda:1")
        with pytest.raises(ValueError, match="'cuda:2': this machine has 2 CUDA device"):
            resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    src = _s2_raster(tmp_path / "s2.tif", 8, 8)
    result = runner.invoke(app, ["predict", str(run), str(src), "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "device 'cuda': this machine has no CUDA device" in result.output


def test_predict_says_so_when_the_input_has_no_data(run: Path, tmp_path: Path) -> None:
    src = _s2_raster(tmp_path / "s2.tif", 8, 8)
    with rasterio.open(src, "r+") as dst:
        dst.write(np.zeros((4, 8, 8), dtype="uint16"))
    out = tmp_path / "pred.tif"
    text = _invoke("predict", str(run), str(src), "--out", str(out))
    assert "no pixel with data (the input is nodata everywhere)" in text
    with rasterio.open(out) as pred:
        assert (pred.read(1) == 255).all()


def test_predict_refuses_more_classes_than_its_class_band_holds(run: Path, tmp_path: Path) -> None:
    src = _s2_raster(tmp_path / "s2.tif", 8, 8)
    names = ",".join(f"class {i}" for i in range(256))
    result = runner.invoke(app, ["predict", str(run), str(src), "--classes", names])
    assert result.exit_code == 2
    assert "256 classes given; a prediction names at most 255" in result.output


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


def test_loader_workers_are_at_most_the_usable_cores() -> None:
    """A preset's 8 DataLoader workers on a machine with fewer cores: the cores, said so."""
    import os

    from las_builder.model.train import _loader_workers

    cores = len(os.sched_getaffinity(0))
    assert _loader_workers(0) == 0
    assert _loader_workers(cores) == cores
    with pytest.warns(UserWarning, match=f"num_workers: {cores + 7} DataLoader workers"):
        assert _loader_workers(cores + 7) == cores


def test_progress_bars_go_to_stderr_not_with_the_results(
    run: Path, las_tiny: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`las train` and `las eval` drew their progress bars on stdout, where their results
    (the run summary, the metrics tables) go: a piped `las eval > scores.txt` held the bar."""
    from las_builder.model.config import load_train_config
    from las_builder.model.evaluate import evaluate
    from las_builder.model.train import train

    evaluate(run, las_tiny, split="all", progress=True, out=tmp_path / "m.json")
    train(load_train_config(_config(las_tiny, tmp_path / "again", 2)), progress=True)
    captured = capfd.readouterr()
    assert "eval" in captured.err and "train" in captured.err  # the bars are drawn ...
    assert "eval" not in captured.out and "train" not in captured.out  # ... not with results
