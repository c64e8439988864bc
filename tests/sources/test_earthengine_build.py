"""The build's Earth Engine backend: EE pixels harmonised and written like STAC ones."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import zarr
from fake_earthengine import FakeEarthEngine
from shapely.geometry import box
from test_earthengine import GEOBOX, LAS_S2, info_responder, source

from las_builder.build.config import BuildConfig, LabelSpec
from las_builder.build.run import build_shard, check_earthengine, run_build
from las_builder.build.sample import build_sample_earthengine
from las_builder.build.store import create_store
from las_builder.catalog import load_mapping

LABELS = (
    LabelSpec("esa-worldcover", "esa-worldcover", "map", 2021),
    LabelSpec("dynamic-world-v1", "dynamic-world-v1", "label", None),
)


def _cfg() -> BuildConfig:
    return BuildConfig(
        stac_url="http://127.0.0.1:9/",
        start=dt.datetime(2021, 6, 1, tzinfo=dt.UTC),
        end=dt.datetime(2021, 9, 30, tzinfo=dt.UTC),
        size_px=32,
        resolution_m=10,
        max_nodata=0.2,
        naip_collection=None,
        labels=LABELS,
        backend="earthengine",
    )


def _row() -> dict:
    t = GEOBOX.transform
    return {
        "plan_index": 0,
        "sample_id": "ee-test",
        "shard": 0,
        "epsg": 32631,
        "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "shape": [32, 32],
        "geometry": box(4.34, 50.84, 4.36, 50.86),
    }


def _answers(fake: FakeEarthEngine) -> None:
    fake.value = info_responder()
    fake.values.update({name: 1100 + i for i, name in enumerate(LAS_S2)})
    fake.values.update({"vv": -10.0, "vh": -20.0, "esa-worldcover": 40, "dynamic-world-v1": 4})


def test_earthengine_sample_is_harmonised_like_stac(fake_ee: FakeEarthEngine) -> None:
    _answers(fake_ee)
    outcome = build_sample_earthengine(_row(), source(), _cfg())
    assert outcome.status == "ok", outcome.reason
    cropland = load_mapping("esa-worldcover").map(np.array([40], dtype=np.uint8))[0]
    assert (outcome.arrays["labels/esa-worldcover/las"] == cropland).all()
    assert (outcome.arrays["labels/dynamic-world-v1/las"] == cropland).all()  # DW 4 = crops
    assert (outcome.arrays["consensus"] == cropland).all()
    assert (outcome.arrays["agreement"] == 2).all()
    assert outcome.arrays["sentinel-2"].shape == (12, 32, 32)
    assert outcome.record["agreement"] == 1.0


def test_earthengine_unknown_code_fails_the_sample(fake_ee: FakeEarthEngine) -> None:
    _answers(fake_ee)
    fake_ee.values["esa-worldcover"] = 41  # not a WorldCover code
    outcome = build_sample_earthengine(_row(), source(), _cfg())
    assert outcome.status == "failed"
    assert "esa-worldcover" in outcome.reason and "41" in outcome.reason


def test_earthengine_shard_is_written_to_the_store(
    fake_ee: FakeEarthEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _answers(fake_ee)
    cfg = _cfg()
    monkeypatch.setattr(
        "las_builder.sources.earthengine.EarthEngineSource.from_config",
        classmethod(lambda cls, c, auth=None: source()),
    )
    create_store(str(tmp_path / "las.zarr"), 1, 1, cfg, {})
    rows = build_shard(0, [_row()], cfg, str(tmp_path), 1, 1)
    assert [r["status"] for r in rows] == ["ok"]
    root = zarr.open_group(tmp_path / "las.zarr", mode="r")
    s2 = root["sentinel-2"]
    assert isinstance(s2, zarr.Array)
    s2_first = s2[0]
    assert isinstance(s2_first, np.ndarray)
    assert s2_first.shape == (12, 32, 32)
    consensus = root["consensus"]
    assert isinstance(consensus, zarr.Array)
    consensus_first = consensus[0]
    assert isinstance(consensus_first, np.ndarray)
    assert consensus_first.any()
    assert (tmp_path / "index-parts" / "shard-000000.parquet").exists()


def _planned(out: Path) -> str:
    """An output folder with a one-sample plan (the build reads its shard column first)."""
    import geopandas as gpd

    out.mkdir()
    row = {**_row(), "transform": [_row()["transform"]], "shape": [[32, 32]]}
    frame = gpd.GeoDataFrame(
        {k: [v] if k not in ("transform", "shape") else v for k, v in row.items()},
        geometry="geometry",
        crs="EPSG:4326",
    )
    frame.to_parquet(out / "plan.parquet")
    return str(out)


def test_a_product_earth_engine_lacks_fails_the_build_before_any_shard(tmp_path: Path) -> None:
    cfg = dataclasses.replace(_cfg(), labels=(LabelSpec("esa-cci-lc", "esa-cci-lc", "map", 2020),))
    output = _planned(tmp_path / "las")
    with pytest.raises(ValueError, match="esa-cci-lc.*not available on Earth Engine.*nothing"):
        run_build(cfg, output, 1, workers=0)
    assert not (tmp_path / "las" / "las.zarr").exists()


def test_missing_credentials_fail_the_build_once_before_any_shard(
    no_credentials: None, tmp_path: Path
) -> None:
    """Not one failed sample per sample (each signing in again), and a finished build."""
    output = _planned(tmp_path / "las")
    with pytest.raises(ValueError, match="no Earth Engine credentials.*nothing was built"):
        run_build(_cfg(), output, 1, workers=0)
    assert not (tmp_path / "las" / "las.zarr").exists()


def test_the_sign_in_check_leaves_workers_to_sign_in_themselves(
    fake_ee: FakeEarthEngine, service_account_key: dict, fake_ee_server: FakeEarthEngine
) -> None:
    import ee

    from las_builder.sources.earthengine import EarthEngineAuth

    auth = EarthEngineAuth(key_file=service_account_key["path"], url=fake_ee_server.url)
    check_earthengine(dataclasses.replace(_cfg(), ee_auth=auth))
    assert not ee.data.is_initialized()  # reset: forked workers open their own client
