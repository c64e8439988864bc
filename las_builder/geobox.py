"""Sample grids: the pixel grid of one sample and the global grid that places samples.

A LAS sample is a square of ``size_px`` x ``size_px`` pixels of ``resolution_m`` metres in the
WGS 84 UTM zone of its centre (UPS North above 84N, UPS South below 80S), on the zone's pixel
lattice (the origin is a multiple of the resolution), so that Sentinel-2 pixels of the same
resolution line up with it. :func:`sample_geobox` returns it as an odc-geo
:class:`~odc.geo.geobox.GeoBox`; :func:`geobox_footprint` gives its outline in longitude and
latitude, split in two at the antimeridian.

The zone is the plain 6 degree zone of the centre's longitude (zone 1 starts at 180W; a centre
on a zone edge takes the eastern zone; latitude 0 is the northern hemisphere, EPSG:326xx). The
MGRS exceptions are *not* applied: a sample in 56N-64N, 3E-6E is in zone 31 (not 32V), and in
Svalbard (72N-84N, 0E-42E) samples use zones 31 to 37 including 32, 34 and 36, which MGRS and
Sentinel-2 leave out there. Sentinel-2 tiles of those areas are in another zone than the sample
and are reprojected (not copied pixel for pixel); the grids stay what they have always been, so
existing plans rebuild identically.

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

import functools
import math
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from las_builder.world.grids import _edge_pixels, boundary_lonlat, pixel_to_crs, utm_epsg

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
# A pole closer than this (metres) to a grid's edge is taken to lie on it: PROJ's longitude of a
# point millimetres from a pole is noise, so such an edge cannot be unwrapped reliably.
_POLE_TOLERANCE_M = 0.01
_POLE_ARC_POINTS = 9  # points of the small arc that goes round a pole lying on an edge
# A grid whose edge does not project to lon/lat and back within this many pixels (or this many
# metres, PROJ's own precision, for tiny pixels) is refused.
_ROUND_TRIP_PX = 0.01
_ROUND_TRIP_M = 1e-6
_MAX_REFINE_ROUNDS = 16  # bisections of a margin footprint's chords


def _crs_key(geobox: GeoBox) -> int | str:
    """The GeoBox's CRS as an EPSG code where it has one (cheap to hash), else as WKT."""
    if geobox.crs is None:
        raise ValueError("the GeoBox has no CRS")
    return geobox.crs.epsg or geobox.crs.to_wkt()


@functools.lru_cache(maxsize=256)
def _transformer(src: int | str, dst: int | str) -> Transformer:
    """A cached always-xy transformer (building one costs milliseconds, using it microseconds)."""
    return Transformer.from_crs(src, dst, always_xy=True)


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


def _check_lon(lon: float) -> float:
    lon = float(lon)
    if not math.isfinite(lon):
        raise ValueError(f"longitude {lon} is not a finite number")
    return lon


def sample_crs(lon: float, lat: float) -> int:
    """EPSG code of the CRS of a sample centred at a point.

    Args:
        lon: Longitude in degrees (any value; normalised to [-180, 180)).
        lat: Latitude in degrees.

    Returns:
        326xx/327xx (WGS 84 UTM zone of the point; 326xx from latitude 0 up, no MGRS
        exceptions), 32661 (UPS North) above 84N or 32761 (UPS South) below 80S.

    Raises:
        ValueError: A latitude outside [-90, 90] or a longitude that is not finite.

    """
    lat = _check_lat(lat)
    lon = _check_lon(lon)
    if lat > 84.0:
        return UPS_NORTH
    if lat < -80.0:
        return UPS_SOUTH
    return utm_epsg(_normalise_lon(lon), lat)


def sample_geobox(lon: float, lat: float, size_px: int, resolution_m: float) -> GeoBox:
    """The pixel grid of a sample centred at a point.

    The box is ``size_px`` x ``size_px`` pixels of ``resolution_m`` in :func:`sample_crs`;
    its corner sits on the CRS's pixel lattice (a multiple of ``resolution_m``), with the
    centre as close to the point as that lattice allows (within half a pixel per axis; an exact
    tie, which only a centre on a lattice line with an odd ``size_px`` meets, goes to the even
    pixel index, as Python's ``round`` does).

    Args:
        lon: Longitude of the centre in degrees; normalised to [-180, 180), so 180 and -180
            give the same box. A box that crosses the antimeridian is fine.
        lat: Latitude of the centre in degrees.
        size_px: Edge in pixels (> 0).
        resolution_m: Pixel size in metres (> 0).

    Returns:
        The sample's GeoBox.

    Raises:
        ValueError: A size or resolution that is not positive and finite, a latitude out of
            range, a longitude that is not finite, or a box so large that its edge leaves the
            part of the projection that maps back onto the Earth (the message names the point).

    """
    if size_px <= 0 or int(size_px) != size_px:
        raise ValueError(f"size_px must be a positive integer, got {size_px!r}")
    if not (resolution_m > 0 and math.isfinite(resolution_m)):
        raise ValueError(f"resolution_m must be a finite number > 0, got {resolution_m!r}")
    lon = _normalise_lon(_check_lon(lon))
    epsg = sample_crs(lon, lat)
    x, y = _transformer(4326, epsg).transform(lon, lat)
    size, res = int(size_px), float(resolution_m)
    edge = size * res
    # Integer pixel indices first, then the origin from them: the shape is exactly size_px
    # and the origin is exactly index * resolution (the same floats on every platform).
    col = round((x - edge / 2) / res)
    row = round((y + edge / 2) / res)
    geobox = GeoBox((size, size), Affine(res, 0.0, col * res, 0.0, -res, row * res), epsg)
    where = f"the sample at lon {lon}, lat {lat} ({size} px of {res:g} m, EPSG:{epsg})"
    _check_round_trip(geobox, *_edge_pixels(geobox, _FOOTPRINT_POINTS), where)
    return geobox


def _check_round_trip(geobox: GeoBox, cols: np.ndarray, rows: np.ndarray, where: str) -> None:
    """Refuse a grid whose edge points do not map to the Earth and back onto themselves.

    A transverse Mercator grid thousands of kilometres wide reaches where the projection has no
    inverse (PROJ answers ``inf``) or folds; its footprint would be nonsense.
    """
    crs = _crs_key(geobox)
    xs, ys = pixel_to_crs(geobox, cols, rows)
    lon, lat = _transformer(crs, 4326).transform(xs, ys)
    x2, y2 = _transformer(4326, crs).transform(lon, lat)
    pixel = min(_pixel_sizes(geobox))
    err = np.hypot(np.asarray(x2) - xs, np.asarray(y2) - ys)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all() and np.isfinite(err).all()) or (
        err.max() > max(_ROUND_TRIP_PX * pixel, _ROUND_TRIP_M)
    ):
        raise ValueError(
            f"{where} reaches beyond where its projection maps back onto the Earth "
            f"({geobox.shape[1]} x {geobox.shape[0]} px); use a smaller sample (size_px or "
            "resolution_m)"
        )


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


def geobox_footprint(
    geobox: GeoBox, points_per_side: int = _FOOTPRINT_POINTS, *, margin_px: float = 0.0
) -> BaseGeometry:
    """Outline of a GeoBox in EPSG:4326 longitude/latitude.

    Edges are densified (``points_per_side`` points each) before they are projected. A box that
    crosses the antimeridian becomes a MultiPolygon of an eastern piece ending at 180 and a
    western piece starting at -180; a box around a pole becomes one polygon that runs from
    -180 to 180 and closes along the pole; a box with a pole on its edge or corner (within
    1 cm) runs along the pole (latitude +-90) over the longitudes the box spans there.

    With ``margin_px = 0`` the outline is the box's edge, up to the chords between densified
    points: those can cut inside the true, curved edge (by a few centimetres for a 256 px
    sample at 85N; by a fifth of a pixel for a 128 px, 10 m sample 1 km from a pole). With
    ``margin_px > 0`` the edge is pushed out by that many pixels and chords are bisected until
    none cuts more than half the margin into it, so the outline covers the whole grid: what a
    STAC search needs to find a scene that only just touches the sample.

    Args:
        geobox: Any odc-geo GeoBox with a CRS.
        points_per_side: Points per edge (at least 2).
        margin_px: Margin in pixels of the GeoBox (>= 0).

    Returns:
        A Polygon, or a MultiPolygon split at the antimeridian.

    Raises:
        ValueError: A GeoBox without a CRS, a bad ``points_per_side`` or ``margin_px``, or a
            box that reaches where its projection does not map back onto the Earth.

    """
    if geobox.crs is None:
        raise ValueError("the GeoBox has no CRS, so it has no footprint in longitude/latitude")
    if int(points_per_side) != points_per_side or points_per_side < 2:
        raise ValueError(f"points_per_side must be an integer >= 2, got {points_per_side!r}")
    if not (math.isfinite(margin_px) and margin_px >= 0):
        raise ValueError(f"margin_px must be a finite number >= 0, got {margin_px!r}")
    ny, nx = geobox.shape
    rect = (-margin_px, -margin_px, nx + margin_px, ny + margin_px)
    pole = _pole_on_edge(geobox, rect)
    where = f"the grid in {geobox.crs} with transform {tuple(geobox.transform)[:6]}"
    if pole is None and margin_px == 0:
        # The outline plans have always had: keeps existing plans byte-identical.
        cols, rows = _edge_pixels(geobox, points_per_side)
        _check_round_trip(geobox, cols, rows, where)
        lon, lat = boundary_lonlat(geobox, points_per_side)
    else:
        cols, rows, at_pole = _ring_pixels(geobox, rect, points_per_side, pole)
        _check_round_trip(geobox, cols, rows, where)
        lon, lat = _pixels_lonlat(geobox, cols, rows)
        if margin_px > 0:
            cols, rows, at_pole, lon, lat = _refine(
                geobox, cols, rows, at_pole, lon, lat, margin_px / 2
            )
        if pole is not None:
            lat[at_pole] = pole[2]  # the arc round the pole is the pole itself
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


def _pixel_sizes(geobox: GeoBox) -> tuple[float, float]:
    """Ground size of a pixel along its columns and rows, in CRS units."""
    t = geobox.transform
    return math.hypot(t.a, t.d), math.hypot(t.b, t.e)


def _pixels_lonlat(
    geobox: GeoBox, cols: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    lon, lat = _transformer(_crs_key(geobox), 4326).transform(*pixel_to_crs(geobox, cols, rows))
    return np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)


def _pole_on_edge(
    geobox: GeoBox, rect: tuple[float, float, float, float]
) -> tuple[float, float, float] | None:
    """``(col, row, latitude)`` of a pole within :data:`_POLE_TOLERANCE_M` of the box's edge.

    The pole is moved onto the edge (onto a corner when it is that close to two sides).
    """
    crs = _crs_key(geobox)
    c0, r0, c1, r1 = rect
    px_x, px_y = _pixel_sizes(geobox)
    tol_c = _POLE_TOLERANCE_M / px_x
    tol_r = _POLE_TOLERANCE_M / px_y
    for pole_lat in (90.0, -90.0):
        x, y = _transformer(4326, crs).transform(0.0, pole_lat)
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        col, row = ~geobox.transform * (x, y)
        if not (c0 - tol_c <= col <= c1 + tol_c and r0 - tol_r <= row <= r1 + tol_r):
            continue  # outside, clear of the edge
        snapped_col = c0 if abs(col - c0) <= tol_c else c1 if abs(col - c1) <= tol_c else None
        snapped_row = r0 if abs(row - r0) <= tol_r else r1 if abs(row - r1) <= tol_r else None
        if snapped_col is None and snapped_row is None:
            continue  # inside, clear of the edge: the ring winds round it
        return (
            snapped_col if snapped_col is not None else min(max(col, c0), c1),
            snapped_row if snapped_row is not None else min(max(row, r0), r1),
            pole_lat,
        )
    return None


def _ring_pixels(
    geobox: GeoBox,
    rect: tuple[float, float, float, float],
    points_per_side: int,
    pole: tuple[float, float, float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed ring of pixel positions round ``rect``, in the order of ``_edge_pixels``.

    A pole on the edge is not a vertex (its longitude is undefined): the ring goes round it
    inside the box on a small arc, whose points are flagged in the third array.
    """
    c0, r0, c1, r1 = rect
    corners = [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]
    t = np.linspace(0.0, 1.0, int(points_per_side))
    pts: list[tuple[float, float]] = []
    for (ca, ra), (cb, rb) in zip(corners[:-1], corners[1:], strict=True):
        side = [(ca + s * (cb - ca), ra + s * (rb - ra)) for s in t]
        if pole is not None and (
            (ra == rb == pole[1] and min(ca, cb) <= pole[0] <= max(ca, cb))
            or (ca == cb == pole[0] and min(ra, rb) <= pole[1] <= max(ra, rb))
        ):
            side.append((pole[0], pole[1]))
            side.sort(key=lambda p: math.hypot(p[0] - ca, p[1] - ra))
        pts.extend(side)
    ring = [p for i, p in enumerate(pts) if i == 0 or p != pts[i - 1]]
    if ring[-1] == ring[0]:
        ring.pop()
    if pole is None:
        ring.append(ring[0])
        cols, rows = np.array(ring).T
        return cols, rows, np.zeros(cols.size, dtype=bool)
    at = ring.index((pole[0], pole[1]))
    ring = ring[at:] + ring[:at]  # the pole first
    arc = _arc_round(geobox, ring[0], ring[-1], ring[1], ((c0 + c1) / 2, (r0 + r1) / 2))
    cols, rows = np.array(arc + ring[1:] + arc[:1]).T
    at_pole = np.zeros(cols.size, dtype=bool)
    at_pole[: len(arc)] = True
    at_pole[-1] = True
    return cols, rows, at_pole


def _arc_round(
    geobox: GeoBox,
    pole: tuple[float, float],
    before: tuple[float, float],
    after: tuple[float, float],
    centre: tuple[float, float],
) -> list[tuple[float, float]]:
    """Pixel positions on a small arc round ``pole`` from the ``before`` side to ``after``.

    The arc sweeps through the inside of the box (the side of ``centre``), so the ring keeps
    the pole outside and does not wind round it.
    """
    t = geobox.transform
    px, py = t * pole
    angle = [math.atan2(q[1] - py, q[0] - px) for q in (t * before, t * after, t * centre)]
    start, stop, inward = angle
    ccw = (stop - start) % (2 * math.pi)
    sweep = ccw if (inward - start) % (2 * math.pi) < ccw else ccw - 2 * math.pi
    radius = min(_POLE_TOLERANCE_M, 0.25 * min(_pixel_sizes(geobox)))
    inverse = ~t
    out = []
    for k in range(_POLE_ARC_POINTS):
        theta = start + sweep * k / (_POLE_ARC_POINTS - 1)
        out.append(inverse * (px + radius * math.cos(theta), py + radius * math.sin(theta)))
    return [(float(c), float(r)) for c, r in out]


def _refine(
    geobox: GeoBox,
    cols: np.ndarray,
    rows: np.ndarray,
    at_pole: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    tol_px: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bisect chords whose middle (in lon/lat) lies more than ``tol_px`` off the true edge."""
    back = _transformer(4326, _crs_key(geobox))
    inverse = ~geobox.transform
    for _ in range(_MAX_REFINE_ROUNDS):
        dlon = (lon[1:] - lon[:-1] + 180.0) % 360.0 - 180.0
        mid_x, mid_y = back.transform(lon[:-1] + dlon / 2, (lat[:-1] + lat[1:]) / 2)
        mid_c, mid_r = inverse * (np.asarray(mid_x), np.asarray(mid_y))
        ac, ar = cols[:-1], rows[:-1]
        bc, br = cols[1:] - ac, rows[1:] - ar
        length = np.hypot(bc, br)
        off = np.abs(bc * (mid_r - ar) - br * (mid_c - ac)) / np.where(length > 0, length, 1.0)
        split = ~(off <= tol_px) & ~(at_pole[:-1] & at_pole[1:]) & (length > 0)
        if not split.any():
            break
        where = np.flatnonzero(split) + 1
        new_c, new_r = (cols[where - 1] + cols[where]) / 2, (rows[where - 1] + rows[where]) / 2
        new_lon, new_lat = _pixels_lonlat(geobox, new_c, new_r)
        cols, rows = np.insert(cols, where, new_c), np.insert(rows, where, new_r)
        lon, lat = np.insert(lon, where, new_lon), np.insert(lat, where, new_lat)
        at_pole = np.insert(at_pole, where, False)
    return cols, rows, at_pole, lon, lat


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
