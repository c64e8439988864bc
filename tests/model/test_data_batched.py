"""LASDataset's batched read (``__getitems__``) and ShardBatchSampler on a built tiny dataset.

The batched path must return exactly what the former one-sample-at-a-time reader returned:
:func:`reference_item` keeps that reader (one group lookup and one zarr call per array and
sample) as the oracle.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from torch.utils.data import DataLoader, default_collate

from las_builder.model.data import LASDataset, ShardBatchSampler, normalise

MODS = ["sentinel-2", "sentinel-1", "naip"]
PRODUCTS = ["esa-worldcover", "dynamic-world-v1:native", "consensus"]


def reference_item(ds: LASDataset, i: int) -> dict[str, Any]:
    """The per-item reader LASDataset had before ``__getitems__`` (kept verbatim as oracle)."""
    row = ds.rows[i]
    zi = row["zarr_index"]
    root = zarr.open_group(str(Path(ds.path) / "las.zarr"), mode="r")
    y0, x0, h, w = ds._window()
    images, wls, pols, available = {}, {}, {}, {}
    for m in ds.modalities:
        arr = root[m]
        f = arr.shape[-1] // ds.shape[1]
        raw = arr[zi, :, y0 * f : (y0 + h) * f, x0 * f : (x0 + w) * f]
        x = torch.from_numpy(normalise(m, np.asarray(raw), ds.attrs[m]))
        if m == "naip":
            ok = row["has_naip"] and bool(np.any(raw))
            if ds.naip_factor is not None and ds.naip_factor != f:
                x = F.interpolate(
                    x[None], size=(h * ds.naip_factor, w * ds.naip_factor), mode="area"
                )[0]
        elif m == "sentinel-1":
            ok = bool(np.isfinite(raw).mean() > 0.5)
        else:
            ok = bool(np.any(raw))
        images[m] = x
        wls[m] = torch.tensor(ds.bands[m][0], dtype=torch.float32)
        pols[m] = torch.tensor(ds.bands[m][1], dtype=torch.long)
        available[m] = ok
    labels = {}
    for spec in ds.products:
        raw = np.asarray(root[spec.array][zi, y0 : y0 + h, x0 : x0 + w])
        labels[spec.key] = torch.from_numpy(ds._luts[spec.key][raw])
    return {
        "sample_id": row["sample_id"],
        "zarr_index": zi,
        "window": torch.tensor([y0, x0, h, w]),
        "images": images,
        "wavelengths": wls,
        "polarisations": pols,
        "available": available,
        "labels": labels,
    }


def assert_same(a: Any, b: Any, where: str = "item") -> None:
    """Equal structure, types, dtypes, shapes and values (NaN equal to NaN)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=0, equal_nan=True), where
    else:
        assert a == b, where


# positions with repeats, out of order, across shards (4 samples per shard)
POSITIONS = [5, 0, 5, 11, 3, 4, 2, 9, 0]


@pytest.mark.parametrize(
    ("crop_px", "random_crop", "naip_factor"),
    [(None, False, None), (16, False, 2), (16, True, 1), (12, True, None)],
)
def test_batched_items_equal_the_per_item_reader(
    las_tiny: Path, crop_px: int | None, random_crop: bool, naip_factor: int | None
) -> None:
    ds = LASDataset(
        las_tiny,
        modalities=MODS,
        products=PRODUCTS,
        crop_px=crop_px,
        random_crop=random_crop,
        naip_factor=naip_factor,
    )
    positions = [p % len(ds) for p in POSITIONS]
    torch.manual_seed(3)
    expected = [reference_item(ds, i) for i in positions]
    after_reference = torch.get_rng_state()
    torch.manual_seed(3)
    batched = ds.__getitems__(positions)
    assert torch.equal(torch.get_rng_state(), after_reference)  # same draws, same order
    torch.manual_seed(3)
    single = [ds[i] for i in positions]
    assert len(batched) == len(single) == len(expected)
    for k, (e, b, s) in enumerate(zip(expected, batched, single, strict=True)):
        assert_same(b, e, f"batched[{k}]")
        assert_same(s, e, f"single[{k}]")
    if random_crop:  # the crops do differ between samples
        assert len({tuple(item["window"].tolist()) for item in batched}) > 1


def test_windows_are_read_alone_when_chunks_are_smaller_than_a_sample(
    las_tiny: Path, tmp_path: Path
) -> None:
    """A store whose Sentinel-2 chunks tile a sample: each window is its own zarr read."""
    copy = tmp_path / "las"
    shutil.copytree(las_tiny, copy)
    root = zarr.open_group(str(copy / "las.zarr"), mode="a")
    old = root["sentinel-2"]
    data, attrs = old[:], dict(old.attrs)
    n, bands, h, w = old.shape
    del root["sentinel-2"]
    new = root.create_array(
        "sentinel-2",
        shape=old.shape,
        dtype=old.dtype,
        chunks=(1, bands, h // 4, w // 4),
        shards=(4, bands, h, w),
        attributes=attrs,
        dimension_names=old.metadata.dimension_names,
    )
    new[:] = data
    ds = LASDataset(
        copy, modalities=["sentinel-2"], products=["esa-worldcover"], crop_px=12, random_crop=True
    )
    torch.manual_seed(1)
    expected = [reference_item(ds, i) for i in POSITIONS]
    torch.manual_seed(1)
    for k, (b, e) in enumerate(zip(ds.__getitems__(POSITIONS), expected, strict=True)):
        assert_same(b, e, f"batched[{k}]")


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batches_match_the_per_item_reader(las_tiny: Path, workers: int) -> None:
    ds = LASDataset(las_tiny, modalities=MODS, products=["esa-worldcover"], crop_px=16)
    order = [[7, 1, 2], [11, 4], [0, 0, 9]]
    loader = DataLoader(ds, batch_sampler=order, num_workers=workers)
    for batch, positions in zip(loader, order, strict=True):
        assert_same(batch, default_collate([reference_item(ds, i) for i in positions]))


def test_pickled_dataset_drops_its_array_handles(las_tiny: Path) -> None:
    import pickle

    ds = LASDataset(las_tiny, modalities=["sentinel-2"], products=["esa-worldcover"])
    ds[0]
    assert ds._handles is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handles is None and clone._root is None
    assert_same(clone[2], ds[2])


def test_shard_batch_sampler_keeps_batches_within_few_shards(las_tiny: Path) -> None:
    ds = LASDataset(las_tiny, modalities=["sentinel-2"], products=[])
    per = ds.samples_per_shard
    assert per == 4  # output.samples_per_shard of the fixture
    sampler = ShardBatchSampler(ds, batch_size=3, generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-len(ds) // 3)
    flat = [p for b in batches for p in b]
    assert Counter(flat) == Counter(range(len(ds)))  # every sample once per epoch
    for batch in batches:
        shards = [ds.rows[p]["zarr_index"] // per for p in batch]
        assert len(set(shards)) <= 2, shards
        # a shard's samples are contiguous in the epoch's order
    order = [ds.rows[p]["zarr_index"] // per for p in flat]
    assert [s for k, s in enumerate(order) if k == 0 or s != order[k - 1]] == list(
        dict.fromkeys(order)
    )
    again = ShardBatchSampler(ds, batch_size=3, generator=torch.Generator().manual_seed(0))
    assert list(again) == batches  # a seeded generator repeats the epoch
    assert list(sampler) != batches  # the next epoch draws a new order
    plain = ShardBatchSampler(ds, batch_size=5, shuffle=False, drop_last=True)
    assert list(plain) == [list(range(k, k + 5)) for k in range(0, len(ds) - 4, 5)]
    assert len(plain) == len(ds) // 5
    loader = DataLoader(ds, batch_sampler=sampler)
    assert sum(len(b["sample_id"]) for b in loader) == len(ds)
    with pytest.raises(ValueError, match="batch_size"):
        ShardBatchSampler(ds, batch_size=0)
