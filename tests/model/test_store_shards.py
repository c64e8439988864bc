"""The whole-shard reader on a store ``las build`` wrote: every array, every shard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from las_builder.zarr_shards import ShardedArray, read_shards


def _members(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    out: dict[str, zarr.Array] = {}
    for name, member in group.members():
        if isinstance(member, zarr.Group):
            out.update(_members(member, f"{prefix}{name}/"))
        else:
            out[f"{prefix}{name}"] = member
    return out


def _shards(array: zarr.Array) -> range:
    assert array.shards is not None
    return range(-(-array.shape[0] // array.shards[0]))


def test_every_array_of_a_built_store_reads_as_zarr_reads_it(las_tiny: Path) -> None:
    """Every sharded array ``las build`` wrote has a reader, and each of its shards equals
    ``array[start:stop]`` read by zarr (values, dtype, NaN where Sentinel-1 has none)."""
    root = zarr.open_group(str(las_tiny / "las.zarr"), mode="r")
    sharded = {p: a for p, a in _members(root).items() if a.shards is not None}
    assert {"sentinel-2", "sentinel-1", "naip", "consensus"} <= sharded.keys()
    assert any(p.endswith("/native") for p in sharded) and any(p.endswith("/las") for p in sharded)
    for path, array in sharded.items():
        reader = ShardedArray.for_array(array)
        assert reader is not None, f"{path}: the build's layout must be readable"
        shards = _shards(array)
        for shard, got in zip(shards, read_shards([(reader, s) for s in shards]), strict=True):
            start, stop = reader.rows(shard)
            want = array[start:stop]
            assert isinstance(want, np.ndarray), path
            assert got.dtype == want.dtype and got.shape == want.shape, path
            np.testing.assert_array_equal(got, want, err_msg=f"{path} shard {shard}")
