"""Faults between the build and its sources: retried when transient, recorded when not.

The tiny world is served behind two fault-injecting proxies (``proxy.py``): one in front of the
STAC API, which rewrites asset hrefs to the other, in front of the asset server, and appends a
SAS-like token to them. Each test injects faults and checks that the build exits 0, that
transient faults leave the dataset byte-identical to a clean build, and that persistent ones
fail exactly the samples that read the broken asset, with a reason naming its href (never the
token), while every other sample equals the clean build.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import cast

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import zarr
from faultkit import SECRETS, Proxied, build_args, item_of, world_items, zarr_digest
from proxy import Fault
from typer.testing import CliRunner

from las_builder.build.search import StacSearcher
from las_builder.cli import app

LABELS = [
    "esa-worldcover",
    "io-lulc-annual-v02",
    "esa-cci-lc",
    "modis-12Q1-061",
    "dynamic-world-v1",
]
WC = "assets/esa-worldcover/v200/2021/map/ESA_WorldCover_10m_2021_v200_{}_Map.tif"
LULC = "assets/io-lulc-annual-v02/2021/{}_20210101-20220101.tif"


def _plan(stac_url: str, out: Path, clean: Path | None = None) -> None:
    """Plan, or copy the clean build's plan (the same recipe gives the same plan).

    ``las plan`` is not under test here: plans are made before faults are injected.
    """
    if clean is not None:
        out.mkdir(parents=True)
        shutil.copy(clean / "plan.parquet", out / "plan.parquet")
        return
    result = CliRunner().invoke(app, ["plan", *build_args(stac_url, out), "--quiet"])
    assert result.exit_code == 0, result.output


def _build(stac_url: str, out: Path) -> str:
    result = CliRunner().invoke(app, ["build", *build_args(stac_url, out)])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def clean(proxied_world: Proxied, tmp_path_factory: pytest.TempPathFactory) -> Path:
    proxied_world.reset()
    out = tmp_path_factory.mktemp("clean") / "las"
    _plan(proxied_world.stac.url, out)
    _build(proxied_world.stac.url, out)
    return out


def _index(out: Path) -> pd.DataFrame:
    return gpd.read_parquet(out / "index.parquet").set_index("sample_id")


def _expected_failures(clean: Path, broken: dict[str, str]) -> dict[str, str]:
    """sample id -> what its reason must name, for the samples that read a broken item.

    Labels are read in recipe order and the items of a product in record order; the first
    broken one fails the sample.
    """
    expected: dict[str, str] = {}
    for sample_id, row in _index(clean).iterrows():
        assert isinstance(sample_id, str)  # the index is the sample ids
        for product in LABELS:
            used = (
                json.loads(row[f"{product}_items"])
                if isinstance(row.get(f"{product}_items"), str)
                else []
            )
            hit = next((item for item in used if item in broken), None)
            if hit is not None:
                expected[sample_id] = broken[hit]
                break
    return expected


def _check_against_clean(out: Path, clean: Path, expected: dict[str, str]) -> None:
    """Failed exactly where expected, with the href in the reason; all else equals clean."""
    index, reference = _index(out), _index(clean)
    assert index.index.tolist() == reference.index.tolist()
    root, ref_root = (
        zarr.open_group(out / "las.zarr", mode="r"),
        zarr.open_group(clean / "las.zarr", mode="r"),
    )
    for sample_id, row in index.iterrows():
        assert isinstance(sample_id, str)  # the index is the sample ids
        ref = reference.loc[sample_id]
        for secret in SECRETS:
            assert secret not in row["reason"], row["reason"]
        if sample_id in expected:
            assert row["status"] == "failed", (sample_id, row["reason"])
            assert expected[sample_id] in row["reason"], (row["reason"], expected[sample_id])
            continue
        assert row["status"] == ref["status"], (sample_id, row["reason"])
        assert row["reason"] == ref["reason"]
        if row["status"] == "ok":
            i = int(row["zarr_index"])
            for name in (
                "sentinel-2",
                "sentinel-1",
                "naip",
                "consensus",
                "labels/esa-worldcover/native",
            ):
                array, ref_array = cast(zarr.Array, root[name]), cast(zarr.Array, ref_root[name])
                np.testing.assert_array_equal(array[i], ref_array[i], err_msg=f"{sample_id} {name}")


def _assert_no_secret_in(folder: Path, *texts: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, f"{secret} in {path}"
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_clean_build_through_the_proxies(clean: Path) -> None:
    index = _index(clean)
    assert (index["status"] == "ok").sum() >= 10
    _assert_no_secret_in(clean)


def test_transient_faults_are_retried_and_change_nothing(
    proxies: Proxied, clean: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    out = tmp_path / "las"
    _plan(proxies.stac.url, out, clean)
    proxies.stac.set_faults(
        [
            Fault(r"^/search", "status", times=2, status=503),
            Fault(r"^/search", "delay", times=1, delay_s=4),  # beyond LAS_STAC_TIMEOUT_S=2
            Fault(r"^/collections/", "reset", times=1),
            Fault(r"^/collections/", "status", times=1, status=502),
        ]
    )
    proxies.assets.set_faults(
        [
            Fault(r"N42W096_Map\.tif", "status", times=2, status=503),
            Fault(r"35W_2021", "status", times=1, status=500),
            Fault(r"T35WMS_label\.tif", "reset", times=2),
            Fault(r"/sentinel-2-l2a/.*B04", "delay", times=1, delay_s=4),  # GDAL_HTTP_TIMEOUT=2
            Fault(r"/naip/", "truncate", times=1, keep=0.3, methods=("GET",)),
            Fault(r"60K_2021", "truncate", times=1, keep=0.5, methods=("GET",)),
        ]
    )
    output = _build(proxies.stac.url, out)
    for kind in ("status", "delay", "reset"):
        assert proxies.stac.count(kind) >= 1, kind
    for kind in ("status", "reset", "delay", "truncate"):
        assert proxies.assets.count(kind) >= 1, kind
    assert zarr_digest(out / "las.zarr") == zarr_digest(clean / "las.zarr")
    pd.testing.assert_frame_equal(_index(out), _index(clean))
    _assert_no_secret_in(out, output, caplog.text)


def test_persistent_404_corrupt_and_crsless_assets_fail_only_their_samples(
    proxies: Proxied, clean: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    world = proxies.world
    out = tmp_path / "las"
    _plan(proxies.stac.url, out, clean)
    corrupt, crsless = tmp_path / "corrupt.tif", tmp_path / "crsless.tif"
    lulc_35w = LULC.format("35W")
    with rasterio.open(world / lulc_35w) as ds:  # overwrite every full-resolution tile
        blocks = [
            (
                int(ds.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1)),
                int(ds.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1)),
            )
            for r in range(-(-ds.height // ds.block_shapes[0][0]))
            for c in range(-(-ds.width // ds.block_shapes[0][1]))
        ]
    data = bytearray((world / lulc_35w).read_bytes())
    for offset, size in blocks:
        data[offset : offset + size] = bytes((i * 37 + 11) % 256 for i in range(size))
    corrupt.write_bytes(bytes(data))
    wc_fiji = WC.format("S18E177")
    with rasterio.open(world / wc_fiji) as ds:
        profile = {**ds.profile, "driver": "GTiff", "crs": None}
        with rasterio.open(crsless, "w", **profile) as dst:
            dst.write(ds.read())
    wc_iowa = WC.format("N42W096")
    proxies.assets.set_faults(
        [
            Fault(re_path(wc_iowa), "status", status=404),
            Fault(re_path(lulc_35w), "file", path=corrupt),
            Fault(re_path(wc_fiji), "file", path=crsless),
        ]
    )
    broken = {
        item_of(world, wc_iowa): proxies.href(wc_iowa),
        item_of(world, lulc_35w): proxies.href(lulc_35w),
        item_of(world, wc_fiji): proxies.href(wc_fiji),
    }
    output = _build(proxies.stac.url, out)
    expected = _expected_failures(clean, broken)
    assert len(set(expected.values())) == 3, "each fault must fail some sample"
    _check_against_clean(out, clean, expected)
    reasons = _index(out).loc[list(expected), "reason"]
    assert reasons.str.contains("404").any()
    assert reasons.str.contains("has no CRS").any()
    assert reasons.str.contains("cannot read").any()
    _assert_no_secret_in(out, output, caplog.text)


def test_a_band_without_data_under_classified_scl_skips_its_samples(
    proxies: Proxied, clean: Path, tmp_path: Path
) -> None:
    """A band with no value where SCL has a class (the edge of a 60 m band): those pixels
    are nodata (harmonisation zeroes them in every band), so the samples are skipped for
    too much nodata, not kept as ok with an empty image and nodata_pct 0."""
    world = proxies.world
    out = tmp_path / "las"
    _plan(proxies.stac.url, out, clean)
    reference = _index(clean)
    scene = reference.loc[reference["status"] == "ok", "s2_item"].iloc[0]
    band = world_items(world)[scene]["assets"]["B09"]["href"]
    blank = tmp_path / "B09_nodata.tif"
    with rasterio.open(world / band) as ds:
        profile = {**ds.profile, "driver": "GTiff"}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(blank, "w", **profile) as dst:
            dst.write(np.zeros((ds.count, ds.height, ds.width), dtype=ds.dtypes[0]))
    proxies.assets.set_faults([Fault(re_path(band), "file", path=blank)])
    _build(proxies.stac.url, out)
    index = _index(out)
    hit = reference.index[reference["s2_item"] == scene]
    assert (reference.loc[hit, "status"] == "ok").all() and len(hit) >= 1
    assert (index.loc[hit, "status"] == "skipped").all()
    assert (
        index.loc[hit, "reason"]
        .str.startswith(
            f"too much nodata: 100.0% of the sample without Sentinel-2 data (SCL 0 or a band "
            f"missing) in {scene}"
        )
        .all()
    )
    rest = reference.index.difference(hit)
    pd.testing.assert_frame_equal(index.loc[rest], reference.loc[rest])


def test_a_naip_raster_smaller_than_its_footprint_is_not_used(
    proxies: Proxied, clean: Path, tmp_path: Path
) -> None:
    """The STAC footprint says the image covers the sample, its raster does not: the sample
    gets no aerial image (the worker logs a warning naming the item), never a partly empty
    one."""
    world = proxies.world
    out = tmp_path / "las"
    _plan(proxies.stac.url, out, clean)
    reference = _index(clean)
    with_naip = reference[reference["naip_item"].notna()]
    assert len(with_naip) >= 1
    item = str(with_naip["naip_item"].iloc[0])
    image = world_items(world)[item]["assets"]["image"]["href"]
    corner = tmp_path / "naip_corner.tif"
    with rasterio.open(world / image) as ds:
        window = rasterio.windows.Window(0, 0, 16, 16)
        profile = {**ds.profile, "driver": "GTiff", "width": 16, "height": 16}
        profile["transform"] = ds.window_transform(window)
        for key in ("blockxsize", "blockysize", "tiled"):
            profile.pop(key, None)
        with rasterio.open(corner, "w", **profile) as dst:
            dst.write(ds.read(window=window))
    proxies.assets.set_faults([Fault(re_path(image), "file", path=corner)])
    _build(proxies.stac.url, out)
    index = _index(out)
    hit = with_naip.index[with_naip["naip_item"] == item]
    assert index.loc[hit, "naip_item"].isna().all()
    assert (index.loc[hit, "status"] == "ok").all()
    root = zarr.open_group(out / "las.zarr", mode="r")
    for i in index.loc[hit, "zarr_index"]:
        assert not np.asarray(cast(zarr.Array, root["naip"])[int(i)]).any()
    rest = reference.index.difference(hit)
    pd.testing.assert_frame_equal(index.loc[rest], reference.loc[rest])


def re_path(path: str) -> str:
    return "^/" + path.replace(".", r"\.")


def test_truncated_cog_truncated_body_and_missing_asset_fail_only_their_samples(
    proxies: Proxied, clean: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    world = proxies.world
    out = tmp_path / "las"
    _plan(proxies.stac.url, out, clean)
    wc_lapland, lulc_iowa, wc_fiji_west = (
        WC.format("N69E024"),
        LULC.format("15T"),
        WC.format("S18W180"),
    )
    truncated = tmp_path / "truncated.tif"
    data = (world / wc_lapland).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    proxies.assets.set_faults(
        [
            Fault(re_path(wc_lapland), "file", path=truncated),
            Fault(re_path(lulc_iowa), "truncate", keep=0.4, methods=("GET",)),
        ]
    )
    missing = item_of(world, wc_fiji_west)
    proxies.edits[missing] = {"map": None}
    broken = {
        item_of(world, wc_lapland): proxies.href(wc_lapland),
        item_of(world, lulc_iowa): proxies.href(lulc_iowa),
        missing: f"item {missing!r} has no asset 'map'",
    }
    output = _build(proxies.stac.url, out)
    expected = _expected_failures(clean, broken)
    assert len(set(expected.values())) == 3, "each fault must fail some sample"
    _check_against_clean(out, clean, expected)
    _assert_no_secret_in(out, output, caplog.text)


def test_stac_outage_leaves_the_shard_for_the_next_run(
    proxies: Proxied, clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StacSearcher.__init__, "__defaults__", (1, 0.05, None, None))
    out = tmp_path / "las"
    runner = CliRunner()
    args = build_args(proxies.stac.url, out)
    _plan(proxies.stac.url, out, clean)
    plan = gpd.read_parquet(out / "plan.parquet")
    struck = set(plan.loc[plan["lat"].between(68, 70), "shard"])  # the Lapland samples' shards
    assert 1 <= len(struck) < plan["shard"].nunique()
    # Every search of the Lapland samples (latitude 69) fails, whichever worker thread sends
    # it and when: their shards run out of tries, the others build.
    lapland = Fault(r"^/search", "status", status=503, body=r",\s*69\.\d+\s*\]")
    proxies.stac.set_faults([lapland])
    result = runner.invoke(app, ["build", *args, "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"{len(struck)} of 3 shards were not built" in result.output
    assert "HTTP 503" in result.output and "run `las build` again" in result.output
    status = json.loads(runner.invoke(app, ["build", *args, "--status"]).output)
    assert status["shards_done"] == 3 - len(struck)
    assert status["shards_remaining"] == len(struck)
    built_shards = set(range(3)) - struck
    assert len(_index(out)) == 4 * len(built_shards)  # what was built is indexed
    assert set(_index(out)["shard"]) == built_shards
    assert lapland.hits == 2 * len(struck)  # per shard: 1 retry, then given up
    proxies.stac.set_faults([])
    result = runner.invoke(app, ["build", *args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert zarr_digest(out / "las.zarr") == zarr_digest(clean / "las.zarr")
    pd.testing.assert_frame_equal(_index(out), _index(clean))


def test_refused_hrefs_fail_their_samples_unread(
    proxies: Proxied, clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = proxies.world
    out = tmp_path / "las"
    _plan(proxies.stac.url, out, clean)
    monkeypatch.setenv("LAS_ALLOWED_FILE_ROOTS", str(world / "assets"))
    secret = tmp_path / "secret.tif"  # a readable raster outside the allowed root
    shutil.copy(world / WC.format("N69E024"), secret)
    hrefs = {
        WC.format("N42W096"): "/etc/passwd",
        WC.format("N69E024"): secret.as_uri(),
        WC.format("S18E177"): "ftp://127.0.0.1/map.tif",
        WC.format("S18W180"): str(world / WC.format("S18W180")),  # allowed: builds as usual
    }
    for path, href in hrefs.items():
        proxies.edits[item_of(world, path)] = {"map": href}
    broken = {
        item_of(world, WC.format("N42W096")): "refused /etc/passwd: local file",
        item_of(world, WC.format("N69E024")): "outside the allowed roots",
        item_of(world, WC.format("S18E177")): "scheme ftp:// is not allowed",
    }
    output = _build(proxies.stac.url, out)
    expected = _expected_failures(clean, broken)
    assert len(set(expected.values())) == 3
    _check_against_clean(out, clean, expected)
    west = [
        i
        for i, row in _index(clean).iterrows()
        if item_of(world, WC.format("S18W180")) in str(row["esa-worldcover_items"])
    ]
    assert west and (_index(out).loc[west, "status"] == "ok").all()
    _assert_no_secret_in(out, output)
