"""Sample grids: the pixel grid of one sample and the global grid that places samples.

A LAS sample is a square of ``size_px`` x ``size_px`` pixels of ``resolution_m`` metres in the
WGS 84 UTM zone of its centre (UPS North above 84N, UPS South below 80S), on the zone's pixel
lattice (the origin is a multiple of the resolution), so that Sentinel-2 pixels of the same
resolution line up with it. :func:`sample_geobox` returns it as an odc-geo
:class:`~odc.geo.geobox.GeoBox`; :func:`geobox_footprint` gives its outline in longitude and
latitude, split in two at the antimeridian.

Samples are placed on an equal-area grid in the style of Major TOM (Francis & Czerkawski,
2024): rows of equal latitude spacing, each row cut into columns of (nearly) equal ground
distance along its parallel. With the row height and column width equal to the sample spacing,
one sample per cell at the cell's centre gives samples that never overlap and cover the land
evenly. Rows and columns are numbered from the equator and the prime meridian exactly as in
Major TOM's ``Grid`` (row ``r`` has its southern edge at ``r * dlat``; ``U`` rows lie north of
the equator, ``D`` rows south; ``R`` columns east of the prime meridian, ``L`` columns west), so
a cell here is the Major TOM cell of the same spacing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from las_builder.world.grids import boundary_lonlat, snapped_geobox, utm_epsg

__all__ = [
    "EARTH_RADIUS_M",
    "UPS_NORTH",
    "UPS_SOUTH",
    "GridCell",
    "cell_at",
    "default_spacing",
    "geobox_footprint",
    "grid_cell",
    "grid_rows",
    "row_columns",
    "sample_crs",
    "sample_geobox",
    "sample_id",
]

EARTH_RADIUS_M = 6_378_137.0
"""Equatorial radius of WGS 84, the sphere radius of the Major TOM grid."""
UPS_NORTH = 32661
"""EPSG code of WGS 84 / UPS North (N,E), used above 84N."""
UPS_SOUTH = 32761
"""EPSG code of WGS 84 / UPS South (N,E), used below 80S."""
SPACING_FACTOR = 1.25
"""Default grid spacing in sample edges: 25 % of a sample's edge between neighbours."""

_FOOTPRINT_POINTS = 16  # points per side of a densified footprint
_SNAP_DIGITS = 9  # grid indices are rounded to this many digits before flooring


def default_spacing(size_px: int, resolution_m: float) -> float:
    """Default distance between sample centres: 1.25 sample edges.

    Args:
        size_px: Sample edge in pixels.
        resolution_m: Pixel size in metres.

    Returns:
        The spacing in metres.

    """
    return SPACING_FACTOR * size_px * resolution_m


def _normalise_lon(lon: float) -> float:
    """Map a longitude into [-180, 180)."""
    return ((float(lon) + 180.0) % 360.0) - 180.0


def _check_lat(lat: float) -> float:
    lat = float(lat)
    if not -90.0 <= lat <= 90.0 or math.isnan(lat):
        raise ValueError(f"latitude {lat} is outside [-90, 90]")
    return lat


def sample_crs(lon: float, lat: float) -> int:
    """EPSG code of the CRS of a sample centred at a point.

    Args:
        lon: Longitude in degrees (any value; normalised to [-180, 180)).
        lat: Latitude in degrees.

    Returns:
        326xx/327xx (WGS 84 UTM zone of the point), 32661 (UPS North) above 84N or
        32761 (UPS South) below 80S.

    """
    lat = _check_lat(lat)
    if lat > 84.0:
        return UPS_NORTH
    if lat < -80.0:
        return UPS_SOUTH
    return utm_epsg(_normalise_lon(lon), lat)


def sample_geobox(lon: float, lat: float, size_px: int, resolution_m: float) -> GeoBox:
    """The pixel grid of a sample centred at a point.

    The box is ``size_px`` x ``size_px`` pixels of ``resolution_m`` in :func:`sample_crs`;
    its corner sits on the CRS's pixel lattice (a multiple of ``resolution_m``), with the
    centre as close to the point as that lattice allows (within half a pixel per axis).

    Args:
        lon: Longitude of the centre in degrees; normalised to [-180, 180), so 180 and -180
            give the same box. A box that crosses the antimeridian is fine.
        lat: Latitude of the centre in degrees.
        size_px: Edge in pixels (> 0).
        resolution_m: Pixel size in metres (> 0).

    Returns:
        The sample's GeoBox.

    Raises:
        ValueError: A size or resolution that is not positive, or a latitude out of range.

    """
    if size_px <= 0 or int(size_px) != size_px:
        raise ValueError(f"size_px must be a positive integer, got {size_px!r}")
    if not resolution_m > 0:
        raise ValueError(f"resolution_m must be > 0, got {resolution_m!r}")
    lon = _normalise_lon(lon)
    epsg = sample_crs(lon, lat)
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    edge = int(size_px) * resolution_m
    left = round((x - edge / 2) / resolution_m) * resolution_m
    top = round((y + edge / 2) / resolution_m) * resolution_m
    return snapped_geobox((left, top - edge, left + edge, top), epsg, resolution_m)


# --------------------------------------------------------------------------- footprints


def _split_antimeridian(polygon: Polygon) -> BaseGeometry:
    """Cut a polygon in unwrapped longitudes into pieces inside [-180, 180]."""
    west, _, east, _ = polygon.bounds
    pieces: list[BaseGeometry] = []
    for shift in (-360.0, 0.0, 360.0):
        if east + shift <= -180.0 or west + shift >= 180.0:
            continue
        moved = shapely.affinity.translate(polygon, xoff=shift)
        part = moved.intersection(box(-180.0, -90.0, 180.0, 90.0))
        if not part.is_empty and part.area > 0:
            pieces.extend(getattr(part, "geoms", [part]))
    pieces = [p for p in pieces if isinstance(p, Polygon) and p.area > 0]
    if len(pieces) == 1:
        return pieces[0]
    return MultiPolygon(pieces)


def geobox_footprint(geobox: GeoBox, points_per_side: int = _FOOTPRINT_POINTS) -> BaseGeometry:
    """Outline of a GeoBox in EPSG:4326 longitude/latitude.

    Edges are densified (``points_per_side`` points each) before they are projected. A box that
    crosses the antimeridian becomes a MultiPolygon of an eastern piece ending at 180 and a
    western piece starting at -180; a box around a pole becomes one polygon that runs from
    -180 to 180 and closes along the pole.

    Args:
        geobox: Any odc-geo GeoBox with a CRS.
        points_per_side: Points per edge.

    Returns:
        A Polygon, or a MultiPolygon split at the antimeridian.

    """
    lon, lat = boundary_lonlat(geobox, points_per_side)
    keep = np.ones(lon.size, dtype=bool)  # drop repeated corners
    keep[1:] = (np.diff(lon) != 0) | (np.diff(lat) != 0)
    lon, lat = lon[keep], lat[keep]
    unwrapped = np.rad2deg(np.unwrap(np.deg2rad(lon)))
    if abs(unwrapped[-1] - unwrapped[0]) > 180.0:  # the closed ring winds round a pole
        return _polar_footprint(unwrapped, lat)
    centre = (unwrapped.min() + unwrapped.max()) / 2
    offset = 360.0 * math.floor((centre + 180.0) / 360.0)
    ring = Polygon(np.column_stack([unwrapped - offset, lat]))
    if not ring.is_valid:
        ring = shapely.make_valid(ring)
        ring = max(getattr(ring, "geoms", [ring]), key=lambda g: g.area)
    return _split_antimeridian(ring)


def _polar_footprint(unwrapped: np.ndarray, lat: np.ndarray) -> BaseGeometry:
    """Footprint of a box containing a pole, as one polygon capped at the pole."""
    pole = 90.0 if lat.mean() > 0 else -90.0
    if unwrapped[-1] < unwrapped[0]:  # make longitude increase along the ring
        unwrapped, lat = unwrapped[::-1], lat[::-1]
    # Repeat the ring over two turns and cut it at -180 and 180.
    lon2 = np.concatenate([unwrapped, unwrapped[1:] + (unwrapped[-1] - unwrapped[0])])
    lat2 = np.concatenate([lat, lat[1:]])
    base = 360.0 * math.floor((lon2[0] + 180.0) / 360.0) - 180.0
    start_lon = base + 360.0 if lon2[0] > base else base
    lat_start = float(np.interp(start_lon, lon2, lat2))
    inside = (lon2 > start_lon) & (lon2 < start_lon + 360.0)
    coords = [(-180.0, lat_start)]
    coords += list(zip(lon2[inside] - start_lon - 180.0, lat2[inside], strict=True))
    coords += [(180.0, lat_start), (180.0, pole), (-180.0, pole)]
    return shapely.make_valid(Polygon(coords))


# --------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class GridCell:
    """One cell of the equal-area sample grid.

    Attributes:
        row: Row index; row ``r`` spans latitudes ``[r * dlat, (r + 1) * dlat)`` (negative
            south of the equator).
        col: Column index; column ``c`` spans longitudes ``[c * dlon, (c + 1) * dlon)`` of its
            row (negative west of the prime meridian).
        dlat: Row height in degrees.
        dlon: Column width of this row in degrees.

    """

    row: int
    col: int
    dlat: float
    dlon: float

    @property
    def south(self) -> float:
        """Latitude of the southern edge."""
        return self.row * self.dlat

    @property
    def west(self) -> float:
        """Longitude of the western edge."""
        return self.col * self.dlon

    @property
    def centre(self) -> tuple[float, float]:
        """Longitude (in [-180, 180)) and latitude of the cell's centre."""
        lat = min((self.row + 0.5) * self.dlat, 90.0)
        return _normalise_lon((self.col + 0.5) * self.dlon), lat

    @property
    def name(self) -> str:
        """Row and column in Major TOM notation, zero padded: ``0421U_1203R``."""
        row = f"{self.row:04d}U" if self.row >= 0 else f"{-self.row:04d}D"
        col = f"{self.col:04d}R" if self.col >= 0 else f"{-self.col:04d}L"
        return f"{row}_{col}"


def grid_rows(spacing_m: float) -> tuple[float, int, int]:
    """Latitude spacing and row range of the grid.

    Args:
        spacing_m: Cell size in metres (> 0).

    Returns:
        ``(dlat, first_row, last_row)``: row height in degrees and the lowest and highest row
        indices (rows south of the equator are negative).

    """
    if not spacing_m > 0:
        raise ValueError(f"spacing_m must be > 0, got {spacing_m!r}")
    n = math.ceil(math.pi * EARTH_RADIUS_M / spacing_m)
    dlat = 180.0 / n
    first = -math.floor(round(90.0 / dlat, _SNAP_DIGITS))
    last = math.ceil(round(90.0 / dlat, _SNAP_DIGITS)) - 1
    return dlat, first, last


def row_columns(row: int, spacing_m: float) -> tuple[float, int, int]:
    """Column width and column range of one row.

    The number of columns is the row's southern parallel's circumference (on the sphere of
    radius :data:`EARTH_RADIUS_M`) divided by the spacing, rounded up, as in Major TOM.

    Args:
        row: Row index.
        spacing_m: Cell size in metres.

    Returns:
        ``(dlon, first_col, last_col)``; columns cover [-180, 180) once.

    """
    dlat, _, _ = grid_rows(spacing_m)
    lat = row * dlat
    circumference = 2 * math.pi * EARTH_RADIUS_M * math.cos(math.radians(lat))
    n = max(1, math.ceil(round(circumference / spacing_m, _SNAP_DIGITS)))
    dlon = 360.0 / n
    first = -math.floor(round(180.0 / dlon, _SNAP_DIGITS))
    return dlon, first, first + n - 1


def grid_cell(lon: float, lat: float, spacing_m: float) -> GridCell:
    """The grid cell that contains a point.

    Args:
        lon: Longitude in degrees (normalised to [-180, 180)).
        lat: Latitude in degrees.
        spacing_m: Cell size in metres.

    Returns:
        The cell.

    """
    lat = _check_lat(lat)
    lon = _normalise_lon(lon)
    dlat, first, last = grid_rows(spacing_m)
    row = min(max(math.floor(round(lat / dlat, _SNAP_DIGITS)), first), last)
    return cell_at(
        row, math.floor(round(lon / row_columns(row, spacing_m)[0], _SNAP_DIGITS)), spacing_m
    )


def cell_at(row: int, col: int, spacing_m: float) -> GridCell:
    """The cell at a row and column; a column outside the row wraps round the globe.

    Args:
        row: Row index.
        col: Column index (wrapped into the row's range).
        spacing_m: Cell size in metres.

    Returns:
        The cell.

    """
    dlat, first_row, last_row = grid_rows(spacing_m)
    if not first_row <= row <= last_row:
        raise ValueError(f"row {row} is outside the grid's rows {first_row}..{last_row}")
    dlon, first, last = row_columns(row, spacing_m)
    n = last - first + 1
    col = (col - first) % n + first
    return GridCell(row=int(row), col=int(col), dlat=dlat, dlon=dlon)


def sample_id(
    lon: float,
    lat: float,
    spacing_m: float,
    *,
    resolution_m: float | None = None,
    size_px: int | None = None,
) -> str:
    """Stable id of the grid cell of a point, e.g. ``10m128px_0421U_1203R``.

    The prefix names the grid: ``{resolution}m{size}px`` when ``resolution_m`` and
    ``size_px`` are given and ``spacing_m`` is their default spacing (1.25 sample edges);
    ``{resolution}m{size}px{spacing}s`` when the spacing differs; ``{spacing}m`` when only the
    spacing is known. Ids are unique within one grid; every point of a cell has the same id.

    Args:
        lon: Longitude in degrees.
        lat: Latitude in degrees.
        spacing_m: Grid cell size in metres.
        resolution_m: Pixel size of the samples in metres.
        size_px: Sample edge in pixels.

    Returns:
        The id.

    """
    cell = grid_cell(lon, lat, spacing_m)
    if resolution_m is not None and size_px is not None:
        prefix = f"{resolution_m:g}m{size_px}px"
        if not math.isclose(spacing_m, default_spacing(size_px, resolution_m)):
            prefix += f"{spacing_m:g}s"
    else:
        prefix = f"{spacing_m:g}m"
    return f"{prefix}_{cell.name}"
