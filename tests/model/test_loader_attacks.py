"""Damaged stores, lying metadata, odd configs and interrupted runs against the shard loader,
the training dataset and ``las train``: a clear error naming the array, sample or setting, or
the same result as an intact run, never uninitialised memory, a lost label or a changed run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, cast

import google_crc32c
import numpy as np
import pytest
import torch
import typer
import yaml
import zarr
from typer.testing import CliRunner

from las_builder.cli_train import train
from las_builder.model.config import TrainConfigError, load_train_config
from las_builder.model.data import IGNORE_INDEX, LASDataset
from las_builder.model.train import load_checkpoint
from las_builder.model.train import train as run_train
from las_builder.zarr_shards import ShardCorruptError, ShardedArray, read_rows, read_shards

app = typer.Typer()
app.command("train")(train)
app.command("unused")(lambda: None)  # two commands: typer keeps the subcommand name
runner = CliRunner()


def _error(*args: str) -> str:
    """The one error line of a ``las train`` that must fail with exit code 2."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _config(path: Path, las: Path, out: Path, **changes: Any) -> Path:
    cfg: dict[str, Any] = {
        "name": "attack",
        "dataset": str(las),
        "products": ["esa-worldcover:las"],  # the explicit LAS space: trains as esa-worldcover
        "inputs": [["sentinel-2"]],
        "val_fraction": 0,
        "model": {"size": "tiny"},
        "optim": {"lr": 0.002, "batch_size": 4, "steps": 5, "warmup_steps": 1},
        "seed": 2,
        "threads": 1,  # as in every test (conftest): module fixtures run before that fixture
        "log_every": 1,
        "checkpoint_every": 1,
        "keep_checkpoints": 5,
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
def straight(las_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 steps (12 samples, 3 batches an epoch) with 2 DataLoader workers and random crops
    of 16 px (below the config's minimum, so set on the validated config), a checkpoint at
    every step."""
    out = tmp_path_factory.mktemp("attacks") / "straight"
    cfg = load_train_config(_config(out.parent / "s.yaml", las_tiny, out, num_workers=2))
    run_train(cfg.model_copy(update={"crop_px": 16}), progress=False)
    return out


# --- training runs ---------------------------------------------------------------------------


def test_resume_mid_epoch_without_workers_equals_a_run_with_workers(
    straight: Path, las_tiny: Path, tmp_path: Path
) -> None:
    """Resumed at step 4 (inside the second epoch) without workers, the run ends with the
    weights of the uninterrupted run with 2 workers. Random crops were drawn from the
    workers' RNG, which a resumed run restarts, and the DataLoader's seed from the global RNG
    at each epoch's start: a resumed run, or one with other workers, trained on other crops
    and augmentations."""
    run = Path(shutil.copytree(straight, tmp_path / "run"))
    shutil.copy(run / "checkpoints" / "step-0000004.pt", run / "checkpoints" / "last.pt")
    cfg = load_train_config(_config(tmp_path / "r.yaml", las_tiny, run, num_workers=0))
    summary = run_train(cfg.model_copy(update={"crop_px": 16}), resume=True, progress=False)
    assert summary["step"] == 5
    _, _, want = load_checkpoint(straight)
    _, _, got = load_checkpoint(run)
    assert want["train_config"]["products"] == ["esa-worldcover"]
    for name, tensor in want["model"].items():
        torch.testing.assert_close(got["model"][name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("optim.lr=0.01", "optim.lr 0.002 -> 0.01"),  # the optimiser state kept 0.002
        ("optim.batch_size=3", "optim.batch_size 4 -> 3"),
        ("seed=5", "seed 2 -> 5"),
    ],
)
def test_resume_refuses_a_checkpoint_of_other_settings(
    straight: Path, las_tiny: Path, tmp_path: Path, override: str, named: str
) -> None:
    """A resume with another lr trained on at the saved lr (restored with the optimiser), one
    with another batch size or seed continued from the saved step on another data order."""
    run = Path(shutil.copytree(straight, tmp_path / "run"))
    cfg = _config(tmp_path / "c.yaml", las_tiny, run)
    line = _error("train", str(cfg), "--resume", "-q", "--set", "optim.steps=6", "--set", override)
    assert "was trained with other settings" in line and named in line
    assert "crop_px" in line  # set on the straight run's config only: named too


def test_a_split_that_holds_out_every_sample_says_so(las_tiny: Path, tmp_path: Path) -> None:
    """Every ok sample in val used to read 'no usable training samples ... see their reasons
    with las build --status', though none was skipped."""
    cfg = _config(tmp_path / "c.yaml", las_tiny, tmp_path / "out", val_fraction=0.99)
    line = _error("train", str(cfg), "-q", "--set", "split_by=null")
    assert "all 12 usable samples are held out for validation (val_fraction 0.99" in line


def test_product_names_are_the_ones_training_keys_by(tmp_path: Path) -> None:
    """``x:las`` is ``x`` (it trained nothing: a bare ``error: x:las`` at the first step); the
    same product twice or no product name is refused naming it."""
    cfg = _config(tmp_path / "c.yaml", tmp_path, tmp_path / "out")
    assert load_train_config(cfg).products == ["esa-worldcover"]
    for products, message in (
        ("[esa-worldcover, esa-worldcover:las]", "a product is listed twice: esa-worldcover"),
        ("[':native']", "label product ':native': no product name"),
    ):
        with pytest.raises(TrainConfigError, match="c.yaml: products: ") as err:
            load_train_config(cfg, [f"products={products}"])
        assert message in str(err.value)


# --- lying metadata and damaged shards -------------------------------------------------------


def _open(store: Path, name: str) -> zarr.Array:
    """An array of a store, opened by zarr-python (the independent reader)."""
    array = zarr.open_group(str(store), mode="r")[name]
    assert isinstance(array, zarr.Array)
    return array


def _edit_json(path: Path, edit: Any) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _wider(meta: dict[str, Any]) -> None:
    for shape in (
        meta["shape"],
        meta["chunk_grid"]["configuration"]["chunk_shape"],
        meta["codecs"][0]["configuration"]["chunk_shape"],
    ):
        shape[-1] *= 2


@pytest.mark.parametrize(
    "edit", [lambda m: m.update(data_type="uint32"), _wider], ids=["dtype", "shape"]
)
def test_a_zarr_json_that_lies_about_its_chunks_is_refused(las_copy: Path, edit: Any) -> None:
    """A zarr.json giving a wider dtype or shape than the stored chunks: zarr refuses every
    chunk, the shard reader decoded each into the front of a larger buffer and returned the
    rest uninitialised (values such as 4294967295 or NaN) as data."""
    store = las_copy / "las.zarr"
    _edit_json(store / "sentinel-2" / "zarr.json", edit)
    array = _open(store, "sentinel-2")
    with pytest.raises(ValueError, match="cannot reshape"):
        array[0:1]  # zarr-python's own read of the same store
    reader = ShardedArray.for_array(array)
    assert reader is not None
    message = r"sentinel-2: shard c/0/0/0/0, chunk 0: the chunk decompresses to 24576 bytes"
    with pytest.raises(ShardCorruptError, match=message):
        read_shards([(reader, 0)])
    with pytest.raises(ShardCorruptError, match=message):
        read_rows([(reader, [0])])
    for shard_cache in (0, 2):
        ds = LASDataset(las_copy, products=[], shard_cache=shard_cache)
        with pytest.raises(ShardCorruptError, match="zarr.json does not describe the data"):
            ds.batch([0])


def _rewrite_index(path: Path, entries: dict[int, tuple[int, int]], chunks: int = 4) -> None:
    """Set chunk table entries of a shard object, with a valid CRC (as another tool might)."""
    blob = bytearray(path.read_bytes())
    size = 16 * chunks + 4
    table = np.frombuffer(bytes(blob[-size:-4]), dtype="<u8").reshape(chunks, 2).copy()
    for k, entry in entries.items():
        table[k] = entry
    raw = table.tobytes()
    blob[-size:] = raw + google_crc32c.value(raw).to_bytes(4, "little")
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    "entry",
    [(2**64 - 8, 16), (2**64 - 1, 5), (5, 2**64 - 1)],
    ids=["offset-wraps", "half-empty-offset", "half-empty-length"],
)
def test_a_chunk_table_pointing_outside_uint64_range_is_refused(
    las_copy: Path, entry: tuple[int, int]
) -> None:
    """An index entry whose offset + length wraps around 2**64 (or only one half of the
    "not stored" marker) passed the bounds check of the sample reader, which then failed with
    OverflowError; the shard reader named it."""
    store = las_copy / "las.zarr"
    _rewrite_index(store / "sentinel-2" / "c" / "0" / "0" / "0" / "0", {1: entry})
    reader = ShardedArray.for_array(_open(store, "sentinel-2"))
    assert reader is not None
    message = r"sentinel-2: shard c/0/0/0/0, chunk 1 points past the data: the store is damaged"
    with pytest.raises(ShardCorruptError, match=message):
        read_rows([(reader, [0])])  # chunk 0 itself is intact: the table is checked whole
    with pytest.raises(ShardCorruptError, match=message):
        read_shards([(reader, 0)])


# --- label classes ---------------------------------------------------------------------------


def test_a_label_code_the_taxonomy_lacks_is_named_not_ignored(las_copy: Path) -> None:
    """A LAS label array holding a code that the store's taxonomy does not list (here:
    ``built_up`` dropped from it) served those pixels as ignore, silently: a lost class."""
    store = las_copy / "las.zarr"
    have = np.unique(np.asarray(_open(store, "labels/esa-worldcover/las")[:]))
    assert 6 in have  # built_up is in the data
    _edit_json(
        store / "zarr.json",
        lambda m: m["attributes"].update(
            taxonomy=[c for c in m["attributes"]["taxonomy"] if c["key"] != "built_up"]
        ),
    )
    ds = LASDataset(las_copy, products=["esa-worldcover"])
    assert "built_up" not in ds.class_names["esa-worldcover"]
    with pytest.raises(ValueError, match=r"esa-worldcover/las holds codes \[6\] that its classes"):
        ds.batch(list(range(len(ds))))


def test_native_nodata_is_ignored_not_a_class(las_tiny: Path) -> None:
    """MODIS lists its nodata value 255 ("Unclassified") in its legend: the native labels
    served it as a class to learn; they must say 255 (ignore) there, as the LAS labels do.
    Checked against zarr-python's read of the native codes."""
    ds = LASDataset(las_tiny, modalities=["sentinel-2"], products=["modis-12Q1-061:native"])
    array = _open(las_tiny / "las.zarr", "labels/modis-12Q1-061/native")
    classes = cast(list[dict[str, Any]], array.attrs["classes"])
    legend = {int(c["value"]): str(c["name"]) for c in classes}
    names = ds.class_names["modis-12Q1-061:native"]
    assert "Unclassified" not in names and len(names) == len(legend) - 1
    codes = np.stack([np.asarray(array[row["zarr_index"]]) for row in ds.rows])
    assert (codes == 255).any()  # the tiny world has unclassified MODIS pixels
    got = ds.batch(list(range(len(ds))))["labels"]["modis-12Q1-061:native"].numpy()
    want = np.array(
        [IGNORE_INDEX if c == 255 else names.index(legend[int(c)]) for c in codes.ravel()]
    ).reshape(codes.shape)
    np.testing.assert_array_equal(got, want)


def _as_wide_codes(store: Path, name: str, code: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Rewrite a native label array as int32 with every code ``code(old)``, legend alike."""
    group = zarr.open_group(str(store), mode="r+")
    old = _open(store, name)
    data, attrs = np.asarray(old[:]), cast(dict[str, Any], dict(old.attrs))
    shards, chunks = old.shards, old.chunks
    new = np.vectorize(code, otypes=[np.int32])(data)
    classes = [dict(c, value=int(code(int(c["value"])))) for c in attrs["classes"]]
    attrs.update(classes=classes, nodata=int(code(int(attrs["nodata"]))))
    del group[name]
    array = group.create_array(
        name,
        shape=new.shape,
        dtype="int32",
        chunks=chunks,
        shards=shards,
        compressors=zarr.codecs.ZstdCodec(),
        fill_value=attrs["nodata"],
        attributes=attrs,
    )
    array[:] = new
    return new, classes


def test_a_32_bit_legend_with_negative_codes_is_served_without_a_table_of_every_value(
    las_copy: Path,
) -> None:
    """A signed 32-bit native legend: a table of every int32 value would take 32 GiB, and a
    negative code indexed the table from its end. Checked against zarr-python's read."""
    store = las_copy / "las.zarr"
    name = "labels/esa-worldcover/native"
    codes, classes = _as_wide_codes(store, name, lambda v: v * 1_000_000 - 40_000_000)
    assert codes.min() < 0 and codes.max() > 2**16
    ds = LASDataset(las_copy, modalities=["sentinel-2"], products=["esa-worldcover:native"])
    nodata = int(cast(int, _open(store, name).attrs["nodata"]))
    names = ds.class_names["esa-worldcover:native"]
    by_value = {int(c["value"]): str(c["name"]) for c in classes}
    got = ds.batch(list(range(len(ds))))["labels"]["esa-worldcover:native"].numpy()
    rows = np.stack([codes[row["zarr_index"]] for row in ds.rows])
    want = np.array(
        [IGNORE_INDEX if c == nodata else names.index(by_value[int(c)]) for c in rows.ravel()]
    ).reshape(rows.shape)
    np.testing.assert_array_equal(got, want)
    assert (want != IGNORE_INDEX).any()


def test_a_32_bit_code_outside_the_legend_is_named(las_copy: Path) -> None:
    store = las_copy / "las.zarr"
    name = "labels/esa-worldcover/native"
    codes, _ = _as_wide_codes(store, name, lambda v: v * 1_000_000 - 40_000_000)
    row = LASDataset(las_copy, products=["esa-worldcover:native"]).rows[0]["zarr_index"]
    damaged = codes.copy()
    damaged[row, 0, 0] = 2_000_000_000  # beyond every legend code
    damaged[row, 0, 1] = -2_000_000_000  # below them all
    writable = zarr.open_group(str(store), mode="r+")[name]
    assert isinstance(writable, zarr.Array)
    writable[:] = damaged
    ds = LASDataset(las_copy, products=["esa-worldcover:native"])
    with pytest.raises(ValueError, match=r"holds codes \[-2000000000, 2000000000\]"):
        ds.batch([0])
