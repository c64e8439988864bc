"""A straightforward per-sample baseline for ``las build``: one WarpedVRT per source and sample.

For every sample of a built index it reads exactly the sources the build chose (the Sentinel-2
scene's twelve bands and SCL, the Sentinel-1 scene's VV and VH, the NAIP image if any and every
label item of every product), each opened afresh over HTTP, wrapped in a
``rasterio.vrt.WarpedVRT`` onto the sample grid and read whole, then saved as ``.npy``. Nothing
is reused between samples: not the item JSON, not the open datasets.

The sources are those the build *chose*; the build additionally reads the SCL of every candidate
Sentinel-2 scene to choose one, and harmonises, maps and votes labels. The baseline does none
of that, so it does less work than the build.

Used by ``benchmarks/build_bench.py``; :func:`sample_sources` is shared with its raw-read bound.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import requests
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from las_builder.build.config import BuildConfig
from las_builder.build.read import GDAL_ENV
from las_builder.imagery import S2_BANDS


@dataclass(frozen=True)
class Grid:
    """A sample grid: CRS, affine transform, width and height."""

    crs: str
    transform: Affine
    width: int
    height: int


@dataclass(frozen=True)
class Source:
    """One asset a sample needs and how it lands on the sample grid."""

    name: str  # output file stem, e.g. "s2-B04", "labels-esa-worldcover-0"
    collection: str
    item_id: str
    asset: str
    resampling: Resampling
    grid: Grid


def sample_grid(row: Mapping[str, Any], zoom: int = 1) -> Grid:
    """The sample's grid (``zoom`` times finer for NAIP)."""
    transform = Affine(*row["transform"])
    rows, cols = (int(v) for v in row["shape"])
    if zoom != 1:
        transform = transform * Affine.scale(1 / zoom)
    return Grid(f"EPSG:{int(row['epsg'])}", transform, cols * zoom, rows * zoom)


def _item_ids(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return list(json.loads(value))
    return list(value)


def _present(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def sample_sources(row: Mapping[str, Any], cfg: BuildConfig) -> list[Source]:
    """Every asset the build read into the sample's arrays (from its ``index.parquet`` row)."""
    grid = sample_grid(row)
    out: list[Source] = []
    if cfg.s2_collection and _present(row.get("s2_item")):
        for band in (*S2_BANDS, "SCL"):
            resampling = Resampling.nearest if band == "SCL" else Resampling.bilinear
            out.append(
                Source(f"s2-{band}", cfg.s2_collection, row["s2_item"], band, resampling, grid)
            )
    if cfg.s1_collection and _present(row.get("s1_item")):
        for pol in ("vv", "vh"):
            out.append(
                Source(
                    f"s1-{pol}", cfg.s1_collection, row["s1_item"], pol, Resampling.bilinear, grid
                )
            )
    if cfg.naip_collection and _present(row.get("naip_item")):
        out.append(
            Source(
                "naip",
                cfg.naip_collection,
                row["naip_item"],
                "image",
                Resampling.average,  # as the build: NAIP is averaged onto its finer grid
                sample_grid(row, cfg.naip_factor),
            )
        )
    for spec in cfg.labels:
        for k, item_id in enumerate(_item_ids(row.get(f"{spec.product}_items"))):
            out.append(
                Source(
                    f"labels-{spec.product}-{k}",
                    spec.collection,
                    item_id,
                    spec.asset,
                    Resampling.nearest,
                    grid,
                )
            )
    return out


def fetch_item(stac_url: str, collection: str, item_id: str) -> dict[str, Any]:
    """The served STAC item JSON (one plain GET, no session reuse)."""
    url = f"{stac_url.rstrip('/')}/collections/{collection}/items/{item_id}"
    response = requests.get(url, timeout=30)
    response.raise_for_status()
    item: dict[str, Any] = response.json()
    return item


def warp_read(href: str, grid: Grid, resampling: Resampling) -> np.ndarray:
    """Open ``href``, wrap it in a WarpedVRT onto ``grid`` and read every band."""
    with rasterio.open(href) as src:
        with WarpedVRT(
            src,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=resampling,
        ) as vrt:
            return vrt.read()


def baseline_sample(
    row: Mapping[str, Any], cfg: BuildConfig, stac_url: str, out_dir: Path
) -> dict[str, float]:
    """Build one sample the straightforward way; returns its read count and bytes written."""
    sample_dir = out_dir / str(row["sample_id"])
    sample_dir.mkdir(parents=True, exist_ok=True)
    items: dict[tuple[str, str], dict[str, Any]] = {}  # this sample's items only
    reads = 0
    written = 0
    with rasterio.Env(**GDAL_ENV):
        for source in sample_sources(row, cfg):
            key = (source.collection, source.item_id)
            if key not in items:
                items[key] = fetch_item(stac_url, source.collection, source.item_id)
            href = items[key]["assets"][source.asset]["href"]
            data = warp_read(href, source.grid, source.resampling)
            np.save(sample_dir / f"{source.name}.npy", data)
            reads += 1
            written += data.nbytes
    return {"reads": reads, "items": len(items), "bytes": written}


def run_baseline(
    rows: Iterable[Mapping[str, Any]],
    cfg: BuildConfig,
    stac_url: str,
    out_dir: Path,
    threads: int = 1,
) -> dict[str, float]:
    """Run :func:`baseline_sample` over ``rows`` (``threads`` samples at a time); time it."""
    rows = list(rows)
    started = time.perf_counter()
    if threads <= 1:
        results = [baseline_sample(row, cfg, stac_url, out_dir) for row in rows]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(lambda r: baseline_sample(r, cfg, stac_url, out_dir), rows))
    seconds = time.perf_counter() - started
    return {
        "samples": len(rows),
        "threads": threads,
        "seconds": seconds,
        "reads": sum(r["reads"] for r in results),
        "items_fetched": sum(r["items"] for r in results),
        "bytes_written": sum(r["bytes"] for r in results),
    }
