"""`las stats`: class frequencies and pairwise confusion matrices of a built dataset."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import cast

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import zarr
from shapely.geometry import box
from typer.testing import CliRunner

from las_builder.catalog import LAS_IGNORE, LAS_NODATA, load_taxonomy
from las_builder.cli_stats import stats as stats_command
from las_builder.stats import StatsError, compute_stats, write_stats

PRODUCTS = ("alpha", "beta", "gamma")
N, SIZE, PER_SHARD = 10, 16, 4


def _taxonomy_attr() -> list[dict]:
    return [
        {"code": c.code, "key": c.key, "name": c.name, "color": c.color}
        for c in load_taxonomy().classes
    ]


def _make_dataset(out: Path, status: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """A dataset folder like `las build` writes: las.zarr (label arrays) and index.parquet."""
    rng = np.random.default_rng(seed)
    k = len(load_taxonomy())
    values = np.array([LAS_NODATA, LAS_IGNORE, *range(1, k + 1)], dtype=np.uint8)
    layers = {p: rng.choice(values, size=(N, SIZE, SIZE)).astype(np.uint8) for p in PRODUCTS}
    # beta mostly agrees with alpha, so the matrix has a strong diagonal but is not diagonal
    agree = rng.random((N, SIZE, SIZE)) < 0.7
    layers["beta"] = np.where(agree, layers["alpha"], layers["beta"]).astype(np.uint8)
    layers["consensus"] = layers["alpha"].copy()
    root = zarr.open_group(out / "las.zarr", mode="w", zarr_format=3)
    root.attrs.update({"taxonomy": _taxonomy_attr(), "nodata": 0, "ignore": 255})
    for name, data in layers.items():
        path = name if name == "consensus" else f"labels/{name}/las"
        arr = root.create_array(
            path,
            shape=data.shape,
            chunks=(1, SIZE, SIZE),
            shards=(PER_SHARD, SIZE, SIZE),
            dtype="uint8",
            fill_value=0,
        )
        arr[:] = data
        if name != "consensus":  # a native array beside it, as las build writes
            native = root.create_array(
                f"labels/{name}/native", shape=data.shape, chunks=(1, SIZE, SIZE), dtype="uint8"
            )
            native[:] = data
    index = gpd.GeoDataFrame(
        {
            "sample_id": [f"s{i:03d}" for i in range(N)],
            "zarr_index": np.arange(N),
            "status": status,
            "class_counts": ["{}"] * N,
        },
        geometry=[box(i, 0, i + 1, 1) for i in range(N)],
        crs="EPSG:4326",
    )
    index.to_parquet(out / "index.parquet")
    return layers


STATUS = ["ok", "ok", "skipped", "ok", "failed", "ok", "ok", "ok", "skipped", "ok"]


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    out = tmp_path / "ds"
    out.mkdir()
    return out, _make_dataset(out, STATUS)


def _confusion(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    expected = np.zeros((k, k), dtype=np.int64)
    valid = (a >= 1) & (a <= k) & (b >= 1) & (b <= k)
    for x, y in zip(a[valid].tolist(), b[valid].tolist(), strict=True):
        expected[x - 1, y - 1] += 1
    return expected


def test_counts_equal_numpy_over_ok_samples(dataset: tuple[Path, dict]) -> None:
    path, layers = dataset
    ok = np.flatnonzero(np.array(STATUS) == "ok")
    result = compute_stats(path)
    k = len(load_taxonomy())
    assert result.samples_ok == len(ok) and result.samples_total == N
    assert result.products == sorted(PRODUCTS)
    assert result.pixels_per_sample == SIZE * SIZE
    for layer in (*PRODUCTS, "consensus"):
        data = layers[layer][ok]
        expected = np.bincount(data.ravel(), minlength=256)
        np.testing.assert_array_equal(result.counts[layer], expected)
        assert result.class_counts(layer) == {c: int(expected[c]) for c in range(1, k + 1)}
        assert sum(result.frequencies(layer).values()) == pytest.approx(1.0)
    for a, b in [("alpha", "beta"), ("alpha", "gamma"), ("beta", "gamma")]:
        np.testing.assert_array_equal(
            result.confusion[(a, b)], _confusion(layers[a][ok], layers[b][ok], k)
        )


def test_skipped_samples_do_not_count(dataset: tuple[Path, dict]) -> None:
    path, layers = dataset
    result = compute_stats(path)
    everything = np.bincount(layers["alpha"].ravel(), minlength=256)
    assert result.counts["alpha"].sum() == STATUS.count("ok") * SIZE * SIZE
    assert (result.counts["alpha"] <= everything).all()


def test_product_with_itself_is_diagonal(tmp_path: Path) -> None:
    out = tmp_path / "same"
    out.mkdir()
    layers = _make_dataset(out, ["ok"] * N, seed=3)
    # make gamma a copy of alpha: their matrix must be diagonal, with the class counts on it
    root = zarr.open_group(out / "las.zarr", mode="r+")
    cast(zarr.Array, root["labels/gamma/las"])[:] = layers["alpha"]
    result = compute_stats(out)
    matrix = result.confusion[("alpha", "gamma")]
    assert matrix.sum() > 0
    np.testing.assert_array_equal(matrix, np.diag(np.diag(matrix)))
    assert np.diag(matrix).tolist() == list(result.class_counts("alpha").values())
    assert result.agreement("alpha", "gamma") == 1.0
    alpha_beta = result.agreement("alpha", "beta")
    assert alpha_beta is not None and alpha_beta < 1.0


@pytest.mark.parametrize(
    ("move", "message"),
    [
        ("labels", "labels is an array, not a group"),
        ("labels/beta/las", "labels/beta/las is a group, not an array"),
        ("consensus", "consensus is a group, not an array"),
    ],
)
def test_malformed_store_layout(dataset: tuple[Path, dict], move: str, message: str) -> None:
    path, _ = dataset
    root = zarr.open_group(path / "las.zarr", mode="r+")
    del root[move]
    if move == "labels":
        root.create_array("labels", shape=(N,), dtype="uint8")
    else:
        root.create_group(move).create_array("las", shape=(N,), dtype="uint8")
    with pytest.raises(StatsError, match=message):
        compute_stats(path)


def test_writes_json_and_plots(dataset: tuple[Path, dict]) -> None:
    path, _ = dataset
    result = compute_stats(path)
    written = write_stats(result)
    names = {p.name for p in written}
    assert names == {
        "stats.json",
        "class_frequencies.png",
        "confusion_alpha__beta.png",
        "confusion_alpha__gamma.png",
        "confusion_beta__gamma.png",
    }
    for p in written:
        assert p.parent == path / "stats" and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((path / "stats" / "stats.json").read_text())
    assert data["samples_ok"] == STATUS.count("ok")
    assert data["products"] == ["alpha", "beta", "gamma"]
    water = data["class_counts"]["alpha"]["classes"]["water"]
    assert water == result.class_counts("alpha")[1]
    pair = data["confusion"]["alpha__beta"]
    assert np.array_equal(np.array(pair["matrix"]), result.confusion[("alpha", "beta")])
    assert pair["classes"][0] == "water"


def test_cli(dataset: tuple[Path, dict]) -> None:
    import typer

    app = typer.Typer()
    app.command()(stats_command)
    path, _ = dataset
    result = CliRunner().invoke(app, [str(path)])
    assert result.exit_code == 0, result.output
    assert "LAS class frequencies" in result.output
    assert "alpha (rows) vs beta" in result.output
    assert (path / "stats" / "confusion_beta__gamma.png").is_file()
    quiet = CliRunner().invoke(app, [str(path), "--quiet"])
    assert quiet.exit_code == 0
    assert "LAS class frequencies" not in quiet.output and "wrote" in quiet.output


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(StatsError, match="las.zarr is missing"):
        compute_stats(tmp_path)
    import typer

    app = typer.Typer()
    app.command()(stats_command)
    result = CliRunner().invoke(app, [str(tmp_path)])
    assert result.exit_code == 2


@pytest.mark.slow
def test_on_a_built_dataset(build_las: Callable[[Path, int], Path], tmp_path: Path) -> None:
    from las_builder.cli import app

    out = build_las(tmp_path / "las", 8)
    stats_run = CliRunner().invoke(app, ["stats", str(out)]) if _has_stats(app) else None
    assert stats_run is None or stats_run.exit_code == 0, stats_run.output
    result = compute_stats(out)
    index = pd.read_parquet(out / "index.parquet")
    ok = index[index["status"] == "ok"]
    assert result.samples_ok == len(ok) > 0
    root = zarr.open_group(out / "las.zarr", mode="r")
    rows = np.sort(ok["zarr_index"].to_numpy())
    for product in result.products:
        array = cast(zarr.Array, root[f"labels/{product}/las"])
        data = cast(np.ndarray, array[:])[rows]  # a whole-array read is an ndarray
        np.testing.assert_array_equal(
            result.counts[product], np.bincount(data.ravel(), minlength=256)
        )
        # the per-sample class counts of the index add up to the same totals
        from_index = np.zeros(256, dtype=np.int64)
        for counts in ok["class_counts"]:
            for value, n in json.loads(counts)[product].items():
                from_index[int(value)] += n
        np.testing.assert_array_equal(result.counts[product], from_index)
    write_stats(result)
    assert (out / "stats" / "class_frequencies.png").is_file()


def _has_stats(app: object) -> bool:
    """Whether the lead has registered `las stats` on the main app yet."""
    return any(c.name == "stats" for c in getattr(app, "registered_commands", []))
