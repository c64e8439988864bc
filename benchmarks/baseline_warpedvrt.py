"""A straightforward per-sample baseline for ``las build``: one WarpedVRT per source and sample.

For every sample of the plan, as a plain script would do it:

1. search the STAC API once per collection for the sample's footprint (pystac-client), and
   pick the scenes the simple way: the Sentinel-2 scene with the lowest ``eo:cloud_cover``,
   the Sentinel-1 scene closest in time to it, a NAIP image that contains the sample, every
   tile of each label product's year (Dynamic World: the tiles of the chosen Sentinel-2 scene);
2. read each asset (the twelve Sentinel-2 bands and SCL, VV and VH, NAIP, every label tile)
   opened afresh over HTTP, wrapped in a ``rasterio.vrt.WarpedVRT`` onto the sample grid;
3. save each as ``.npy``.

Nothing is reused between samples (the pystac-client ``Client`` is opened once per thread).
The baseline does less than the build: it reads no candidate scene's SCL to rank scenes by
cloud over the sample, harmonises nothing, maps and votes no labels, and compresses nothing.

``find="index"`` is a kinder variant for reference: it takes the scenes the build chose (from
its ``index.parquet``) and fetches those items by id instead of searching.

Used by ``benchmarks/build_bench.py``; :func:`sample_sources` is shared with its raw-read bound.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
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
from pystac_client import Client
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from shapely.geometry import mapping, shape

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


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _year(item: Any) -> int:
    props = item.properties
    return int(str(props.get("start_datetime") or props.get("datetime"))[:4])


def searched_sources(
    row: Mapping[str, Any], cfg: BuildConfig, client: Any
) -> tuple[list[tuple[Source, str]], int]:
    """Search the STAC API for a plan row's scenes; returns (source, href) pairs and searches."""
    footprint = row["geometry"]
    grid = sample_grid(row)
    searches = 0

    def search(
        collection: str, start: dt.datetime | None = None, end: dt.datetime | None = None
    ) -> list[Any]:
        nonlocal searches
        searches += 1
        when = f"{_iso(start)}/{_iso(end)}" if start and end else None
        found = client.search(
            collections=[collection], intersects=mapping(footprint), datetime=when
        )
        return sorted(found.items(), key=lambda it: it.id)

    out: list[tuple[Source, str]] = []
    s2 = None
    if cfg.s2_collection:
        scenes = search(cfg.s2_collection, cfg.start, cfg.end)
        if not scenes:
            return [], searches
        s2 = min(scenes, key=lambda it: (it.properties.get("eo:cloud_cover", 100.0), it.id))
        for band in (*S2_BANDS, "SCL"):
            resampling = Resampling.nearest if band == "SCL" else Resampling.bilinear
            source = Source(f"s2-{band}", cfg.s2_collection, s2.id, band, resampling, grid)
            out.append((source, s2.assets[band].href))
    if cfg.s1_collection:
        margin = dt.timedelta(days=30)
        scenes = search(cfg.s1_collection, cfg.start - margin, cfg.end + margin)
        if scenes:
            when = s2.datetime if s2 is not None else cfg.start
            s1 = min(scenes, key=lambda it: (abs((it.datetime - when).total_seconds()), it.id))
            for pol in ("vv", "vh"):
                source = Source(
                    f"s1-{pol}", cfg.s1_collection, s1.id, pol, Resampling.bilinear, grid
                )
                out.append((source, s1.assets[pol].href))
    if cfg.naip_collection:
        for image in search(cfg.naip_collection):
            if shape(image.geometry).contains(footprint):
                fine = sample_grid(row, cfg.naip_factor)
                source = Source(
                    "naip", cfg.naip_collection, image.id, "image", Resampling.average, fine
                )
                out.append((source, image.assets["image"].href))
                break
    for spec in cfg.labels:
        tiles = search(spec.collection)
        if spec.year is not None:
            tiles = [t for t in tiles if _year(t) == spec.year]
        else:
            tiles = [t for t in tiles if s2 and t.properties.get("dynamicworld:s2_item") == s2.id]
        for k, tile in enumerate(tiles):
            source = Source(
                f"labels-{spec.product}-{k}",
                spec.collection,
                tile.id,
                spec.asset,
                Resampling.nearest,
                grid,
            )
            out.append((source, tile.assets[spec.asset].href))
    return out, searches


def baseline_sample_searched(
    row: Mapping[str, Any], cfg: BuildConfig, client: Any, out_dir: Path
) -> dict[str, float]:
    """Build one plan row the straightforward way: search, then a WarpedVRT per source."""
    sample_dir = out_dir / str(row["sample_id"])
    sample_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    with rasterio.Env(**GDAL_ENV):
        sources, searches = searched_sources(row, cfg, client)
        for source, href in sources:
            data = warp_read(href, source.grid, source.resampling)
            np.save(sample_dir / f"{source.name}.npy", data)
            written += data.nbytes
    return {"reads": len(sources), "searches": searches, "bytes": written}


def run_baseline(
    rows: Iterable[Mapping[str, Any]],
    cfg: BuildConfig,
    stac_url: str,
    out_dir: Path,
    threads: int = 1,
    find: str = "search",
) -> dict[str, float | str]:
    """Run the baseline over ``rows`` (``threads`` samples at a time); time it.

    Args:
        rows: Plan rows (``find="search"``) or the build's index rows (``find="index"``).
        cfg: The build configuration of the recipe.
        stac_url: The STAC API.
        out_dir: Where the ``.npy`` files go.
        threads: Samples processed at a time.
        find: ``"search"``: search STAC per sample (the baseline); ``"index"``: fetch the
            items the build chose by id.
    """
    rows = list(rows)
    local = threading.local()

    def one(row: Mapping[str, Any]) -> dict[str, float]:
        if find == "index":
            return baseline_sample(row, cfg, stac_url, out_dir)
        if not hasattr(local, "client"):
            local.client = Client.open(stac_url)
        return baseline_sample_searched(row, cfg, local.client, out_dir)

    started = time.perf_counter()
    if threads <= 1:
        results = [one(row) for row in rows]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(one, rows))
    seconds = time.perf_counter() - started
    return {
        "samples": len(rows),
        "threads": threads,
        "find": find,
        "seconds": seconds,
        "reads": sum(r["reads"] for r in results),
        "searches": sum(r.get("searches", 0) for r in results),
        "items_fetched": sum(r.get("items", 0) for r in results),
        "bytes_written": sum(r["bytes"] for r in results),
    }
