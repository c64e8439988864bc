"""Placing windows without a GDAL warp: exact nearest across CRSs, exact bilinear at 2x zoom."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from rasterio.crs import CRS as RioCRS
from rasterio.warp import Resampling, reproject, transform_bounds

from las_builder.build import read as read_mod
from las_builder.build import resample as resample_mod
from las_builder.build.resample import _pipeline, place_bilinear_zoom, place_nearest

MODIS = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"  # MODIS sinusoidal
FILL = 255
CRS_S2 = "EPSG:32633"  # a Sentinel-2 tile's UTM zone


def _geobox(crs: str, west: float, north: float, size: int = 64, res: float = 10.0) -> GeoBox:
    return GeoBox((size, size), Affine(res, 0, west, 0, -res, north), crs)


def _source(
    geobox: GeoBox, crs: str, res: float, *, seed: int = 0, pad: int = 3
) -> tuple[np.ndarray, Affine]:
    """A random categorical window in ``crs`` covering ``geobox`` with ``pad`` pixels to spare."""
    left, bottom, right, top = transform_bounds(geobox.crs, crs, *geobox.extent.boundingbox)
    transform = Affine(res, 0, left - pad * res, 0, -res, top + pad * res)
    width = int(np.ceil((right - left) / res)) + 2 * pad
    height = int(np.ceil((top - bottom) / res)) + 2 * pad
    data = np.random.default_rng(seed).integers(0, 200, (1, height, width), dtype="uint8")
    return data, transform


def _brute_force(
    data: np.ndarray, transform: Affine, crs: str, nodata: float | None, geobox: GeoBox
) -> np.ndarray:
    """Every target centre carried through PROJ on its own: the answer by definition."""
    height, width = geobox.shape.yx
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x, y = geobox.transform @ (cols.ravel(), rows.ravel())
    assert geobox.crs is not None
    to_src = Transformer.from_crs(
        geobox.crs.to_wkt(), RioCRS.from_user_input(crs).to_wkt(), always_xy=True
    )
    sx, sy = to_src.transform(x, y)
    src_col, src_row = ~transform @ (np.asarray(sx), np.asarray(sy))
    c, r = np.floor(src_col).astype(int), np.floor(src_row).astype(int)
    out = np.full((data.shape[0], height * width), FILL, dtype=data.dtype)
    inside = (c >= 0) & (c < data.shape[2]) & (r >= 0) & (r < data.shape[1])
    values = data[:, r[inside], c[inside]]
    keep = np.ones(values.shape[1], bool) if nodata is None else values[0] != nodata
    target = np.flatnonzero(inside)[keep]
    out[:, target] = values[:, keep]
    return out.reshape(data.shape[0], height, width)


def _gdal_nearest(
    data: np.ndarray, transform: Affine, crs: str, nodata: float | None, geobox: GeoBox
) -> np.ndarray:
    out = np.full((data.shape[0], *geobox.shape.yx), FILL, dtype=data.dtype)
    reproject(
        data,
        out,
        src_transform=transform,
        src_crs=crs,
        src_nodata=nodata,
        dst_transform=geobox.transform,
        dst_crs=str(geobox.crs),
        dst_nodata=FILL,
        resampling=Resampling.nearest,
    )
    return out


# (source CRS, source pixel size, target CRS, target west, target north): the label products'
# grids as the build meets them.
PAIRS = [
    pytest.param(MODIS, 463.3127, "EPSG:32633", 500_000, 5_000_000, id="modis-sinusoidal"),
    pytest.param("EPSG:4326", 8.333e-5, "EPSG:32633", 430_000, 5_200_000, id="worldcover-4326"),
    pytest.param("EPSG:32634", 10.0, "EPSG:32633", 795_000, 5_000_000, id="utm-neighbour-zone"),
    pytest.param("EPSG:3857", 30.0, "EPSG:32610", 550_000, 4_180_000, id="web-mercator"),
    pytest.param("EPSG:3413", 100.0, "EPSG:32627", 500_000, 8_700_000, id="polar-stereo"),
]


@pytest.mark.parametrize(("src_crs", "res", "dst_crs", "west", "north"), PAIRS)
def test_nearest_equals_per_pixel_proj(
    src_crs: str, res: float, dst_crs: str, west: float, north: float
) -> None:
    geobox = _geobox(dst_crs, west, north, size=96)
    data, transform = _source(geobox, src_crs, res)
    out = np.full((1, 96, 96), FILL, dtype="uint8")

    assert place_nearest(data, transform, RioCRS.from_user_input(src_crs), None, geobox, out)

    np.testing.assert_array_equal(out, _brute_force(data, transform, src_crs, None, geobox))
    # GDAL's approximate transformer (error up to 1/8 pixel) picks the neighbour only for
    # centres that lie that close to an edge.
    agree = (out == _gdal_nearest(data, transform, src_crs, None, geobox)).mean()
    assert agree >= 0.99


def test_edge_centres_are_carried_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Centres the interpolation puts near a source pixel edge go through PROJ one by one."""
    geobox = _geobox("EPSG:32633", 430_000, 7_500_000, size=96)  # 67 N: a curved mapping
    data, transform = _source(geobox, "EPSG:4326", 1e-5, seed=3)  # ~1 m source pixels
    carried: list[int] = []
    to_source = resample_mod._to_source_pixels

    def _counting(*args: Any) -> tuple[np.ndarray, np.ndarray]:
        carried.append(np.size(args[-1]))
        return to_source(*args)

    monkeypatch.setattr(resample_mod, "_to_source_pixels", _counting)
    out = np.full((1, 96, 96), FILL, dtype="uint8")

    assert place_nearest(data, transform, RioCRS.from_epsg(4326), None, geobox, out)

    assert carried[0] == 17 * 17  # the lattice at half steps
    assert len(carried) == 2 and carried[1] > 0  # then the centres near an edge
    np.testing.assert_array_equal(out, _brute_force(data, transform, "EPSG:4326", None, geobox))


def test_nodata_and_partial_cover_keep_the_fill() -> None:
    geobox = _geobox("EPSG:32633", 500_000, 5_000_000, size=64)
    data, transform = _source(geobox, MODIS, 46.33, seed=1)
    data[:, : data.shape[1] // 2] = 0  # nodata over the northern half
    half = data[:, :, : data.shape[2] // 2]  # and no source east of the middle
    out = np.full((1, 64, 64), FILL, dtype="uint8")

    assert place_nearest(half, transform, RioCRS.from_user_input(MODIS), 0, geobox, out)

    expected = _brute_force(half, transform, MODIS, 0, geobox)
    np.testing.assert_array_equal(out, expected)
    assert (out == FILL).mean() > 0.5  # both the nodata and the uncovered part stayed fill
    assert (out != FILL).any()


def test_many_bands_are_placed_alike() -> None:
    geobox = _geobox("EPSG:32633", 500_000, 5_000_000, size=32)
    one, transform = _source(geobox, "EPSG:4326", 1e-4, seed=5)
    data = np.concatenate([one, 255 - one])
    out = np.full((2, 32, 32), FILL, dtype="uint8")

    assert place_nearest(data, transform, RioCRS.from_epsg(4326), None, geobox, out)

    np.testing.assert_array_equal(out[1], 255 - out[0])


def test_dtype_mismatch_is_left_to_gdal() -> None:
    geobox = _geobox("EPSG:32633", 500_000, 5_000_000, size=16)
    data, transform = _source(geobox, "EPSG:4326", 1e-4)
    out = np.full((1, 16, 16), 7, dtype="uint16")

    assert not place_nearest(data, transform, RioCRS.from_epsg(4326), None, geobox, out)
    assert (out == 7).all()


def test_window_past_the_antimeridian_is_left_to_gdal() -> None:
    geobox = _geobox("EPSG:32660", 830_000, 5_000_000, size=16)  # UTM 60 reaches past 180 E
    data = np.ones((1, 40, 40), dtype="uint8")
    transform = Affine(1e-3, 0, 179.99, 0, -1e-3, 45.2)
    out = np.full((1, 16, 16), FILL, dtype="uint8")

    assert not place_nearest(data, transform, RioCRS.from_epsg(4326), None, geobox, out)
    assert (out == FILL).all()


def test_pole_is_left_to_gdal() -> None:
    """Around the pole longitudes turn a full circle across the grid: too curved to interpolate."""
    geobox = GeoBox((32, 32), Affine(10, 0, -160, 0, -10, 160), "EPSG:3413")
    data = np.ones((1, 10, 3600), dtype="uint8")
    transform = Affine(0.1, 0, -180, 0, -0.001, 90)
    out = np.full((1, 32, 32), FILL, dtype="uint8")

    assert not place_nearest(data, transform, RioCRS.from_epsg(4326), None, geobox, out)
    assert (out == FILL).all()


def test_pairs_without_one_pipeline_are_left_to_gdal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("las_builder.build.resample._thread_transformer", lambda *_: None)
    geobox = _geobox("EPSG:32633", 500_000, 5_000_000, size=16)
    data, transform = _source(geobox, "EPSG:4326", 1e-4)
    out = np.full((1, 16, 16), FILL, dtype="uint8")

    assert not place_nearest(data, transform, RioCRS.from_epsg(4326), None, geobox, out)
    assert (out == FILL).all()


def test_pipeline_is_a_single_operation() -> None:
    pipeline = _pipeline(RioCRS.from_epsg(32633).to_wkt(), RioCRS.from_epsg(4326).to_wkt())
    assert pipeline is not None and "+proj=pipeline" in pipeline
    assert _pipeline("not a crs", RioCRS.from_epsg(4326).to_wkt()) is None


def test_datum_shift_chosen_by_area_is_left_to_gdal() -> None:
    """NAD27 to WGS 84 has many operations (grids by area): no single pipeline, GDAL chooses."""
    nad27 = RioCRS.from_epsg(4267)
    assert _pipeline(RioCRS.from_epsg(32615).to_wkt(), nad27.to_wkt()) is None
    geobox = _geobox("EPSG:32615", 500_000, 4_650_000, size=16)
    data = np.ones((1, 40, 40), dtype="uint8")
    transform = Affine(1e-4, 0, -93.01, 0, -1e-4, 42.01)
    out = np.full((1, 16, 16), FILL, dtype="uint8")

    assert not place_nearest(data, transform, nad27, None, geobox, out)
    assert (out == FILL).all()


def _gdal_bounds(geobox: GeoBox, crs: RioCRS) -> tuple[float, ...]:
    assert geobox.crs is not None
    return transform_bounds(
        RioCRS.from_wkt(geobox.crs.to_wkt()), crs, *geobox.boundingbox, densify_pts=21
    )


@pytest.mark.parametrize(
    ("sample_crs", "west", "north", "source_crs"),
    [
        ("EPSG:32633", 500_000, 5_000_000, MODIS),  # a label product in MODIS sinusoidal
        ("EPSG:32633", 300_000, 5_000_000, "EPSG:32634"),  # a scene of the next UTM zone
        ("EPSG:32760", 700_000, 5_100_000, "EPSG:32701"),  # a scene across the antimeridian
        ("EPSG:32633", 500_000, 5_000_000, "EPSG:32633"),  # the same CRS
    ],
)
def test_source_bounds_into_a_projected_crs_are_gdals_without_gdal(
    sample_crs: str, west: float, north: float, source_crs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    geobox = _geobox(sample_crs, west, north, size=128)
    crs = RioCRS.from_user_input(source_crs)
    expected = _gdal_bounds(geobox, crs)

    def no_gdal(*_: Any, **__: Any) -> None:
        raise AssertionError("GDAL's transform_bounds was called")

    monkeypatch.setattr(read_mod, "transform_bounds", no_gdal)
    got = read_mod._bounds_in(crs, geobox)

    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize(
    "source_crs",
    [
        "EPSG:4326",  # geographic: pyproj's pipeline has no target CRS to wrap longitudes by
        "EPSG:26715",  # NAD27 UTM: datum grids chosen by area, no single pipeline
    ],
)
def test_source_bounds_are_left_to_gdal_where_pyproj_cannot_answer_alike(
    source_crs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    geobox = _geobox("EPSG:32615", 500_000, 4_650_000, size=64)
    crs = RioCRS.from_user_input(source_crs)
    calls: list[Any] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return transform_bounds(*args, **kwargs)

    monkeypatch.setattr(read_mod, "transform_bounds", counted)
    got = read_mod._bounds_in(crs, geobox)

    assert len(calls) == 1
    assert got == _gdal_bounds(geobox, crs)


def test_read_places_labels_without_a_warp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A label COG in EPSG:4326 read onto a UTM grid never reaches GDAL's warper."""
    geobox = _geobox("EPSG:32633", 500_000, 5_000_000, size=48)
    data, transform = _source(geobox, "EPSG:4326", 1e-4, seed=9, pad=20)
    path = tmp_path / "labels.tif"
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:4326",
        "transform": transform,
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)

    def _no_warp(*_: object, **__: object) -> None:
        raise AssertionError("GDAL warp called")

    monkeypatch.setattr(read_mod, "reproject", _no_warp)
    with read_mod.gdal_env(), rasterio.open(path) as ds:
        got = read_mod.read_onto(ds, geobox, nodata=FILL)

    np.testing.assert_array_equal(got, _brute_force(data, transform, "EPSG:4326", 0, geobox))


# Bilinear at 2x: Sentinel-2's 20 m bands onto its own 10 m grid.


def _gdal_bilinear(
    data: np.ndarray,
    transform: Affine,
    col: int,
    row: int,
    size: tuple[int, int],
    crs: str,
    k: int = 2,
) -> np.ndarray:
    fine = transform * Affine.scale(1 / k) * Affine.translation(col, row)
    out = np.zeros((data.shape[0], *size), dtype=data.dtype)
    reproject(
        data,
        out,
        src_transform=transform,
        src_crs=crs,
        dst_transform=fine,
        dst_crs=crs,
        resampling=Resampling.bilinear,
    )
    return out


@pytest.mark.parametrize("dtype", ["uint16", "uint8"])
@pytest.mark.parametrize(("col", "row"), [(1, 1), (2, 3), (7, 4), (5, 10)])
def test_bilinear_2x_equals_gdal(dtype: str, col: int, row: int) -> None:
    high = 10_000 if dtype == "uint16" else 255
    rng = np.random.default_rng(col * 10 + row)
    data = rng.integers(1, high, (3, 24, 30), dtype=dtype)
    transform = Affine(20, 0, 600_000, 0, -20, 5_300_000)
    size = (2 * 24 - 1 - row, 2 * 30 - 1 - col)  # as far as the window's last centres
    out = np.zeros((3, *size), dtype=dtype)

    assert place_bilinear_zoom(data, col, row, 2, 0, out)

    np.testing.assert_array_equal(out, _gdal_bilinear(data, transform, col, row, size, CRS_S2))


@pytest.mark.parametrize(
    ("col", "row", "width", "height"),
    [(0, 1, 10, 10), (1, 0, 10, 10), (1, 1, 39, 10), (1, 1, 10, 39)],
    ids=["west-edge", "north-edge", "east-edge", "south-edge"],
)
def test_bilinear_2x_needs_all_four_taps(col: int, row: int, width: int, height: int) -> None:
    data = np.full((1, 20, 20), 5, dtype="uint16")
    out = np.zeros((1, height, width), dtype="uint16")

    assert not place_bilinear_zoom(data, col, row, 2, None, out)
    assert (out == 0).all()


def test_bilinear_2x_leaves_nodata_and_floats_to_gdal() -> None:
    data = np.full((1, 20, 20), 5, dtype="uint16")
    data[0, 3, 3] = 0
    out = np.zeros((1, 8, 8), dtype="uint16")
    assert not place_bilinear_zoom(data, 1, 1, 2, 0, out)
    assert place_bilinear_zoom(data, 1, 1, 2, None, out)  # without nodata, 0 is a value
    floats = np.ones((1, 20, 20), dtype="float32")
    assert not place_bilinear_zoom(floats, 1, 1, 2, None, np.zeros((1, 8, 8), dtype="float32"))


@pytest.mark.parametrize("k", [3, 4, 5])
def test_bilinear_zoom_equals_gdal_where_no_sum_is_a_tie_or_the_weights_are_dyadic(k: int) -> None:
    rng = np.random.default_rng(k)
    data = rng.integers(1, 10_000, (2, 20, 20), dtype="uint16")
    transform = Affine(10 * k, 0, 600_000, 0, -10 * k, 5_300_000)
    col, row, size = k, k + 1, (16 * k, 17 * k)
    out = np.zeros((2, *size), dtype="uint16")

    assert place_bilinear_zoom(data, col, row, k, 0, out)

    np.testing.assert_array_equal(out, _gdal_bilinear(data, transform, col, row, size, CRS_S2, k))


def test_bilinear_6x_is_left_to_gdal_whose_sixths_round_halves_either_way() -> None:
    """The 60 m bands: the exact sum would differ from GDAL where it is a half, so GDAL runs."""
    rng = np.random.default_rng(60)
    data = rng.integers(1, 10_000, (2, 26, 26), dtype="uint16")
    transform = Affine(60, 0, 600_000, 0, -60, 5_300_000)
    col, row, size = 7, 9, (128, 128)
    out = np.zeros((2, *size), dtype="uint16")

    assert not place_bilinear_zoom(data, col, row, 6, 0, out)
    assert not out.any()

    # Why: per pixel, in exact 144ths, the centre of target (r, c) between four source pixels.
    r, c = np.meshgrid(np.arange(size[0]) + row, np.arange(size[1]) + col, indexing="ij")
    y, x = (2 * r + 1 - 6) / 12, (2 * c + 1 - 6) / 12
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    wy, wx = np.rint((y - y0) * 12).astype(int), np.rint((x - x0) * 12).astype(int)
    src = data.astype(np.int64)
    total = (
        (12 - wy) * (12 - wx) * src[:, y0, x0]
        + (12 - wy) * wx * src[:, y0, x0 + 1]
        + wy * (12 - wx) * src[:, y0 + 1, x0]
        + wy * wx * src[:, y0 + 1, x0 + 1]
    )
    gdal = _gdal_bilinear(data, transform, col, row, size, CRS_S2, 6)
    differ = (total + 72) // 144 != gdal
    halves = total % 144 == 72
    assert differ.any() and not (differ & ~halves).any()  # GDAL rounds some halves down


def test_read_onto_zooms_20m_bands_as_gdal_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 20 m band read bilinear onto the 10 m grid: the exact path, no warp, GDAL's answer."""
    rng = np.random.default_rng(11)
    data = rng.integers(1, 10_000, (1, 64, 64), dtype="uint16")
    transform = Affine(20, 0, 600_000, 0, -20, 5_300_000)
    path = tmp_path / "b11.tif"
    profile = {
        "driver": "GTiff",
        "width": 64,
        "height": 64,
        "count": 1,
        "dtype": "uint16",
        "crs": CRS_S2,
        "transform": transform,
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    geobox = GeoBox((40, 40), Affine(10, 0, 600_250, 0, -10, 5_299_650), CRS_S2)
    expected = _gdal_bilinear(data, transform, 25, 35, (40, 40), CRS_S2)

    monkeypatch.setattr(read_mod, "reproject", lambda *_, **__: pytest.fail("GDAL warp called"))
    with read_mod.gdal_env(), rasterio.open(path) as ds:
        got = read_mod.read_onto(ds, geobox, resampling=Resampling.bilinear)

    np.testing.assert_array_equal(got, expected)


# Area-weighted average: an aerial image in NAD83 UTM onto a finer WGS 84 UTM sample grid.

NAIP_CRS = "EPSG:26910"  # NAD83 / UTM 10N, as NAIP is served
SAMPLE_CRS = "EPSG:32610"  # the sample grid: WGS 84 / UTM 10N
NAIP_AT = Affine(0.6, 0, 500_000.3, 0, -0.6, 4_000_000.0)
SAMPLE_AT = Affine(1.0, 0, 500_010.0, 0, -1.0, 3_999_990.0)


def _gdal_average(
    data: np.ndarray, src_nodata: float | None, size: int, src_crs: str = NAIP_CRS
) -> np.ndarray:
    out = np.zeros((data.shape[0], size, size), dtype=data.dtype)
    reproject(
        data,
        out,
        src_transform=NAIP_AT,
        src_crs=src_crs,
        src_nodata=src_nodata,
        dst_transform=SAMPLE_AT,
        dst_crs=SAMPLE_CRS,
        dst_nodata=0,
        resampling=Resampling.average,
        num_threads=1,
    )
    return out


def _ours(
    data: np.ndarray, src_nodata: float | None, size: int, src_crs: str = NAIP_CRS
) -> tuple[bool, np.ndarray]:
    out = np.zeros((data.shape[0], size, size), dtype=data.dtype)
    geobox = GeoBox((size, size), SAMPLE_AT, SAMPLE_CRS)
    placed = resample_mod.place_average(
        data, NAIP_AT, RioCRS.from_user_input(src_crs), src_nodata, geobox, out, 0
    )
    return placed, out


def _exact_mean(data: np.ndarray, row: int, col: int) -> float:
    """The area-weighted mean under one target pixel, from the footprint's corners alone."""
    x0, y0 = SAMPLE_AT @ (col, row)
    x1, y1 = SAMPLE_AT @ (col + 1, row + 1)
    c0, r0 = ~NAIP_AT @ (x0, y0)
    c1, r1 = ~NAIP_AT @ (x1, y1)
    total = weight = 0.0
    for r in range(int(np.floor(r0)), int(np.ceil(r1))):
        for c in range(int(np.floor(c0)), int(np.ceil(c1))):
            w = (min(c1, c + 1) - max(c0, c)) * (min(r1, r + 1) - max(r0, r))
            total += w * float(data[r, c])
            weight += w
    return total / weight


@pytest.mark.parametrize("src_nodata", [None, 0])
def test_average_equals_gdals_across_datums(src_nodata: float | None) -> None:
    data = np.random.default_rng(3).integers(1, 256, (4, 400, 400), dtype="uint8")
    data[:, :30, :30] = 0  # missing in every band
    data[1, 200:260, 100:160] = 0  # dark in one band only: still a value
    placed, ours = _ours(data, src_nodata, 230)
    gdal = _gdal_average(data, src_nodata, 230)
    assert placed
    differ = ours.astype(int) - gdal
    assert np.abs(differ).max() <= 1  # rounding of means that sit on .5
    assert (differ != 0).mean() < 1e-4


def test_average_is_the_area_weighted_mean() -> None:
    data = np.random.default_rng(4).integers(0, 256, (1, 120, 120), dtype="uint8")
    placed, ours = _ours(data, None, 60)
    assert placed
    for row, col in [(0, 0), (1, 2), (7, 13), (30, 31), (59, 40)]:
        assert ours[0, row, col] == np.floor(_exact_mean(data[0], row, col) + 0.5)


def test_average_leaves_uncovered_and_missing_pixels_to_the_fill() -> None:
    data = np.full((2, 50, 50), 9, dtype="uint8")
    data[:, :20, :] = 0  # nodata in all bands: 12 m of source rows
    placed, ours = _ours(data, 0, 30)  # the grid runs past the window's right and bottom
    assert placed
    # Target row 0 lies on source rows 16.7-18.3 (nodata). Row 1 ends on source row 20 where
    # the valid rows start; in floating point it touches row 20 by ~1e-11 of a pixel, which
    # then makes the whole mean, for GDAL too. The window ends at target row 20 and within
    # target column 20 (source column 50 = 20.3).
    assert (ours[:, :1] == 0).all()
    assert (ours[:, 2:20, :21] == 9).all()
    assert (ours[:, 20:] == 0).all() and (ours[:, :, 21:] == 0).all()
    np.testing.assert_array_equal(ours, _gdal_average(data, 0, 30))


def test_a_dark_pixel_of_one_band_does_not_become_nodata() -> None:
    data = np.full((3, 60, 60), 50, dtype="uint8")
    data[0] = 0  # band 1 is dark everywhere, the others are not: the pixels are valid
    placed, ours = _ours(data, 0, 30)
    assert placed
    np.testing.assert_array_equal(ours, _gdal_average(data, 0, 30))
    assert (ours[0, :20, :20] == 1).all()  # as GDAL writes it, not the fill


def test_average_within_one_crs_and_across_zones_is_left_to_gdal() -> None:
    data = np.ones((1, 60, 60), dtype="uint8")
    placed, ours = _ours(data, None, 30, src_crs=SAMPLE_CRS)  # same CRS: GDAL's own weights
    assert not placed and not ours.any()
    placed, ours = _ours(data, None, 30, src_crs="EPSG:26911")  # the next zone: not a scale
    assert not placed and not ours.any()


def test_average_of_another_type_is_left_to_gdal() -> None:
    data = np.ones((1, 60, 60), dtype="uint16")
    out = np.zeros((1, 30, 30), dtype="uint8")
    geobox = GeoBox((30, 30), SAMPLE_AT, SAMPLE_CRS)
    crs = RioCRS.from_user_input(NAIP_CRS)
    assert not resample_mod.place_average(data, NAIP_AT, crs, None, geobox, out, 0)


def test_read_onto_averages_an_aerial_image_without_a_warp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.random.default_rng(5).integers(1, 256, (4, 200, 200), dtype="uint8")
    path = tmp_path / "naip.tif"
    profile = {
        "driver": "GTiff",
        "width": 200,
        "height": 200,
        "count": 4,
        "dtype": "uint8",
        "crs": NAIP_CRS,
        "transform": NAIP_AT,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    expected = _gdal_average(data, None, 100)

    def _no_warp(*_: object, **__: object) -> None:
        raise AssertionError("GDAL warp called")

    monkeypatch.setattr(read_mod, "reproject", _no_warp)
    geobox = GeoBox((100, 100), SAMPLE_AT, SAMPLE_CRS)
    with read_mod.gdal_env(), rasterio.open(path) as ds:
        got = read_mod.read_onto(ds, geobox, resampling=Resampling.average, nodata=0, dtype="uint8")
    differ = got.astype(int) - expected
    assert np.abs(differ).max() <= 1 and (differ != 0).mean() < 1e-3
