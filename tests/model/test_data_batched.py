"""LASDataset's batched read (``__getitems__``) and ShardBatchSampler on a built tiny dataset.

The batched path must return exactly what the former one-sample-at-a-time reader returned:
:func:`reference_item` keeps that reader (one group lookup and one zarr call per array and
sample) as the oracle.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from torch.utils.data import DataLoader, default_collate
from zarr.core.metadata import ArrayV3Metadata

from las_builder.model.data import LASDataset, ShardBatchSampler, normalise
from las_builder.zarr_shards import ShardedArray

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
        arr = cast(zarr.Array, root[m])
        f = arr.shape[-1] // ds.shape[1]
        raw = cast(np.ndarray, arr[zi, :, y0 * f : (y0 + h) * f, x0 * f : (x0 + w) * f])
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
        raw = np.asarray(cast(zarr.Array, root[spec.array])[zi, y0 : y0 + h, x0 : x0 + w])
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
    old = cast(zarr.Array, root["sentinel-2"])
    data, attrs = old[:], dict(old.attrs)
    assert isinstance(data, np.ndarray)
    n, bands, h, w = old.shape
    del root["sentinel-2"]
    new = root.create_array(
        "sentinel-2",
        shape=old.shape,
        dtype=old.dtype,
        chunks=(1, bands, h // 4, w // 4),
        shards=(4, bands, h, w),
        attributes=attrs,
        dimension_names=cast(ArrayV3Metadata, old.metadata).dimension_names,
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


class _ShardedRows:
    """What ShardBatchSampler reads of a dataset: rows with a ``zarr_index``, shards of 8 of
    which some lost samples (skipped or in another split)."""

    samples_per_shard = 8

    def __init__(self, shards: int) -> None:
        self.rows = [{"zarr_index": s * 8 + j} for s in range(shards) for j in range(8 - s % 3)]


@pytest.mark.parametrize("batch_size", [3, 8, 12])
def test_shard_batch_sampler_deals_shards_among_dataloader_workers(batch_size: int) -> None:
    """With ``num_workers=2`` batch ``k`` goes to worker ``k % 2`` (as a DataLoader hands them
    out) and a shard's samples reach one worker only, except in the last batches, cut from the
    ends of the workers' shares; every sample is still drawn once, all batches but the last are
    full. In one sequence, batches that straddle shards split them between the workers."""
    ds: Any = _ShardedRows(30)
    per = ds.samples_per_shard

    def split_shards(batches: list[list[int]]) -> set[int]:
        workers: dict[int, set[int]] = {}
        for k, batch in enumerate(batches):
            for p in batch:
                workers.setdefault(ds.rows[p]["zarr_index"] // per, set()).add(k % 2)
        return {shard for shard, seen in workers.items() if len(seen) > 1}

    g = torch.Generator().manual_seed(3)
    sampler = ShardBatchSampler(ds, batch_size=batch_size, generator=g, num_workers=2)
    # what is left of each worker's share after its last full batch (the share sizes differ by
    # at most a shard) is cut last: these batches alone may hold a shard of both workers
    tail = -(-(2 * batch_size + per - 2) // batch_size)
    split = {"dealt": 0, "one sequence": 0}
    for _ in range(4):  # four epochs, each reshuffled
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert Counter(p for b in batches for p in b) == Counter(range(len(ds.rows)))
        assert all(len(b) == batch_size for b in batches[:-1])
        in_tail = {ds.rows[p]["zarr_index"] // per for b in batches[-tail:] for p in b}
        assert split_shards(batches) <= in_tail
        split["dealt"] += len(split_shards(batches))
        plain = ShardBatchSampler(ds, batch_size=batch_size, generator=g)
        split["one sequence"] += len(split_shards(list(plain)))
    assert split["dealt"] <= 4 * tail and split["one sequence"] > 4 * 10, split
    again = ShardBatchSampler(
        ds, batch_size=batch_size, generator=torch.Generator().manual_seed(3), num_workers=2
    )
    assert list(again) == list(
        ShardBatchSampler(
            ds, batch_size=batch_size, generator=torch.Generator().manual_seed(3), num_workers=2
        )
    )  # seeded: deterministic
    with pytest.raises(ValueError, match="num_workers"):
        ShardBatchSampler(ds, batch_size=2, num_workers=-1)


def test_dataloader_workers_get_dealt_shard_batches(las_tiny: Path) -> None:
    """A 2-worker DataLoader over dealt batches returns every sample once, as the batches
    the sampler made, in their order."""
    ds = LASDataset(las_tiny, modalities=["sentinel-2"], products=[], shard_cache=2)
    sampler = ShardBatchSampler(
        ds, batch_size=3, generator=torch.Generator().manual_seed(0), num_workers=2
    )
    batches = list(sampler)
    sampler.generator = torch.Generator().manual_seed(0)
    loader = DataLoader(
        ds, sampler=sampler, batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    got = [list(b["sample_id"]) for b in loader]
    assert got == [[ds.rows[p]["sample_id"] for p in b] for b in batches]


# --- whole batches (``batch`` / ``ds[list]``), the shard cache and the vectorised normalisation


@pytest.mark.parametrize(
    ("crop_px", "random_crop", "naip_factor", "shard_cache"),
    [
        (None, False, None, 0),
        (None, False, None, 2),
        (16, False, 2, 1),
        (16, True, 1, 2),
        (12, True, None, 0),
    ],
)
def test_collated_batches_equal_the_per_item_reader(
    las_tiny: Path,
    crop_px: int | None,
    random_crop: bool,
    naip_factor: int | None,
    shard_cache: int,
) -> None:
    """``ds.batch(positions)`` and ``ds[positions]`` are ``default_collate`` of the oracle's
    items (values, dtypes, keys, RNG draws), and the shard cache changes nothing."""
    ds = LASDataset(
        las_tiny,
        modalities=MODS,
        products=PRODUCTS,
        crop_px=crop_px,
        random_crop=random_crop,
        naip_factor=naip_factor,
        shard_cache=shard_cache,
    )
    positions = [p % len(ds) for p in POSITIONS]
    for seed in (3, 4):  # the second round finds the shards in the cache
        torch.manual_seed(seed)
        expected = default_collate([reference_item(ds, i) for i in positions])
        after_reference = torch.get_rng_state()
        torch.manual_seed(seed)
        assert_same(ds.batch(positions), expected, "batch")
        assert torch.equal(torch.get_rng_state(), after_reference)
        torch.manual_seed(seed)
        assert_same(ds[np.array(positions)], expected, "ds[array]")
        torch.manual_seed(seed)
        items = ds.__getitems__(positions)
        assert_same(default_collate(items), expected, "collated __getitems__")
        torch.manual_seed(seed)
        single = ds[positions[1]]
        torch.manual_seed(seed)
        assert_same(single, ds.__getitems__([positions[1]])[0], "ds[int]")
    with pytest.raises(ValueError, match="at least one"):
        ds.batch([])
    assert ds.__getitems__([]) == []


def _count_shard_reads(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[str, int]]:
    """Record the (array, shard) of every whole-shard read ``LASDataset`` makes through
    ``las_builder.model.data.<name>`` (``read_shards`` or ``read_shards_later``)."""
    import las_builder.model.data as data_module

    seen: list[tuple[str, int]] = []
    real = getattr(data_module, name)

    def counting(requests: Any, threads: int | None = None) -> Any:
        seen.extend((r.array.path, shard) for r, shard in requests)
        return real(requests, threads)

    monkeypatch.setattr(data_module, name, counting)
    return seen


@pytest.mark.parametrize("reader", ["sharded_array", "zarr"])
def test_shard_cache_reads_each_shard_once_and_stays_bounded(
    las_tiny: Path, monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    """With ShardBatchSampler batches, every shard of every array is decoded once per epoch
    (one whole-shard read each: by the ShardedArray for the layout ``las build`` writes, by one
    zarr call where zarr reads) and at most ``shard_cache`` shards stay decoded."""
    from zarr.core.array import AsyncArray

    calls: list[tuple[str, Any]] = []
    getitem = AsyncArray.getitem

    def counting(self: AsyncArray, selection: Any, **kwargs: Any) -> Any:
        calls.append((self.path, selection))
        return getitem(self, selection, **kwargs)

    monkeypatch.setattr(AsyncArray, "getitem", counting)
    fast = _count_shard_reads(monkeypatch, "read_shards")
    if reader == "zarr":
        monkeypatch.setattr(ShardedArray, "for_array", classmethod(lambda c, a: None))
    ds = LASDataset(
        las_tiny,
        modalities=["sentinel-2", "sentinel-1"],
        products=["esa-worldcover"],
        shard_cache=1,
    )
    per = ds.samples_per_shard
    shards = {row["zarr_index"] // per for row in ds.rows}
    sampler = ShardBatchSampler(ds, batch_size=3, generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    torch.manual_seed(0)
    got = [ds.batch(b) for b in batches]
    if reader == "zarr":
        assert not fast
        assert len(calls) == 3 * len(shards)  # 3 arrays, each shard once
        assert all(isinstance(sel, slice) and sel.start % per == 0 for _, sel in calls)
    else:
        assert not calls
        assert len(fast) == len(set(fast)) == 3 * len(shards)
        assert {shard for _, shard in fast} == shards
    assert len(ds._slabs) <= 1 * 3
    plain = LASDataset(
        las_tiny, modalities=["sentinel-2", "sentinel-1"], products=["esa-worldcover"]
    )
    for batch, positions in zip(got, batches, strict=True):
        assert_same(batch, plain.batch(positions))
    with pytest.raises(ValueError, match="shard_cache"):
        LASDataset(las_tiny, modalities=["sentinel-2"], products=[], shard_cache=-1)


def test_decode_threads_reach_every_read_and_change_nothing_read(
    las_tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``decode_threads`` (default 1: the reading thread alone) goes with every whole-shard,
    row and background read the dataset makes; batches are the same with more threads."""
    import las_builder.model.data as data_module

    passed: list[tuple[str, int | None]] = []
    names = ("read_shards", "read_rows", "read_shards_later")
    for name in names:
        real = getattr(data_module, name)

        def recording(
            requests: Any, threads: int | None = None, real: Any = real, name: str = name
        ) -> Any:
            passed.append((name, threads))
            return real(requests, threads)

        monkeypatch.setattr(data_module, name, recording)
    options: dict[str, Any] = {"modalities": MODS, "products": ["esa-worldcover"]}
    batches = [[0, 1, 2], [3, 4]]
    got: dict[int, list[dict[str, Any]]] = {}
    for threads in (1, 3):
        extra: dict[str, Any] = {} if threads == 1 else {"decode_threads": threads}
        cached = LASDataset(las_tiny, shard_cache=2, **options, **extra)
        rows = LASDataset(las_tiny, **options, **extra)
        assert cached.decode_threads == rows.decode_threads == threads
        passed.clear()
        cached.batch(batches[0])
        cached.prefetch(batches[1])  # read in the background
        torch.manual_seed(0)
        got[threads] = [cached.batch(b) for b in batches] + [rows.batch(b) for b in batches]
        assert set(passed) == {(name, threads) for name in names}, passed
    for a, b in zip(got[1], got[3], strict=True):
        assert_same(a, b)
    with pytest.raises(ValueError, match="decode_threads must be at least 1, got 0"):
        LASDataset(las_tiny, decode_threads=0, **options)


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_whole_batches_match_the_per_item_reader(las_tiny: Path, workers: int) -> None:
    """``DataLoader(ds, sampler=ShardBatchSampler(...), batch_size=None)``: the dataset
    returns whole batches (in shared memory in workers), equal to the oracle's collated
    items."""
    ds = LASDataset(
        las_tiny, modalities=MODS, products=["esa-worldcover"], crop_px=16, shard_cache=2
    )
    batches = list(ShardBatchSampler(ds, batch_size=5, generator=torch.Generator().manual_seed(1)))
    loader = DataLoader(
        ds,
        sampler=batches,
        batch_size=None,
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
    )
    n = 0
    for batch, positions in zip(loader, batches, strict=True):
        assert_same(batch, default_collate([reference_item(ds, i) for i in positions]))
        assert type(batch) is dict
        if workers:  # every tensor a view into one block of shared memory, sent as one
            storages = {t.untyped_storage().data_ptr() for t in _tensors(batch)}
            assert len(storages) == 1
        n += len(batch["sample_id"])
    assert n == len(ds)


def test_worker_blocks_are_reused_only_once_the_main_process_let_them_go(
    las_tiny: Path,
) -> None:
    """Two epochs of 1-sample batches from 2 persistent workers: batches the main process
    dropped have their blocks filled again (far fewer blocks than batches), while every
    batch it still holds keeps its values (compared with the oracle after both epochs)."""
    import multiprocessing

    from las_builder.model import data as data_module

    ds = LASDataset(las_tiny, modalities=MODS, products=["esa-worldcover"], crop_px=16)
    batches = [[i] for i in range(len(ds))]
    made = multiprocessing.get_context("fork").Value("i", 0)
    new_shared = data_module._new_shared

    def counted(count: int, dtype: torch.dtype) -> torch.Tensor:
        with made.get_lock():
            made.value += 1
        return new_shared(count, dtype)

    def count_blocks(_: int) -> None:  # in each worker, after the fork
        data_module._new_shared = counted

    loader = DataLoader(
        ds,
        sampler=batches,
        batch_size=None,
        num_workers=2,
        multiprocessing_context="fork",
        persistent_workers=True,
        worker_init_fn=count_blocks,
    )
    for _ in range(2):  # dropped at once: the blocks go round
        for batch, positions in zip(loader, batches, strict=True):
            assert_same(batch, default_collate([reference_item(ds, i) for i in positions]))
    reused = made.value
    assert reused <= 2 * (data_module._POOLED_BLOCKS + 1) < 2 * len(batches)
    held = list(loader)  # all kept: no block may be filled again while its batch is alive
    for batch, positions in zip(held, batches, strict=True):
        assert_same(batch, default_collate([reference_item(ds, i) for i in positions]))
    assert made.value > reused


def test_block_pool_reuses_a_block_after_its_last_view_is_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A block stays taken while any view of the batch unpacked from it lives (a slice
    included), and is handed out again as soon as none does: by reference counting alone,
    with the garbage collector off (a reference cycle would hold the block until a
    collection)."""
    import gc
    import io
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's shared-memory reductions)

    from las_builder.model import data as data_module

    monkeypatch.setattr(data_module, "_pools", {})

    def sent(value: float) -> tuple[dict[str, Any], int]:
        arena = data_module._SharedArena()
        arena.reserve([((4, 8), torch.float32)])
        batch = arena.batch({"x": arena.empty((4, 8), torch.float32).fill_(value)})
        buffer = io.BytesIO()
        ForkingPickler(buffer).dump(batch)
        assert arena.flat is not None
        return pickle.loads(buffer.getvalue()), arena.flat.data_ptr()

    gc.collect()
    gc.disable()
    try:
        first, block = sent(1.0)
        part = first["x"][2:]  # a view made from the batch keeps the block
        del first
        second, other = sent(2.0)
        assert other != block and torch.equal(part, torch.ones(2, 8))
        del part
        third, again = sent(3.0)
    finally:
        gc.enable()
    assert again == block and torch.equal(third["x"], torch.full((4, 8), 3.0))
    assert torch.equal(second["x"], torch.full((4, 8), 2.0))


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return [value] if isinstance(value, torch.Tensor) else []


def test_arena_batch_pickles_as_one_block_and_unpickles_as_a_plain_dict() -> None:
    """What a worker sends: the block once and each tensor's place; a tensor put in the batch
    afterwards (outside the block) and one too large for the block travel as themselves."""
    import copy
    import io
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's shared-memory reductions)

    from las_builder.model.data import _SharedArena

    arena = _SharedArena()
    arena.reserve([((2, 3, 4, 4), torch.float32), ((2, 4, 4), torch.int64)])
    images = arena.empty((2, 3, 4, 4), torch.float32).copy_(torch.rand(2, 3, 4, 4))
    labels = arena.empty((2, 4, 4), torch.int64).copy_(torch.arange(32).view(2, 4, 4))
    large = arena.empty((4096,), torch.float64).fill_(2.5)  # beyond the block: its own segment
    assert arena.holds(images) and arena.holds(labels) and not arena.holds(large)
    assert large.is_shared()
    batch = arena.batch(
        {
            "sample_id": ["a", "b"],
            "images": {"s2": images},
            "labels": {"wc": labels},
            "zarr_index": torch.tensor([7, 9]),
            "large": large,
        }
    )
    assert arena.holds(batch["zarr_index"])  # small tensors copied into the block
    clone = copy.copy(batch)  # as default_convert copies a batch
    clone["extra"] = torch.ones(3)
    buffer = io.BytesIO()
    ForkingPickler(buffer).dump(clone)
    got = pickle.loads(buffer.getvalue())
    assert type(got) is dict and type(got["images"]) is dict
    assert got["sample_id"] == ["a", "b"]
    for key in ("zarr_index", "large", "extra"):
        assert torch.equal(got[key], clone[key]) and got[key].dtype == clone[key].dtype
    assert torch.equal(got["images"]["s2"], images) and torch.equal(got["labels"]["wc"], labels)
    block = got["images"]["s2"].untyped_storage().data_ptr()
    assert got["labels"]["wc"].untyped_storage().data_ptr() == block
    assert got["zarr_index"].untyped_storage().data_ptr() == block
    assert got["large"].untyped_storage().data_ptr() != block


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetching_sampler_gives_the_same_batches_reading_each_shard_once(
    las_tiny: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """``ShardBatchSampler(prefetch=True)``: the next two batches' shards are read in the
    background; the batches equal the oracle's, every shard is still read once per array,
    nothing stays pending, and with workers the main process (whose dataset never read)
    reads nothing ahead."""

    requested = _count_shard_reads(monkeypatch, "read_shards_later")
    ds = LASDataset(
        las_tiny, modalities=MODS, products=["esa-worldcover"], crop_px=16, shard_cache=2
    )
    g = torch.Generator().manual_seed(3)
    plain = list(ShardBatchSampler(ds, batch_size=2, generator=g))
    sampler = ShardBatchSampler(
        ds, batch_size=2, generator=torch.Generator().manual_seed(3), prefetch=True
    )
    loader = DataLoader(
        ds,
        sampler=sampler,
        batch_size=None,
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
    )
    got = list(loader)
    assert len(got) == len(plain)
    for batch, positions in zip(got, plain, strict=True):
        assert [ds.rows[i]["sample_id"] for i in positions] == batch["sample_id"]
        assert_same(batch, default_collate([reference_item(ds, i) for i in positions]))
    if workers:
        assert not requested  # the main process's copy never read: no read-ahead there
    else:
        per = ds.samples_per_shard
        shards = {row["zarr_index"] // per for row in ds.rows}
        assert requested and len(requested) == len(set(requested))  # nothing read twice
        assert {s for _, s in requested} < shards  # the first batch's shards: read directly
        assert not ds._pending


def test_a_failed_read_ahead_fails_the_batch_that_needs_it(las_tiny: Path, tmp_path: Path) -> None:
    """A shard damaged under a read-ahead: the batch that takes it raises the reader's error
    (naming array and shard), never returns other values."""
    from las_builder.zarr_shards import ShardCorruptError

    copy = tmp_path / "las"
    shutil.copytree(las_tiny, copy)
    ds = LASDataset(copy, modalities=["sentinel-2"], products=[], shard_cache=2)
    per = ds.samples_per_shard
    first = [i for i, r in enumerate(ds.rows) if r["zarr_index"] // per == 0]
    later = [i for i, r in enumerate(ds.rows) if r["zarr_index"] // per == 1]
    assert first and later
    ds.batch(first[:1])  # the process has now read: read-ahead is allowed
    shard = copy / "las.zarr" / "sentinel-2" / "c" / "1" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-3] + b"bad")
    ds.prefetch(later)
    assert ("sentinel-2", 1) in ds._pending
    with pytest.raises(ShardCorruptError, match=r"sentinel-2: shard c/1/0/0/0 fails its index"):
        ds.batch(later)


def test_pickled_dataset_drops_its_shard_cache(las_tiny: Path) -> None:
    import pickle

    ds = LASDataset(las_tiny, modalities=["sentinel-2"], products=[], shard_cache=2)
    ds.batch([0, 1])
    assert ds._slabs
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._slabs and clone.shard_cache == 2
    assert_same(clone.batch([2, 0]), ds.batch([2, 0]))


def _old_normalise(modality: str, array: np.ndarray, attrs: dict | None = None) -> np.ndarray:
    """``normalise`` as it was before it wrote in place (kept verbatim as oracle)."""
    if modality == "sentinel-2":
        return array.astype(np.float32) / 10000.0
    if modality == "naip":
        return array.astype(np.float32) / 255.0
    units = str((attrs or {}).get("units", "linear")).lower()
    x = array.astype(np.float32)
    finite = np.isfinite(x)
    if "db" not in units.replace("(", " ").split():
        x = 10.0 * np.log10(np.clip(np.where(finite, x, 1.0), 1e-6, None))
    x = np.clip((x + 15.0) / 10.0, -3.0, 3.0)
    return np.where(finite, x, 0.0).astype(np.float32)


def test_normalise_of_a_batch_is_bitwise_the_per_sample_one() -> None:
    rng = np.random.default_rng(0)
    s1 = rng.lognormal(-3, 2, (4, 2, 16, 16)).astype(np.float32)
    s1.flat[::7], s1.flat[::11], s1.flat[::13] = np.nan, np.inf, -np.inf
    s1.flat[::17], s1.flat[::19] = 0.0, -1.0
    s1_db = rng.normal(-15, 10, (4, 2, 16, 16)).astype(np.float32)
    s1_db.flat[::7], s1_db.flat[::11] = np.nan, -np.inf
    cases: list[tuple[str, np.ndarray, dict[str, Any] | None]] = [
        ("sentinel-2", rng.integers(0, 65535, (4, 12, 16, 16), dtype=np.uint16), None),
        ("naip", rng.integers(0, 256, (4, 4, 16, 16), dtype=np.uint8), None),
        ("sentinel-1", s1, {"units": "linear"}),
        ("sentinel-1", s1_db, {"units": "gamma0 (dB)"}),
    ]
    for modality, values, attrs in cases:
        before = values.copy()
        old = _old_normalise(modality, values, attrs)
        new = normalise(modality, values, attrs)
        assert np.array_equal(values, before, equal_nan=True)  # input untouched without out
        per_sample = np.stack([normalise(modality, v, attrs) for v in values])
        for got in (new, per_sample):
            assert got.dtype == np.float32 and got.shape == values.shape
            assert np.array_equal(got.view(np.uint32), old.view(np.uint32)), modality
        out = np.empty(values.shape, np.float32)
        assert normalise(modality, values, attrs, out=out) is out
        assert np.array_equal(out.view(np.uint32), old.view(np.uint32))
        if values.dtype == np.float32:  # in place
            assert normalise(modality, values, attrs, out=values) is values
            assert np.array_equal(values.view(np.uint32), old.view(np.uint32))
    with pytest.raises(ValueError, match="out must be"):
        normalise("naip", cases[1][1], out=np.empty((1,), np.float32))
    with pytest.raises(ValueError, match="unknown modality"):
        normalise("landsat", cases[1][1])


def test_a_pooled_block_is_sent_once_then_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's pooled block travels whole (its file descriptor) with the first batch in
    it; later batches in the same block carry only its name and each tensor's place, and
    unpickle as views into the block the main process kept mapped."""
    import io
    import subprocess
    import sys
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's shared-memory reductions)

    from las_builder.model import data as data_module

    monkeypatch.setattr(data_module, "_pools", {})
    monkeypatch.setattr(data_module, "_received", {})
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = (ended.pid, "0" * 16, 0)  # a block of a worker that has ended
    data_module._received[stale] = torch.zeros(8, dtype=torch.uint8)

    def dumped(value: float) -> bytes:
        arena = data_module._SharedArena()
        arena.reserve([((4, 8), torch.float32)])
        batch = arena.batch({"x": arena.empty((4, 8), torch.float32).fill_(value)})
        buffer = io.BytesIO()
        ForkingPickler(buffer).dump(batch)
        return buffer.getvalue()

    first_bytes = dumped(1.0)
    first = pickle.loads(first_bytes)
    assert torch.equal(first["x"], torch.ones(4, 8))
    assert stale not in data_module._received  # the ended worker's block was let go
    ((key, kept),) = data_module._received.items()
    assert key[0] == os.getpid() and first["x"].untyped_storage().data_ptr() == kept.data_ptr()
    del first  # the block goes back to the pool
    second_bytes = dumped(2.0)
    assert b"_unpack_known_block" in second_bytes and b"_unpack_new_block" in first_bytes
    assert b"rebuild_storage" not in second_bytes  # no storage, no file descriptor
    second = pickle.loads(second_bytes)
    assert torch.equal(second["x"], torch.full((4, 8), 2.0))
    assert second["x"].untyped_storage().data_ptr() == kept.data_ptr()

    data_module._received.clear()  # as if the first batch never reached this process
    del second
    with pytest.raises(RuntimeError, match=rf"pid {os.getpid()}\).*block 0"):
        pickle.loads(dumped(3.0))
