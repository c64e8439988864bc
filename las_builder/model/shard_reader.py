"""Whole-shard reads of the Zarr v3 arrays ``las build`` writes, decoded in parallel.

A training loader that reads a store shard by shard (``LASDataset(shard_cache=N)``) spends
most of its time in zarr-python's generic read path: per inner chunk a coroutine, a thread
hand-off and buffer copies, about as long again as the zstd decompression itself
(``docs/benchmarks.md``). For the one layout ``las build`` writes, a shard is simple to read
(the ``sharding_indexed`` codec of the Zarr v3 specification): the shard object is fetched
through zarr's own store, its index (``(offset, nbytes)`` per inner chunk, little-endian
uint64, CRC32C-checked) is parsed with numpy, and each inner chunk is zstd-decompressed
(numcodecs, the library zarr's ``ZstdCodec`` calls) straight into its slot of one output
array, on a small thread pool (zstd releases the GIL, so the chunks of a shard decode on every
core).

:meth:`ShardReader.for_array` returns a reader only for arrays whose metadata is exactly that
layout (``bytes`` + ``zstd`` inside ``sharding_indexed``, index ``bytes`` + ``crc32c`` at the
end, inner chunks that split the first axis only); for anything else it returns ``None`` and
the caller reads with zarr. Tests check every array of a built store against zarr's own read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["ShardCorruptError", "ShardReader", "read_shards", "read_shards_later"]

_EMPTY = np.uint64(2**64 - 1)
"""Offset and length of an inner chunk that was never written (the specification's marker)."""

DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Threads that decompress inner chunks (per process; re-made after a fork)."""

_pool_state: dict[str, Any] = {}
_pool_lock = threading.Lock()


def _pool(name: str = "decode") -> ThreadPoolExecutor:
    """A thread pool of this process (a forked DataLoader worker makes its own).

    ``decode``: inner chunks are decompressed there; ``ahead``: one thread that runs
    :func:`read_shards_later`.
    """
    with _pool_lock:
        if _pool_state.get("pid") != os.getpid():
            _pool_state.clear()
            _pool_state["pid"] = os.getpid()
        if name not in _pool_state:
            size = DECODE_THREADS if name == "decode" else 1
            _pool_state[name] = ThreadPoolExecutor(size, thread_name_prefix=f"shard-{name}")
        pool: ThreadPoolExecutor = _pool_state[name]
        return pool


class ShardCorruptError(ValueError):
    """A shard object whose index or chunks do not decode; names the array and the object."""


class ShardReader:
    """Read whole shards of one sharded Zarr v3 array into numpy.

    Args:
        array: An open ``zarr.Array`` with the supported layout (see :meth:`for_array`).

    """

    def __init__(self, array: Any) -> None:
        import numcodecs

        sharding = array.metadata.codecs[0]
        self.array = array
        self.shape: tuple[int, ...] = tuple(int(n) for n in array.shape)
        self.shard_shape: tuple[int, ...] = tuple(int(n) for n in array.shards)
        self.chunk_shape: tuple[int, ...] = tuple(int(n) for n in sharding.chunk_shape)
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.fill_value = array.fill_value
        self.chunks_per_shard = self.shard_shape[0] // self.chunk_shape[0]
        self._zstd = numcodecs.Zstd()

    @classmethod
    def for_array(cls, array: Any) -> ShardReader | None:
        """A reader for ``array``, or None when its layout is not the one this reads.

        Supported: Zarr v3, one ``sharding_indexed`` codec whose inner codecs are ``bytes``
        (little-endian) then ``zstd``, whose index codecs are ``bytes`` then ``crc32c`` with
        the index at the end, and whose inner chunks differ from the shard only along the
        first axis (``las build``: one sample per chunk, ``samples_per_shard`` per shard).
        """
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec

        metadata = getattr(array, "metadata", None)
        if getattr(metadata, "zarr_format", None) != 3 or array.shards is None:
            return None
        codecs = tuple(metadata.codecs)
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return None
        sharding = codecs[0]
        inner = tuple(sharding.codecs)
        index = tuple(sharding.index_codecs)
        little = ("little", None)

        def endian(codec: Any) -> Any:
            value = getattr(codec, "endian", None)
            return getattr(value, "value", value)

        if (
            len(inner) != 2
            or not isinstance(inner[0], BytesCodec)
            or endian(inner[0]) not in little
            or not isinstance(inner[1], ZstdCodec)
            or len(index) != 2
            or not isinstance(index[0], BytesCodec)
            or endian(index[0]) not in little
            or not isinstance(index[1], Crc32cCodec)
            or getattr(sharding.index_location, "value", sharding.index_location) != "end"
        ):
            return None
        shards, chunks = tuple(array.shards), tuple(sharding.chunk_shape)
        if chunks[1:] != shards[1:] or shards[0] % chunks[0]:
            return None
        return cls(array)

    def key(self, shard: int) -> str:
        """The store key of shard number ``shard`` (along the first axis)."""
        coords = (shard,) + (0,) * (len(self.shape) - 1)
        return str(self.array.metadata.encode_chunk_key(coords))

    def rows(self, shard: int) -> tuple[int, int]:
        """The first and one-past-last row of the array that shard ``shard`` holds."""
        start = shard * self.shard_shape[0]
        if shard < 0 or start >= self.shape[0]:
            raise IndexError(f"shard {shard} is outside {self.array.path} ({self.shape[0]} rows)")
        return start, min(start + self.shard_shape[0], self.shape[0])

    def _chunk_table(self, blob: bytes | memoryview, key: str) -> np.ndarray:
        """The shard's ``(offset, nbytes)`` per inner chunk, checked against its CRC32C."""
        import google_crc32c

        n = self.chunks_per_shard
        size = 16 * n + 4
        if len(blob) < size:
            raise ShardCorruptError(
                f"{self.array.path}: shard {key} is {len(blob)} bytes, shorter than its "
                f"{size}-byte index: the store is damaged; rebuild that shard (las build)"
            )
        raw = memoryview(blob)[len(blob) - size :]
        stored = bytes(raw[-4:])
        computed = np.uint32(google_crc32c.value(bytes(raw[:-4]))).tobytes()
        if stored != computed:
            raise ShardCorruptError(
                f"{self.array.path}: shard {key} fails its index checksum: the store is "
                "damaged; rebuild that shard (las build)"
            )
        return np.frombuffer(raw[:-4], dtype="<u8").reshape(n, 2)

    def decode_jobs(
        self, shard: int, blob: bytes | None
    ) -> tuple[np.ndarray, list[tuple[memoryview, np.ndarray, str]]]:
        """The shard's output array (fill value where nothing was written) and its chunks.

        Returns:
            ``(out, jobs)``: ``out`` has the shard's rows; each job is ``(compressed bytes,
            the slot of out it decodes into, a name for errors)``.

        """
        start, stop = self.rows(shard)
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        key = self.key(shard)
        if blob is None:  # no shard object: nothing of it was ever written
            out.fill(self.fill_value)
            return out, []
        table = self._chunk_table(blob, key)
        view = memoryview(blob)
        jobs = []
        rows_per_chunk = self.chunk_shape[0]
        for k, (offset, nbytes) in enumerate(table):
            first = k * rows_per_chunk
            if first >= stop - start:
                break
            slot = out[first : first + rows_per_chunk]
            if offset == _EMPTY and nbytes == _EMPTY:
                slot.fill(self.fill_value)
                continue
            end = int(offset) + int(nbytes)
            if end > len(blob) - (16 * self.chunks_per_shard + 4):
                raise ShardCorruptError(
                    f"{self.array.path}: shard {key}, chunk {k} points past the data: the "
                    "store is damaged; rebuild that shard (las build)"
                )
            jobs.append((view[int(offset) : end], slot, f"{self.array.path}: shard {key}"))
        return out, jobs

    def decode(self, compressed: memoryview, slot: np.ndarray, where: str) -> None:
        """Decompress one inner chunk into ``slot`` (a full-chunk slice of the output)."""
        target = slot if len(slot) == self.chunk_shape[0] else None
        try:
            if target is not None and slot.flags.c_contiguous:
                self._zstd.decode(compressed, out=slot.reshape(-1).view(np.uint8))
            else:  # the array's last chunk may be cut short by the array's end
                whole = np.frombuffer(self._zstd.decode(compressed), dtype=self.dtype)
                slot[...] = whole.reshape(self.chunk_shape)[: len(slot)]
        except (RuntimeError, ValueError) as err:
            raise ShardCorruptError(
                f"{where}: a chunk does not decompress ({err}): the store is damaged; "
                "rebuild that shard (las build)"
            ) from err


def read_shards(requests: Sequence[tuple[ShardReader, int]]) -> list[np.ndarray]:
    """Read whole shards of several arrays at once: one fetch round, one parallel decode.

    Args:
        requests: ``(reader, shard number)`` pairs.

    Returns:
        One array per request (the shard's rows, in the array's dtype), in request order.

    Raises:
        ShardCorruptError: A shard's index or a chunk did not decode; names array and shard.

    """
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    prototype = default_buffer_prototype()

    async def fetch() -> list[Any]:
        return list(
            await asyncio.gather(
                *(
                    r.array.store.get(f"{_prefix(r.array)}{r.key(s)}", prototype)
                    for r, s in requests
                )
            )
        )

    blobs = sync(fetch()) if requests else []
    outs: list[np.ndarray] = []
    jobs: list[tuple[ShardReader, tuple[memoryview, np.ndarray, str]]] = []
    for (reader, shard), blob in zip(requests, blobs, strict=True):
        raw = None if blob is None else blob.as_numpy_array().view(np.uint8).data
        out, chunk_jobs = reader.decode_jobs(shard, raw)
        outs.append(out)
        jobs.extend((reader, job) for job in chunk_jobs)
    if len(jobs) <= 1:
        for reader, job in jobs:
            reader.decode(*job)
    else:
        # .result() re-raises the first failure, naming its shard
        for future in [_pool().submit(reader.decode, *job) for reader, job in jobs]:
            future.result()
    return [out.astype(out.dtype.newbyteorder("="), copy=False) for out in outs]


def _prefix(array: Any) -> str:
    """The array's path inside its store, as a key prefix (``""`` at the root)."""
    path = str(array.path).strip("/")
    return f"{path}/" if path else ""


def read_shards_later(requests: Sequence[tuple[ShardReader, int]]) -> Future[list[np.ndarray]]:
    """Run :func:`read_shards` on a background thread; return its future.

    ``result()`` re-raises its errors. Such reads run one after another, each decoding on the
    decode pool.
    """
    return _pool("ahead").submit(read_shards, list(requests))
