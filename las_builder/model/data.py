"""A PyTorch ``Dataset`` over a built LAS store (``las.zarr`` + ``index.parquet``).

One item is one usable sample (``status == "ok"`` in the index), read by random access from the
Zarr v3 shards. The store is opened lazily, once per process, so a multi-worker ``DataLoader``
is safe (each worker opens its own handle; the dataset pickles without one). Local folders and
fsspec URLs (``s3://bucket/las``, ``file:///...``) are read the same way. A ``DataLoader``
batch is read by :meth:`LASDataset.__getitems__` in one round trip to zarr's event loop;
:class:`ShardBatchSampler` draws batches shard by shard for the fewest zarr calls.

The fastest way through a store (about 1.6x the samples/s of random batches in
``benchmarks/loader_bench.py``, round 11) reads whole shards, keeps a few decoded
(``shard_cache``) and lets the dataset build each batch itself (``ds[positions]`` is
:meth:`LASDataset.batch`, the collated batch without a per-sample collate)::

    ds = LASDataset("out/demo/las", modalities=["sentinel-2"], shard_cache=2)
    loader = DataLoader(ds, sampler=ShardBatchSampler(ds, batch_size=8, prefetch=True),
                        batch_size=None)

Whole shards of the layout ``las build`` writes are read by
:class:`~las_builder.zarr_shards.ShardedArray` (one request per shard, its chunks
decompressed in parallel); other layouts by zarr.

Per sample the dataset returns the chosen modalities, each normalised and with its bands'
wavelengths (micrometres) and polarisation codes, and one label map per chosen label product
coded as indices into that product's own class-name list, ``255`` where the pixel is nodata or
ignore. Label products are named ``<product>`` (LAS classes: the taxonomy's keys),
``<product>:native`` (the product's own legend names) or ``consensus`` (LAS classes).

Normalisation:
    * Sentinel-2: reflectance = DN / 10000 (nodata 0 stays 0).
    * Sentinel-1: linear gamma0 -> dB (``10 log10``), then ``(dB + 15) / 10`` clipped to
      [-3, 3]; NaN -> 0. Stores already in dB skip the log.
    * NAIP: DN / 255.

Example:
    >>> from las_builder.model.data import LASDataset
    >>> ds = LASDataset("out/demo/las", modalities=["sentinel-2"], products=["esa-worldcover"])
    >>> item = ds[0]
    >>> item["images"]["sentinel-2"].shape, ds.class_names["esa-worldcover"][:2]
    (torch.Size([12, 128, 128]), ['water', 'trees'])

"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import operator
import os
import secrets
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsIndex, TypedDict, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler, get_worker_info

from las_builder.model.bands import POL_NONE, POLARISATIONS, sar_pseudo_wavelength_um
from las_builder.zarr_shards import ShardedArray, read_rows, read_shards, read_shards_later

__all__ = [
    "IGNORE_INDEX",
    "MODALITIES",
    "LASDataset",
    "ProductSpec",
    "ShardBatchSampler",
    "augment_batch",
    "compose_input",
    "normalise",
    "open_store",
    "read_index",
    "split_of",
    "val_ids",
]

IGNORE_INDEX = 255
"""Label index that never enters a loss or a metric (nodata and ignore pixels)."""

MODALITIES = ("sentinel-2", "sentinel-1", "naip")
"""Imagery arrays of a LAS store."""

ZARR_READ_CONFIG: dict[str, Any] = {"codec_pipeline.batch_size": 64}
"""zarr settings :class:`LASDataset` reads with by default.

``codec_pipeline.batch_size``: a read's chunks go through zarr's codec pipeline in groups of
this size (zarr's default is 1, one group per chunk); 64 takes a whole shard of ``las build``
(8 to 64 samples) as one group: 5 to 9 % more samples/s in ``benchmarks/loader_bench.py``
(zarr 3.1; ``async.concurrency`` and ``threading.max_workers`` made no measurable difference).
"""

INDEX_COLUMNS = ("sample_id", "zarr_index", "status", "epsg", "transform", "shape")
"""Columns of ``index.parquet`` the dataset reads (docs/shard-format.md)."""

S1_DB_OFFSET = 15.0
S1_DB_SCALE = 10.0


def _is_url(path: str | Path) -> bool:
    return "://" in str(path)


def _join(base: str | Path, name: str) -> str | Path:
    if _is_url(base):
        return f"{str(base).rstrip('/')}/{name}"
    return Path(base) / name


def _dataset_root(path: str | Path) -> str | Path:
    """Accept the dataset folder or its ``las.zarr``; return the folder."""
    text = str(path).rstrip("/")
    if text.endswith(".zarr"):
        return text.rsplit("/", 1)[0] if _is_url(text) else Path(text).parent
    return text if _is_url(text) else Path(text)


def open_store(path: str | Path, storage_options: dict[str, Any] | None = None) -> Any:
    """Open ``<path>/las.zarr`` read-only (a local folder or an fsspec URL).

    Args:
        path: The dataset folder (holding ``las.zarr`` and ``index.parquet``) or the store.
        storage_options: fsspec options for URLs (e.g. ``{"anon": True}`` for public S3).

    Returns:
        The root ``zarr.Group``.

    """
    import zarr

    store = _join(_dataset_root(path), "las.zarr")
    if not _is_url(store) and not Path(store).is_dir():
        raise FileNotFoundError(f"{store} not found: build the dataset first (`las build`)")
    try:
        if _is_url(store):
            return zarr.open_group(str(store), mode="r", storage_options=storage_options or {})
        return zarr.open_group(str(store), mode="r")
    except (FileNotFoundError, ValueError, TypeError, KeyError) as err:
        # zarr's own messages (no zarr.json, not a group) do not say what to do
        raise ValueError(
            f"{store} is not a readable Zarr v3 group ({type(err).__name__}: {err}): "
            "the store is damaged or unfinished; build it again with `las build`"
        ) from None


def read_index(path: str | Path, storage_options: dict[str, Any] | None = None) -> Any:
    """Read ``index.parquet`` as a plain pandas ``DataFrame`` (geometry left as WKB)."""
    import pandas as pd

    index = _join(_dataset_root(path), "index.parquet")
    if not _is_url(index) and not Path(index).is_file():
        raise FileNotFoundError(f"{index} not found: build the dataset first (`las build`)")
    try:
        if _is_url(index):
            table = pd.read_parquet(
                str(index), storage_options=storage_options or {}, use_threads=False
            )
        else:
            table = pd.read_parquet(index, use_threads=False)
    except FileNotFoundError:
        # s3fs's message is the bare key: say what is missing and what to do
        raise FileNotFoundError(
            f"{index} not found: build the dataset first (`las build`)"
        ) from None
    except Exception as err:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise ValueError(
            f"{index} cannot be read as Parquet ({type(err).__name__}: {err}): the index is "
            "damaged; run `las build` again to rewrite it from its parts"
        ) from None
    missing = [c for c in INDEX_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{index} lacks the columns {missing} of a LAS index: it is not the index "
            "`las build` writes (docs/shard-format.md)"
        )
    return table


def _hash(sample_id: str, seed: int) -> float:
    return zlib.crc32(f"{seed}:{sample_id}".encode()) / 2**32


def split_of(sample_id: str, val_fraction: float, seed: int = 0) -> str:
    """Return ``"val"`` or ``"train"`` for a sample, stable across runs and machines.

    Args:
        sample_id: The sample's id.
        val_fraction: Fraction of samples held out for validation (0 keeps all in train).
        seed: Changes which samples are held out.

    """
    return "val" if _hash(sample_id, seed) < val_fraction else "train"


def val_ids(
    sample_ids: Sequence[str],
    val_fraction: float,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
    classes: Sequence[Collection[str]] | None = None,
) -> set[str]:
    """Return the held-out sample ids.

    Without ``groups`` each sample is held out by :func:`split_of`. With ``groups`` (e.g. the
    samples' EPSG codes, i.e. UTM zones / regions) the split is stratified: in every group of
    two or more samples, the ``round(val_fraction * n)`` samples (at least 1, at most
    ``n - 1``) with the lowest hash are held out, so every group keeps training samples and
    the held-out set covers every group. With ``classes`` too, a sample is passed over (the
    next by hash is held out instead) when holding it out would leave one of its classes in
    no training sample: a class only the held-out samples show can be neither learned nor
    fairly scored (the demo's only snowy sample was held out, and no model saw snow).

    Args:
        sample_ids: Candidate samples.
        val_fraction: Fraction to hold out.
        seed: Seed of the hash.
        groups: Group of each sample, or ``None``.
        classes: The classes each sample shows (any labels), or ``None``; used with groups.

    """
    if val_fraction <= 0:
        return set()
    if groups is None:
        return {s for s in sample_ids if split_of(s, val_fraction, seed) == "val"}
    shown = dict(zip(sample_ids, classes, strict=True)) if classes is not None else {}
    in_training = collections.Counter(c for cs in shown.values() for c in set(cs))
    by_group: dict[Any, list[str]] = {}
    for s, g in zip(sample_ids, groups, strict=True):
        by_group.setdefault(g, []).append(s)
    out: set[str] = set()
    for key in sorted(by_group, key=str):
        members = by_group[key]
        if len(members) < 2:
            continue
        n = min(len(members) - 1, max(1, round(val_fraction * len(members))))
        for s in sorted(members, key=lambda s: _hash(s, seed)):
            if len(out & set(members)) == n:
                break
            own = set(shown.get(s, ()))
            if any(in_training[c] <= 1 for c in own):
                continue  # its class would be in no training sample
            in_training.subtract(own)
            out.add(s)
    return out


def sample_classes(class_counts: str | None, min_fraction: float = 0.01) -> set[str]:
    """The LAS classes a sample shows, from its index ``class_counts`` (JSON).

    A class counts where the consensus gives it at least ``min_fraction`` of the sample's
    pixels (nodata 0 and ignore 255 are no classes); without a consensus, where any product
    does. Not the products trained on: training and evaluation must split alike. (Any
    product's few pixels would do too easily: MODIS's 2 % of snow beside a snowy sample
    made a second "snowy" sample, and the only one WorldCover calls snowy was held out.)
    """
    found: set[str] = set()
    if not isinstance(class_counts, str):  # a sample without labels
        return found
    by_product = json.loads(class_counts)
    chosen = [by_product["consensus"]] if "consensus" in by_product else by_product.values()
    for counts in chosen:
        total = sum(counts.values())
        found.update(
            k for k, v in counts.items() if k not in ("0", "255") and v >= min_fraction * total
        )
    return found


def normalise(
    modality: str,
    array: np.ndarray,
    attrs: dict[str, Any] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Normalise one modality's stored values to float32 network input.

    Every operation is elementwise, so a batch (samples first) normalises in one call to the
    same values as one call per sample.

    Args:
        modality: ``sentinel-2``, ``sentinel-1`` or ``naip``.
        array: Stored values, bands first (any leading axes, e.g. a batch).
        attrs: The array's attributes (Sentinel-1 ``units`` says linear or dB).
        out: Float32 array of ``array``'s shape to write into (``array`` itself is allowed
            when it is float32); ``None``: a new array.

    Returns:
        Float32 array of the same shape (``out`` when given); nodata becomes 0.

    """
    if out is None:
        out = np.empty(array.shape, dtype=np.float32)
    elif out.dtype != np.float32 or out.shape != array.shape:
        raise ValueError(f"out must be float32 of shape {array.shape}, got {out.dtype} {out.shape}")
    if modality in ("sentinel-2", "naip"):
        # the values of astype(float32) / scale; a cast then an in-place divide is ~15 % faster
        # than one ufunc casting in its buffered inner loop
        scale = np.float32(10000.0 if modality == "sentinel-2" else 255.0)
        if out is not array:
            np.copyto(out, array, casting="unsafe")
        divided: np.ndarray = np.divide(out, scale, out=out)
        return divided
    if modality == "sentinel-1":
        units = str((attrs or {}).get("units", "linear")).lower()
        x = out
        if x is not array:
            np.copyto(x, array, casting="unsafe")
        finite = np.isfinite(x)
        # most batches are all finite: no masks to apply (putmask was ~3 % of a loader's CPU)
        nonfinite = None if finite.all() else ~finite
        if "db" not in units.replace("(", " ").split():
            if nonfinite is not None:
                np.putmask(x, nonfinite, np.float32(1.0))  # log10(1) = 0, set to 0 below
            np.maximum(x, np.float32(1e-6), out=x)
            np.log10(x, out=x)
            np.multiply(x, np.float32(10.0), out=x)
        np.add(x, np.float32(S1_DB_OFFSET), out=x)
        np.divide(x, np.float32(S1_DB_SCALE), out=x)
        np.clip(x, np.float32(-3.0), np.float32(3.0), out=x)
        if nonfinite is not None:
            np.putmask(x, nonfinite, np.float32(0.0))
        return x
    raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")


def band_info(modality: str, attrs: dict[str, Any]) -> tuple[list[float], list[int]]:
    """Return ``(wavelengths_um, polarisations)`` of a stored modality from its attributes."""
    if modality == "sentinel-1":
        bands = [str(b).lower() for b in attrs.get("bands", ["vv", "vh"])]
        freqs = attrs.get("center_frequency_ghz", [5.405] * len(bands))
        return [sar_pseudo_wavelength_um(float(f)) for f in freqs], [
            POLARISATIONS.get(b, POL_NONE) for b in bands
        ]
    wl = [float(w) for w in attrs["center_wavelength_um"]]
    return wl, [POL_NONE] * len(wl)


@dataclass(frozen=True)
class ProductSpec:
    """A label product as the dataset serves it.

    Attributes:
        name: Product id (``esa-worldcover``) or ``consensus``.
        native: Serve the product's own legend instead of LAS classes.

    """

    name: str
    native: bool = False

    @classmethod
    def parse(cls, text: str) -> ProductSpec:
        """Parse ``esa-worldcover``, ``esa-worldcover:native`` or ``consensus``."""
        name, _, space = text.partition(":")
        if not name.strip():
            raise ValueError(f"label product {text!r}: no product name")
        if space not in ("", "las", "native"):
            raise ValueError(f"label product {text!r}: space must be las or native")
        if name == "consensus" and space == "native":
            raise ValueError("consensus has LAS classes only")
        return cls(name=name, native=space == "native")

    @property
    def key(self) -> str:
        """The name the dataset uses for this product (``esa-worldcover:native``)."""
        return f"{self.name}:native" if self.native else self.name

    @property
    def array(self) -> str:
        """Path of the product's array inside the store."""
        if self.name == "consensus":
            return "consensus"
        return f"labels/{self.name}/{'native' if self.native else 'las'}"


def _fingerprint(counts: dict[str, int]) -> int:
    """A 32-bit digest of a sample's class counts (``{"code": pixels}``; zeros left out)."""
    pairs = sorted((int(k), int(v)) for k, v in counts.items() if int(v))
    return zlib.crc32(repr(pairs).encode())


def _lut(values: Iterable[int], size: int, low: int = 0) -> np.ndarray:
    """Lookup table: stored code - ``low`` -> index in the class list; everything else ignore."""
    lut = np.full(size, IGNORE_INDEX, dtype=np.int64)
    for i, v in enumerate(values):
        lut[int(v) - low] = i
    return lut


_TABLE_MAX = 2**16
"""Largest table indexed by every value of a label array's dtype (uint8, uint16)."""


def _code_range(dtype: np.dtype[Any], codes: Sequence[int]) -> tuple[int, int]:
    """``(low, size)`` of the table of one label array: codes ``low .. low + size - 1``.

    Every value of an unsigned 8- or 16-bit dtype (a stored code always indexes the table);
    for wider or signed dtypes (a 32-bit legend's table of every value would take 32 GiB, a
    negative code would index from the end) the span of the legend's codes, outside which a
    stored code is unknown (:meth:`LASDataset._verify` refuses it before any look-up).
    """
    info = np.iinfo(dtype)
    if info.min == 0 and info.max < _TABLE_MAX:
        return 0, max(int(info.max) + 1, 256)
    low = min(0, *codes)
    return low, max(*codes, 255) - low + 1


class SampleRow(TypedDict):
    """A usable sample of the index, as :attr:`LASDataset.rows` keeps it.

    Attributes:
        sample_id: The sample's id.
        zarr_index: Its row in the store's arrays.
        has_naip: Whether the index names a NAIP item for it.
        epsg: EPSG code of its grid.
        transform: Coefficients ``a, b, c, d, e, f`` of its label grid's affine transform.
        shape: ``(height, width)`` of its label grid.

    """

    sample_id: str
    zarr_index: int
    has_naip: bool
    epsg: int
    transform: list[float]
    shape: list[int]


class LASDataset(Dataset[dict[str, Any]]):
    """Random access to the usable samples of a LAS store.

    Args:
        path: Dataset folder (``las.zarr`` + ``index.parquet``), local or an fsspec URL.
        modalities: Imagery to return (``sentinel-2``, ``sentinel-1``, ``naip``).
        products: Label products (see :class:`ProductSpec`); may be empty.
        split: ``"all"``, ``"train"`` or ``"val"`` (see :func:`split_of`).
        val_fraction: Fraction of samples in ``val``.
        split_seed: Seed of the split.
        split_by: Index column to stratify the split by (e.g. ``epsg``); ``None``: a plain
            per-sample hash (see :func:`val_ids`).
        sample_ids: Only these samples (in this order), after the ``ok`` filter.
        crop_px: Return a crop of this many label pixels (random if ``random_crop``, else
            centred); ``None`` returns whole samples.
        random_crop: Draw crop positions from torch's RNG (training).
        naip_factor: Resample NAIP to ``naip_factor`` pixels per label pixel (``1``: the label
            grid); ``None`` keeps the stored resolution.
        storage_options: fsspec options for URLs.
        shard_cache: Read whole shards (one read per array and shard: a
            :class:`~las_builder.zarr_shards.ShardedArray` for the layout ``las build``
            writes, zarr otherwise) and keep the
            decoded shards of the last ``shard_cache`` shards read, per process (``0``: read
            only the samples asked for). Meant for :class:`ShardBatchSampler` batches, which
            then decode every shard once per epoch; with randomly drawn samples it decodes a
            whole shard per sample. Memory: ``shard_cache`` times the decoded bytes of one
            shard of every array read (per worker), e.g. 4.3 MB for Sentinel-2 + Sentinel-1 +
            one label product at 8 samples of 128 x 128 px per shard, 52 MB more with NAIP.
        zarr_config: zarr settings in force while the dataset reads (``zarr.config.set``,
            process-wide for the duration of each read); default :data:`ZARR_READ_CONFIG`.
        decode_threads: Threads that decompress a batch's chunks read by a
            :class:`~las_builder.zarr_shards.ShardedArray`, the reading thread included. The
            default ``1`` decodes on the reading thread alone: a ``DataLoader``'s workers
            spread batches over the cores. Measured on 2 cores (loader benchmark, whole
            batches): one thread instead of two gave +13 % samples/s without workers and
            +15 % with 2 workers. More may pay off with many idle cores and no workers.

    Attributes:
        class_names: ``{product key: [class names]}``; label indices point into these lists.
        las_keys: The store's LAS class keys in code order (index ``i`` is code ``i + 1``).
        rows: The samples, each a :class:`SampleRow` (``sample_id``, ``zarr_index``, ...).
        bands: ``{modality: (wavelengths_um, polarisations)}``.
        samples_per_shard: Samples per shard of the store (per chunk if unsharded); see
            :class:`ShardBatchSampler`.

    """

    def __init__(
        self,
        path: str | Path,
        modalities: Sequence[str] = ("sentinel-2",),
        products: Sequence[str] = ("esa-worldcover",),
        split: str = "all",
        val_fraction: float = 0.0,
        split_seed: int = 0,
        split_by: str | None = None,
        sample_ids: Sequence[str] | None = None,
        crop_px: int | None = None,
        random_crop: bool = False,
        naip_factor: int | None = None,
        storage_options: dict[str, Any] | None = None,
        shard_cache: int = 0,
        zarr_config: dict[str, Any] | None = None,
        decode_threads: int = 1,
    ) -> None:
        if shard_cache < 0:
            raise ValueError(f"shard_cache must be at least 0, got {shard_cache}")
        if decode_threads < 1:
            raise ValueError(f"decode_threads must be at least 1, got {decode_threads}")
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; known: {', '.join(MODALITIES)}")
        if split not in ("all", "train", "val"):
            raise ValueError(f"split must be all, train or val, got {split!r}")
        self.path = str(path) if _is_url(path) else Path(path)
        self.modalities = list(modalities)
        self.products = [ProductSpec.parse(p) for p in products]
        self.crop_px = crop_px
        self.random_crop = random_crop
        self.naip_factor = naip_factor
        self.storage_options = storage_options
        self.shard_cache = shard_cache
        self.decode_threads = decode_threads
        self.zarr_config = dict(ZARR_READ_CONFIG if zarr_config is None else zarr_config)
        self._root: Any = None
        self._pid: int | None = None
        self._handles: dict[str, Any] | None = None
        self._readers: dict[str, ShardedArray | None] | None = None
        # (array, shard) -> (a background read of several shards, this one's place in it)
        self._pending: dict[tuple[str, int], tuple[Future[list[np.ndarray]], int]] = {}
        self._slabs: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        # per array, the store rows checked against the index in this process (_verify)
        self._verified: dict[str, np.ndarray] = {}

        index = read_index(path, storage_options)
        ok = index[index["status"] == "ok"].sort_values("zarr_index")
        if split != "all":
            if split_by and split_by not in index.columns:
                raise KeyError(
                    f"split_by {split_by!r} is not a column of {self.path}'s index.parquet; "
                    "use epsg (regions) or null (a plain hash split)"
                )
            groups = ok[split_by].tolist() if split_by else None
            counted = groups is not None and "class_counts" in ok.columns
            shown = [sample_classes(c) for c in ok["class_counts"]] if counted else None
            held = val_ids(ok["sample_id"].tolist(), val_fraction, split_seed, groups, shown)
            ok = ok[[(s in held) == (split == "val") for s in ok["sample_id"]]]
        if sample_ids is not None:
            by_id = {s: r for s, r in zip(ok["sample_id"], ok.to_dict("records"), strict=True)}
            missing = [s for s in sample_ids if s not in by_id]
            if missing:
                raise KeyError(f"samples not usable (absent or status != ok): {missing[:5]}")
            records = [by_id[s] for s in sample_ids]
        else:
            records = ok.to_dict("records")
        self.rows: list[SampleRow] = [
            {
                "sample_id": str(r["sample_id"]),
                "zarr_index": int(r["zarr_index"]),
                "has_naip": isinstance(r.get("naip_item"), str) and bool(r.get("naip_item")),
                "epsg": int(r["epsg"]),
                "transform": [float(v) for v in r["transform"]],
                "shape": [int(v) for v in r["shape"]],
            }
            for r in records
        ]
        self.status_counts = {str(k): int(v) for k, v in index["status"].value_counts().items()}

        root = self._group()
        # the label grid (consensus is in every store; a store may lack Sentinel-2)
        grid_name = next((a for a in ("consensus", "sentinel-2") if a in root), None)
        if grid_name is None:
            raise KeyError(
                f"{self.path}: las.zarr has no consensus array: not a LAS store "
                "(docs/shard-format.md)"
            )
        grid = root[grid_name]
        self.shape = tuple(int(v) for v in grid.shape[-2:])
        self.samples_per_shard = int((grid.shards or grid.chunks)[0])
        self._check_index(index, root, int(grid.shape[0]))
        self.attrs = {m: dict(root[m].attrs) for m in MODALITIES if m in root}
        for m in self.modalities:
            if m not in root:
                have = ", ".join(m for m in MODALITIES if m in root) or "none"
                raise KeyError(
                    f"modality {m!r} is not in the store {self.path} (built without it; its "
                    f"imagery: {have}): leave {m} out of the inputs"
                )
        self.bands = {m: band_info(m, self.attrs[m]) for m in self.modalities}
        self.class_names: dict[str, list[str]] = {}
        self._luts: dict[str, np.ndarray] = {}
        # per label array, the codes a valid store may hold there (checked by _verify)
        self._valid: dict[str, np.ndarray] = {}
        # per product key and label array, the code at each table's first entry (0 but for
        # signed or 32-bit native legends)
        self._lows: dict[str, int] = {}
        taxonomy = root.attrs.get("taxonomy")
        self.las_keys = [
            str(c["key"]) for c in sorted(taxonomy or [], key=lambda c: int(c["code"]))
        ]
        for spec in self.products:
            if spec.array not in root:
                labels = root["labels"] if "labels" in root else {}
                have = ", ".join(sorted(labels)) or "none"
                raise KeyError(
                    f"label product {spec.key!r}: {spec.array} is not in the store "
                    f"{self.path} (its label products: {have})"
                )
            arr = root[spec.array]
            if spec.native:
                legend = arr.attrs["classes"]
                nodata = arr.attrs.get("nodata", arr.fill_value)
                low, size = _code_range(arr.dtype, [int(c["value"]) for c in legend] + [nodata])
                valid = np.zeros(size, dtype=bool)
                # the legend lists the nodata value too (and may flag codes to ignore): such
                # pixels are IGNORE_INDEX, not a class to learn ("No Data", "Unclassified")
                classes = [
                    c
                    for c in legend
                    if int(c["value"]) != nodata and not c.get("is_nodata") and not c.get("ignore")
                ]
                self.class_names[spec.key] = [str(c["name"]) for c in classes]
                self._luts[spec.key] = _lut([c["value"] for c in classes], size, low)
                valid[[int(c["value"]) - low for c in legend] + [int(nodata) - low]] = True
            else:
                if not taxonomy:
                    raise KeyError("the store has no LAS taxonomy in its root attributes")
                ordered = sorted(taxonomy, key=lambda c: int(c["code"]))
                self.class_names[spec.key] = [str(c["key"]) for c in ordered]
                low, size = _code_range(arr.dtype, [int(c["code"]) for c in ordered])
                valid = np.zeros(size, dtype=bool)
                self._luts[spec.key] = _lut([int(c["code"]) for c in ordered], size, low)
                special = [int(arr.attrs.get(k, d)) for k, d in (("nodata", 0), ("ignore", 255))]
                valid[[int(c["code"]) - low for c in ordered] + [v - low for v in special]] = True
            self._valid[spec.array] = valid
            self._lows[spec.key] = self._lows[spec.array] = low
        self._expect = self._expectations(index, root)
        self._root = None  # reopened lazily in each worker

    # --- index and store consistency ---------------------------------------------------------

    def _check_index(self, index: Any, root: Any, n: int) -> None:
        """Refuse an index that cannot describe this store (another build's, or unfinished).

        Args:
            index: The whole ``index.parquet``.
            root: The store's root group.
            n: Samples on the store's arrays' first axis.

        Raises:
            ValueError: Rows, sample positions, shards or sample size disagree with the store.

        """
        where = f"{self.path}: index.parquet"
        fix = (
            "the index belongs to another build of the dataset, or the build is unfinished; "
            "run `las build` again (it writes index.parquet last)"
        )
        stored = root.attrs.get("n_samples")
        if stored is not None and int(stored) != len(index):
            raise ValueError(
                f"{where} has {len(index)} rows, las.zarr {int(stored)} samples: {fix}"
            )
        zi = index["zarr_index"].to_numpy()
        bad = (zi < 0) | (zi >= n)
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(
                f"{where}: sample {index['sample_id'].iloc[k]} has zarr_index {int(zi[k])}, "
                f"outside las.zarr's {n} samples: {fix}"
            )
        if len(set(zi.tolist())) != len(zi):
            raise ValueError(f"{where} names a zarr_index twice: {fix}")
        if "shard" in index.columns and self.samples_per_shard:
            off = index["shard"].to_numpy() != zi // self.samples_per_shard
            if off.any():
                k = int(np.argmax(off))
                raise ValueError(
                    f"{where}: sample {index['sample_id'].iloc[k]} is in shard "
                    f"{int(index['shard'].iloc[k])}, but las.zarr holds "
                    f"{self.samples_per_shard} samples a shard: {fix}"
                )
        for row in self.rows:
            if tuple(row["shape"]) != self.shape:
                raise ValueError(
                    f"{where}: sample {row['sample_id']} is {row['shape'][0]}x{row['shape'][1]} "
                    f"px, las.zarr's samples {self.shape[0]}x{self.shape[1]}: {fix}"
                )

    def _expectations(self, index: Any, root: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """What the index says each array read must hold, per store row.

        A shard object that is lost (a partial copy) reads as fill value, exactly as a sample
        that was never written: only the index can tell them apart. So, for each array this
        dataset reads: ``need[i]``, the ok sample ``i`` must have data there (Sentinel-2: some
        pixel observed; NAIP: an item named; a label product: a pixel of a class in its
        ``class_counts``), and for LAS-coded label arrays ``print[i]``, a fingerprint of the
        sample's class counts (``-1``: unknown), so that an index of another build, whose
        counts differ, is caught when its samples are read.
        """
        import json

        n = int(root[next(iter(self._array_names()))].shape[0])
        ok = index[index["status"] == "ok"]
        zi = ok["zarr_index"].to_numpy(dtype=np.int64)
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def need_where(values: Any) -> np.ndarray:
            need = np.zeros(n, dtype=bool)
            need[zi] = np.asarray(values, dtype=bool)
            return need

        unknown = np.full(n, -1, dtype=np.int64)
        if "sentinel-2" in self.modalities:
            seen = ok["nodata_pct"].to_numpy(dtype=float) < 100 if "nodata_pct" in ok else True
            out["sentinel-2"] = (need_where(np.broadcast_to(seen, zi.shape)), unknown)
        if "naip" in self.modalities and "naip_item" in ok:
            named = [isinstance(v, str) and bool(v) for v in ok["naip_item"]]
            out["naip"] = (need_where(named), unknown)
        if self.products and "class_counts" in ok:
            parsed = [json.loads(c) if isinstance(c, str) else {} for c in ok["class_counts"]]
            for spec in self.products:
                counts = [c.get(spec.name) for c in parsed]
                need = need_where(
                    [any(k != "0" and v for k, v in (c or {}).items()) for c in counts]
                )
                prints = unknown.copy()
                if not spec.native:
                    prints[zi] = [_fingerprint(c) if c else -1 for c in counts]
                out[spec.array] = (need, prints)
        return out

    def _array_names(self) -> list[str]:
        return [*self.modalities, *(spec.array for spec in self.products)]

    def _verify(self, name: str, zarr_index: int, whole: np.ndarray, fill: Any) -> None:
        """Check a sample's whole chunk of one array against the index, once per process.

        Raises:
            ValueError: The chunk holds nothing where the index says there is data, its
                class counts are not the index's, or a label array holds a code that neither
                a class nor nodata / ignore stands for (names the sample, the array, the shard).

        """
        done = self._verified.get(name)
        expect = self._expect.get(name)
        valid = self._valid.get(name)
        if (expect is None and valid is None) or (done is not None and done[zarr_index]):
            return
        if done is None:
            n = int(self._arrays()[name].shape[0])
            done = self._verified[name] = np.zeros(n, dtype=bool)
        problem = None
        counts = None
        damaged = (
            "the store and its index disagree (a lost shard object, or an index.parquet from "
            "another build)"
        )
        if valid is not None:
            low = self._lows.get(name, 0)
            codes = whole.ravel()
            if low or len(valid) > np.iinfo(codes.dtype).max:  # a table over the legend's span
                shifted = codes.astype(np.int64) - low
                outside = (shifted < 0) | (shifted >= len(valid))
                unknown = (np.unique(codes[outside])[:5]).tolist()
                seen = np.bincount(shifted[~outside], minlength=len(valid))
                unknown += (np.flatnonzero((seen > 0) & ~valid)[:5] + low).tolist()
            else:  # sized to the dtype: every stored code has its entry
                counts = np.bincount(codes, minlength=len(valid))
                unknown = np.flatnonzero((counts > 0) & ~valid).tolist()
            if unknown:
                # a code no class stands for would be served as IGNORE_INDEX: a lost label
                problem = (
                    f"holds codes {unknown[:5]} that its classes (the store's taxonomy, or the "
                    "product's legend) do not list"
                )
                damaged = "the labels and the class list in zarr.json disagree"
        need, prints = expect if expect is not None else (None, None)
        if problem is None and need is not None and need[zarr_index]:
            if isinstance(fill, float) and np.isnan(fill):
                stored = not np.isnan(whole).all()
            else:
                stored = bool(whole.any()) if fill == 0 else bool((whole != fill).any())
            if not stored:
                problem = "holds nothing for it (its chunk or shard object is missing)"
        if problem is None and prints is not None and prints[zarr_index] >= 0:
            if counts is None:
                counts = np.bincount(whole.ravel(), minlength=256)
            got = _fingerprint({str(k): int(v) for k, v in enumerate(counts) if v})
            if got != prints[zarr_index]:
                problem = "does not hold the class counts the index gives for it"
        if problem is not None:
            sample = next((r["sample_id"] for r in self.rows if r["zarr_index"] == zarr_index), "?")
            shard = zarr_index // self.samples_per_shard
            raise ValueError(
                f"{self.path}: sample {sample} (zarr_index {zarr_index}, shard {shard}) is ok "
                f"in index.parquet, but las.zarr's {name} {problem}: {damaged}; "
                "rebuild that shard with `las build` or copy the dataset again"
            )
        done[zarr_index] = True

    # --- store access ------------------------------------------------------------------------

    def _group(self) -> Any:
        if self._root is None or self._pid != os.getpid():
            self._root = open_store(self.path, self.storage_options)
            self._pid = os.getpid()
            self._handles = None  # a forked worker must not reuse its parent's handles
            self._readers = None
            self._slabs = OrderedDict()
            self._pending = {}
            self._verified = {}
        return self._root

    def _arrays(self) -> dict[str, Any]:
        """The arrays this dataset reads, opened once per process.

        A group lookup (``root[name]``) re-reads the array's metadata, which costs more than
        decoding a small sample, so the handles are kept.
        """
        root = self._group()
        if self._handles is None:
            self._handles = {name: root[name] for name in self._array_names()}
        return self._handles

    def _shard_readers(self) -> dict[str, ShardedArray | None]:
        """Per array, the fast whole-shard reader, or None where zarr reads it."""
        arrays = self._arrays()
        if self._readers is None:
            self._readers = {name: ShardedArray.for_array(arr) for name, arr in arrays.items()}
        return self._readers

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_root"] = None
        state["_pid"] = None
        state["_handles"] = None
        state["_readers"] = None
        state["_pending"] = {}
        state["_slabs"] = OrderedDict()
        state["_verified"] = {}
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def sample_index(self, sample_id: str) -> int:
        """Return the dataset position of a sample id."""
        for i, row in enumerate(self.rows):
            if row["sample_id"] == sample_id:
                return i
        raise KeyError(f"sample {sample_id!r} is not in this dataset")

    def _window(self) -> tuple[int, int, int, int]:
        h, w = self.shape
        if self.crop_px is None or self.crop_px >= min(h, w):
            return 0, 0, h, w
        c = self.crop_px
        if self.random_crop:
            y0 = int(torch.randint(0, h - c + 1, (1,)).item())
            x0 = int(torch.randint(0, w - c + 1, (1,)).item())
        else:
            y0, x0 = (h - c) // 2, (w - c) // 2
        return y0, x0, c, c

    def __getitem__(self, i: int | Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, Any]:
        """Return one sample, or the collated batch of a sequence of positions.

        A sequence of positions returns :meth:`batch`: so a ``DataLoader`` with
        ``batch_size=None`` and a batch sampler passed as its ``sampler`` (e.g.
        ``DataLoader(ds, sampler=ShardBatchSampler(ds, 8), batch_size=None)``) receives whole
        batches without a per-sample collate.

        Args:
            i: A dataset position, or several (a sequence, an integer array or tensor).

        Returns:
            For a position: ``sample_id``, ``zarr_index``, ``window`` (y0, x0, h, w in label
            pixels), ``images`` / ``wavelengths`` / ``polarisations`` / ``available`` keyed by
            modality, and ``labels`` keyed by product (int64, :data:`IGNORE_INDEX` where
            unusable). For positions: the same keys, collated as
            ``torch.utils.data.default_collate`` collates items.

        """
        if isinstance(i, Sequence | np.ndarray | torch.Tensor) and np.ndim(i) > 0:
            return self.batch([operator.index(j) for j in i])
        # int, numpy or 0-d tensor integer (the check above lets no sequence through)
        return self.__getitems__([operator.index(cast(SupportsIndex, i))])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Return several samples, reading the store for all of them at once.

        ``torch.utils.data.DataLoader`` calls this with a whole batch's positions. Every array
        read of the batch runs in one round trip to zarr's event loop, and the samples of one
        contiguous run of store rows are read by one call per array, so a batch of samples
        from few shards (see :class:`ShardBatchSampler`) costs few zarr calls. Items are the
        same as :meth:`__getitem__`'s, in order; random crops are drawn from torch's RNG in the
        same order as one ``__getitem__`` call per position would draw them. The items'
        tensors are views of the batch's tensors.

        Args:
            indices: Dataset positions (repeats allowed).

        Returns:
            One item per position, as :meth:`__getitem__` returns it.

        """
        if len(indices) == 0:
            return []
        rows, windows, images, available, labels = self._load(indices)
        return [
            {
                "sample_id": row["sample_id"],
                "zarr_index": row["zarr_index"],
                "window": torch.tensor(window),
                "images": {m: images[m][k] for m in self.modalities},
                "wavelengths": {
                    m: torch.tensor(self.bands[m][0], dtype=torch.float32) for m in self.modalities
                },
                "polarisations": {
                    m: torch.tensor(self.bands[m][1], dtype=torch.long) for m in self.modalities
                },
                "available": {m: bool(available[m][k]) for m in self.modalities},
                "labels": {key: value[k] for key, value in labels.items()},
            }
            for k, (row, window) in enumerate(zip(rows, windows, strict=True))
        ]

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Return the samples at ``indices`` as one batch, without per-sample items.

        The batch equals ``default_collate(self.__getitems__(indices))`` (same keys, values,
        dtypes and RNG draws) at a fraction of the cost: the tensors are made for the whole
        batch at once.

        Args:
            indices: Dataset positions (repeats allowed), at least one.

        Returns:
            ``sample_id`` (list), ``zarr_index`` (B,), ``window`` (B, 4), and ``images``
            (B, C, H, W) / ``wavelengths`` (B, C) / ``polarisations`` (B, C) / ``available``
            (B,) keyed by modality and ``labels`` (B, h, w) keyed by product.

        """
        if len(indices) == 0:
            raise ValueError("a batch needs at least one position")
        # in a DataLoader worker, write the whole batch straight into one block of shared
        # memory, so that handing it to the main process copies nothing and passes one file
        # descriptor (default_collate shares each tensor alone: one socket round trip each)
        arena = _SharedArena() if get_worker_info() is not None else None
        rows, windows, images, available, labels = self._load(indices, arena)
        n = len(rows)

        def per_sample(values: list[float] | list[int], dtype: npt.DTypeLike) -> torch.Tensor:
            # one row repeated: an arena copies the broadcast view into its block anyway
            row = torch.from_numpy(np.asarray(values, dtype=dtype)).expand(n, -1)
            return row if arena is not None else row.contiguous()

        batch = {
            "sample_id": [row["sample_id"] for row in rows],
            "zarr_index": torch.tensor([row["zarr_index"] for row in rows]),
            "window": torch.tensor(windows),
            "images": images,
            "wavelengths": {m: per_sample(self.bands[m][0], np.float32) for m in self.modalities},
            "polarisations": {m: per_sample(self.bands[m][1], np.int64) for m in self.modalities},
            "available": {m: torch.from_numpy(available[m]) for m in self.modalities},
            "labels": labels,
        }
        return batch if arena is None else arena.batch(batch)

    def _load(
        self, indices: Sequence[int], arena: _SharedArena | None = None
    ) -> tuple[
        list[SampleRow],
        list[tuple[int, int, int, int]],
        dict[str, torch.Tensor],
        dict[str, np.ndarray],
        dict[str, torch.Tensor],
    ]:
        """Read and normalise a batch, each sample from its decoded chunk straight into the batch.

        Args:
            indices: Dataset positions.
            arena: Allocate the images and labels in this block of shared memory.

        Returns:
            ``(rows, windows, images, available, labels)``: the samples' index rows and
            windows, ``{modality: (B, C, H, W) float32}``, ``{modality: (B,) bool}`` and
            ``{product key: (B, h, w) int64}``.

        """
        rows = [self.rows[i] for i in indices]
        windows = [self._window() for _ in rows]  # the RNG order of one __getitem__ per row
        parts = self._read([row["zarr_index"] for row in rows], windows)
        _, _, h, w = windows[0]
        n = len(rows)
        if arena is not None:
            arena.reserve(
                [((n, *parts[m][0].shape), torch.float32) for m in self.modalities]
                + [((n, *parts[p.array][0].shape), torch.int64) for p in self.products]
            )
        images: dict[str, torch.Tensor] = {}
        available: dict[str, np.ndarray] = {}
        for m in self.modalities:
            views = parts[m]  # each sample's stored values (C, H, W): read-only views
            shape = (n, *views[0].shape)
            x = _empty(shape, torch.float32, arena)
            out = x.numpy()
            if m == "sentinel-1":  # more than half the pixels finite
                available[m] = np.array(
                    [2 * np.count_nonzero(np.isfinite(v)) > v.size for v in views], dtype=bool
                )
            else:  # any value stored (a uint's max: no cast to bool)
                available[m] = np.array(
                    [bool(v.max() > 0) if v.dtype.kind == "u" else bool(v.any()) for v in views],
                    dtype=bool,
                )
                if m == "naip":
                    available[m] &= np.array([row["has_naip"] for row in rows], dtype=bool)
            if views[0].dtype == np.float32:  # copied into the output, normalised in place
                for k, v in enumerate(views):
                    out[k] = v
                normalise(m, out, self.attrs[m], out=out)
            else:  # each sample's values normalised straight from the store's buffers
                for k, v in enumerate(views):
                    normalise(m, v, self.attrs[m], out=out[k])
            if m == "naip":
                f = shape[-1] // w
                if self.naip_factor is not None and self.naip_factor != f:
                    size = (h * self.naip_factor, w * self.naip_factor)
                    x = F.interpolate(x, size=size, mode="area")
            images[m] = x
        labels: dict[str, torch.Tensor] = {}
        for spec in self.products:
            views = parts[spec.array]
            labels[spec.key] = _empty((n, *views[0].shape), torch.int64, arena)
            out = labels[spec.key].numpy()
            lut = self._luts[spec.key]
            low = self._lows[spec.key]
            for k, v in enumerate(views):
                # every stored code indexes the table (sized to the dtype, or checked by _verify
                # to lie in the legend's span): "clip" never clips, and unlike "raise" it
                # writes straight into ``out``
                if low:
                    v = v.astype(np.int64) - low
                np.take(lut, v, out=out[k], mode="clip")
        return rows, windows, images, available, labels

    def prefetch(self, indices: Sequence[int]) -> None:
        """Start reading the whole shards a coming batch needs, in the background.

        Only with :attr:`shard_cache`, only for arrays the :class:`ShardedArray` reads, and only
        in a process that has already read from the store (so the main process of a
        ``DataLoader`` with workers, whose dataset copy never reads, never reads ahead). The
        next :meth:`batch` or :meth:`__getitems__` that needs those shards takes them from the
        background read (its errors are raised there). At most :attr:`shard_cache` shards per
        array are read ahead. :class:`ShardBatchSampler` calls this with ``prefetch=True``.

        Args:
            indices: Dataset positions of a batch to come.

        """
        if not self.shard_cache or self._root is None or self._pid != os.getpid():
            return
        readers = self._shard_readers()
        if len(self._pending) >= self.shard_cache * len(readers):
            return
        requests: dict[tuple[str, int], tuple[ShardedArray, int]] = {}
        for name, reader in readers.items():
            if reader is None:
                continue
            for i in indices:
                key = (name, self.rows[i]["zarr_index"] // reader.shard_shape[0])
                if key not in self._slabs and key not in self._pending:
                    requests.setdefault(key, (reader, key[1]))
        if requests:
            future = read_shards_later(list(requests.values()), self.decode_threads)
            for place, key in enumerate(requests):
                self._pending[key] = (future, place)

    def _read(
        self, zarr_indices: Sequence[int], windows: Sequence[tuple[int, int, int, int]]
    ) -> dict[str, list[np.ndarray]]:
        """Read every array's window of every sample in one round trip to zarr's event loop.

        Where an array's chunk holds a whole sample (as ``las build`` writes them), any window
        decodes the whole chunk anyway: with :attr:`shard_cache` whole shards are read (or
        taken from the cache), otherwise each sample's chunk alone (:func:`read_rows`, after
        its shard's index; zarr reads contiguous runs of rows where the layout is another);
        all are cropped here. Otherwise each window is read on its own, so only its chunks
        decode.

        Returns:
            ``{array path: [stored values of each sample's window]}``: views of the decoded
            chunks and shards, which the shard cache keeps, so never to be written to. The
            caller writes each straight into its batch (no stacked copy in between).

        """
        from zarr.core.sync import sync

        arrays = self._arrays()
        readers = self._shard_readers()
        reads: list[Any] = []  # coroutines, gathered below
        row_reads: dict[str, ShardedArray] = {}  # arrays read sample by sample: read_rows()
        slab_reads: dict[tuple[str, int], int] = {}  # (array, shard) -> read number
        fast_reads: dict[tuple[str, int], tuple[ShardedArray, int]] = {}  # by ShardedArray
        taken: list[tuple[str, int]] = []  # slabs a prefetch() is reading
        plans: dict[str, list[tuple[Any, Any]]] = {}  # per sample: (read number or slab, crop)
        for name, arr in arrays.items():
            f = arr.shape[-1] // self.shape[1]  # stored pixels per label pixel
            lead = (slice(None),) * (arr.ndim - 3)  # the band axis of imagery, none for labels
            crops = [
                (*lead, slice(y0 * f, (y0 + h) * f), slice(x0 * f, (x0 + w) * f))
                for y0, x0, h, w in windows
            ]
            plan: list[tuple[Any, Any]] = []
            if tuple(arr.chunks[-2:]) == tuple(arr.shape[-2:]) and self.shard_cache:
                per = int((arr.shards or arr.chunks)[0])
                for zi, crop in zip(zarr_indices, crops, strict=True):
                    key = (name, zi // per)
                    reader = readers.get(name)
                    if key in self._slabs:
                        self._slabs.move_to_end(key)
                    elif key in self._pending:  # read ahead by prefetch(): taken below
                        taken.append(key)
                    elif reader is not None:
                        fast_reads.setdefault(key, (reader, key[1]))
                    elif key not in slab_reads:
                        slab_reads[key] = len(reads)
                        start = key[1] * per
                        stop = min(start + per, arr.shape[0])
                        reads.append(arr.async_array.getitem(slice(start, stop)))
                    plan.append((key, (zi - key[1] * per, *crop)))
            elif tuple(arr.chunks[-2:]) == tuple(arr.shape[-2:]) and readers.get(name):
                # each sample's own chunk, read and decoded straight (read_rows)
                row_reads[name] = readers[name]  # type: ignore[assignment]
                plan = [(name, (k, *crop)) for k, crop in enumerate(crops)]
            elif tuple(arr.chunks[-2:]) == tuple(arr.shape[-2:]):
                start_of: dict[int, tuple[int, int]] = {}
                for a, b in _runs(zarr_indices):
                    for zi in range(a, b):
                        start_of[zi] = (len(reads), zi - a)
                    reads.append(arr.async_array.getitem(slice(a, b)))
                for zi, crop in zip(zarr_indices, crops, strict=True):
                    number, offset = start_of[zi]
                    plan.append((number, (offset, *crop)))
            else:
                seen: dict[tuple[int, tuple[int, int, int, int]], int] = {}
                for zi, window, crop in zip(zarr_indices, windows, crops, strict=True):
                    if (zi, window) not in seen:
                        seen[(zi, window)] = len(reads)
                        reads.append(arr.async_array.getitem((zi, *crop)))
                    plan.append((seen[(zi, window)], ...))
            plans[name] = plan

        async def gather() -> list[Any]:
            return list(await asyncio.gather(*reads))

        done: list[np.ndarray] = []
        if reads:
            import zarr

            with zarr.config.set(self.zarr_config):  # read by zarr during the call
                done = [np.asarray(v) for v in sync(gather())]  # zarr's own loop
        rows_read = dict(
            zip(
                row_reads,
                read_rows(
                    [(reader, list(zarr_indices)) for reader in row_reads.values()],
                    self.decode_threads,
                ),
                strict=True,
            )
        )
        for key, number in slab_reads.items():
            self._slabs[key] = done[number]
        if fast_reads:
            slabs = read_shards(list(fast_reads.values()), self.decode_threads)
            for key, slab in zip(fast_reads, slabs, strict=True):
                self._slabs[key] = slab
        for key in dict.fromkeys(taken):
            future, place = self._pending.pop(key)
            self._slabs[key] = future.result()[place]  # re-raises the read's error
        out: dict[str, list[np.ndarray]] = {}
        for name, plan in plans.items():
            fill = arrays[name].fill_value
            views = []
            for (ref, crop), zi in zip(plan, zarr_indices, strict=True):
                read = (
                    rows_read[ref]
                    if isinstance(ref, str)
                    else self._slabs[ref]
                    if isinstance(ref, tuple)
                    else done[ref]
                )
                if crop is not Ellipsis:  # the sample's whole chunk is at hand: check it
                    self._verify(name, zi, read[crop[0]], fill)
                views.append(read[crop])
            out[name] = views
        while len(self._slabs) > self.shard_cache * len(arrays):
            self._slabs.popitem(last=False)
        return out


class ShardBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions taken shard by shard, for the highest read throughput.

    Each epoch shuffles the order of the store's shards and the order of the dataset's samples
    inside each shard, then cuts that sequence into batches. A batch so holds the samples of
    one shard, or of two at a shard boundary (when ``batch_size`` is at most the samples per
    shard), and :meth:`LASDataset.__getitems__` reads each of its shards with one zarr call per
    array instead of one call per sample. Every sample is drawn exactly once per epoch. With
    ``LASDataset(shard_cache=2)`` each shard is then decoded once per epoch, even where batches
    straddle shards.

    The price is less mixed batches: the samples of a shard are neighbours in the store
    (``zarr_index`` order, as ``las build`` planned them), often of one region, so a batch's
    samples are correlated. Use it where loading bounds training; a plain ``RandomSampler``
    (``shuffle=True``) mixes best.

    Use it as a ``batch_sampler`` (per-sample items, collated by the ``DataLoader``)::

        loader = DataLoader(ds, batch_sampler=ShardBatchSampler(ds, batch_size=8), ...)

    or, faster, as the ``sampler`` of a ``DataLoader`` without automatic batching, so that the
    dataset returns each batch whole (:meth:`LASDataset.batch`, the same tensors)::

        loader = DataLoader(ds, sampler=ShardBatchSampler(ds, batch_size=8), batch_size=None)

    Args:
        dataset: The dataset whose positions to draw.
        batch_size: Samples per batch.
        shuffle: Shuffle shards and samples (``False``: store order).
        drop_last: Drop the last, smaller batch.
        generator: Torch RNG of the shuffles; ``None`` seeds one from torch's global RNG at
            each epoch, as ``RandomSampler`` does.
        samples_per_shard: Samples per shard; default: :attr:`LASDataset.samples_per_shard`.
        prefetch: While a batch is returned, have the dataset read the next two batches'
            shards in the background (:meth:`LASDataset.prefetch`; needs ``shard_cache``, and
            reads as far ahead as it allows: with ``shard_cache=1``, one shard). For a
            ``DataLoader`` with ``num_workers=0``, where reading and the rest of a training
            step would otherwise take turns; with workers, the ``DataLoader`` overlaps them
            itself and the hint does nothing.
        num_workers: The ``num_workers`` of the ``DataLoader`` that draws the batches. A
            ``DataLoader`` hands batch ``k`` of an epoch to worker ``k % num_workers``, and
            each worker keeps its own ``shard_cache``; so with workers the sampler deals the
            epoch's shards among them and interleaves their batches, and a shard is read and
            decoded by one worker only (without this, two workers decode every shard that
            their neighbouring batches share). Only the last batches, cut from what is left
            of each worker's shards, may share a shard between workers. ``0``: one sequence.

    """

    def __init__(
        self,
        dataset: LASDataset,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        samples_per_shard: int | None = None,
        prefetch: bool = False,
        num_workers: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        per_shard = samples_per_shard or dataset.samples_per_shard
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator
        self.dataset = dataset if prefetch else None
        self.num_workers = num_workers
        by_shard: dict[int, list[int]] = {}
        for position, row in enumerate(dataset.rows):
            by_shard.setdefault(row["zarr_index"] // per_shard, []).append(position)
        self.shards = [by_shard[k] for k in sorted(by_shard)]
        self.n = len(dataset.rows)

    def __iter__(self) -> Iterator[list[int]]:
        shards = self.shards
        if self.shuffle:
            g = self.generator
            if g is None:
                g = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_()))
            shards = []
            for k in torch.randperm(len(self.shards), generator=g).tolist():
                shard = self.shards[k]
                shards.append([shard[j] for j in torch.randperm(len(shard), generator=g).tolist()])
        if self.num_workers > 1:
            batches = self._dealt(shards, self.num_workers)
        else:
            batches = self._cut([p for shard in shards for p in shard])
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        for k, batch in enumerate(batches):
            if self.dataset is not None:
                # two ahead: the decode of one shard can take longer than a batch's own work
                for ahead in batches[k + 1 : k + 3]:
                    self.dataset.prefetch(ahead)
            yield batch

    def _cut(self, order: list[int]) -> list[list[int]]:
        """``order`` cut into batches of ``batch_size`` (the last one shorter)."""
        size = self.batch_size
        return [order[start : start + size] for start in range(0, len(order), size)]

    def _dealt(self, shards: list[list[int]], workers: int) -> list[list[int]]:
        """The shards dealt among ``workers``, their full batches interleaved.

        Batch ``k`` so holds shards of worker ``k % workers`` only. The rest of every
        worker's positions (a short batch, and the batches past the shortest worker's)
        follows, cut as one sequence, so that only the last batch is short.
        """
        dealt: list[list[int]] = [[] for _ in range(workers)]
        for shard in shards:  # each to the worker with the fewest samples so far
            min(dealt, key=len).extend(shard)
        size = self.batch_size
        full = min(len(positions) // size for positions in dealt)
        batches = [positions[k * size : (k + 1) * size] for k in range(full) for positions in dealt]
        return batches + self._cut([p for positions in dealt for p in positions[full * size :]])

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)


def _empty(
    shape: Sequence[int], dtype: torch.dtype, arena: _SharedArena | None = None
) -> torch.Tensor:
    """An uninitialised tensor, from ``arena`` if one is given."""
    if arena is None:
        return torch.empty(tuple(shape), dtype=dtype)
    return arena.empty(shape, dtype)


_ALIGN = 64  # bytes: every tensor of an arena starts on a cache line
_HEADER = _ALIGN  # bytes before a block's tensors; byte 0 is 1 while a batch in it is alive
_POOLED_BLOCKS = 4  # blocks a worker keeps for reuse: prefetch_factor's 2 in flight + 2 held


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return -(-math.prod(shape) * dtype.itemsize // _ALIGN) * _ALIGN


def _new_shared(count: int, dtype: torch.dtype) -> torch.Tensor:
    """A new tensor of ``count`` elements in its own segment of shared memory."""
    empty = torch.empty(0, dtype=dtype)
    storage = empty._typed_storage()
    return empty.new(storage._new_shared(count, device=empty.device))


class _BlockPool:
    """A worker's blocks of shared memory, each used again once the main process let it go.

    A new segment costs the worker the kernel's zeroing and a page fault per 4 KiB (~6 ms for
    a 9 MB batch, ten times the copy into it). A block's first byte is its flag: the worker
    sets it when it fills the block, and the main process clears it when the last view of the
    batch it unpacked from the block is freed (:func:`_unpack_arena_batch`), so a block is
    never written while anything in the main process can still read it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.blocks: list[tuple[torch.Tensor, np.ndarray]] = []
        # names this process's pooled blocks to the main process (a pid can be reused)
        self.token = (os.getpid(), secrets.token_hex(8))
        self.sent: set[int] = set()  # pooled blocks the main process was sent whole

    def take(self, size: int) -> torch.Tensor:
        """A block of at least ``size`` bytes after its header, flagged in use."""
        for flat, flag in self.blocks:
            if flag[0] == 0 and flat.numel() - _HEADER >= size:
                flag[0] = 1
                return flat
        flat = _new_shared(_HEADER + size, torch.uint8)
        flag = flat[:1].numpy()
        flag[0] = 1
        if len(self.blocks) < self.limit:
            self.blocks.append((flat, flag))
        return flat

    def number(self, flat: torch.Tensor) -> int | None:
        """The pooled block ``flat`` is (its place in the pool), or None for a one-off block."""
        for k, (block, _) in enumerate(self.blocks):
            if block is flat:
                return k
        return None


_pools: dict[int, _BlockPool] = {}  # by process id: a forked worker never takes its parent's


def _pool() -> _BlockPool:
    return _pools.setdefault(os.getpid(), _BlockPool(_POOLED_BLOCKS))


@dataclass(frozen=True)
class _Slot:
    """Where a tensor lies in an arena's block: byte offset, dtype, shape."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]


class _SharedArena:
    """The tensors of one batch carved out of one block of shared memory, in a worker.

    A ``DataLoader`` worker sends every tensor of a batch through shared memory: each tensor
    that is not there yet is copied into a new segment, and each segment's file descriptor
    travels alone (torch's default ``file_descriptor`` strategy: one socket round trip between
    the main process and the worker per tensor, ten per LAS batch). An arena allocates the
    batch's large tensors in one block (:meth:`reserve` sizes it, the small ones are copied
    in by :meth:`batch`) and the batch it returns pickles as that one block plus where each
    tensor lies in it; the main process unpickles an ordinary ``dict`` of views into it. The
    block comes from the worker's :class:`_BlockPool`, so a running loader reuses a few.
    """

    def __init__(self) -> None:
        self.flat: torch.Tensor | None = None
        self.used = _HEADER

    def reserve(self, tensors: Sequence[tuple[Sequence[int], torch.dtype]]) -> None:
        """Take a block: room for ``tensors`` (shape, dtype) and 4 KiB of small ones."""
        self.flat = _pool().take(sum(_nbytes(shape, dtype) for shape, dtype in tensors) + 4096)

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor in the block; in a new segment of its own if it is full."""
        size = _nbytes(shape, dtype)
        if self.flat is None or self.used + size > self.flat.numel():
            return _new_shared(math.prod(shape), dtype).resize_(*shape)
        start, self.used = self.used, self.used + size
        count = math.prod(shape)
        return self.flat[start : start + count * dtype.itemsize].view(dtype).view(*shape)

    def batch(self, batch: dict[str, Any]) -> _ArenaBatch:
        """``batch`` as an :class:`_ArenaBatch`, its tensors outside the block copied in."""
        return _ArenaBatch({k: self._placed(v) for k, v in batch.items()}, self)

    def _placed(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._placed(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor) and not self.holds(value):
            return self.empty(value.shape, value.dtype).copy_(value)
        return value

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is a contiguous view into the block."""
        return (
            self.flat is not None
            and tensor.device.type == "cpu"
            and tensor.is_contiguous()
            and tensor.untyped_storage().data_ptr() == self.flat.untyped_storage().data_ptr()
        )

    def slot(self, tensor: torch.Tensor) -> _Slot:
        """Where ``tensor`` (one of :meth:`holds`) lies in the block."""
        # storage_offset() is typed int | SymInt; a SymInt only arises under symbolic tracing
        offset = cast(int, tensor.storage_offset()) * tensor.element_size()
        return _Slot(offset, tensor.dtype, tuple(tensor.shape))


class _ArenaBatch(dict[str, Any]):
    """A batch whose tensors lie in one :class:`_SharedArena` block.

    Pickles (as a worker sends it) as the block and each tensor's :class:`_Slot`; a tensor put
    in afterwards, outside the block, is pickled as itself. ``copy.copy`` (``default_convert``
    copies a batch) keeps the arena.
    """

    def __init__(self, values: dict[str, Any], arena: _SharedArena) -> None:
        super().__init__(values)
        self.arena = arena

    def __copy__(self) -> _ArenaBatch:
        return _ArenaBatch(self, self.arena)

    def __reduce__(self) -> tuple[Any, ...]:
        layout = _layout(dict(self), self.arena)
        pool, flat = _pool(), self.arena.flat
        number = None if flat is None else pool.number(flat)
        if number is None:  # a one-off block: sent whole, unmapped once its batch is freed
            return (_unpack_arena_batch, (flat, layout))
        key = (*pool.token, number)
        if number in pool.sent:  # the main process keeps this block mapped: name it
            return (_unpack_known_block, (key, layout))
        pool.sent.add(number)
        return (_unpack_new_block, (key, flat, layout))


# Recursion through module functions, not closures: a closure that calls itself is a
# reference cycle, which would keep the batch's block alive until the next garbage collection.
def _layout(value: Any, arena: _SharedArena) -> Any:
    if isinstance(value, dict):
        return {k: _layout(v, arena) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and arena.holds(value):
        return arena.slot(value)
    return value


def _unpack_arena_batch(flat: torch.Tensor, layout: dict[str, Any]) -> dict[str, Any]:
    """The batch :meth:`_ArenaBatch.__reduce__` packed: a plain dict of views into ``flat``.

    The views share one storage that holds a numpy array of the block; when the last of them
    (or of views made from them) is freed, so is that array, and its finalizer clears the
    block's flag so that the worker may fill the block again.
    """
    held = flat.numpy()
    weakref.finalize(held, _let_go, flat[:1]).atexit = False
    batch: dict[str, Any] = _unpacked(layout, torch.from_numpy(held))
    return batch


_received: dict[tuple[int, str, int], torch.Tensor] = {}
"""Pooled blocks the workers sent, by (worker pid, worker token, block number), kept mapped.

A block sent again is named, not sent: passing its file descriptor cost a socket connection
and an authentication handshake between the two processes per batch, and mapping it anew a
page fault per 4 KiB the first time the batch is read. A worker's blocks are let go when a
block of a new worker arrives and the old worker's process has ended.
"""


def _unpack_new_block(
    key: tuple[int, str, int], flat: torch.Tensor, layout: dict[str, Any]
) -> dict[str, Any]:
    """A batch in a pooled block sent for the first time: kept, then unpacked."""
    if not any(known[:2] == key[:2] for known in _received):  # a new worker
        for known in [k for k in _received if not _alive(k[0])]:
            del _received[known]
    _received[key] = flat
    return _unpack_arena_batch(flat, layout)


def _unpack_known_block(key: tuple[int, str, int], layout: dict[str, Any]) -> dict[str, Any]:
    """A batch in a pooled block sent earlier (:func:`_unpack_new_block`)."""
    flat = _received.get(key)
    if flat is None:  # only when batches of a worker are unpickled out of their order
        raise RuntimeError(
            f"DataLoader worker (pid {key[0]}) sent a batch in shared-memory block {key[2]}, "
            "which never reached this process: unpickle a worker's batches in the order it "
            "sent them"
        )
    return _unpack_arena_batch(flat, layout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now: not our worker's
        return False
    return True


def _unpacked(value: Any, base: torch.Tensor) -> Any:
    if isinstance(value, dict):
        return {k: _unpacked(v, base) for k, v in value.items()}
    if isinstance(value, _Slot):
        count = math.prod(value.shape)
        part = base[value.offset : value.offset + count * value.dtype.itemsize]
        return part.view(value.dtype).view(*value.shape)
    return value


def _let_go(flag: torch.Tensor) -> None:
    flag[0] = 0


def _runs(values: Iterable[int]) -> list[tuple[int, int]]:
    """Cover the distinct values with maximal ``[start, stop)`` runs of consecutive integers."""
    runs: list[tuple[int, int]] = []
    for v in sorted(set(values)):
        if runs and runs[-1][1] == v:
            runs[-1] = (runs[-1][0], v + 1)
        else:
            runs.append((v, v + 1))
    return runs


def compose_input(
    batch: dict[str, Any], modalities: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack the chosen modalities of a collated batch into one network input.

    Bands are concatenated in the given order. When NAIP is mixed with a 10 m modality it is
    area-averaged onto the 10 m grid; alone it keeps its own resolution.

    Args:
        batch: A batch collated by ``torch.utils.data.default_collate`` from
            :class:`LASDataset` items.
        modalities: The modalities to stack, e.g. ``["sentinel-2", "sentinel-1"]``.

    Returns:
        ``(image (B, C, H, W), wavelengths (C,), polarisations (C,))``.

    """
    if not modalities:
        raise ValueError("no modalities to compose")
    sizes = [tuple(batch["images"][m].shape[-2:]) for m in modalities]
    coarse = [s for m, s in zip(modalities, sizes, strict=True) if m != "naip"]
    size = coarse[0] if coarse else sizes[0]
    parts, wls, pols = [], [], []
    for m in modalities:
        x = batch["images"][m]
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="area")
        parts.append(x)
        wl = batch["wavelengths"][m]
        pol = batch["polarisations"][m]
        wls.append(wl[0] if wl.ndim == 2 else wl)
        pols.append(pol[0] if pol.ndim == 2 else pol)
    return torch.cat(parts, 1), torch.cat(wls), torch.cat(pols)


def augment_batch(
    image: torch.Tensor, labels: Sequence[torch.Tensor], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Apply one random flip / 90-degree rotation to a batch and its label maps alike.

    Args:
        image: ``(B, C, H, W)``.
        labels: Label maps ``(B, h, w)``; they may be on a coarser grid than the image.
        generator: Torch RNG to draw the transform from.

    Returns:
        The transformed image and labels.

    """
    k = int(torch.randint(0, 4, (1,), generator=generator).item())
    flip = bool(torch.randint(0, 2, (1,), generator=generator).item())

    def tf(t: torch.Tensor) -> torch.Tensor:
        if flip:
            t = t.flip(-1)
        return torch.rot90(t, k, dims=(-2, -1)) if k else t

    return tf(image), [tf(lab) for lab in labels]
