"""Trying to break the Earth Engine path: bad credentials, a misbehaving wire, odd answers.

As in ``test_earthengine.py``, the real earthengine-api client talks to the fake EE REST server
(``fake_earthengine.py``), here told to misbehave: refuse the token or the project, answer 429
and 5xx, stall, cut its answer short, or answer with an array that is not the one asked for.
Every attack must end in a right sample or an ``EarthEngineError`` / ``EarthEngineNoData``
whose message says what happened, never in a silently wrong sample, a hang or a leaked key.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import traceback
from pathlib import Path
from typing import Any

import ee
import numpy as np
import pytest
from affine import Affine
from fake_earthengine import FakeEarthEngine, constant, resolve
from odc.geo.geobox import GeoBox
from test_earthengine import GEOBOX, LAS_S2, calls, info_responder, source

from las_builder.build.config import BuildConfig, LabelSpec
from las_builder.build.run import _shard_task
from las_builder.build.sample import build_sample_earthengine
from las_builder.build.store import create_store
from las_builder.geobox import sample_geobox
from las_builder.sources.earthengine import (
    EarthEngineAuthError,
    EarthEngineError,
    EarthEngineNoData,
    EarthEngineSource,
    authenticate,
    catalog,
    compute_pixels_grid,
)

# --------------------------------------------------------------------------- helpers


def _shown(err: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    """Everything a user could see of an error: its traceback, repr and the logs."""
    return "".join(traceback.format_exception(err)) + repr(err) + caplog.text


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _retries(monkeypatch: pytest.MonkeyPatch, n: int) -> list[float]:
    """Let the client retry ``n`` times; its back-off sleeps are recorded, not slept."""
    slept: list[float] = []
    ee.data.setMaxRetries(n)
    monkeypatch.setattr("googleapiclient.http.time.sleep", slept.append)
    return slept


def _cfg() -> BuildConfig:
    """The build configuration of the samples of ``source()`` (as test_earthengine_build)."""
    return BuildConfig(
        stac_url="http://127.0.0.1:9/",
        start=dt.datetime(2021, 6, 1, tzinfo=dt.UTC),
        end=dt.datetime(2021, 9, 30, tzinfo=dt.UTC),
        size_px=32,
        resolution_m=10,
        max_nodata=0.2,
        naip_collection=None,
        labels=(
            LabelSpec("esa-worldcover", "esa-worldcover", "map", 2021),
            LabelSpec("dynamic-world-v1", "dynamic-world-v1", "label", None),
        ),
        backend="earthengine",
    )


def _row() -> dict[str, Any]:
    """The planned row of ``GEOBOX``."""
    t = GEOBOX.transform
    return {
        "plan_index": 0,
        "sample_id": "ee-attack",
        "shard": 0,
        "epsg": 32631,
        "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "shape": [32, 32],
    }


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_a_key_path_that_is_a_folder_is_refused_without_showing_it(
    where: str,
    no_credentials: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = tmp_path / "SECRETPATH-keys"
    folder.mkdir()
    caplog.set_level(logging.DEBUG)
    if where == "environment":
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(folder))
    with pytest.raises(EarthEngineAuthError) as err:
        authenticate(str(folder) if where == "argument" else None, project="p")
    expected = "cannot be read" if where == "argument" else "names no file"
    assert expected in str(err.value)
    assert "SECRETPATH" not in _shown(err.value, caplog)


@pytest.mark.parametrize("content", ["", "[1, 2]", '{"type": "service_account"}'])
def test_empty_or_partial_key_files_are_refused(
    content: str, no_credentials: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "SECRETPATH.json"
    path.write_text(content)
    with pytest.raises(EarthEngineAuthError) as err:
        authenticate(str(path), project="p")
    assert "key file" in str(err.value) and "SECRETPATH" not in _shown(err.value, caplog)


def test_a_refused_token_exchange_says_so_without_the_key(
    fake_ee_server: FakeEarthEngine,
    service_account_key: dict[str, Any],
    no_earthengine_network: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An expired or revoked key: Google's token endpoint answers 400 invalid_grant."""
    monkeypatch.delenv("LAS_EE_PROJECT", raising=False)
    fake_ee_server.reset()
    fake_ee_server.token_error = (
        400,
        {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
    )
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(EarthEngineAuthError) as err:
            authenticate(service_account_key["path"], url=fake_ee_server.url)
    finally:
        ee.Reset()
        fake_ee_server.reset()
    message = str(err.value)
    assert "invalid_grant" in message and "key is current" in message
    shown = _shown(err.value, caplog)
    assert "SECRETPATH" not in shown and "PRIVATE KEY" not in shown
    assert service_account_key["info"]["private_key"][40:80] not in shown


def test_a_key_for_another_project_is_refused_with_what_to_check(
    fake_ee_server: FakeEarthEngine,
    service_account_key: dict[str, Any],
    no_earthengine_network: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LAS_EE_PROJECT", raising=False)
    fake_ee_server.reset()
    fake_ee_server.projects = {"the-ee-project"}  # the key's own project is not registered
    try:
        with pytest.raises(EarthEngineAuthError) as err:
            authenticate(service_account_key["path"], url=fake_ee_server.url)
        # Naming the project that is registered works with the same key.
        assert authenticate(service_account_key["path"], "the-ee-project", url=fake_ee_server.url)
    finally:
        ee.Reset()
        fake_ee_server.reset()
    assert "permission to use project test-project" in str(err.value)
    assert "LAS_EE_PROJECT" in str(err.value)  # what to do


def test_credentials_refused_mid_build_stop_the_shard_unfinished(
    fake_ee: FakeEarthEngine,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The token is revoked: the API answers 401, the client's token renewal is refused."""
    fake_ee.value = info_responder()
    fake_ee.errors = [(401, "Request had invalid authentication credentials.", "UNAUTHENTICATED")]
    fake_ee.token_error = (400, {"error": "invalid_grant", "error_description": "revoked"})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EarthEngineAuthError) as err:
        source().fetch(GEOBOX)
    assert "the credentials were refused" in str(err.value) and "invalid_grant" in str(err.value)
    assert "SECRETPATH" not in _shown(err.value, caplog)
    # Not the sample's fault: no sample is recorded failed (only --retry-failed would build it
    # again); the shard stops unfinished, which the next build builds.
    fake_ee.errors = [(401, "Request had invalid authentication credentials.", "UNAUTHENTICATED")]
    with pytest.raises(EarthEngineAuthError):
        build_sample_earthengine(_row(), source(), _cfg())
    fake_ee.errors = [(401, "Request had invalid authentication credentials.", "UNAUTHENTICATED")]
    monkeypatch.setattr(
        "las_builder.sources.earthengine.EarthEngineSource.from_config",
        classmethod(lambda cls, c, auth=None: source()),
    )
    cfg = _cfg()
    create_store(str(tmp_path / "las.zarr"), 1, 1, cfg, {})
    result = _shard_task(0, [_row()], cfg, str(tmp_path), 1, 1)
    assert result["rows"] is None
    assert result["error"].startswith("Earth Engine credentials refused: ")
    assert "SECRETPATH" not in result["error"]
    assert not (tmp_path / "index-parts").exists()


# --------------------------------------------------------------------------- the wire


def test_quota_and_server_errors_are_retried_with_bounded_backoff(
    fake_ee: FakeEarthEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept = _retries(monkeypatch, 3)
    fake_ee.value = info_responder()
    fake_ee.errors = [
        (429, "Too many concurrent aggregations.", "RESOURCE_EXHAUSTED"),
        (503, "The service is currently unavailable.", "UNAVAILABLE"),
    ]
    sample = source(labels=[]).fetch(GEOBOX)
    assert sample.record["s2_item"] and len(slept) == 2  # two retries, then the answer

    # Refused every time: bounded (1 + 3 tries), then a failure that says what to do.
    fake_ee.reset()
    slept.clear()
    fake_ee.value = info_responder()
    fake_ee.errors = [(429, "Too many concurrent aggregations.", "RESOURCE_EXHAUSTED")] * 10
    with pytest.raises(EarthEngineError, match=r"Too many concurrent.*lower workers x threads"):
        source(labels=[]).fetch(GEOBOX)
    assert len(fake_ee.requests) == 4 and len(slept) == 3
    assert all(0 <= s <= 2 ** (n + 1) for n, s in enumerate(slept))  # exponential back-off
    assert len(fake_ee.errors) == 6


def test_a_stalled_answer_times_out_instead_of_hanging(
    fake_ee_server: FakeEarthEngine,
    service_account_key: dict[str, Any],
    no_earthengine_network: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LAS_EE_PROJECT", raising=False)
    fake_ee_server.reset()
    try:
        authenticate(service_account_key["path"], url=fake_ee_server.url)
        # The client's default is to wait for ever; signing in sets the catalog's timeout.
        timeout_s = catalog()["compute_pixels"]["timeout_s"]
        assert ee.data._get_state().deadline_ms == 1000 * timeout_s  # noqa: SLF001
        ee.data.setMaxRetries(0)
        ee.data.setDeadline(200)  # a short one, to keep the test fast
        fake_ee_server.value = info_responder()
        fake_ee_server.delay_s = 1.0
        with pytest.raises(EarthEngineError, match=r"value:compute of .*timed out.*retry"):
            source().fetch(GEOBOX)
    finally:
        ee.Reset()
        fake_ee_server.reset()


def test_an_answer_cut_off_mid_body_is_retried_then_fails_the_sample(
    fake_ee: FakeEarthEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept = _retries(monkeypatch, 2)
    fake_ee.value = info_responder()
    fake_ee.cut_after = 1000  # the scene list (shorter) comes whole, the pixels never do
    with pytest.raises(EarthEngineError, match=r"computePixels of S2 .*IncompleteRead.*retry"):
        source().fetch(GEOBOX)
    assert len(fake_ee.calls("computePixels")) == 3 and len(slept) == 2


@pytest.mark.parametrize(
    "answer",
    [
        lambda a: _npy(a)[: len(_npy(a)) // 2],  # a truncated NPY in a whole HTTP body
        lambda a: b"<html><body>502 Bad Gateway</body></html>",  # a proxy's page, status 200
        lambda a: _npy(a)[:40],  # the header cut
    ],
)
def test_an_answer_that_is_not_a_whole_npy_array_fails_the_sample(
    fake_ee: FakeEarthEngine, answer: Any
) -> None:
    """Before: the NPY decoder's ValueError escaped fetch as an 'unexpected ValueError'."""
    fake_ee.value = info_responder()
    fake_ee.raw_pixels = lambda body, bands, dtype: answer(
        fake_ee.default_pixels(body, bands, dtype)
    )
    with pytest.raises(EarthEngineError, match=r"computePixels of S2 .*not a complete NPY"):
        source().fetch(GEOBOX)
    outcome = build_sample_earthengine(_row(), source(), _cfg())
    assert outcome.status == "failed" and "not a complete NPY" in outcome.reason


# --------------------------------------------------------------------------- the answers


def test_an_answer_in_another_dtype_is_refused_not_cast(fake_ee: FakeEarthEngine) -> None:
    """Before: WorldCover served as uint16 296 became 40 (cropland) in uint8, silently."""
    fake_ee.value = info_responder()

    def wider(body: dict[str, Any], bands: list[str], dtype: str) -> np.ndarray:
        if "esa-worldcover" in bands:
            out = fake_ee.default_pixels(body, bands, "uint16")
            out["esa-worldcover"] = 296
            return out
        return fake_ee.default_pixels(body, bands, dtype)

    fake_ee.pixels = wider
    with pytest.raises(EarthEngineError, match=r"band esa-worldcover came as uint16"):
        source(labels=[("esa-worldcover", 2021)]).fetch(GEOBOX)

    # Reflectance as floats (a cast left out) is refused too, not truncated to integers.
    fake_ee.pixels = lambda body, bands, dtype: fake_ee.default_pixels(
        body, bands, "float64" if "B01" in bands else dtype
    )
    with pytest.raises(EarthEngineError, match=r"band B01 came as float64"):
        source(labels=[]).fetch(GEOBOX)


def test_lossless_dtypes_and_any_field_order_give_the_right_sample(
    fake_ee: FakeEarthEngine,
) -> None:
    """Fields are taken by name: a reversed band order, big-endian or float64 S1 is fine."""
    fake_ee.value = info_responder()

    def shuffled(body: dict[str, Any], bands: list[str], dtype: str) -> np.ndarray:
        dims = body["grid"]["dimensions"]
        shape = (dims["height"], dims["width"])
        wire = {"uint16": ">u2", "float32": "float64", "uint8": "uint8"}[dtype]
        out = np.zeros(shape, dtype=[(b, wire) for b in reversed(bands)])
        for i, band in enumerate(bands):
            out[band] = -(i + 1.0) if dtype == "float32" else 100 + i
        if "SCL" in bands:
            out["SCL"] = 4
        return out

    fake_ee.pixels = shuffled
    sample = source(s1_units="db", labels=[("esa-worldcover", 2021)]).fetch(GEOBOX)
    s2 = sample.arrays["sentinel-2"]
    assert s2.dtype == np.uint16 and [int(s2[i, 3, 3]) for i in range(12)] == list(range(100, 112))
    assert (sample.arrays["sentinel-2-scl"] == 4).all()
    np.testing.assert_array_equal(sample.arrays["sentinel-1"][:, 0, 0], [-1.0, -2.0])
    assert (sample.arrays["labels/esa-worldcover/native"] == 100).all()


def test_an_answer_with_a_band_of_several_values_per_pixel_is_refused(
    fake_ee: FakeEarthEngine,
) -> None:
    fake_ee.value = info_responder()

    def arrays(body: dict[str, Any], bands: list[str], dtype: str) -> np.ndarray:
        dims = body["grid"]["dimensions"]
        return np.zeros((dims["height"], dims["width"]), dtype=[(b, dtype, (2,)) for b in bands])

    fake_ee.pixels = arrays
    with pytest.raises(EarthEngineError, match=r"band B01 came as"):
        source().fetch(GEOBOX)


def test_scene_lists_of_unequal_length_fail_rather_than_mix_up_scenes(
    fake_ee: FakeEarthEngine,
) -> None:
    """aggregate_array leaves out scenes without the property: ids and times no longer pair.

    Before: the second scene was recorded with no cloud value (IndexError) or another scene's.
    """
    second = "20210612T104021_20210612T104528_T31UFT"
    answer = info_responder(s2=[("X", 1, 1.0), (second, 2, 2.0)])

    def one_cloud_missing(tree: Any) -> Any:
        out = answer(tree)
        if "CLOUDY_PIXEL_PERCENTAGE" in out:
            out["CLOUDY_PIXEL_PERCENTAGE"] = out["CLOUDY_PIXEL_PERCENTAGE"][1:]
        return out

    fake_ee.value = one_cloud_missing
    with pytest.raises(EarthEngineError, match=r"unequal length .*CLOUDY_PIXEL_PERCENTAGE': 1"):
        source().fetch(GEOBOX)
    assert fake_ee.calls("computePixels") == []

    fake_ee.reset()
    fake_ee.value = lambda tree: {"system:index": ["X"]}  # not the lists asked for
    with pytest.raises(EarthEngineError, match=r"expected lists"):
        source().fetch(GEOBOX)


def test_dark_pixels_stay_data_and_masked_pixels_nodata(fake_ee: FakeEarthEngine) -> None:
    """The harmonised collection's 0 for a clamped dark pixel must not read as nodata."""
    fake_ee.value = info_responder()
    source(sentinel_1=False, labels=[]).fetch(GEOBOX)
    (body,) = fake_ee.calls("computePixels")
    tree = resolve(body["expression"])
    (lift,) = calls(tree, "Image.max")
    (one,) = calls(lift["image2"], "Image.constant")
    assert constant(one["value"]) == 1
    # The floor applies to the reflectance bands only, before the masked pixels are filled.
    assert [constant(s["newNames"]) for s in calls(lift["image1"], "Image.select")] == [LAS_S2]
    (fill,) = calls(tree, "Image.unmask")
    assert calls(fill["input"], "Image.max")


# --------------------------------------------------------------------------- grids


def test_grids_over_the_limits_are_split_in_rows_and_columns(fake_ee: FakeEarthEngine) -> None:
    """Before: a row wider than the byte limit, or 32768 px, went out as one request anyway."""
    fake_ee.value = info_responder()

    def positions(body: dict[str, Any], bands: list[str], dtype: str) -> np.ndarray:
        """Each pixel holds its own row * 100 + column of the sample grid."""
        out = fake_ee.default_pixels(body, bands, dtype)
        t, dims = body["grid"]["affineTransform"], body["grid"]["dimensions"]
        row0 = round((GEOBOX.transform.f - t["translateY"]) / 10)
        col0 = round((t["translateX"] - GEOBOX.transform.c) / 10)
        rows = np.arange(row0, row0 + dims["height"])[:, None]
        cols = np.arange(col0, col0 + dims["width"])[None, :]
        for band in bands:
            if band != "SCL":
                out[band] = rows * 100 + cols + 1
        return out

    fake_ee.pixels = positions
    # 13 uint16 bands are 26 bytes a pixel: 500 bytes is 19 pixels, less than one 32 px row.
    sample = source(sentinel_1=False, labels=[], max_request_bytes=500).fetch(GEOBOX)
    bodies = fake_ee.calls("computePixels")
    sizes = [(b["grid"]["dimensions"]["height"], b["grid"]["dimensions"]["width"]) for b in bodies]
    assert set(sizes) == {(1, 19), (1, 13)} and len(bodies) == 64
    assert all(h * w * 26 <= 500 for h, w in sizes)
    expected = np.arange(32)[:, None] * 100 + np.arange(32)[None, :] + 1
    assert (sample.arrays["sentinel-2"] == expected).all()

    # More than 32768 pixels a row: split by columns even though the bytes would fit.
    src = source(sentinel_1=False, labels=[])
    windows = src.windows(2, 40_000, 1, 1)
    assert windows == [(0, 2, 0, 32768), (0, 2, 32768, 40_000 - 32768)]
    tall = src.windows(70_000, 1, 1, 1)
    assert [w[1] for w in tall] == [32768, 32768, 70_000 - 2 * 32768]
    with pytest.raises(ValueError, match="1025 bands"):
        src.windows(1, 1, 1025, 1)
    # A request size over EE's own limit is held to it; a negative one is refused.
    assert (
        source(max_request_bytes=10**9).max_request_bytes
        == catalog()["compute_pixels"]["max_bytes"]
    )
    with pytest.raises(ValueError, match="max_request_bytes -1"):
        source(max_request_bytes=-1)


def test_a_window_grid_keeps_the_sample_pixels_for_rotated_grids() -> None:
    """The window's corner moves along both axes of the transform (shears included)."""
    t = Affine(10, 2, 500_000, 3, -10, 5_000_000)
    geobox = GeoBox((8, 8), t, "EPSG:32631")
    grid = compute_pixels_grid(geobox, row0=2, rows=3, col0=5, cols=2)
    g = grid["affineTransform"]
    assert (g["translateX"], g["translateY"]) == (t * (5, 2))
    assert grid["dimensions"] == {"width": 2, "height": 3}


@pytest.mark.parametrize(("lon", "lat"), [(179.99, 0.1), (-179.99, -10.0), (10.0, 87.0)])
def test_samples_on_the_antimeridian_and_near_a_pole_ask_their_own_grid(
    fake_ee: FakeEarthEngine, lon: float, lat: float
) -> None:
    """The request states the sample's UTM/UPS grid and box; nothing is split or wrapped."""
    geobox = sample_geobox(lon, lat, 16, 10)
    assert geobox.crs is not None
    fake_ee.value = info_responder()
    sample = source().fetch(geobox)
    assert sample.arrays["sentinel-2"].shape == (12, 16, 16)
    for body in fake_ee.calls("computePixels"):
        assert body["grid"] == compute_pixels_grid(geobox)
        assert body["grid"]["crsCode"] == f"EPSG:{geobox.crs.epsg}"
    s2_list = resolve(fake_ee.calls("compute")[0]["expression"])
    rects = calls(s2_list, "GeometryConstructors.Rectangle")
    assert rects and all(constant(r["coordinates"]) == list(geobox.boundingbox) for r in rects)
    crs = {constant(p["crs"]) for r in rects for p in calls(r, "Projection")}
    assert crs == {f"EPSG:{geobox.crs.epsg}"}


# --------------------------------------------------------------------------- semantics


def test_dynamic_world_without_sentinel_2_is_a_recipe_error() -> None:
    """Before: every sample got an all-nodata Dynamic World label, silently."""
    with pytest.raises(ValueError, match="dynamic-world-v1 is matched to the chosen Sentinel-2"):
        source(sentinel_2=False, labels=[("dynamic-world-v1", None)])
    assert source(sentinel_2=False, labels=[("esa-worldcover", 2021)]).labels


def test_a_scene_with_no_valid_pixel_counts_as_all_cloud(fake_ee: FakeEarthEngine) -> None:
    """With max_nodata 1 an empty scene passes the nodata test: its cloud is not NaN."""
    fake_ee.value = info_responder()
    fake_ee.values["SCL"] = 0
    src = EarthEngineSource(
        dt.date(2021, 6, 1), dt.date(2021, 9, 30), sentinel_1=False, max_nodata=1.0
    )
    with pytest.raises(EarthEngineNoData, match=r"too cloudy: 100.0% cloud"):
        src.fetch(GEOBOX)
