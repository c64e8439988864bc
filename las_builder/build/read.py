"""Read only the needed window of a (remote) COG and reproject it onto a sample GeoBox."""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from las_builder.stac import SceneItem

# GDAL settings for COGs over HTTP: no directory listings, merged range requests, retries.
GDAL_ENV: dict[str, Any] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "30",
    "VSI_CACHE": "TRUE",
}


# rasterio warns "no geotransform" for cross-CRS warps of in-memory arrays although both
# transforms are given; the result equals a WarpedVRT of the dataset pixel for pixel. A
# process-wide filter (set once) because catch_warnings() is not thread-safe.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module="rasterio.warp")


class ReadError(RuntimeError):
    """An asset could not be read; the message names the href and the cause."""


class DatasetCache:
    """Open datasets by href, shared by all the samples of one shard, then closed together.

    Samples of a shard lie close together, so they read the same few assets: opening each once
    saves the header requests that dominate small window reads over HTTP.
    """

    def __init__(self, sign: Callable[[str, str], str] | None = None) -> None:
        self._open: dict[str, DatasetReader] = {}
        self._lock = threading.Lock()
        self._sign = sign

    def asset(self, item: SceneItem, key: str) -> DatasetReader:
        """The open dataset of an item's asset, its href signed when the catalog needs it."""
        href = item.asset(key).href
        if self._sign is not None:
            href = self._sign(href, item.collection)
        return self.get(href)

    def get(self, href: str) -> DatasetReader:
        """The open dataset of ``href`` (opened on first use)."""
        with self._lock:
            ds = self._open.get(href)
            if ds is None:
                shown = href.split("?", 1)[0]  # never print a signing token
                try:
                    ds = rasterio.open(href)
                except rasterio.errors.RasterioIOError as err:
                    raise ReadError(f"cannot open {shown}: {str(err).split('?', 1)[0]}") from None
                if ds.crs is None:
                    ds.close()
                    raise ReadError(f"{shown} has no CRS: it cannot be placed on the sample grid")
                self._open[href] = ds
            return ds

    def close(self) -> None:
        """Close every open dataset."""
        with self._lock:
            for ds in self._open.values():
                ds.close()
            self._open.clear()


@contextmanager
def gdal_env() -> Iterator[None]:
    """The GDAL configuration for reading COGs over HTTP."""
    with rasterio.Env(**GDAL_ENV):
        yield


def _source_window(ds: DatasetReader, geobox: GeoBox, margin_px: int) -> Window | None:
    """The window of ``ds`` that covers ``geobox`` (plus a margin), or None if disjoint."""
    left, bottom, right, top = geobox.boundingbox
    bounds = transform_bounds(geobox.crs.to_wkt(), ds.crs, left, bottom, right, top, densify_pts=21)
    window = from_bounds(*bounds, transform=ds.transform)
    col0 = math.floor(window.col_off) - margin_px
    row0 = math.floor(window.row_off) - margin_px
    col1 = math.ceil(window.col_off + window.width) + margin_px
    row1 = math.ceil(window.row_off + window.height) + margin_px
    col0, row0 = max(col0, 0), max(row0, 0)
    col1, row1 = min(col1, ds.width), min(row1, ds.height)
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def read_onto(
    ds: DatasetReader,
    geobox: GeoBox,
    *,
    bands: list[int] | None = None,
    resampling: Resampling = Resampling.nearest,
    nodata: float | None = None,
    dtype: str | None = None,
    use_overviews: bool = False,
) -> np.ndarray:
    """Read the part of ``ds`` under ``geobox`` and reproject it onto ``geobox``.

    Only the source window that covers the GeoBox is read. With ``use_overviews`` (continuous
    data only), a source much finer than the GeoBox is read decimated, so GDAL serves it from
    the COG's overviews instead of full-resolution tiles.

    Args:
        ds: An open dataset.
        geobox: The target grid.
        bands: 1-based band indexes (default: all).
        resampling: Resampling for the reprojection.
        nodata: Value for pixels without data (default: the dataset's nodata, else 0).
        dtype: Output dtype (default: the dataset's).
        use_overviews: Allow a decimated read when the source is at least twice as fine.

    Returns:
        Array (bands, rows, cols) on ``geobox``.
    """
    bands = bands or list(range(1, ds.count + 1))
    dtype = dtype or ds.dtypes[bands[0] - 1]
    fill = nodata if nodata is not None else (ds.nodata if ds.nodata is not None else 0)
    out = np.full((len(bands), *geobox.shape.yx), fill, dtype=dtype)
    window = _source_window(ds, geobox, margin_px=2)
    if window is None:
        return out
    src_transform = ds.window_transform(window)
    shape = (int(window.height), int(window.width))
    if use_overviews:
        target = abs(geobox.resolution.x)
        source = 0.0 if ds.crs.is_geographic else abs(ds.transform.a)
        factor = int(target / source) if source else 1
        if factor >= 2:
            shape = (max(1, shape[0] // factor), max(1, shape[1] // factor))
            src_transform = src_transform * src_transform.scale(
                window.width / shape[1], window.height / shape[0]
            )
    try:
        data = ds.read(
            bands,
            window=window,
            out_shape=(len(bands), *shape),
            resampling=Resampling.average if use_overviews else Resampling.nearest,
        )
    except rasterio.errors.RasterioIOError as err:
        raise ReadError(f"cannot read {ds.name}: {err}") from None
    src_nodata = ds.nodata if ds.nodata is not None else None
    reproject(
        data,
        out,
        src_transform=src_transform,
        src_crs=ds.crs,
        src_nodata=src_nodata,
        dst_transform=geobox.transform,
        dst_crs=geobox.crs.to_wkt(),
        dst_nodata=fill,
        resampling=resampling,
        num_threads=1,
    )
    return out
