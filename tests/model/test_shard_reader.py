"""The loader's whole-shard reader: equal to zarr's own read, or no reader at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from las_builder.model.shard_reader import ShardCorruptError, ShardReader, read_shards


def _members(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    out: dict[str, zarr.Array] = {}
    for name, member in group.members():
        if isinstance(member, zarr.Group):
            out.update(_members(member, f"{prefix}{name}/"))
        else:
            out[f"{prefix}{name}"] = member
    return out


def _shards(array: zarr.Array) -> range:
    return range(-(-array.shape[0] // array.shards[0]))


def test_every_array_of_a_built_store_reads_as_zarr_reads_it(las_tiny: Path) -> None:
    """Every sharded array ``las build`` wrote has a reader, and each of its shards equals
    ``array[start:stop]`` read by zarr (values, dtype, NaN where Sentinel-1 has none)."""
    root = zarr.open_group(str(las_tiny / "las.zarr"), mode="r")
    sharded = {p: a for p, a in _members(root).items() if a.shards is not None}
    assert {"sentinel-2", "sentinel-1", "naip", "consensus"} <= sharded.keys()
    assert any(p.endswith("/native") for p in sharded) and any(p.endswith("/las") for p in sharded)
    for path, array in sharded.items():
        reader = ShardReader.for_array(array)
        assert reader is not None, f"{path}: the build's layout must be readable"
        shards = _shards(array)
        for shard, got in zip(shards, read_shards([(reader, s) for s in shards]), strict=True):
            start, stop = reader.rows(shard)
            want = array[start:stop]
            assert got.dtype == want.dtype and got.shape == want.shape, path
            np.testing.assert_array_equal(got, want, err_msg=f"{path} shard {shard}")


def _array(root: zarr.Group, name: str, rows: int = 21, **kwargs: object) -> zarr.Array:
    options: dict = {
        "shape": (rows, 3, 8, 8),
        "chunks": (1, 3, 8, 8),
        "shards": (8, 3, 8, 8),
        "dtype": "float32",
        "compressors": ZstdCodec(level=3),
        "fill_value": np.nan,
    }
    options.update(kwargs)
    return root.create_array(name, **options)


def test_partial_shards_missing_chunks_and_missing_shards_take_the_fill_value(
    tmp_path: Path,
) -> None:
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    array = _array(root, "group/x")
    data = np.random.default_rng(0).normal(size=array.shape).astype("float32")
    array[:5] = data[:5]  # shard 0: chunks 5-7 never written
    array[17:19] = data[17:19]  # shard 2 (rows 16-20, cut by the array's end): 2 of 5 chunks
    # shard 1 (rows 8-15) is never written: no object at all
    reader = ShardReader.for_array(array)
    assert reader is not None
    assert reader.key(1) == "c/1/0/0/0"
    got = read_shards([(reader, 0), (reader, 1), (reader, 2)])
    assert [g.shape[0] for g in got] == [8, 8, 5]
    for shard, part in enumerate(got):
        start, stop = reader.rows(shard)
        np.testing.assert_array_equal(part, array[start:stop])
    assert np.isnan(got[1]).all() and np.isnan(got[0][5:]).all()
    np.testing.assert_array_equal(got[2][1:3], data[17:19])
    with pytest.raises(IndexError, match="shard 3 is outside group/x"):
        reader.rows(3)


@pytest.mark.parametrize(
    "options",
    [
        {"shards": None},  # unsharded
        {"compressors": BloscCodec()},  # another compressor
        {"chunks": (1, 1, 8, 8)},  # inner chunks split the band axis
        {"compressors": None},  # no compression
    ],
    ids=["unsharded", "blosc", "band-chunks", "uncompressed"],
)
def test_other_layouts_get_no_reader(tmp_path: Path, options: dict) -> None:
    """Anything but the layout ``las build`` writes is left to zarr (``for_array`` -> None)."""
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    assert ShardReader.for_array(_array(root, "x", **options)) is None
    v2 = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    assert (
        ShardReader.for_array(v2.create_array("y", shape=(4, 8), chunks=(1, 8), dtype="uint8"))
        is None
    )


def test_a_damaged_shard_fails_naming_array_and_shard(tmp_path: Path) -> None:
    """A flipped index byte, a truncated object or a garbled chunk: an error that names the
    array and the shard and says what to do, never wrong values."""
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    array = _array(root, "labels/x", rows=8, dtype="uint8", fill_value=0)
    array[:] = np.arange(8 * 3 * 64, dtype=np.uint8).reshape(array.shape) % 7
    reader = ShardReader.for_array(array)
    assert reader is not None
    path = tmp_path / "s.zarr" / "labels" / "x" / "c" / "0" / "0" / "0" / "0"
    good = path.read_bytes()

    damaged = bytearray(good)
    damaged[-10] ^= 0xFF  # inside the index
    path.write_bytes(bytes(damaged))
    with pytest.raises(ShardCorruptError, match=r"labels/x: shard c/0/0/0/0 fails its index"):
        read_shards([(reader, 0)])

    path.write_bytes(good[:20])
    with pytest.raises(ShardCorruptError, match=r"shorter than its .*rebuild that shard"):
        read_shards([(reader, 0)])

    garbled = bytearray(good)
    garbled[4:12] = b"\x00" * 8  # the first chunk's zstd frame
    path.write_bytes(bytes(garbled))
    with pytest.raises(ShardCorruptError, match=r"labels/x: shard c/0/0/0/0: a chunk does not"):
        read_shards([(reader, 0)])

    path.write_bytes(good)
    np.testing.assert_array_equal(read_shards([(reader, 0)])[0], array[:])
