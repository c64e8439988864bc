"""Bad or odd input to training, loading, evaluation and prediction: a clear one-line error
naming the file, sample or field (exit code 2 from the CLI), never a silently wrong result."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
import typer
import yaml
from affine import Affine
from typer.testing import CliRunner

from las_builder.cli_train import eval_, predict, train
from las_builder.model.config import TrainConfigError, load_train_config
from las_builder.model.data import LASDataset

app = typer.Typer()
app.command("train")(train)
app.command("eval")(eval_)
app.command("predict")(predict)
runner = CliRunner()


def _cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _error(*args: str) -> str:
    """The one error line of a command that must fail with exit code 2."""
    code, output = _cli(*args)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output  # no traceback
    return lines[0]


def _config(path: Path, las: Path, out: Path, **changes: Any) -> Path:
    cfg: dict[str, Any] = {
        "name": "bad",
        "dataset": str(las),
        "products": ["esa-worldcover"],
        "inputs": [["sentinel-2"], ["sentinel-1"]],
        "val_fraction": 0,
        "model": {"size": "tiny"},
        "optim": {"lr": 0.002, "batch_size": 4, "steps": 2, "warmup_steps": 1},
        "seed": 1,
        "checkpoint_every": 2,
        "log_every": 1,
        "out_dir": str(out),
    }
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def las_copy(las_tiny: Path, tmp_path: Path) -> Path:
    """A copy of the tiny dataset (12 samples, 4 a shard) that a test may damage."""
    return Path(shutil.copytree(las_tiny, tmp_path / "las"))


@pytest.fixture(scope="module")
def ckpt_run(las_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 4 steps with checkpoints at 2 and 4 (both kept)."""
    out = tmp_path_factory.mktemp("bad-input") / "run"
    cfg = _config(out.parent / "run.yaml", las_tiny, out, keep_checkpoints=2)
    code, output = _cli("train", str(cfg), "--set", "optim.steps=4", "-q")
    assert code == 0, output
    return out


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("input_weights=[1]", "input_weights has 1 values for 2 inputs"),
        ("product_weights=[-1]", "product_weights must be 0 or more"),
        ("eval_inputs=[sentinel-3]", "eval_inputs: Value error, unknown modalities"),
        ("optim.lr=.inf", "optim.lr: Input should be a finite number"),
        ("text.template=a photo", "template 'a photo' must hold the class name as exactly one {}"),
        ("model.overrides={foo: 1}", "unknown model setting 'foo'"),
        ("model.overrides={embed_dim: 0}", "embed_dim: expected a whole number >= 1, got 0"),
    ],
)
def test_config_values_out_of_range_are_refused_naming_the_field(
    tmp_path: Path, override: str, message: str
) -> None:
    """Each of these used to train (an lr of inf, a template without {} prompting every class
    alike), fail at the first step (weights), or end in a traceback (model overrides)."""
    cfg = _config(tmp_path / "c.yaml", tmp_path, tmp_path / "out")
    with pytest.raises(TrainConfigError, match="c.yaml: ") as err:
        load_train_config(cfg, [override])
    assert message in str(err.value)


# --- datasets --------------------------------------------------------------------------------


def _read_all(las: Path, shard_cache: int) -> None:
    ds = LASDataset(las, modalities=["sentinel-2"], products=["esa-worldcover"],
                    shard_cache=shard_cache)  # fmt: skip
    ds.batch(list(range(len(ds))))


@pytest.mark.parametrize(
    ("lost", "array"),
    [
        ("sentinel-2/c/1/0/0/0", "sentinel-2"),
        ("labels/esa-worldcover/las/c/1/0/0", "labels/esa-worldcover/las"),
    ],
)
@pytest.mark.parametrize("shard_cache", [0, 2])
def test_a_lost_shard_object_of_ok_samples_is_named_not_read_as_fill(
    las_copy: Path, lost: str, array: str, shard_cache: int
) -> None:
    """A missing shard object reads as fill value (as a never-written one must): it used to
    train on blank images or unsupervised samples; the index says they hold data."""
    (las_copy / "las.zarr" / lost).unlink()
    with pytest.raises(ValueError, match=r"\(zarr_index 4, shard 1\) is ok in index.parquet") as e:
        _read_all(las_copy, shard_cache)
    assert f"las.zarr's {array} holds nothing for it" in str(e.value)


def _rewrite_index(las: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(las / "index.parquet")), las / "index.parquet")


def test_an_index_of_another_build_is_refused(las_copy: Path) -> None:
    """Another build's index: a different sample count, or the same count with other samples
    (their class counts are not the store's)."""

    def rotated(table: pa.Table) -> pa.Table:
        counts = table.column("class_counts").to_pylist()
        at = table.schema.get_field_index("class_counts")
        return table.set_column(at, "class_counts", pa.array(counts[1:] + counts[:1]))

    _rewrite_index(las_copy, rotated)
    with pytest.raises(ValueError, match="does not hold the class counts the index gives"):
        _read_all(las_copy, 0)
    _rewrite_index(las_copy, lambda t: t.slice(0, 8))
    with pytest.raises(ValueError, match="index.parquet has 8 rows, las.zarr 12 samples"):
        LASDataset(las_copy)
    (las_copy / "index.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="index.parquet cannot be read as Parquet"):
        LASDataset(las_copy)


def test_a_store_without_sentinel_2_serves_its_other_modalities(las_copy: Path) -> None:
    """A recipe without Sentinel-2 builds no such array: its other imagery reads (this used
    to fail with "error: sentinel-2"), and asking for Sentinel-2 says the store lacks it."""
    for name in ("sentinel-2", "s2_band"):
        shutil.rmtree(las_copy / "las.zarr" / name)
    ds = LASDataset(las_copy, modalities=["sentinel-1"], products=["esa-worldcover"])
    item = ds[0]
    assert ds.shape == (32, 32) and item["images"]["sentinel-1"].shape == (2, 32, 32)
    with pytest.raises(KeyError, match="'sentinel-2' is not in the store .*built without it"):
        LASDataset(las_copy, modalities=["sentinel-2"])


def test_train_on_a_dataset_without_usable_samples_says_why(las_copy: Path, tmp_path: Path) -> None:
    """Every sample skipped: the index is valid but nothing trains. Also: a split_by column
    the index lacks, and a path that is not a dataset."""

    def skipped(table: pa.Table) -> pa.Table:
        at = table.schema.get_field_index("status")
        return table.set_column(at, "status", pa.array(["skipped"] * len(table)))

    cfg = _config(tmp_path / "c.yaml", las_copy, tmp_path / "out")
    line = _error("train", str(cfg), "--set", "split_by=region", "--set", "val_fraction=0.2")
    assert "split_by 'region' is not a column of" in line
    _rewrite_index(las_copy, skipped)
    line = _error("train", str(cfg), "-q")
    assert "no usable training samples (index.parquet: 12 skipped;" in line
    line = _error("eval", str(cfg), str(las_copy), "-q")
    assert f"checkpoint {cfg} cannot be read" in line  # a YAML file is no checkpoint
    line = _error("train", str(cfg), "--set", f"dataset={cfg}", "-q")
    assert f"{cfg}/index.parquet not found" in line


# --- checkpoints -----------------------------------------------------------------------------


def test_a_damaged_checkpoint_is_named_by_resume_eval_and_predict(
    ckpt_run: Path, las_tiny: Path, tmp_path: Path
) -> None:
    """A truncated last.pt (copied in part, a full disk) used to end in torch's traceback."""
    run = Path(shutil.copytree(ckpt_run, tmp_path / "run"))
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    cfg = _config(tmp_path / "c.yaml", las_tiny, run)
    for args in (
        ("train", str(cfg), "--resume", "--set", "optim.steps=6", "-q"),
        ("eval", str(run), str(las_tiny), "-q"),
        ("predict", str(last), f"{las_tiny}:x", "-q"),
    ):
        line = _error(*args)
        assert f"checkpoint {last} cannot be read" in line and "damaged" in line


def test_resume_refuses_a_checkpoint_of_another_network(
    ckpt_run: Path, las_tiny: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(ckpt_run, tmp_path / "run"))
    cfg = _config(tmp_path / "c.yaml", las_tiny, run)
    line = _error("train", str(cfg), "--resume", "--set", "model.overrides={decoder_dim: 32}")
    assert "does not fit the network" in line and "of another shape" in line


def test_resume_after_a_kill_logs_each_step_once(
    ckpt_run: Path, las_tiny: Path, tmp_path: Path
) -> None:
    """Killed after logging steps 3-4 but before their checkpoint, a run resumes at step 2:
    the rows of steps 3-4 must not stay in metrics.csv next to the new ones."""
    run = Path(shutil.copytree(ckpt_run, tmp_path / "run"))
    shutil.copy(run / "checkpoints" / "step-0000002.pt", run / "checkpoints" / "last.pt")
    cfg = _config(tmp_path / "c.yaml", las_tiny, run)
    code, output = _cli("train", str(cfg), "--resume", "--set", "optim.steps=4", "-q")
    assert code == 0, output
    with (run / "metrics.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_a_diverging_run_stops_instead_of_saving_nan_weights(
    las_tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cfg = _config(tmp_path / "c.yaml", las_tiny, out)
    line = _error(
        "train", str(cfg), "-q", "--set", "optim.lr=1e30", "--set", "optim.warmup_steps=0",
        "--set", "optim.steps=3",
    )  # fmt: skip
    assert "training diverged: the loss is nan at step" in line
    assert not (out / "checkpoints" / "last.pt").exists()


# --- predict ---------------------------------------------------------------------------------


def _raster(path: Path, data: np.ndarray, crs: str | None = "EPSG:32633") -> str:
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
        "count": data.shape[0], "dtype": data.dtype.name,
        "transform": Affine(10, 0, 500000, 0, -10, 5000000),
    }  # fmt: skip
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(["B02", "B03", "B04", "B08"][: data.shape[0]], start=1):
            dst.set_band_description(i, name)
    return str(path)


def _predicted(run: Path, source: str, out: Path, *options: str) -> tuple[np.ndarray, Any, str]:
    code, output = _cli("predict", str(run), source, "--out", str(out), "-q", *options)
    assert code == 0, output
    with rasterio.open(out) as src:
        return src.read(1), src.crs, output


def test_predict_odd_rasters(ckpt_run: Path, tmp_path: Path) -> None:
    """inf values are nodata like NaN (they were fed as float32's largest and turned the
    whole tile into one class); float digital numbers without --scale are refused (they were
    predicted as reflectances of thousands); a raster without CRS is predicted with a warning."""
    rng = np.random.default_rng(3)
    reflectance = (rng.random((4, 40, 40)) * 0.3 + 0.02).astype("float32")
    with_nan, with_inf = reflectance.copy(), reflectance.copy()
    with_nan[:, :10, :10] = np.nan
    with_inf[:, :10, :10] = np.inf
    nan_cls, _, _ = _predicted(
        ckpt_run, _raster(tmp_path / "nan.tif", with_nan), tmp_path / "a.tif"
    )
    inf_cls, _, _ = _predicted(
        ckpt_run, _raster(tmp_path / "inf.tif", with_inf), tmp_path / "b.tif"
    )
    assert (nan_cls[:10, :10] == 255).all() and (nan_cls[10:, 10:] != 255).all()
    np.testing.assert_array_equal(inf_cls, nan_cls)

    numbers = _raster(tmp_path / "dn.tif", reflectance * np.float32(10000))
    line = _error("predict", str(ckpt_run), numbers, "--out", str(tmp_path / "c.tif"))
    assert "dn.tif: band 1 divided by --scale 1 has a median of" in line
    assert "not a reflectance" in line
    scaled, _, _ = _predicted(ckpt_run, numbers, tmp_path / "c.tif", "--scale", "10000")
    assert (scaled != 255).all()
    line = _error("predict", str(ckpt_run), numbers, "--scale", "0")
    assert "--scale must be a number above 0" in line

    no_crs = _raster(tmp_path / "nocrs.tif", reflectance, crs=None)
    classes, crs, output = _predicted(ckpt_run, no_crs, tmp_path / "d.tif")
    assert "warning: " in output and "nocrs.tif has no CRS" in output
    assert crs is None and classes.shape == (40, 40)


def test_a_training_config_is_read_with_the_strict_loader(tmp_path: Path) -> None:
    """A repeated key would drop a setting silently; an alias bomb would hang the ${VAR}
    substitution: both are errors naming the file."""
    repeated = tmp_path / "repeated.yaml"
    repeated.write_text("steps: 1\nsteps: 2\n")
    with pytest.raises(TrainConfigError, match=r"(?s)repeated\.yaml: .*'steps' is repeated"):
        load_train_config(repeated)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrainConfigError, match=r"(?s)bomb\.yaml: .*expand to more than"):
        load_train_config(bomb)
