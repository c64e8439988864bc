"""Statistics of a built LAS dataset: class frequencies and agreement between label products.

A dataset is the output folder of ``las build``: ``las.zarr`` holds one LAS label raster per
product (``labels/<product>/las``, ``(N, H, W)`` uint8) and the consensus, ``index.parquet``
says which samples were built (``status == "ok"``). Only those samples count.

* **Class frequencies**: pixels of each LAS class per product (and for the consensus), with
  nodata (0) and ignore (255) counted apart.
* **Confusion matrices**: for every pair of products ``a, b``, ``matrix[i, j]`` is the number
  of pixels that ``a`` labels with the ``i``-th LAS class and ``b`` with the ``j``-th, over the
  pixels where both give a LAS class (nodata and ignore excluded in either).

:func:`compute_stats` reads the store shard by shard, so memory stays bounded by one shard of
every label array; :func:`write_stats` writes ``stats/stats.json`` and the PNG plots.

Example:
    >>> from las_builder.stats import compute_stats, write_stats
    >>> stats = compute_stats("out/demo")  # doctest: +SKIP
    >>> write_stats(stats, "out/demo")  # doctest: +SKIP

"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from las_builder.catalog.taxonomy import LAS_IGNORE, LAS_NODATA

if TYPE_CHECKING:
    import zarr

__all__ = [
    "CONSENSUS",
    "STATUSES",
    "DatasetIndex",
    "DatasetStats",
    "StatsError",
    "compute_stats",
    "cannot_write",
    "confusion_name",
    "read_index",
    "write_stats",
]

CONSENSUS = "consensus"
"""Name the consensus layer takes among the products in the class frequencies."""

STATUSES = ("ok", "skipped", "failed")
"""The sample statuses a build writes (docs/shard-format.md, "Status semantics")."""

_STORE = "las.zarr"
_INDEX = "index.parquet"
_PARTS = "index-parts"
_PART = re.compile(r"shard-(\d+)\.parquet")
_OUT = "stats"
_REBUILD = "run `las build RECIPE` again: it rewrites index.parquet from index-parts/"


class StatsError(ValueError):
    """The folder is not a built dataset (no ``las.zarr`` or ``index.parquet``, no labels)."""


@dataclass
class DatasetIndex:
    """A dataset's index, from ``index.parquet`` or, while a build is unfinished, its parts.

    Attributes:
        frame: One row per indexed sample, in ``zarr_index`` order (a GeoDataFrame when read
            with ``geo=True``).
        partial: ``None`` for a finished index (``index.parquet``); else what the build has
            finished so far: ``{"shards_done": int, "shards_planned": int | None,
            "samples_planned": int | None}`` (planned counts from ``plan.parquet`` when there).
        stale_shards: Shards finished in ``index-parts/`` that ``index.parquet`` lacks (a
            build after the one that wrote the index is running or was stopped).

    """

    frame: Any
    partial: dict[str, int | None] | None = None
    stale_shards: list[int] = field(default_factory=list)


def _finished_parts(dataset: Path) -> dict[int, Path]:
    """``{shard: part}`` of the finished shards (a part is written whole, last, per shard)."""
    folder = dataset / _PARTS
    if not folder.is_dir():
        return {}
    parts = {}
    for path in folder.iterdir():
        match = _PART.fullmatch(path.name)
        if match:
            parts[int(match.group(1))] = path
    return dict(sorted(parts.items()))


def _read_parquet(path: Path, columns: list[str] | None, fix: str) -> Any:
    """One parquet file as pandas; an unreadable file is a :class:`StatsError` naming it."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if columns is not None:
            present = set(pq.read_schema(path).names)
            columns = [c for c in columns if c in present]
        return pd.read_parquet(path, columns=columns)
    except (OSError, pa.ArrowException, ValueError) as err:
        raise StatsError(f"{path} is unreadable ({type(err).__name__}: {err}); {fix}") from None


def _planned(dataset: Path) -> tuple[int | None, int | None]:
    """Shards and samples of ``plan.parquet`` (its footer and shard column), if it is there."""
    import pyarrow.parquet as pq

    plan = dataset / "plan.parquet"
    if not plan.is_file():
        return None, None
    try:
        shards = pq.read_table(plan, columns=["shard"]).column("shard").to_pylist()
    except Exception:  # noqa: BLE001 - the plan only adds the planned totals to a note
        return None, None
    return len(set(shards)), len(shards)


def read_index(
    dataset: str | Path, columns: list[str] | None = None, *, geo: bool = False
) -> DatasetIndex:
    """Read a dataset's index, falling back to the finished shards' parts during a build.

    ``index.parquet`` is written only when ``las build`` ends; until then each finished shard
    has its part in ``index-parts/``, and those samples are complete in ``las.zarr``. Every
    row's ``status`` must be ``ok``, ``skipped`` or ``failed`` and its ``zarr_index`` a unique
    non-negative integer: a report over other rows would count them nowhere, or twice.

    Args:
        dataset: The output folder of ``las build``.
        columns: Columns to read (those missing from the files are left out); all by default.
        geo: Return a GeoDataFrame (the ``geometry`` column decoded, EPSG:4326).

    Returns:
        The index, with ``partial`` set when it comes from the parts.

    Raises:
        StatsError: No index and no finished shard, an unreadable file, or a bad row.

    """
    import pandas as pd

    root_dir = Path(dataset)
    index_path = root_dir / _INDEX
    parts = _finished_parts(root_dir)
    partial: dict[str, int | None] | None = None
    stale: list[int] = []
    if index_path.is_file():
        if geo:
            import geopandas as gpd

            try:
                frame = gpd.read_parquet(index_path, columns=columns)
            except Exception as err:  # noqa: BLE001 - any reader error: name the file
                raise StatsError(
                    f"{index_path} is unreadable ({type(err).__name__}: {err}); {_REBUILD}"
                ) from None
        else:
            frame = _read_parquet(index_path, columns, _REBUILD)
        if parts and "shard" in frame.columns:
            stale = sorted(set(parts) - set(frame["shard"].dropna().astype(int)))
    elif parts:
        wanted = None if columns is None else list(dict.fromkeys([*columns, "zarr_index"]))
        fix = "delete it and run `las build RECIPE` again to rebuild that shard"
        frames = [_read_parquet(path, wanted, fix) for path in parts.values()]
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        if geo and "geometry" in frame.columns:
            import geopandas as gpd

            geometry = gpd.GeoSeries.from_wkb(frame["geometry"].to_numpy(), crs="EPSG:4326")
            frame = gpd.GeoDataFrame(frame.drop(columns="geometry"), geometry=geometry)
        shards, samples = _planned(root_dir)
        partial = {"shards_done": len(parts), "shards_planned": shards, "samples_planned": samples}
    else:
        raise StatsError(
            f"{root_dir} is not a built LAS dataset: {_INDEX} is missing and no shard is "
            f"finished yet ({_PARTS}/ is empty or absent); run `las build RECIPE` first"
        )
    frame = _checked(frame, index_path if partial is None else root_dir / _PARTS)
    return DatasetIndex(frame, partial, stale)


def _checked(frame: Any, source: Path) -> Any:
    """The rows in ``zarr_index`` order, after checking ``status`` and ``zarr_index``."""
    import pandas as pd

    for column in ("status", "zarr_index"):
        if column not in frame.columns:
            raise StatsError(f"{source}: the index has no {column} column; {_REBUILD}")
    ids = frame["sample_id"] if "sample_id" in frame.columns else frame.index.to_series()
    bad = ~frame["status"].isin(STATUSES)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        value = frame["status"].iloc[i]
        has = "no status" if pd.isna(value) else f"status {value!r}"
        raise StatsError(
            f"{source}: sample {ids.iloc[i]} has {has}, not one of "
            f"{', '.join(STATUSES)} ({int(bad.sum())} row(s) so); the index is damaged or from "
            f"another tool: {_REBUILD}"
        )
    zi = pd.to_numeric(frame["zarr_index"], errors="coerce")
    bad = zi.isna() | (zi < 0) | (zi != zi.round())
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise StatsError(
            f"{source}: sample {ids.iloc[i]} has zarr_index {frame['zarr_index'].iloc[i]}, "
            f"not a position on the arrays' sample axis; {_REBUILD}"
        )
    dup = zi.duplicated(keep=False)
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise StatsError(
            f"{source}: zarr_index {int(zi.iloc[i])} appears {int((zi == zi.iloc[i]).sum())} "
            f"times (sample {ids.iloc[i]} and others): rows of two builds are mixed; {_REBUILD}"
        )
    frame = frame.assign(zarr_index=zi.astype(np.int64))
    return frame.sort_values("zarr_index", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class LasClass:
    """A LAS class as recorded in the store's ``taxonomy`` attribute."""

    code: int
    key: str
    name: str
    color: str


@dataclass
class DatasetStats:
    """Class frequencies and pairwise confusion matrices of a dataset.

    Attributes:
        dataset: The dataset folder.
        classes: The LAS classes, in code order.
        products: The label products, in store order.
        samples_total: Rows of the index.
        samples_ok: Samples with ``status == "ok"`` (the ones counted).
        pixels_per_sample: Pixels of one label raster.
        counts: ``{product or "consensus": array of 256 pixel counts by LAS value}``.
        confusion: ``{(a, b): (K, K) int64 array}`` for every pair of products ``a`` before
            ``b`` in :attr:`products`; rows are ``a``'s classes, columns ``b``'s, in
            :attr:`classes` order.
        partial: Set while the build is unfinished: only its finished shards are counted
            (:attr:`DatasetIndex.partial`).

    """

    dataset: Path
    classes: list[LasClass]
    products: list[str]
    samples_total: int
    samples_ok: int
    pixels_per_sample: int
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    confusion: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    partial: dict[str, int | None] | None = None

    @property
    def codes(self) -> list[int]:
        """The LAS class codes, ascending."""
        return [c.code for c in self.classes]

    def class_counts(self, layer: str) -> dict[int, int]:
        """Pixel count of each LAS class code (nodata and ignore excluded) of one layer."""
        counts = self.counts[layer]
        return {c: int(counts[c]) for c in self.codes}

    def classified(self, layer: str) -> int:
        """Pixels of one layer with a LAS class (nodata and ignore excluded)."""
        return sum(self.class_counts(layer).values())

    def unknown(self, layer: str) -> dict[int, int]:
        """Pixels of one layer whose value is no LAS class, nodata or ignore, by value.

        A valid store has none; they are in no class count, frequency or confusion matrix.
        """
        counts = self.counts[layer]
        known = {*self.codes, LAS_NODATA, LAS_IGNORE}
        return {v: int(n) for v, n in enumerate(counts.tolist()) if n and v not in known}

    def frequencies(self, layer: str) -> dict[int, float]:
        """Fraction of each LAS class among one layer's classified pixels (nodata, ignore out).

        All ``0.0`` where the layer classifies no pixel (see :meth:`classified`).
        """
        counts = self.class_counts(layer)
        total = sum(counts.values())
        return {c: (n / total if total else 0.0) for c, n in counts.items()}

    def agreement(self, a: str, b: str) -> float | None:
        """Fraction of the pixels both products classify on which they give the same class."""
        matrix = self.confusion[(a, b)]
        total = int(matrix.sum())
        return float(np.trace(matrix)) / total if total else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``stats/stats.json`` holds)."""
        keys = [c.key for c in self.classes]
        layers: dict[str, Any] = {}
        for layer, counts in self.counts.items():
            classified = self.class_counts(layer)
            layers[layer] = {
                "pixels": int(counts.sum()),
                "nodata": int(counts[LAS_NODATA]),
                "ignore": int(counts[LAS_IGNORE]),
                # values of no class (a damaged store): counted, so pixels add up
                "unknown": {str(v): n for v, n in self.unknown(layer).items()},
                "classes": {self._key(c): n for c, n in classified.items()},
                # null, not 0.0, where no pixel is classified: shares of nothing
                "frequencies": {
                    self._key(c): round(f, 6) if any(classified.values()) else None
                    for c, f in self.frequencies(layer).items()
                },
            }
        pairs = {}
        for (a, b), matrix in self.confusion.items():
            agreement = self.agreement(a, b)
            pairs[confusion_name(a, b)] = {
                "rows": a,
                "columns": b,
                "classes": keys,
                "pixels": int(matrix.sum()),
                "agreement": None if agreement is None else round(agreement, 6),
                "matrix": matrix.tolist(),
            }
        return {
            "dataset": str(self.dataset),
            "samples_total": self.samples_total,
            "samples_ok": self.samples_ok,
            "partial": self.partial,
            "pixels_per_sample": self.pixels_per_sample,
            "taxonomy": [
                {"code": c.code, "key": c.key, "name": c.name, "color": c.color}
                for c in self.classes
            ],
            "products": self.products,
            "class_counts": layers,
            "confusion": pairs,
        }

    def _key(self, code: int) -> str:
        return next(c.key for c in self.classes if c.code == code)


def confusion_name(a: str, b: str) -> str:
    """The name of the confusion matrix of products ``a`` (rows) and ``b`` (columns)."""
    return f"{a}__{b}"


def compute_stats(dataset: str | Path) -> DatasetStats:
    """Count LAS classes per product and cross-tabulate every pair of products.

    Args:
        dataset: The output folder of ``las build`` (``las.zarr`` and ``index.parquet``).

    Returns:
        The statistics over the samples whose status is ``ok``.

    Raises:
        StatsError: The folder is not a built dataset, or its store has no label products.

    """
    import zarr

    root_dir = Path(dataset)
    store = root_dir / _STORE
    if not store.exists():
        raise StatsError(f"{root_dir} is not a built LAS dataset: {store.name} is missing")
    loaded = read_index(root_dir, ["status", "zarr_index", "sample_id", "shard"])
    index = loaded.frame
    ok = index[index["status"] == "ok"]
    ok_rows = ok["zarr_index"].to_numpy(dtype=np.int64)  # ascending: read_index sorts
    root = zarr.open_group(store, mode="r")
    classes = _classes(root.attrs.get("taxonomy"), store)
    products: list[str] = []
    if "labels" in root:
        labels = root["labels"]
        if not isinstance(labels, zarr.Group):
            raise StatsError(f"{store}: labels is an array, not a group of label products")
        products = sorted(name for name, group in labels.groups() if "las" in group)
    if not products:
        raise StatsError(f"{store} holds no label products (labels/<product>/las)")
    arrays = {p: _array(root, f"labels/{p}/las", store) for p in products}
    if CONSENSUS in root:
        arrays[CONSENSUS] = _array(root, CONSENSUS, store)
    first = arrays[products[0]]
    _check_shapes(arrays, store)
    n_total, height, width = first.shape
    if ok_rows.size and ok_rows[-1] >= n_total:
        beyond = ok.iloc[-1]
        raise StatsError(
            f"{root_dir}: sample {beyond.get('sample_id', '?')} has zarr_index {ok_rows[-1]}, "
            f"but {store.name} holds {n_total} samples (0..{n_total - 1}): index and store are "
            "of different builds; rebuild the dataset or use its own index"
        )

    codes = np.array([c.code for c in classes], dtype=np.int64)
    k = len(codes)
    position = np.full(256, -1, dtype=np.int64)
    position[codes] = np.arange(k)
    counts = {layer: np.zeros(256, dtype=np.int64) for layer in arrays}
    pairs = list(combinations(products, 2))
    confusion = {pair: np.zeros((k, k), dtype=np.int64) for pair in pairs}

    block = _block_rows(first)
    for start in range(0, n_total, block):
        stop = min(start + block, n_total)
        rows = ok_rows[(ok_rows >= start) & (ok_rows < stop)] - start
        if rows.size == 0:
            continue
        data = {layer: np.asarray(arr[start:stop])[rows] for layer, arr in arrays.items()}
        for layer, values in data.items():
            counts[layer] += np.bincount(values.ravel(), minlength=256)[:256]
        for a, b in pairs:
            pa, pb = position[data[a].ravel()], position[data[b].ravel()]
            both = (pa >= 0) & (pb >= 0)
            flat = np.bincount(pa[both] * k + pb[both], minlength=k * k)
            confusion[(a, b)] += flat.reshape(k, k)

    return DatasetStats(
        dataset=root_dir,
        classes=classes,
        products=products,
        samples_total=int(len(index)),
        samples_ok=int(ok_rows.size),
        pixels_per_sample=int(height * width),
        counts=counts,
        confusion=confusion,
        partial=loaded.partial,
    )


def _array(root: zarr.Group, path: str, store: Path) -> zarr.Array[Any]:
    import zarr

    node = root[path]
    if not isinstance(node, zarr.Array):
        raise StatsError(f"{store}: {path} is a group, not an array")
    return node


def _check_shapes(arrays: dict[str, zarr.Array[Any]], store: Path) -> None:
    """Refuse label arrays whose shape differs from the first product's (samples, H, W)."""
    (first, reference), *others = arrays.items()
    for name, array in [(first, reference), *others]:
        if len(array.shape) != 3 or array.shape != reference.shape:
            path = name if name == CONSENSUS else f"labels/{name}/las"
            raise StatsError(
                f"{store}: {path} has shape {array.shape}, labels/{first}/las "
                f"{reference.shape}: label arrays of one dataset are (samples, H, W) alike; the "
                "store is damaged or mixes builds, rebuild the dataset with `las build RECIPE`"
            )


def _block_rows(array: zarr.Array[Any]) -> int:
    shards = getattr(array, "shards", None)
    rows = int(shards[0]) if shards else int(array.chunks[0])
    return max(rows, 1)


def _classes(attr: Any, store: Path) -> list[LasClass]:
    """The classes of the store's ``taxonomy`` attribute (the catalog's when it has none)."""
    if isinstance(attr, list) and attr:
        classes = []
        for c in attr:
            fields = c if isinstance(c, dict) else {}
            code = fields.get("code")
            if (
                not isinstance(code, int)
                or not LAS_NODATA < code < LAS_IGNORE
                or not all(isinstance(fields.get(k), str) for k in ("key", "name", "color"))
            ):
                name = fields.get("key", code)
                raise StatsError(
                    f"{store}: taxonomy class {name!r} (code {code!r}) needs an integer code "
                    "between 1 and 254, a key, a name and a color; the store's attributes are "
                    "damaged or from another tool, rebuild the dataset with `las build RECIPE`"
                )
            classes.append(LasClass(code, fields["key"], fields["name"], fields["color"]))
        codes = [c.code for c in classes]
        if len(set(codes)) < len(codes):
            twice = sorted({c for c in codes if codes.count(c) > 1})
            raise StatsError(
                f"{store}: taxonomy codes {twice} are given to two classes; the store's "
                "attributes are damaged, rebuild the dataset with `las build RECIPE`"
            )
        return sorted(classes, key=lambda c: c.code)
    from las_builder.catalog.taxonomy import load_taxonomy

    return [LasClass(c.code, c.key, c.name, c.color) for c in load_taxonomy().classes]


# --- writing ---------------------------------------------------------------------------------


def write_stats(
    stats: DatasetStats, dataset: str | Path | None = None, out: str | Path | None = None
) -> list[Path]:
    """Write ``stats.json``, ``class_frequencies.png`` and the confusion plots.

    Args:
        stats: What :func:`compute_stats` returned.
        dataset: The dataset folder; defaults to ``stats.dataset``.
        out: The folder to write into; defaults to ``DATASET/stats``.

    Returns:
        The files written: the JSON, the frequency plot, then one
        ``confusion_<a>__<b>.png`` per pair of products.

    Raises:
        StatsError: A file or folder cannot be written (read-only dataset, a file in the
            way); the message names it.

    """
    folder = Path(out) if out is not None else Path(dataset or stats.dataset) / _OUT
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / "stats.json"]
        written[0].write_text(json.dumps(stats.to_dict(), indent=1) + "\n", encoding="utf-8")
        written.append(_plot_frequencies(stats, folder / "class_frequencies.png"))
        for a, b in stats.confusion:
            name = f"confusion_{confusion_name(a, b)}.png"
            written.append(_plot_confusion(stats, a, b, folder / name))
    except OSError as err:
        raise StatsError(cannot_write(err, folder)) from None
    return written


def cannot_write(err: OSError, folder: Path) -> str:
    """A one-line message for an output that could not be written, naming the path."""
    where = err.filename if err.filename else folder
    reason = err.strerror or type(err).__name__
    return (
        f"cannot write {where}: {reason}; make {folder} writable, or write elsewhere with --out DIR"
    )


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_frequencies(stats: DatasetStats, path: Path) -> Path:
    layers = list(stats.counts)
    names = [c.name for c in stats.classes]
    fig = _figure(max(8.0, 0.9 * len(names) + 2), 5.0)
    ax = fig.add_subplot()
    width = 0.8 / max(len(layers), 1)
    x = np.arange(len(names))
    cmap = _layer_colors(len(layers))
    for i, layer in enumerate(layers):
        freq = stats.frequencies(layer)
        values = [100 * freq[c] for c in stats.codes]
        hatch = "//" if layer == CONSENSUS else None
        ax.bar(
            x + (i - (len(layers) - 1) / 2) * width,
            values,
            width,
            label=layer,
            color=cmap[i],
            hatch=hatch,
            edgecolor="black" if hatch else None,
            linewidth=0.4,
        )
    ax.set_xticks(x, names, rotation=35, ha="right")
    ax.set_ylabel("% of classified pixels (nodata and ignore excluded)")
    ax.set_title(f"LAS class frequencies per product ({stats.samples_ok} samples)")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)
    return path


def _layer_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _plot_confusion(stats: DatasetStats, a: str, b: str, path: Path) -> Path:
    matrix = stats.confusion[(a, b)].astype(np.float64)
    total = matrix.sum()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    keys = [c.name for c in stats.classes]
    size = max(6.0, 0.55 * len(keys) + 3)
    fig = _figure(size + 1, size)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(keys)), keys, rotation=45, ha="right")
    ax.set_yticks(range(len(keys)), keys)
    ax.set_xlabel(b)
    ax.set_ylabel(a)
    for i in range(len(keys)):
        for j in range(len(keys)):
            if matrix[i, j]:
                color = "black" if share[i, j] > 0.6 else "white"
                ax.text(
                    j,
                    i,
                    f"{100 * share[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=color,
                )
    agreement = stats.agreement(a, b)
    text = "n/a" if agreement is None else f"{100 * agreement:.1f}%"
    ax.set_title(f"{a} (rows) vs {b} (columns)\nagreement {text} over {int(total)} pixels")
    fig.colorbar(image, ax=ax, label="share of the row's pixels", shrink=0.8)
    fig.savefig(path)
    return path
