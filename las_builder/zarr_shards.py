"""Whole shards of the Zarr v3 arrays ``las build`` writes, read and written directly.

A LAS store holds one layout only (``docs/shard-format.md``): every array is sharded along
its first axis, one inner chunk per sample, inner codecs ``bytes`` (little-endian) then
``blosc`` (LZ4, bit-shuffled; the default) or ``zstd``, the shard index (``(offset, nbytes)``
per chunk, little-endian uint64) followed by its CRC32C at the end of the object.
zarr-python reads and writes that through its generic machinery (per inner chunk a coroutine,
a thread hand-off and buffer copies), which costs about as much again as the decompression
itself. Both the build, which writes each shard once, and the training loader, which reads
whole shards, go through this module instead:

* :func:`read_shards` fetches shard objects (a local folder's files read directly, any other
  store, e.g. fsspec's S3, through the array's own zarr store), checks each index and
  decompresses the chunks on a small thread pool (Blosc and zstd release the GIL) straight
  into one output array;
* :func:`write_shards` compresses the chunks the same way (numcodecs' Blosc or zstd, the
  library zarr's codecs call, with the array's settings) and stores each object with one
  request.
  Its bytes are those zarr writes, chunk for chunk: a chunk equal to the fill value
  everywhere is not stored, and a shard of nothing but fill is no object (tested against
  zarr's own writes).

:meth:`ShardedArray.for_array` answers only for arrays of exactly that layout; for anything
else it returns ``None`` and the caller uses zarr.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = [
    "chunk_codec",
    "ShardCorruptError",
    "ShardedArray",
    "read_rows",
    "read_shards",
    "read_shards_later",
    "write_encoded_shards",
    "write_shards",
]

_EMPTY = np.uint64(2**64 - 1)
"""Offset and length of an inner chunk that is not stored (the specification's marker)."""

CODEC_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Threads that (de)compress inner chunks (per process; re-made after a fork)."""

_pool_state: dict[str, Any] = {}
_pool_lock = threading.Lock()


def _pool(name: str = "codec") -> ThreadPoolExecutor:
    """A thread pool of this process (a forked DataLoader worker makes its own).

    ``codec``: inner chunks are (de)compressed there; ``ahead``: one thread that runs
    :func:`read_shards_later`.
    """
    with _pool_lock:
        if _pool_state.get("pid") != os.getpid():
            _pool_state.clear()
            _pool_state["pid"] = os.getpid()
        if name not in _pool_state:
            size = CODEC_THREADS if name == "codec" else 1
            _pool_state[name] = ThreadPoolExecutor(size, thread_name_prefix=f"shard-{name}")
        pool: ThreadPoolExecutor = _pool_state[name]
        return pool


def _bytes_of(args: tuple[Any, ...]) -> int:
    """The size of a call's first buffer argument (a chunk, compressed or not)."""
    for arg in args:
        if isinstance(arg, memoryview | np.ndarray | bytes):
            return int(arg.nbytes) if not isinstance(arg, bytes) else len(arg)
    return 1


def _run_all(calls: list[tuple[Any, tuple[Any, ...]]], threads: int | None = None) -> list[Any]:
    """Run ``fn(*args)`` for each call; several split over the codec pool and the caller.

    The calls are dealt into one run per codec thread, balanced by their chunks' bytes, and
    the caller works through the last run itself. One pool task per chunk woke a pool thread
    per chunk (24 per batch of a loader reading S2, S1 and labels), and those wake-ups cost
    ~4 % of the loader's CPU. Every call runs; the first failure (in call order) is raised.
    ``threads``: runs at most (the caller's included); default :data:`CODEC_THREADS`.
    """
    threads = CODEC_THREADS if threads is None else threads
    if len(calls) <= 1 or threads <= 1:
        return [fn(*args) for fn, args in calls]
    sizes = [_bytes_of(args) for _, args in calls]
    runs: list[list[int]] = [[] for _ in range(min(threads, len(calls)))]
    loads = [0] * len(runs)
    for k in sorted(range(len(calls)), key=lambda k: -sizes[k]):  # largest first, least loaded
        least = loads.index(min(loads))
        runs[least].append(k)
        loads[least] += sizes[k]
    results: list[Any] = [None] * len(calls)
    errors: dict[int, Exception] = {}

    def work(run: list[int]) -> None:
        for k in run:
            fn, args = calls[k]
            try:
                results[k] = fn(*args)
            except Exception as err:  # raised below, after every call has ended
                errors[k] = err

    futures = [_pool().submit(work, run) for run in runs[1:]]
    work(runs[0])
    for future in futures:
        future.result()
    if errors:
        raise errors[min(errors)]
    return results


def _crc_bytes(value: int) -> bytes:
    """A CRC32C as zarr's ``crc32c`` codec stores it: 4 bytes, little-endian."""
    return value.to_bytes(4, "little")


class ShardCorruptError(ValueError):
    """A shard object whose index or chunks do not decode; names the array and the object."""


def chunk_codec(codec: Any, itemsize: int) -> Any:
    """The numcodecs codec that zarr's ``codec`` (Blosc or zstd) calls, with its settings.

    Args:
        codec: A zarr v3 ``BloscCodec`` or ``ZstdCodec``.
        itemsize: Bytes per value of the array (Blosc's shuffle unit when the codec has none).

    Blosc runs without its own threads: the callers' thread pools spread the chunks over the
    cores, and Blosc's global pool would not survive the build's forked workers.
    """
    import numcodecs
    from numcodecs import blosc
    from zarr.codecs import BloscCodec

    if isinstance(codec, BloscCodec):
        blosc.use_threads = False
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle.value]
        return numcodecs.Blosc(
            cname=codec.cname.value,
            clevel=int(codec.clevel),
            shuffle=shuffle,
            blocksize=int(codec.blocksize),
            typesize=int(codec.typesize or itemsize),
        )
    return numcodecs.Zstd(level=int(codec.level), checksum=bool(codec.checksum))


class ShardedArray:
    """Whole-shard access to one sharded Zarr v3 array of the layout ``las build`` writes.

    Args:
        array: An open ``zarr.Array`` with that layout (see :meth:`for_array`).

    """

    def __init__(self, array: Any) -> None:
        from zarr.codecs import BloscCodec

        sharding = array.metadata.codecs[0]
        self.array = array
        self.path = str(array.path).strip("/")
        self.shape: tuple[int, ...] = tuple(int(n) for n in array.shape)
        self.shard_shape: tuple[int, ...] = tuple(int(n) for n in array.shards)
        self.chunk_shape: tuple[int, ...] = tuple(int(n) for n in sharding.chunk_shape)
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.fill_value = array.fill_value
        self.chunks_per_shard = self.shard_shape[0] // self.chunk_shape[0]
        self.chunk_nbytes = int(np.prod(self.chunk_shape)) * self.dtype.itemsize
        self.index_bytes = 16 * self.chunks_per_shard + 4
        config = getattr(array.async_array, "config", None)
        self.write_empty_chunks = bool(getattr(config, "write_empty_chunks", False))
        self._codec = chunk_codec(sharding.codecs[1], self.dtype.itemsize)
        self._blosc = isinstance(sharding.codecs[1], BloscCodec)
        # A crc32c after the compressor (stores since the chunk checksum): a flipped bit in a
        # compressed chunk would otherwise decode, silently, into wrong values.
        self.checksum = len(sharding.codecs) == 3
        # shard -> its chunk table (None: no object), kept for row reads (16 bytes per chunk)
        self._tables: dict[int, np.ndarray | None] = {}

    @classmethod
    def for_array(cls, array: Any) -> ShardedArray | None:
        """The whole-shard view of ``array``, or None when its layout is not the one here.

        Supported: Zarr v3, one ``sharding_indexed`` codec whose inner codecs are ``bytes``
        (little-endian), then ``blosc`` or ``zstd``, then ``crc32c`` or nothing (stores built
        before the chunk checksum), whose index codecs are ``bytes`` then
        ``crc32c`` with the index at the end, and whose inner chunks differ from the shard
        only along the first axis (``las build``: one sample per chunk, ``samples_per_shard``
        per shard).
        """
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec

        metadata = getattr(array, "metadata", None)
        if getattr(metadata, "zarr_format", None) != 3 or array.shards is None:
            return None
        assert metadata is not None  # it has a zarr_format
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
            len(inner) not in (2, 3)
            or (len(inner) == 3 and not isinstance(inner[2], Crc32cCodec))
            or not isinstance(inner[0], BytesCodec)
            or endian(inner[0]) not in little
            or not isinstance(inner[1], BloscCodec | ZstdCodec)
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
        name = str(self.array.metadata.encode_chunk_key(coords))
        return f"{self.path}/{name}" if self.path else name

    def rows(self, shard: int) -> tuple[int, int]:
        """The first and one-past-last row of the array that shard ``shard`` holds."""
        start = shard * self.shard_shape[0]
        if shard < 0 or start >= self.shape[0]:
            raise IndexError(f"shard {shard} is outside {self.path} ({self.shape[0]} rows)")
        return start, min(start + self.shard_shape[0], self.shape[0])

    # --- reading ---------------------------------------------------------------------------

    def _where(self, shard: int) -> str:
        return f"{self.path}: shard {self.key(shard).removeprefix(self.path + '/')}"

    def _chunk_table(self, blob: memoryview, shard: int) -> np.ndarray:
        """The shard's ``(offset, nbytes)`` per inner chunk, checked against its CRC32C."""
        raw = blob[max(len(blob) - self.index_bytes, 0) :]
        return self._index_table(raw, len(blob), shard, len(blob) - self.index_bytes)

    def _index_table(
        self, raw: memoryview | bytes, size: int, shard: int, data_end: int | None = None
    ) -> np.ndarray:
        """The chunk table from a shard's index bytes (``size``: the whole object's bytes).

        Every entry is checked to be either "not stored" or a range inside the object's data
        (``data_end``: its length; ``None``, unknown, still refuses ranges past 2**63): a
        table of a valid CRC may still be wrong (written by another tool), and its uint64
        sums would wrap, its offsets overflow the reads.
        """
        import google_crc32c

        if size < self.index_bytes or len(raw) != self.index_bytes:
            raise ShardCorruptError(
                f"{self._where(shard)} is {size} bytes, shorter than its {self.index_bytes}-byte "
                "index: the store is damaged; rebuild that shard (las build)"
            )
        computed = _crc_bytes(google_crc32c.value(bytes(raw[:-4])))
        if bytes(raw[-4:]) != computed:
            raise ShardCorruptError(
                f"{self._where(shard)} fails its index checksum: the store is damaged; "
                "rebuild that shard (las build)"
            )
        table = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.chunks_per_shard, 2)
        offsets, lengths = table[:, 0], table[:, 1]
        empty = (offsets == _EMPTY) & (lengths == _EMPTY)
        limit = np.uint64(2**63 - 1 if data_end is None else max(data_end, 0))
        # compared without a sum: offset + nbytes may wrap around 2**64
        bad = ~empty & ((offsets > limit) | (lengths > limit - np.minimum(offsets, limit)))
        if bad.any():
            raise ShardCorruptError(
                f"{self._where(shard)}, chunk {int(np.argmax(bad))} points past the data: the "
                "store is damaged; rebuild that shard (las build)"
            )
        return table

    def decode_jobs(
        self, shard: int, blob: memoryview | None
    ) -> tuple[np.ndarray, list[tuple[memoryview, np.ndarray, str]]]:
        """The shard's output array (fill value where nothing is stored) and its chunks.

        Returns:
            ``(out, jobs)``: ``out`` has the shard's rows; each job is ``(compressed bytes,
            the slot of out it decodes into, a name for errors)``.

        """
        start, stop = self.rows(shard)
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        if blob is None:  # no shard object: nothing of it was ever stored
            out.fill(self.fill_value)
            return out, []
        table = self._chunk_table(blob, shard)  # every range inside the data
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
            jobs.append((blob[int(offset) : end], slot, f"{self._where(shard)}, chunk {k}"))
        return out, jobs

    def decode(self, compressed: memoryview, slot: np.ndarray, where: str) -> None:
        """Decompress one inner chunk into ``slot`` (a full-chunk slice of the output)."""
        if self.checksum:
            compressed = self._checked(compressed, where)
        expected = self.chunk_nbytes
        # Into ``slot`` only where the header promises exactly its size: Blosc and zstd fill
        # a larger buffer only in part, and leave the rest as it was (np.empty's garbage).
        direct = (
            len(slot) == self.chunk_shape[0]
            and slot.flags.c_contiguous
            and self._decoded_size(compressed) == expected
        )
        try:
            if direct:
                self._codec.decode(compressed, out=slot.reshape(-1).view(np.uint8))
                return
            decoded = np.frombuffer(self._codec.decode(compressed), dtype=np.uint8)
        except (RuntimeError, ValueError) as err:
            raise ShardCorruptError(
                f"{where}: a chunk does not decompress ({err}): the store is damaged; "
                "rebuild that shard (las build)"
            ) from err
        if decoded.nbytes != expected:  # zarr refuses such a chunk too
            raise ShardCorruptError(
                f"{where}: the chunk decompresses to {decoded.nbytes} bytes, but the array's "
                f"zarr.json gives chunks of {self.chunk_shape} {self.dtype.name} ({expected} "
                "bytes): zarr.json does not describe the data (edited, or of another build); "
                "rebuild the dataset (las build) or copy it again"
            )
        # the array's last chunk may be cut short by the array's end
        slot[...] = decoded.view(self.dtype).reshape(self.chunk_shape)[: len(slot)]

    def _decoded_size(self, compressed: memoryview) -> int | None:
        """The bytes a chunk decompresses to, as its compressor's header states them.

        Blosc: bytes 4-8 of its 16-byte header. Zstd: the frame's content size (RFC 8878,
        3.1.1.1), when the frame gives one. ``None``: not stated, or no header at all.
        """
        head = bytes(compressed[:18])
        if self._blosc:
            return int.from_bytes(head[4:8], "little") if len(head) >= 16 else None
        if len(head) < 5 or head[:4] != b"\x28\xb5\x2f\xfd":  # zstd's magic number
            return None
        descriptor = head[4]
        single = (descriptor >> 5) & 1
        width = (single, 2, 4, 8)[descriptor >> 6]  # bytes of the content size field
        at = 5 + (1 - single) + (0, 1, 2, 4)[descriptor & 3]  # after window and dictionary
        if not width or len(head) < at + width:
            return None
        value = int.from_bytes(head[at : at + width], "little")
        return value + 256 if width == 2 else value

    def _checked(self, stored: memoryview, where: str) -> memoryview:
        """A chunk's compressed bytes, its trailing CRC32C (zarr's ``crc32c`` codec) checked."""
        import google_crc32c

        body = stored[:-4]
        # google_crc32c reads numpy arrays but not memoryviews: a view, not a copy
        crc = google_crc32c.value(np.frombuffer(body, dtype=np.uint8))
        if len(stored) < 4 or bytes(stored[-4:]) != _crc_bytes(crc):
            raise ShardCorruptError(
                f"{where}: the chunk fails its checksum: the store is damaged; rebuild that shard "
                "(las build) or copy it again"
            )
        return body

    # --- writing ---------------------------------------------------------------------------

    def _is_fill(self, chunk: np.ndarray) -> bool:
        """Whether a chunk equals the fill value everywhere, as zarr decides it.

        Such a chunk is not stored. NaN equals a NaN fill; a float fill of 0 compares bit
        patterns (a chunk of -0.0 is stored).
        """
        fill = self.fill_value
        if chunk.dtype.kind == "f":
            if np.isnan(fill):
                return bool(np.isnan(chunk).all())
            if fill == 0:
                return not chunk.view(f"u{chunk.dtype.itemsize}").any()
        return bool((chunk == fill).all())

    def encode_chunk(self, chunk: np.ndarray) -> bytes | None:
        """One inner chunk compressed, or None when it is not stored (all fill value)."""
        if not self.write_empty_chunks and self._is_fill(chunk):
            return None
        encoded = bytes(self._codec.encode(np.ascontiguousarray(chunk, dtype=self.dtype)))
        if self.checksum:
            import google_crc32c

            return encoded + _crc_bytes(google_crc32c.value(encoded))
        return encoded

    def chunks_of(self, data: np.ndarray) -> list[np.ndarray]:
        """The inner chunks of one shard's rows, padded with fill past the array's end."""
        per = self.chunk_shape[0]
        chunks = []
        for k in range(-(-data.shape[0] // per)):
            chunk = data[k * per : (k + 1) * per]
            if len(chunk) < per:  # the array's last chunk: zarr pads it with fill
                padded = np.full(self.chunk_shape, self.fill_value, dtype=self.dtype)
                padded[: len(chunk)] = chunk
                chunk = padded
            chunks.append(chunk)
        return chunks

    def assemble(self, encoded: Sequence[bytes | None]) -> bytes | None:
        """The shard object from its encoded chunks (None: nothing stored, no object)."""
        import google_crc32c

        if all(part is None for part in encoded):
            return None
        index = np.full((self.chunks_per_shard, 2), _EMPTY, dtype="<u8")
        offset = 0
        for k, part in enumerate(encoded):
            if part is not None:
                index[k] = (offset, len(part))
                offset += len(part)
        raw = index.tobytes()
        crc = _crc_bytes(google_crc32c.value(raw))
        # One join: each `+` of a shard-sized object would copy it into fresh pages again.
        return b"".join([*(part for part in encoded if part is not None), raw, crc])


def _local_root(store: Any) -> str | None:
    """The folder of a zarr ``LocalStore`` (``None`` for any other store)."""
    from zarr.storage import LocalStore

    return str(store.root) if isinstance(store, LocalStore) else None


def _read_file(path: str) -> memoryview | None:
    """A local shard object's bytes, read straight into one buffer (``None``: no object).

    The same bytes as the store's ``get``, without its trip through zarr's event loop and a
    worker thread and the copies on the way, which cost the loader about a third of its
    CPU per shard more than reading the file here (measured on the loader benchmark's store).
    """
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            buf = np.empty(size, dtype=np.uint8)
            view = memoryview(buf)  # type: ignore[arg-type]  # numpy types __buffer__ from 3.12
            got = 0
            while got < size:  # readinto may return less than asked
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
    except FileNotFoundError:
        return None
    return view[:got]


def read_shards(
    requests: Sequence[tuple[ShardedArray, int]], threads: int | None = None
) -> list[np.ndarray]:
    """Read whole shards of several arrays at once: one fetch round, one parallel decode.

    Args:
        requests: ``(array, shard number)`` pairs.
        threads: Threads that decompress the chunks, the caller's own included (``1``: the
            caller alone); default :data:`CODEC_THREADS`.

    Returns:
        One array per request (the shard's rows, in the array's dtype), in request order.

    Raises:
        ShardCorruptError: A shard's index or a chunk did not decode; names array and shard.

    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    prototype = default_buffer_prototype()
    blobs: list[memoryview | None] = [None] * len(requests)
    remote = []
    for k, (sharded, shard) in enumerate(requests):
        root = _local_root(sharded.array.store)
        if root is None:
            remote.append(k)
        else:
            blobs[k] = _read_file(os.path.join(root, sharded.key(shard)))

    async def fetch() -> list[Any]:
        gets = (
            requests[k][0].array.store.get(requests[k][0].key(requests[k][1]), prototype)
            for k in remote
        )
        return list(await asyncio.gather(*gets))

    for k, blob in zip(remote, sync(fetch()) if remote else [], strict=True):
        blobs[k] = None if blob is None else blob.as_numpy_array().view(np.uint8).data
    outs: list[np.ndarray] = []
    jobs: list[tuple[Any, tuple[Any, ...]]] = []
    for (sharded, shard), raw in zip(requests, blobs, strict=True):
        out, chunk_jobs = sharded.decode_jobs(shard, raw)
        outs.append(out)
        jobs.extend((sharded.decode, job) for job in chunk_jobs)
    _run_all(jobs, threads)
    return [out.astype(out.dtype.newbyteorder("="), copy=False) for out in outs]


def read_rows(
    requests: Sequence[tuple[ShardedArray, Sequence[int]]], threads: int | None = None
) -> list[np.ndarray]:
    """Read single rows (samples) of several arrays: each row's chunk, not its whole shard.

    For random access (batches drawn at random), where :func:`read_shards` would decode a whole
    shard per sample. A shard's index is read once and kept by its :class:`ShardedArray` (16
    bytes per chunk); each row then costs one ranged read of its chunk (a local store's files
    are read directly, other stores through zarr's ``get`` with a byte range) and its
    decompression, on the codec pool.

    Args:
        requests: ``(array, rows)`` pairs; rows in any order, repeats allowed.
        threads: As in :func:`read_shards`.

    Returns:
        One array per request, ``(len(rows), *array.shape[1:])``, rows in the given order.

    Raises:
        IndexError: A row outside its array.
        ShardCorruptError: A shard's index or a chunk did not decode; names array and shard.

    """
    outs = []
    for sharded, rows in requests:
        for row in rows:
            if not 0 <= row < sharded.shape[0]:
                raise IndexError(f"row {row} is outside {sharded.path} ({sharded.shape[0]} rows)")
        outs.append(np.empty((len(rows), *sharded.shape[1:]), dtype=sharded.dtype))
    _fetch_tables(
        {(a, int(r) // a.shard_shape[0]) for a, rows in requests for r in rows}
        - {(a, shard) for a, _ in requests for shard in a._tables}
    )
    # chunk -> (slot of the output, row within the chunk) for each row that needs it
    wanted: dict[tuple[ShardedArray, int, int], list[tuple[np.ndarray, int]]] = {}
    for (sharded, rows), out in zip(requests, outs, strict=True):
        per = sharded.chunk_shape[0]
        for k, row in enumerate(rows):
            shard, within = divmod(int(row), sharded.shard_shape[0])
            table = sharded._tables[shard]
            chunk = within // per
            if table is None or tuple(table[chunk]) == (_EMPTY, _EMPTY):
                out[k] = sharded.fill_value
            else:
                wanted.setdefault((sharded, shard, chunk), []).append((out[k], within % per))
    keys = list(wanted)
    blobs = _fetch_chunks(keys)
    jobs = [(_decode_rows, (key, blob, wanted[key])) for key, blob in zip(keys, blobs, strict=True)]
    _run_all(jobs, threads)
    return [out.astype(out.dtype.newbyteorder("="), copy=False) for out in outs]


def _decode_rows(
    key: tuple[ShardedArray, int, int], blob: memoryview, slots: list[tuple[np.ndarray, int]]
) -> None:
    """Decompress one chunk and copy the rows asked for into their slots."""
    sharded, shard, chunk = key
    per = sharded.chunk_shape[0]
    rows_in_chunk = min(per, sharded.shape[0] - (shard * sharded.shard_shape[0] + chunk * per))
    if rows_in_chunk == 1 and len(slots) == 1:  # las build's layout: straight into the output
        sharded.decode(blob, slots[0][0][None], f"{sharded._where(shard)}, chunk {chunk}")
        return
    whole = np.empty((rows_in_chunk, *sharded.shape[1:]), dtype=sharded.dtype)
    sharded.decode(blob, whole, f"{sharded._where(shard)}, chunk {chunk}")
    for slot, row in slots:
        slot[...] = whole[row]


def _fetch_tables(needed: set[tuple[ShardedArray, int]]) -> None:
    """Read and keep the chunk tables of ``needed`` shards (None where there is no object)."""
    from zarr.abc.store import SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    remote = []
    for sharded, shard in needed:
        root = _local_root(sharded.array.store)
        if root is None:
            remote.append((sharded, shard))
            continue
        path = os.path.join(root, sharded.key(shard))
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                raw = os.pread(f.fileno(), sharded.index_bytes, max(size - sharded.index_bytes, 0))
        except FileNotFoundError:
            sharded._tables[shard] = None
            continue
        sharded._tables[shard] = sharded._index_table(raw, size, shard, size - sharded.index_bytes)
    if not remote:
        return
    prototype = default_buffer_prototype()
    suffix = SuffixByteRequest

    async def fetch() -> list[Any]:
        gets = (
            a.array.store.get(a.key(shard), prototype, byte_range=suffix(a.index_bytes))
            for a, shard in remote
        )
        return list(await asyncio.gather(*gets))

    for (sharded, shard), blob in zip(remote, sync(fetch()), strict=True):
        if blob is None:
            sharded._tables[shard] = None
            continue
        raw = blob.as_numpy_array().view(np.uint8).data
        sharded._tables[shard] = sharded._index_table(raw, len(raw), shard)


def _fetch_chunks(keys: list[tuple[ShardedArray, int, int]]) -> list[memoryview]:
    """The compressed bytes of each chunk (its shard's table must be known)."""
    from zarr.abc.store import RangeByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    blobs: list[Any] = [None] * len(keys)
    remote = []
    by_file: dict[str, list[int]] = {}
    for i, (sharded, shard, _) in enumerate(keys):
        root = _local_root(sharded.array.store)
        if root is None:
            remote.append(i)
        else:
            by_file.setdefault(os.path.join(root, sharded.key(shard)), []).append(i)
    for path, members in by_file.items():
        fd = os.open(path, os.O_RDONLY)
        try:
            for i in members:
                sharded, shard, chunk = keys[i]
                offset, nbytes = (int(v) for v in sharded._tables[shard][chunk])  # type: ignore[index]
                blobs[i] = memoryview(os.pread(fd, nbytes, offset))
        finally:
            os.close(fd)
    if remote:
        prototype = default_buffer_prototype()

        def request(i: int) -> Any:
            sharded, shard, chunk = keys[i]
            offset, nbytes = (int(v) for v in sharded._tables[shard][chunk])  # type: ignore[index]
            return sharded.array.store.get(
                sharded.key(shard), prototype, byte_range=RangeByteRequest(offset, offset + nbytes)
            )

        async def fetch() -> list[Any]:
            return list(await asyncio.gather(*(request(i) for i in remote)))

        for i, blob in zip(remote, sync(fetch()), strict=True):
            sharded, shard, _ = keys[i]
            if blob is None:
                raise ShardCorruptError(
                    f"{sharded._where(shard)} disappeared while it was read: the store changed "
                    "under the reader; open the dataset again"
                )
            blobs[i] = blob.as_numpy_array().view(np.uint8).data
    return blobs


def read_shards_later(
    requests: Sequence[tuple[ShardedArray, int]], threads: int | None = None
) -> Future[list[np.ndarray]]:
    """Run :func:`read_shards` on a background thread; return its future.

    ``result()`` re-raises its errors. Such reads run one after another, each decoding on the
    codec pool.
    """
    return _pool("ahead").submit(read_shards, list(requests), threads)


def write_shards(requests: Sequence[tuple[ShardedArray, int, np.ndarray]]) -> None:
    """Write whole shards of several arrays, one request per shard object.

    Every chunk is compressed on the codec pool; a shard of nothing but fill value is no
    object (one left from before is deleted), as zarr does it.

    Args:
        requests: ``(array, shard number, the shard's rows)``; the rows must be all of the
            shard's rows inside the array (:meth:`ShardedArray.rows`).

    Raises:
        ValueError: The rows do not match the shard's extent (names array and shard).

    """
    calls: list[tuple[Any, tuple[Any, ...]]] = []
    counts = []
    for sharded, shard, data in requests:
        start, stop = sharded.rows(shard)
        if data.shape != (stop - start, *sharded.shape[1:]):
            raise ValueError(
                f"{sharded._where(shard)}: rows of shape {data.shape} given, the shard holds "
                f"{(stop - start, *sharded.shape[1:])}"
            )
        chunks = sharded.chunks_of(data)
        counts.append(len(chunks))
        calls.extend((sharded.encode_chunk, (chunk,)) for chunk in chunks)
    encoded = _run_all(calls)
    parts: list[tuple[ShardedArray, int, list[bytes | None]]] = []
    at = 0
    for (sharded, shard, _), n in zip(requests, counts, strict=True):
        parts.append((sharded, shard, encoded[at : at + n]))
        at += n
    del encoded
    write_encoded_shards(parts)


def write_encoded_shards(requests: list[tuple[ShardedArray, int, list[bytes | None]]]) -> None:
    """Write whole shards from their compressed chunks (:meth:`ShardedArray.encode_chunk`).

    ``requests`` is emptied as it goes: each shard's chunks are dropped once its object is
    assembled, so a shard's data is never held twice over (an aerial-image shard is ~13 MB
    compressed at 64 px, 50 MB at 128 px).

    Args:
        requests: ``(array, shard number, the shard's chunks in order)``; missing trailing
            chunks count as not stored.
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    prototype = default_buffer_prototype()
    ops: list[tuple[Any, str, Any]] = []
    while requests:
        sharded, shard, chunks = requests.pop(0)
        chunks = chunks + [None] * (sharded.chunks_per_shard - len(chunks))
        blob = sharded.assemble(chunks)
        del chunks
        buffer = None if blob is None else prototype.buffer.from_bytes(blob)
        ops.append((sharded.array.store, sharded.key(shard), buffer))

    async def store_all() -> None:
        await asyncio.gather(
            *(store.delete(key) if buf is None else store.set(key, buf) for store, key, buf in ops)
        )

    if ops:
        sync(store_all())
