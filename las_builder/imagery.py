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


def asset_key(item: SceneItem, sensor_id: str, band: str) -> str:
    """The asset key of ``band`` in ``item``, whichever catalog's naming the item uses.

    Planetary Computer names Sentinel-2 assets by band (``B04``, ``SCL``); Earth Search by
    common name (``red``, ``scl``). The sensor definition in ``catalog/sensors`` lists both.
    """
    if band in item.assets:
        return band
    spec = sensor(sensor_id)
    entries = [
        *spec.get("bands", []),
        *([spec["scl"] | {"name": spec["scl"]["asset"]}] if "scl" in spec else []),
    ]
    for entry in entries:
        if entry["name"] == band:
            alias = entry.get("earth_search")
            if alias and alias in item.assets:
                return str(alias)
    raise KeyError(
        f"item {item.id}: no asset for {sensor_id} band {band!r}; "
        f"assets: {', '.join(sorted(item.assets))}"
    )


def s2_band_table() -> list[dict[str, Any]]:
    """Band names, centre wavelengths (µm) and widths of Sentinel-2 L2A, in array order."""
    return [dict(b) for b in sensor("sentinel-2-l2a")["bands"]]


def s2_offset_dn(item: SceneItem, band: str = "B04") -> int:
    """The BOA offset (in DN) to subtract from an item's reflectance digital numbers.

    Processing baseline 04.00 and later add +1000 to every L2A reflectance. In order:

    1. Items flagged ``earthsearch:boa_offset_applied: true`` (Earth Search's older
       ``sentinel-2-l2a``, whose COGs it harmonised) need nothing.
    2. A processing baseline before 04.00 needs nothing: its pixels never had the offset,
       whatever ``raster:bands`` says (Earth Search's older items repeat ``-0.1`` on items
       of every baseline).
    3. A ``raster:bands`` offset on the band, when a catalog declares one (``-0.1`` in
       reflectance with scale ``0.0001`` is 1000 DN): Earth Search collection 1
       (``sentinel-2-c1-l2a``) keeps the offset in its pixels and says so there.
    4. Otherwise ``s2:processing_baseline``: 1000 DN from 04.00 on.

    Earth Search's older ``sentinel-2-l2a`` has 04.00+ items flagged ``false`` whose COGs
    were harmonised all the same (Element84/earth-search#66, #71): metadata cannot tell them
    apart, so they get 1000 DN subtracted; its collection 1 has no such flag.
    """
    spec = sensor("sentinel-2-l2a")["boa_offset"]
    # Only a true flag: "false" or 0 from a catalog must not read as applied.
    if item.properties.get("earthsearch:boa_offset_applied") is True:
        return 0
    baseline = item.processing_baseline
    if baseline is not None and baseline < spec["from_baseline"]:
        return 0
    try:
        bands = item.asset(asset_key(item, "sentinel-2-l2a", band)).bands
    except KeyError:
        bands = ()
    for b in bands:
        if b.offset and b.scale:
            return int(round(-b.offset / b.scale))
    if baseline is not None and baseline >= spec["from_baseline"]:
        return int(spec["dn"])
    return 0


S2_SATURATED = 65535
"""L2A's special value for a saturated pixel: the BOA offset does not move it (nor 0, nodata)."""


def harmonize_s2(dn: np.ndarray, item: SceneItem) -> np.ndarray:
    """Remove the BOA offset so DN/10000 is reflectance for every baseline.

    0 stays nodata and 65535 stays saturated: a 04.00 product writes both special values
    without the offset, so subtracting it from 65535 would make a plausible reflectance.
    """
    offset = s2_offset_dn(item)
    out = dn.astype(np.int32)
    valid = (out > 0).all(axis=0)
    if offset:
        saturated = out == S2_SATURATED
        out = np.clip(out - offset, 1, 65535)
        out[saturated] = S2_SATURATED
    out[:, ~valid] = 0
    return out.astype(np.uint16)


def s2_nodata(arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """Where a sample has no Sentinel-2 data: SCL 0, or a band without a value (0).

    Bands can lack data where SCL has a class (a 60 m band's edge inside a 10 m band's
    swath); harmonised bands are then 0 in every band, and the pixel holds no image.

    Returns:
        A boolean ``(H, W)`` mask, or None when the sample has no Sentinel-2 arrays.
    """
    scl, bands = arrays.get("sentinel-2-scl"), arrays.get("sentinel-2")
    if scl is None and bands is None:
        return None
    gap = np.zeros(next(a for a in (scl, bands) if a is not None).shape[-2:], dtype=bool)
    if scl is not None:
        gap |= scl == 0
    if bands is not None:
        gap |= (bands == 0).any(axis=0)
    return gap


def s1_to_units(linear: np.ndarray, units: str) -> np.ndarray:
    """Sentinel-1 backscatter in linear power (as served) or decibels; NaN stays NaN."""
    if units == "linear":
        return linear.astype(np.float32)
    if units == "db":
        with np.errstate(divide="ignore", invalid="ignore"):
            return (10 * np.log10(np.where(linear > 0, linear, np.nan))).astype(np.float32)
    raise ValueError(f"Sentinel-1 units {units!r}: use 'linear' or 'db'")
