"""Ground-truth land cover of a world region: a 2 m map with fields, forests, rivers, towns..."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from scipy import ndimage

from las_builder.world.config import Biome, Region, Truth
from las_builder.world.grids import snapped_geobox, utm_epsg
from las_builder.world.noise import rng_for, smooth_field, top_fraction, uniform_field

# Every imagery band (10, 20, 60 m) must nest in the truth grid.
_LATTICE_M = 60.0


def region_geobox(region: Region, size_m: float, resolution_m: float) -> GeoBox:
    """The truth grid of a region: a square in the UTM zone of its centre, on a 60 m lattice."""
    epsg = utm_epsg(region.lon, region.lat)
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(region.lon, region.lat)
    left = math.floor((x - size_m / 2) / _LATTICE_M) * _LATTICE_M
    bottom = math.floor((y - size_m / 2) / _LATTICE_M) * _LATTICE_M
    return snapped_geobox((left, bottom, left + size_m, bottom + size_m), epsg, resolution_m)


def _rotated(xx: np.ndarray, yy: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along and across direction ``angle`` (xx a row, yy a column vector)."""
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return xx * c + yy * s, yy * c - xx * s


def _band(
    rng: np.random.Generator,
    xx: np.ndarray,
    yy: np.ndarray,
    width: float,
    amplitude: float,
    wavelength: float,
) -> np.ndarray:
    """A meandering band (river or road) of ``width`` metres across the region."""
    angle = rng.uniform(0, math.pi)
    _, v = _rotated(xx, yy, angle)
    offset = rng.uniform(-0.25, 0.25) * float(xx.max() - xx.min())
    centre: np.float32 | npt.NDArray[np.floating[Any]] = np.float32(offset)
    for k, amp in ((wavelength, amplitude), (wavelength / 2.7, 0.3 * amplitude)):
        # sin(a x + b y + phase) split into separable products: no per-pixel transcendental.
        a = 2 * math.pi * math.cos(angle) / k
        b = 2 * math.pi * math.sin(angle) / k
        phase = rng.uniform(0, 2 * math.pi)
        sx, cx = np.sin(a * xx).astype(np.float32), np.cos(a * xx).astype(np.float32)
        sy, cy = (
            np.sin(b * yy + phase).astype(np.float32),
            np.cos(b * yy + phase).astype(np.float32),
        )
        centre = centre + np.float32(amp) * (cy * sx + sy * cx)
    return np.abs(v - centre) < width / 2


def generate_truth(
    region: Region, geobox: GeoBox, biome: Biome, truth: Truth, seed: int
) -> np.ndarray:
    """Paint the truth map of one region.

    Args:
        region: The region (its id seeds the random fields).
        geobox: The truth grid (from :func:`region_geobox`).
        biome: Landscape parameters.
        truth: The truth legend (class ids by name).
        seed: World seed.

    Returns:
        A uint8 array of truth class ids, shaped like ``geobox``.
    """
    rng = rng_for(seed, "truth", region.id)
    res = abs(geobox.resolution.x)
    shape = geobox.shape.yx
    ids = {c.name: c.id for c in truth.classes}

    def field(scale_m: float) -> np.ndarray:
        return smooth_field(rng, shape, scale_m / res)

    elevation = field(1800) + 0.5 * field(500)
    # Metric coordinates as a row (x) and a column (y) vector; arithmetic broadcasts.
    xx = (np.arange(shape[1], dtype=np.float32) * res)[None, :]
    yy = (np.arange(shape[0], dtype=np.float32) * res)[:, None]

    # Natural cover: classes take bands of a vegetation field, the first listed the highest.
    vegetation = field(700) + 0.35 * field(150)
    out = np.zeros(shape, dtype=np.uint8)
    remaining = np.ones(shape, dtype=bool)
    names = list(biome.natural)
    total = sum(biome.natural.values())
    for i, name in enumerate(names):
        share = biome.natural[name] / total
        left = sum(biome.natural[n] for n in names[i:]) / total
        mask = (
            remaining if i == len(names) - 1 else top_fraction(vegetation, share / left, remaining)
        )
        out[mask] = ids[name]
        remaining &= ~mask

    # Fields: a rotated mosaic of parcels of random sizes inside the agricultural zone.
    farm = top_fraction(field(1500), biome.agricultural_fraction)
    if farm.any():
        u, v = _rotated(xx, yy, rng.uniform(0, math.pi / 2))
        lo, hi = biome.field_size_m
        span = float(max(xx.max(), yy.max())) * 1.5
        edges_u = np.cumsum(rng.uniform(lo, hi, int(2 * span / lo) + 2)) - span
        edges_v = np.cumsum(rng.uniform(lo, hi, int(2 * span / lo) + 2)) - span
        iu = np.searchsorted(edges_u, u)
        iv = np.searchsorted(edges_v, v)
        draw = rng.random((edges_u.size + 1, edges_v.size + 1)).astype(np.float32)[iu, iv]
        cumulative = 0.0
        weights = biome.field_classes
        field_total = sum(weights.values())
        for name, weight in weights.items():
            lower, cumulative = cumulative, cumulative + weight / field_total
            out[farm & (draw >= lower) & (draw < cumulative)] = ids[name]

    out[top_fraction(field(400), biome.bare_fraction)] = ids["bare"]
    out[top_fraction(elevation, biome.snow_fraction)] = ids["snow-ice"]

    water = top_fraction(-elevation, biome.lake_fraction)
    for _ in range(biome.rivers):
        width = rng.uniform(*biome.river_width_m)
        water |= _band(rng, xx, yy, width, rng.uniform(150, 600), rng.uniform(1500, 4000))
    # Wetlands hug the water: highest where water is near and the ground is low.
    coarse = 5
    near = water[::coarse, ::coarse].astype(np.float32)
    near = ndimage.gaussian_filter(near, 60 / (res * coarse))
    near = np.repeat(np.repeat(near, coarse, 0), coarse, 1)[: shape[0], : shape[1]]
    wet_score = 4 * near - 0.3 * elevation + 0.3 * field(200)
    out[top_fraction(wet_score, biome.wetland_fraction, ~water)] = ids[biome.wetland_class]
    out[water] = ids["water"]

    # Towns: built-up discs with a street grid and a few parks.
    for _ in range(biome.towns):
        cx, cy = rng.uniform(0.2, 0.8, 2) * np.array([float(xx.max()), float(yy.max())])
        radius = rng.uniform(*biome.town_radius_m)
        wobble = 1 + 0.25 * field(300)
        town = (np.hypot(xx - np.float32(cx), yy - np.float32(cy)) < radius * wobble) & ~water
        u, v = _rotated(xx - np.float32(cx), yy - np.float32(cy), rng.uniform(0, math.pi / 2))
        block = rng.uniform(70, 120)
        streets = ((u % block) < 8) | ((v % block) < 8)
        parks = uniform_field(rng, shape, 60 / res) > 0.93
        out[town] = ids["built-up"]
        out[town & parks] = ids["grassland"]
        out[town & streets] = ids["road"]
    for _ in range(biome.roads):
        road = _band(rng, xx, yy, rng.uniform(7, 12), rng.uniform(50, 300), rng.uniform(3000, 8000))
        out[road & ~water] = ids["road"]
    return out
