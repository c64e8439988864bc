"""Nearest placement of a categorical window onto a GeoBox in another CRS, without a GDAL warp.

GDAL's warper builds its PROJ transformations again at every call (rasterio gives it no way to
keep them): placing a 7 x 11 px MODIS window on a sample grid cost ~5 ms, almost all of it in
``OGRCreateCoordinateTransformation``. Here the PROJ pipeline between two CRSs is found once per
process and instantiated once per thread, target pixel centres on a small lattice are carried
through it exactly, the rest are interpolated between them, and every centre the interpolation
puts near a source pixel edge is carried exactly too. Each target pixel therefore takes the
source pixel under its centre as PROJ places it; GDAL's approximate transformer (error up to
1/8 source pixel) picks the neighbour for a few centres that lie within its error of an edge.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import ProjError
from rasterio.crs import CRS as RioCRS

_LATTICE = 9  # points per axis carried exactly through PROJ
_MAX_CURVE_PX = 1e-2  # worst interpolation error accepted (source pixels) before GDAL warps
_pipeline_lock = threading.Lock()
_local = threading.local()


def place_nearest(
    data: np.ndarray,
    src_transform: Affine,
    src_crs: RioCRS,
    src_nodata: float | None,
    geobox: GeoBox,
    out: np.ndarray,
) -> bool:
    """Write onto ``out`` the pixel of ``data`` under each target pixel's centre.

    Target pixels outside ``data`` and source pixels equal to ``src_nodata`` leave ``out``
    as it is (filled by the caller), as GDAL's warp does.

    Args:
        data: Source window (bands, rows, cols).
        src_transform: The window's affine transform.
        src_crs: The source CRS.
        src_nodata: The source nodata value, or None.
        geobox: The target grid.
        out: Target array (bands, *geobox.shape), pre-filled.

    Returns:
        False, with ``out`` untouched, when the placement is left to GDAL: no single PROJ
        pipeline joins the two CRSs (a choice of grids by area), a centre falls outside the
        source CRS's domain, the mapping is too curved to interpolate (near a pole or across
        the antimeridian), or a geographic source runs past ±180°.
    """
    if out.dtype != data.dtype:  # GDAL converts (and clamps) between types
        return False
    if src_crs.is_geographic and not _within_longitudes(src_transform, data.shape[-1]):
        return False
    assert geobox.crs is not None  # sample grids always have a CRS
    transformer = _thread_transformer(geobox.crs.to_wkt(), src_crs.to_wkt())
    if transformer is None:
        return False
    height, width = geobox.shape.yx
    col_halves, col_weights, col_check = _lattice(width)
    row_halves, row_weights, row_check = _lattice(height)
    # The lattice at half steps: its even points are the lattice, the odd ones check it.
    fine_cols, fine_rows = np.meshgrid(col_halves, row_halves)
    fine_col, fine_row = _to_source_pixels(
        transformer, geobox.transform, src_transform, fine_cols.ravel(), fine_rows.ravel()
    )
    if not (np.isfinite(fine_col).all() and np.isfinite(fine_row).all()):
        return False
    fine_col, fine_row = fine_col.reshape(fine_cols.shape), fine_row.reshape(fine_cols.shape)
    col, row = fine_col[::2, ::2], fine_row[::2, ::2]
    # Bilinear interpolation's worst error lies between lattice points (cell and edge middles).
    error = max(
        float(np.abs(row_check @ col @ col_check.T - fine_col).max()),
        float(np.abs(row_check @ row @ col_check.T - fine_row).max()),
    )
    if error > _MAX_CURVE_PX:
        return False
    src_col = row_weights @ col @ col_weights.T
    src_row = row_weights @ row @ col_weights.T
    # Centres the interpolation may have put on the wrong side of an edge: carry them exactly.
    # (In place: each pass over the grid's doubles costs about as much as the arithmetic.)
    margin = 4 * error + 1e-9
    src_c, src_r = np.floor(src_col), np.floor(src_row)
    near = np.empty(src_c.shape, dtype=bool)
    near_row = np.empty(src_c.shape, dtype=bool)
    for position, pixel, flags in ((src_col, src_c, near), (src_row, src_r, near_row)):
        position -= pixel
        position -= 0.5
        np.greater_equal(np.abs(position, out=position), 0.5 - margin, out=flags)
    near |= near_row
    if near.any():
        at_row, at_col = np.nonzero(near)
        exact_col, exact_row = _to_source_pixels(
            transformer, geobox.transform, src_transform, at_col + 0.5, at_row + 0.5
        )
        if not (np.isfinite(exact_col).all() and np.isfinite(exact_row).all()):
            return False
        src_c[near], src_r[near] = np.floor(exact_col), np.floor(exact_row)
    rows, cols = data.shape[-2:]
    at_c, at_r = src_c.astype(np.intp), src_r.astype(np.intp)
    # Negative positions read as huge unsigned ones: one comparison per axis.
    keep = at_c.view(np.uintp) < cols
    keep &= at_r.view(np.uintp) < rows
    at_r *= cols
    at_r += at_c
    values = data.reshape(data.shape[0], -1).take(at_r, axis=1, mode="clip")
    if src_nodata is not None:
        keep = keep & ~(np.isnan(values) if math.isnan(src_nodata) else values == src_nodata)
    np.copyto(out, values, where=keep)
    return True


def _to_source_pixels(
    transformer: Transformer,
    dst_transform: Affine,
    src_transform: Affine,
    cols: np.ndarray,
    rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Target pixel positions carried through PROJ to source pixel positions."""
    # affine's types take one point of floats; the transform maps arrays of points alike.
    x, y = dst_transform @ (cols, rows)  # type: ignore[operator]
    try:
        sx, sy = transformer.transform(x, y, errcheck=False)
    except ProjError:
        nan = np.full(np.shape(cols), np.nan)
        return nan, nan
    col, row = ~src_transform @ (np.asarray(sx), np.asarray(sy))
    return np.asarray(col, dtype=float), np.asarray(row, dtype=float)


def _within_longitudes(src_transform: Affine, width: int) -> bool:
    """Whether a geographic window stays within ±180° (PROJ wraps longitudes there)."""
    west = src_transform.c
    east = src_transform.c + src_transform.a * width
    return -180.0 <= min(west, east) and max(west, east) <= 180.0


@functools.lru_cache(maxsize=64)
def _lattice(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lattice along an axis of ``size`` pixels, at half steps, and its weights.

    Returns the positions at half steps (the lattice is every other one: up to
    :data:`_LATTICE` pixel centres, the first and last included), the matrix that interpolates
    the lattice onto every pixel centre, and the one that interpolates it onto the half steps.
    """
    halves = np.linspace(0.5, size - 0.5, 2 * min(_LATTICE, size) - 1)
    at = halves[::2]
    return halves, _linear_weights(at, np.arange(size) + 0.5), _linear_weights(at, halves)


def _linear_weights(at: np.ndarray, to: np.ndarray) -> np.ndarray:
    """The matrix that interpolates values at positions ``at`` linearly onto positions ``to``."""
    weights = np.zeros((to.size, at.size))
    if at.size == 1:
        weights[:, 0] = 1.0
        return weights
    left = np.clip(np.searchsorted(at, to, side="right") - 1, 0, at.size - 2)
    frac = (to - at[left]) / (at[left + 1] - at[left])
    weights[np.arange(to.size), left] = 1 - frac
    weights[np.arange(to.size), left + 1] = frac
    return weights


@functools.lru_cache(maxsize=256)
def _pipeline(dst_wkt: str, src_wkt: str) -> str | None:
    """The one PROJ pipeline from the target CRS to the source CRS, or None.

    PROJ may answer with several operations to choose among by area (datum grids); those
    pairs are left to GDAL, which chooses as before.
    """
    with _pipeline_lock:  # PROJ's database search, once per pair and process
        try:
            found = Transformer.from_crs(
                ProjCRS.from_wkt(dst_wkt), ProjCRS.from_wkt(src_wkt), always_xy=True
            )
            return found.to_proj4()
        except ProjError:
            return None


def _thread_transformer(dst_wkt: str, src_wkt: str) -> Transformer | None:
    """The calling thread's transformer for the pair (from the pipeline: ~0.1 ms, not ~5 ms)."""
    made: dict[tuple[str, str], Transformer | None] | None = getattr(_local, "made", None)
    if made is None:
        made = _local.made = {}
    key = (dst_wkt, src_wkt)
    if key not in made:
        pipeline = _pipeline(dst_wkt, src_wkt)
        made[key] = Transformer.from_pipeline(pipeline) if pipeline else None
    return made[key]


def place_bilinear_zoom(
    data: np.ndarray, col: int, row: int, k: int, src_nodata: float | None, out: np.ndarray
) -> bool:
    """Write onto ``out`` the bilinear interpolation of ``data`` on a lattice ``k`` times finer.

    The target grid continues the source's, each source pixel split ``k`` by ``k``; its corner
    lies ``col``, ``row`` target pixels from the window's corner. Every target centre then
    lies a multiple of ``1 / (2k)`` of a source pixel from a source centre, so the weights are
    integers over ``2k`` along each axis and the sum is exact in integers, rounded half up.

    That is GDAL's bilinear warp pixel for pixel where GDAL's doubles are exact or no sum
    falls on a half: ``k`` a power of two (Sentinel-2's 20 m bands onto 10 m) or odd. Other
    ``k`` are left to GDAL: at ``k = 6`` (the 60 m bands) ~2 % of the sums fall exactly on a
    half, which GDAL's inexact sixths round down about half the time, so the exact sum would
    change ~1 % of those pixels by one for ~1.3 ms less per call.

    Args:
        data: Source window (bands, rows, cols), unsigned integers of up to 16 bits.
        col: Column of the target grid's corner, in target pixels from the window's corner.
        row: Row of the target grid's corner, in target pixels from the window's corner.
        k: Target pixels per source pixel along each axis (2 or more).
        src_nodata: The source nodata value, or None.
        out: Target array (bands, rows, cols) of the same dtype.

    Returns:
        False, with ``out`` untouched, when the window holds nodata (GDAL then renormalises
        the weights of the valid pixels), a target pixel's four source pixels are not all in
        the window, ``k`` is even but not a power of two, or the dtype is not
        ``uint8``/``uint16``.
    """
    if data.dtype not in (np.uint8, np.uint16) or out.dtype != data.dtype or k < 2:
        return False
    if k % 2 == 0 and k & (k - 1):
        return False
    height, width = out.shape[-2:]
    rows = _zoom_taps(row, height, k, data.shape[-2])
    cols = _zoom_taps(col, width, k, data.shape[-1])
    if rows is None or cols is None:
        return False
    if src_nodata is not None and (data == src_nodata).any():
        return False
    scale = (2 * k) ** 2  # the weights were scaled by 2k along each axis
    # The sums reach scale * 65535: int32 up to k = 90. A band at a time keeps the temporaries
    # small (under the malloc mmap threshold: no page faults on every use).
    work = np.int32 if scale * 65536 < 2**31 else np.int64
    (row_before, row_weight), (col_before, col_weight) = rows, cols
    row_weight, col_weight = row_weight.astype(work), col_weight.astype(work)
    row_other, col_other = 2 * k - row_weight[:, None], 2 * k - col_weight
    row_weight = row_weight[:, None]
    shift = scale.bit_length() - 1 if scale & (scale - 1) == 0 else None
    for band, target in zip(data, out, strict=True):
        src = band.astype(work)
        along_rows = row_other * src[row_before] + row_weight * src[row_before + 1]
        both = along_rows[:, col_before] * col_other
        both += along_rows[:, col_before + 1] * col_weight
        both += scale // 2
        target[...] = both >> shift if shift is not None else both // scale
    return True


def _zoom_taps(first: int, size: int, k: int, limit: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Source pixel before each target centre ``first``.. and the next one's weight x 2k.

    Target pixel ``p`` has its centre at ``(2p + 1 - k) / 2k`` source pixels from the first
    source centre. None when a centre lacks a source pixel on either side in the window.
    """
    position = 2 * (first + np.arange(size)) + 1 - k
    before = position // (2 * k)
    if before[0] < 0 or before[-1] + 1 > limit - 1:
        return None
    return before, position - 2 * k * before


_AFFINE_TOLERANCE_PX = 1e-3
"""Largest departure (source pixels) of the target-to-source mapping from a scale and shift
along each axis for :func:`place_average`; NAD83 to WGS 84 UTM departs by ~2e-4 of a 0.6 m pixel
(the ellipsoids differ by 0.1 mm)."""
_AVERAGE_STRIP_BYTES = 1 << 19
"""Size of the float copy of one band's strip of source rows that :func:`place_average` works
on at a time. Kept under the build's malloc mmap threshold (1 MiB, ``tune_malloc``): larger
temporaries are mapped and unmapped at every use, and their page faults made the average five
times slower."""


def place_average(
    data: np.ndarray,
    src_transform: Affine,
    src_crs: RioCRS,
    src_nodata: float | None,
    geobox: GeoBox,
    out: np.ndarray,
    dst_nodata: float | None = None,
) -> bool:
    """Write onto ``out`` the area-weighted mean of the source pixels under each target pixel.

    Each source pixel counts by the area it shares with the target pixel (fractions at the
    footprint's edges); nodata pixels and pixels outside ``data`` do not count, and a target
    pixel with none leaves ``out`` as it is. Integers are rounded half up. Where the source
    has a nodata value, a mean equal to ``dst_nodata`` becomes the next value, as GDAL makes
    it, so that a valid pixel is not taken for a missing one. When the target
    grid maps onto the source's by a scale and a shift along each axis (an aerial image in
    NAD83 UTM onto a WGS 84 UTM sample grid of the same zone) the mean is separable: two
    sparse matrix products per band instead of GDAL's per-pixel footprints. GDAL weighs the
    footprint edges slightly differently: its results differ by one unit on ~2 % of pixels.

    Returns:
        False, with ``out`` untouched, when the mapping is not a scale and a shift along the
        axes within :data:`_AFFINE_TOLERANCE_PX` (another zone, a rotation, a curved mapping),
        no single PROJ pipeline joins the CRSs, both CRSs are the same, or the types differ:
        GDAL's warp then runs.
    """
    if out.dtype != data.dtype or data.ndim != 3:
        return False
    assert geobox.crs is not None  # sample grids always have a CRS
    dst_wkt, src_wkt = geobox.crs.to_wkt(), src_crs.to_wkt()
    if _pipeline(dst_wkt, src_wkt) == "+proj=noop":
        # Within one CRS GDAL's average weighs edges another way (~2 % of pixels differ by
        # one and more): its output is kept there.
        return False
    transformer = _thread_transformer(dst_wkt, src_wkt)
    if transformer is None:
        return False
    height, width = geobox.shape.yx
    # Target pixel corners on a coarse lattice, carried to source pixel positions.
    cols = np.linspace(0.0, width, min(width, 8) + 1)
    rows = np.linspace(0.0, height, min(height, 8) + 1)
    grid_cols, grid_rows = np.meshgrid(cols, rows)
    src_col, src_row = _to_source_pixels(
        transformer, geobox.transform, src_transform, grid_cols.ravel(), grid_rows.ravel()
    )
    if not (np.isfinite(src_col).all() and np.isfinite(src_row).all()):
        return False
    col_fit = _axis_fit(cols, src_col.reshape(grid_cols.shape))
    row_fit = _axis_fit(rows, src_row.reshape(grid_cols.shape).T)
    if col_fit is None or row_fit is None:
        return False
    along_cols = _overlap_weights(width, *col_fit, data.shape[-1]).T.tocsr()
    along_rows = _overlap_weights(height, *row_fit, data.shape[-2])
    source_rows = _AVERAGE_STRIP_BYTES // (8 * data.shape[-1])
    strip_rows = max(1, int(source_rows / max(abs(row_fit[0]), 1.0)) - 2)
    for top in range(0, height, strip_rows):
        strip = along_rows[top : top + strip_rows]
        if not strip.indices.size:
            continue
        first, last = int(strip.indices.min()), int(strip.indices.max()) + 1
        _average_strip(
            data[:, first:last],
            src_nodata,
            strip[:, first:last],
            along_cols,
            out[:, top : top + strip_rows],
            dst_nodata,
        )
    return True


def _average_strip(
    data: np.ndarray,
    src_nodata: float | None,
    rows: Any,
    cols: Any,
    out: np.ndarray,
    dst_nodata: float | None,
) -> None:
    """A strip of rows: ``rows @ band @ cols`` over the valid pixels, written where covered.

    A pixel is invalid where every band is nodata (or NaN), as in GDAL's warp (its unified
    source nodata): a zero in one band alone is a value.
    """
    if src_nodata is not None and not math.isnan(src_nodata):
        invalid = (data == src_nodata).all(axis=0)
    elif data.dtype.kind == "f":
        invalid = np.isnan(data).all(axis=0)
    else:
        invalid = None
    if invalid is not None and not invalid.any():
        invalid = None
    if invalid is None:
        weight = np.outer(rows.sum(axis=1), cols.sum(axis=0))
    else:
        weight = rows @ ((~invalid).astype(np.float64) @ cols)
    covered = weight > 0
    for band, target in zip(data, out, strict=True):
        values = band.astype(np.float64)
        if data.dtype.kind == "f":
            values[np.isnan(values)] = 0.0
        if invalid is not None:
            values[invalid] = 0.0
        mean = (rows @ (values @ cols))[covered] / weight[covered]
        if target.dtype.kind in "iu":
            info = np.iinfo(target.dtype)
            mean = np.clip(np.floor(mean + 0.5), info.min, info.max)
            if dst_nodata is not None and src_nodata is not None:
                other = dst_nodata + 1 if dst_nodata < info.max else dst_nodata - 1
                mean[mean == dst_nodata] = other
        elif dst_nodata is not None and src_nodata is not None:
            mean[mean == dst_nodata] = np.nextafter(dst_nodata, np.inf)
        target[covered] = mean.astype(target.dtype)


def _axis_fit(targets: np.ndarray, sources: np.ndarray) -> tuple[float, float] | None:
    """``(scale, shift)`` of ``source = scale * target + shift`` along one axis, or None.

    ``sources`` holds one row per lattice line across the axis: the fit must hold on every
    line (no rotation or shear) and at every point within :data:`_AFFINE_TOLERANCE_PX`.
    """
    first = sources[0]
    scale = float((first[-1] - first[0]) / (targets[-1] - targets[0]))
    shift = float(first[0] - scale * targets[0])
    if scale == 0 or not math.isfinite(scale):
        return None
    if np.abs(sources - (scale * targets + shift)).max() > _AFFINE_TOLERANCE_PX:
        return None
    return scale, shift


def _overlap_weights(size: int, scale: float, shift: float, source_size: int) -> Any:
    """The length each source pixel shares with each target pixel along one axis.

    A sparse ``(size, source_size)`` matrix; target pixel ``t`` spans
    ``scale * [t, t + 1) + shift`` source pixels.
    """
    from scipy.sparse import csr_array

    edges = scale * np.arange(size + 1) + shift
    low = np.minimum(edges[:-1], edges[1:])
    high = np.maximum(edges[:-1], edges[1:])
    first = np.floor(low).astype(np.intp)
    taps = max(int((np.ceil(high).astype(np.intp) - first).max()), 1)
    index = first[:, None] + np.arange(taps)[None, :]
    shared = np.minimum(high[:, None], index + 1) - np.maximum(low[:, None], index)
    keep = (shared > 0) & (index >= 0) & (index < source_size)
    target = np.broadcast_to(np.arange(size)[:, None], index.shape)
    return csr_array(
        (shared[keep], (target[keep], index[keep])), shape=(size, source_size), dtype=np.float64
    )
