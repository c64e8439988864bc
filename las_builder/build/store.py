"""The LAS store: Zarr v3 sharded arrays (one shard = one task) plus per-shard index parts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

try:
    import fcntl
except ImportError:  # not on Windows: builds there go without a lock
    fcntl = None  # type: ignore[assignment]

import fsspec
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.sync import sync
from zarr.storage import FsspecStore

from las_builder.build.config import BuildConfig
from las_builder.catalog import LAS_IGNORE, LAS_NODATA, load_mapping, load_taxonomy
from las_builder.catalog.labels import load_label_product
from las_builder.imagery import s2_band_table, sensor
from las_builder.security import redact
from las_builder.zarr_shards import ShardedArray, write_encoded_shards, write_shards

if TYPE_CHECKING:
    from zarr.types import ArrayV3

log = logging.getLogger(__name__)

STORE_VERSION = 1
# recipe output.compressor -> each sample chunk's codec; bit-shuffling (every array, whatever
# its dtype) makes the slowly varying high bits of imagery and labels runs that LZ4 finds.
COMPRESSORS = {
    "blosc-lz4": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),
    "zstd": ZstdCodec(level=3),
}
# Band-name coordinate arrays (named after the band dimension of each imagery array).
BAND_COORDINATES = {"s2_band": "sentinel-2", "s1_band": "sentinel-1", "naip_band": "naip"}
_PART = re.compile(r"shard-(\d+)\.parquet")
# zarr's LocalStore writes an object aside as <stem>.<uuid4 hex>.partial and renames it; a
# process killed in between leaves that file behind.
_ZARR_PARTIAL = re.compile(r"(?P<stem>.+)\.[0-9a-f]{32}\.partial")


class OutputUnreachable(ValueError, FileNotFoundError):  # noqa: N818 - as BuildLocked
    """The output's storage cannot be reached, read or written (credentials, endpoint, bucket).

    Both a ValueError and a FileNotFoundError: the CLI reports either as a one-line error,
    wherever the storage first fails (reading the plan, or the build itself).
    """


# Words of S3's (and s3fs's) errors for credentials that are missing, wrong or not allowed.
_DENIED = (
    "AccessDenied",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "NoCredentialsError",
    "PartialCredentialsError",
    "Unable to locate credentials",
)
_UNREACHABLE = (
    "EndpointConnectionError",
    "ConnectTimeout",
    "ConnectionClosedError",
    "Could not connect",
    "ReadTimeout",
)
_CLOUD_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "azure")


def is_storage_error(err: BaseException) -> bool:
    """Whether ``err`` came from the storage (a file system, an object store, its client)."""
    return isinstance(err, OSError) or type(err).__module__.startswith(_CLOUD_MODULES)


def describe_storage_error(err: BaseException) -> str:
    """``Type: message`` of a storage error, redacted.

    s3fs turns botocore's errors into an ``OSError`` that drops S3's error code (``SlowDown``
    becomes ``[Errno 16] Please reduce your request rate.``); botocore's own error, its cause,
    has the code, the operation and how many retries were made.
    """
    cause = err.__cause__
    shown = cause if isinstance(err, OSError) and cause is not None else err
    if not is_storage_error(shown):
        shown = err
    return redact(f"{type(shown).__name__}: {shown}".rstrip(": "))


def storage_hint(url: str, err: BaseException) -> str:
    """What to do about the storage error ``err`` met at ``url`` (one clause)."""
    text = f"{type(err).__name__} {err} {type(err.__cause__).__name__} {err.__cause__}"
    if _local_path(url) is not None:
        if isinstance(err, PermissionError):
            return "check the folder's permissions, or choose another output.path"
        return "check output.path and the disk, then run the command again"
    if isinstance(err, PermissionError) or any(word in text for word in _DENIED):
        return (
            "check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
            "the instance role): they must be allowed to read and write it"
        )
    if "NoSuchBucket" in text:
        return "its bucket does not exist: check output.path or create the bucket"
    if isinstance(err, ConnectionError | TimeoutError) or any(w in text for w in _UNREACHABLE):
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        where = f"AWS_ENDPOINT_URL ({redact(endpoint)})" if endpoint else "the endpoint"
        return f"check {where} and the network, then run the command again"
    return "check output.path, the credentials and the endpoint, then run the command again"


@contextmanager
def storage_access(url: str, doing: str) -> Iterator[None]:
    """Turn a storage error of the body into :class:`OutputUnreachable` naming ``url``.

    A missing file (FileNotFoundError) goes through as it is: its callers say what is missing.
    Errors that do not come from the storage (bugs) go through too.

    Args:
        url: The file, object or folder the body reads or writes.
        doing: What the body does to it, as a verb (``read``, ``write``, ``list``).

    Raises:
        OutputUnreachable: ``cannot DOING URL (Type: message): what to do``.
    """
    try:
        yield
    except (OutputUnreachable, FileNotFoundError):
        raise
    except Exception as err:
        if not is_storage_error(err):
            raise
        raise OutputUnreachable(
            f"cannot {doing} {redact(url)} ({describe_storage_error(err)}): "
            f"{storage_hint(url, err)}"
        ) from None


def normalize_output(output: str) -> str:
    """The output as every process of a build names it.

    Without a trailing slash (``s3://bucket/prefix/`` would put the store at the object keys
    ``prefix//las.zarr/...``, where no reader looks), and a local path made absolute: the
    workers of a cluster may run in another folder than the build.
    """
    output = output.rstrip("/") or "/"
    if "://" not in output:
        output = os.path.abspath(output)
    return output


class _NamedStore(FsspecStore):
    """An fsspec store whose storage errors name the object they concern.

    s3fs's errors name no object: a shard that could not be written after the retries of
    botocore and s3fs said only ``[Errno 16] Please reduce your request rate.``.
    """

    def _failed(self, doing: str, key: str, err: Exception) -> OSError:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        url = f"{protocol}://{self.path.rstrip('/')}/{key}"
        return OSError(f"cannot {doing} {url} ({describe_storage_error(err)})")

    async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get(key, *args, **kwargs)
        except Exception as err:
            if not is_storage_error(err) or isinstance(err, FileNotFoundError):
                raise
            raise self._failed("read", key, err) from err

    async def set(self, key: str, *args: Any, **kwargs: Any) -> None:
        try:
            await super().set(key, *args, **kwargs)
        except Exception as err:
            if not is_storage_error(err):
                raise
            raise self._failed("write", key, err) from err

    async def delete(self, key: str) -> None:
        try:
            await super().delete(key)
        except Exception as err:
            if not is_storage_error(err) or isinstance(err, FileNotFoundError):
                raise
            raise self._failed("delete", key, err) from err


def _open_group(url: str, mode: Literal["r", "r+", "a"]) -> zarr.Group:
    """The Zarr v3 group at ``url``; on object storage through a :class:`_NamedStore`."""
    if _local_path(url) is not None:
        return zarr.open_group(url, mode=mode, zarr_format=3)
    store = _NamedStore.from_url(url, read_only=mode == "r")
    return zarr.open_group(store, mode=mode, zarr_format=3)


@dataclass(frozen=True)
class ArraySpec:
    """Shape (without the sample axis), dtype, fill value, dimension names, attributes."""

    shape: tuple[int, ...]
    dtype: str
    fill: Any
    dims: tuple[str, ...]
    attrs: dict[str, Any]


def array_specs(cfg: BuildConfig) -> dict[str, ArraySpec]:
    """The arrays a build writes, by path inside ``las.zarr``."""
    n = cfg.size_px
    yx = ("y", "x")
    specs: dict[str, ArraySpec] = {}
    if cfg.s2_collection:
        bands = s2_band_table()
        specs["sentinel-2"] = ArraySpec(
            (len(bands), n, n),
            "uint16",
            0,
            ("sample", "s2_band", *yx),
            {
                "collection": cfg.s2_collection,
                "bands": [b["name"] for b in bands],
                "common_names": [b.get("common_name") for b in bands],
                "center_wavelength_um": [b["center_wavelength"] for b in bands],
                "full_width_half_max_um": [b["full_width_half_max"] for b in bands],
                "native_resolution_m": [b["gsd"] for b in bands],
                "units": "surface reflectance x 10000 (BOA offset removed for every baseline)",
                "scale_factor": 0.0001,
                "nodata": 0,
            },
        )
        scl = sensor("sentinel-2-l2a")["scl"]
        specs["sentinel-2-scl"] = ArraySpec(
            (n, n),
            "uint8",
            0,
            ("sample", *yx),
            {
                "collection": cfg.s2_collection,
                "classes": {str(c["value"]): c["name"] for c in scl["classes"]},
            },
        )
    if cfg.s1_collection:
        s1 = sensor("sentinel-1-rtc")
        specs["sentinel-1"] = ArraySpec(
            (2, n, n),
            "float32",
            float("nan"),
            ("sample", "s1_band", *yx),
            {
                "collection": cfg.s1_collection,
                "bands": [b["name"] for b in s1["bands"]],
                "center_frequency_ghz": [b["center_frequency_ghz"] for b in s1["bands"]],
                "units": "dB" if cfg.s1_units == "db" else "linear power (gamma0)",
                "nodata": "NaN",
            },
        )
    if cfg.naip_collection:
        naip = sensor("naip")
        m = n * cfg.naip_factor
        specs["naip"] = ArraySpec(
            (len(naip["bands"]), m, m),
            "uint8",
            0,
            ("sample", "naip_band", "y_fine", "x_fine"),
            {
                "collection": cfg.naip_collection,
                "bands": [b["name"] for b in naip["bands"]],
                "center_wavelength_um": [b["center_wavelength"] for b in naip["bands"]],
                "resolution_m": cfg.resolution_m / cfg.naip_factor,
                "units": "digital number (0-255)",
                "nodata": 0,
            },
        )
    for spec in cfg.labels:
        legend = load_label_product(spec.product)
        # what a build writes where the product has no data: for a product without a nodata
        # value, one no class uses (0 may be a class, which readers would then drop as nodata)
        nodata = legend.fill
        specs[f"labels/{spec.product}/native"] = ArraySpec(
            (n, n),
            legend.dtype,
            nodata,
            ("sample", *yx),
            {
                "product": spec.product,
                "collection": spec.collection,
                "year": spec.year,
                "nodata": nodata,
                "classes": [
                    {
                        "value": c.value,
                        "name": c.name,
                        "description": c.description,
                        "color": c.color,
                        # readers serve neither as a class to learn (LASDataset, inspect)
                        "is_nodata": c.is_nodata,
                        "ignore": c.ignore,
                    }
                    for c in legend.classes
                ],
            },
        )
        specs[f"labels/{spec.product}/las"] = ArraySpec(
            (n, n),
            "uint8",
            LAS_NODATA,
            ("sample", *yx),
            {
                "product": spec.product,
                "taxonomy": "las",
                "nodata": LAS_NODATA,
                "ignore": LAS_IGNORE,
            },
        )
    if cfg.labels:
        specs["consensus"] = ArraySpec(
            (n, n),
            "uint8",
            LAS_NODATA,
            ("sample", *yx),
            {
                "rule": CONSENSUS_RULE,
                "nodata": LAS_NODATA,
                "ignore": LAS_IGNORE,
            },
        )
        specs["agreement"] = ArraySpec(
            (n, n),
            "uint8",
            0,
            ("sample", *yx),
            {"meaning": "number of products voting the consensus class"},
        )
    return specs


def build_fingerprint(cfg: BuildConfig) -> dict[str, Any]:
    """The recipe fields a build's samples depend on, by recipe field name (JSON values).

    Kept in the store (``build_config``): a build of another recipe into the same output is
    refused instead of mixing its samples with the store's. Left out: what only says where or
    how fast to read (``stac.url``, which may be a mirror, ``stac.sign``, read threads) and the
    output's layout, which :func:`create_store` checks itself.
    """
    return {
        "backend": cfg.backend,
        "time.start": cfg.start.date().isoformat(),
        "time.end": cfg.end.date().isoformat(),
        "sample.size_px": cfg.size_px,
        "sample.resolution_m": float(cfg.resolution_m),
        "max_nodata": float(cfg.max_nodata),
        "imagery.sentinel-2.collection": cfg.s2_collection,
        "imagery.sentinel-2.max_cloud": float(cfg.max_cloud),
        "imagery.sentinel-2.composite": cfg.composite,
        "imagery.sentinel-2.composite_k": cfg.composite_k,
        "imagery.sentinel-1.collection": cfg.s1_collection,
        "imagery.sentinel-1.units": cfg.s1_units,
        "imagery.naip.collection": cfg.naip_collection,
        "imagery.naip.factor": cfg.naip_factor,
        "labels": [
            {"product": s.product, "collection": s.collection, "asset": s.asset, "year": s.year}
            for s in cfg.labels
        ],
        # The catalog's mappings decide every LAS label: a mapping edited between a build and
        # its resumption would mix two labellings in one store.
        "catalog.mappings": {s.product: _mapping_digest(s.product) for s in cfg.labels},
        "consensus.rule": CONSENSUS_RULE,
    }


CONSENSUS_RULE = (
    "most support (own votes plus the votes of classes that lump it in), then most own votes; "
    "ties and all-ignore -> ignore"
)


def _mapping_digest(product: str) -> str:
    """A short digest of what a product's mapping decides: each code's target and lumps."""
    mapping = load_mapping(product)
    rules = {code: [r.to, sorted(r.also)] for code, r in sorted(mapping.rules.items())}
    text = json.dumps({"fill": mapping.product.fill, "rules": rules}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_digest(sample_ids: Iterable[str]) -> str:
    """A digest of a plan's samples in plan order (their ids hold place, size and resolution)."""
    digest = hashlib.sha256()
    for sample_id in sample_ids:
        digest.update(f"{sample_id}\n".encode())
    return digest.hexdigest()


def stored_plan_digest(output: str) -> str | None:
    """The :func:`plan_digest` kept by the store under ``output`` (None: no store, or none kept).

    ``las plan`` compares it with the plan it made: writing another plan over a built output
    would lose the one its store was built from.
    """
    url = f"{normalize_output(output)}/las.zarr"
    fs, path = fsspec.core.url_to_fs(url)
    with storage_access(url, "read"):
        if not fs.exists(f"{path}/zarr.json"):
            return None
        value = _open_group(url, "r").attrs.get("plan_digest")
    return value if isinstance(value, str) else None


def _check_same_build(
    url: str,
    root: zarr.Group,
    samples_per_shard: int,
    cfg: BuildConfig,
    specs: dict[str, ArraySpec],
    digest: str | None,
) -> None:
    """Refuse to go on with a store made for another recipe or plan (each: ValueError).

    Resuming it would index the new plan's samples over the old one's arrays, or fail every
    shard on arrays of another shape. Stores made before the fingerprint was kept are checked
    for their layout only.
    """
    fix = "delete it or choose another output.path"
    if root.attrs.get("samples_per_shard") != samples_per_shard:
        raise ValueError(
            f"{url} holds {root.attrs.get('samples_per_shard')} samples a shard, the plan "
            f"{samples_per_shard} (output.samples_per_shard): {fix}"
        )
    for path, spec in specs.items():
        shape = tuple(root[path].shape[1:])  # type: ignore[union-attr]  # an array here
        if shape != spec.shape:
            raise ValueError(
                f"{url}/{path} holds samples of shape {shape}, this recipe's are {spec.shape} "
                f"(sample.size_px, imagery.naip.factor): {fix}"
            )
    stored = root.attrs.get("build_config")
    if isinstance(stored, dict):
        wanted = json.loads(json.dumps(build_fingerprint(cfg)))
        changed = [
            k for k in sorted(wanted.keys() | stored.keys()) if wanted.get(k) != stored.get(k)
        ]
        if changed:
            first = changed[0]
            more = (
                f" (and {len(changed) - 1} more: {', '.join(changed[1:])})" if changed[1:] else ""
            )
            raise ValueError(
                f"{url} was built with another recipe or catalog: {first} is "
                f"{stored.get(first)!r} there, "
                f"{wanted.get(first)!r} in this one{more}: {fix}"
            )
    stored_digest = root.attrs.get("plan_digest")
    if digest is not None and isinstance(stored_digest, str) and stored_digest != digest:
        raise ValueError(
            f"{url} was built from another plan (plan.parquet was made again, with another "
            f"recipe or seed): {fix}, then plan and build again"
        )


def create_store(
    url: str,
    n_samples: int,
    samples_per_shard: int,
    cfg: BuildConfig,
    attrs: dict[str, Any],
    plan: str | None = None,
) -> None:
    """Create ``las.zarr`` (metadata only) unless it exists with the same layout.

    The arrays are created first and ``las_store_version`` is written last, so a build killed
    while creating the store leaves no version mark and the next run creates it again.

    Args:
        url: The store.
        n_samples: Samples of the plan.
        samples_per_shard: Samples a shard.
        cfg: The build's configuration (its :func:`build_fingerprint` is kept in the store).
        attrs: Further attributes of the store.
        plan: The plan's :func:`plan_digest`, kept in the store; None: not checked.

    Raises:
        ValueError: The store exists but was made for another plan, recipe or layout.
    """
    local = _local_path(url)
    if local is not None and os.path.isdir(local) and not os.path.exists(f"{local}/zarr.json"):
        # Before zarr writes a zarr.json in it; zarr's own half-written files are no one's.
        _refuse_foreign(url, sorted(n for n in os.listdir(local) if not _ZARR_PARTIAL.fullmatch(n)))
    root = _open_group(url, mode="a")
    specs = array_specs(cfg)
    version = root.attrs.get("las_store_version")
    if version is not None and version != STORE_VERSION:
        # Made again below, it would lose every shard of a store this version cannot read.
        raise ValueError(
            f"{url} is a store of version {version!r}, this las-builder writes version "
            f"{STORE_VERSION}: build it with the las-builder that made it, or choose another "
            "output.path"
        )
    if version == STORE_VERSION:
        if root.attrs.get("n_samples") != n_samples:
            raise ValueError(
                f"{url} holds {root.attrs.get('n_samples')} samples, the plan has {n_samples}: "
                "delete it or choose another output path"
            )
        missing = [path for path in specs if path not in root]
        if missing:
            raise ValueError(
                f"{url} lacks the arrays {', '.join(missing)} of this recipe: "
                "delete it or choose another output path"
            )
        stored = {compressor_name(root[path]) for path in specs}  # type: ignore[arg-type]
        if stored != {cfg.compressor}:
            raise ValueError(
                f"{url} is compressed with {', '.join(sorted(map(str, stored)))}, the recipe "
                f"says output.compressor: {cfg.compressor}: delete it, choose another output "
                "path or set the recipe's compressor to the store's"
            )
        _check_same_build(url, root, samples_per_shard, cfg, specs, plan)
        return
    if root.attrs.get("las_store_creating") is None:
        _refuse_foreign(url, sorted(root.keys()) or sorted(root.attrs.keys()))
    # Marked first: a store this marks was begun by a build (killed before the version mark)
    # and may be made again; a group without it is someone else's and is never overwritten.
    root.attrs.update({"las_store_creating": STORE_VERSION})
    _remove_partials(url)  # a build killed while creating the store; it holds no shard yet
    for path, spec in specs.items():
        root.create_array(
            path,
            shape=(n_samples, *spec.shape),
            chunks=(1, *spec.shape),
            shards=(samples_per_shard, *spec.shape),
            dtype=spec.dtype,
            fill_value=spec.fill,
            # The crc32c catches a chunk damaged at rest or in a copy (the shard index has
            # its own); readers check it before decompressing (~11 ms per 100 MiB here).
            compressors=[COMPRESSORS[cfg.compressor], Crc32cCodec()],
            dimension_names=spec.dims,
            attributes=spec.attrs,
            overwrite=True,
        )
    for dim, modality in BAND_COORDINATES.items():
        if modality in specs:
            # A 1-D array named like the dimension is a coordinate for xarray.open_zarr.
            names = np.array(specs[modality].attrs["bands"], dtype=str)
            coord = root.create_array(
                dim,
                shape=names.shape,
                chunks=names.shape,
                dtype=str,
                dimension_names=(dim,),
                attributes={"long_name": f"{modality} band name"},
                overwrite=True,
            )
            coord[:] = names
    taxonomy = load_taxonomy()
    root.attrs.update(
        {
            "n_samples": n_samples,
            "samples_per_shard": samples_per_shard,
            "taxonomy": [
                {
                    "code": c.code,
                    "key": c.key,
                    "name": c.name,
                    "definition": c.definition,
                    "color": c.color,
                }
                for c in taxonomy.classes
            ],
            "nodata": LAS_NODATA,
            "ignore": LAS_IGNORE,
            "build_config": build_fingerprint(cfg),
            **({"plan_digest": plan} if plan is not None else {}),
            **attrs,
        }
    )
    root.attrs.update({"las_store_version": STORE_VERSION})  # last: the store is complete


def _refuse_foreign(url: str, found: list[str]) -> None:
    """Refuse to create a store where something a build did not begin is (``found``).

    Raises:
        ValueError: ``found`` is not empty: a Zarr group's arrays or attributes, or the files
            of a folder without ``zarr.json``.
    """
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise ValueError(
            f"{url} holds something las-builder did not write ({shown}): building here would "
            "overwrite it; move it away or set another output.path"
        )


def store_complete(url: str) -> bool:
    """Whether ``url`` holds a store :func:`create_store` finished (its version mark is there).

    Shards are written only into a finished store, so index parts beside a store that is
    missing or unfinished describe arrays that are gone (``las.zarr`` deleted by hand).

    Raises:
        ValueError: The store's ``zarr.json`` is there but is not JSON (named, with what to do).
    """
    path = f"{url.rstrip('/')}/zarr.json"
    fs, fs_path = fsspec.core.url_to_fs(path)
    try:
        meta = json.loads(fs.cat_file(fs_path))
    except (FileNotFoundError, NotADirectoryError):  # las.zarr a file: check_output_paths says
        return False
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is not a Zarr store's metadata ({type(err).__name__}: {err}): delete "
            f"{url} (and the output's index-parts/) or choose another output.path"
        ) from None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    # Of any version: one this las-builder does not write is refused by create_store.
    return isinstance(attrs, dict) and attrs.get("las_store_version") is not None


def discard_index(output: str) -> int:
    """Delete ``index.parquet`` and every shard's index part under ``output``.

    For an output whose store is missing or unfinished (:func:`store_complete`): its parts
    would mark shards finished whose arrays are not there, and the build would skip them and
    index their samples as built. The index goes first, as in ``--retry-failed``. Other files
    in ``index-parts/`` are left alone.

    Returns:
        How many index parts were deleted.
    """
    fs, index = fsspec.core.url_to_fs(f"{output.rstrip('/')}/index.parquet")
    if fs.exists(index):
        fs.rm_file(index)
    parts = sorted(done_shards(output))
    for shard in parts:
        fs.rm_file(fsspec.core.url_to_fs(index_part_path(output, shard))[1])
    if parts:
        log.warning(
            "deleted %d index parts under %s: its store is missing or unfinished, so the "
            "shards they marked finished are built again",
            len(parts),
            redact(output),
        )
    return len(parts)


_opened: dict[tuple[str, str], dict[str, tuple[ArrayV3, ShardedArray | None]]] = {}
_opened_lock = threading.Lock()


def compressor_name(array: ArrayV3) -> str | None:
    """The :data:`COMPRESSORS` name of ``array``'s sample chunks, None for another codec."""
    # zarr types ``Array.metadata`` as v2 or v3 whatever the array's own type says.
    codecs = array.metadata.codecs  # type: ignore[union-attr]
    inner = getattr(codecs[0], "codecs", codecs) if codecs else ()
    for codec in inner:
        if isinstance(codec, BloscCodec) and codec.cname.value == "lz4":
            return "blosc-lz4"
        if isinstance(codec, ZstdCodec):
            return "zstd"
    return None


def _open_arrays(url: str, paths: Iterable[str], run_id: str) -> dict[str, ArrayV3]:
    """The store's arrays at ``paths``, opened once per build (``run_id``) and process.

    Opening an array reads and parses its ``zarr.json``: for 16 arrays at every shard that
    was a good part of the time the build held the GIL. Within one build the store's layout
    does not change; without a ``run_id`` (a shard written on its own) arrays are opened anew.
    """
    paths = list(paths)
    if not run_id:
        root = _open_group(url, mode="r+")
        # A group's member may be a group too: the store's layout makes these v3 arrays.
        return {path: cast("ArrayV3", root[path]) for path in paths}
    key = (run_id, url)
    with _opened_lock:
        known = _opened.setdefault(key, {})
        for old in [k for k in _opened if k[0] != run_id]:  # an earlier build's
            del _opened[old]
        missing = [path for path in paths if path not in known]
        if missing:
            root = _open_group(url, mode="r+")
            for path in missing:
                array = cast("ArrayV3", root[path])  # a v3 array, as above
                known[path] = (array, ShardedArray.for_array(array))
        return {path: known[path][0] for path in paths}


def _sharded(url: str, path: str, array: ArrayV3, run_id: str) -> ShardedArray | None:
    """``ShardedArray.for_array(array)``, the one made by :func:`_open_arrays` when cached."""
    known = _opened.get((run_id, url), {}).get(path) if run_id else None
    return known[1] if known is not None else ShardedArray.for_array(array)


def direct_arrays(
    url: str, paths: Iterable[str], start: int, run_id: str
) -> dict[str, ShardedArray]:
    """The arrays whose shard at row ``start`` is written from one compressed chunk a sample.

    Keyed by path; arrays of another layout (not :class:`ShardedArray`'s, or chunks of
    several samples) are left out and go through zarr.
    """
    paths = list(paths)
    targets = _open_arrays(url, paths, run_id)
    direct = {}
    for path in paths:
        sharded = _sharded(url, path, targets[path], run_id)
        if sharded is not None and start % sharded.shard_shape[0] == 0:
            if sharded.chunk_shape[0] == 1:
                direct[path] = sharded
    return direct


def write_shard(
    url: str,
    start: int,
    arrays: dict[str, np.ndarray],
    empty: Iterable[str] = (),
    run_id: str = "",
    encoded: dict[str, list[bytes | None]] | None = None,
) -> None:
    """Write whole shards (rows ``start``..) of every array: one object per array.

    A shard without its index part is rewritten whole. Should an earlier, killed build have
    left a shard object that cannot be decoded (zarr reads the old shard while writing), that
    object is deleted and the shard written again.

    Args:
        url: The store.
        start: First row of the shard.
        arrays: Shard data by array path.
        empty: Array paths whose shard holds only the fill value (e.g. NAIP outside the US):
            nothing is written, as zarr stores no empty chunk, and an object left by an
            earlier, killed build is deleted. Skipping them saves checking every pixel.
        run_id: The build this shard belongs to: its arrays are opened once per build.
        encoded: Arrays given as their shard's compressed chunks instead (one per sample, in
            order, None where not stored: :func:`direct_arrays`); emptied as they are written.
    """
    empty = list(empty)
    encoded = encoded if encoded is not None else {}
    targets = _open_arrays(url, [*arrays, *empty, *encoded], run_id)
    _remove_shard_partials(url, targets, start)
    if encoded:
        chunks = []
        for path in list(encoded):
            sharded = _sharded(url, path, targets[path], run_id)
            assert sharded is not None and sharded.chunk_shape[0] == 1, path
            chunks.append((sharded, start // sharded.shard_shape[0], encoded.pop(path)))
        write_encoded_shards(chunks)
    # The layout las build creates is written shard by shard directly (the bytes zarr would
    # write, at a fraction of its per-chunk cost); any other array through zarr.
    direct = []
    for path, data in arrays.items():
        sharded = _sharded(url, path, targets[path], run_id)
        if sharded is not None and start % sharded.shard_shape[0] == 0:
            direct.append((sharded, start // sharded.shard_shape[0], data))
    write_shards(direct)
    done = {sharded.path for sharded, _, _ in direct}
    rest = {path: data for path, data in arrays.items() if path.strip("/") not in done}

    async def write_all() -> list[BaseException | None]:
        # All arrays at once on zarr's event loop: their encoding and stores overlap.
        return await asyncio.gather(
            *(
                targets[path].async_array.setitem(slice(start, start + data.shape[0]), data)
                for path, data in rest.items()
            ),
            return_exceptions=True,
        )

    for (path, data), error in zip(rest.items(), sync(write_all()), strict=True):
        if error is None:
            continue
        if not isinstance(error, Exception) or not _delete_shard(url, path, targets[path], start):
            raise error
        targets[path][start : start + data.shape[0]] = data
    for path in empty:
        _delete_shard(url, path, targets[path], start)


def _local_path(url: str) -> str | None:
    fs, root = fsspec.core.url_to_fs(url)
    return root.rstrip("/") if _is_local(fs) else None


def _remove_partials(url: str) -> None:
    """Delete every file zarr left half-written (killed mid-write) in a local store."""
    root = _local_path(url)
    if root is None or not os.path.isdir(root):
        return  # an object store's PUT is atomic: nothing is left half-written
    for folder, _, names in os.walk(root):
        for name in names:
            if _ZARR_PARTIAL.fullmatch(name):
                os.unlink(os.path.join(folder, name))


def _remove_shard_partials(url: str, arrays: dict[str, ArrayV3], start: int) -> None:
    """Delete the files a killed build left half-written beside the shard at row ``start``.

    Without this they would stay in the store of a resumed build, which is then no longer
    byte-identical to an uninterrupted one. Only the writer of the shard (it holds the shard)
    calls this, so no write in progress is touched.
    """
    root = _local_path(url)
    if root is None:
        return
    for path, array in arrays.items():
        if array.shards is None:
            continue
        coords = (start // array.shards[0],) + (0,) * (array.ndim - 1)
        key = array.metadata.encode_chunk_key(coords)
        folder, name = os.path.split(os.path.join(root, path.strip("/"), key))
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for other in names:
            match = _ZARR_PARTIAL.fullmatch(other)
            if match and match.group("stem") == name:
                os.unlink(os.path.join(folder, other))


def _delete_shard(url: str, path: str, array: ArrayV3, start: int) -> bool:
    """Delete the shard object of ``array`` holding row ``start``; False if there is none."""
    assert array.shards is not None
    coords = (start // array.shards[0],) + (0,) * (array.ndim - 1)
    key = array.metadata.encode_chunk_key(coords)
    fs, root = fsspec.core.url_to_fs(url)
    target = f"{root.rstrip('/')}/{path}/{key}"
    if not fs.exists(target):
        return False
    fs.rm_file(target)
    return True


_OUTPUT_ENTRIES = (
    ("las.zarr", True, "the Zarr store"),
    ("index-parts", True, "the shards' index parts"),
    ("index.parquet", False, "the index"),
)


def check_output_paths(output: str) -> None:
    """Refuse, before anything is built, an output whose entries are the wrong kind.

    The store and the index parts are folders, the index a file: a file where a folder goes
    (or the reverse) would otherwise fail every shard, or the index after the last one.

    Raises:
        ValueError: Naming the path and what to do.
    """
    fs, root = fsspec.core.url_to_fs(output)
    for name, folder, what in _OUTPUT_ENTRIES:
        path = f"{root.rstrip('/')}/{name}"
        wrong = fs.isfile(path) if folder else fs.isdir(path)
        if wrong:
            kind = "a file" if folder else "a folder"
            raise ValueError(
                f"{output.rstrip('/')}/{name} is {kind}, where the build writes {what}: move "
                "it away or choose another output.path"
            )


def abort_unfinished_uploads(output: str) -> int:
    """Abort the multipart uploads a killed build left under ``output`` (S3 only).

    s3fs uploads an object of 100 MiB or more (an aerial-image shard at full size) in parts,
    and the object appears only when the upload completes: a build killed meanwhile leaves
    no object, so the shard is rebuilt, but its parts stay stored (and billed) until the
    upload is aborted. Only one build of an output runs at a time, so an upload under it that
    is unfinished when the next build starts belongs to a build that is gone.

    Credentials that may not list or abort uploads are only logged: the build goes on (a
    bucket lifecycle rule ``AbortIncompleteMultipartUpload`` does the same).

    Returns:
        How many uploads were aborted.
    """
    fs, root = fsspec.core.url_to_fs(output)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if not {"s3", "s3a"} & set(protocols):
        return 0
    try:
        return _abort_uploads(fs, output, root)
    except Exception as err:
        if not is_storage_error(err):
            raise
        log.warning(
            "could not abort the unfinished uploads under %s (%s): parts of a killed build's "
            "uploads may stay stored; a lifecycle rule AbortIncompleteMultipartUpload on the "
            "bucket removes them",
            output,
            describe_storage_error(err),
        )
        return 0


def _abort_uploads(fs: Any, output: str, root: str) -> int:
    """:func:`abort_unfinished_uploads` on S3 (its errors raise)."""
    bucket, _, prefix = root.strip("/").partition("/")
    prefix = f"{prefix}/" if prefix else ""
    ours = tuple(f"{prefix}{name}" for name, _, _ in _OUTPUT_ENTRIES)
    uploads: list[dict[str, Any]] = []
    markers: dict[str, str] = {}
    while True:  # a page holds at most 1,000 uploads
        page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers)
        uploads += page.get("Uploads") or []
        if not page.get("IsTruncated"):
            break
        markers = {
            "KeyMarker": page["NextKeyMarker"],
            "UploadIdMarker": page["NextUploadIdMarker"],
        }
    aborted = 0
    for upload in uploads:
        if str(upload["Key"]).startswith(ours):
            fs.call_s3(
                "abort_multipart_upload",
                Bucket=bucket,
                Key=upload["Key"],
                UploadId=upload["UploadId"],
            )
            aborted += 1
    if aborted:
        log.info("aborted %d unfinished uploads under %s (of a killed build)", aborted, output)
    return aborted


def index_part_path(output: str, shard: int) -> str:
    """Where a shard's index part lives; its presence marks the shard complete."""
    return f"{output.rstrip('/')}/index-parts/shard-{shard:06d}.parquet"


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


@contextmanager
def whole_or_absent(url: str) -> Iterator[Any]:
    """A writable file at ``url`` that appears whole when the block ends, or not at all.

    On a local disk it is written aside (``URL.tmp``), flushed to disk and renamed over
    ``url``; an error removes the aside file and leaves what ``url`` held. On object storage
    an upload becomes visible only once complete (one PUT, or a multipart upload completed
    when the file is closed), and one aborted on an error never does.
    """
    fs, fs_path = fsspec.core.url_to_fs(url)
    if not _is_local(fs):
        f = fs.open(fs_path, "wb")
        try:
            yield f
        except BaseException:
            f.discard()  # aborts a multipart upload begun (s3fs)
            f.closed = True  # so that closing it does not upload what it holds
            raise
        f.close()
        return
    fs.makedirs(fs_path.rsplit("/", 1)[0], exist_ok=True)
    tmp = fs_path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fs_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_index_part(output: str, shard: int, rows: list[dict[str, Any]]) -> None:
    """Write a shard's index rows atomically: the part is there whole or not at all."""
    buffer = io.BytesIO()
    frame = pd.DataFrame(rows)
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
            frame[column] = frame[column].map(json.dumps)
    frame.to_parquet(buffer, index=False)
    with whole_or_absent(index_part_path(output, shard)) as f:
        f.write(buffer.getvalue())


def shard_done(output: str, shard: int) -> bool:
    """Whether a shard finished (its index part exists)."""
    fs, fs_path = fsspec.core.url_to_fs(index_part_path(output, shard))
    fs.invalidate_cache(fs_path.rsplit("/", 1)[0])
    return bool(fs.exists(fs_path))


def done_shards(output: str) -> set[int]:
    """The shards that finished (one listing of ``index-parts/``, not one request per shard)."""
    folder = index_part_path(output, 0).rsplit("/", 1)[0]
    fs, fs_path = fsspec.core.url_to_fs(folder)
    fs.invalidate_cache(fs_path)
    try:
        names = fs.ls(fs_path, detail=False)
    except FileNotFoundError:
        return set()
    done = set()
    for name in names:
        match = _PART.fullmatch(str(name).rstrip("/").rsplit("/", 1)[-1])
        if match:
            done.add(int(match.group(1)))
    return done


class BuildLocked(ValueError):  # noqa: N818 - the CLI reports ValueErrors as one-line errors
    """Another ``las build`` is building the same output."""


LOCK_NAME = ".las-build.lock"
"""The file a running build holds in a local output folder (removed when the build ends)."""


@contextmanager
def build_lock(output: str) -> Iterator[None]:
    """Hold the output's build lock while the body runs; fail at once if another build does.

    Two builds of one output would build the same shards twice and race on the index. The lock
    is an advisory ``flock`` on ``OUTPUT/.las-build.lock``, which the kernel drops when its
    process dies, so a build killed with ``kill -9`` leaves nothing to clean up: the next build
    takes the file over. The file names its holder (pid, host, start) for the error and is
    removed when the build ends. Object storage has no such lock: there, run one build of an
    output at a time (logged). The thread that holds the lock may take it again (nested).

    Raises:
        BuildLocked: Another process holds the lock (the error names it and what to do).
        OutputUnreachable: The lock file cannot be created (a folder in its place, the
            output not writable).
    """
    fs, root = fsspec.core.url_to_fs(output)
    if not _is_local(fs) or fcntl is None:
        log.info("no build lock on %s: run one build of it at a time", output)
        yield
        return
    path = os.path.join(os.path.abspath(root), LOCK_NAME)
    key = (path, threading.get_ident())
    with _held_lock:
        nested = key in _held
        _held[key] = _held.get(key, 0) + 1
    if nested:
        try:
            yield
        finally:
            _release_nested(key)
        return
    try:
        fd = _locked_fd(output, path)
    except BaseException:
        _release_nested(key)
        raise
    _held_fds.add(fd)
    try:
        since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(
            fd, f"las build pid {os.getpid()} on {socket.gethostname()} since {since}".encode()
        )
        yield
    finally:
        _release_nested(key)
        # Still holding it, so no other build is between its open and lock. Already gone
        # (removed by hand, or with the output) is no error of the build's.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _held_fds.discard(fd)
        os.close(fd)


_held: dict[tuple[str, int], int] = {}  # (lock file, thread) -> depth
_held_lock = threading.Lock()
_held_fds: set[int] = set()


def _forget_locks_after_fork() -> None:
    """In a forked worker: close the inherited lock descriptors, forget the held locks.

    The lock belongs to the build's own process. A worker that kept the descriptor would hold
    the lock on after a ``kill -9`` of that process, and the next build would find it taken
    until the orphan ends (its shards are complete or absent whichever way it ends).
    """
    global _held_lock
    for fd in _held_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_fds.clear()
    _held.clear()
    _held_lock = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_after_fork)


def _release_nested(key: tuple[str, int]) -> None:
    with _held_lock:
        _held[key] -= 1
        if not _held[key]:
            del _held[key]


def _locked_fd(output: str, path: str) -> int:
    """An open descriptor of ``path`` that holds its ``flock``.

    Raises:
        BuildLocked: Another process holds it.
        OutputUnreachable: The lock file cannot be created or opened.
    """
    assert fcntl is not None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # a folder in its place, a read-only output, a full disk
            hint = (
                "a folder is in its place: remove it (the lock is a file)"
                if isinstance(err, IsADirectoryError)
                else storage_hint(output, err)
            )
            raise OutputUnreachable(
                f"cannot create the build lock {path} ({describe_storage_error(err)}): {hint}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise BuildLocked(
                f"{output} is being built by {holder}: wait for that build to finish or stop "
                "it, then run `las build` again (it goes on where that one stopped)"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file while we opened it: lock the new one
