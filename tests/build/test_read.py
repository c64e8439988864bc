"""Reading windows onto sample grids: stacked reads, scene ranking, empty shard arrays."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.warp import Resampling

from las_builder.build import sample as sample_mod
from las_builder.build.read import read_onto, read_stack_onto
from las_builder.build.store import write_shard

CRS = "EPSG:32633"


def _tif(path: Path, data: np.ndarray, transform: Affine, nodata: float | None) -> Path:
    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype,
        "crs": CRS,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


@pytest.fixture
def bands(tmp_path: Path) -> list[Path]:
    """Three 10 m bands, two 20 m bands and one 20 m band with another nodata."""
    rng = np.random.default_rng(7)
    fine = Affine(10, 0, 400_000, 0, -10, 5_000_000)
    coarse = Affine(20, 0, 400_000, 0, -20, 5_000_000)
    paths = []
    for i in range(3):
        data = rng.integers(1, 5000, (256, 256), dtype="uint16")
        data[:20, :20] = 0  # nodata corner
        paths.append(_tif(tmp_path / f"b10_{i}.tif", data, fine, 0))
    for i in range(2):
        data = rng.integers(1, 5000, (128, 128), dtype="uint16")
        paths.append(_tif(tmp_path / f"b20_{i}.tif", data, coarse, 0))
    data = rng.integers(1, 5000, (128, 128), dtype="uint16")
    paths.append(_tif(tmp_path / "b20_other.tif", data, coarse, 1))
    return paths


def _stacked_and_single(
    paths: list[Path], geobox: GeoBox, resampling: Resampling
) -> tuple[np.ndarray, np.ndarray]:
    """The files read as one stack, and read one by one (then stacked)."""
    datasets = [rasterio.open(p) for p in paths]
    try:
        stacked = read_stack_onto(datasets, geobox, resampling=resampling, nodata=0)
        single = np.concatenate(
            [read_onto(ds, geobox, resampling=resampling, nodata=0) for ds in datasets]
        )
    finally:
        for ds in datasets:
            ds.close()
    return stacked, single


@pytest.mark.parametrize(
    ("origin", "resampling"),
    [
        ((400_500.0, 4_999_500.0), Resampling.bilinear),  # on the 10 m lattice: copied
        ((400_503.0, 4_999_497.0), Resampling.bilinear),  # off the lattice: warped
        ((400_503.0, 4_999_497.0), Resampling.nearest),
        ((399_900.0, 5_000_100.0), Resampling.bilinear),  # over the raster's edge
    ],
)
def test_stacked_read_equals_one_read_per_dataset(
    bands: list[Path], origin: tuple[float, float], resampling: Resampling
) -> None:
    geobox = GeoBox((48, 40), Affine(10, 0, origin[0], 0, -10, origin[1]), CRS)
    stacked, single = _stacked_and_single(bands, geobox, resampling)
    assert stacked.shape == (6, 48, 40) and stacked.dtype == np.uint16
    np.testing.assert_array_equal(stacked, single)
    assert stacked.any()


@pytest.fixture
def ragged_bands(tmp_path: Path) -> list[Path]:
    """Files stacked by grid whose nodata differs: one 10 m band and one 20 m band lack a
    strip that the others of their grid have (as a 60 m band's edge inside the swath)."""
    rng = np.random.default_rng(11)
    fine = Affine(10, 0, 400_000, 0, -10, 5_000_000)
    coarse = Affine(20, 0, 400_000, 0, -20, 5_000_000)
    paths = []
    for i in range(3):
        data = rng.integers(1, 5000, (256, 256), dtype="uint16")
        if i == 1:
            data[:, :70] = 0
        paths.append(_tif(tmp_path / f"b10_{i}.tif", data, fine, 0))
    for i in range(2):
        data = rng.integers(1, 5000, (128, 128), dtype="uint16")
        if i == 1:
            data[:40, :] = 0
        paths.append(_tif(tmp_path / f"b20_{i}.tif", data, coarse, 0))
    return paths


@pytest.mark.parametrize(
    ("pixel", "origin", "resampling"),
    [
        (10, (400_500.0, 4_999_500.0), Resampling.bilinear),  # copy / 20 m zoomed exactly
        (10, (400_503.0, 4_999_497.0), Resampling.bilinear),  # warped
        (10, (400_503.0, 4_999_497.0), Resampling.nearest),
        (40, (400_000.0, 5_000_000.0), Resampling.average),  # averaged onto a coarser grid
        (10, (399_900.0, 5_000_100.0), Resampling.bilinear),  # over the raster's edge
    ],
)
def test_a_band_without_data_where_its_stack_has_some_reads_as_alone(
    ragged_bands: list[Path], pixel: int, origin: tuple[float, float], resampling: Resampling
) -> None:
    """Each file's own nodata counts, not the stack's: a warp of the stack would take a
    pixel as nodata only where every band is, and turn one band's zeros into values."""
    geobox = GeoBox((60, 90), Affine(pixel, 0, origin[0], 0, -pixel, origin[1]), CRS)
    stacked, single = _stacked_and_single(ragged_bands, geobox, resampling)
    np.testing.assert_array_equal(stacked, single)
    assert ((stacked[1] == 0) & (stacked[0] != 0)).any()  # the strip is nodata in its band only


class _FakeCache:
    """Hands out the item itself as its 'dataset' and counts what was opened."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    @contextmanager
    def assets(self, item: Any, *keys: str) -> Iterator[list[Any]]:
        self.opened.append(item.id)
        yield [item for _ in keys]


def _scene(item_id: str, cloud_cover: float, scl: np.ndarray) -> Any:
    return SimpleNamespace(id=item_id, cloud_cover=cloud_cover, assets={"SCL": None}, scl=scl)


def _ranked(
    monkeypatch: pytest.MonkeyPatch, scenes: list[Any], all_scenes: bool
) -> tuple[list[str], list[str]]:
    monkeypatch.setattr(sample_mod, "read_onto", lambda ds, geobox, **kw: ds.scl[None])
    cache = _FakeCache()
    geobox = GeoBox((4, 4), Affine(10, 0, 0, 0, -10, 0), CRS)
    ranked = sample_mod._rank_s2(scenes, geobox, cache, all_scenes=all_scenes)  # type: ignore[arg-type]
    return [c.item.id for c in ranked], cache.opened


def test_ranking_stops_at_a_clear_scene_with_the_same_winner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear = np.full((4, 4), 4, "uint8")  # vegetation
    cloudy = clear.copy()
    cloudy[0] = 9  # cloud high probability
    scenes = [
        _scene("S2-c", 50.0, cloudy),
        _scene("S2-b", 10.0, clear),  # clear over the sample, least cloudy scene-wide
        _scene("S2-a", 30.0, clear),  # clear too, cloudier scene-wide
        _scene("S2-d", 5.0, cloudy),  # least cloudy scene-wide but cloudy over the sample
    ]
    everything, opened_all = _ranked(monkeypatch, scenes, all_scenes=True)
    early, opened_early = _ranked(monkeypatch, scenes, all_scenes=False)
    assert everything[0] == early[0] == "S2-b"
    assert opened_all == ["S2-d", "S2-b", "S2-a", "S2-c"]  # by eo:cloud_cover
    assert opened_early == ["S2-d", "S2-b"]  # stopped at the first clear, complete scene


def test_ranking_reads_every_scene_when_none_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    cloudy = np.full((4, 4), 4, "uint8")
    cloudy[0] = 9
    scenes = [_scene("S2-a", 1.0, cloudy), _scene("S2-b", 2.0, cloudy)]
    ranked, opened = _ranked(monkeypatch, scenes, all_scenes=False)
    assert opened == ["S2-a", "S2-b"] and ranked == ["S2-a", "S2-b"]


def test_an_empty_shard_array_is_not_written_and_a_stale_one_is_removed(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    root = zarr.open_group(url, mode="w", zarr_format=3)
    for name in ("a", "b"):
        root.create_array(name, shape=(8, 4), chunks=(1, 4), shards=(4, 4), dtype="uint8")
    full = np.ones((4, 4), "uint8")
    write_shard(url, 4, {"a": full, "b": full})  # an earlier, killed attempt
    assert (tmp_path / "s.zarr" / "b" / "c" / "1" / "0").exists()
    write_shard(url, 4, {"a": full}, empty=["b"])  # this attempt has nothing for "b"
    assert not (tmp_path / "s.zarr" / "b" / "c" / "1" / "0").exists()
    again = zarr.open_group(url, mode="r")
    a, b = again["a"], again["b"]
    assert isinstance(a, zarr.Array) and isinstance(b, zarr.Array)
    np.testing.assert_array_equal(a[4:], full)
    assert not cast(np.ndarray, b[:]).any()


def test_files_a_killed_write_left_beside_a_shard_are_removed(tmp_path: Path) -> None:
    """zarr writes an object aside (<key>.<uuid>.partial) and renames it; a build killed in
    between leaves the file, which the shard's next writer removes (and only its own shard's)."""
    import uuid

    url = str(tmp_path / "s.zarr")
    root = zarr.open_group(url, mode="w", zarr_format=3)
    for name in ("a", "b"):
        root.create_array(name, shape=(8, 4), chunks=(1, 4), shards=(4, 4), dtype="uint8")
    full = np.ones((4, 4), "uint8")
    write_shard(url, 0, {"a": full, "b": full})
    stale = [
        tmp_path / "s.zarr" / "a" / "c" / "1" / f"0.{uuid.uuid4().hex}.partial",  # never renamed
        tmp_path / "s.zarr" / "b" / "c" / "0" / f"0.{uuid.uuid4().hex}.partial",  # another shard
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half-written")
    lookalike = tmp_path / "s.zarr" / "a" / "c" / "1" / "0.notes.partial"
    lookalike.write_bytes(b"not zarr's")
    write_shard(url, 4, {"a": full, "b": full})
    assert not stale[0].exists()
    assert stale[1].exists()  # shard 0 was not written again: its writer removes it
    assert lookalike.exists()
    assert sorted(p.name for p in (tmp_path / "s.zarr" / "a" / "c" / "1").iterdir()) == [
        "0",
        "0.notes.partial",
    ]


def test_a_store_created_again_loses_files_a_killed_creation_left(tmp_path: Path) -> None:
    import datetime as dt

    from las_builder.build.config import BuildConfig
    from las_builder.build.store import create_store

    cfg = BuildConfig(
        stac_url="http://127.0.0.1:9/",
        start=dt.datetime(2021, 6, 1, tzinfo=dt.UTC),
        end=dt.datetime(2021, 9, 30, tzinfo=dt.UTC),
        size_px=8,
        resolution_m=10,
        max_nodata=0.2,
    )
    out = tmp_path / "las.zarr"
    out.mkdir()
    stale = out / "zarr.0123456789abcdef0123456789abcdef.partial"
    stale.write_bytes(b"{")
    create_store(str(out), 2, 1, cfg, {})
    assert not stale.exists()
    version = zarr.open_group(str(out), mode="r").attrs["las_store_version"]
    assert isinstance(version, int) and version >= 1


def test_a_local_file_written_whole_or_absent_keeps_the_old_one_on_an_error(
    tmp_path: Path,
) -> None:
    from las_builder.build.store import whole_or_absent

    path = tmp_path / "out" / "index.parquet"
    with pytest.raises(RuntimeError), whole_or_absent(str(path)) as f:
        f.write(b"half")
        raise RuntimeError("killed mid-write")
    assert not path.exists() and not list(path.parent.iterdir())  # nor the aside file
    with whole_or_absent(str(path)) as f:
        f.write(b"old, whole")
    with pytest.raises(RuntimeError), whole_or_absent(str(path)) as f:
        f.write(b"new, ha")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old, whole"
    assert [p.name for p in path.parent.iterdir()] == ["index.parquet"]


def test_a_builds_arrays_are_opened_once_and_written_like_uncached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within one build (run_id) write_shard opens the store's arrays once, not per shard;
    the bytes written equal those of uncached writes, and a new build opens them again."""
    from las_builder.build import store as store_mod

    opens: list[str] = []
    real_open = zarr.open_group

    def counting_open(url: str, *args: Any, **kwargs: Any) -> zarr.Group:
        opens.append(url)
        return real_open(url, *args, **kwargs)

    monkeypatch.setattr(zarr, "open_group", counting_open)  # the module store.py calls
    stores = {}
    for label in ("cached", "uncached"):
        url = str(tmp_path / f"{label}.zarr")
        root = real_open(url, mode="w", zarr_format=3)
        for name in ("a", "b"):
            root.create_array(
                name,
                shape=(12, 4),
                chunks=(1, 4),
                shards=(4, 4),
                dtype="uint8",
                compressors=zarr.codecs.ZstdCodec(level=3),
            )
        stores[label] = url
    rng = np.random.default_rng(0)
    shards = [(start, rng.integers(0, 9, (4, 4), dtype="uint8")) for start in (0, 4, 8)]
    for start, data in shards:
        write_shard(stores["cached"], start, {"a": data, "b": data + 1}, run_id="build-1")
        write_shard(stores["uncached"], start, {"a": data, "b": data + 1})
    assert opens.count(stores["cached"]) == 1
    assert opens.count(stores["uncached"]) == 3
    for name in ("a", "b"):
        for key in ("c/0/0", "c/1/0", "c/2/0"):
            cached = (tmp_path / "cached.zarr" / name / key).read_bytes()
            assert cached == (tmp_path / "uncached.zarr" / name / key).read_bytes()
    write_shard(stores["cached"], 0, {"a": shards[0][1]}, run_id="build-2")
    assert opens.count(stores["cached"]) == 2
    assert all(key[0] == "build-2" for key in store_mod._opened)  # the old build's dropped


def test_the_sample_crs_is_made_once_and_equals_its_wkt() -> None:
    from las_builder.build.read import _rio_crs

    a = GeoBox((4, 4), Affine(10, 0, 500000, 0, -10, 4000000), "EPSG:32633")
    b = GeoBox((8, 8), Affine(20, 0, 600000, 0, -20, 4100000), "EPSG:32633")
    assert a.crs is not None and b.crs is not None
    assert _rio_crs(a.crs) is _rio_crs(b.crs)
    assert _rio_crs(a.crs) == rasterio.crs.CRS.from_wkt(a.crs.to_wkt())
    assert _rio_crs(a.crs).to_epsg() == 32633


def test_gdal_and_proj_data_are_pinned_to_rasterios_own_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """So that rasterio stops looking them up at every Env: its own folders where unset, the
    user's where set, and reads still work with them."""
    from las_builder.build import read as read_mod

    package = Path(rasterio.__file__).parent
    for name in ("GDAL_DATA", "PROJ_DATA", "PROJ_LIB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(read_mod, "_data_dirs_pinned", False)
    with read_mod.gdal_env():
        pass
    assert os.environ["GDAL_DATA"] == str(package / "gdal_data")
    assert os.environ["PROJ_DATA"] == str(package / "proj_data")
    import pyproj.datadir

    assert Path(pyproj.datadir.get_data_dir()).is_relative_to(Path(pyproj.__file__).parent)
    with read_mod.gdal_env():
        assert rasterio.crs.CRS.from_epsg(32633).to_epsg() == 32633

    monkeypatch.setenv("GDAL_DATA", "/somewhere/of/mine")
    monkeypatch.delenv("PROJ_DATA")
    monkeypatch.setenv("PROJ_LIB", "/mine/too")
    monkeypatch.setattr(read_mod, "_data_dirs_pinned", False)
    read_mod._pin_data_dirs()
    assert os.environ["GDAL_DATA"] == "/somewhere/of/mine"
    assert "PROJ_DATA" not in os.environ


def test_pool_threads_read_in_the_callers_gdal_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pool threads hold the GDAL options once for their life (no Env per call); options
    changed by the environment get a new pool whose threads hold the new values."""
    from rasterio.env import get_gdal_config

    from las_builder.build import read as read_mod

    def timeouts() -> list[object]:
        calls = [lambda: get_gdal_config("GDAL_HTTP_TIMEOUT") for _ in range(4)]
        return read_mod._parallel(calls)

    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "11")
    assert timeouts() == [11] * 4
    with read_mod.background() as start:
        future = start(lambda: get_gdal_config("GDAL_HTTP_TIMEOUT"))
    assert future.result() == 11
    entered: list[int] = []
    real_enter = rasterio.Env.__enter__

    def counting_enter(self: rasterio.Env) -> Any:
        entered.append(1)
        return real_enter(self)

    monkeypatch.setattr(rasterio.Env, "__enter__", counting_enter)
    for _ in range(5):
        assert timeouts() == [11] * 4
    # At most once per pool thread (ThreadPoolExecutor starts them as calls come), not per call.
    assert len(entered) <= read_mod.IO_THREADS < 20
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "12")
    assert timeouts() == [12] * 4


def test_gdals_download_cache_is_held_small_unless_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GDAL's process-wide cache of downloaded ranges fills as a build reads on (16 MB by
    default): reading threads hold it at 8 MB, and the environment variable overrides it."""
    from rasterio.env import get_gdal_config

    from las_builder.build import read as read_mod

    def cache_sizes() -> list[object]:
        calls = [lambda: get_gdal_config("CPL_VSIL_CURL_CACHE_SIZE") for _ in range(2)]
        return read_mod._parallel(calls)

    # Storage not judged yet: the wide pools, whose threads enter the options themselves.
    monkeypatch.setattr(read_mod, "_storage_speed", read_mod._StorageSpeed())

    monkeypatch.delenv("CPL_VSIL_CURL_CACHE_SIZE", raising=False)
    assert cache_sizes() == [8 << 20] * 2
    monkeypatch.setenv("CPL_VSIL_CURL_CACHE_SIZE", str(32 << 20))
    assert cache_sizes() == [32 << 20] * 2


@pytest.mark.parametrize("k", [2, 3, 6])
@pytest.mark.parametrize(
    ("col", "row"),
    [(37, 45), (0, 0), (-9, 5), (3, -14), (70 * 6 - 20, 30)],  # inside, corner, off each edge
)
def test_a_nearest_read_onto_a_finer_lattice_equals_gdals_warp(
    tmp_path: Path, k: int, col: int, row: int
) -> None:
    """A source on a k-times coarser lattice of the sample's CRS (Sentinel-2 SCL at 20 m onto
    10 m) is read and its pixels repeated, without a warp: equal to GDAL's nearest warp pixel
    for pixel, nodata and pixels off the source included."""
    from rasterio.warp import reproject

    from las_builder.build import read as read_mod

    rng = np.random.default_rng(k * 1000 + col)
    data = rng.integers(0, 12, (70, 70), dtype="uint8")  # 0 = nodata, as in SCL
    coarse = Affine(10 * k, 0, 300_000, 0, -10 * k, 4_200_000)
    path = _tif(tmp_path / "scl.tif", data, coarse, 0)
    geobox = GeoBox((40, 48), Affine(10, 0, 300_000 + 10 * col, 0, -10, 4_200_000 - 10 * row), CRS)
    expected = np.full((1, 40, 48), 255, "uint8")
    with rasterio.open(path) as ds:
        assert read_mod._pixel_zoom(ds, geobox) == (col, row, k)
        reproject(
            rasterio.band(ds, 1),
            expected,
            dst_transform=geobox.transform,
            dst_crs=CRS,
            dst_nodata=255,
            resampling=Resampling.nearest,
        )
        warps: list[int] = []
        real = read_mod.reproject  # type: ignore[attr-defined]  # read.py's import, patched

        def counting(*a: Any, **kw: Any) -> Any:
            warps.append(1)
            return real(*a, **kw)

        read_mod.reproject = counting  # type: ignore[attr-defined]
        try:
            got = read_onto(ds, geobox, nodata=255)
        finally:
            read_mod.reproject = real  # type: ignore[attr-defined]
    assert not warps
    np.testing.assert_array_equal(got, expected)


def test_other_resamplings_onto_a_finer_lattice_still_warp(tmp_path: Path) -> None:
    from las_builder.build import read as read_mod

    data = np.arange(1, 401, dtype="uint16").reshape(20, 20)
    path = _tif(tmp_path / "b.tif", data, Affine(20, 0, 300_000, 0, -20, 4_200_000), 0)
    geobox = GeoBox((16, 16), Affine(10, 0, 300_040, 0, -10, 4_199_960), CRS)
    with rasterio.open(path) as ds:
        stack = read_mod._StackRead([(ds, [1])], geobox, Resampling.bilinear, 0, "uint16")
        assert stack._copy_to is None and stack._src_transform is not None
        same = GeoBox((8, 8), Affine(20, 0, 300_040, 0, -20, 4_199_960), CRS)
        copy = read_mod._StackRead([(ds, [1])], same, Resampling.bilinear, 0, "uint16")
        assert copy._copy_to is not None and copy._take is None  # k = 1: a copy, any resampling


def _aerial(path: Path) -> Path:
    """A 0.6 m, 4-band aerial image (1,100 px square) in the sample's CRS."""
    data = np.random.default_rng(3).integers(1, 255, (4, 1100, 1100), dtype="uint8")
    profile = {
        "driver": "GTiff",
        "width": 1100,
        "height": 1100,
        "count": 4,
        "dtype": "uint8",
        "crs": CRS,
        "transform": Affine(0.6, 0, 400_000, 0, -0.6, 5_000_000),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _fine_geobox(shift: float = 0.0) -> GeoBox:
    """64 px of 10 m split 4 times (2.5 m): what an aerial image is averaged onto."""
    return GeoBox((256, 256), Affine(2.5, 0, 400_010 + shift, 0, -2.5, 4_999_990), CRS)


def test_reads_that_would_overrun_the_budget_wait_for_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three aerial windows, each over half the process's read budget, are read and placed
    one at a time; two small windows still at once."""
    from las_builder.build import read as read_mod

    monkeypatch.setattr(read_mod, "_read_budget", read_mod._ByteBudget(16 * 2**20))

    image = _aerial(tmp_path / "naip.tif")
    small = _tif(
        tmp_path / "small.tif",
        np.ones((256, 256), dtype="uint16"),
        Affine(10, 0, 400_000, 0, -10, 5_000_000),
        0,
    )
    inside = 0
    most = 0
    lock = threading.Lock()
    both_small = threading.Barrier(2, timeout=10)
    real_reproject = read_mod.reproject  # type: ignore[attr-defined]  # read.py's import

    def counting_reproject(*args: Any, **kwargs: Any) -> Any:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        try:
            if args[1].shape[-1] == 48:  # the small warps: both must be in at once
                both_small.wait()
            else:
                time.sleep(0.05)
            return real_reproject(*args, **kwargs)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(read_mod, "reproject", counting_reproject)

    def place(path: Path, geobox: GeoBox, resampling: Resampling) -> np.ndarray:
        with rasterio.open(path) as ds:
            return read_onto(ds, geobox, resampling=resampling, nodata=0)

    large_calls = [(image, _fine_geobox(shift), Resampling.average) for shift in (0.0, 1.0, 2.0)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda call: place(*call), large_calls))
    assert most == 1  # three threads, but one aerial window at a time
    small_geobox = GeoBox((48, 48), Affine(10, 0, 400_503, 0, -10, 4_999_497), CRS)
    most = 0
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: place(small, small_geobox, Resampling.bilinear), range(2)))
    assert most == 2  # small windows are not held back


def test_a_reads_memory_counts_window_result_and_warp(tmp_path: Path) -> None:
    from las_builder.build.read import WARP_MEM_LIMIT_MB, _StackRead

    image = _aerial(tmp_path / "naip.tif")
    with rasterio.open(image) as ds:
        aerial = _StackRead([(ds, [1, 2, 3, 4])], _fine_geobox(), Resampling.average, 0, "uint8")
        both = aerial.source_bytes + aerial.out.nbytes
        assert aerial.source_bytes > 4 * 2**20 and aerial.out.nbytes == 4 * 256 * 256
        warp = min(both, WARP_MEM_LIMIT_MB * 2**20)
        assert aerial.memory_bytes == aerial.source_bytes + both + warp
        # The same image copied onto its own grid: no warp.
        own = GeoBox((1000, 1000), ds.transform, CRS)
        copied = _StackRead([(ds, [1, 2, 3, 4])], own, Resampling.nearest, 0, "uint8")
        assert copied.memory_bytes == 3 * 4 * 1000 * 1000
        # Outside the image: nothing read, nothing held.
        away = GeoBox((8, 8), Affine(10, 0, 900_000, 0, -10, 4_000_000), CRS)
        assert _StackRead([(ds, [1])], away, Resampling.nearest, 0, "uint8").memory_bytes == 0


def test_the_byte_budget_holds_at_most_its_limit() -> None:
    from las_builder.build.read import _ByteBudget

    budget = _ByteBudget(100)
    assert [budget.share(n) for n in (10, 75, 76, 400)] == [10, 75, 75, 75]
    held = 0
    most = 0
    big = 0
    lock = threading.Lock()

    def take(n: int) -> None:
        nonlocal held, most, big
        with budget.hold(n):
            with lock:
                held += budget.share(n)
                most = max(most, held)
                big += n > 75
                assert big <= 1  # requests over the budget never overlap
            time.sleep(0.01)
            with lock:
                held -= budget.share(n)
                big -= n > 75

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(take, [60, 60, 30, 30, 400, 10, 10, 20, 300] * 3))
    assert most <= 100
    assert held == 0 and budget._held == 0


def test_a_warp_in_chunks_equals_gdals_default_warp(tmp_path: Path) -> None:
    from rasterio.warp import reproject

    from las_builder.build import read as read_mod

    image = _aerial(tmp_path / "naip.tif")
    geobox = _fine_geobox(shift=1.3)
    with rasterio.open(image) as ds:
        placed = read_onto(ds, geobox, resampling=Resampling.average, nodata=0)
        whole = np.zeros_like(placed)
        reproject(
            ds.read(),
            whole,
            src_transform=ds.transform,
            src_crs=ds.crs,
            src_nodata=0,
            dst_transform=geobox.transform,
            dst_crs=ds.crs,
            dst_nodata=0,
            resampling=Resampling.average,
            warp_mem_limit=256,  # one chunk
        )
    assert read_mod.WARP_MEM_LIMIT_MB < 64  # GDAL's default: the placed read was chunked
    np.testing.assert_array_equal(placed, whole)


def test_samples_compressed_as_they_arrive_write_the_same_shard(tmp_path: Path) -> None:
    """``_ShardArrays`` compresses each sample's chunk as the sample finishes (from several
    threads, in any order) for arrays of the store's own layout, and keeps other layouts
    whole; the shard it writes equals a whole-array write byte for byte: a sample never put
    (skipped) and a sample all fill are not stored, an array nobody filled is no object."""
    from concurrent.futures import ThreadPoolExecutor

    from las_builder.build.run import _ShardArrays
    from las_builder.build.store import ArraySpec, direct_arrays

    specs = {
        "s2": ArraySpec((3, 4, 4), "uint16", 0, ("band", "y", "x"), {}),
        "labels/x": ArraySpec((4, 4), "uint8", 255, ("y", "x"), {}),
        # two samples a chunk: through zarr
        "whole": ArraySpec((4, 4), "float32", float("nan"), ("y", "x"), {}),
        "naip": ArraySpec((4, 4), "uint8", 0, ("y", "x"), {}),  # nobody brings any
    }
    rng = np.random.default_rng(3)
    samples: dict[int, dict[str, np.ndarray]] = {
        slot: {
            "s2": rng.integers(1, 900, (3, 4, 4), dtype="uint16"),
            "labels/x": rng.integers(0, 9, (4, 4), dtype="uint8"),
            "whole": rng.random((4, 4), dtype="float32"),
        }
        for slot in (0, 1, 3, 4, 5, 7)  # 2 and 6 skipped
    }
    samples[4]["labels/x"][:] = 255  # all fill: no chunk
    stores = {}
    for how in ("sample by sample", "whole arrays"):
        url = str(tmp_path / f"{how}.zarr")
        root = zarr.open_group(url, mode="w", zarr_format=3)
        for path, spec in specs.items():
            chunks = (2, *spec.shape) if path == "whole" else (1, *spec.shape)
            root.create_array(
                path,
                shape=(16, *spec.shape),
                chunks=chunks,
                shards=(8, *spec.shape),
                dtype=spec.dtype,
                fill_value=spec.fill,
                compressors=zarr.codecs.ZstdCodec(level=3),
            )
        if how == "sample by sample":
            direct = direct_arrays(url, specs, 8, "build-x")
            assert sorted(direct) == ["labels/x", "naip", "s2"]
            arrays = _ShardArrays(specs, 8, direct)
            order = [5, 0, 7, 3, 1, 4]
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda slot, a=arrays: a.put(slot, samples[slot]), order))
            assert "s2" not in arrays.filled and "whole" in arrays.filled
            assert arrays.encoded["labels/x"][4] is None and arrays.encoded["s2"][2] is None
            assert sorted(arrays.empty) == ["naip"]
            arrays.write(url, 8, "build-x")
        else:
            whole = {}
            for path, spec in specs.items():
                if path == "naip":
                    continue
                data = np.full((8, *spec.shape), spec.fill, dtype=spec.dtype)
                for slot, arrays_of in samples.items():
                    data[slot] = arrays_of[path]
                whole[path] = data
            write_shard(url, 8, whole, empty=["naip"])
        stores[how] = {
            str(p.relative_to(tmp_path / f"{how}.zarr")): p.read_bytes()
            for p in sorted((tmp_path / f"{how}.zarr").rglob("*"))
            if p.is_file()
        }
    assert stores["sample by sample"] == stores["whole arrays"]
    assert "s2/c/1/0/0/0" in stores["whole arrays"] and "naip/c/1/0/0" not in stores["whole arrays"]


def test_a_snowy_winter_scene_loses_to_a_less_clear_summer_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SCL 11 (snow) was not ranked against: a cloudless winter scene whose snow hid the
    fields that the annual label products map beneath it was chosen over a summer scene with
    a little cloud. Snow now counts like cloud in the ranking (never in the skip for cloud)."""
    fields = np.full((4, 4), 4, "uint8")  # vegetation
    winter = fields.copy()
    winter[:3] = 11  # 75 % snow, no cloud
    summer = fields.copy()
    summer[0, :2] = 9  # 12.5 % cloud
    scenes = [_scene("S2-winter", 1.0, winter), _scene("S2-summer", 20.0, summer)]
    for all_scenes in (False, True):
        ranked, opened = _ranked(monkeypatch, scenes, all_scenes)
        assert ranked[0] == "S2-summer"
        assert opened == ["S2-winter", "S2-summer"]  # a snowy scene does not end the search


def test_on_a_glacier_every_scene_is_snow_and_the_cloud_decides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ice = np.full((4, 4), 11, "uint8")
    cloudy = ice.copy()
    cloudy[0] = 8
    scenes = [_scene("S2-cloudy", 1.0, cloudy), _scene("S2-clear", 9.0, ice)]
    ranked, _ = _ranked(monkeypatch, scenes, all_scenes=False)
    assert ranked[0] == "S2-clear"
    monkeypatch.setattr(sample_mod, "read_onto", lambda ds, geobox, **kw: ds.scl[None])
    geobox = GeoBox((4, 4), Affine(10, 0, 0, 0, -10, 0), CRS)
    (best, _) = sample_mod._rank_s2(scenes, geobox, _FakeCache())  # type: ignore[arg-type]
    assert best.cloud_pct == 0.0 and best.snow_pct == 100.0  # snow is not cloud: not skipped
