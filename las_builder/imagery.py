"""Sensor-specific radiometry: Sentinel-2 baseline harmonisation, Sentinel-1 units."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import yaml

from las_builder._paths import catalog_dir
from las_builder.stac import SceneItem


@cache
def sensor(sensor_id: str) -> dict[str, Any]:
    """The sensor definition ``catalog/sensors/<id>.yaml`` as plain data."""
    with (catalog_dir() / "sensors" / f"{sensor_id}.yaml").open() as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


S2_BANDS: tuple[str, ...] = tuple(b["name"] for b in sensor("sentinel-2-l2a")["bands"])


def s2_band_table() -> list[dict[str, Any]]:
    """Band names, centre wavelengths (µm) and widths of Sentinel-2 L2A, in array order."""
    return [dict(b) for b in sensor("sentinel-2-l2a")["bands"]]


def s2_offset_dn(item: SceneItem, band: str = "B04") -> int:
    """The BOA offset (in DN) to subtract from an item's reflectance digital numbers.

    Processing baseline 04.00 and later add +1000 to every L2A reflectance. It is detected from
    ``s2:processing_baseline`` or, where a catalog declares it, the ``raster:bands`` offset
    (Earth Search collection-1 items say -0.1 in reflectance, i.e. 1000 DN). Items whose catalog
    already removed the offset (``earthsearch:boa_offset_applied``) need no correction.
    """
    spec = sensor("sentinel-2-l2a")["boa_offset"]
    if item.properties.get("earthsearch:boa_offset_applied"):
        return 0
    try:
        bands = item.asset(band).bands
    except KeyError:
        bands = ()
    for b in bands:
        if b.offset and b.scale:
            return int(round(-b.offset / b.scale))
    baseline = item.processing_baseline
    if baseline is not None and baseline >= spec["from_baseline"]:
        return int(spec["dn"])
    return 0


def harmonize_s2(dn: np.ndarray, item: SceneItem) -> np.ndarray:
    """Remove the BOA offset so DN/10000 is reflectance for every baseline; 0 stays nodata."""
    offset = s2_offset_dn(item)
    out = dn.astype(np.int32)
    valid = (out > 0).all(axis=0)
    if offset:
        out = np.clip(out - offset, 1, 65535)
    out[:, ~valid] = 0
    return out.astype(np.uint16)


def s1_to_units(linear: np.ndarray, units: str) -> np.ndarray:
    """Sentinel-1 backscatter in linear power (as served) or decibels; NaN stays NaN."""
    if units == "linear":
        return linear.astype(np.float32)
    if units == "db":
        with np.errstate(divide="ignore", invalid="ignore"):
            return (10 * np.log10(np.where(linear > 0, linear, np.nan))).astype(np.float32)
    raise ValueError(f"Sentinel-1 units {units!r}: use 'linear' or 'db'")
