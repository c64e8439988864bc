"""The LAS store: Zarr v3 sharded arrays (one shard = one task) plus per-shard index parts."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import ZstdCodec

from las_builder.build.config import BuildConfig
from las_builder.catalog import LAS_IGNORE, LAS_NODATA, load_taxonomy
from las_builder.catalog.labels import load_label_product
from las_builder.imagery import s2_band_table, sensor

STORE_VERSION = 1


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
            ("sample", "band", *yx),
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
            ("sample", "band", *yx),
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
            ("sample", "band", "y_fine", "x_fine"),
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
        nodata = legend.nodata if legend.nodata is not None else 0
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
                "rule": "majority over products; ties and all-ignore -> ignore",
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


def create_store(
    url: str, n_samples: int, samples_per_shard: int, cfg: BuildConfig, attrs: dict[str, Any]
) -> None:
    """Create ``las.zarr`` (metadata only) unless it exists with the same layout."""
    root = zarr.open_group(url, mode="a", zarr_format=3)
    if root.attrs.get("las_store_version") == STORE_VERSION:
        if root.attrs.get("n_samples") != n_samples:
            raise ValueError(
                f"{url} holds {root.attrs.get('n_samples')} samples, the plan has {n_samples}: "
                "delete it or choose another output path"
            )
        return
    taxonomy = load_taxonomy()
    root.attrs.update(
        {
            "las_store_version": STORE_VERSION,
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
            **attrs,
        }
    )
    for path, spec in array_specs(cfg).items():
        root.create_array(
            path,
            shape=(n_samples, *spec.shape),
            chunks=(1, *spec.shape),
            shards=(samples_per_shard, *spec.shape),
            dtype=spec.dtype,
            fill_value=spec.fill,
            compressors=ZstdCodec(level=3),
            dimension_names=spec.dims,
            attributes=spec.attrs,
            overwrite=True,
        )


def write_shard(url: str, start: int, arrays: dict[str, np.ndarray]) -> None:
    """Write whole shards (rows ``start``..) of every array: one object per array."""
    root = zarr.open_group(url, mode="r+", zarr_format=3)
    for path, data in arrays.items():
        root[path][start : start + data.shape[0]] = data


def index_part_path(output: str, shard: int) -> str:
    """Where a shard's index part lives; its presence marks the shard complete."""
    return f"{output.rstrip('/')}/index-parts/shard-{shard:06d}.parquet"


def write_index_part(output: str, shard: int, rows: list[dict[str, Any]]) -> None:
    """Write a shard's index rows atomically (write aside, then rename)."""
    path = index_part_path(output, shard)
    fs, fs_path = fsspec.core.url_to_fs(path)
    fs.makedirs(fs_path.rsplit("/", 1)[0], exist_ok=True)
    buffer = io.BytesIO()
    frame = pd.DataFrame(rows)
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
            frame[column] = frame[column].map(json.dumps)
    frame.to_parquet(buffer, index=False)
    tmp = fs_path + ".tmp"
    with fs.open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    fs.mv(tmp, fs_path)


def shard_done(output: str, shard: int) -> bool:
    """Whether a shard finished (its index part exists)."""
    fs, fs_path = fsspec.core.url_to_fs(index_part_path(output, shard))
    return bool(fs.exists(fs_path))
