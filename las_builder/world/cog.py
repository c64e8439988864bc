"""Deterministic Cloud-Optimized GeoTIFF writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox


def write_cog(
    path: Path,
    data: np.ndarray,
    geobox: GeoBox,
    *,
    nodata: float | None,
    categorical: bool,
    band_names: list[str] | None = None,
) -> None:
    """Write ``data`` (bands, rows, cols) or (rows, cols) as a COG on ``geobox``.

    Overviews use nearest for categorical rasters and averaging otherwise, as the real
    products do. The same input always gives the same bytes (no timestamps are written).
    """
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    if (height, width) != tuple(geobox.shape.yx):
        raise ValueError(
            f"{path.name}: data is {height}x{width}, geobox is {tuple(geobox.shape.yx)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    small = max(height, width) <= 256
    assert geobox.crs is not None  # every grid of the world has a CRS
    profile = {
        "driver": "COG",
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype.name,
        "crs": geobox.crs.to_wkt(),
        "transform": geobox.transform,
        "nodata": nodata,
        "compress": "DEFLATE",
        "predictor": 3 if data.dtype.kind == "f" else 2,
        "blocksize": 128 if small else 256,
        "overview_resampling": "NEAREST" if categorical else "AVERAGE",
        "resampling": "NEAREST" if categorical else "AVERAGE",
        "num_threads": 1,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if band_names:
            dst.descriptions = tuple(band_names)
