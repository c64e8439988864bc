"""Adversarial inputs to `las inspect`, `las stats`, the report, the consensus and `las eval`'s
scores: odd sample ids, damaged store attributes and arrays, values of no class, NaN and inf
in imagery; the statistics recomputed independently from the raw arrays."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import pytest
import torch
import typer
import zarr
from typer.testing import CliRunner

from las_builder.catalog import LAS_IGNORE, LAS_NODATA
from las_builder.cli_inspect import inspect as inspect_command
from las_builder.cli_stats import stats as stats_command
from las_builder.consensus import agreement_fraction, consensus
from las_builder.inspect import inspect_dataset, s1_false_colour, s2_true_colour
from las_builder.model.evaluate import best_product, confusion, iou_report, json_ready
from las_builder.model.fusion import fuse
from las_builder.stats import compute_stats


def _app(command: Callable[..., None]) -> typer.Typer:
    app = typer.Typer()
    app.command()(command)
    return app


def _one_line_error(output: str) -> str:
    """The CLI's error: one line, starting with ``error:``, no traceback."""
    assert "Traceback" not in output and "╭" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture
def las(small_las: Path, tmp_path: Path) -> Path:
    """A private copy of the session's 24-sample dataset, to damage freely."""
    copy = tmp_path / "las"
    shutil.copytree(small_las, copy, ignore=shutil.ignore_patterns("inspect", "stats"))
    return copy


def _root(las: Path) -> zarr.Group:
    return zarr.open_group(las / "las.zarr", mode="r+")


def _array(root: zarr.Group, path: str) -> np.ndarray:
    return np.asarray(cast(zarr.Array, root[path])[:])


def _replace(root: zarr.Group, path: str, data: np.ndarray) -> None:
    del root[path]
    root.create_array(path, shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]))
    cast(zarr.Array, root[path])[:] = data


# --- sample ids that are paths -----------------------------------------------------------------


def test_sample_ids_that_are_paths_stay_inside_the_output(las: Path, tmp_path: Path) -> None:
    index = gpd.read_parquet(las / "index.parquet")
    two = index[index["status"] == "ok"].iloc[:2].copy()
    outside = tmp_path / "outside"
    two["sample_id"] = ["../../escaped", str(outside)]
    two.to_parquet(las / "index.parquet")
    out = las / "inspect"
    result = inspect_dataset(las, out, samples=5)
    assert [v.sample_id for v in result.samples] == ["../../escaped", str(outside)]
    paths = [p.path for v in result.samples for p in v.panels if p.path]
    assert len(paths) >= 4
    for path in paths:
        assert (out / path).resolve().is_relative_to(out.resolve()), path
        assert (out / path).is_file()
    folders = {Path(p).parent for p in paths}
    assert len(folders) == 2  # one folder a sample, none shared
    assert not (las / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not outside.exists()


# --- damaged store attributes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "colour",
    ["#0064c8;background-image:url(https://evil.example/x.png)", "#06c", None, "blue"],
)
def test_taxonomy_colour_not_rrggbb_is_one_clear_error(las: Path, colour: str | None) -> None:
    root = _root(las)
    taxonomy = cast(list[dict[str, Any]], root.attrs["taxonomy"])
    taxonomy[0]["color"] = colour
    root.attrs["taxonomy"] = taxonomy
    result = CliRunner().invoke(_app(inspect_command), [str(las), "-q", "-n", "1"])
    assert result.exit_code == 2, result.output
    line = _one_line_error(result.output)
    assert f"'{taxonomy[0]['key']}'" in line and "not #rrggbb" in line
    assert not (las / "inspect" / "report.html").exists()  # no page that fetches a URL


def test_native_colour_that_would_inject_css_is_refused(las: Path) -> None:
    root = _root(las)
    native = cast(zarr.Array, root["labels/esa-worldcover/native"])
    classes = cast(list[dict[str, Any]], native.attrs["classes"])
    classes[0]["color"] = "#006400;background:url(//evil.example/x)"
    native.attrs["classes"] = classes
    result = CliRunner().invoke(_app(inspect_command), [str(las), "-q", "-n", "1"])
    assert result.exit_code == 2, result.output
    line = _one_line_error(result.output)
    assert f"labels/esa-worldcover/native class {classes[0]['value']}" in line


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(code=300), "code 300"),
        (lambda c: c.update(code=255), "code 255"),
        (lambda c: c.pop("name"), "name"),
    ],
)
def test_taxonomy_class_without_a_usable_code_or_name(
    las: Path, edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    root = _root(las)
    taxonomy = cast(list[dict[str, Any]], root.attrs["taxonomy"])
    edit(taxonomy[-1])
    root.attrs["taxonomy"] = taxonomy
    for command in (inspect_command, stats_command):
        result = CliRunner().invoke(_app(command), [str(las), "-q"])
        assert result.exit_code == 2, result.output
        line = _one_line_error(result.output)
        assert "taxonomy class" in line and message in line and "las build" in line


def test_taxonomy_code_given_twice_is_refused_by_stats(las: Path) -> None:
    root = _root(las)
    taxonomy = cast(list[dict[str, Any]], root.attrs["taxonomy"])
    taxonomy[1]["code"] = taxonomy[0]["code"]
    root.attrs["taxonomy"] = taxonomy
    for command in (stats_command, inspect_command):
        result = CliRunner().invoke(_app(command), [str(las), "-q"])
        # inspect too: a report without its confusion matrices, silently, was the old answer
        assert result.exit_code == 2, result.output
        assert f"taxonomy codes [{taxonomy[0]['code']}]" in _one_line_error(result.output)
    assert not (las / "inspect" / "report.html").exists()


def test_a_sample_id_twice_in_the_index_is_refused_by_inspect(las: Path) -> None:
    index = gpd.read_parquet(las / "index.parquet")
    ok = index.index[index["status"] == "ok"]
    index.loc[ok[1], "sample_id"] = index.loc[ok[0], "sample_id"]
    index.to_parquet(las / "index.parquet")
    result = CliRunner().invoke(_app(inspect_command), [str(las), "-q"])
    assert result.exit_code == 2, result.output
    line = _one_line_error(result.output)
    assert f"sample id {index.loc[ok[0], 'sample_id']} appears 2 times" in line


# --- damaged arrays ----------------------------------------------------------------------------


def test_label_arrays_of_other_shapes_are_one_clear_error(las: Path) -> None:
    root = _root(las)
    _replace(root, "consensus", _array(root, "consensus")[:8])
    for command in (inspect_command, stats_command):
        result = CliRunner().invoke(_app(command), [str(las), "-q"])
        assert result.exit_code == 2, result.output
        line = _one_line_error(result.output)
        assert "consensus has shape (8, 32, 32)" in line and "las build" in line

    _replace(root, "consensus", np.zeros((24, 32, 32), dtype=np.uint8))
    _replace(root, "labels/esa-cci-lc/las", np.ones((24, 16, 16), dtype=np.uint8))
    for command in (inspect_command, stats_command):
        result = CliRunner().invoke(_app(command), [str(las), "-q"])
        assert result.exit_code == 2, result.output
        assert "labels/esa-cci-lc/las has" in _one_line_error(result.output)


def test_values_of_no_class_are_counted_and_said(las: Path) -> None:
    root = _root(las)
    data = _array(root, "labels/esa-worldcover/las")
    data[0, :4, :] = 200  # no LAS class
    data[1, 0, :3] = 254  # the lookup table's unmapped marker
    cast(zarr.Array, root["labels/esa-worldcover/las"])[:] = data
    ok = gpd.read_parquet(las / "index.parquet")
    assert set(ok.loc[ok["zarr_index"].isin([0, 1]), "status"]) == {"ok"}
    result = CliRunner().invoke(_app(stats_command), [str(las), "-q"])
    assert result.exit_code == 0, result.output
    assert "esa-worldcover: 131 pixels hold values of no LAS class [200, 254]" in result.output
    layer = json.loads((las / "stats" / "stats.json").read_text())["class_counts"]["esa-worldcover"]
    assert layer["unknown"] == {"200": 128, "254": 3}
    parts = layer["nodata"] + layer["ignore"] + sum(layer["classes"].values()) + 131
    assert parts == layer["pixels"]  # every pixel is somewhere


# --- statistics recomputed from the raw arrays -------------------------------------------------


def test_stats_match_an_independent_count(las: Path) -> None:
    index = gpd.read_parquet(las / "index.parquet")
    status = index["status"].to_numpy().copy()
    status[::3] = "skipped"  # a mix: skipped samples must not count
    index["status"] = status
    index.to_parquet(las / "index.parquet")
    ok = np.sort(index.loc[index["status"] == "ok", "zarr_index"].to_numpy())
    stats = compute_stats(las)
    root = _root(las)
    codes = [int(c["code"]) for c in cast(list[dict[str, Any]], root.attrs["taxonomy"])]
    layers = {p: _array(root, f"labels/{p}/las")[ok] for p in stats.products}
    layers["consensus"] = _array(root, "consensus")[ok]
    assert stats.samples_ok == len(ok) and set(stats.counts) == set(layers)
    for name, data in layers.items():
        counted = Counter(data.ravel().tolist())
        assert stats.class_counts(name) == {c: counted.get(c, 0) for c in codes}
        assert int(stats.counts[name][LAS_NODATA]) == counted.get(LAS_NODATA, 0)
        assert int(stats.counts[name][LAS_IGNORE]) == counted.get(LAS_IGNORE, 0)
    for (a, b), matrix in stats.confusion.items():
        va, vb = layers[a].ravel(), layers[b].ravel()
        both = np.isin(va, codes) & np.isin(vb, codes)
        for i, ca in enumerate(sorted(codes)):
            for j, cb in enumerate(sorted(codes)):
                assert matrix[i, j] == int(((va == ca) & (vb == cb) & both).sum())
        same = int((both & (va == vb)).sum())
        total = int(both.sum())
        assert stats.agreement(a, b) == (same / total if total else None)


# --- imagery with NaN and inf ------------------------------------------------------------------


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_quicklooks_of_nan_and_inf_imagery_are_black_there_without_warnings() -> None:
    s1 = np.full((2, 4, 4), np.nan, dtype=np.float32)
    assert not s1_false_colour(s1, "linear").any()  # all nodata: black, not an error
    s1[:, 0, 0] = np.inf
    s1[:, 1, 1] = [-10.0, -20.0]
    s1[:, 2, 2] = [-5.0, -12.0]
    rgb = s1_false_colour(s1, "dB")
    assert not rgb[0, 0].any() and not rgb[3, 3].any()  # inf and NaN: nodata
    assert rgb[2, 2, 0] == 255 and rgb[1, 1, 0] == 0  # the stretch spans the valid pixels only

    bands = [f"B{i:02d}" for i in range(1, 13)]
    s2 = np.full((12, 3, 3), 500.0, dtype=np.float32)
    s2[:, 0, 0] = np.inf
    s2[:, 0, 1] = np.nan
    s2[:, 2, 2] = 1500.0
    rgb = s2_true_colour(s2, bands)
    assert not rgb[0, 0].any() and not rgb[0, 1].any()
    assert rgb[2, 2].tolist() == [255, 255, 255] and rgb[1, 1].tolist() == [0, 0, 0]


# --- consensus ---------------------------------------------------------------------------------


def test_consensus_matches_a_pixel_by_pixel_vote() -> None:
    rng = np.random.default_rng(3)
    values = np.array([LAS_NODATA, LAS_IGNORE, 1, 2, 5, 12], dtype=np.uint8)
    for n in (1, 2, 3, 4, 255):
        layers = rng.choice(values, size=(n, 7, 9))
        labels, agreement = consensus(layers)
        again = consensus(layers.copy())
        assert np.array_equal(again[0], labels) and np.array_equal(again[1], agreement)
        unanimous = voted = 0
        for y in range(7):
            for x in range(9):
                column = layers[:, y, x].tolist()
                votes = Counter(v for v in column if v not in (LAS_NODATA, LAS_IGNORE))
                if not votes:
                    want = (LAS_IGNORE if LAS_IGNORE in column else LAS_NODATA, 0)
                else:
                    voted += 1
                    top = max(votes.values())
                    winners = [c for c, k in votes.items() if k == top]
                    want = (winners[0], top) if len(winners) == 1 else (LAS_IGNORE, 0)
                    unanimous += len(votes) == 1
                assert (labels[y, x], agreement[y, x]) == want, (n, y, x, column)
        assert voted > 0 and agreement_fraction(layers, labels) == unanimous / voted


def test_consensus_of_255_unanimous_layers_does_not_overflow() -> None:
    layers = np.full((255, 2, 3), 7, dtype=np.uint8)
    labels, agreement = consensus(layers)
    assert (labels == 7).all() and (agreement == 255).all()
    assert agreement_fraction(layers, labels) == 1.0


# --- eval's scores -----------------------------------------------------------------------------


def _iou_by_hand(pred: np.ndarray, target: np.ndarray, k: int) -> list[float | None]:
    """IoU per class: a predicted value outside 0..k-1 is no class; targets outside are left out."""
    keep = (target >= 0) & (target < k)
    p, t = pred[keep], target[keep]
    out: list[float | None] = []
    for c in range(k):
        inter = int(((p == c) & (t == c)).sum())
        union = int(((p == c) | (t == c)).sum())
        out.append(inter / union if union else None)
    return out


def test_iou_report_matches_a_count_by_hand() -> None:
    rng = np.random.default_rng(5)
    k = 6
    target = rng.integers(0, k, size=(4, 20, 20))
    target[target == 4] = 255  # class 4 never in the reference: ignored there
    target[0, :3] = 255
    pred = rng.integers(0, k + 1, size=(4, 20, 20))  # k: no prediction (a product's ignore)
    pred[pred == 5] = 1  # class 5 never predicted
    pred[pred == 2] = 255
    report = iou_report(
        confusion(torch.from_numpy(pred), torch.from_numpy(target), k), list("abcdef")
    )
    by_hand = _iou_by_hand(pred, target, k)
    present = {n: v for n, v in zip("abcdef", by_hand, strict=True) if v is not None}
    assert report["per_class_iou"] == pytest.approx(present)
    assert present["e"] == 0.0  # predicted, never in the reference: IoU 0, in the mean
    assert present["f"] == 0.0  # in the reference, never predicted: IoU 0
    assert report["miou"] == pytest.approx(float(np.mean(list(present.values()))))
    keep = (target >= 0) & (target < k)
    assert report["pixels"] == int(keep.sum())
    assert report["pixel_accuracy"] == pytest.approx(float((pred[keep] == target[keep]).mean()))


def test_unscored_products_are_null_in_json_and_never_the_best() -> None:
    k = 3
    nothing = iou_report(torch.zeros(k, k + 1, dtype=torch.long), ["a", "b", "c"])
    assert np.isnan(nothing["miou"]) and nothing["pixels"] == 0
    some = torch.zeros(k, k + 1, dtype=torch.long)
    some[0, 0], some[1, 0] = 3, 1
    scored = iou_report(some, ["a", "b", "c"])
    assert best_product({"empty": nothing, "worldcover": scored}) == "worldcover"
    assert best_product({"empty": nothing}) is None
    text = json.dumps(json_ready({"labels": {"empty": nothing}, "x": [float("inf")]}))
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {
        "labels": {"empty": {**nothing, "miou": None}},
        "x": [None],
    }


def test_fusion_refuses_a_gamma_that_makes_scores_nan() -> None:
    logits = torch.randn(1, 3, 2, 2)
    logits[0, 2] -= 10  # class 2 never wins: confidence 0
    for gamma in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fusion gamma"):
            fuse(logits, torch.zeros(1, 3), gamma)
    fused, weights = fuse(logits, torch.zeros(1, 3), 0.0)
    assert torch.isfinite(fused).all() and (weights == 1).all()
