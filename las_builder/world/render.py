"""Shared rendering steps: class fractions at a coarser pixel, and resampling onto a grid."""

from __future__ import annotations

import numpy as np
from odc.geo.geobox import GeoBox
from rasterio.warp import Resampling, reproject


def class_fractions(truth: np.ndarray, factor: int, n_classes: int) -> np.ndarray:
    """Fraction of each class id (0..n_classes) in every ``factor`` x ``factor`` block.

    Returns:
        float32 array (n_classes + 1, rows // factor, cols // factor); index 0 is nodata.
    """
    h, w = truth.shape[0] // factor, truth.shape[1] // factor
    block = (np.arange(h)[:, None] // 1 * w + np.arange(w)[None, :]).astype(np.int64)
    block = np.repeat(np.repeat(block, factor, 0), factor, 1)
    k = n_classes + 1
    counts = np.bincount(
        (block * k + truth[: h * factor, : w * factor]).ravel(), minlength=h * w * k
    )
    return (counts.reshape(h, w, k).transpose(2, 0, 1) / float(factor * factor)).astype(np.float32)


def block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks of the last two axes (NaN-propagating)."""
    *lead, h, w = data.shape
    out: np.ndarray = data.reshape(*lead, h // factor, factor, w // factor, factor).mean(
        axis=(-3, -1)
    )
    return out


def resample(
    data: np.ndarray,
    src: GeoBox,
    dst: GeoBox,
    resampling: Resampling,
    nodata: float,
) -> np.ndarray:
    """Resample (bands, rows, cols) or (rows, cols) data from ``src`` onto ``dst``.

    When both grids are the same the data is returned as is, so aligned products stay exact.
    """
    if src == dst:
        return data
    assert src.crs is not None and dst.crs is not None  # every grid of the world has a CRS
    squeeze = data.ndim == 2
    source = data[None] if squeeze else data
    out = np.full((source.shape[0], *dst.shape.yx), nodata, dtype=source.dtype)
    reproject(
        source,
        out,
        src_transform=src.transform,
        src_crs=src.crs.to_wkt(),
        src_nodata=nodata,
        dst_transform=dst.transform,
        dst_crs=dst.crs.to_wkt(),
        dst_nodata=nodata,
        resampling=resampling,
        num_threads=1,
    )
    return out[0] if squeeze else out
