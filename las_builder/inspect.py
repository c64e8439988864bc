"""Look at a built LAS dataset: quicklooks, a sample map, class histograms and product agreement.

:func:`inspect_dataset` reads a dataset folder written by ``las build`` (``las.zarr`` and
``index.parquet``) and writes, under an output folder (``DATASET/inspect`` by default):

* ``panels/<sample_id>/<panel>.png``: one PNG per panel and sample, pixel for pixel the
  sample's grid (NAIP is thinned to at most :data:`NAIP_MAX_PX` pixels a side): Sentinel-2
  true colour with a robust stretch, Sentinel-1 false colour (VV, VH, VV/VH in dB), NAIP where
  present, every label product's native map in the product's own legend colours and its LAS
  map, and the consensus in the LAS colours;
* ``quicklooks.png``: the same panels as one grid with legends;
* ``world.png``: the samples on an equirectangular world map with a graticule, coloured by
  status (coastlines only when a local Natural Earth file is found, see
  :func:`find_coastlines`), and ``regions.png``: each cluster of samples up close;
* ``histograms_las.png`` and ``histograms_native.png``: class histograms per product;
* ``confusion.png`` and ``stats.json``: the confusion matrices of every pair of products (LAS
  classes) from :func:`las_builder.stats.compute_stats`;
* ``summary.json``: the summary table, the legends and the panel files;
* ``report.html``: everything above on one page that opens offline (see
  :mod:`las_builder.report`).

Label panels are exact: the PNG pixel at row ``i``, column ``j`` is the legend colour of the
label at ``[i, j]`` (:func:`colorize`). Nodata is drawn black (or the legend's own nodata
colour), LAS ``ignore`` (255) light grey.

Example:
    >>> from las_builder.inspect import inspect_dataset
    >>> result = inspect_dataset("out/demo/las", samples=6)  # doctest: +SKIP
    >>> result.report  # doctest: +SKIP
    PosixPath('out/demo/las/inspect/report.html')

"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from las_builder.catalog.taxonomy import LAS_IGNORE, LAS_NODATA

if TYPE_CHECKING:
    from las_builder.stats import DatasetStats

__all__ = [
    "IGNORE_COLOR",
    "NAIP_MAX_PX",
    "NODATA_COLOR",
    "UNKNOWN_COLOR",
    "InspectError",
    "InspectResult",
    "Legend",
    "LegendEntry",
    "Panel",
    "SampleView",
    "choose_samples",
    "colorize",
    "find_coastlines",
    "inspect_dataset",
    "las_legend",
    "notes",
    "native_legend",
    "naip_rgb",
    "s1_false_colour",
    "s2_true_colour",
    "summarise_dataset",
]

NODATA_COLOR = "#000000"
"""Colour of nodata pixels where the legend gives none."""
IGNORE_COLOR = "#ffffff"
"""Colour of LAS ``ignore`` (255) pixels."""
UNKNOWN_COLOR = "#ff00ff"
"""Colour of codes missing from a legend (a valid store has none)."""
NAIP_MAX_PX = 256
"""NAIP quicklooks are thinned (by an integer stride) to at most this many pixels a side."""
MAX_FOOTPRINTS = 20_000
"""Maps draw sample footprints up to this many samples (markers only beyond)."""
STATUS_COLORS = {"ok": "#1a9850", "skipped": "#fdae61", "failed": "#d73027"}
"""Marker colours of the sample statuses on the maps."""

_STORE = "las.zarr"
_INDEX = "index.parquet"


class InspectError(ValueError):
    """The folder is not a built dataset (no ``las.zarr`` or ``index.parquet``)."""


class ProgressLike(Protocol):
    """The part of :class:`rich.progress.Progress` that :func:`inspect_dataset` uses.

    Task ids are opaque: whatever ``add_task`` returns is handed back to ``advance`` and
    ``update``.
    """

    def add_task(self, description: str, *, total: float | None = ...) -> Any:
        """Start a task."""

    def advance(self, task_id: Any, advance: float = 1) -> None:
        """Advance a task."""

    def update(self, task_id: Any, **kwargs: Any) -> None:
        """Update a task."""


# --- legends and colours -----------------------------------------------------------------------


@dataclass(frozen=True)
class LegendEntry:
    """One legend entry: a raster value, its name and its colour ``#rrggbb``."""

    value: int
    name: str
    color: str
    special: bool = False
    """Nodata or ignore rather than a class."""


@dataclass(frozen=True)
class Legend:
    """The legend of one label panel kind (a product's native codes, or LAS)."""

    key: str
    """``las`` or the product id."""
    title: str
    entries: tuple[LegendEntry, ...]

    def colors(self) -> dict[int, str]:
        """``{value: "#rrggbb"}``."""
        return {e.value: e.color for e in self.entries}

    def lut(self, size: int = 256) -> np.ndarray:
        """A ``(size, 3)`` uint8 colour table indexed by value; unknown values are magenta."""
        table = np.tile(np.array(hex_to_rgb(UNKNOWN_COLOR), dtype=np.uint8), (size, 1))
        for e in self.entries:
            if 0 <= e.value < size:
                table[e.value] = hex_to_rgb(e.color)
        return table


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` to an ``(r, g, b)`` tuple of 0-255 integers."""
    color = color.lstrip("#")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)


_HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")


def _legend_color(color: Any, where: str) -> str:
    """``color`` lower-cased if it is ``#rrggbb``; else an :class:`InspectError` naming it.

    Anything else would crash the plots, and it lands in the report's ``style`` attributes,
    where text such as ``#000000;background:url(...)`` would make the offline page fetch a URL.
    """
    text = str(color)
    if not _HEX_COLOR.fullmatch(text):
        raise InspectError(
            f"{where} has colour {text!r}, not #rrggbb: the store's attributes are damaged or "
            "from another tool; rebuild the dataset with `las build RECIPE`"
        )
    return text.lower()


def las_legend(taxonomy: Sequence[dict[str, Any]]) -> Legend:
    """The LAS legend from the store's ``taxonomy`` attribute, plus nodata (0) and ignore (255).

    Args:
        taxonomy: The root attribute ``taxonomy``: ``[{code, key, name, color, ...}]``.

    Returns:
        The legend, classes in code order, then nodata and ignore.

    Raises:
        InspectError: A class lacks a ``code``, ``name`` or ``color``, its code is not a LAS
            class code (1-254), or its colour is not ``#rrggbb``.

    """
    entries = []
    for c in taxonomy:
        where = f"LAS taxonomy class {c.get('key', c.get('code', '?'))!r} (las.zarr attribute)"
        code = c.get("code")
        if not isinstance(code, int) or not LAS_NODATA < code < LAS_IGNORE or "name" not in c:
            raise InspectError(
                f"{where} needs an integer code between 1 and 254 and a name (code {code!r}, "
                f"name {c.get('name')!r}); rebuild the dataset with `las build RECIPE`"
            )
        entries.append(LegendEntry(code, str(c["name"]), _legend_color(c.get("color"), where)))
    entries.sort(key=lambda e: e.value)
    entries.append(LegendEntry(LAS_NODATA, "nodata", NODATA_COLOR, special=True))
    entries.append(LegendEntry(LAS_IGNORE, "ignore", IGNORE_COLOR, special=True))
    return Legend("las", "LAS", tuple(entries))


def native_legend(product: str, attrs: dict[str, Any]) -> Legend:
    """A product's native legend from its ``labels/<product>/native`` attributes.

    Args:
        product: The product id.
        attrs: The array attributes: ``classes`` ``[{value, name, description, color}]`` and
            ``nodata``.

    Returns:
        The legend in the product's own colours; the nodata value (when not a listed class with a
        colour) is black.

    """
    nodata = attrs.get("nodata")
    entries = []
    for c in attrs.get("classes", []):
        value = int(c["value"])
        is_nodata = nodata is not None and value == int(nodata)
        where = f"labels/{product}/native class {value}"
        color = _legend_color(c.get("color") or NODATA_COLOR, where)
        entries.append(LegendEntry(value, str(c["name"]), color, special=is_nodata))
    if nodata is not None and all(e.value != int(nodata) for e in entries):
        entries.append(LegendEntry(int(nodata), "nodata", NODATA_COLOR, special=True))
    return Legend(product, product, tuple(entries))


def colorize(labels: np.ndarray, legend: Legend) -> np.ndarray:
    """Paint a label raster in its legend colours.

    Args:
        labels: Integer labels of shape ``(H, W)``.
        legend: The legend of those labels.

    Returns:
        uint8 RGB of shape ``(H, W, 3)``; codes missing from the legend are magenta.

    """
    labels = np.asarray(labels)
    if labels.dtype.kind == "u" and labels.dtype.itemsize == 1:
        painted: np.ndarray = legend.lut()[labels]
        return painted
    out = np.empty((*labels.shape, 3), dtype=np.uint8)
    out[:] = hex_to_rgb(UNKNOWN_COLOR)
    for e in legend.entries:
        out[labels == e.value] = hex_to_rgb(e.color)
    return out


# --- imagery quicklooks ------------------------------------------------------------------------


def _stretch(values: np.ndarray, valid: np.ndarray, low: float = 2.0, high: float = 98.0) -> Any:
    """Percentile bounds of the valid values (a robust stretch), or ``None`` without any."""
    data = values[valid]
    if data.size == 0:
        return None
    lo, hi = np.percentile(data, [low, high])
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (values.astype(np.float64) - lo) / (hi - lo)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def s2_true_colour(s2: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """Sentinel-2 true colour (B04, B03, B02) with a 2-98 % stretch shared by the three bands.

    One stretch for the three bands keeps the colour balance. Nodata (0) stays black.

    Args:
        s2: One sample, ``(bands, H, W)`` uint16 reflectance x 10000.
        bands: The band names (the array's ``bands`` attribute).

    Returns:
        uint8 RGB ``(H, W, 3)``.

    """
    index = {b: i for i, b in enumerate(bands)}
    rgb = np.stack([s2[index[b]] for b in ("B04", "B03", "B02")], axis=-1).astype(np.float64)
    # a float array's NaN or inf (not the format's uint16, but seen) is nodata as 0 is
    valid = np.asarray(((rgb > 0) & np.isfinite(rgb)).all(axis=-1))
    bounds = _stretch(rgb, np.repeat(valid[..., None], 3, axis=-1))
    if bounds is None:
        return np.zeros(rgb.shape, dtype=np.uint8)
    out = _to_uint8(np.where(valid[..., None], rgb, bounds[0]), *bounds)
    out[~valid] = 0
    return out


def s1_false_colour(s1: np.ndarray, units: str) -> np.ndarray:
    """Sentinel-1 false colour: red VV, green VH, blue VV/VH, all in dB, each stretched 2-98 %.

    Args:
        s1: One sample, ``(2, H, W)`` float32 VV, VH (NaN nodata).
        units: The array's ``units`` attribute: ``dB`` or linear power.

    Returns:
        uint8 RGB ``(H, W, 3)``; nodata is black.

    """
    vv, vh = s1[0].astype(np.float64), s1[1].astype(np.float64)
    # log10(0), inf - inf: such pixels are not finite, hence nodata below; no warning
    with np.errstate(divide="ignore", invalid="ignore"):
        if units.strip().lower() != "db":
            vv = 10 * np.log10(np.where(vv > 0, vv, np.nan))
            vh = 10 * np.log10(np.where(vh > 0, vh, np.nan))
        channels = np.stack([vv, vh, vv - vh], axis=-1)
    valid = np.isfinite(channels).all(axis=-1)
    out = np.zeros(channels.shape, dtype=np.uint8)
    for k in range(3):
        bounds = _stretch(channels[..., k], valid)
        if bounds is not None:
            # nodata as the low bound (black anyway): nan_to_num makes inf the float maximum,
            # which overflows in the stretch
            out[..., k] = _to_uint8(np.where(valid, channels[..., k], bounds[0]), *bounds)
    out[~valid] = 0
    return out


def naip_rgb(naip: np.ndarray, max_px: int = NAIP_MAX_PX) -> np.ndarray:
    """NAIP red, green, blue as they are (uint8 digital numbers), thinned to ``max_px`` a side.

    Args:
        naip: One sample, ``(4, Hf, Wf)`` uint8 (R, G, B, NIR).
        max_px: Largest side of the quicklook; an integer stride keeps pixels whole.

    Returns:
        uint8 RGB ``(h, w, 3)``.

    """
    step = max(1, math.ceil(max(naip.shape[1:]) / max_px))
    return np.ascontiguousarray(np.moveaxis(naip[:3, ::step, ::step], 0, -1))


# --- the dataset -------------------------------------------------------------------------------


@dataclass
class _Dataset:
    path: Path
    root: Any
    index: Any
    taxonomy: list[dict[str, Any]]
    products: list[str]
    partial: dict[str, int | None] | None = None
    """Set when the index comes from the finished shards' parts (a build is unfinished)."""
    stale_shards: list[int] = field(default_factory=list)
    """Finished shards missing from an older ``index.parquet``."""

    def has(self, name: str) -> bool:
        try:
            self.root[name]
        except KeyError:
            return False
        return True


def _open(dataset: Path) -> _Dataset:
    import zarr

    from las_builder.stats import StatsError, read_index

    store = dataset / _STORE
    if not store.exists():
        raise InspectError(f"{dataset} is not a built LAS dataset: {store.name} is missing")
    try:
        loaded = read_index(dataset, geo=True)
    except StatsError as err:
        raise InspectError(str(err)) from None
    index = loaded.frame
    root = zarr.open_group(store, mode="r", zarr_format=3)
    products: list[str] = []
    if "labels" in root:
        labels = root["labels"]
        if not isinstance(labels, zarr.Group):
            raise InspectError(f"{store}: labels is an array, not a group of label products")
        products = sorted(labels.group_keys())
    attr = root.attrs.get("taxonomy")
    taxonomy: list[dict[str, Any]]
    if not attr:
        from las_builder.catalog import load_taxonomy

        taxonomy = [
            {"code": c.code, "key": c.key, "name": c.name, "color": c.color}
            for c in load_taxonomy().classes
        ]
    elif isinstance(attr, list) and all(isinstance(c, dict) for c in attr):
        taxonomy = [c for c in attr if isinstance(c, dict)]
    else:
        raise InspectError(f"{store}: the taxonomy attribute is not a list of classes")
    _check_index(index, root, dataset)
    _check_arrays(root, index, products, store)
    return _Dataset(dataset, root, index, taxonomy, products, loaded.partial, loaded.stale_shards)


def _check_index(index: Any, root: Any, dataset: Path) -> None:
    """Refuse rows the maps or the quicklooks would draw wrongly: no place, no slot."""
    ids = index["sample_id"] if "sample_id" in index.columns else index.index.to_series()
    for column in ("lon", "lat"):
        if column not in index.columns:
            raise InspectError(
                f"{dataset}: the index has no {column} column; run `las build RECIPE` again, "
                "it rewrites index.parquet from index-parts/"
            )
        bad = ~np.isfinite(index[column].to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InspectError(
                f"{dataset}: sample {ids.iloc[i]} has no {column} ({index[column].iloc[i]}, "
                f"{int(bad.sum())} row(s) so): the index is damaged; run `las build RECIPE` "
                "again, it rewrites index.parquet from index-parts/"
            )
    twice = ids.duplicated(keep=False).to_numpy()
    if twice.any():
        i = int(np.flatnonzero(twice)[0])
        raise InspectError(
            f"{dataset}: sample id {ids.iloc[i]} appears {int((ids == ids.iloc[i]).sum())} times "
            "in the index (its panels would overwrite each other): rows of two builds are mixed; "
            "run `las build RECIPE` again, it rewrites index.parquet from index-parts/"
        )
    n = root.attrs.get("n_samples")
    if isinstance(n, int):
        beyond = index["zarr_index"].to_numpy() >= n
        if beyond.any():
            i = int(np.flatnonzero(beyond)[0])
            raise InspectError(
                f"{dataset}: sample {ids.iloc[i]} has zarr_index {index['zarr_index'].iloc[i]}, "
                f"but {_STORE} holds {n} samples: index and store are of different builds; "
                "rebuild the dataset or use its own index"
            )


def _check_arrays(root: Any, index: Any, products: list[str], store: Path) -> None:
    """Refuse arrays that lack an indexed sample's slot, and label rasters of another size.

    Either would end in an IndexError or a broadcasting error half-way through the figures
    (or counts that miss the samples beyond a short array).
    """
    names = ["sentinel-2", "sentinel-1", "naip", "consensus"]
    names += [f"labels/{p}/{kind}" for p in products for kind in ("native", "las")]
    need = int(index["zarr_index"].max()) + 1 if len(index) else 0
    grid: tuple[str, tuple[int, ...]] | None = None
    for name in names:
        try:
            node = root[name]
        except KeyError:
            continue
        shape = tuple(getattr(node, "shape", ()))
        if len(shape) < 3 or shape[0] < need:
            raise InspectError(
                f"{store}: {name} has shape {shape or 'none (a group)'}, but the index has "
                f"samples up to zarr_index {need - 1}: the store is damaged or mixes builds; "
                "rebuild the dataset with `las build RECIPE`"
            )
        if name == "consensus" or name.endswith("/las"):
            if grid is None:
                grid = (name, shape[1:])
            elif shape[1:] != grid[1]:
                raise InspectError(
                    f"{store}: {name} has {shape[1:]} pixels a sample, {grid[0]} {grid[1]}: "
                    "label rasters of one dataset share the sample grid; the store is damaged "
                    "or mixes builds, rebuild the dataset with `las build RECIPE`"
                )


def choose_samples(index: Any, n: int) -> list[int]:
    """Pick up to ``n`` ok samples spread evenly over the index, one with NAIP if any has it.

    Args:
        index: The dataset index (``status``, ``zarr_index`` and optionally ``naip_item``).
        n: How many samples to show.

    Returns:
        Row positions into ``index``, ascending; deterministic.

    """
    ok = np.flatnonzero((index["status"] == "ok").to_numpy())
    if n <= 0 or ok.size == 0:
        return []
    if ok.size <= n:
        return ok.tolist()
    picks = ok[np.linspace(0, ok.size - 1, n).round().astype(int)].tolist()
    if "naip_item" in index.columns:
        has_naip = index["naip_item"].notna().to_numpy() & (index["status"] == "ok").to_numpy()
        if has_naip.any() and not has_naip[picks].any():
            picks[-1] = int(np.flatnonzero(has_naip)[0])
    return sorted(set(picks))


@dataclass(frozen=True)
class Panel:
    """One quicklook image of a sample."""

    key: str
    """Stable name: ``s2``, ``s1``, ``naip``, ``<product>/native``, ``<product>/las``,
    ``consensus``."""
    title: str
    path: str | None
    """PNG path relative to the output folder; ``None`` where the sample has no such image."""
    legend: str | None = None
    """Key of the legend the panel is painted with (label panels)."""
    note: str = ""


@dataclass
class SampleView:
    """The panels of one sample, with a few facts from its index row."""

    sample_id: str
    zarr_index: int
    facts: dict[str, str]
    panels: list[Panel] = field(default_factory=list)


def _save_png(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").save(path, optimize=False)


def _fmt(value: Any, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _facts(row: Any) -> dict[str, str]:
    get = row.get
    facts = {
        "lon, lat": f"{_fmt(get('lon'), '.4f')}, {_fmt(get('lat'), '.4f')}",
        "EPSG": _fmt(get("epsg")),
        "Sentinel-2": _fmt(get("s2_datetime")),
        "cloud %": _fmt(get("cloud_pct"), ".1f"),
        "Sentinel-1": f"{_fmt(get('s1_datetime'))} {_fmt(get('s1_orbit_state'))}",
        "agreement": _fmt(get("agreement"), ".3f"),
    }
    naip = get("naip_item")
    if isinstance(naip, str) and naip:
        facts["NAIP"] = naip
    return facts


_SAFE_NAME = re.compile(r"[\w.-]+")


def _panel_folder(sample_id: str, zarr_index: int) -> str:
    """The sample's folder under ``panels/``: its id, or a safe name where the id is not one.

    An id is written as it is only when it is one plain path component: ``..``, ``/`` or
    an absolute path in an id from a damaged or foreign index would write the PNGs outside
    the output folder. Other ids get their odd characters replaced and the sample's
    ``zarr_index`` appended, so two of them never share a folder.
    """
    if _SAFE_NAME.fullmatch(sample_id) and sample_id.strip("."):
        return sample_id
    safe = re.sub(r"[^\w.-]", "_", sample_id).strip(".")
    return f"{safe}-{zarr_index}"


def _render_sample(ds: _Dataset, row: Any, out: Path, legends: dict[str, Legend]) -> SampleView:
    i = int(row["zarr_index"])
    sid = str(row["sample_id"])
    view = SampleView(sid, i, _facts(row))
    rel = Path("panels") / _panel_folder(sid, i)

    def add(
        key: str, title: str, rgb: np.ndarray | None, legend: str | None = None, note: str = ""
    ) -> None:
        if rgb is None:
            view.panels.append(Panel(key, title, None, legend, note))
            return
        name = key.replace("/", "_") + ".png"
        _save_png(rgb, out / rel / name)
        view.panels.append(Panel(key, title, (rel / name).as_posix(), legend, note))

    if ds.has("sentinel-2"):
        arr = ds.root["sentinel-2"]
        add("s2", "Sentinel-2 (B04 B03 B02)", s2_true_colour(arr[i], arr.attrs["bands"]))
    if ds.has("sentinel-1"):
        arr = ds.root["sentinel-1"]
        units = str(arr.attrs.get("units", "linear"))
        add("s1", "Sentinel-1 (VV, VH, VV/VH dB)", s1_false_colour(arr[i], units))
    if ds.has("naip"):
        naip = ds.root["naip"][i]
        if naip.any():
            add("naip", "NAIP (R G B)", naip_rgb(naip))
        else:
            add("naip", "NAIP (R G B)", None, note="no NAIP here")
    for product in ds.products:
        group = f"labels/{product}"
        if ds.has(f"{group}/native"):
            data = ds.root[f"{group}/native"][i]
            add(
                f"{product}/native",
                f"{product} (native)",
                colorize(data, legends[product]),
                product,
            )
        if ds.has(f"{group}/las"):
            data = ds.root[f"{group}/las"][i]
            add(f"{product}/las", f"{product} (LAS)", colorize(data, legends["las"]), "las")
    if ds.has("consensus"):
        add(
            "consensus", "consensus (LAS)", colorize(ds.root["consensus"][i], legends["las"]), "las"
        )
    return view


# --- figures -----------------------------------------------------------------------------------


def _figure(width: float, height: float, dpi: int = 100) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _legend_handles(legend: Legend, values: set[int] | None = None) -> list[Any]:
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=e.color, edgecolor="#555555", linewidth=0.4, label=f"{e.value} {e.name}")
        for e in legend.entries
        if values is None or e.value in values
    ]


def _plot_quicklook_grid(
    views: list[SampleView], legends: dict[str, Legend], used: dict[str, set[int]], out: Path
) -> Path:
    from PIL import Image

    path = out / "quicklooks.png"
    columns: list[tuple[str, str]] = []
    for view in views:
        for p in view.panels:
            if (p.key, p.title) not in columns:
                columns.append((p.key, p.title))
    n_rows, n_cols = max(len(views), 1), max(len(columns), 1)
    legend_keys = [k for k in legends if used.get(k)]
    cell = 1.25
    per_row = 4
    legend_rows = math.ceil(len(legend_keys) / per_row) if legend_keys else 0
    row_heights = [
        0.35 + 0.13 * max(len(used[k]) for k in legend_keys[r * per_row : (r + 1) * per_row])
        for r in range(legend_rows)
    ]
    legend_h = sum(row_heights)
    fig = _figure(n_cols * cell + 1.6, n_rows * cell + 0.6 + legend_h)
    top = 1 - 0.45 / fig.get_figheight()
    bottom_grid = legend_h / fig.get_figheight()
    grid = fig.add_gridspec(
        n_rows,
        n_cols,
        left=1.4 / fig.get_figwidth(),
        right=0.99,
        top=top,
        bottom=bottom_grid + 0.1 / fig.get_figheight(),
        wspace=0.05,
        hspace=0.08,
    )
    for r, view in enumerate(views):
        by_key = {p.key: p for p in view.panels}
        for c, (key, title) in enumerate(columns):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title.replace(" (", "\n("), fontsize=7)
            if c == 0:
                ax.set_ylabel(view.sample_id, fontsize=6, rotation=0, ha="right", va="center")
            panel = by_key.get(key)
            if panel is None or panel.path is None:
                ax.text(
                    0.5,
                    0.5,
                    panel.note if panel else "-",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="#777777",
                    transform=ax.transAxes,
                )
                continue
            with Image.open(out / panel.path) as img:
                ax.imshow(np.asarray(img.convert("RGB")), interpolation="nearest")
    if legend_keys:
        lg = fig.add_gridspec(
            legend_rows,
            per_row,
            left=0.01,
            right=0.99,
            bottom=0.0,
            top=bottom_grid,
            height_ratios=row_heights,
            hspace=0.0,
        )
        for k, key in enumerate(legend_keys):
            ax = fig.add_subplot(lg[k // per_row, k % per_row])
            ax.axis("off")
            ax.legend(
                handles=_legend_handles(legends[key], used[key]),
                title=legends[key].title,
                loc="upper left",
                fontsize=5.5,
                title_fontsize=6.5,
                frameon=False,
            )
    fig.savefig(path)
    return path


def find_coastlines() -> Path | None:
    """A local Natural Earth land/country file to draw coastlines from, if there is one.

    Looks at ``$LAS_COASTLINES`` (any file geopandas reads), then at the small
    ``naturalearth_lowres`` shapefile shipped with pyogrio. Nothing is downloaded.

    Returns:
        The file, or ``None``.

    """
    env = os.environ.get("LAS_COASTLINES")
    if env:
        return Path(env) if Path(env).exists() else None
    try:
        import pyogrio
    except ImportError:  # pragma: no cover - geopandas brings pyogrio
        return None
    candidate = (
        Path(pyogrio.__file__).parent
        / "tests"
        / "fixtures"
        / "naturalearth_lowres"
        / "naturalearth_lowres.shp"
    )
    return candidate if candidate.exists() else None


def _wrap(lon: np.ndarray, ref: float) -> np.ndarray:
    """Longitudes shifted by multiples of 360° to lie within 180° of ``ref``."""
    return ref + (np.asarray(lon, dtype=float) - ref + 180.0) % 360.0 - 180.0


def _rings(
    geoms: Sequence[Any], ref_lon: float | None = None, unwrap: bool = True
) -> list[np.ndarray]:
    """Exterior rings as ``(n, 2)`` lon/lat arrays, unwrapped across the antimeridian.

    Without ``ref_lon`` a ring wider than 180° has its western part moved east by 360°, unless
    it reaches a pole (a polar cap spans every longitude: moved, half of it left the map) or
    ``unwrap`` is off (a world file split at the antimeridian, Antarctica spanning all of it);
    with ``ref_lon``, every vertex is moved to within 180° of ``ref_lon``.
    """
    rings = []
    for geom in geoms:
        for poly in getattr(geom, "geoms", [geom]):
            if poly is None or poly.is_empty or not hasattr(poly, "exterior"):
                continue
            xy = np.array(poly.exterior.coords, dtype=float)[:, :2]
            if ref_lon is not None:
                xy[:, 0] = _wrap(xy[:, 0], ref_lon)
            elif unwrap and np.ptp(xy[:, 0]) > 180 and np.abs(xy[:, 1]).max() < 90 - 1e-6:
                xy[xy[:, 0] < 0, 0] += 360
            rings.append(xy)
    return rings


def _draw_polygons(
    ax: Any, geoms: Sequence[Any], ref_lon: float | None = None, unwrap: bool = True, **style: Any
) -> list[np.ndarray]:
    from matplotlib.collections import PolyCollection

    rings = _rings(geoms, ref_lon, unwrap)
    if rings:
        ax.add_collection(PolyCollection(rings, **style))
    return rings


def _plot_world(index: Any, out: Path, coastlines: Path | None) -> Path:
    path = out / "world.png"
    fig = _figure(11, 5.8)
    ax = fig.add_axes((0.05, 0.1, 0.9, 0.82))
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_facecolor("#eef4fa")
    ax.set_xticks(range(-180, 181, 30))
    ax.set_yticks(range(-90, 91, 30))
    ax.tick_params(labelsize=7)
    ax.grid(color="#9aa7b4", linewidth=0.4, linestyle=":")
    source = "no local coastline file: sample footprints only"
    if coastlines is not None:
        try:
            import geopandas as gpd

            land = gpd.read_file(coastlines).to_crs("EPSG:4326")
            _draw_polygons(
                ax,
                list(land.geometry),
                unwrap=False,
                facecolor="#f4f1e8",
                edgecolor="#8c8c8c",
                linewidth=0.3,
            )
            source = f"coastlines: {coastlines.name}"
        except Exception as err:  # noqa: BLE001 - coastlines are decoration only
            source = f"coastlines unreadable ({type(err).__name__})"
    if len(index) <= MAX_FOOTPRINTS:
        _draw_polygons(
            ax, list(index.geometry), facecolor="none", edgecolor="#333333", linewidth=0.6
        )
    for status, color in STATUS_COLORS.items():
        sel = index[index["status"] == status]
        if len(sel):
            ax.scatter(
                sel["lon"],
                sel["lat"],
                s=14,
                c=color,
                edgecolors="black",
                linewidths=0.3,
                label=f"{status} ({len(sel)})",
                zorder=3,
            )
    if len(index):  # no sample, no marker to list (matplotlib warns of an empty legend)
        ax.legend(loc="lower left", fontsize=7, title="status", title_fontsize=7)
    ax.set_title(f"{_samples(len(index))} (equirectangular, graticule 30°; {source})", fontsize=8)
    fig.savefig(path)
    return path


def _clusters(lon: np.ndarray, lat: np.ndarray, cell_deg: float = 3.0) -> list[np.ndarray]:
    """Group points into regions of connected ``cell_deg`` grid cells.

    Cells touching by an edge or a corner join, across the antimeridian too. Linear in the
    number of points.
    """
    n_lon = max(1, round(360 / cell_deg))
    cx = np.floor((np.asarray(lon) + 180.0) / cell_deg).astype(np.int64) % n_lon
    cy = np.floor((np.asarray(lat) + 90.0) / cell_deg).astype(np.int64)
    cells = {(int(x), int(y)) for x, y in zip(cx.tolist(), cy.tolist(), strict=True)}
    component: dict[tuple[int, int], int] = {}
    k = 0
    for start in sorted(cells):
        if start in component:
            continue
        component[start] = k
        stack = [start]
        while stack:
            x, y = stack.pop()
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    nb = ((x + dx) % n_lon, y + dy)
                    if nb in cells and nb not in component:
                        component[nb] = k
                        stack.append(nb)
        k += 1
    labels = np.array(
        [component[(int(x), int(y))] for x, y in zip(cx.tolist(), cy.tolist(), strict=True)],
        dtype=np.int64,
    )
    return [np.flatnonzero(labels == c) for c in range(k)]


def _plot_regions(index: Any, out: Path, max_regions: int = 12) -> Path:
    from matplotlib.ticker import MaxNLocator

    path = out / "regions.png"
    lon, lat = index["lon"].to_numpy(float), index["lat"].to_numpy(float)
    groups = sorted(_clusters(lon, lat), key=len, reverse=True)[:max_regions]
    cols = min(4, max(len(groups), 1))
    rows = max(1, math.ceil(len(groups) / cols))
    fig = _figure(3.4 * cols, 3.2 * rows)
    for k, members in enumerate(groups):
        ax = fig.add_subplot(rows, cols, k + 1)
        sub = index.iloc[members]
        ref = float(lon[members[0]])
        x = _wrap(sub["lon"].to_numpy(float), ref)
        y = sub["lat"].to_numpy(float)
        rings = _draw_polygons(
            ax,
            list(sub.geometry) if len(sub) <= MAX_FOOTPRINTS else [],
            ref_lon=ref,
            facecolor="none",
            edgecolor="#999999",
            linewidth=0.4,
        )
        for status, color in STATUS_COLORS.items():
            sel = (sub["status"] == status).to_numpy()
            if sel.any():
                ax.scatter(
                    x[sel], y[sel], s=10, c=color, edgecolors="black", linewidths=0.3, zorder=3
                )
        pts = (
            np.concatenate([np.column_stack([x, y]), *rings]) if rings else np.column_stack([x, y])
        )
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        pad = 0.05 * max(x1 - x0, y1 - y0, 1e-3)
        ax.set_xlim(x0 - pad, x1 + pad)
        ax.set_ylim(max(y0 - pad, -90.0), min(y1 + pad, 90.0))  # no latitude beyond a pole
        ax.set_aspect(1 / max(math.cos(math.radians(float(np.mean(y)))), 0.1))
        ax.ticklabel_format(useOffset=False)
        ax.xaxis.set_major_locator(MaxNLocator(3))
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize=6)
        ax.grid(color="#cccccc", linewidth=0.4, linestyle=":")
        centre = float(_wrap(np.array([np.mean(x)]), 0.0)[0])
        ax.set_title(
            f"{_samples(len(sub))} near {float(np.mean(y)):.2f}°, {centre:.2f}°", fontsize=7
        )
    fig.tight_layout()
    fig.savefig(path)
    return path


def _samples(n: int) -> str:
    return f"{n} sample" if n == 1 else f"{n} samples"


def _short(text: str, width: int = 34) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _bar_panel(
    ax: Any, labels: list[str], values: list[float], colors: list[str], title: str
) -> None:
    y = np.arange(len(labels))
    ax.barh(y, values, color=colors, edgecolor="#444444", linewidth=0.4)
    ax.set_yticks(y, labels, fontsize=6)
    ax.invert_yaxis()
    ax.tick_params(axis="x", labelsize=6)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("% of pixels", fontsize=6)
    ax.grid(axis="x", alpha=0.3)


def _plot_histograms(
    layers: list[str],
    counts: dict[str, dict[int, int]],
    legends: dict[str, Legend],
    path: Path,
    title: str,
) -> Path:
    cols = min(3, max(len(layers), 1))
    rows = max(1, math.ceil(len(layers) / cols))
    tallest = max((len(counts[layer]) for layer in layers), default=1)
    fig = _figure(4.6 * cols, max(2.2, 0.17 * tallest + 1.0) * rows)
    for k, layer in enumerate(layers):
        ax = fig.add_subplot(rows, cols, k + 1)
        legend = legends["las"] if layer not in legends else legends[layer]
        names = {e.value: e.name for e in legend.entries}
        colors = legend.colors()
        total = sum(counts[layer].values()) or 1
        values = sorted(counts[layer])
        _bar_panel(
            ax,
            [_short(f"{v} {names.get(v, '?')}") for v in values],
            [100 * counts[layer][v] / total for v in values],
            [colors.get(v, UNKNOWN_COLOR) for v in values],
            layer,
        )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


# --- counting ----------------------------------------------------------------------------------


def _count_labels(
    ds: _Dataset, ok_rows: np.ndarray
) -> tuple[dict[str, dict[int, int]], dict[str, dict[int, int]], dict[str, float | None]]:
    """Native counts, LAS counts and agreement with the consensus, per product (ok samples)."""
    native: dict[str, dict[int, int]] = {p: {} for p in ds.products}
    las: dict[str, np.ndarray] = {}
    agree: dict[str, list[int]] = {p: [0, 0] for p in ds.products}
    names = [p for p in ds.products if ds.has(f"labels/{p}/las")]
    has_consensus = ds.has("consensus")
    first = ds.root[f"labels/{names[0]}/las"] if names else None
    n_total = first.shape[0] if first is not None else 0
    shards = getattr(first, "shards", None) if first is not None else None
    block = int(shards[0]) if shards else 64
    for layer in [*names, *(["consensus"] if has_consensus else [])]:
        las[layer] = np.zeros(256, dtype=np.int64)
    for start in range(0, n_total, block):
        stop = min(start + block, n_total)
        rows = ok_rows[(ok_rows >= start) & (ok_rows < stop)] - start
        if rows.size == 0:
            continue
        cons = np.asarray(ds.root["consensus"][start:stop])[rows] if has_consensus else None
        if cons is not None:
            las["consensus"] += np.bincount(cons.ravel(), minlength=256)[:256]
        for p in ds.products:
            if ds.has(f"labels/{p}/native"):
                values, n = np.unique(
                    np.asarray(ds.root[f"labels/{p}/native"][start:stop])[rows],
                    return_counts=True,
                )
                for v, c in zip(values.tolist(), n.tolist(), strict=True):
                    native[p][int(v)] = native[p].get(int(v), 0) + int(c)
            if p in names:
                data = np.asarray(ds.root[f"labels/{p}/las"][start:stop])[rows]
                las[p] += np.bincount(data.ravel(), minlength=256)[:256]
                if cons is not None:
                    both = (
                        (data != LAS_NODATA)
                        & (data != LAS_IGNORE)
                        & (cons != LAS_NODATA)
                        & (cons != LAS_IGNORE)
                    )
                    agree[p][0] += int((both & (data == cons)).sum())
                    agree[p][1] += int(both.sum())
    las_counts = {
        layer: {v: int(c) for v, c in enumerate(arr.tolist()) if c} for layer, arr in las.items()
    }
    agreement = {p: (a / n if n else None) for p, (a, n) in agree.items()}
    return native, las_counts, agreement


def summarise_dataset(
    index: Any,
    las_counts: dict[str, dict[int, int]],
    agreement: dict[str, float | None],
    pairwise: dict[str, float | None] | None = None,
    top_reasons: int = 8,
) -> dict[str, Any]:
    """The summary table: sample statuses, top skip reasons, per-product coverage and agreement.

    Args:
        index: The dataset index.
        las_counts: Pixel counts by LAS value per product (and ``consensus``), ok samples only.
        agreement: Per product, the share of pixels where product and consensus both give a
            class on which they agree.
        pairwise: Per product, the mean agreement with every other product (from the pairwise
            confusion matrices).
        top_reasons: How many reasons to list.

    Returns:
        A JSON-ready dict.

    """
    import pandas as pd

    status = index["status"].value_counts()
    not_ok = index.loc[index["status"] != "ok"]
    if "reason" in index.columns:
        text = not_ok["reason"].fillna("").astype(str)
    else:
        text = pd.Series("", index=not_ok.index)
    # by status too: a failure (retry may fix it) is not a skip (left out on purpose)
    reasons = (
        pd.DataFrame(
            {
                "status": not_ok["status"].astype(str),
                "reason": text.map(lambda r: r.split(":")[0].strip() or "(no reason)"),
            }
        )
        .value_counts(sort=True)
        .head(top_reasons)
    )
    products = []
    for layer, counts in las_counts.items():
        total = sum(counts.values())
        nodata, ignore = counts.get(LAS_NODATA, 0), counts.get(LAS_IGNORE, 0)
        products.append(
            {
                "product": layer,
                "pixels": total,
                "classified_pct": 100 * (total - nodata - ignore) / total if total else None,
                "nodata_pct": 100 * nodata / total if total else None,
                "ignore_pct": 100 * ignore / total if total else None,
                "agreement_with_consensus": agreement.get(layer),
                "mean_pairwise_agreement": (pairwise or {}).get(layer),
            }
        )
    mean_agreement = (
        index.loc[index["status"] == "ok", "agreement"].to_numpy(dtype=float, na_value=np.nan)
        if "agreement" in index
        else np.array([])
    )
    known = mean_agreement[np.isfinite(mean_agreement)]  # NaN: a sample without votes
    return {
        "samples": int(len(index)),
        "ok": int(status.get("ok", 0)),
        "skipped": int(status.get("skipped", 0)),
        "failed": int(status.get("failed", 0)),
        "mean_sample_agreement": float(known.mean()) if known.size else None,
        "reasons": [
            {"status": str(key[0]), "reason": str(key[1]), "samples": int(n)}
            for key, n in cast("Any", reasons).items()
        ],
        "products": products,
    }


# --- entry point -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confusion:
    """The confusion matrix of two products in LAS classes (from :mod:`las_builder.stats`)."""

    rows: str
    """Product of the rows."""
    columns: str
    """Product of the columns."""
    matrix: np.ndarray
    """``(K, K)`` pixel counts, classes in code order; only pixels both products classify."""
    agreement: float | None
    """Trace over total, ``None`` without common pixels."""


@dataclass
class InspectResult:
    """What :func:`inspect_dataset` wrote."""

    out: Path
    report: Path
    summary: dict[str, Any]
    legends: dict[str, Legend]
    samples: list[SampleView]
    figures: dict[str, Path]
    """``quicklooks``, ``world``, ``regions``, ``histograms_las``, ``histograms_native``,
    ``confusion`` (when there are two products or more)."""
    confusion: list[Confusion]
    files: list[Path] = field(default_factory=list)
    used: dict[str, set[int]] = field(default_factory=dict)
    """Per legend, the values present in the quicklooks."""


def _pairwise_stats(
    dataset: Path, out: Path, has_products: bool
) -> tuple[list[Confusion], dict[str, float | None], DatasetStats | None]:
    """Pairwise confusion matrices by :func:`las_builder.stats.compute_stats`; ``stats.json``.

    A dataset without label products has none; any other refusal of ``las stats`` is the
    report's too, not a report that silently lacks its matrices.
    """
    from las_builder.stats import StatsError, compute_stats

    try:
        stats = compute_stats(dataset)
    except StatsError as err:
        if not has_products:
            return [], {}, None
        raise InspectError(str(err)) from None
    (out / "stats.json").write_text(json.dumps(stats.to_dict(), indent=1) + "\n", "utf-8")
    confusion = [
        Confusion(a, b, matrix, stats.agreement(a, b)) for (a, b), matrix in stats.confusion.items()
    ]
    pairwise: dict[str, float | None] = {}
    for p in stats.products:
        values = [c.agreement for c in confusion if p in (c.rows, c.columns)]
        known = [v for v in values if v is not None]
        pairwise[p] = float(np.mean(known)) if known else None
    return confusion, pairwise, stats


def _plot_confusion(confusion: list[Confusion], legend: Legend, path: Path) -> Path:
    """Every pair's row-normalised matrix as one grid of heat maps."""
    classes = [e for e in legend.entries if not e.special]
    k = len(classes)
    cols = min(4, len(confusion))
    rows = math.ceil(len(confusion) / cols)
    fig = _figure(3.3 * cols, 3.4 * rows + 0.4)
    for n, c in enumerate(confusion):
        ax = fig.add_subplot(rows, cols, n + 1)
        m = c.matrix.astype(np.float64)
        total = m.sum(axis=1, keepdims=True)
        share = np.divide(m, total, out=np.zeros_like(m), where=total > 0)
        ax.imshow(share, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ticks = [str(e.value) for e in classes]
        ax.set_xticks(range(k), ticks, fontsize=5)
        ax.set_yticks(range(k), ticks, fontsize=5)
        ax.set_xlabel(c.columns, fontsize=6)
        ax.set_ylabel(c.rows, fontsize=6)
        text = "n/a" if c.agreement is None else f"{100 * c.agreement:.1f}%"
        ax.set_title(f"agreement {text}", fontsize=7)
    fig.suptitle("LAS confusion matrices (rows normalised; codes as in the LAS legend)", fontsize=8)
    fig.subplots_adjust(
        left=0.06,
        right=0.98,
        bottom=0.06,
        top=1 - 0.5 / fig.get_figheight(),
        wspace=0.35,
        hspace=0.45,
    )
    fig.savefig(path)
    return path


def inspect_dataset(
    dataset: str | Path,
    out: str | Path | None = None,
    samples: int = 12,
    progress: ProgressLike | None = None,
) -> InspectResult:
    """Render the quicklooks, maps, histograms and confusion matrices of a dataset, and a report.

    Args:
        dataset: The output folder of ``las build``.
        out: Where to write; defaults to ``DATASET/inspect``.
        samples: How many ok samples to show as quicklooks.
        progress: A :class:`rich.progress.Progress` (or alike) to report rendering progress to.

    Returns:
        The files written and the summary.

    Raises:
        InspectError: ``dataset`` is not a built dataset, its index is damaged, or ``out``
            cannot be written (the message names the file).

    """
    dataset = Path(dataset)
    out_dir = Path(out) if out is not None else dataset / "inspect"
    ds = _open(dataset)
    try:
        return _inspect(ds, out_dir, samples, progress)
    except OSError as err:
        raise InspectError(_os_error(err, out_dir)) from None


def _os_error(err: OSError, out: Path) -> str:
    """One line for a file error: the output that could not be written, or the input read."""
    from las_builder.stats import cannot_write

    where = Path(str(err.filename)) if err.filename else None
    inside = where is None or where.resolve().is_relative_to(out.resolve())
    if inside:
        return cannot_write(err, out)
    return (
        f"cannot read {where}: {err.strerror or type(err).__name__}; check the dataset's "
        "files (permissions, a copy still running)"
    )


def _inspect(
    ds: _Dataset, out_dir: Path, samples: int, progress: ProgressLike | None
) -> InspectResult:
    """:func:`inspect_dataset` once the dataset is open."""
    from las_builder.report import write_report

    dataset = ds.path
    out_dir.mkdir(parents=True, exist_ok=True)

    legends: dict[str, Legend] = {"las": las_legend(ds.taxonomy)}
    for p in ds.products:
        if ds.has(f"labels/{p}/native"):
            legends[p] = native_legend(p, dict(ds.root[f"labels/{p}/native"].attrs))

    picks = choose_samples(ds.index, samples)
    steps = len(picks) + 6
    task = progress.add_task("inspect: quicklooks", total=steps) if progress else None

    def step(description: str | None = None) -> None:
        if progress is not None:
            progress.advance(task)
            if description:
                progress.update(task, description=f"inspect: {description}")

    views = []
    for pos in picks:
        views.append(_render_sample(ds, ds.index.iloc[pos], out_dir, legends))
        step()
    used: dict[str, set[int]] = {k: set() for k in legends}
    for view in views:
        for panel in view.panels:
            if panel.legend and panel.path:
                array = "consensus" if panel.key == "consensus" else f"labels/{panel.key}"
                used[panel.legend] |= set(np.unique(ds.root[array][view.zarr_index]).tolist())
    figures: dict[str, Path] = {}
    if progress is not None:
        progress.update(task, description="inspect: quicklook grid")
    figures["quicklooks"] = _plot_quicklook_grid(views, legends, used, out_dir)
    step("maps")
    figures["world"] = _plot_world(ds.index, out_dir, find_coastlines())
    figures["regions"] = _plot_regions(ds.index, out_dir)
    step("class counts")
    ok_rows = np.sort(
        ds.index.loc[ds.index["status"] == "ok", "zarr_index"].to_numpy(dtype=np.int64)
    )
    native_counts, las_counts, agreement = _count_labels(ds, ok_rows)
    step("histograms")
    las_layers = list(las_counts)
    figures["histograms_las"] = _plot_histograms(
        las_layers,
        las_counts,
        {"las": legends["las"]},
        out_dir / "histograms_las.png",
        f"LAS classes per product, {len(ok_rows)} ok samples (nodata 0, ignore 255 included)",
    )
    native_layers = [p for p in ds.products if native_counts.get(p)]
    figures["histograms_native"] = _plot_histograms(
        native_layers,
        native_counts,
        legends,
        out_dir / "histograms_native.png",
        f"Native classes per product, {len(ok_rows)} ok samples, in each product's colours",
    )
    step("confusion matrices")
    confusion, pairwise, _ = _pairwise_stats(dataset, out_dir, bool(ds.products))
    if confusion:
        figures["confusion"] = _plot_confusion(confusion, legends["las"], out_dir / "confusion.png")
    step("report")
    summary = summarise_dataset(ds.index, las_counts, agreement, pairwise)
    summary["dataset"] = str(dataset)
    summary["partial"] = ds.partial
    summary["stale_shards"] = ds.stale_shards
    summary["samples_shown"] = [v.sample_id for v in views]
    result = InspectResult(
        out=out_dir,
        report=out_dir / "report.html",
        summary=summary,
        legends=legends,
        samples=views,
        figures=figures,
        confusion=confusion,
        used=used,
    )
    (out_dir / "summary.json").write_text(
        json.dumps(_summary_json(result), indent=1) + "\n", encoding="utf-8"
    )
    write_report(result)
    step("done")
    result.files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    return result


def notes(summary: dict[str, Any]) -> list[str]:
    """Warnings the summary calls for: an unfinished build, an index older than the shards.

    Args:
        summary: :attr:`InspectResult.summary`.

    Returns:
        One line each (the CLI prints them, the report shows them); none for a finished build.

    """
    lines = []
    partial = summary.get("partial")
    if partial:
        planned = partial.get("shards_planned")
        of = f" of {planned}" if planned else ""
        lines.append(
            f"partial build: no index.parquet yet; showing the {partial['shards_done']}{of} "
            "finished shards (`las build` is running or was stopped: run it again to finish)"
        )
    stale = summary.get("stale_shards") or []
    if stale:
        lines.append(
            f"index.parquet is older than {len(stale)} finished shard(s) (first: {stale[0]}) "
            "that it does not list: a later `las build` is running or was stopped; run it to "
            "the end to index them"
        )
    return lines


def _summary_json(result: InspectResult) -> dict[str, Any]:
    return {
        **result.summary,
        "legends": {
            key: [
                {"value": e.value, "name": e.name, "color": e.color, "special": e.special}
                for e in legend.entries
            ]
            for key, legend in result.legends.items()
        },
        "panels": {
            v.sample_id: {
                "zarr_index": v.zarr_index,
                "panels": [{"key": p.key, "path": p.path, "legend": p.legend} for p in v.panels],
            }
            for v in result.samples
        },
        "figures": {k: p.relative_to(result.out).as_posix() for k, p in result.figures.items()},
        "confusion": [
            {"rows": c.rows, "columns": c.columns, "agreement": c.agreement}
            for c in result.confusion
        ],
    }
