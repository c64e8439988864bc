"""Build one sample: choose scenes, read windows onto its GeoBox, map labels into LAS."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.warp import Resampling
from shapely.geometry.base import BaseGeometry

from las_builder.build.config import BuildConfig, LabelSpec
from las_builder.build.read import (
    DatasetCache,
    ReadError,
    background,
    read_onto,
    read_stack_onto,
)
from las_builder.catalog import LAS_IGNORE, LAS_NODATA, UnknownCodeError, load_mapping
from las_builder.catalog.labels import load_label_product
from las_builder.consensus import agreement_fraction, consensus
from las_builder.imagery import (
    S2_BANDS,
    asset_key,
    harmonize_s2,
    s1_to_units,
    s2_nodata,
    sensor,
)
from las_builder.stac import SceneItem

log = logging.getLogger(__name__)

SCL_CLOUD = (3, 8, 9, 10)  # cloud shadow, cloud medium/high probability, thin cirrus
SCL_SNOW = 11  # ranked against (it hides the land cover), never skipped for (glaciers)


class SampleSkipped(Exception):  # noqa: N818 - a skip is an outcome, not an error
    """The sample cannot be built; the message is the reason recorded in the index."""


@dataclass
class SampleOutcome:
    """The arrays and index fields of one sample (no arrays when skipped)."""

    status: str
    reason: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def _covering(items: list[SceneItem], footprint: BaseGeometry) -> list[SceneItem]:
    return [it for it in items if (fp := it.footprint()) is not None and fp.intersects(footprint)]


def _iso(when: dt.datetime | None) -> str | None:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


@dataclass
class _S2Candidate:
    item: SceneItem
    scl: np.ndarray
    cloud_pct: float
    nodata_frac: float
    snow_pct: float = 0.0

    @property
    def perfect(self) -> bool:
        return self.cloud_pct == 0 and self.nodata_frac == 0 and self.snow_pct == 0

    @property
    def rank(self) -> tuple[float, float, float, float, str]:
        # Least hidden over the sample itself (cloud, snow, no data), then least cloudy there,
        # least empty, least cloudy scene-wide (eo:cloud_cover); the id breaks ties stably.
        # Snow hides the land cover the annual label products map beneath it, as cloud does;
        # where it lies all year (a glacier) cloud over it hides as much, and less cloud wins.
        hidden = round(self.cloud_pct + self.snow_pct + 100 * self.nodata_frac, 6)
        cloud = round(self.cloud_pct, 6)
        return (hidden, cloud, self.nodata_frac, _scene_cloud(self.item), self.item.id)


def _scene_cloud(item: SceneItem) -> float:
    return item.cloud_cover if item.cloud_cover is not None else 100.0


def _rank_s2(
    items: list[SceneItem], geobox: GeoBox, cache: DatasetCache, *, all_scenes: bool = False
) -> list[_S2Candidate]:
    """Sentinel-2 scenes ranked by cloud and snow (from their SCL) over the sample's footprint.

    Scenes are examined from the least cloudy scene-wide; unless ``all_scenes``, the first
    that is clear, snow-free and complete over the sample ends the search, since no later scene can
    outrank it. That saves reading the SCL of every candidate (most samples stop at one).
    """
    ranked = []
    for item in sorted(items, key=lambda it: (_scene_cloud(it), it.id)):
        with cache.assets(item, asset_key(item, "sentinel-2-l2a", "SCL")) as (ds,):
            scl = read_onto(ds, geobox, nodata=0)[0]
        valid = scl > 0
        nodata_frac = 1.0 - float(valid.mean())
        cloud_pct = 100.0 * float(np.isin(scl, SCL_CLOUD)[valid].mean()) if valid.any() else 100.0
        snow_pct = 100.0 * float((scl == SCL_SNOW)[valid].mean()) if valid.any() else 0.0
        ranked.append(_S2Candidate(item, scl, cloud_pct, nodata_frac, snow_pct))
        if ranked[-1].perfect and not all_scenes:
            break
    return sorted(ranked, key=lambda c: c.rank)


def _read_s2(item: SceneItem, geobox: GeoBox, cache: DatasetCache) -> np.ndarray:
    keys = [asset_key(item, "sentinel-2-l2a", name) for name in S2_BANDS]
    with cache.assets(item, *keys) as datasets:
        stack = read_stack_onto(
            datasets,
            geobox,
            resampling=Resampling.bilinear,
            nodata=0,
            src_nodata=sensor("sentinel-2-l2a")["nodata"],
        )
    return harmonize_s2(stack, item)


def median_composite(stacks: list[np.ndarray], scls: list[np.ndarray]) -> np.ndarray:
    """Per-pixel median over the clear observations (SCL not cloud and not nodata).

    Pixels without any clear observation take the first (clearest-ranked) scene's value.
    """
    data = np.stack(stacks).astype(np.float32)  # (k, bands, h, w)
    clear = np.stack([(s > 0) & ~np.isin(s, SCL_CLOUD) for s in scls])  # (k, h, w)
    masked = np.where(clear[:, None], data, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels are handled below
        median = np.nanmedian(masked, axis=0)
    median = np.where(np.isnan(median), data[0], median)
    return np.round(median).astype(np.uint16)


_catalog: dict[tuple[str, str, str], Any] = {}
_catalog_lock = threading.Lock()


def _from_catalog(run_id: str, kind: str, product: str) -> Any:
    """A product's legend (``kind="legend"``) or LAS mapping, read once per build.

    The catalog loaders check their files on every call (path resolution and a ``stat`` per
    file, each releasing the GIL to threads that keep it for long), which a build would pay
    per sample and product. Within one build (``run_id``) the catalog is taken as fixed;
    without a ``run_id`` (a sample built on its own) the loaders are asked each time.
    """
    load = load_label_product if kind == "legend" else load_mapping
    if not run_id:
        return load(product)
    key = (run_id, kind, product)
    found = _catalog.get(key)
    if found is None:
        with _catalog_lock:  # one load, not one per thread that asks at the start
            found = _catalog.get(key)
            if found is None:
                found = load(product)  # a CatalogError is raised, not kept
                for old in [k for k in _catalog if k[0] != run_id]:  # an earlier build's
                    del _catalog[old]
                _catalog[key] = found
    return found


def _read_labels(
    spec: LabelSpec,
    items: list[SceneItem],
    geobox: GeoBox,
    s2: SceneItem | None,
    cache: DatasetCache,
    run_id: str = "",
) -> tuple[np.ndarray, list[SceneItem]]:
    """Native codes of a product on the GeoBox, mosaicked over every tile of the chosen date."""
    legend = _from_catalog(run_id, "legend", spec.product)
    nodata = legend.fill  # its nodata, or a value no class uses (0 may be a class)
    if spec.year is not None:
        chosen = [it for it in items if (it.start_datetime or it.datetime).year == spec.year]
    elif s2 is not None:
        same = [it for it in items if it.properties.get("dynamicworld:s2_item") == s2.id]
        day = [it for it in items if it.datetime.date() == s2.datetime.date()]
        # Unlinked, the images of the scene's own time first (another overpass that day saw
        # other clouds), so the mosaic does not take a different acquisition by its id.
        day.sort(key=lambda it: (abs((it.datetime - s2.datetime).total_seconds()), it.id))
        chosen = same or day
    else:
        chosen = []
    out = np.full(geobox.shape.yx, nodata, dtype=legend.dtype)
    for item in chosen:
        with cache.assets(item, spec.asset) as (ds,):
            # In a type that holds both the file's codes and the legend's fill, never wrapped.
            wide = np.promote_types(ds.dtypes[0], legend.dtype)
            data = _legend_codes(read_onto(ds, geobox, nodata=nodata, dtype=str(wide))[0], legend)
        fill = out == nodata
        out[fill] = data[fill]
    return out, chosen


def _legend_codes(data: np.ndarray, legend: Any) -> np.ndarray:
    """``data`` in the legend's dtype, refusing values that dtype cannot hold.

    A file whose type is wider than its legend says (uint16 codes for a uint8 product) would
    otherwise wrap: code 266 would become 10, a valid class, and the label silently wrong.

    Raises:
        UnknownCodeError: ``data`` holds values outside the legend's dtype (so outside the
            legend), listed with their pixel counts.

    """
    dtype = np.dtype(legend.dtype)
    if data.dtype == dtype:
        return data
    cast = data.astype(dtype)
    wrapped = cast != data
    if wrapped.any():
        codes, counts = np.unique(data[wrapped], return_counts=True)
        raise UnknownCodeError(legend.id, dict(zip(codes.tolist(), counts.tolist(), strict=True)))
    return cast


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    """Pixels per LAS value present in ``labels`` (uint8), by the value as text.

    A histogram (``bincount``): ``np.unique`` sorts every pixel first, ~0.3 ms per 128 px
    layer, six layers per sample.
    """
    if labels.dtype != np.uint8:
        values, found = np.unique(labels, return_counts=True)
        return {str(int(v)): int(c) for v, c in zip(values, found, strict=True)}
    n = np.bincount(labels.ravel(), minlength=256)
    return {str(int(v)): int(n[v]) for v in np.flatnonzero(n)}


def harmonise_labels(
    natives: dict[str, np.ndarray],
    arrays: dict[str, np.ndarray],
    record: dict[str, Any],
    cfg: BuildConfig,
) -> None:
    """Map native label codes into LAS, vote the consensus and fill the index fields.

    Shared by every backend (STAC and Earth Engine) so labels are harmonised one way only.

    Raises:
        UnknownCodeError: A product's data holds a code outside its legend.
        SampleSkipped: The consensus has more nodata than the recipe allows.
    """
    gap = s2_nodata(arrays)
    if gap is not None:
        record["nodata_pct"] = round(100 * float(gap.mean()), 3)
        if gap.mean() > cfg.max_nodata:
            raise SampleSkipped(
                f"too much nodata: {record['nodata_pct']:.1f}% of the sample without "
                "Sentinel-2 data (SCL 0 or a band missing) in "
                f"{record.get('s2_item') or 'its scenes'} > {100 * cfg.max_nodata:.0f}%"
            )
    las_layers = []
    lumped = []
    counts: dict[str, dict[str, int]] = {}
    for product, native in natives.items():
        mapping = _from_catalog(cfg.run_id, "mapping", product)
        las = mapping.map(native)
        arrays[f"labels/{product}/native"] = native
        arrays[f"labels/{product}/las"] = las
        las_layers.append(las)
        lumped.append(mapping.also_masks(native))
        counts[product] = _class_counts(las)
    if las_layers:
        stack = np.stack(las_layers)
        cons, agree = consensus(stack, also=lumped)
        arrays["consensus"] = cons
        arrays["agreement"] = agree
        counts["consensus"] = _class_counts(cons)
        label_nodata = float((cons == LAS_NODATA).mean())
        if label_nodata > cfg.max_nodata:
            raise SampleSkipped(
                f"too much label nodata: {100 * label_nodata:.1f}% of the consensus "
                f"> {100 * cfg.max_nodata:.0f}%"
            )
        record["agreement"] = round(agreement_fraction(stack, cons, also=lumped), 6)
        record["ignore_pct"] = round(100 * float((cons == LAS_IGNORE).mean()), 3)
    record["class_counts"] = json.dumps(counts, sort_keys=True)
    record.setdefault("nodata_pct", 0.0)  # no Sentinel-2 in the recipe


def build_sample_earthengine(row: dict[str, Any], source: Any, cfg: BuildConfig) -> SampleOutcome:
    """Build one planned sample from Earth Engine (pixels come back on the sample grid)."""
    from las_builder.sources.earthengine import (
        EarthEngineAuthError,
        EarthEngineError,
        EarthEngineNoData,
    )

    geobox = GeoBox(tuple(row["shape"]), Affine(*row["transform"]), f"EPSG:{row['epsg']}")
    try:
        fetched = source.fetch(geobox)
        arrays = dict(fetched.arrays)
        record = {k: v for k, v in fetched.record.items() if k != "s2_scene_cloud_pct"}
        natives = {
            spec.product: arrays.pop(f"labels/{spec.product}/native")
            for spec in cfg.labels
            if f"labels/{spec.product}/native" in arrays
        }
        harmonise_labels(natives, arrays, record, cfg)
    except EarthEngineNoData as skip:
        return SampleOutcome("skipped", str(skip))
    except SampleSkipped as skip:
        return SampleOutcome("skipped", str(skip))
    except UnknownCodeError as err:
        return SampleOutcome("failed", str(err))
    except EarthEngineAuthError:
        raise  # the credentials', not the sample's: the shard stops (see _build_rows_earthengine)
    except EarthEngineError as err:
        return SampleOutcome("failed", f"EarthEngineError: {err}")
    return SampleOutcome("ok", "", arrays=arrays, record=record)


def _read_s1(
    items: list[SceneItem], geobox: GeoBox, cache: DatasetCache, cfg: BuildConfig
) -> tuple[SceneItem, np.ndarray] | None:
    """The first Sentinel-1 scene (in the given order) with VV and VH over the sample, in its units.

    Scenes of other polarisations (HH/HV, over ice) are passed over rather than failing the
    sample, and a pixel lacks data where either band does.
    """
    nodata = sensor("sentinel-1-rtc")["nodata"]
    for item in items:
        if not {"vv", "vh"} <= item.assets.keys():
            continue
        with cache.assets(item, "vv", "vh") as datasets:
            vv_vh = read_stack_onto(
                datasets,
                geobox,
                resampling=Resampling.bilinear,
                nodata=np.nan,
                dtype="float32",
                src_nodata=nodata,
            )
        if float(np.isnan(vv_vh).any(axis=0).mean()) <= cfg.max_nodata:
            return item, s1_to_units(vv_vh, cfg.s1_units)
    return None


def _read_naip(
    items: list[SceneItem],
    geobox: GeoBox,
    footprint: BaseGeometry,
    cache: DatasetCache,
    cfg: BuildConfig,
) -> tuple[SceneItem, np.ndarray] | None:
    """The first NAIP image that contains the sample, averaged onto its finer grid.

    An item is taken on its STAC footprint, then on its raster's own bounds: a footprint that
    claims more than the raster holds would give an image partly empty.
    """
    fine = geobox.zoom_out(1 / cfg.naip_factor)
    for item in items:
        if (outline := item.footprint()) is not None and outline.contains(footprint):
            with cache.assets(item, "image") as (ds,):
                if not _raster_covers(ds, fine):
                    log.warning(
                        "%s: its footprint contains the sample but its raster does not "
                        "(bounds %s); not used",
                        item.id,
                        tuple(round(v, 1) for v in ds.bounds),
                    )
                    continue
                image = read_onto(ds, fine, resampling=Resampling.average, nodata=0, dtype="uint8")
            return item, image
    return None


def _raster_covers(ds: Any, geobox: GeoBox) -> bool:
    """Whether the raster's own bounds hold the GeoBox (within half a source pixel)."""
    from rasterio.warp import transform_bounds

    left, bottom, right, top = ds.bounds
    x0, y0, x1, y1 = transform_bounds(str(geobox.crs), ds.crs, *geobox.boundingbox)
    slack = abs(ds.transform.a) / 2
    return bool(
        x0 >= left - slack and x1 <= right + slack and y0 >= bottom - slack and y1 <= top + slack
    )


def build_sample(
    row: dict[str, Any],
    items: dict[str, list[SceneItem]],
    cfg: BuildConfig,
    cache: DatasetCache,
) -> SampleOutcome:
    """Build one planned sample.

    Sources that do not depend on the choice of the Sentinel-2 scene (NAIP, label products of
    a fixed year) are read while that choice is made; the others (the chosen scene's bands,
    Sentinel-1 matched to its date, Dynamic World of its day) once it is made. Results are
    taken in source order, so the outcome (and the first error) is that of a sequential build.

    Args:
        row: The sample's plan row (sample_id, geometry, epsg, transform, shape, ...).
        items: Items found for the sample's shard, by collection id.
        cfg: The build configuration.
        cache: Open datasets of the shard.

    Returns:
        The outcome: ``ok`` with arrays, or ``skipped``/``failed`` with the reason.
    """
    geobox = GeoBox(tuple(row["shape"]), Affine(*row["transform"]), f"EPSG:{row['epsg']}")
    footprint: BaseGeometry = row["geometry"]
    record: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    try:
        with background() as start:
            naip = None
            if cfg.naip_collection:
                naip_items = _covering(items.get(cfg.naip_collection, []), footprint)
                naip = start(lambda: _read_naip(naip_items, geobox, footprint, cache, cfg))
            labels: dict[str, Future[tuple[np.ndarray, list[SceneItem]]]] = {}

            def start_labels(spec: LabelSpec, s2: SceneItem | None) -> None:
                covering = _covering(items.get(spec.collection, []), footprint)
                labels[spec.product] = start(
                    lambda: _read_labels(spec, covering, geobox, s2, cache, cfg.run_id)
                )

            for spec in cfg.labels:
                if spec.year is not None:
                    start_labels(spec, None)
            s2_item = None
            s2_bands = None
            if cfg.s2_collection:
                candidates = [
                    it
                    for it in _covering(items.get(cfg.s2_collection, []), footprint)
                    if cfg.start <= it.datetime <= cfg.end
                ]
                if not candidates:
                    raise SampleSkipped(
                        f"no {cfg.s2_collection} scene between {cfg.start:%Y-%m-%d} "
                        f"and {cfg.end:%Y-%m-%d}"
                    )
                ranked = _rank_s2(candidates, geobox, cache, all_scenes=cfg.composite == "median")
                best = ranked[0]
                s2_item, scl, cloud_pct, nodata_frac = (
                    best.item,
                    best.scl,
                    best.cloud_pct,
                    best.nodata_frac,
                )
                if nodata_frac > cfg.max_nodata:
                    raise SampleSkipped(
                        f"too much nodata: {100 * nodata_frac:.1f}% of the best Sentinel-2 "
                        f"scene {s2_item.id} > {100 * cfg.max_nodata:.0f}%"
                    )
                if cfg.composite == "median":
                    # The k clearest scenes that cover the sample; cloud is what none saw clearly.
                    used = [c for c in ranked if c.nodata_frac <= cfg.max_nodata][: cfg.composite_k]
                    stacks = [_read_s2(c.item, geobox, cache) for c in used]
                    arrays["sentinel-2"] = median_composite(stacks, [c.scl for c in used])
                    seen = np.zeros(geobox.shape.yx, dtype=bool)
                    for c in used:
                        seen |= (c.scl > 0) & ~np.isin(c.scl, SCL_CLOUD)
                    cloud_pct = 100.0 * float((~seen).mean())
                    record["s2_composite_items"] = [c.item.id for c in used]
                if cloud_pct > cfg.max_cloud:
                    raise SampleSkipped(
                        f"too cloudy: {cloud_pct:.1f}% cloud over the sample in the clearest "
                        f"scene {s2_item.id} > {cfg.max_cloud:.0f}%"
                    )
                if cfg.composite != "median":
                    chosen_s2 = s2_item
                    s2_bands = start(lambda: _read_s2(chosen_s2, geobox, cache))
            s1 = None
            if cfg.s1_collection:
                s1_items = _covering(items.get(cfg.s1_collection, []), footprint)
                if s2_item is not None:
                    when = s2_item.datetime
                    s1_items.sort(key=lambda it: (abs((it.datetime - when).total_seconds()), it.id))
                s1 = start(lambda: _read_s1(s1_items, geobox, cache, cfg))
            for spec in cfg.labels:
                if spec.year is None:
                    start_labels(spec, s2_item)
            # Results in source order: the same arrays, record and first error as one by one.
            if s2_item is not None:
                if s2_bands is not None:
                    arrays["sentinel-2"] = s2_bands.result()
                arrays["sentinel-2-scl"] = scl
                record.update(
                    s2_item=s2_item.id,
                    s2_datetime=_iso(s2_item.datetime),
                    cloud_pct=round(cloud_pct, 3),
                )
            if s1 is not None:
                found = s1.result()
                if found is None:
                    raise SampleSkipped(
                        f"no {cfg.s1_collection} scene covers the sample with VV and VH "
                        f"(at most {100 * cfg.max_nodata:.0f}% nodata)"
                    )
                s1_item, arrays["sentinel-1"] = found
                record.update(
                    s1_item=s1_item.id,
                    s1_datetime=_iso(s1_item.datetime),
                    s1_orbit_state=s1_item.orbit_state,
                )
            if naip is not None:
                record["naip_item"] = None
                image = naip.result()
                if image is not None:
                    naip_item, arrays["naip"] = image
                    record.update(naip_item=naip_item.id, naip_datetime=_iso(naip_item.datetime))
            natives = {}
            for spec in cfg.labels:
                native, used_items = labels[spec.product].result()
                record[f"{spec.product}_items"] = [it.id for it in used_items]
                natives[spec.product] = native
        harmonise_labels(natives, arrays, record, cfg)
    except SampleSkipped as skip:
        return SampleOutcome("skipped", str(skip), record=record)
    except UnknownCodeError as err:
        return SampleOutcome("failed", str(err), record=record)
    except (ReadError, KeyError) as err:
        return SampleOutcome("failed", f"{type(err).__name__}: {err}", record=record)
    return SampleOutcome("ok", "", arrays=arrays, record=record)
