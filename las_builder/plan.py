"""The sample plan: where each sample of a dataset lies, chosen before any pixel is read.

:func:`make_plan` turns a :class:`~las_builder.recipe.Recipe` into a GeoDataFrame of samples:

1. **Frame.** Every item of ``sampling.frame.collection`` is fetched from the recipe's STAC API
   (all pages); the union of their footprints is the frame. A sample lies fully inside it.
2. **Candidates.** Candidate centres are the centres of the cells of the equal-area grid of
   :mod:`las_builder.geobox` (Major TOM style, cell size ``sample.spacing``), so two samples
   never share a cell and never overlap, and land is covered evenly. Cells whose centre lies
   in the frame are visited in a seeded random order (for a frame too large to list its cells,
   cells are drawn at random, uniformly by area); a cell is a candidate when its sample's whole
   footprint lies in the frame. Visiting stops once ``pool_factor * count`` candidates are
   found.
3. **Strata.** With ``sampling.stratify``, the class at each candidate's centre is read from
   the covering item's asset of that collection (a point read of the COG over HTTP; where
   items of several years overlap, the latest one starting before ``time.end``). Candidates
   on nodata are dropped.
4. **Allocation.** Samples are allocated equally across classes: round-robin over the classes
   in ascending order, each class's candidates in a seeded shuffle; a class that runs out
   drops out of the rotation. Without stratification all candidates form one stratum.
   With fewer candidates than ``sample.count``, every candidate is planned, a warning is
   logged and the plan's ``attrs["plan_note"]`` says so.

The same recipe and seed give the same plan. Columns of the plan are listed in
:data:`PLAN_COLUMNS`; rows follow a Hilbert curve over longitude and latitude
(:func:`hilbert_order`), so that each shard's samples lie close together; ``plan_index`` is
the row number and ``shard`` is ``plan_index // samples_per_shard``.
``sample_geobox(lon, lat, size_px, resolution_m)`` of a row gives back its exact pixel grid.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import posixpath
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import geopandas as gpd
import numpy as np
import shapely
from fsspec.implementations.local import LocalFileSystem
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from las_builder.geobox import (
    EARTH_RADIUS_M,
    cell_at,
    geobox_footprint,
    grid_rows,
    row_columns,
    sample_geobox,
    sample_id,
)
from las_builder.recipe import Recipe
from las_builder.security import (
    HrefRefused,
    check_href,
    install_log_redaction,
    open_asset,
    redact,
    register_secret,
)
from las_builder.stac.item import ItemParseError, SceneItem, parse_item
from las_builder.stac.signing import SigningError, make_signer

__all__ = [
    "PLAN_COLUMNS",
    "PLAN_FILE",
    "PlanError",
    "hilbert_order",
    "make_plan",
    "plan_path",
    "prepare_plan_target",
    "write_plan",
]

log = logging.getLogger(__name__)

PLAN_FILE = "plan.parquet"
"""Name of the plan file in the recipe's output folder."""
PLAN_COLUMNS = (
    "sample_id",
    "lon",
    "lat",
    "geometry",
    "epsg",
    "transform",
    "shape",
    "resolution_m",
    "stratum",
    "shard",
    "plan_index",
)
"""Columns of a plan, in order."""
POOL_FACTOR = 10
"""Default number of candidates looked at per planned sample (the stratification pool)."""
ENUMERATE_LIMIT = 2_000_000
"""Frames with at most this many grid cells in their bounding boxes have every cell listed;
larger frames get cells drawn at random (uniform by area)."""
SEARCH_PAGE = 500
"""Items per STAC search page."""
_BATCH = 256  # candidates checked (and stratum-read) per batch
_MAX_BBOX_SEARCHES = 32  # a frame of more pieces has its stratify items fetched in one search


class PlanError(RuntimeError):
    """A plan cannot be made: the STAC API fails, or the frame is empty or unreadable."""


ProgressFn = Callable[[str], None]
"""Receives one short status line at each step of :func:`make_plan`."""


# --------------------------------------------------------------------------- STAC


def _client(recipe: Recipe) -> Any:
    from pystac_client import Client

    try:
        return Client.open(recipe.stac.url)
    except Exception as err:  # pystac-client raises many kinds
        raise PlanError(
            f"cannot open the STAC API {redact(recipe.stac.url)}: {redact(str(err))}"
        ) from None


def _search_items(
    client: Any,
    collection: str,
    bbox: tuple[float, float, float, float] | None = None,
) -> list[SceneItem]:
    """All items of a collection (optionally in a bbox), every page, parsed."""
    kwargs: dict[str, Any] = {"collections": [collection], "limit": SEARCH_PAGE}
    if bbox is not None:
        kwargs["bbox"] = list(bbox)
    try:
        raw = list(client.search(**kwargs).items_as_dicts())
    except Exception as err:
        raise PlanError(f"STAC search of collection {collection!r} failed: {err}") from None
    seen: set[str] = set()
    items = []
    for data in raw:
        try:
            item = parse_item(data)
        except ItemParseError as err:
            raise PlanError(f"collection {collection!r}: {err}") from None
        if item.id not in seen:
            seen.add(item.id)
            items.append(item)
    return items


def _frame(client: Any, collection: str) -> BaseGeometry:
    items = _search_items(client, collection)
    shapes = [fp for item in items if (fp := item.footprint()) is not None and not fp.is_empty]
    if not shapes:
        raise PlanError(
            f"the frame collection {collection!r} has no items with a footprint at this STAC API"
        )
    frame = unary_union([shapely.make_valid(s) for s in shapes])
    shapely.prepare(frame)
    return frame


def _signer(recipe: Recipe) -> Callable[[str, str], str]:
    """A function ``(href, collection) -> readable href`` for the recipe's signing mode."""
    return make_signer(recipe.stac.sign)


# --------------------------------------------------------------------------- candidates


@dataclass
class _Candidate:
    row: int
    col: int
    lon: float
    lat: float
    geobox: GeoBox
    footprint: BaseGeometry
    stratum: int | None = None


def _pieces(frame: BaseGeometry) -> list[BaseGeometry]:
    return [g for g in getattr(frame, "geoms", [frame]) if g.area > 0]


def _row_range(south: float, north: float, spacing_m: float) -> range:
    dlat, first, last = grid_rows(spacing_m)
    lo = max(first, math.floor(south / dlat))
    hi = min(last, math.floor(north / dlat))
    return range(lo, hi + 1)


def _estimate_cells(frame: BaseGeometry, spacing_m: float) -> float:
    """Number of grid cells in the bounding boxes of the frame's pieces."""
    total = 0.0
    for piece in _pieces(frame):
        west, south, east, north = piece.bounds
        band = abs(math.sin(math.radians(north)) - math.sin(math.radians(south)))
        area = EARTH_RADIUS_M**2 * math.radians(east - west) * band
        total += area / spacing_m**2 + (north - south) / 180 * math.pi * EARTH_RADIUS_M / spacing_m
    return total


def _listed_cells(frame: BaseGeometry, spacing_m: float, seed: int) -> Iterator[tuple[int, int]]:
    """Every cell whose centre lies in the frame, in a seeded random order."""
    rows_out: list[np.ndarray] = []
    cols_out: list[np.ndarray] = []
    dlat, _, _ = grid_rows(spacing_m)
    for piece in _pieces(frame):
        west, south, east, north = piece.bounds
        shapely.prepare(piece)
        for row in _row_range(south, north, spacing_m):
            lat = (row + 0.5) * dlat
            if not south <= lat <= north:
                continue
            dlon, first, last = row_columns(row, spacing_m)
            cols = np.arange(math.floor(west / dlon), math.floor(east / dlon) + 1)
            lons = ((cols + 0.5) * dlon + 180.0) % 360.0 - 180.0
            inside = shapely.contains_xy(piece, lons, np.full(lons.shape, lat))
            cols = cols[inside]
            n = last - first + 1
            cols = (cols - first) % n + first
            rows_out.append(np.full(cols.shape, row))
            cols_out.append(cols)
    if not rows_out:
        return
    pairs = np.unique(np.column_stack([np.concatenate(rows_out), np.concatenate(cols_out)]), axis=0)
    order = np.random.default_rng(seed).permutation(len(pairs))
    for i in order:
        yield int(pairs[i, 0]), int(pairs[i, 1])


def _drawn_cells(
    frame: BaseGeometry, spacing_m: float, seed: int, limit: int
) -> Iterator[tuple[int, int]]:
    """Cells drawn at random, uniformly by area, whose centre lies in the frame.

    Drawing ends after ``limit`` draws in a row bring no new cell, or sooner once the frame's
    cells are surely all drawn: a large sample count must not keep a small frame drawing on.
    """
    rng = np.random.default_rng(seed)
    pieces = _pieces(frame)
    bounds = np.array([p.bounds for p in pieces])
    sin_s, sin_n = np.sin(np.radians(bounds[:, 1])), np.sin(np.radians(bounds[:, 3]))
    weights = (bounds[:, 2] - bounds[:, 0]) * (sin_n - sin_s)
    weights = weights / weights.sum()
    areas = np.radians(bounds[:, 2] - bounds[:, 0]) * (sin_n - sin_s)  # steradians
    # A draw lands in a given cell about once per `cells` draws (a piece smaller than a cell
    # counts as one), so 100 times that many misses in a row leave a cell unseen with odds of
    # about e^-100.
    cells = float(areas.sum() / min((spacing_m / EARTH_RADIUS_M) ** 2, float(areas.min())))
    limit = min(limit, 100 * math.ceil(cells))
    dlat, first_row, last_row = grid_rows(spacing_m)
    seen: set[tuple[int, int]] = set()
    misses = 0
    while misses < limit:
        which = rng.choice(len(pieces), size=4096, p=weights)
        u = rng.random(4096)
        lat = np.degrees(np.arcsin(sin_s[which] + u * (sin_n[which] - sin_s[which])))
        lon = bounds[which, 0] + rng.random(4096) * (bounds[which, 2] - bounds[which, 0])
        rows = np.clip(np.floor(lat / dlat).astype(int), first_row, last_row)
        new = 0
        for row, x in zip(rows.tolist(), lon.tolist(), strict=True):
            dlon, _, _ = row_columns(row, spacing_m)
            cell = cell_at(row, math.floor(x / dlon), spacing_m)
            key = (cell.row, cell.col)
            if key in seen:
                continue
            seen.add(key)
            if frame.contains(shapely.Point(*cell.centre)):
                new += 1
                yield key
        misses = misses + 4096 if new == 0 else 0


def _candidate(row: int, col: int, recipe: Recipe, frame: BaseGeometry) -> _Candidate | None:
    cell = cell_at(row, col, recipe.sample.spacing)
    lon, lat = cell.centre
    geobox = sample_geobox(lon, lat, recipe.sample.size_px, recipe.sample.resolution_m)
    footprint = geobox_footprint(geobox)
    if not frame.covers(footprint):
        return None
    return _Candidate(cell.row, cell.col, lon, lat, geobox, footprint)


# --------------------------------------------------------------------------- strata


def _start_time(item: SceneItem) -> datetime:
    return item.start_datetime or item.datetime or datetime.min.replace(tzinfo=UTC)


class _StratumReader:
    """Point reads of the class at candidate centres from a categorical collection."""

    def __init__(self, recipe: Recipe, client: Any, frame: BaseGeometry) -> None:
        spec = recipe.sampling.stratify
        assert spec is not None
        self.collection = spec.collection
        self.asset = spec.asset
        self.sign = _signer(recipe)
        pieces = _pieces(frame)
        boxes = [p.bounds for p in pieces] if len(pieces) <= _MAX_BBOX_SEARCHES else [None]
        items: dict[str, SceneItem] = {}
        for bbox in boxes:
            for item in _search_items(client, spec.collection, bbox):
                if spec.asset in item.assets and item.footprint() is not None:
                    items.setdefault(item.id, item)
        if not items:
            raise PlanError(
                f"the stratify collection {spec.collection!r} has no items with asset "
                f"{spec.asset!r} over the frame"
            )
        end = datetime.combine(recipe.time.end, datetime.max.time(), tzinfo=UTC)
        # Preferred first: started by the end of the window, latest first; then the rest,
        # earliest first; ties by id.
        self.items = sorted(
            items.values(),
            key=lambda it: (
                _start_time(it) > end,
                -_start_time(it).timestamp() if _start_time(it) <= end else 0,
                _start_time(it).timestamp(),
                it.id,
            ),
        )
        self.tree = shapely.STRtree([it.footprint() for it in self.items])
        self._datasets: dict[str, Any] = {}
        self._env: Any = None

    def __enter__(self) -> _StratumReader:
        import rasterio

        self._env = rasterio.Env(
            GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_HTTP_MAX_RETRY=3, GDAL_HTTP_RETRY_DELAY=1
        )
        self._env.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for ds in self._datasets.values():
            ds.close()
        self._datasets.clear()
        if self._env is not None:
            self._env.__exit__(*exc)

    def _open(self, item: SceneItem) -> Any:

        if item.id not in self._datasets:
            try:
                href = self.sign(item.assets[self.asset].href, self.collection)
            except SigningError as err:
                raise PlanError(str(err)) from None
            if href != item.assets[self.asset].href and "?" in href:
                register_secret(href.split("?", 1)[1])  # a signing token: never shown
            try:
                target = check_href(href)  # http(s), s3, or files under the allowed roots
            except HrefRefused as err:
                raise PlanError(
                    f"asset {self.asset!r} of {self.collection} item {item.id} refused: {err}"
                ) from None
            try:
                # Single-file formats only: a VRT would make GDAL read the files it names.
                self._datasets[item.id] = open_asset(target)
            except Exception as err:
                raise PlanError(
                    f"cannot read asset {self.asset!r} of {self.collection} item {item.id}: "
                    f"{redact(str(err))}"
                ) from None
        return self._datasets[item.id]

    def read(self, candidates: list[_Candidate]) -> None:
        """Set ``stratum`` of each candidate (``None`` where nodata or uncovered)."""
        points = shapely.points([c.lon for c in candidates], [c.lat for c in candidates])
        hits = self.tree.query(points, predicate="intersects")
        best: dict[int, int] = {}
        for cand_i, item_i in zip(hits[0].tolist(), hits[1].tolist(), strict=True):
            if cand_i not in best or item_i < best[cand_i]:
                best[cand_i] = item_i
        by_item: dict[int, list[int]] = defaultdict(list)
        for cand_i, item_i in best.items():
            by_item[item_i].append(cand_i)
        for item_i, members in sorted(by_item.items()):
            item = self.items[item_i]
            ds = self._open(item)
            nodata = {c.value for c in item.assets[self.asset].classes if c.nodata}
            if ds.nodata is not None and not math.isnan(ds.nodata):
                nodata.add(int(ds.nodata))
            to_ds = Transformer.from_crs(4326, ds.crs, always_xy=True)
            xs, ys = to_ds.transform(
                [candidates[i].lon for i in members], [candidates[i].lat for i in members]
            )
            left, bottom, right, top = ds.bounds
            for i, x, y in zip(members, np.atleast_1d(xs), np.atleast_1d(ys), strict=True):
                if not (min(left, right) <= x <= max(left, right) and bottom <= y <= top):
                    continue
                value = int(next(ds.sample([(float(x), float(y))], indexes=1))[0])
                candidates[i].stratum = None if value in nodata else value


# --------------------------------------------------------------------------- overlaps


class _Placed:
    """Samples chosen so far, hashed on the unit sphere for overlap checks."""

    def __init__(self, edge_m: float) -> None:
        self.reach = edge_m * math.sqrt(2)  # centres closer than this may overlap
        self.bucket = self.reach / EARTH_RADIUS_M
        self.grid: dict[tuple[int, int, int], list[_Candidate]] = defaultdict(list)

    def _xyz(self, c: _Candidate) -> np.ndarray:
        lon, lat = math.radians(c.lon), math.radians(c.lat)
        return np.array(
            [math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)]
        )

    def _key(self, xyz: np.ndarray) -> tuple[int, int, int]:
        k = np.floor(xyz / self.bucket).astype(int)
        return int(k[0]), int(k[1]), int(k[2])

    def overlaps(self, cand: _Candidate) -> bool:
        xyz = self._xyz(cand)
        kx, ky, kz = self._key(xyz)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dz in (-1, 0, 1):
                    for other in self.grid.get((kx + dx, ky + dy, kz + dz), ()):
                        dist = float(np.linalg.norm(self._xyz(other) - xyz)) * EARTH_RADIUS_M
                        if dist < self.reach and _boxes_overlap(cand.geobox, other.geobox):
                            return True
        return False

    def add(self, cand: _Candidate) -> None:
        self.grid[self._key(self._xyz(cand))].append(cand)


@functools.lru_cache(maxsize=64)
def _transformer(src: int | str, dst: int | str) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def _boxes_overlap(a: GeoBox, b: GeoBox) -> bool:
    """Whether two GeoBoxes share area (touching edges do not count)."""
    if a.crs == b.crs:
        ax0, ay0, ax1, ay1 = a.extent.boundingbox
        bx0, by0, bx1, by1 = b.extent.boundingbox
        return min(ax1, bx1) > max(ax0, bx0) and min(ay1, by1) > max(ay0, by0)
    # Sample geoboxes always carry their UTM CRS (odc-geo types ``GeoBox.crs`` as optional).
    assert a.crs is not None and b.crs is not None
    to_a = _transformer(b.crs.epsg or b.crs.to_wkt(), a.crs.epsg or a.crs.to_wkt())
    edge = shapely.segmentize(b.extent.geom, abs(b.resolution.x))
    other = shapely.transform(edge, lambda xy: np.column_stack(to_a.transform(xy[:, 0], xy[:, 1])))
    return bool(a.extent.geom.intersection(other).area > 1e-6 * a.extent.geom.area)


# --------------------------------------------------------------------------- allocation


def _allocate(pool: list[_Candidate], count: int, edge_m: float) -> list[_Candidate]:
    """Round-robin over strata, each stratum's candidates in the order they were found.

    The pool comes in the cells' seeded random order, and a larger count only looks further
    along it: so each stratum's queue for a smaller count is the start of its queue for a
    larger one, and a plan of N samples is the first N of a plan of more (unless a stratum
    runs out of candidates sooner in the smaller pool). A shuffle of each stratum's members
    (until 2026-12-08) mixed them anew for each pool size: a plan of 50 shared 2 of 25
    samples with one of 25 over the same frame.
    """
    strata: dict[int, list[_Candidate]] = defaultdict(list)
    for cand in pool:
        strata[cand.stratum if cand.stratum is not None else -1].append(cand)
    queues: dict[int, Iterator[_Candidate]] = {
        value: iter(strata[value]) for value in sorted(strata)
    }
    placed = _Placed(edge_m)
    chosen: list[_Candidate] = []
    while queues and len(chosen) < count:
        for value in list(queues):
            if len(chosen) >= count:
                break
            for cand in queues[value]:
                if not placed.overlaps(cand):
                    placed.add(cand)
                    chosen.append(cand)
                    break
            else:
                del queues[value]
    return chosen


# --------------------------------------------------------------------------- the plan


@dataclass
class _Stats:
    cells: int = 0
    candidates: int = 0
    nodata: int = 0
    per_stratum: dict[int, int] = field(default_factory=dict)


def _gather(
    recipe: Recipe,
    frame: BaseGeometry,
    cells: Iterable[tuple[int, int]],
    reader: _StratumReader | None,
    target: int,
    stats: _Stats,
    progress: ProgressFn,
) -> list[_Candidate]:
    pool: list[_Candidate] = []
    batch: list[_Candidate] = []

    def flush() -> None:
        if reader is not None and batch:
            reader.read(batch)
            kept = [c for c in batch if c.stratum is not None]
            stats.nodata += len(batch) - len(kept)
            pool.extend(kept)
        else:
            pool.extend(batch)
        batch.clear()
        progress(f"{len(pool)} candidates from {stats.cells} grid cells")

    for row, col in cells:
        stats.cells += 1
        cand = _candidate(row, col, recipe, frame)
        if cand is not None:
            batch.append(cand)
        if len(batch) >= _BATCH:
            flush()
            if len(pool) >= target:
                break
    flush()
    return pool


def make_plan(
    recipe: Recipe,
    *,
    progress: ProgressFn | None = None,
    pool_factor: int = POOL_FACTOR,
) -> gpd.GeoDataFrame:
    """Plan the samples of a recipe.

    Args:
        recipe: The recipe; its STAC API must answer.
        progress: Called with a short status line at each step.
        pool_factor: Candidates looked at per planned sample (more: better balanced strata,
            slower planning of large frames).

    Returns:
        The plan, one row per sample (columns :data:`PLAN_COLUMNS`, CRS EPSG:4326). ``attrs``
        holds ``recipe`` (name), ``spacing_m``, ``candidates`` (candidates found),
        ``candidates_per_stratum`` ({class: count}), ``grid_cells`` (cells visited),
        ``nodata_candidates`` (dropped for a nodata stratum) and ``plan_note`` (a warning, or
        ``""``).

    Raises:
        PlanError: The STAC API cannot be searched, the frame is empty, no sample fits in it,
            or a stratify asset cannot be read.

    """
    install_log_redaction()  # tokens and keys never reach a log record
    report: ProgressFn = progress or (lambda _msg: None)
    spec = recipe.sample
    client = _client(recipe)

    report(f"fetching the frame ({recipe.sampling.frame.collection})")
    frame = _frame(client, recipe.sampling.frame.collection)

    target = max(spec.count * pool_factor, spec.count)
    if _estimate_cells(frame, spec.spacing) <= ENUMERATE_LIMIT:
        cells: Iterable[tuple[int, int]] = _listed_cells(frame, spec.spacing, spec.seed)
    else:
        cells = _drawn_cells(frame, spec.spacing, spec.seed, limit=100 * target)

    stats = _Stats()
    reader = None
    if recipe.sampling.stratify is not None:
        report(f"finding {recipe.sampling.stratify.collection} items over the frame")
        reader = _StratumReader(recipe, client, frame)
    if reader is not None:
        with reader:
            pool = _gather(recipe, frame, cells, reader, target, stats, report)
    else:
        pool = _gather(recipe, frame, cells, None, target, stats, report)
    stats.candidates = len(pool)
    for cand in pool:
        key = cand.stratum if cand.stratum is not None else -1
        stats.per_stratum[key] = stats.per_stratum.get(key, 0) + 1

    report(f"allocating {spec.count} samples over {len(stats.per_stratum)} strata")
    chosen = _allocate(pool, spec.count, spec.edge_m)
    if not chosen:
        raise PlanError(
            f"no sample of {spec.size_px} px x {spec.resolution_m:g} m fits in the frame "
            f"({recipe.sampling.frame.collection}) at spacing {spec.spacing:g} m: nothing to plan; "
            "use smaller samples (sample.size_px) or a frame whose items are larger"
        )
    note = ""
    if len(chosen) < spec.count:
        note = (
            f"only {len(chosen)} of the {spec.count} requested samples fit in the frame "
            f"({recipe.sampling.frame.collection}) at spacing {spec.spacing:g} m: "
            "all candidates are planned"
        )
        log.warning(note)

    gdf = _to_frame(recipe, chosen)
    gdf.attrs.update(
        recipe=recipe.name,
        spacing_m=spec.spacing,
        candidates=stats.candidates,
        candidates_per_stratum={int(k): v for k, v in sorted(stats.per_stratum.items())},
        grid_cells=stats.cells,
        nodata_candidates=stats.nodata,
        plan_note=note,
    )
    return gdf


_HILBERT_BITS = 16  # a 65,536 x 65,536 lattice over lon/lat: cells of ~600 m at the equator


def hilbert_order(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Position of each point along a Hilbert curve over the lon/lat plane.

    Sorting samples by it makes each run of consecutive samples (a shard) a compact patch:
    in a global plan of 150,000 samples, 64 consecutive ones in grid-row order span the whole
    world (one ESA WorldCover tile per sample, ~49 per shard), along the curve ~7 degrees of
    longitude (~6 tiles), so a shard's samples share scenes, label tiles, open files and
    searches.

    Args:
        lon: Longitudes in degrees, [-180, 180].
        lat: Latitudes in degrees, [-90, 90].

    Returns:
        int64 curve positions (equal only for points in the same lattice cell).
    """
    side = (1 << _HILBERT_BITS) - 1
    x = np.clip(np.floor((np.asarray(lon, float) + 180.0) / 360.0 * side), 0, side)
    y = np.clip(np.floor((np.asarray(lat, float) + 90.0) / 180.0 * side), 0, side)
    return _hilbert_d(x.astype(np.int64), y.astype(np.int64), _HILBERT_BITS)


def _hilbert_d(x: np.ndarray, y: np.ndarray, bits: int) -> np.ndarray:
    """Distance along the Hilbert curve of a ``2**bits`` square lattice of cells ``(x, y)``."""
    side = (1 << bits) - 1
    d = np.zeros_like(x)
    s = 1 << (bits - 1)
    while s > 0:  # one bit of each coordinate per step, rotating the quadrant as it goes
        rx, ry = (x & s) > 0, (y & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        turn = ~ry
        flip = turn & rx
        x = np.where(flip, side - x, x)
        y = np.where(flip, side - y, y)
        x, y = np.where(turn, y, x), np.where(turn, x, y)
        s >>= 1
    return d


def _to_frame(recipe: Recipe, chosen: list[_Candidate]) -> gpd.GeoDataFrame:
    spec = recipe.sample
    # Along a Hilbert curve, so that each shard is a compact patch (see hilbert_order); the
    # grid cell breaks ties between samples in one lattice cell.
    curve = hilbert_order(
        np.array([c.lon for c in chosen], float), np.array([c.lat for c in chosen], float)
    )
    order = sorted(range(len(chosen)), key=lambda i: (int(curve[i]), -chosen[i].row, chosen[i].col))
    chosen = [chosen[i] for i in order]
    stratified = recipe.sampling.stratify is not None
    records = []
    for index, cand in enumerate(chosen):
        t = cand.geobox.transform
        # Sample geoboxes are always in a UTM zone, which has an EPSG code.
        epsg = cand.geobox.crs.epsg if cand.geobox.crs is not None else None
        assert epsg is not None
        records.append(
            {
                "sample_id": sample_id(
                    cand.lon,
                    cand.lat,
                    spec.spacing,
                    resolution_m=spec.resolution_m,
                    size_px=spec.size_px,
                ),
                "lon": cand.lon,
                "lat": cand.lat,
                "geometry": cand.footprint,
                "epsg": int(epsg),
                "transform": [float(v) for v in (t.a, t.b, t.c, t.d, t.e, t.f)],
                "shape": [int(v) for v in cand.geobox.shape.yx],
                "resolution_m": float(spec.resolution_m),
                "stratum": cand.stratum if stratified else None,
                "shard": index // recipe.output.samples_per_shard,
                "plan_index": index,
            }
        )
    if not records:
        records_frame = gpd.GeoDataFrame(
            {c: [] for c in PLAN_COLUMNS if c != "geometry"},
            geometry=gpd.GeoSeries([], crs=4326),
            crs=4326,
        )
        return records_frame[list(PLAN_COLUMNS)]
    gdf = gpd.GeoDataFrame(records, geometry="geometry", crs=4326)
    gdf["stratum"] = gdf["stratum"].astype("Int64")
    gdf["epsg"] = gdf["epsg"].astype("int32")
    gdf["shard"] = gdf["shard"].astype("int64")
    gdf["plan_index"] = gdf["plan_index"].astype("int64")
    return gdf[list(PLAN_COLUMNS)]


def plan_path(recipe: Recipe) -> str:
    """Where a recipe's plan goes: ``OUTPUT/plan.parquet`` (a local path or an fsspec URL)."""
    base = recipe.output.path
    if "://" in base:
        return posixpath.join(base.rstrip("/"), PLAN_FILE)
    return str(Path(base).expanduser() / PLAN_FILE)


def prepare_plan_target(path: str | Path) -> None:
    """Make the plan file's folder, or check that its bucket exists (object stores).

    On S3, s3fs's ``makedirs`` creates a bucket that does not exist: a typo in
    ``output.path`` would create a new bucket (on AWS, a real and billed one) instead of
    failing. A bucket is the user's to create.

    Raises:
        FileNotFoundError: The bucket does not exist or these credentials cannot see it.

    """
    fs, fs_path = fsspec.core.url_to_fs(str(path))
    parent = posixpath.dirname(fs_path.rstrip("/"))
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        if parent:
            fs.makedirs(parent, exist_ok=True)
        return
    bucket = fs_path.split("/", 1)[0]
    if not fs.exists(bucket):
        raise FileNotFoundError(
            f"no bucket {bucket!r} at {protocols[0]}:// (or these credentials cannot see it): "
            "create it first, or correct output.path"
        )


def write_plan(gdf: gpd.GeoDataFrame, path: str | Path) -> str:
    """Write a plan as GeoParquet.

    Args:
        gdf: A plan from :func:`make_plan`.
        path: The file to write: a local path or an fsspec URL (``s3://...``); local parent
            folders are created, a bucket must exist (:func:`prepare_plan_target`).

    Returns:
        The path written, as a string.

    """
    target = str(path)
    prepare_plan_target(target)
    fs, fs_path = fsspec.core.url_to_fs(target)
    if not isinstance(fs, LocalFileSystem):
        with fs.open(fs_path, "wb") as out:  # an object appears whole, once written
            gdf.to_parquet(out, index=False)
        return target
    # Written beside and renamed: a plan killed half-written (Ctrl-C, a full disk) would
    # otherwise leave a truncated plan.parquet in place of the previous one.
    partial = f"{fs_path}.partial"
    try:
        with open(partial, "wb") as out:
            gdf.to_parquet(out, index=False)
        os.replace(partial, fs_path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target
