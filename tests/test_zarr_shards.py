"""Whole-shard reads and writes of the layout las build writes: equal to zarr's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

from las_builder.zarr_shards import (
    ShardCorruptError,
    ShardedArray,
    read_rows,
    read_shards,
    write_shards,
)

# Every test runs with each compressor a recipe may choose (output.compressor), with the
# chunk checksum las build writes and without it (stores built before it).
COMPRESSORS = {
    "blosc-lz4": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),
    "zstd": ZstdCodec(level=3),
}
_compressor: list = []


@pytest.fixture(
    autouse=True,
    params=[(name, crc) for name in sorted(COMPRESSORS) for crc in (True, False)],
    ids=lambda p: f"{p[0]}{'+crc32c' if p[1] else ''}",
)
def compressor(request: pytest.FixtureRequest) -> object:
    name, crc = request.param
    _compressor[:] = [[COMPRESSORS[name], Crc32cCodec()] if crc else [COMPRESSORS[name]]]
    yield _compressor[0]
    _compressor.clear()


def _array(root: zarr.Group, name: str, rows: int = 21, **kwargs: object) -> zarr.Array:
    options: dict = {
        "shape": (rows, 3, 8, 8),
        "chunks": (1, 3, 8, 8),
        "shards": (8, 3, 8, 8),
        "dtype": "float32",
        "compressors": _compressor[0],
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
    reader = ShardedArray.for_array(array)
    assert reader is not None
    assert reader.key(1) == "group/x/c/1/0/0/0"
    got = read_shards([(reader, 0), (reader, 1), (reader, 2)])
    assert [g.shape[0] for g in got] == [8, 8, 5]
    for shard, part in enumerate(got):
        start, stop = reader.rows(shard)
        np.testing.assert_array_equal(part, array[start:stop])
    assert np.isnan(got[1]).all() and np.isnan(got[0][5:]).all()
    np.testing.assert_array_equal(got[2][1:3], data[17:19])
    with pytest.raises(IndexError, match="shard 3 is outside group/x"):
        reader.rows(3)


def test_local_shards_are_read_from_their_files_and_other_stores_through_zarr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local folder's shard objects are read from the files (the store's ``get`` is not
    called), a store of another kind goes through ``get``; the values are zarr's either way."""
    from zarr.storage import LocalStore, MemoryStore

    data = np.random.default_rng(1).normal(size=(21, 3, 8, 8)).astype("float32")
    local = _array(zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3), "x")
    memory = _array(zarr.open_group(MemoryStore(), mode="w", zarr_format=3), "x")
    for array in (local, memory):
        array[:19] = data[:19]
    gets: list[str] = []
    for cls in (LocalStore, MemoryStore):
        original = cls.get

        async def counted(self, key, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            gets.append(f"{type(self).__name__}:{key}")
            return await _original(self, key, *args, **kwargs)

        monkeypatch.setattr(cls, "get", counted)
    readers = [ShardedArray.for_array(a) for a in (local, memory)]
    assert all(r is not None for r in readers)
    present = [r for r in readers if r is not None]  # the same readers, typed as present
    requests = [(r, shard) for r in present for shard in range(3)]
    got = read_shards(requests)
    assert gets == [f"MemoryStore:x/c/{shard}/0/0/0" for shard in range(3)]
    for (reader, shard), part in zip(requests, got, strict=True):
        start, stop = reader.rows(shard)
        np.testing.assert_array_equal(part, reader.array[start:stop])  # zarr's own read
    np.testing.assert_array_equal(got[0], data[:8])
    # a local shard file cut short fails by name, as one fetched through zarr does
    path = tmp_path / "s.zarr" / "x" / "c" / "1" / "0" / "0" / "0"
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(ShardCorruptError, match=r"x: shard c/1/0/0/0 is 10 bytes"):
        read_shards([(present[0], 1)])


@pytest.mark.parametrize("threads", [1, 3])
def test_decode_threads_change_who_decodes_not_what(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """``threads=1`` decodes every chunk on the calling thread (the codec pool is never asked);
    more spread the chunks over the pool; shards and rows come out the same either way."""
    import threading

    import las_builder.zarr_shards as zs

    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    array = _array(root, "x")
    data = np.random.default_rng(5).normal(size=array.shape).astype("float32")
    array[:] = data
    reader = ShardedArray.for_array(array)
    assert reader is not None
    decoders: set[str] = set()
    decode = ShardedArray.decode

    def recording(self: ShardedArray, compressed: memoryview, slot: np.ndarray, where: str) -> None:
        decoders.add(threading.current_thread().name)
        decode(self, compressed, slot, where)

    monkeypatch.setattr(ShardedArray, "decode", recording)
    got = read_shards([(reader, s) for s in range(3)], threads=threads)
    np.testing.assert_array_equal(np.concatenate(got), data)
    rows = [20, 0, 9, 9]
    np.testing.assert_array_equal(read_rows([(reader, rows)], threads=threads)[0], data[rows])
    me = threading.current_thread().name
    if threads == 1:
        assert decoders == {me}
    else:
        assert me in decoders and any(name.startswith("shard-codec") for name in decoders)
    later = zs.read_shards_later([(reader, 1)], threads=threads).result()
    np.testing.assert_array_equal(later[0], data[8:16])


@pytest.mark.parametrize("where", ["local", "memory"])
def test_single_rows_equal_zarrs_read_wherever_they_lie(tmp_path: Path, where: str) -> None:
    """``read_rows``: any rows in any order (repeats too), from full and partial shards, from
    chunks never written and shards that do not exist (fill value), equal zarr's read; a row
    outside the array and a damaged index fail by name."""
    from zarr.storage import MemoryStore

    store = str(tmp_path / "s.zarr") if where == "local" else MemoryStore()
    root = zarr.open_group(store, mode="w", zarr_format=3)
    array = _array(root, "group/x")
    data = np.random.default_rng(2).normal(size=array.shape).astype("float32")
    array[:5] = data[:5]  # shard 0: chunks 5-7 never written
    array[17:19] = data[17:19]  # shard 2 cut by the array's end; shard 1 never written
    labels = _array(
        root, "y", shape=(21, 8, 8), chunks=(1, 8, 8), shards=(8, 8, 8), dtype="uint8", fill_value=0
    )
    codes = np.random.default_rng(3).integers(1, 9, size=labels.shape).astype("uint8")
    labels[:] = codes
    rows = [18, 3, 3, 9, 0, 20, 6, 17, 4]
    readers = [ShardedArray.for_array(a) for a in (array, labels)]
    assert all(r is not None for r in readers)
    present = [r for r in readers if r is not None]  # the same readers, typed as present
    got = read_rows([(r, rows) for r in present])
    for arr, part in zip((array, labels), got, strict=True):
        assert part.shape == (len(rows), *arr.shape[1:])
        np.testing.assert_array_equal(part, np.stack([arr[r] for r in rows]))
    assert np.isnan(got[0][3]).all() and np.isnan(got[0][6]).all()  # shard 1 / unwritten chunk
    np.testing.assert_array_equal(got[1], codes[rows])
    np.testing.assert_array_equal(read_rows([(present[0], [4, 4])])[0], data[[4, 4]])
    with pytest.raises(IndexError, match="row 21 is outside group/x"):
        read_rows([(present[0], [21])])
    if where == "local":  # an index that fails its checksum, read afresh by a new reader
        path = tmp_path / "s.zarr" / "y" / "c" / "2" / "0" / "0"
        blob = bytearray(path.read_bytes())
        blob[-6] ^= 0xFF
        path.write_bytes(bytes(blob))
        fresh = ShardedArray.for_array(zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["y"])
        assert fresh is not None
        with pytest.raises(ShardCorruptError, match=r"y: shard c/2/0/0 fails its index checksum"):
            read_rows([(fresh, [16])])


@pytest.mark.parametrize(
    "options",
    [
        {"shards": None},  # unsharded
        {"compressors": GzipCodec()},  # another compressor
        {"chunks": (1, 1, 8, 8)},  # inner chunks split the band axis
        {"compressors": None},  # no compression
    ],
    ids=["unsharded", "gzip", "band-chunks", "uncompressed"],
)
def test_other_layouts_get_no_reader(tmp_path: Path, options: dict) -> None:
    """Anything but the layout ``las build`` writes is left to zarr (``for_array`` -> None)."""
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    assert ShardedArray.for_array(_array(root, "x", **options)) is None
    v2 = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    assert (
        ShardedArray.for_array(v2.create_array("y", shape=(4, 8), chunks=(1, 8), dtype="uint8"))
        is None
    )


def test_a_damaged_shard_fails_naming_array_and_shard(tmp_path: Path) -> None:
    """A flipped index byte, a truncated object or a garbled chunk: an error that names the
    array and the shard and says what to do, never wrong values."""
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    array = _array(root, "labels/x", rows=8, dtype="uint8", fill_value=0)
    array[:] = np.arange(8 * 3 * 64, dtype=np.uint8).reshape(array.shape) % 7
    reader = ShardedArray.for_array(array)
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
    garbled[4:12] = b"\x00" * 8  # the first chunk's Blosc header or zstd frame
    path.write_bytes(bytes(garbled))
    message = "the chunk fails its checksum" if reader.checksum else "a chunk does not decompress"
    with pytest.raises(ShardCorruptError, match=rf"labels/x: shard c/0/0/0/0, chunk 0: {message}"):
        read_shards([(reader, 0)])
    with pytest.raises(ShardCorruptError, match=rf"shard c/0/0/0/0, chunk 0: {message}"):
        read_rows([(reader, [0])])

    if reader.checksum:
        # One bit inside the compressed data, the frame intact: without the chunk's checksum
        # this decodes, silently, into other values (zarr's own read refuses it too).
        offset, nbytes = np.frombuffer(good[-reader.index_bytes : -4], "<u8").reshape(-1, 2)[3]
        flipped = bytearray(good)
        flipped[int(offset + nbytes // 2)] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(
            ShardCorruptError, match=r"shard c/0/0/0/0, chunk 3: the chunk fails its"
        ):
            read_shards([(reader, 0)])
        with pytest.raises(ValueError):
            zarr.open_array(str(tmp_path / "s.zarr"), path="labels/x", mode="r")[:]

    path.write_bytes(good)
    np.testing.assert_array_equal(read_shards([(reader, 0)])[0], array[:])


def _objects(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


@pytest.mark.parametrize(
    ("dtype", "fill"),
    [("float32", np.nan), ("uint16", 0), ("float32", 0.0), ("uint8", 255)],
)
def test_written_shards_are_byte_identical_to_zarrs(
    tmp_path: Path, dtype: str, fill: float
) -> None:
    """Every object ``write_shards`` stores equals the one zarr stores for the same rows:
    chunks all fill not stored (NaN fill, a float fill of 0 by bit pattern: -0.0 is stored),
    a shard of nothing but fill no object at all, the last shard cut by the array's end."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 40, size=(21, 3, 8, 8)).astype(dtype)
    data[2] = fill  # one chunk of nothing but fill
    data[8:16] = fill  # a whole shard of fill
    if dtype == "float32":
        data[4, 0, 0, 0] = np.nan
        data[5] = 0.0
        data[5, 1, 2, 3] = -0.0
    stores = {}
    for how in ("zarr", "ours"):
        root = zarr.open_group(str(tmp_path / how), mode="w", zarr_format=3)
        array = _array(root, "labels/p", dtype=dtype, fill_value=fill)
        if how == "zarr":
            for start in range(0, 21, 8):
                array[start : start + 8] = data[start : start + 8]
        else:
            sharded = ShardedArray.for_array(array)
            assert sharded is not None
            write_shards([(sharded, s, data[s * 8 : s * 8 + 8]) for s in range(3)])
        stores[how] = _objects(tmp_path / how)
        np.testing.assert_array_equal(array[:], data)
    assert stores["ours"] == stores["zarr"]
    assert "labels/p/c/1/0/0/0" not in stores["ours"]  # the all-fill shard
    assert {"labels/p/c/0/0/0/0", "labels/p/c/2/0/0/0"} <= stores["ours"].keys()


def test_a_shard_rewritten_as_all_fill_is_deleted_and_bad_rows_are_refused(
    tmp_path: Path,
) -> None:
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    sharded = ShardedArray.for_array(_array(root, "x", rows=8, dtype="uint8", fill_value=0))
    assert sharded is not None
    obj = tmp_path / "s.zarr" / "x" / "c" / "0" / "0" / "0" / "0"
    write_shards([(sharded, 0, np.ones((8, 3, 8, 8), dtype="uint8"))])
    assert obj.exists()
    write_shards([(sharded, 0, np.zeros((8, 3, 8, 8), dtype="uint8"))])
    assert not obj.exists()
    write_shards([(sharded, 0, np.zeros((8, 3, 8, 8), dtype="uint8"))])  # nothing to delete
    with pytest.raises(ValueError, match=r"x: shard c/0/0/0/0: rows of shape \(7, 3, 8, 8\)"):
        write_shards([(sharded, 0, np.zeros((7, 3, 8, 8), dtype="uint8"))])
