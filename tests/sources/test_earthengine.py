"""The Earth Engine source, tested up to the wire.

The real earthengine-api client builds, serialises and sends every request to a fake Earth
Engine REST server on 127.0.0.1 (``fake_earthengine.py``); the tests read the recorded request
bodies (the computePixels grid, the expression graphs) and the arrays the client decoded from the
fake's NPY answers. ``test_live_earth_engine_sample`` runs against the real service when
``GOOGLE_APPLICATION_CREDENTIALS`` and ``LAS_EE_LIVE=1`` are set.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pickle
import traceback
from pathlib import Path
from typing import Any

import ee
import numpy as np
import pytest
from affine import Affine
from fake_earthengine import FakeEarthEngine, constant, invocations, jwt_claims, resolve

from las_builder.build.config import BuildConfig, LabelSpec
from las_builder.catalog import load_label_product
from las_builder.geobox import sample_geobox
from las_builder.imagery import S2_BANDS, sensor
from las_builder.sources.earthengine import (
    NO_CREDENTIALS_MESSAGE,
    EarthEngineAuth,
    EarthEngineAuthError,
    EarthEngineError,
    EarthEngineNoData,
    EarthEngineSource,
    authenticate,
    catalog,
    compute_pixels_grid,
    sample_region,
)

S2_ID = "20210607T104021_20210607T104528_T31UFT"
S2_MS = 1623062421000  # 2021-06-07T10:40:21Z
S1_ID = "S1A_IW_GRDH_1SDV_20210606T173309_20210606T173334_038220_048274_8A2B"
S1_MS = 1622999589000
EE_S2 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12"]
LAS_S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]

# --------------------------------------------------------------------------- helpers


def calls(tree: Any, name: str) -> list[dict[str, Any]]:
    """The arguments of every call of ``name`` in a resolved expression."""
    return [c.get("arguments", {}) for c in invocations(tree) if c["functionName"] == name]


def chain(node: Any) -> list[str]:
    """Function names from the outermost call down its ``collection`` argument."""
    names = []
    while isinstance(node, dict) and "functionInvocationValue" in node:
        call = node["functionInvocationValue"]
        names.append(call["functionName"])
        node = call.get("arguments", {}).get("collection")
    return names


def info_responder(
    s2: list[tuple[str, int, float]] | None = None,
    s1: list[tuple[str, int, str]] | None = None,
    dw_same: list[str] | None = None,
    dw_day: list[str] | None = None,
) -> Any:
    """A value:compute answer: scene lists for the Sentinel-2 and the S1/DW dictionaries."""
    s2 = [(S2_ID, S2_MS, 3.5)] if s2 is None else s2
    s1 = [(S1_ID, S1_MS, "ASCENDING")] if s1 is None else s1

    def answer(tree: Any) -> Any:
        keys = set(tree["dictionaryValue"]["values"])
        if "CLOUDY_PIXEL_PERCENTAGE" in keys:
            return {
                "system:index": [s[0] for s in s2],
                "system:time_start": [s[1] for s in s2],
                "CLOUDY_PIXEL_PERCENTAGE": [s[2] for s in s2],
            }
        out: dict[str, Any] = {}
        if "s1" in keys:
            out["s1"] = {
                "system:index": [s[0] for s in s1],
                "system:time_start": [s[1] for s in s1],
                "orbitProperties_pass": [s[2] for s in s1],
            }
        if "dw_same" in keys:
            out["dw_same"] = [S2_ID] if dw_same is None else dw_same
            out["dw_day"] = [S2_ID] if dw_day is None else dw_day
        return out

    return answer


def unmask_values(tree: Any) -> list[Any]:
    """The fill of every ``unmask`` (the client wraps numbers in ``Image.constant``)."""
    values = []
    for args in calls(tree, "Image.unmask"):
        (fill,) = calls(args["value"], "Image.constant")
        values.append(constant(fill["value"]))
    return values


def loaded_ids(tree: Any) -> list[str]:
    return [constant(a["id"]) for a in calls(tree, "Image.load")]


def pixel_bodies(fake: FakeEarthEngine, asset_prefix: str) -> list[dict[str, Any]]:
    """The computePixels bodies whose expression loads an image of ``asset_prefix``."""
    return [
        b
        for b in fake.calls("computePixels")
        if any(i.startswith(asset_prefix) for i in loaded_ids(resolve(b["expression"])))
        or any(
            constant(a["id"]) == asset_prefix
            for a in calls(resolve(b["expression"]), "ImageCollection.load")
        )
    ]


GEOBOX = sample_geobox(4.35, 50.85, 32, 10)  # UTM 31N, Brussels


def source(**kw: Any) -> EarthEngineSource:
    args: dict[str, Any] = {
        "labels": [("esa-worldcover", 2021), ("dynamic-world-v1", None)],
    }
    args.update(kw)
    return EarthEngineSource(dt.date(2021, 6, 1), dt.date(2021, 9, 30), **args)


# --------------------------------------------------------------------------- catalog and grid


def test_catalog_maps_las_band_order_and_label_assets() -> None:
    s2 = catalog()["imagery"]["sentinel-2"]
    assert [b["las"] for b in s2["bands"]] == list(S2_BANDS) == LAS_S2
    assert [b["ee"] for b in s2["bands"]] == EE_S2
    assert s2["asset"] == "COPERNICUS/S2_SR_HARMONIZED" and s2["boa_offset_dn"] == 0
    assert s2["cloud_property"] == "CLOUDY_PIXEL_PERCENTAGE"
    s1 = catalog()["imagery"]["sentinel-1"]
    assert [b["las"] for b in s1["bands"]] == [b["name"] for b in sensor("sentinel-1-rtc")["bands"]]
    assert s1["filters"]["instrumentMode"] == "IW" and s1["units"] == "db"
    assert np.isnan(s1["nodata"])
    # The label entries agree with catalog/labels (its earth_engine refs and versions).
    for product, spec in catalog()["labels"].items():
        legend = load_label_product(product)
        assert spec["dtype"] == legend.dtype and spec["nodata"] == legend.fill
        if spec["match"] == "version":
            for v in spec["versions"]:
                ref = legend.earth_engine_for(legend.version_for_year(v["year"]))
                assert ref is not None, (product, v)
                assert (ref.asset, ref.band) == (v["asset"], spec["band"])
        else:
            assert legend.earth_engine is not None, product
            assert (legend.earth_engine.asset, legend.earth_engine.band) == (
                spec["asset"],
                spec["band"],
            )


@pytest.mark.parametrize(
    ("lon", "lat", "size", "res"),
    [(4.35, 50.85, 32, 10), (-70.6, -33.4, 100, 10), (10.0, 87.0, 64, 20), (179.99, 0.1, 8, 30)],
)
def test_grid_is_exactly_the_geobox(lon: float, lat: float, size: int, res: float) -> None:
    geobox = sample_geobox(lon, lat, size, res)
    grid = compute_pixels_grid(geobox)
    t = grid["affineTransform"]
    assert Affine(
        t["scaleX"], t["shearX"], t["translateX"], t["shearY"], t["scaleY"], t["translateY"]
    ) == (geobox.transform)
    left, _, _, top = geobox.boundingbox
    assert (t["translateX"], t["translateY"]) == (left, top)  # the upper-left corner
    assert t["scaleY"] == -res < 0 and t["scaleX"] == res
    assert grid["dimensions"] == {"width": size, "height": size}
    assert geobox.crs is not None
    assert grid["crsCode"] == f"EPSG:{geobox.crs.epsg}"
    band = compute_pixels_grid(geobox, row0=5, rows=3)
    assert band["affineTransform"]["translateY"] == top - 5 * res
    assert band["dimensions"] == {"width": size, "height": 3}


def test_grid_and_region_need_a_crs_with_an_epsg_code() -> None:
    from odc.geo.geobox import GeoBox

    no_crs = GeoBox((4, 4), Affine(10, 0, 500_000, 0, -10, 5_000_000), None)
    custom = GeoBox((4, 4), Affine(10, 0, 0, 0, -10, 0), "+proj=sinu +lon_0=0 +units=m")
    for geobox in (no_crs, custom):
        with pytest.raises(ValueError, match="has no EPSG code"):
            compute_pixels_grid(geobox)
        with pytest.raises(ValueError, match="has no EPSG code"):
            sample_region(geobox)


# --------------------------------------------------------------------------- the wire


def test_initialisation_signs_in_with_the_service_account(
    fake_ee_server: FakeEarthEngine,
    service_account_key: dict[str, Any],
    no_earthengine_network: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cryptography.hazmat.primitives import serialization
    from google.auth import jwt

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", service_account_key["path"])
    monkeypatch.delenv("LAS_EE_PROJECT", raising=False)
    fake_ee_server.reset()
    caplog.set_level(logging.DEBUG)
    try:
        project = authenticate(url=fake_ee_server.url)  # the key file from the environment
        assert project == "test-project"  # the key's project_id
        # The client exchanged a JWT signed with the key for a token at the key's token_uri.
        (grant,) = fake_ee_server.token_requests
        assert grant["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        public = (
            service_account_key["public_key"]
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        # google-auth posts to the key's token_uri but keeps Google's token endpoint as audience.
        audience = "https://oauth2.googleapis.com/token"
        claims = jwt.decode(grant["assertion"], certs=public, audience=audience)
        assert claims == jwt_claims(grant["assertion"])
        assert claims["iss"] == service_account_key["info"]["client_email"]
        assert "https://www.googleapis.com/auth/earthengine" in claims["scope"].split()
        # Initialisation listed the algorithms with that token (the fake refuses others).
        ee.data.setMaxRetries(0)
        assert ee.Image.select.__doc__  # the client built its methods from the listed signatures
    finally:
        ee.Reset()
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "PRIVATE KEY" not in logged and "SECRETPATH" not in logged
    assert service_account_key["info"]["private_key"][40:80] not in logged


def test_fetch_sends_the_sample_grid_and_expected_expressions(fake_ee: FakeEarthEngine) -> None:
    fake_ee.value = info_responder()
    fake_ee.values.update({name: 100 + i for i, name in enumerate(LAS_S2)})
    fake_ee.values.update({"vv": -10.0, "vh": -20.0, "esa-worldcover": 40, "dynamic-world-v1": 4})
    sample = source().fetch(GEOBOX)

    # -- Sentinel-2 scene list: collection, bounds, window (end + 1 day), sorted by cloud.
    s2_info = resolve(fake_ee.calls("compute")[0]["expression"])["dictionaryValue"]["values"]
    assert set(s2_info) == {"system:index", "system:time_start", "CLOUDY_PIXEL_PERCENTAGE"}
    tree = s2_info["system:index"]
    assert chain(tree) == [
        "AggregateFeatureCollection.array",
        "Collection.limit",  # the first `candidates`
        "Collection.limit",  # sort('CLOUDY_PIXEL_PERCENTAGE')
        "Collection.filter",  # filterDate
        "Collection.filter",  # filterBounds
        "ImageCollection.load",
    ]
    assert [constant(a["id"]) for a in calls(tree, "ImageCollection.load")] == [
        "COPERNICUS/S2_SR_HARMONIZED"
    ]
    limits = calls(tree, "Collection.limit")
    assert constant(limits[0]["limit"]) == 5
    assert constant(limits[1]["key"]) == "CLOUDY_PIXEL_PERCENTAGE" and "ascending" not in limits[1]
    (window,) = calls(tree, "DateRange")
    assert (constant(window["start"]), constant(window["end"])) == ("2021-06-01", "2021-10-01")
    assert calls(tree, "Filter.greaterThan") == []  # no scene-wide cloud filter
    (rect,) = calls(tree, "GeometryConstructors.Rectangle")
    assert constant(rect["coordinates"]) == list(GEOBOX.boundingbox)
    assert constant(calls(rect, "Projection")[0]["crs"]) == "EPSG:32631"
    assert constant(rect["geodesic"]) is False

    # -- Sentinel-2 pixels: the chosen scene by id, EE band names renamed to the LAS order.
    (s2_body,) = pixel_bodies(fake_ee, "COPERNICUS/S2_SR_HARMONIZED/")
    assert s2_body["fileFormat"] == "NPY"  # NUMPY_NDARRAY, as the client sends it
    assert s2_body["grid"] == compute_pixels_grid(GEOBOX)
    t = s2_body["grid"]["affineTransform"]
    assert (t["translateX"], t["translateY"], t["scaleY"]) == (594870.0, 5634170.0, -10.0)
    assert s2_body["grid"]["crsCode"] == "EPSG:32631"
    tree = resolve(s2_body["expression"])
    assert tree["functionInvocationValue"]["functionName"] == "Image.toUint16"
    assert loaded_ids(tree) == [f"COPERNICUS/S2_SR_HARMONIZED/{S2_ID}"] * 2
    selects = calls(tree, "Image.select")
    assert [constant(s["bandSelectors"]) for s in selects] == [EE_S2, ["SCL"]]
    assert [constant(s["newNames"]) for s in selects] == [LAS_S2, ["SCL"]]
    assert [constant(a["mode"]) for a in calls(tree, "Image.resample")] == ["bilinear"]
    assert unmask_values(tree) == [0]

    # -- Sentinel-1 and Dynamic World scene lists, matched to the chosen Sentinel-2 scene.
    info = resolve(fake_ee.calls("compute")[1]["expression"])["dictionaryValue"]["values"]
    assert set(info) == {"s1", "dw_same", "dw_day"}
    s1_info = info["s1"]["dictionaryValue"]["values"]
    assert set(s1_info) == {"system:index", "system:time_start", "orbitProperties_pass"}
    s1_tree = s1_info["system:index"]
    assert [constant(a["id"]) for a in calls(s1_tree, "ImageCollection.load")] == [
        "COPERNICUS/S1_GRD"
    ]
    (mode,) = calls(s1_tree, "Filter.equals")
    assert (constant(mode["leftField"]), constant(mode["rightValue"])) == ("instrumentMode", "IW")
    pols = calls(s1_tree, "Filter.listContains")
    assert [constant(p["rightValue"]) for p in pols] == ["VV", "VH"]
    assert {constant(p["leftField"]) for p in pols} == {"transmitterReceiverPolarisation"}
    (gap,) = calls(s1_tree, "Number.subtract")
    assert constant(gap["right"]) == S2_MS  # closest in time to the Sentinel-2 scene
    assert constant(calls(s1_tree, "Element.set")[0]["key"]) == "las_dt"
    assert "las_dt" in [constant(a.get("key")) for a in calls(s1_tree, "Collection.limit")]
    dw_same = info["dw_same"]
    assert [constant(a["id"]) for a in calls(dw_same, "ImageCollection.load")] == [
        "GOOGLE/DYNAMICWORLD/V1"
    ]
    (match,) = calls(dw_same, "Filter.equals")
    assert (constant(match["leftField"]), constant(match["rightValue"])) == ("system:index", S2_ID)
    (day,) = calls(info["dw_day"], "DateRange")
    assert (constant(day["start"]), constant(day["end"])) == ("2021-06-07", "2021-06-08")

    # -- Sentinel-1 pixels in dB; labels in one uint8 request, one band per product.
    (s1_body,) = pixel_bodies(fake_ee, "COPERNICUS/S1_GRD/")
    tree = resolve(s1_body["expression"])
    assert loaded_ids(tree) == [f"COPERNICUS/S1_GRD/{S1_ID}"]
    (sel,) = calls(tree, "Image.select")
    assert (constant(sel["bandSelectors"]), constant(sel["newNames"])) == (
        ["VV", "VH"],
        ["vv", "vh"],
    )
    assert tree["functionInvocationValue"]["functionName"] == "Image.toFloat"
    assert s1_body["grid"] == compute_pixels_grid(GEOBOX)
    (label_body,) = pixel_bodies(fake_ee, "ESA/WorldCover/v200")
    tree = resolve(label_body["expression"])
    assert tree["functionInvocationValue"]["functionName"] == "Image.toUint8"
    assert loaded_ids(tree) == [f"GOOGLE/DYNAMICWORLD/V1/{S2_ID}"]
    assert [constant(s["newNames"]) for s in calls(tree, "Image.select") if "newNames" in s] == [
        ["esa-worldcover"],
        ["dynamic-world-v1"],
    ]
    assert sorted(unmask_values(tree)) == [0, 255]
    assert label_body["grid"] == compute_pixels_grid(GEOBOX)
    assert len(fake_ee.calls("computePixels")) == 3 and len(fake_ee.calls("compute")) == 2

    # -- The arrays: LAS band order, dtypes, shapes, units.
    s2 = sample.arrays["sentinel-2"]
    assert s2.dtype == np.uint16 and s2.shape == (12, 32, 32)
    assert [int(s2[i, 0, 0]) for i in range(12)] == [100 + i for i in range(12)]
    scl = sample.arrays["sentinel-2-scl"]
    assert scl.dtype == np.uint8 and scl.shape == (32, 32) and (scl == 4).all()
    s1 = sample.arrays["sentinel-1"]
    assert s1.dtype == np.float32 and s1.shape == (2, 32, 32)
    np.testing.assert_allclose(s1[:, 0, 0], [0.1, 0.01], rtol=1e-6)  # dB -> linear power
    wc = sample.arrays["labels/esa-worldcover/native"]
    dw = sample.arrays["labels/dynamic-world-v1/native"]
    assert wc.dtype == dw.dtype == np.uint8 and (wc == 40).all() and (dw == 4).all()
    assert sample.record == {
        "s2_item": S2_ID,
        "s2_datetime": "2021-06-07T10:40:21Z",
        "cloud_pct": 0.0,
        "s2_scene_cloud_pct": 3.5,
        "s1_item": S1_ID,
        "s1_datetime": "2021-06-06T17:13:09Z",
        "s1_orbit_state": "ascending",
        "esa-worldcover_items": ["ESA/WorldCover/v200"],
        "dynamic-world-v1_items": [S2_ID],
        "nodata_pct": 0.0,
    }


def test_units_versions_and_annual_products(fake_ee: FakeEarthEngine) -> None:
    fake_ee.value = info_responder()
    fake_ee.values.update({"vv": -10.0, "vh": -20.0})
    src = source(
        s1_units="db",
        labels=[("esa-worldcover", 2020), ("modis-12Q1-061", 2019)],
    )
    sample = src.fetch(GEOBOX)
    np.testing.assert_allclose(sample.arrays["sentinel-1"][:, 5, 5], [-10.0, -20.0])
    (body,) = pixel_bodies(fake_ee, "ESA/WorldCover/v100")  # 2020 is v100
    tree = resolve(body["expression"])
    loads = [constant(a["id"]) for a in calls(tree, "ImageCollection.load")]
    assert loads == ["ESA/WorldCover/v100", "MODIS/061/MCD12Q1"]
    (year,) = calls(tree, "DateRange")
    assert (constant(year["start"]), constant(year["end"])) == ("2019-01-01", "2020-01-01")
    assert (
        "dw_same"
        not in resolve(fake_ee.calls("compute")[1]["expression"])["dictionaryValue"]["values"]
    )
    assert sample.arrays["labels/modis-12Q1-061/native"].dtype == np.uint8


def test_masked_pixels_get_las_nodata_and_empty_scenes_are_passed_over(
    fake_ee: FakeEarthEngine,
) -> None:
    second = "20210612T104021_20210612T104528_T31UFT"
    fake_ee.value = info_responder(
        s2=[(S2_ID, S2_MS, 1.0), (second, S2_MS + 5 * 86_400_000, 2.0)],
        s1=[("S1_EDGE", S1_MS, "DESCENDING"), (S1_ID, S1_MS + 1, "ASCENDING")],
    )

    def pixels(body: dict[str, Any], bands: list[str], dtype: str) -> np.ndarray:
        out = fake_ee.default_pixels(body, bands, dtype)
        ids = loaded_ids(resolve(body["expression"]))
        if ids and ids[0].endswith(S2_ID):  # the clearest scene is mostly outside its swath
            for band in bands:
                out[band][:20] = 0
        elif ids and ids[0].endswith(second):
            out["B04"][0, :4] = 0  # one band masked (EE unmasked it to 0): the pixel is nodata
            out["SCL"][1, :10] = 9  # cloud, high probability
        elif ids and ids[0].endswith("S1_EDGE"):
            out["vv"][:10] = -32768.0  # the unmask fill: nodata
        elif ids and ids[0].endswith(S1_ID):
            out["vh"][0, 0] = -32768.0
        if "dynamic-world-v1" in bands:
            out["dynamic-world-v1"][0, 0] = 255
        return out

    fake_ee.pixels = pixels
    sample = source().fetch(GEOBOX)
    assert sample.record["s2_item"] == second and sample.record["s1_item"] == S1_ID
    assert sample.record["s1_orbit_state"] == "ascending"
    s2, scl = sample.arrays["sentinel-2"], sample.arrays["sentinel-2-scl"]
    assert (s2[:, 0, :4] == 0).all() and (scl[0, :4] == 0).all()  # all bands nodata there
    assert (s2[:, 0, 4:] > 0).all()
    assert sample.record["cloud_pct"] == round(100 * 10 / (32 * 32 - 4), 3)
    assert sample.record["nodata_pct"] == round(100 * 4 / (32 * 32), 3)
    s1 = sample.arrays["sentinel-1"]
    assert np.isnan(s1[1, 0, 0]) and np.isfinite(s1[0, 0, 0]) and np.isfinite(s1[1, 0, 1])
    assert sample.arrays["labels/dynamic-world-v1/native"][0, 0] == 255
    assert len(pixel_bodies(fake_ee, "COPERNICUS/S2_SR_HARMONIZED/")) == 2
    assert len(pixel_bodies(fake_ee, "COPERNICUS/S1_GRD/")) == 2


def test_skips_say_why(fake_ee: FakeEarthEngine) -> None:
    fake_ee.value = info_responder(s2=[])
    with pytest.raises(EarthEngineNoData, match=r"no COPERNICUS/S2_SR_HARMONIZED scene between"):
        source().fetch(GEOBOX)
    assert fake_ee.calls("computePixels") == []

    fake_ee.reset()
    fake_ee.value = info_responder()
    fake_ee.values["SCL"] = 8  # cloud, medium probability, everywhere
    with pytest.raises(
        EarthEngineNoData, match=rf"too cloudy: 100.0% cloud .* scene {S2_ID} > 50%"
    ):
        source(max_cloud=50).fetch(GEOBOX)

    # A scene cloudy over the sample is passed over for the next one listed.
    fake_ee.reset()
    clear = "20210610T104021_20210610T104528_T31UFT"
    fake_ee.value = info_responder(s2=[(S2_ID, S2_MS, 0.5), (clear, S2_MS + 1, 40.0)])

    def pixels(body: dict[str, Any], bands: list[str], dtype: str) -> np.ndarray:
        out = fake_ee.default_pixels(body, bands, dtype)
        if "SCL" in bands and loaded_ids(resolve(body["expression"]))[0].endswith(S2_ID):
            out["SCL"] = 9
        return out

    fake_ee.pixels = pixels
    sample = source(max_cloud=50).fetch(GEOBOX)
    assert sample.record["s2_item"] == clear and sample.record["cloud_pct"] == 0.0
    assert sample.record["s2_scene_cloud_pct"] == 40.0

    fake_ee.reset()
    fake_ee.value = info_responder(s1=[])
    with pytest.raises(EarthEngineNoData, match=r"no COPERNICUS/S1_GRD scene covers the sample"):
        source().fetch(GEOBOX)


def test_dynamic_world_falls_back_to_the_same_day(fake_ee: FakeEarthEngine) -> None:
    other = "20210607T104021_20210607T104528_T31UGT"
    fake_ee.value = info_responder(dw_same=[], dw_day=[other, "20210607T104021_X_T31UFS"])
    sample = source(sentinel_1=False, labels=[("dynamic-world-v1", None)]).fetch(GEOBOX)
    assert sample.record["dynamic-world-v1_items"] == [other, "20210607T104021_X_T31UFS"]
    (body,) = pixel_bodies(fake_ee, "GOOGLE/DYNAMICWORLD/V1/")
    tree = resolve(body["expression"])
    # ImageCollection.mosaic puts the last image on top: the first-listed image wins, as on
    # the STAC path.
    assert loaded_ids(tree) == [
        "GOOGLE/DYNAMICWORLD/V1/20210607T104021_X_T31UFS",
        f"GOOGLE/DYNAMICWORLD/V1/{other}",
    ]
    assert calls(tree, "ImageCollection.fromImages") and calls(tree, "ImageCollection.mosaic")
    assert "sentinel-1" not in sample.arrays

    fake_ee.reset()
    fake_ee.value = info_responder(dw_same=[], dw_day=[])
    sample = source(sentinel_1=False, labels=[("dynamic-world-v1", None)]).fetch(GEOBOX)
    assert (sample.arrays["labels/dynamic-world-v1/native"] == 255).all()
    assert pixel_bodies(fake_ee, "GOOGLE/DYNAMICWORLD/V1/") == []


def test_median_composite_of_the_clearest_scenes(fake_ee: FakeEarthEngine) -> None:
    ids = [f"2021060{d}T104021_2021060{d}T104528_T31UFT" for d in (1, 4, 7)]
    fake_ee.value = info_responder(s2=[(i, S2_MS + k, float(k)) for k, i in enumerate(ids)])

    def pixels(body: dict[str, Any], bands: list[str], dtype: str) -> np.ndarray:
        out = fake_ee.default_pixels(body, bands, dtype)
        scene = loaded_ids(resolve(body["expression"]))
        if scene and "S2_SR" in scene[0]:
            k = [i for i in ids if scene[0].endswith(i)]
            for band in bands[:-1]:
                out[band] = {ids[0]: 100, ids[1]: 300, ids[2]: 200}[k[0]]
            if k[0] == ids[0]:
                out["SCL"][0, 0] = 9  # cloudy in the clearest scene only
        return out

    fake_ee.pixels = pixels
    sample = source(composite="median", composite_k=3, sentinel_1=False).fetch(GEOBOX)
    s2 = sample.arrays["sentinel-2"]
    assert s2.dtype == np.uint16 and (s2[:, 1:, :] == 200).all()
    assert (s2[:, 0, 0] == 250).all()  # median of the two clear observations
    assert sample.record["s2_composite_items"] == ids
    assert sample.record["s2_item"] == ids[0]
    assert len(pixel_bodies(fake_ee, "COPERNICUS/S2_SR_HARMONIZED/")) == 3


def test_large_grids_are_fetched_in_bands_of_rows(fake_ee: FakeEarthEngine) -> None:
    fake_ee.value = info_responder()

    def pixels(body: dict[str, Any], bands: list[str], dtype: str) -> np.ndarray:
        out = fake_ee.default_pixels(body, bands, dtype)
        t = body["grid"]["affineTransform"]
        first_row = round((GEOBOX.transform.f - t["translateY"]) / 10)
        rows = np.arange(first_row, first_row + body["grid"]["dimensions"]["height"])
        for band in bands:
            if band != "SCL":
                out[band] = rows[:, None] + 1
        return out

    fake_ee.pixels = pixels
    # 12 bands + SCL, uint16, 32 px wide: 832 bytes a row; 5000 bytes is 6 rows a request.
    src = source(sentinel_1=False, labels=[], max_request_bytes=5000)
    sample = src.fetch(GEOBOX)
    bodies = fake_ee.calls("computePixels")
    assert [b["grid"]["dimensions"]["height"] for b in bodies] == [6, 6, 6, 6, 6, 2]
    assert [b["grid"]["affineTransform"]["translateY"] for b in bodies] == [
        GEOBOX.transform.f - 10 * r for r in range(0, 32, 6)
    ]
    expected = np.broadcast_to(np.arange(1, 33)[:, None], (32, 32))
    assert (sample.arrays["sentinel-2"] == expected).all()


def test_server_errors_and_bad_answers_are_reported(
    fake_ee: FakeEarthEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_ee.value = info_responder()
    monkeypatch.setattr(fake_ee, "algorithms", fake_ee.algorithms - {"Image.toUint16"})
    with pytest.raises(EarthEngineError, match=r"computePixels of S2 .*Unknown algorithms"):
        source().fetch(GEOBOX)  # the client turned the HTTP 400 into an EEException
    monkeypatch.undo()

    def wrong_bands(body: dict[str, Any], bands: list[str], dtype: str) -> np.ndarray:
        return fake_ee.default_pixels(body, [b.lower() for b in bands], dtype)

    fake_ee.pixels = wrong_bands
    with pytest.raises(EarthEngineError, match=r"expected a 32x32 array with bands \['B01'"):
        source().fetch(GEOBOX)


def test_source_pickles_for_dask_workers() -> None:
    src = source(auth=EarthEngineAuth(project="p", url="https://example.invalid"))
    copy = pickle.loads(pickle.dumps(src))
    assert copy.labels == src.labels and copy.auth == src.auth


def test_from_config_and_unavailable_products() -> None:
    cfg = BuildConfig(
        stac_url="http://127.0.0.1:9/",
        start=dt.datetime(2021, 6, 1, tzinfo=dt.UTC),
        end=dt.datetime(2022, 9, 30, 23, 59, 59, tzinfo=dt.UTC),
        size_px=128,
        resolution_m=10,
        max_nodata=0.1,
        max_cloud=30,
        s1_collection=None,
        s1_units="db",
        labels=(LabelSpec("esa-worldcover", "esa-worldcover", "map", 2021),),
    )
    src = EarthEngineSource.from_config(cfg, EarthEngineAuth(project="p"))
    assert (src.start, src.end) == (dt.date(2021, 6, 1), dt.date(2022, 9, 30))
    assert src.sentinel_2 and not src.sentinel_1 and src.max_cloud == 30
    assert src.labels == [("esa-worldcover", 2021)] and src.max_nodata == 0.1
    with pytest.raises(ValueError, match="esa-cci-lc.*not available on Earth Engine"):
        source(labels=[("esa-cci-lc", 2020)])
    with pytest.raises(ValueError, match="no Earth Engine version for 2019"):
        source(labels=[("esa-worldcover", 2019)])
    with pytest.raises(ValueError, match="a year is needed"):
        source(labels=[("modis-12Q1-061", None)])


# --------------------------------------------------------------------------- credentials


def test_missing_credentials_give_the_clear_error(no_credentials: None) -> None:
    with pytest.raises(EarthEngineAuthError) as err:
        authenticate(project="my-project")
    assert str(err.value) == NO_CREDENTIALS_MESSAGE
    assert "docs/earth-engine.md" in str(err.value)
    with pytest.raises(EarthEngineAuthError, match="no Earth Engine credentials"):
        source().fetch(GEOBOX)  # a process that is not initialised signs in first


def test_a_credentials_variable_naming_no_file_says_so(
    no_credentials: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "set GOOGLE_APPLICATION_CREDENTIALS" when it is set (to a file that is gone)."""
    missing = tmp_path / "SECRET-PATH-key.json"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(missing))
    with pytest.raises(EarthEngineAuthError) as err:
        authenticate(project="my-project")
    assert "GOOGLE_APPLICATION_CREDENTIALS names no file" in str(err.value)
    assert "SECRET-PATH" not in str(err.value)


@pytest.mark.parametrize(
    "content",
    [
        "not json SECRET-MATERIAL-1234",
        json.dumps(
            {
                "type": "service_account",
                "client_email": "a@b.iam.gserviceaccount.com",
                "private_key": "-----BEGIN PRIVATE KEY-----\nSECRET-MATERIAL-1234\n"
                "-----END PRIVATE KEY-----\n",
                "token_uri": "http://127.0.0.1:9/token",
            }
        ),
        json.dumps({"type": "service_account", "private_key": "SECRET-MATERIAL-1234"}),
        json.dumps({"type": "authorized_user", "refresh_token": "SECRET-MATERIAL-1234"}),
        None,  # the file does not exist
    ],
)
def test_key_files_never_leak(
    content: str | None,
    no_credentials: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "SECRETPATH-key.json"
    if content is not None:
        path.write_text(content)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EarthEngineAuthError) as err:
        authenticate(str(path), project="p")
    shown = "".join(traceback.format_exception(err.value)) + repr(err.value) + caplog.text
    assert "SECRET-MATERIAL" not in shown and "SECRETPATH" not in shown
    assert err.value.__cause__ is None  # no chained error that could hold the key
    assert err.value.__context__ is None or err.value.__suppress_context__
    assert "SECRETPATH" not in repr(EarthEngineAuth(key_file=str(path)))


# --------------------------------------------------------------------------- the real service


@pytest.mark.skipif(
    not (os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") and os.environ.get("LAS_EE_LIVE") == "1"),
    reason="live Earth Engine test: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key "
    "file and LAS_EE_LIVE=1 (optionally LAS_EE_PROJECT)",
)
def test_live_earth_engine_sample() -> None:
    try:
        authenticate(url=catalog()["endpoints"]["high_volume"])
        geobox = sample_geobox(4.35, 50.85, 64, 10)
        sample = EarthEngineSource(
            dt.date(2021, 6, 1),
            dt.date(2021, 8, 31),
            labels=[("esa-worldcover", 2021), ("dynamic-world-v1", None)],
        ).fetch(geobox)
    finally:
        ee.Reset()
    s2 = sample.arrays["sentinel-2"]
    assert s2.dtype == np.uint16 and s2.shape == (12, 64, 64)
    assert 0 < int(np.median(s2[3])) < 10000  # B04 reflectance x 10000
    assert sample.arrays["sentinel-1"].shape == (2, 64, 64)
    assert float(np.nanmedian(sample.arrays["sentinel-1"][0])) > 0  # linear power
    codes = {c.value for c in load_label_product("esa-worldcover").classes} | {0}
    assert set(np.unique(sample.arrays["labels/esa-worldcover/native"])) <= codes
    assert sample.record["s2_item"] and sample.record["s1_item"]
