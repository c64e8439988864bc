"""The native grids of the public products, as odc-geo GeoBoxes.

Every product of the world is cut from its real global lattice (UTM 10/20/60 m pixels, the
1/12000 degree ESA WorldCover grid, the MODIS sinusoidal tiles, ...), so a pixel of the world
sits exactly where a pixel of the real product would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import CRS, Transformer

MODIS_SINUSOIDAL = CRS.from_proj4(
    "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"
)
# Upper-left corner of MODIS tile h00v00 in the sinusoidal projection.
MODIS_ORIGIN = (-20015109.354, 10007554.677)

_MGRS_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_MGRS_COLUMNS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_MGRS_ROWS = "ABCDEFGHJKLMNPQRSTUV"


def utm_zone(lon: float) -> int:
    """UTM zone number of a longitude (180 is zone 1, as in the MGRS)."""
    return int(math.floor((lon + 180.0) / 6.0)) % 60 + 1


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone of a point."""
    return (32600 if lat >= 0 else 32700) + utm_zone(lon)


def mgrs_tile(lon: float, lat: float, zone: int | None = None) -> str:
    """MGRS 100 km square name of a point, as Sentinel-2 names its tiles (e.g. ``32UNU``).

    Args:
        lon: Longitude in degrees.
        lat: Latitude in degrees (-80 to 84).
        zone: Force this UTM zone (a tile of a neighbouring zone overlapping the point).
    """
    zone = zone or utm_zone(lon)
    band = _MGRS_BANDS[min(int((lat + 80) // 8), len(_MGRS_BANDS) - 1)]
    epsg = (32600 if lat >= 0 else 32700) + zone
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    column = _MGRS_COLUMNS[(zone - 1) % 3][int(x // 100_000) - 1]
    row = _MGRS_ROWS[(int(y // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone:02d}{band}{column}{row}"


def snapped_geobox(
    bounds: tuple[float, float, float, float], crs: CRS | int | str, resolution: float
) -> GeoBox:
    """The smallest GeoBox on the ``resolution`` lattice (origin 0, 0) that covers ``bounds``."""
    left, bottom, right, top = bounds
    x0 = math.floor(round(left / resolution, 6)) * resolution
    x1 = math.ceil(round(right / resolution, 6)) * resolution
    y0 = math.floor(round(bottom / resolution, 6)) * resolution
    y1 = math.ceil(round(top / resolution, 6)) * resolution
    shape = (round((y1 - y0) / resolution), round((x1 - x0) / resolution))
    return GeoBox(shape, Affine(resolution, 0, x0, 0, -resolution, y1), crs)


def pixel_to_crs(
    geobox: GeoBox, cols: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Map pixel coordinates (column, row; corners at integers) to the GeoBox's CRS."""
    t = geobox.transform
    return t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f


def _edge_pixels(geobox: GeoBox, points_per_side: int) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = geobox.shape
    t = np.linspace(0, 1, points_per_side)
    cols = np.concatenate([t * nx, np.full_like(t, nx), (1 - t) * nx, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * ny, np.full_like(t, ny), (1 - t) * ny])
    return cols, rows


def boundary_lonlat(geobox: GeoBox, points_per_side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Longitudes and latitudes along the edge of a GeoBox (densified)."""
    xs, ys = pixel_to_crs(geobox, *_edge_pixels(geobox, points_per_side))
    assert geobox.crs is not None  # every grid of the world has a CRS
    to_ll = Transformer.from_crs(geobox.crs.to_wkt(), 4326, always_xy=True)
    lon, lat = to_ll.transform(np.asarray(xs), np.asarray(ys))
    return np.asarray(lon), np.asarray(lat)


def lonlat_pieces(geobox: GeoBox) -> list[tuple[float, float, float, float]]:
    """Geographic bounds of a GeoBox, split in two where it crosses the antimeridian."""
    lon, lat = boundary_lonlat(geobox)
    south, north = float(lat.min()), float(lat.max())
    if lon.max() - lon.min() > 180:  # crosses 180: east and west pieces
        east_side = lon[lon > 0]
        west_side = lon[lon < 0]
        return [
            (float(east_side.min()), south, 180.0, north),
            (-180.0, south, float(west_side.max()), north),
        ]
    return [(float(lon.min()), south, float(lon.max()), north)]


def utm_zones(geobox: GeoBox) -> list[int]:
    """UTM zones whose longitude range the GeoBox touches, its own zone first."""
    lon, lat = boundary_lonlat(geobox)
    assert geobox.crs is not None  # every grid of the world has a CRS
    centre_lon, _ = Transformer.from_crs(geobox.crs.to_wkt(), 4326, always_xy=True).transform(
        *pixel_to_crs(geobox, np.array(geobox.shape[1] / 2), np.array(geobox.shape[0] / 2))
    )
    zones = [utm_zone(float(centre_lon))]
    for z in sorted({utm_zone(float(v)) for v in lon}):
        if z not in zones:
            zones.append(z)
    return zones


def utm_geobox(geobox: GeoBox, zone: int, resolution: float, south: bool) -> GeoBox:
    """Cover ``geobox`` on the ``resolution`` lattice of a UTM zone."""
    epsg = (32700 if south else 32600) + zone
    assert geobox.crs is not None  # every grid of the world has a CRS
    to_utm = Transformer.from_crs(geobox.crs.to_wkt(), epsg, always_xy=True)
    xs, ys = to_utm.transform(*pixel_to_crs(geobox, *_edge_pixels(geobox, 16)))
    return snapped_geobox((min(xs), min(ys), max(xs), max(ys)), epsg, resolution)


@dataclass(frozen=True)
class LatticeTile:
    """A cut-out of one tile of a global tiled lattice."""

    column: int
    row: int
    geobox: GeoBox


def lattice_tiles(
    bounds: tuple[float, float, float, float],
    crs: CRS | int | str,
    origin: tuple[float, float],
    pixel: float,
    tile_px: int,
) -> list[LatticeTile]:
    """Cut ``bounds`` into the tiles of a global lattice (origin is the upper-left corner).

    Pixel indices are computed as integers from the origin, so pixels sit exactly on the
    product's global lattice however far from the origin they are.
    """
    left, bottom, right, top = bounds
    ox, oy = origin
    c0 = math.floor(round((left - ox) / pixel, 6))
    c1 = math.ceil(round((right - ox) / pixel, 6))
    r0 = math.floor(round((oy - top) / pixel, 6))
    r1 = math.ceil(round((oy - bottom) / pixel, 6))
    tiles = []
    for tr in range(r0 // tile_px, (r1 - 1) // tile_px + 1):
        for tc in range(c0 // tile_px, (c1 - 1) // tile_px + 1):
            a0, a1 = max(c0, tc * tile_px), min(c1, (tc + 1) * tile_px)
            b0, b1 = max(r0, tr * tile_px), min(r1, (tr + 1) * tile_px)
            transform = Affine(pixel, 0, ox + a0 * pixel, 0, -pixel, oy - b0 * pixel)
            tiles.append(LatticeTile(tc, tr, GeoBox((b1 - b0, a1 - a0), transform, crs)))
    return tiles


def sinusoidal_bounds(
    piece: tuple[float, float, float, float],
) -> tuple[float, float, float, float]:
    """Bounds in MODIS sinusoidal of a geographic box (edges densified)."""
    west, south, east, north = piece
    t = np.linspace(0, 1, 32)
    lon = np.concatenate(
        [
            west + t * (east - west),
            np.full_like(t, east),
            east - t * (east - west),
            np.full_like(t, west),
        ]
    )
    lat = np.concatenate(
        [
            np.full_like(t, north),
            north - t * (north - south),
            np.full_like(t, south),
            south + t * (north - south),
        ]
    )
    xs, ys = Transformer.from_crs(4326, MODIS_SINUSOIDAL, always_xy=True).transform(lon, lat)
    return float(np.min(xs)), float(np.min(ys)), float(np.max(xs)), float(np.max(ys))


def worldcover_tile_name(tile: LatticeTile, tile_deg: float) -> str:
    """ESA WorldCover tile name from its lower-left corner, e.g. ``N42W096``."""
    lon = -180 + tile.column * tile_deg
    lat = 90 - (tile.row + 1) * tile_deg
    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
    return f"{ns}{abs(int(lat)):02d}{ew}{abs(int(lon)):03d}"
