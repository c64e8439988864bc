"""The imagery pixel path checked against answers computed independently of it.

Sentinel-2, Sentinel-1 and NAIP pixels as ``las build`` places them on a sample grid, compared
with the source rasters read whole by rasterio and sampled at every target pixel centre carried
through PROJ alone (bilinear by hand): the world's own scenes through the loopback servers,
and small scenes written here to hold what the world does not (both processing baselines of
one truth, saturated pixels, files without a nodata tag, scenes without VV/VH).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from shapely.geometry import shape

from las_builder.build import sample as sample_mod
from las_builder.build.config import BuildConfig
from las_builder.build.read import DatasetCache, gdal_env
from las_builder.geobox import sample_geobox
from las_builder.imagery import S2_BANDS, s1_to_units, sensor
from las_builder.stac import SceneItem, parse_item

EPSG = 32633
# A tile corner on the 60 m lattice, like a Sentinel-2 MGRS tile's.
X0, Y0 = 499_980.0, 5_000_040.0
TILE_PX = 96  # at 10 m: 48 px at 20 m, 16 px at 60 m
WHEN = dt.datetime(2021, 8, 1, 10, 0, tzinfo=dt.UTC)
GSD = {b["name"]: int(b["gsd"]) for b in sensor("sentinel-2-l2a")["bands"]}


# --- independent answers -------------------------------------------------------------------


def _bilinear_at_centres(
    data: np.ndarray, transform: Affine, crs: Any, geobox: GeoBox, nodata: float | None
) -> np.ndarray:
    """Bilinear interpolation of ``data`` at every centre of ``geobox``, carried by PROJ.

    Taps outside the raster or equal to ``nodata`` do not count (the others' weights are
    renormalised, as GDAL's warp does); NaN where no tap counts, or where the source pixel
    under the centre has no value (GDAL's warp, and nearest, leave those pixels empty).
    """
    assert geobox.crs is not None
    height, width = geobox.shape.yx
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs, ys = geobox.transform * (cols, rows)
    sx, sy = Transformer.from_crs(geobox.crs.to_wkt(), crs, always_xy=True).transform(xs, ys)
    col, row = ~transform * (np.asarray(sx), np.asarray(sy))
    col, row = np.asarray(col) - 0.5, np.asarray(row) - 0.5
    c0, r0 = np.floor(col).astype(int), np.floor(row).astype(int)
    fc, fr = col - c0, row - r0
    total = np.zeros((height, width))
    weight = np.zeros((height, width))
    values = data.astype(np.float64)
    for dr, dc, w in (
        (0, 0, (1 - fr) * (1 - fc)),
        (0, 1, (1 - fr) * fc),
        (1, 0, fr * (1 - fc)),
        (1, 1, fr * fc),
    ):
        rr, cc = r0 + dr, c0 + dc
        inside = (rr >= 0) & (rr < data.shape[0]) & (cc >= 0) & (cc < data.shape[1])
        tap = values[np.clip(rr, 0, data.shape[0] - 1), np.clip(cc, 0, data.shape[1] - 1)]
        good = inside & (w > 0)
        if nodata is not None:
            good &= ~(np.isnan(tap) if np.isnan(nodata) else tap == nodata)
        total += np.where(good, tap * w, 0.0)
        weight += np.where(good, w, 0.0)
    under_c, under_r = np.floor(col + 0.5).astype(int), np.floor(row + 0.5).astype(int)
    under_in = (
        (under_r >= 0) & (under_r < data.shape[0]) & (under_c >= 0) & (under_c < data.shape[1])
    )
    under = values[np.clip(under_r, 0, data.shape[0] - 1), np.clip(under_c, 0, data.shape[1] - 1)]
    if nodata is not None:
        under_in &= ~(np.isnan(under) if np.isnan(nodata) else under == nodata)
    return np.where(under_in & (weight > 0), total / np.where(weight > 0, weight, 1.0), np.nan)


def _expected_s2(paths: dict[str, Path], geobox: GeoBox, offset: int) -> np.ndarray:
    """Reflectance DN of every band on ``geobox``: bilinear, offset removed, 0 where any band
    lacks a value (as the shard format documents)."""
    out = []
    for band in S2_BANDS:
        with rasterio.open(paths[band]) as ds:
            value = _bilinear_at_centres(ds.read(1), ds.transform, ds.crs, geobox, 0)
        dn = np.floor(value + 0.5)
        out.append(np.where(np.isnan(dn), 0, np.clip(dn - offset, 1, 65535)))
    stack = np.stack(out)
    stack[:, (stack == 0).any(axis=0)] = 0
    return stack


# --- small scenes written here -------------------------------------------------------------


def _write(path: Path, data: np.ndarray, transform: Affine, nodata: float | None) -> Path:
    profile = {
        "driver": "GTiff",
        "width": data.shape[-1],
        "height": data.shape[-2],
        "count": 1,
        "dtype": str(data.dtype),
        "crs": f"EPSG:{EPSG}",
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 16,
        "blockysize": 16,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[None])
    return path


def _footprint(
    west: float = X0, north: float = Y0, width: float = 10 * TILE_PX, height: float = 10 * TILE_PX
) -> dict[str, Any]:
    """A UTM rectangle as a lon/lat polygon (the tile's by default)."""
    to_ll = Transformer.from_crs(EPSG, 4326, always_xy=True)
    xs = [west, west + width, west + width, west, west]
    ys = [north, north, north - height, north - height, north]
    lon, lat = to_ll.transform(xs, ys)
    ring = [[float(x), float(y)] for x, y in zip(lon, lat, strict=True)]
    return {"type": "Polygon", "coordinates": [ring]}


def _item(
    item_id: str,
    assets: dict[str, Path],
    properties: dict[str, Any] | None = None,
    geometry: dict[str, Any] | None = None,
) -> SceneItem:
    geometry = geometry or _footprint()
    ring = geometry["coordinates"][0]
    raw = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "test",
        "geometry": geometry,
        "bbox": [
            min(p[0] for p in ring),
            min(p[1] for p in ring),
            max(p[0] for p in ring),
            max(p[1] for p in ring),
        ],
        "properties": {"datetime": WHEN.strftime("%Y-%m-%dT%H:%M:%SZ"), **(properties or {})},
        "assets": {
            key: {"href": str(path), "type": "image/tiff", "roles": ["data"]}
            for key, path in assets.items()
        },
        "links": [],
    }
    return parse_item(raw)


def _truth_dn(seed: int) -> dict[str, np.ndarray]:
    """Reflectance DN (no offset) of each band at its native resolution: smooth fields with
    a block of nodata (0) in every band, so bilinear taps meet its edge."""
    rng = np.random.default_rng(seed)
    out = {}
    for band, gsd in GSD.items():
        n = TILE_PX * 10 // gsd
        base = rng.integers(300, 6000, size=(n, n)).astype(np.uint16)
        base[: n // 3, : n // 3] = 0
        out[band] = base
    return out


def _s2_scene(
    folder: Path,
    item_id: str,
    truth: dict[str, np.ndarray],
    *,
    baseline: str,
    nodata_tag: bool = True,
    scl_value: int = 4,
) -> tuple[SceneItem, dict[str, Path]]:
    """A scene of ``truth`` as a product of ``baseline`` writes it (0 and 65535 are special
    values the offset does not move)."""
    folder.mkdir(parents=True, exist_ok=True)
    offset = 1000 if baseline >= "04.00" else 0
    paths: dict[str, Path] = {}
    for band, dn in truth.items():
        gsd = GSD[band]
        special = (dn == 0) | (dn == 65535)
        shifted = np.where(special, dn, dn.astype(np.int64) + offset).astype(np.uint16)
        transform = Affine(gsd, 0, X0, 0, -gsd, Y0)
        paths[band] = _write(folder / f"{band}.tif", shifted, transform, 0 if nodata_tag else None)
    scl = np.full((TILE_PX // 2, TILE_PX // 2), scl_value, dtype=np.uint8)
    scl[: TILE_PX // 6, : TILE_PX // 6] = 0
    paths["SCL"] = _write(folder / "SCL.tif", scl, Affine(20, 0, X0, 0, -20, Y0), 0)
    item = _item(item_id, paths, {"s2:processing_baseline": baseline, "eo:cloud_cover": 5.0})
    return item, paths


@pytest.fixture
def local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder whose files a :class:`DatasetCache` may open."""
    monkeypatch.setenv("LAS_ALLOWED_FILE_ROOTS", str(tmp_path))
    return tmp_path


@pytest.fixture
def cache() -> Iterator[DatasetCache]:
    opened = DatasetCache()
    with gdal_env():
        yield opened
    opened.close()


def _geobox(dx_m: float = 0.0, dy_m: float = 0.0, size: int = 40) -> GeoBox:
    """A 10 m sample grid over the tile's nodata corner (on the lattice unless shifted)."""
    return GeoBox((size, size), Affine(10, 0, X0 + 100 + dx_m, 0, -10, Y0 - 100 + dy_m), EPSG)


# --- the world's own scenes ----------------------------------------------------------------


def _served_items(served_world: dict, collection: str) -> list[SceneItem]:
    path = served_world["world"] / ".serve" / "stac" / "items" / f"{collection}.json"
    return [parse_item(f) for f in json.loads(path.read_text())["features"]]


def _on_disk(served_world: dict, href: str) -> Path:
    """The world's file behind a served href."""
    return Path(served_world["world"]) / href.removeprefix(served_world["assets_url"]).lstrip("/")


@pytest.mark.parametrize("where", ["inside", "edge"])
def test_world_sentinel2_of_both_baselines_equals_an_independent_bilinear(
    served_world: dict, where: str
) -> None:
    """Every band of both Iowa scenes (03.01 and 04.00) equals bilinear at PROJ-carried
    centres minus the scene's offset: no half-pixel shift of the 20 m and 60 m grids, nothing
    from outside the raster averaged in at its edge, nodata kept."""
    items = [it for it in _served_items(served_world, "sentinel-2-l2a") if "T15" in it.id]
    assert {it.processing_baseline for it in items} == {"03.01", "04.00"}
    if where == "inside":
        geobox = sample_geobox(-93.62, 42.03, 32, 10.0)
    else:  # across the tile's north-west corner: part of the sample has no scene at all
        with rasterio.open(_on_disk(served_world, items[0].asset("B04").href)) as ds:
            x, y = ds.transform * (0, 0)
        lon, lat = Transformer.from_crs(ds.crs, 4326, always_xy=True).transform(x + 5, y - 5)
        geobox = sample_geobox(lon, lat, 32, 10.0)
    cache = DatasetCache()
    try:
        with gdal_env():
            for item in items:
                got = sample_mod._read_s2(item, geobox, cache).astype(np.int64)
                paths = {b: _on_disk(served_world, item.asset(b).href) for b in S2_BANDS}
                offset = 1000 if item.processing_baseline == "04.00" else 0
                expected = _expected_s2(paths, geobox, offset)
                if where == "edge":
                    assert 0 < (expected[0] == 0).mean() < 1
                for i, band in enumerate(S2_BANDS):
                    diff = np.abs(got[i] - expected[i])
                    # GDAL's inexact sixths round a few exact halves of the 60 m bands down.
                    assert diff.max() <= (1 if GSD[band] == 60 else 0), (item.id, band)
                    assert ((got[i] == 0) == (expected[i] == 0)).all(), (item.id, band)
    finally:
        cache.close()


# --- Sentinel-2 scenes written here --------------------------------------------------------


@pytest.mark.parametrize(("dx_m", "dy_m"), [(0.0, 0.0), (5.0, -5.0), (3.0, 7.0)])
def test_one_truth_gives_one_reflectance_across_the_0400_baseline(
    local_files: Path, cache: DatasetCache, dx_m: float, dy_m: float
) -> None:
    """The same reflectance written as a 03.01 product and as a 04.00 one (+1000 DN, special
    values 0 and 65535 unmoved) reads back the same on a grid on the tile's lattice and off
    it, and equals the independent bilinear. On the lattice (where sample grids lie) 10 m
    pixels are copied, so saturated ones stay 65535 (off it, bilinear mixes them with their
    neighbours, as any interpolation would)."""
    on_lattice = (dx_m, dy_m) == (0.0, 0.0)
    truth = _truth_dn(1)
    if on_lattice:
        for band in ("B02", "B03", "B04", "B08"):  # saturated 10 m pixels, away from nodata
            truth[band][40:43, 40:43] = 65535
    old, old_paths = _s2_scene(local_files / "old", "S2A_OLD", truth, baseline="03.01")
    new, _ = _s2_scene(local_files / "new", "S2B_NEW", truth, baseline="04.00")
    geobox = _geobox(dx_m, dy_m)
    got_old = sample_mod._read_s2(old, geobox, cache)
    got_new = sample_mod._read_s2(new, geobox, cache)
    np.testing.assert_array_equal(got_new, got_old)
    expected = _expected_s2(old_paths, geobox, 0)
    assert np.abs(got_old.astype(np.int64) - expected).max() <= 1  # 60 m halves, see above
    assert ((got_old == 0) == (expected == 0)).all()
    if on_lattice:
        b04 = S2_BANDS.index("B04")
        assert (got_new[b04, 30:33, 30:33] == 65535).all()


def test_the_offset_never_turns_nodata_or_dark_pixels_into_other_values(
    local_files: Path, cache: DatasetCache
) -> None:
    """04.00 DN 0 stays nodata, DN 1..1000 (reflectance <= 0) become the smallest value 1,
    exactly as 03.01 products clip them."""
    truth = _truth_dn(2)
    for band in S2_BANDS:
        truth[band][-4:, -4:] = 1  # darkest valid reflectance
    new, _ = _s2_scene(local_files / "new", "S2B_NEW", truth, baseline="04.00")
    got = sample_mod._read_s2(new, _geobox(size=TILE_PX - 10), cache)
    assert (got[:, -1, -1] == 1).all()
    assert (got[:, :5, :5] == 0).all()  # under the nodata corner
    assert got.min() == 0 and (got[got > 0] >= 1).all()


def test_a_band_file_without_a_nodata_tag_does_not_average_its_zeros_in(
    local_files: Path, cache: DatasetCache
) -> None:
    """Sentinel-2 COGs whose files do not declare nodata 0 (the sensor's catalog does) read as
    those that do: zeros at a data edge are not interpolated into small reflectances."""
    truth = _truth_dn(3)
    tagged, _ = _s2_scene(local_files / "tagged", "S2A_TAG", truth, baseline="04.00")
    bare, paths = _s2_scene(
        local_files / "bare", "S2A_BARE", truth, baseline="04.00", nodata_tag=False
    )
    with rasterio.open(paths["B05"]) as ds:
        assert ds.nodata is None
    for geobox in (_geobox(), _geobox(5.0, -5.0)):
        np.testing.assert_array_equal(
            sample_mod._read_s2(bare, geobox, cache), sample_mod._read_s2(tagged, geobox, cache)
        )


# --- Sentinel-1 ----------------------------------------------------------------------------

S1_NODATA = float(sensor("sentinel-1-rtc")["nodata"])


def _s1_cfg(**overrides: Any) -> BuildConfig:
    base: dict[str, Any] = {
        "stac_url": "http://127.0.0.1:1/",
        "start": WHEN - dt.timedelta(days=30),
        "end": WHEN + dt.timedelta(days=30),
        "size_px": 40,
        "resolution_m": 10.0,
        "max_nodata": 0.5,
        "s2_collection": None,
    }
    return BuildConfig(**{**base, **overrides})


def _s1_scene(
    folder: Path,
    item_id: str,
    *,
    tag: float | None = S1_NODATA,
    fill: float = S1_NODATA,
    keys: tuple[str, str] = ("vv", "vh"),
    empty: tuple[str, ...] = (),
    seed: int = 0,
) -> tuple[SceneItem, dict[str, np.ndarray]]:
    """Linear gamma0 on the tile's 10 m grid, ``fill`` in its north-west corner (and all over
    the bands in ``empty``); the file declares ``tag`` as its nodata."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths, arrays = {}, {}
    for key in keys:
        power = rng.gamma(4.4, 0.05 / 4.4, size=(TILE_PX, TILE_PX)).astype(np.float32)
        power[: TILE_PX // 3, : TILE_PX // 3] = fill
        if key in empty:
            power[:] = fill
        arrays[key] = power
        paths[key] = _write(folder / f"{key}.tif", power, Affine(10, 0, X0, 0, -10, Y0), tag)
    item = _item(item_id, paths, {"sat:orbit_state": "ascending"})
    return item, arrays


@pytest.mark.parametrize(
    ("tag", "fill"), [(S1_NODATA, S1_NODATA), (None, S1_NODATA), (float("nan"), float("nan"))]
)
@pytest.mark.parametrize("units", ["linear", "db"])
def test_sentinel1_nodata_is_nan_and_never_interpolated_into_values(
    local_files: Path, cache: DatasetCache, tag: float | None, fill: float, units: str
) -> None:
    """VV/VH equal the independent bilinear of the valid pixels (NaN where the pixel under the
    centre has none), whether the file declares -32768, NaN or nothing (the sensor's -32768
    then); dB is 10 log10 of it."""
    item, arrays = _s1_scene(local_files, "S1A_1", tag=tag, fill=fill)
    geobox = _geobox(5.0, -5.0)  # off the lattice: every centre between four source pixels
    found = sample_mod._read_s1([item], geobox, cache, _s1_cfg(s1_units=units))
    assert found is not None
    used, got = found
    assert used.id == "S1A_1" and got.dtype == np.float32
    for band, key in enumerate(("vv", "vh")):
        expected = _bilinear_at_centres(
            arrays[key], Affine(10, 0, X0, 0, -10, Y0), f"EPSG:{EPSG}", geobox, fill
        )
        if units == "db":
            expected = 10 * np.log10(expected)
        assert 0 < np.isnan(expected).mean() < 0.5
        np.testing.assert_array_equal(np.isnan(got[band]), np.isnan(expected))
        valid = ~np.isnan(expected)
        np.testing.assert_allclose(got[band][valid], expected[valid], rtol=1e-5, atol=1e-6)


def test_a_sentinel1_scene_without_vh_data_is_passed_over(
    local_files: Path, cache: DatasetCache
) -> None:
    """A scene whose VH holds no data under the sample is not taken for complete because its
    VV is: the next scene is."""
    no_vh, _ = _s1_scene(local_files / "a", "S1A_NO_VH", empty=("vh",))
    whole, _ = _s1_scene(local_files / "b", "S1A_WHOLE", seed=1)
    found = sample_mod._read_s1([no_vh, whole], _geobox(), cache, _s1_cfg())
    assert found is not None and found[0].id == "S1A_WHOLE"
    assert sample_mod._read_s1([no_vh], _geobox(), cache, _s1_cfg()) is None


def test_a_sentinel1_scene_of_other_polarisations_does_not_fail_the_sample(
    local_files: Path, cache: DatasetCache
) -> None:
    """An HH/HV scene (polar acquisitions) closest in time is passed over for the next VV/VH
    scene instead of failing the sample on a missing asset; none at all is a skip that says
    why."""
    hh, _ = _s1_scene(local_files / "a", "S1A_HH_HV", keys=("hh", "hv"))
    vv, _ = _s1_scene(local_files / "b", "S1A_VV_VH", seed=1)
    found = sample_mod._read_s1([hh, vv], _geobox(), cache, _s1_cfg())
    assert found is not None and found[0].id == "S1A_VV_VH"
    assert sample_mod._read_s1([hh], _geobox(), cache, _s1_cfg()) is None


def test_sentinel1_units_keep_nan_and_refuse_negative_power() -> None:
    """dB of 0 or a negative power is NaN; linear NaN stays NaN."""
    linear = np.array([0.5, 0.0, np.nan], dtype=np.float32)
    db = s1_to_units(linear, "db")
    assert db[0] == pytest.approx(10 * np.log10(0.5)) and np.isnan(db[1:]).all()
    assert np.isnan(s1_to_units(linear, "linear")[2])


# --- scene choice --------------------------------------------------------------------------


def _scl_scene(folder: Path, item_id: str, scl: np.ndarray, cloud_cover: float) -> SceneItem:
    folder.mkdir(parents=True, exist_ok=True)
    path = _write(folder / "SCL.tif", scl, Affine(20, 0, X0, 0, -20, Y0), 0)
    return _item(item_id, {"SCL": path}, {"eo:cloud_cover": cloud_cover})


def test_scl_classes_count_as_the_shard_format_documents(
    local_files: Path, cache: DatasetCache
) -> None:
    """Every SCL class in equal parts: 0 is nodata; 3 (shadow), 8, 9 (cloud) and 10 (cirrus)
    are cloud over the valid pixels; snow (11), dark, saturated and unclassified are not."""
    classes = np.arange(12, dtype=np.uint8)
    scl = np.tile(np.repeat(classes, 4), (TILE_PX // 2, 1))  # 48 columns: 4 of each class
    item = _scl_scene(local_files, "S2A_SCL", scl, 50.0)
    geobox = GeoBox((TILE_PX, TILE_PX), Affine(10, 0, X0, 0, -10, Y0), EPSG)
    (ranked,) = sample_mod._rank_s2([item], geobox, cache)
    np.testing.assert_array_equal(ranked.scl, np.repeat(scl, 2, axis=0).repeat(2, axis=1))
    assert ranked.nodata_frac == pytest.approx(1 / 12)
    assert ranked.cloud_pct == pytest.approx(100 * 4 / 11)


@pytest.mark.parametrize("all_scenes", [False, True])
def test_scenes_that_tie_on_cloud_are_chosen_alike_in_any_order(
    local_files: Path, cache: DatasetCache, all_scenes: bool
) -> None:
    """Two scenes equally clear over the sample and scene-wide: the same one wins whichever
    order the STAC API lists them in (rustac and pgstac differ), clear or cloudy."""
    geobox = _geobox()
    for value in (4, 9):  # clear, then all cloud: every scene is read and ranked
        scl = np.full((TILE_PX // 2, TILE_PX // 2), value, dtype=np.uint8)
        items = [
            _scl_scene(local_files / f"{value}-{name}", name, scl, 12.5)
            for name in ("S2B_TIE_2", "S2A_TIE_1")
        ]
        chosen = {
            sample_mod._rank_s2(order, geobox, cache, all_scenes=all_scenes)[0].item.id
            for order in (items, items[::-1])
        }
        assert len(chosen) == 1


# --- NAIP ----------------------------------------------------------------------------------


def test_naip_straddling_two_images_is_left_out_not_half_filled(
    local_files: Path, cache: DatasetCache
) -> None:
    """A sample across the seam of two NAIP images takes neither (NAIP is written only where
    one image covers the whole sample, and the index says none was); a sample inside one
    takes it, with no pixel left empty."""
    rng = np.random.default_rng(5)
    items = []
    for i in range(2):  # 480 m images side by side
        path = local_files / f"naip-{i}.tif"
        profile = {
            "driver": "GTiff", "width": 800, "height": 800, "count": 4, "dtype": "uint8",
            "crs": f"EPSG:{EPSG}", "transform": Affine(0.6, 0, X0 + i * 480, 0, -0.6, Y0),
        }  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(rng.integers(1, 256, size=(4, 800, 800), dtype=np.uint8))
        geometry = _footprint(X0 + i * 480, Y0, 480, 480)
        items.append(_item(f"naip_{i}", {"image": path}, geometry=geometry))
    cfg = _s1_cfg(naip_collection="naip", naip_factor=4)

    def naip_of(geobox: GeoBox) -> tuple[SceneItem, np.ndarray] | None:
        west, _, _, north = geobox.boundingbox
        footprint = shape(_footprint(west, north, 160, 160))
        return sample_mod._read_naip(items, geobox, footprint, cache, cfg)

    across = GeoBox((16, 16), Affine(10, 0, X0 + 400, 0, -10, Y0 - 100), EPSG)
    assert naip_of(across) is None
    inside = GeoBox((16, 16), Affine(10, 0, X0 + 500, 0, -10, Y0 - 100), EPSG)
    found = naip_of(inside)
    assert found is not None and found[0].id == "naip_1"
    assert found[1].shape == (4, 64, 64) and (found[1] > 0).all()
