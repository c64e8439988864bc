"""Sample grids: UTM/UPS choice, pixel alignment, antimeridian footprints and grid-cell ids."""

from __future__ import annotations

import math

import pytest
from pyproj import Geod, Transformer
from shapely.geometry import MultiPolygon, Point, Polygon

from las_builder.geobox import (
    EARTH_RADIUS_M,
    UPS_NORTH,
    UPS_SOUTH,
    cell_at,
    default_spacing,
    geobox_footprint,
    grid_cell,
    grid_rows,
    row_columns,
    sample_crs,
    sample_geobox,
    sample_id,
)

GEOD = Geod(ellps="WGS84")


def _area_m2(geom: Polygon | MultiPolygon) -> float:
    return abs(GEOD.geometry_area_perimeter(geom)[0])


def _aligned(value: float, resolution: float) -> bool:
    return math.isclose(value / resolution, round(value / resolution), abs_tol=1e-9)


def _centre_offset(lon: float, lat: float, size_px: int, res: float) -> tuple[float, float]:
    """Distance (x, y) in the box's CRS between the point and the box's centre."""
    gb = sample_geobox(lon, lat, size_px, res)
    assert gb.crs is not None
    x, y = Transformer.from_crs(4326, gb.crs.epsg, always_xy=True).transform(lon, lat)
    t = gb.transform
    cx, cy = t.c + t.a * size_px / 2, t.f + t.e * size_px / 2
    return abs(cx - x), abs(cy - y)


@pytest.mark.parametrize("lon", [180.0, -180.0, 179.9995, -179.9995])
def test_antimeridian_sample(lon: float) -> None:
    gb = sample_geobox(lon, -16.55, 128, 10)
    assert gb.crs is not None
    assert gb.crs.epsg in (32701, 32760)
    assert tuple(gb.shape.yx) == (128, 128)
    assert (gb.transform.a, gb.transform.e) == (10, -10)
    assert _aligned(gb.transform.c, 10) and _aligned(gb.transform.f, 10)
    fp = geobox_footprint(gb)
    assert isinstance(fp, MultiPolygon) and fp.is_valid
    assert len(fp.geoms) == 2
    west, _, east, _ = fp.bounds
    assert (west, east) == (-180.0, 180.0)
    # Both pieces together are the whole box.
    assert _area_m2(fp) == pytest.approx(1280.0**2, rel=0.01)
    assert fp.covers(Point(((lon + 180) % 360) - 180, -16.55))


def test_180_and_minus_180_are_the_same_sample() -> None:
    a, b = sample_geobox(180.0, -16.55, 64, 10), sample_geobox(-180.0, -16.55, 64, 10)
    assert a == b
    assert sample_id(180.0, -16.55, 800) == sample_id(-180.0, -16.55, 800)


def test_footprint_away_from_antimeridian_is_one_polygon() -> None:
    fp = geobox_footprint(sample_geobox(-93.62, 42.03, 256, 10))
    assert isinstance(fp, Polygon)
    assert _area_m2(fp) == pytest.approx(2560.0**2, rel=0.01)


def test_far_north_uses_ups_north() -> None:
    gb = sample_geobox(30.0, 85.5, 64, 10)
    assert gb.crs is not None
    assert gb.crs.epsg == UPS_NORTH == 32661
    fp = geobox_footprint(gb)
    assert fp.is_valid and fp.covers(Point(30.0, 85.5))
    assert _area_m2(fp) == pytest.approx(640.0**2, rel=0.01)


def test_box_around_the_north_pole() -> None:
    gb = sample_geobox(0.0, 90.0, 64, 10)
    assert gb.crs is not None
    assert gb.crs.epsg == UPS_NORTH
    fp = geobox_footprint(gb)
    assert isinstance(fp, Polygon) and fp.is_valid
    assert fp.bounds[0] == -180.0 and fp.bounds[2] == 180.0 and fp.bounds[3] == 90.0
    assert fp.covers(Point(123.0, 89.999))
    assert not fp.covers(Point(123.0, 89.99))  # 1.1 km from the pole, outside a 640 m box


def test_far_south_uses_ups_south() -> None:
    gb = sample_geobox(-60.0, -82.0, 64, 10)
    assert gb.crs is not None
    assert gb.crs.epsg == UPS_SOUTH == 32761
    fp = geobox_footprint(gb)
    assert fp.covers(Point(-60.0, -82.0))


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [
        (0.5, 84.0, 32631),
        (0.5, 84.01, 32661),
        (0.5, -80.0, 32731),
        (0.5, -80.01, 32761),
        (-93.62, 42.03, 32615),
        (25.4, 69.05, 32635),
        (-60.02, -3.1, 32720),
        (360.5, 10.0, 32631),
        (540.5, 10.0, 32601),
    ],
)
def test_sample_crs(lon: float, lat: float, epsg: int) -> None:
    assert sample_crs(lon, lat) == epsg


@pytest.mark.parametrize(("size_px", "res"), [(32, 10.0), (256, 10.0), (33, 20.0), (100, 30.0)])
@pytest.mark.parametrize(("lon", "lat"), [(-93.62, 42.03), (146.95, -35.12), (25.4, 69.05)])
def test_size_resolution_and_alignment_exact(
    size_px: int, res: float, lon: float, lat: float
) -> None:
    gb = sample_geobox(lon, lat, size_px, res)
    assert tuple(gb.shape.yx) == (size_px, size_px)
    assert (gb.transform.a, gb.transform.b, gb.transform.d, gb.transform.e) == (res, 0, 0, -res)
    assert _aligned(gb.transform.c, res) and _aligned(gb.transform.f, res)
    dx, dy = _centre_offset(lon, lat, size_px, res)
    assert dx <= res / 2 + 1e-6 and dy <= res / 2 + 1e-6


def test_bad_size_or_resolution() -> None:
    with pytest.raises(ValueError, match="size_px"):
        sample_geobox(0, 0, 0, 10)
    with pytest.raises(ValueError, match="resolution_m"):
        sample_geobox(0, 0, 16, -1)
    with pytest.raises(ValueError, match="latitude"):
        sample_geobox(0, 91, 16, 10)


def test_ids_are_stable_and_named_by_hemisphere() -> None:
    assert sample_id(0.001, 0.001, 1600, resolution_m=10, size_px=128) == "10m128px_0000U_0000R"
    assert sample_id(-0.001, -0.001, 1600, resolution_m=10, size_px=128) == "10m128px_0001D_0001L"
    assert sample_id(-93.62, 42.03, 1600, resolution_m=10, size_px=128) == "10m128px_2924U_4839L"
    assert (
        sample_id(0.001, 0.001, 2000, resolution_m=10, size_px=128) == "10m128px2000s_0000U_0000R"
    )
    assert sample_id(0.001, 0.001, 2000) == "2000m_0000U_0000R"
    # The same point always gives the same id; every point of a cell gives the cell's id.
    cell = grid_cell(-93.62, 42.03, 1600)
    lon, lat = cell.centre
    ids = {
        sample_id(lon + dx * cell.dlon, lat + dy * cell.dlat, 1600)
        for dx in (-0.49, 0, 0.49)
        for dy in (-0.49, 0, 0.49)
    }
    assert ids == {sample_id(-93.62, 42.03, 1600)}


@pytest.mark.parametrize(("lon", "lat"), [(-93.62, 42.03), (179.99, -16.55), (25.4, 69.05)])
def test_neighbours_have_distinct_ids(lon: float, lat: float) -> None:
    spacing = 400.0
    centre = grid_cell(lon, lat, spacing)
    clon, clat = centre.centre
    ids = set()
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            ids.add(sample_id(clon + dc * centre.dlon, clat + dr * centre.dlat, spacing))
    assert len(ids) == 9


def test_grid_is_major_tom_equal_area() -> None:
    spacing = 10_000.0
    dlat, first, last = grid_rows(spacing)
    n = math.ceil(math.pi * EARTH_RADIUS_M / spacing)
    assert dlat == pytest.approx(180.0 / n)
    assert first * dlat == pytest.approx(-90.0) and (last + 1) * dlat == pytest.approx(90.0)
    for row in (0, 500, -700):
        dlon, c0, c1 = row_columns(row, spacing)
        circumference = 2 * math.pi * EARTH_RADIUS_M * math.cos(math.radians(row * dlat))
        assert c1 - c0 + 1 == math.ceil(circumference / spacing)
        assert dlon * (c1 - c0 + 1) == pytest.approx(360.0)
        # Cell widths along the parallel stay close to the spacing.
        assert circumference / (c1 - c0 + 1) == pytest.approx(spacing, rel=0.01)
    # Cells round-trip through their centres; a column past 180 wraps.
    cell = grid_cell(12.3, 45.6, spacing)
    assert grid_cell(*cell.centre, spacing) == cell
    dlon, c0, c1 = row_columns(cell.row, spacing)
    assert cell_at(cell.row, c1 + 1, spacing) == cell_at(cell.row, c0, spacing)


def test_default_spacing() -> None:
    assert default_spacing(128, 10) == 1600.0
    assert default_spacing(256, 10) == 3200.0
