"""LASDataset over a built tiny dataset: shapes, normalisation, labels, workers, URLs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import cast

import geopandas as gpd
import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from las_builder.model.data import (
    IGNORE_INDEX,
    LASDataset,
    compose_input,
    open_store,
    read_index,
    sample_classes,
    split_of,
    val_ids,
)

MODS = ["sentinel-2", "sentinel-1", "naip"]


def test_dataset_reads_a_built_dataset(las_tiny: Path) -> None:
    index = gpd.read_parquet(las_tiny / "index.parquet")
    ok = index[index["status"] == "ok"]
    ds = LASDataset(
        las_tiny,
        modalities=MODS,
        products=["esa-worldcover", "dynamic-world-v1:native", "consensus"],
    )
    assert len(ds) == len(ok) > 0
    assert ds.class_names["esa-worldcover"][:2] == ["water", "trees"]
    assert "Trees" in ds.class_names["dynamic-world-v1:native"]
    item = ds[0]
    assert item["images"]["sentinel-2"].shape == (12, 32, 32)
    assert item["images"]["sentinel-1"].shape == (2, 32, 32)
    assert item["images"]["naip"].shape == (4, 128, 128)
    assert item["wavelengths"]["sentinel-2"][3] == torch.tensor(0.665)
    assert item["wavelengths"]["sentinel-1"][0] > 5e4  # c / 5.405 GHz in um
    assert item["polarisations"]["sentinel-1"].tolist() == [1, 2]
    s2 = item["images"]["sentinel-2"]
    assert 0 <= float(s2.min()) and float(s2.max()) < 2.0  # reflectance, not DN
    assert torch.isfinite(item["images"]["sentinel-1"]).all()
    root = zarr.open_group(las_tiny / "las.zarr", mode="r")
    zi = item["zarr_index"]
    raw = cast(zarr.Array, root["labels/esa-worldcover/las"])[zi]
    assert isinstance(raw, np.ndarray)
    lab = item["labels"]["esa-worldcover"].numpy()
    assert ((raw == 0) | (raw == 255) == (lab == IGNORE_INDEX)).all()
    np.testing.assert_array_equal(lab[(raw > 0) & (raw < 255)], raw[(raw > 0) & (raw < 255)] - 1)
    for key, names in ds.class_names.items():
        labels = item["labels"][key]
        assert ((labels < len(names)) | (labels == IGNORE_INDEX)).all(), key


def test_naip_availability_follows_the_index(las_tiny: Path) -> None:
    index = gpd.read_parquet(las_tiny / "index.parquet")
    ds = LASDataset(las_tiny, modalities=["naip"], products=[], naip_factor=2)
    with_naip = set(index.loc[index["naip_item"].notna(), "sample_id"])
    for i in range(len(ds)):
        item = ds[i]
        assert item["images"]["naip"].shape == (4, 64, 64)
        assert item["available"]["naip"] == (item["sample_id"] in with_naip)


def test_multi_worker_loader_and_mixed_input(las_tiny: Path) -> None:
    ds = LASDataset(
        las_tiny, modalities=MODS, products=["esa-worldcover"], crop_px=16, random_crop=True
    )
    ds[0]  # opens the store in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._root is None
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    batch = next(iter(loader))
    image, wl, pol = compose_input(batch, ["sentinel-2", "sentinel-1", "naip"])
    assert image.shape == (3, 18, 16, 16)
    assert wl.shape == pol.shape == (18,)
    assert batch["labels"]["esa-worldcover"].shape == (3, 16, 16)
    naip_only, _, _ = compose_input(batch, ["naip"])
    assert naip_only.shape == (3, 4, 64, 64)


def test_url_access_and_splits(las_tiny: Path) -> None:
    url = (las_tiny / "las.zarr").resolve().as_uri()  # file:///... through fsspec
    ds = LASDataset(url, modalities=["sentinel-2"], products=["esa-worldcover"])
    local = LASDataset(las_tiny, modalities=["sentinel-2"], products=["esa-worldcover"])
    torch.testing.assert_close(ds[1]["images"]["sentinel-2"], local[1]["images"]["sentinel-2"])
    train = LASDataset(las_tiny, products=[], split="train", val_fraction=0.3)
    val = LASDataset(las_tiny, products=[], split="val", val_fraction=0.3)
    ids = {r["sample_id"] for r in train.rows}
    assert not ids & {r["sample_id"] for r in val.rows}
    assert len(train) + len(val) == len(local)
    assert all(split_of(s, 0.3) == "val" for s in (r["sample_id"] for r in val.rows))


def test_stratified_split_keeps_every_group_in_training() -> None:
    ids = [f"s{i}" for i in range(10)]
    groups = ["a"] * 6 + ["b"] * 3 + ["c"]
    held = val_ids(ids, 0.25, seed=1, groups=groups)
    assert len(held & set(ids[:6])) == 2  # round(0.25 * 6)
    assert len(held & set(ids[6:9])) == 1  # at least one
    assert "s9" not in held  # a lone sample stays in training
    assert held == val_ids(ids, 0.25, seed=1, groups=groups)
    assert val_ids(ids, 0.0, groups=groups) == set()


def test_stratified_split_keeps_every_class_in_training() -> None:
    """The demo's only snowy sample was held out (its region's lowest hash): no model saw
    snow, and the held-out score counted a class that could not be learned. A sample whose
    class no other training sample shows is passed over; the next by hash goes instead."""
    ids = [f"s{i}" for i in range(8)]
    groups = ["lapland"] * 4 + ["iowa"] * 4
    plain = val_ids(ids, 0.25, seed=3, groups=groups)
    first = min(plain & set(ids[:4]))  # the Lapland sample held out without classes
    shown = [{"2"}] * 8
    shown[ids.index(first)] = {"2", "8"}  # ... is the only one with snow (8)
    held = val_ids(ids, 0.25, seed=3, groups=groups, classes=shown)
    assert first not in held and len(held) == len(plain) == 2
    assert held & set(ids[4:]) == plain & set(ids[4:])  # other groups as before
    assert held == val_ids(ids, 0.25, seed=3, groups=groups, classes=[set(c) for c in shown])
    # every sample of a group the only one with its class: that group holds none out
    lone = [{"2", str(10 + i)} for i in range(4)] + [{"2"}] * 4
    assert val_ids(ids, 0.25, seed=3, groups=groups, classes=lone) <= set(ids[4:])


def test_sample_classes_come_from_the_consensus() -> None:
    counts = {"consensus": {"2": 900, "8": 100, "255": 24}, "modis-12Q1-061": {"11": 30, "2": 994}}
    assert sample_classes(json.dumps(counts)) == {"2", "8"}  # MODIS's 3 % of 11: not shown
    del counts["consensus"]
    assert sample_classes(json.dumps(counts)) == {"2", "11"}  # no consensus: any product
    assert sample_classes(None) == set()


def test_a_folder_that_is_not_a_built_dataset_says_so(tmp_path: Path) -> None:
    for read, missing in ((open_store, "las.zarr"), (read_index, "index.parquet")):
        with pytest.raises(FileNotFoundError, match=f"{missing} not found: build the dataset"):
            read(tmp_path)
