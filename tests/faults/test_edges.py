"""Edge samples and edge rasters: the antimeridian, the poles, all-nodata windows, no CRS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import zarr
from affine import Affine
from faultkit import build_args
from rasterio.warp import Resampling, reproject
from typer.testing import CliRunner

from las_builder.build.read import DatasetCache, ReadError, read_onto
from las_builder.cli import app
from las_builder.geobox import geobox_footprint, sample_geobox, sample_id
from las_builder.plan import PLAN_COLUMNS, write_plan

WC_2021 = "assets/esa-worldcover/v200/2021/map/ESA_WorldCover_10m_2021_v200_{}_Map.tif"
EDGES = {"antimeridian": (180.0, -16.5487), "north-pole": (0.0, 90.0), "south-pole": (0.0, -90.0)}


def _row(lon: float, lat: float, shard: int, index: int) -> dict:
    geobox = sample_geobox(lon, lat, 32, 10.0)
    assert geobox.crs is not None and geobox.crs.epsg is not None
    t = geobox.transform
    return {
        "sample_id": sample_id(lon, lat, 400.0, resolution_m=10.0, size_px=32),
        "lon": lon,
        "lat": lat,
        "geometry": geobox_footprint(geobox),
        "epsg": int(geobox.crs.epsg),
        "transform": [float(v) for v in (t.a, t.b, t.c, t.d, t.e, t.f)],
        "shape": [int(v) for v in geobox.shape.yx],
        "resolution_m": 10.0,
        "stratum": None,
        "shard": shard,
        "plan_index": index,
    }


@pytest.fixture(scope="module")
def edge_build(served_world: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 4 planned samples (one shard) plus a shard of the three edge samples."""
    out = tmp_path_factory.mktemp("edges") / "las"
    args = build_args(served_world["stac_url"], out, "sample.count=4")
    result = CliRunner().invoke(app, ["plan", *args, "--quiet"])
    assert result.exit_code == 0, result.output
    plan = gpd.read_parquet(out / "plan.parquet")
    extra = gpd.GeoDataFrame(
        [_row(lon, lat, 1, 4 + i) for i, (lon, lat) in enumerate(EDGES.values())],
        geometry="geometry",
        crs=4326,
    )
    merged = gpd.GeoDataFrame(pd.concat([plan, extra], ignore_index=True), crs=4326)
    for column, dtype in plan.dtypes.items():
        if column != "geometry":
            merged[column] = merged[column].astype(dtype)
    write_plan(merged[list(PLAN_COLUMNS)], out / "plan.parquet")
    result = CliRunner().invoke(app, ["build", *args, "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_the_antimeridian_sample_reads_both_sides(edge_build: Path, served_world: dict) -> None:
    index = gpd.read_parquet(edge_build / "index.parquet").set_index("plan_index")
    row = index.loc[4]
    assert row["geometry"].geom_type == "MultiPolygon"  # split at the antimeridian
    if row["status"] != "ok":  # a recorded skip is acceptable, a wrong sample is not
        assert row["reason"], row
        return
    world = served_world["world"]
    used = json.loads(row["esa-worldcover_items"])
    assert len(used) == 2, "both tiles (east and west of 180) cover the sample"
    expected = np.zeros((32, 32), dtype="uint8")
    for tile in ("S18E177", "S18W180"):
        with rasterio.open(world / WC_2021.format(tile)) as src:
            part = np.zeros_like(expected)
            reproject(
                rasterio.band(src, 1),
                part,
                dst_transform=Affine(*row["transform"]),
                dst_crs=f"EPSG:{row['epsg']}",
                dst_nodata=0,
                resampling=Resampling.nearest,
            )
        assert part.any(), f"{tile} contributes to the sample"
        expected[expected == 0] = part[expected == 0]
    root = zarr.open_group(edge_build / "las.zarr", mode="r")
    native = cast(zarr.Array, root["labels/esa-worldcover/native"])
    np.testing.assert_array_equal(native[4], expected)


def test_polar_samples_are_skipped_with_a_reason(edge_build: Path) -> None:
    index = gpd.read_parquet(edge_build / "index.parquet").set_index("plan_index")
    assert len(index) == 7
    for i in (5, 6):
        assert index.loc[i, "status"] == "skipped"
        assert index.loc[i, "reason"].startswith("no sentinel-2-l2a scene")
    assert (index.loc[[0, 1, 2, 3], "status"] == "ok").all()


def _cog(path: Path, data: np.ndarray, crs: str | None, nodata: float = 0) -> Path:
    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": str(data.dtype),
        "nodata": nodata,
        "transform": Affine(10, 0, 500_000, 0, -10, 4_000_000),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def test_an_all_nodata_window_reads_as_fill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAS_ALLOWED_FILE_ROOTS", str(tmp_path))
    path = _cog(tmp_path / "empty.tif", np.zeros((512, 512), "uint8"), "EPSG:32633")
    geobox = sample_geobox(15.0 + 0.02, 36.1, 32, 10.0)  # inside the raster, UTM 33N
    cache = DatasetCache()
    try:
        with cache.borrow(str(path)) as (ds,):
            out = read_onto(ds, geobox, nodata=0)
    finally:
        cache.close()
    assert out.shape == (1, 32, 32) and not out.any()


def test_a_raster_without_crs_is_a_read_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAS_ALLOWED_FILE_ROOTS", str(tmp_path))
    path = _cog(tmp_path / "nocrs.tif", np.ones((64, 64), "uint8"), None)
    cache = DatasetCache()
    with pytest.raises(ReadError, match="has no CRS"), cache.borrow(path.as_uri()):
        pass
    with pytest.raises(ReadError, match="has no CRS"), cache.borrow(path.as_uri()):
        pass  # remembered: no second open
