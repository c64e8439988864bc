"""Adversarial sample grids: poles on edges, huge and tiny pixels, margins, determinism.

Every expectation is computed independently with pyproj (points of the grid projected to
longitude/latitude) or from the EPSG database, not copied from :mod:`las_builder.geobox`.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys

import numpy as np
import pytest
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from shapely.geometry.base import BaseGeometry

from las_builder.geobox import (
    UPS_NORTH,
    UPS_SOUTH,
    geobox_footprint,
    sample_crs,
    sample_geobox,
)
from las_builder.world.grids import snapped_geobox


def _lonlat(gb: GeoBox, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions of a GeoBox projected to lon/lat with pyproj."""
    assert gb.crs is not None and gb.crs.epsg is not None
    t = gb.transform
    x, y = t.c + t.a * cols + t.b * rows, t.f + t.d * cols + t.e * rows
    lon, lat = Transformer.from_crs(gb.crs.epsg, 4326, always_xy=True).transform(x, y)
    return np.asarray(lon), np.asarray(lat)


def _covered(fp: BaseGeometry, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return np.asarray(shapely.covers(fp, shapely.points(lon, lat)))


def _assert_footprint_is_the_box(
    gb: GeoBox, fp: BaseGeometry, seed: int = 0, margin_px: float = 0.0
) -> None:
    """Points inside the box are in the footprint; points 1 % of an edge (or twice the
    margin) outside are not."""
    assert fp.is_valid and not fp.is_empty
    west, south, east, north = fp.bounds
    assert -180 <= west <= east <= 180 and -90 <= south <= north <= 90
    ny, nx = gb.shape
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.01, 0.99, (300, 2))
    inside = _covered(fp, *_lonlat(gb, u[:, 0] * nx, u[:, 1] * ny))
    assert inside.all(), f"{(~inside).sum()} points of the grid are outside its footprint"
    t, side = rng.uniform(0, 1, 300), rng.integers(0, 4, 300)
    e = max(0.01, 2 * margin_px / min(nx, ny))
    cols = np.select([side == 0, side == 1], [np.full(300, -e), np.full(300, 1 + e)], t)
    rows = np.select([side == 2, side == 3], [np.full(300, -e), np.full(300, 1 + e)], t)
    outside = _covered(fp, *_lonlat(gb, cols * nx, rows * ny))
    assert not outside.any(), f"{outside.sum()} points outside the grid are in its footprint"


def _ups_point(epsg: int, dx: float, dy: float) -> tuple[float, float]:
    """Lon/lat of the point (dx, dy) metres from the pole in a UPS CRS (pole at 2000 km)."""
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(2e6 + dx, 2e6 + dy)
    return float(lon), float(lat)


# ------------------------------------------------------------------- poles on an edge


@pytest.mark.parametrize("epsg", [UPS_NORTH, UPS_SOUTH])
@pytest.mark.parametrize("size_px", [128, 33, 1])
@pytest.mark.parametrize(
    "where",
    [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (1, 1, 0), (-1, 1, 0), (1, 0, 3), (1, 0, -3)],
)
def test_a_pole_on_an_edge_or_corner(epsg: int, size_px: int, where: tuple) -> None:
    # Centres half an edge from the pole (+- 3 m, which snaps onto the same lattice line) put
    # the pole on an edge or a corner: the footprint used to lose half the box or gain a
    # hemisphere.
    sx, sy, shift = where
    half = size_px * 10.0 / 2
    lon, lat = _ups_point(epsg, sx * half + shift, sy * half)
    gb = sample_geobox(lon, lat, size_px, 10.0)
    assert gb.crs is not None and gb.crs.epsg == epsg
    fp = geobox_footprint(gb)
    _assert_footprint_is_the_box(gb, fp)
    pole = 90.0 if epsg == UPS_NORTH else -90.0
    # The pole itself (at the longitudes of the box's inside, seen from the pole) is covered.
    col, row = ~gb.transform * Transformer.from_crs(4326, epsg, always_xy=True).transform(0.0, pole)
    assert min(abs(col), abs(col - size_px), abs(row), abs(row - size_px)) < 1e-6  # on the edge
    ny, nx = gb.shape
    towards = _lonlat(gb, np.array([(col + nx / 2) / 2]), np.array([(row + ny / 2) / 2]))[0]
    assert fp.covers(shapely.Point(float(towards[0]), pole))


@pytest.mark.parametrize("margin_px", [0.0, 1.0])
def test_a_box_around_a_pole_covers_it_at_every_longitude(margin_px: float) -> None:
    # Centred on the north pole; 111 m from the south pole with a 330 m box.
    for lon, lat, size, res in [(0.0, 90.0, 64, 10.0), (17.0, -89.999, 33, 10.0)]:
        gb = sample_geobox(lon, lat, size, res)
        fp = geobox_footprint(gb, margin_px=margin_px)
        _assert_footprint_is_the_box(gb, fp, margin_px=margin_px)
        pole = 90.0 if lat > 0 else -90.0
        assert _covered(fp, np.linspace(-180, 180, 37), np.full(37, pole)).all()


def test_a_utm_box_reaching_over_the_pole() -> None:
    # 2000 km in UTM zone 31 from 83.9N: the pole (677 km away) is inside a transverse
    # Mercator box, not a UPS one.
    gb = sample_geobox(3.0, 83.9, 20_000, 100.0)
    assert gb.crs is not None and gb.crs.epsg == 32631
    fp = geobox_footprint(gb)
    _assert_footprint_is_the_box(gb, fp)
    assert _covered(fp, np.linspace(-180, 180, 37), np.full(37, 90.0)).all()


# ------------------------------------------------------------------- a sweep against pyproj


def _sweep(n: int, seed: int) -> list[tuple[float, float, int, float]]:
    rng = np.random.default_rng(seed)
    cases: list[tuple[float, float, int, float]] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # near the antimeridian
            lon, lat = 180 + rng.normal(0, 0.02), rng.uniform(-80, 84)
        elif kind == 1:  # near a pole
            lon, lat = rng.uniform(-180, 180), rng.choice([-1, 1]) * (90 - rng.exponential(0.01))
        elif kind == 2:  # on a UTM zone edge
            lon, lat = float(rng.integers(-30, 30) * 6), rng.uniform(-80, 84)
        else:  # on the UTM / UPS boundaries
            lon, lat = rng.uniform(-180, 180), float(rng.choice([84.0, 84.0001, -80.0, -80.0001]))
        size = int(rng.choice([1, 32, 33, 256]))
        res = float(rng.choice([10.0, 20.0, 0.6]))
        cases.append((float(lon), float(lat), size, res))
    return cases


@pytest.mark.parametrize(("lon", "lat", "size_px", "res"), _sweep(48, seed=7))
def test_sweep_of_edge_points(lon: float, lat: float, size_px: int, res: float) -> None:
    gb = sample_geobox(lon, lat, size_px, res)
    assert gb.crs is not None and gb.crs.epsg == sample_crs(lon, lat)
    assert tuple(gb.shape.yx) == (size_px, size_px)
    fp = geobox_footprint(gb)
    _assert_footprint_is_the_box(gb, fp)
    assert fp.covers(shapely.Point(((lon + 180) % 360) - 180, lat)) or size_px == 1
    if fp.geom_type == "MultiPolygon":  # split at 180: the two pieces meet there
        pieces = sorted(fp.geoms, key=lambda g: g.bounds[0])
        assert pieces[0].bounds[0] == -180.0 and pieces[-1].bounds[2] == 180.0


# ------------------------------------------------------------------- margins


@pytest.mark.parametrize(
    ("lon", "lat", "size_px", "res"),
    [
        (0.0, 89.99, 128, 10.0),  # 1 km from the pole: chords cut 0.2 px into the box
        (30.0, 85.5, 10_000, 10.0),  # 100 km in UPS: chords cut 2 px in
        (-60.0, -82.0, 10_000, 10.0),
        (179.95, -16.5, 256, 10.0),
        (-93.6, 42.0, 10_000, 10.0),
    ],
)
def test_a_margin_footprint_covers_the_whole_grid(
    lon: float, lat: float, size_px: int, res: float
) -> None:
    gb = sample_geobox(lon, lat, size_px, res)
    fp = geobox_footprint(gb, margin_px=0.5)
    s = np.linspace(0, 1, 2001)
    n = float(size_px)
    cols = np.concatenate([s * n, np.full_like(s, n), s * n, np.zeros_like(s)])
    rows = np.concatenate([np.zeros_like(s), s * n, np.full_like(s, n), s * n])
    edge = _covered(fp, *_lonlat(gb, cols, rows))
    assert edge.all(), f"{(~edge).sum()} points on the grid's true edge are outside"
    # ... and it is only a little larger: points 1 px out (twice the margin) are not in it.
    out = _covered(
        fp, *_lonlat(gb, np.concatenate([cols, s * n]), np.concatenate([rows, s * 0 - 1]))
    )
    assert not out[np.concatenate([np.abs(cols - n / 2) > n / 2, np.ones(s.size, bool)])].any()


def test_bad_footprint_arguments() -> None:
    gb = sample_geobox(10.0, 50.0, 16, 10.0)
    with pytest.raises(ValueError, match="margin_px"):
        geobox_footprint(gb, margin_px=-1)
    with pytest.raises(ValueError, match="points_per_side"):
        geobox_footprint(gb, points_per_side=1)
    with pytest.raises(ValueError, match="no CRS"):
        geobox_footprint(GeoBox((4, 4), Affine(1, 0, 0, 0, -1, 0), None))


# ------------------------------------------------------------------- the lattice and sizes


@pytest.mark.parametrize("res", [10.0, 20.0, 60.0, 0.6, 0.3, 1 / 3, 2.5, 463.3127165])
@pytest.mark.parametrize("size_px", [1, 2, 33, 256, 10_000])
def test_origin_is_exactly_an_integer_times_the_resolution(size_px: int, res: float) -> None:
    rng = np.random.default_rng(size_px)
    for lon, lat in zip(rng.uniform(-180, 180, 5), rng.uniform(-89, 89, 5), strict=True):
        gb = sample_geobox(lon, lat, size_px, res)
        assert gb.crs is not None and gb.crs.epsg is not None
        x, y = Transformer.from_crs(4326, gb.crs.epsg, always_xy=True).transform(lon, lat)
        edge = size_px * res
        col, row = round((x - edge / 2) / res), round((y + edge / 2) / res)
        assert tuple(gb.transform) == (res, 0.0, col * res, 0.0, -res, row * res, 0.0, 0.0, 1.0)
        assert tuple(gb.shape.yx) == (size_px, size_px)
        # The same grid as the lattice cover of the box (how grids were built so far).
        left, top = col * res, row * res
        assert gb == snapped_geobox((left, top - edge, left + edge, top), gb.crs.epsg, res)


def test_tiny_pixels_keep_the_shape() -> None:
    # 1 nm pixels: pixel indices near 1e15 made the lattice cover one pixel too wide (3 x 4).
    gb = sample_geobox(179.9, -16.5, 3, 1e-9)
    assert tuple(gb.shape.yx) == (3, 3)


@pytest.mark.parametrize(
    ("lon", "lat", "size_px", "res", "match"),
    [
        (math.nan, 0.0, 16, 10.0, "longitude nan"),
        (math.inf, 0.0, 16, 10.0, "longitude inf"),
        (0.0, math.nan, 16, 10.0, "latitude nan"),
        (0.0, -90.5, 16, 10.0, "latitude"),
        (0.0, 0.0, 16, math.inf, "resolution_m"),
        (0.0, 0.0, 16, math.nan, "resolution_m"),
        (0.0, 0.0, 2.5, 10.0, "size_px"),
    ],
)
def test_bad_points_and_sizes_are_clear_errors(
    lon: float, lat: float, size_px: float, res: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        sample_geobox(lon, lat, size_px, res)  # type: ignore[arg-type]


def test_a_grid_too_large_for_its_projection_is_refused() -> None:
    # 40,000 km of transverse Mercator: PROJ has no inverse for much of it (inf).
    with pytest.raises(ValueError, match=r"lon 3\.0, lat 0\.0 .*smaller sample"):
        sample_geobox(3.0, 0.0, 400_000, 100.0)
    huge = GeoBox((400_000, 400_000), Affine(100, 0, -2e7, 0, -100, 2e7), 32631)
    with pytest.raises(ValueError, match="maps back onto the Earth"):
        geobox_footprint(huge)


# ------------------------------------------------------------------- zones and hemispheres


@pytest.mark.parametrize(
    ("lon", "lat"),
    [(0.0, 0.0), (6.0, 10.0), (-174.0, -10.0), (180.0, 0.0), (-180.0, -1e-9), (4.0, 60.0),
     (20.0, 78.0), (8.0, 78.0), (0.0, 84.0), (0.0, -80.0), (-0.0, -0.0), (3.0, 56.0)],
)  # fmt: skip
def test_zone_is_one_whose_epsg_area_holds_the_point(lon: float, lat: float) -> None:
    # The EPSG areas of use are the plain 6 degree zones (no MGRS exceptions), as documented.
    epsg = sample_crs(lon, lat)
    lon_n = ((lon + 180) % 360) - 180
    infos = query_utm_crs_info(
        datum_name="WGS 84",
        area_of_interest=AreaOfInterest(lon_n, lat, lon_n, lat),
    )
    codes = {int(i.code) for i in infos if i.code.startswith(("326", "327"))}
    assert epsg in codes
    assert epsg // 100 == (326 if lat >= 0 else 327)
    if lon_n % 6 == 0:  # on a zone edge: the eastern zone
        assert epsg % 100 == int((lon_n + 180) // 6) % 60 + 1


# ------------------------------------------------------------------- determinism

_POINTS = [(3.0, 0.0, 33), (-93.62, 42.03, 256), (180.0, -16.5487, 32), (0.0, 90.0, 1),
           (12.345678901234, -45.678901234567, 128), (3.0, 60.0, 33)]  # fmt: skip
_SCRIPT = """
import struct, sys
from las_builder.geobox import sample_geobox
for lon, lat, size in {points!r}:
    t = sample_geobox(lon, lat, size, 10.0).transform
    sys.stdout.write(struct.pack("<6d", t.a, t.b, t.c, t.d, t.e, t.f).hex() + "\\n")
"""


def test_the_same_point_gives_the_same_bytes_in_another_process() -> None:
    here = [
        struct.pack("<6d", *tuple(sample_geobox(lon, lat, size, 10.0).transform)[:6]).hex()
        for lon, lat, size in _POINTS
    ]
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(points=_POINTS)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.split() == here
