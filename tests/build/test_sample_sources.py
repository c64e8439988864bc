"""Sources of a sample read concurrently: outcomes and first errors as in source order."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox
from shapely.geometry import box

from las_builder.build import sample as sample_mod
from las_builder.build.config import BuildConfig, LabelSpec
from las_builder.build.read import ReadError
from las_builder.catalog import LAS_NODATA, load_mapping
from las_builder.stac import SceneItem

SHAPE = (8, 8)
START = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
END = dt.datetime(2021, 12, 31, tzinfo=dt.UTC)


def _row() -> dict[str, Any]:
    return {
        "sample_id": "s-1",
        "shape": SHAPE,
        "transform": tuple(Affine(10, 0, 500_000, 0, -10, 5_000_080))[:6],
        "epsg": 32633,
        "geometry": box(15.0, 45.0, 15.001, 45.001),
    }


def _item(item_id: str) -> SceneItem:
    """A stand-in with the fields the sample code reads."""
    return cast(
        SceneItem,
        SimpleNamespace(
            id=item_id,
            datetime=dt.datetime(2021, 6, 1, tzinfo=dt.UTC),
            orbit_state="ascending",
            properties={},
        ),
    )


def _cfg(**overrides: Any) -> BuildConfig:
    base: dict[str, Any] = {
        "stac_url": "http://127.0.0.1:1/",
        "start": START,
        "end": END,
        "size_px": SHAPE[0],
        "resolution_m": 10.0,
        "max_nodata": 0.5,
        "s1_collection": None,
        "naip_collection": "naip",
        "labels": (
            LabelSpec("esa-worldcover", "esa-worldcover", "map", 2021),
            LabelSpec("io-lulc-annual-v02", "io-lulc-annual-v02", "data", 2021),
        ),
    }
    return BuildConfig(**{**base, **overrides})


@pytest.fixture
def fake_sources(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the readers with slow fakes that record when they finish."""
    state: dict[str, Any] = {"finished": [], "lock": threading.Lock(), "cloudy": False}
    s2 = _item("S2A_1")

    def finish(name: str) -> None:
        time.sleep(0.05)  # still running when the Sentinel-2 path decides
        with state["lock"]:
            state["finished"].append(name)

    def covering(items: list[Any], footprint: Any) -> list[Any]:
        return list(items)

    def rank_s2(items: list[Any], geobox: Any, cache: Any, **_: Any) -> list[Any]:
        scl = np.full(SHAPE, 9 if state["cloudy"] else 4, dtype="uint8")  # 9: cloud
        cloud = 100.0 if state["cloudy"] else 0.0
        return [sample_mod._S2Candidate(s2, scl, cloud, 0.0)]

    def read_s2(item: Any, geobox: Any, cache: Any) -> np.ndarray:
        finish("s2")
        return np.ones((12, *SHAPE), dtype="uint16")

    def read_naip(items: list[Any], *args: Any) -> Any:
        finish("naip")
        raise ReadError("cannot read naip.tif: HTTP 404")

    def read_labels(spec: LabelSpec, items: list[Any], *args: Any) -> Any:
        finish(spec.product)
        if spec.product == "io-lulc-annual-v02":
            raise ReadError("cannot read lulc.tif: HTTP 404")
        return np.full(SHAPE, 10, dtype="uint8"), [_item("wc")]

    monkeypatch.setattr(sample_mod, "_covering", covering)
    monkeypatch.setattr(sample_mod, "_rank_s2", rank_s2)
    monkeypatch.setattr(sample_mod, "_read_s2", read_s2)
    monkeypatch.setattr(sample_mod, "_read_naip", read_naip)
    monkeypatch.setattr(sample_mod, "_read_labels", read_labels)
    state["items"] = {"sentinel-2-l2a": [s2], "naip": [_item("naip")]}
    return state


def test_a_skip_before_a_failed_source_wins_as_in_source_order(
    fake_sources: dict[str, Any],
) -> None:
    """NAIP and a label product fail in the background, but Sentinel-2 comes first: the
    sample is skipped for cloud, exactly as a one-by-one build would record it."""
    fake_sources["cloudy"] = True
    outcome = sample_mod.build_sample(_row(), fake_sources["items"], _cfg(), cache=None)  # type: ignore[arg-type]
    assert outcome.status == "skipped"
    assert outcome.reason.startswith("too cloudy: 100.0% cloud")
    # Every background read had finished before build_sample returned (none outlives it).
    assert set(fake_sources["finished"]) == {"naip", "esa-worldcover", "io-lulc-annual-v02"}


def test_the_first_failed_source_in_source_order_is_reported(
    fake_sources: dict[str, Any],
) -> None:
    """NAIP (read before the labels in source order) fails: its error is the reason, even if
    the failing label product finished first."""
    outcome = sample_mod.build_sample(_row(), fake_sources["items"], _cfg(), cache=None)  # type: ignore[arg-type]
    assert outcome.status == "failed"
    assert outcome.reason == "ReadError: cannot read naip.tif: HTTP 404"
    assert outcome.record["s2_item"] == "S2A_1"
    assert "naip_item" not in outcome.record or outcome.record["naip_item"] is None
    assert set(fake_sources["finished"]) == {"s2", "naip", "esa-worldcover", "io-lulc-annual-v02"}


def test_without_naip_the_failing_label_product_is_reported(
    fake_sources: dict[str, Any],
) -> None:
    outcome = sample_mod.build_sample(
        _row(),
        fake_sources["items"],
        _cfg(naip_collection=None),
        cache=None,  # type: ignore[arg-type]
    )
    assert outcome.status == "failed"
    assert outcome.reason == "ReadError: cannot read lulc.tif: HTTP 404"
    # The product before it in the recipe was taken; nothing after it.
    assert outcome.record["esa-worldcover_items"] == ["wc"]
    assert "io-lulc-annual-v02_items" not in outcome.record


def test_a_build_reads_each_legend_and_mapping_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within one build (``run_id``) a product's legend and mapping are loaded once, however
    many threads ask at once; another build loads them again; no run_id: every time."""
    calls: list[tuple[str, str]] = []

    def loader(kind: str) -> Any:
        def load(product: str) -> Any:
            calls.append((kind, product))
            time.sleep(0.01)  # long enough for the other threads to ask meanwhile
            return SimpleNamespace(kind=kind, product=product)

        return load

    monkeypatch.setattr(sample_mod, "load_label_product", loader("legend"))
    monkeypatch.setattr(sample_mod, "load_mapping", loader("mapping"))
    monkeypatch.setattr(sample_mod, "_catalog", {})
    got: list[Any] = []
    threads = [
        threading.Thread(target=lambda k=k: got.append(sample_mod._from_catalog("run-a", k, "p")))
        for k in ("legend", "mapping") * 4
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == [("legend", "p"), ("mapping", "p")]
    assert len({id(g) for g in got}) == 2
    sample_mod._from_catalog("run-b", "legend", "p")
    assert calls[-1] == ("legend", "p") and len(calls) == 3
    assert all(key[0] == "run-b" for key in sample_mod._catalog)  # run-a's entries dropped
    sample_mod._from_catalog("", "mapping", "p")
    sample_mod._from_catalog("", "mapping", "p")
    assert len(calls) == 5


def test_a_product_without_nodata_is_read_with_a_value_no_class_uses(catalog_copy: Path) -> None:
    """Where no item covers a sample, a product without nodata is its fill (LAS nodata when
    mapped), not 0, which may be one of its classes."""
    label_file = catalog_copy / "labels" / "esa-worldcover.yaml"
    text = label_file.read_text().replace("nodata: 0\n", "nodata: null\n", 1)
    label_file.write_text(text.replace("  - value: 10\n", "  - value: 0\n", 1))
    mapping_file = catalog_copy / "taxonomy" / "mappings" / "esa-worldcover.yaml"
    mapping_file.write_text(mapping_file.read_text().replace("  10: trees", "  0: trees", 1))
    geobox = GeoBox(SHAPE, Affine(10, 0, 500_000, 0, -10, 4_000_000), "EPSG:32631")
    spec = LabelSpec("esa-worldcover", "esa-worldcover", "map", 2021)
    native, chosen = sample_mod._read_labels(spec, [], geobox, None, cast(Any, None))
    assert chosen == [] and native.dtype == np.uint8 and (native == 255).all()
    mapping = load_mapping("esa-worldcover")
    assert mapping.target(0) == mapping.taxonomy.code_of("trees")
    assert (mapping.map(native) == LAS_NODATA).all()
