"""`las inspect`: quicklooks, maps, histograms, confusion matrices and an offline report."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import cast
from urllib.parse import unquote

import geopandas as gpd
import numpy as np
import pytest
import typer
import zarr
from PIL import Image
from typer.testing import CliRunner

from las_builder.catalog import load_label_product, load_taxonomy
from las_builder.cli_inspect import inspect as inspect_command
from las_builder.inspect import (
    IGNORE_COLOR,
    NODATA_COLOR,
    InspectError,
    Legend,
    LegendEntry,
    choose_samples,
    colorize,
    hex_to_rgb,
    inspect_dataset,
    s1_false_colour,
    s2_true_colour,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(inspect_command)
    return app


@pytest.fixture(scope="module")
def dataset(small_las: Path) -> Path:
    return small_las


@pytest.fixture(scope="module")
def report(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inspect") / "report"
    result = CliRunner().invoke(_app(), [str(dataset), "--samples", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out / "report.html")
    return out


class _Refs(HTMLParser):
    """Every URL-ish attribute and inline style of a document, plus its tags."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: set[str] = set()
        self.legends: dict[str, dict[int, str]] = {}
        self.images: list[dict[str, str]] = []
        self._legend: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        for key in ("src", "href", "srcset", "poster", "data", "action"):
            if key in a:
                self.refs.append(a[key])
        self.refs += re.findall(r"url\(\s*['\"]?([^'\")]+)", a.get("style", ""))
        if tag == "img":
            self.images.append(a)
        if tag == "ul" and "data-legend" in a:
            self._legend = a["data-legend"]
            self.legends[self._legend] = {}
        if tag == "li" and self._legend is not None:
            self.legends[self._legend][int(a["data-value"])] = a["data-color"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "ul":
            self._legend = None


def _parse(report: Path) -> tuple[_Refs, str]:
    text = (report / "report.html").read_text(encoding="utf-8")
    parser = _Refs()
    parser.feed(text)
    return parser, text


def test_report_and_every_png_exist(report: Path) -> None:
    summary = json.loads((report / "summary.json").read_text())
    assert (report / "report.html").stat().st_size > 1000
    figures = [report / p for p in summary["figures"].values()]
    assert {p.name for p in figures} >= {
        "quicklooks.png",
        "world.png",
        "regions.png",
        "histograms_las.png",
        "histograms_native.png",
        "confusion.png",
    }
    products = {p["product"] for p in summary["products"]} - {"consensus"}
    assert len(summary["confusion"]) == len(products) * (len(products) - 1) // 2 >= 10
    stats = json.loads((report / "stats.json").read_text())
    assert set(stats["products"]) == products
    panels = [
        report / p["path"] for s in summary["panels"].values() for p in s["panels"] if p["path"]
    ]
    assert len(summary["panels"]) == 4
    assert len(panels) >= 4 * (2 + 2 * len(products) + 1)
    for path in [*figures, *panels]:
        assert path.is_file(), path
        assert path.read_bytes()[:8] == PNG, path
    keys = {p["key"] for s in summary["panels"].values() for p in s["panels"]}
    assert {"s2", "s1", "naip", "consensus", "esa-worldcover/native", "esa-worldcover/las"} <= keys
    with_naip = [
        s
        for s in summary["panels"].values()
        if any(p["key"] == "naip" and p["path"] for p in s["panels"])
    ]
    assert with_naip, "choose_samples must show a NAIP sample when the dataset has one"


def test_html_references_only_existing_local_files(report: Path) -> None:
    parser, text = _parse(report)
    assert not re.search(r"https?://", text, re.IGNORECASE)
    assert "//" not in "".join(r for r in parser.refs if not r.startswith("data:"))
    assert not parser.tags & {"script", "link", "iframe", "object", "embed"}
    assert "@import" not in text and "@font-face" not in text
    assert len(parser.refs) >= 4 * 10
    for ref in parser.refs:
        if ref.startswith("data:"):
            continue
        assert ":" not in ref, ref
        path = (report / unquote(ref)).resolve()
        assert path.is_relative_to(report.resolve()), ref
        assert path.is_file(), ref
    every_png = {p.relative_to(report).as_posix() for p in report.rglob("*.png")}
    assert every_png <= set(parser.refs)


def test_legend_colours_match_the_catalog(report: Path) -> None:
    parser, _ = _parse(report)
    summary = json.loads((report / "summary.json").read_text())
    las = parser.legends["las"]
    for c in load_taxonomy().classes:
        assert las[c.code] == c.color.lower()
    assert las[0] == NODATA_COLOR and las[255] == IGNORE_COLOR
    products = [k for k in parser.legends if k != "las"]
    assert "esa-worldcover" in products and len(products) >= 5
    for product in products:
        legend = parser.legends[product]
        catalog = load_label_product(product)
        for pc in catalog.classes:
            if pc.color is not None:
                assert legend[pc.value] == pc.color, (product, pc.value)
        assert {e["value"]: e["color"] for e in summary["legends"][product]} == legend


def test_label_panels_are_painted_in_the_legend_colours(report: Path, dataset: Path) -> None:
    summary = json.loads((report / "summary.json").read_text())
    root = zarr.open_group(dataset / "las.zarr", mode="r")
    las_colours = {c.code: hex_to_rgb(c.color) for c in load_taxonomy().classes}
    checked = 0
    for sample in summary["panels"].values():
        i = sample["zarr_index"]
        for panel in sample["panels"]:
            if not panel["legend"] or not panel["path"]:
                continue
            key = panel["key"]
            array = cast(zarr.Array, root["consensus" if key == "consensus" else f"labels/{key}"])
            labels = cast(np.ndarray, array[i])  # one sample: a 2-D ndarray
            if panel["legend"] == "las":
                colours = las_colours
            else:
                colours = {
                    c.value: hex_to_rgb(c.color)
                    for c in load_label_product(panel["legend"]).classes
                    if c.color is not None
                }
            with Image.open(report / panel["path"]) as img:
                rgb = np.asarray(img.convert("RGB"))
            assert rgb.shape[:2] == labels.shape
            # one sampled pixel per class present, then every pixel
            for value in np.unique(labels):
                if int(value) in colours:
                    y, x = np.argwhere(labels == value)[0]
                    assert tuple(rgb[y, x]) == colours[int(value)], (key, value)
            for value, colour in colours.items():
                mask = labels == value
                assert (rgb[mask] == colour).all(), (key, value)
            checked += 1
    assert checked >= 4 * 11


def test_summary_counts_and_imagery_panels(report: Path, dataset: Path) -> None:
    summary = json.loads((report / "summary.json").read_text())
    index = gpd.read_parquet(dataset / "index.parquet")
    assert summary["samples"] == len(index) == 24
    assert summary["ok"] == int((index["status"] == "ok").sum())
    products = {p["product"]: p for p in summary["products"]}
    for product in ("esa-worldcover", "dynamic-world-v1"):
        assert 0.3 < products[product]["agreement_with_consensus"] <= 1.0
    _, text = _parse(report)
    assert "agreement with consensus" in text
    s2_panel = next(p for s in summary["panels"].values() for p in s["panels"] if p["key"] == "s2")
    with Image.open(report / s2_panel["path"]) as img:
        rgb = np.asarray(img)
    assert rgb.shape == (32, 32, 3) and rgb.std() > 5


def test_skipped_samples_reasons_quiet_and_default_out(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "las"
    shutil.copytree(dataset, copy, ignore=shutil.ignore_patterns("inspect"))
    index = gpd.read_parquet(copy / "index.parquet")
    index.loc[[1, 2, 5], "status"] = "skipped"
    index.loc[[1, 2], "reason"] = "too cloudy: S2X > 60%"
    index.loc[5, "reason"] = "no sentinel-1 scene"
    index.loc[7, "status"] = "failed"
    index.loc[7, "reason"] = "UnknownCodeError: io-lulc-annual-v02 5"
    index.to_parquet(copy / "index.parquet")
    result = CliRunner().invoke(_app(), [str(copy), "--samples", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    out = copy / "inspect"
    assert result.output.strip() == str(out / "report.html")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == 3 and summary["failed"] == 1 and summary["ok"] == 20
    reasons = {r["reason"]: r["samples"] for r in summary["reasons"]}
    assert reasons == {"too cloudy": 2, "no sentinel-1 scene": 1, "UnknownCodeError": 1}
    shown = {s["zarr_index"] for s in summary["panels"].values()}
    assert len(shown) == 3 and not shown & {1, 2, 5, 7}
    text = (out / "report.html").read_text()
    assert "too cloudy" in text and "UnknownCodeError" in text
    assert inspect_dataset(copy, tmp_path / "none", samples=0).samples == []
    bad = CliRunner().invoke(_app(), [str(tmp_path / "nothing")])
    assert bad.exit_code == 2
    assert "not a built LAS dataset" in bad.output


@pytest.mark.parametrize(
    ("taxonomy", "labels_array", "message"),
    [
        ({"code": 1}, False, "the taxonomy attribute is not a list of classes"),
        (["forest"], False, "the taxonomy attribute is not a list of classes"),
        (None, True, "labels is an array, not a group"),
    ],
)
def test_malformed_store_is_an_inspect_error(
    tmp_path: Path, taxonomy: dict[str, int] | list[str] | None, labels_array: bool, message: str
) -> None:
    from shapely.geometry import box

    root = zarr.open_group(tmp_path / "las.zarr", mode="w", zarr_format=3)
    if taxonomy is not None:
        root.attrs["taxonomy"] = taxonomy
    if labels_array:
        root.create_array("labels", shape=(1,), dtype="uint8")
    gpd.GeoDataFrame(
        {"sample_id": ["s000"], "zarr_index": [0], "status": ["ok"]},
        geometry=[box(0, 0, 1, 1)],
        crs="EPSG:4326",
    ).to_parquet(tmp_path / "index.parquet")
    with pytest.raises(InspectError, match=message):
        inspect_dataset(tmp_path, tmp_path / "inspect")


def test_colour_helpers() -> None:
    legend = Legend("x", "x", (LegendEntry(1, "a", "#102030"), LegendEntry(300, "b", "#ffffff")))
    wide = np.array([[1, 300], [7, 1]], dtype=np.uint16)
    rgb = colorize(wide, legend)
    assert tuple(rgb[0, 0]) == (16, 32, 48) and tuple(rgb[0, 1]) == (255, 255, 255)
    assert tuple(rgb[1, 0]) == (255, 0, 255)  # not in the legend: magenta
    assert (colorize(wide.astype(np.uint8) % 2, legend)[0, 0] == (16, 32, 48)).all()

    rng = np.random.default_rng(0)
    linear = rng.uniform(0.001, 0.5, size=(2, 8, 8)).astype(np.float32)
    linear[:, 0, 0] = np.nan
    in_db = (10 * np.log10(linear)).astype(np.float32)
    a, b = s1_false_colour(linear, "linear power (gamma0)"), s1_false_colour(in_db, "dB")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert (a[0, 0] == 0).all()

    s2 = rng.integers(100, 3000, size=(12, 8, 8)).astype(np.uint16)
    s2[:, 1, 1] = 0
    bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    out = s2_true_colour(s2, bands)
    assert out.dtype == np.uint8 and (out[1, 1] == 0).all() and out.max() == 255


def test_choose_samples_prefers_spread_and_naip() -> None:
    index = gpd.GeoDataFrame(
        {
            "status": ["ok"] * 8 + ["skipped"] * 2,
            "naip_item": [None] * 5 + ["n1"] + [None] * 4,
        }
    )
    picks = choose_samples(index, 3)
    assert len(picks) == 3 and 5 in picks and 0 in picks
    assert choose_samples(index, 50) == list(range(8))
    assert choose_samples(index, 0) == []
