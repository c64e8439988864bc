"""Evaluate LandSegmenter (``las eval``) and predict GeoTIFFs (``las predict``).

``evaluate`` prompts the model with the LAS class keys and scores it, per label product, with
the IoU of every LAS class and their mean (mIoU: the mean over classes that occur in the
reference or the prediction). In the offline world it also scores the model, with and without
the class-wise confidence-guided fusion, and every weak-label product against the truth (see
:mod:`las_builder.model.truth`). A product pixel without a LAS class (nodata or ignore) counts
as "no prediction": it adds to the union of the truth class, never to an intersection, so a
product is not rewarded for abstaining. Truth nodata and label ignore pixels are left out.

``predict`` writes a GeoTIFF whose band 1 is the index of the winning class (0-based, in the
order of ``--classes``; 255 where the input is nodata) and, with ``scores``, one band per class
with its score in percent (0-100). Class names and the score convention are in the file's tags.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from las_builder.model.data import IGNORE_INDEX, LASDataset, ProductSpec, SampleRow, compose_input
from las_builder.model.fusion import fuse
from las_builder.model.train import load_checkpoint, resolve_device
from las_builder.security import redact

__all__ = ["best_product", "confusion", "evaluate", "iou_report", "json_ready", "miou", "predict"]


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion matrix ``(K, K + 1)``: rows = reference, columns = prediction.

    Column ``K`` counts reference pixels with no predicted class (a prediction outside
    ``0..K-1``, e.g. a product's ignore). Reference pixels equal to 255 are left out.
    """
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes)
    pred, target = pred[keep], target[keep]
    pred = torch.where((pred >= 0) & (pred < num_classes), pred, num_classes)
    flat = target * (num_classes + 1) + pred
    return torch.bincount(flat, minlength=num_classes * (num_classes + 1)).reshape(
        num_classes, num_classes + 1
    )


def miou(conf: torch.Tensor) -> tuple[float, np.ndarray]:
    """Return ``(mIoU, per-class IoU)`` of a :func:`confusion` matrix.

    IoU is ``NaN`` for a class absent from both reference and prediction; the mean skips it.
    """
    c = conf.double()
    k = c.shape[0]
    inter = torch.diagonal(c[:, :k])
    union = c.sum(1) + c[:, :k].sum(0) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.nan).numpy()
    valid = ~np.isnan(iou)
    return (float(iou[valid].mean()) if valid.any() else float("nan")), iou


def iou_report(conf: torch.Tensor, names: Sequence[str]) -> dict[str, Any]:
    """mIoU, per-class IoU (classes present only), pixel accuracy and pixel count."""
    mean, per = miou(conf)
    total = int(conf.sum())
    k = conf.shape[0]
    return {
        "miou": mean,
        "per_class_iou": {n: float(v) for n, v in zip(names, per, strict=True) if not np.isnan(v)},
        "pixel_accuracy": float(torch.diagonal(conf[:, :k]).sum()) / max(total, 1),
        "pixels": total,
    }


def _las_products(products: Sequence[str]) -> list[str]:
    out: list[str] = []
    for p in products:
        name = ProductSpec.parse(p).name
        if name not in out:
            out.append(name)
    return out


@torch.no_grad()
def evaluate(
    checkpoint: str | Path,
    dataset: str | Path,
    products: Sequence[str] | None = None,
    truth: str | Path | None = None,
    split: str = "val",
    inputs: Sequence[str] | None = None,
    batch_size: int = 8,
    device: str = "auto",
    fusion_gamma: float = 1.0,
    out: str | Path | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score a checkpoint on a LAS dataset (LAS classes), optionally against the truth.

    Args:
        checkpoint: A LandSegmenter checkpoint (or run folder).
        dataset: LAS dataset folder or URL.
        products: Label products to score against (LAS classes); default: those the model
            was trained on.
        truth: World folder, ``serve.json`` or STAC API URL of the offline world.
        split: ``val`` (the checkpoint's held-out samples; all when it had none), ``train``
            or ``all``.
        inputs: Modalities fed to the model (default: the training config's eval inputs).
        batch_size: Samples per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        fusion_gamma: ``gamma`` of the fusion (:func:`las_builder.model.fusion.fuse`).
        out: Write the metrics as JSON here.
        storage_options: fsspec options for URLs.
        progress: Show a progress bar.

    Returns:
        The metrics (also written to ``out``).

    """
    dev = resolve_device(device)
    model, prompter, ckpt = load_checkpoint(checkpoint, dev)
    tcfg = ckpt["train_config"]
    products = _las_products(products or tcfg["products"])
    inputs = list(inputs or tcfg.get("eval_inputs") or tcfg["inputs"][0])
    val_fraction = float(tcfg.get("val_fraction") or 0.0)
    if split == "val" and val_fraction == 0:
        split = "all"
    ds = LASDataset(
        dataset,
        modalities=inputs,
        products=products,
        split=split,
        val_fraction=val_fraction,
        split_seed=int(tcfg.get("split_seed", 0)),
        split_by=tcfg.get("split_by"),
        naip_factor=tcfg.get("naip_factor"),
        storage_options=storage_options,
    )
    if len(ds) == 0:
        raise ValueError(f"{dataset}: no usable samples in split {split!r}")
    names = ds.las_keys
    k = len(names)
    text = prompter.embed(names).to(dev)
    items = None
    if truth is not None:
        from las_builder.model.truth import truth_items

        items = truth_items(truth)
    zero = torch.zeros(k, k + 1, dtype=torch.long)
    conf = {p: {"model": zero.clone(), "fused": zero.clone()} for p in products}
    tconf = {"model": zero.clone(), "fused": zero.clone()}
    tlabels = {p: zero.clone() for p in products}
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=default_collate)
    from rich.console import Console
    from rich.progress import track

    done = 0
    # On stderr: stdout carries the metrics tables.
    for batch in track(
        loader, description="eval", disable=not progress, console=Console(stderr=True)
    ):
        image, wl, pol = compose_input(batch, inputs)
        out_ = model(image.to(dev), wl.to(dev), text, pol.to(dev))
        logits = out_["logits"]
        size = batch["labels"][products[0]].shape[-2:] if products else ds.shape
        if logits.shape[-2:] != size:
            logits = torch.nn.functional.interpolate(
                logits, size=tuple(size), mode="bilinear", align_corners=False
            )
        fused, _ = fuse(logits, out_["presence_logits"], fusion_gamma)
        pred = logits.argmax(1).cpu()
        pred_f = fused.argmax(1).cpu()
        for p in products:
            target = batch["labels"][p]
            conf[p]["model"] += confusion(pred, target, k)
            conf[p]["fused"] += confusion(pred_f, target, k)
        if items is not None:
            for j in range(image.shape[0]):
                row = ds.rows[done + j]
                codes = torch.from_numpy(
                    _truth_codes(items, row).astype(np.int64)
                )  # LAS codes, 0 nodata
                target = torch.where(codes > 0, codes - 1, IGNORE_INDEX)
                tconf["model"] += confusion(pred[j], target, k)
                tconf["fused"] += confusion(pred_f[j], target, k)
                for p in products:
                    tlabels[p] += confusion(batch["labels"][p][j], target, k)
        done += image.shape[0]

    metrics: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "step": int(ckpt.get("step", 0)),
        "dataset": str(dataset),
        "split": split,
        "samples": len(ds),
        "inputs": inputs,
        "classes": names,
        "fusion_gamma": fusion_gamma,
        "products": {p: iou_report(conf[p]["model"], names) for p in products},
        "products_fused": {p: iou_report(conf[p]["fused"], names) for p in products},
    }
    if items is not None:
        labels = {p: iou_report(tlabels[p], names) for p in products}
        best = best_product(labels)
        metrics["truth"] = {
            "model": iou_report(tconf["model"], names),
            "model_fused": iou_report(tconf["fused"], names),
            "labels": labels,
            "best_label_product": best,
            "best_label_miou": labels[best]["miou"] if best else None,
        }
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(json_ready(metrics), indent=1, allow_nan=False))
    return metrics


def best_product(reports: dict[str, dict[str, Any]]) -> str | None:
    """The product of the highest mIoU; ``None`` when none has one (every mIoU NaN).

    A product with no scored pixel has a NaN mIoU, which compares false with everything, so a
    plain ``max`` would return it whenever it came first.
    """
    scored = {p: r["miou"] for p, r in reports.items() if np.isfinite(r["miou"])}
    return max(scored, key=lambda p: scored[p]) if scored else None


def json_ready(value: Any) -> Any:
    """``value`` with every NaN or infinite float as ``None``: the JSON standard has no NaN.

    ``json.dumps`` writes ``NaN``, which strict readers (``jq``, browsers) refuse.
    """
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


_TruthKey = tuple[tuple[str, ...], int, tuple[float, ...], tuple[int, ...]]
"""Truth item hrefs, then the sample grid's EPSG code, transform and shape."""

_TRUTH_CACHE: dict[_TruthKey, np.ndarray] = {}


def _truth_codes(items: Sequence[Any], row: SampleRow) -> np.ndarray:
    from las_builder.model.truth import truth_on_grid

    key = (tuple(i.href for i in items), row["epsg"], tuple(row["transform"]), tuple(row["shape"]))
    if key not in _TRUTH_CACHE:
        _TRUTH_CACHE[key] = truth_on_grid(items, row["epsg"], row["transform"], row["shape"])
    return _TRUTH_CACHE[key]


# --- predict ---------------------------------------------------------------------------------


def _palette(names: Sequence[str]) -> dict[int, tuple[int, int, int, int]]:
    from las_builder.catalog import load_taxonomy

    try:
        by_key = {c.key: c.rgb for c in load_taxonomy().classes}
    except Exception:  # noqa: BLE001 - colours are cosmetic
        by_key = {}
    cmap = {}
    for i, n in enumerate(names):
        rgb = by_key.get(n)
        if rgb is None:
            h = zlib.crc32(n.encode()) & 0xFFFFFF  # stable across runs
            rgb = ((h >> 16) & 255, (h >> 8) & 255, h & 255)
        cmap[i] = (*rgb, 255)
    return cmap


@torch.no_grad()
def _scores(
    model: Any,
    image: torch.Tensor,
    wl: torch.Tensor,
    pol: torch.Tensor,
    text: torch.Tensor,
    use_fusion: bool,
    gamma: float,
    device: torch.device,
) -> torch.Tensor:
    out: dict[str, torch.Tensor] = model(image.to(device), wl.to(device), text, pol.to(device))
    if use_fusion:
        fused, _ = fuse(out["logits"], out["presence_logits"], gamma)
        return (fused / fused.sum(1, keepdim=True).clamp_min(1e-12)).cpu()
    return out["logits"].softmax(1).cpu()


MAX_CLASSES = 255
"""Classes a prediction can name: the class band is uint8 and 255 marks nodata."""


@contextlib.contextmanager
def _prediction_file(
    out: Path,
    shape: tuple[int, int],
    names: Sequence[str],
    crs: Any,
    transform: Any,
    scores: bool,
    tags: dict[str, str],
) -> Iterator[Any]:
    """The output GeoTIFF, open for writing: class band (+ score bands), legend and tags."""
    if len(names) > MAX_CLASSES:
        raise ValueError(
            f"{len(names)} classes given; a prediction names at most {MAX_CLASSES} "
            "(its class band is 8-bit, 255 = nodata)"
        )
    h, w = shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": 1 + (len(names) if scores else 0),
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
        "nodata": 255,
        "compress": "deflate",
        "tiled": w >= 256 and h >= 256,
    }
    if profile["tiled"]:
        profile.update(blockxsize=256, blockysize=256)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written under another name and renamed when complete: a failed or interrupted
    # prediction leaves no half-written raster where the output belongs.
    partial = out.with_name(f".{out.name}.partial")
    try:
        yield from _write_prediction(partial, profile, names, scores, tags)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def _write_prediction(
    path: Path, profile: dict[str, Any], names: Sequence[str], scores: bool, tags: dict[str, str]
) -> Iterator[Any]:
    """Open ``path`` for :func:`_prediction_file`, yield it, then add overviews and close it."""
    import rasterio

    h, w = profile["height"], profile["width"]
    with rasterio.open(path, "w", **profile) as dst:
        dst.set_band_description(1, "class index")
        if not scores:  # a GeoTIFF holds a colour table only with one band
            dst.write_colormap(1, _palette(names))
        if scores:
            for i, n in enumerate(names):
                dst.set_band_description(i + 2, f"score {n} (%)")
        dst.update_tags(
            classes=json.dumps(list(names)),
            class_band="1: index into classes (0-based), 255 = nodata",
            scores="bands 2..K+1: per-class score in percent" if scores else "none",
            **tags,
        )
        yield dst
        factors = _overview_factors(h, w)
        if factors:  # for viewing a large prediction at any zoom (classes: nearest)
            from rasterio.enums import Resampling

            dst.build_overviews(factors, Resampling.nearest)
            dst.update_tags(ns="rio_overview", resampling="nearest")


def _overview_factors(height: int, width: int, smallest: int = 256) -> list[int]:
    """Overview factors 2, 4, 8 ... down to a level under ``smallest`` pixels on its long side."""
    factors: list[int] = []
    factor = 2
    while max(height, width) // (factor // 2) > smallest:
        factors.append(factor)
        factor *= 2
    return factors


def _write_window(
    dst: Any, probs: np.ndarray, valid: np.ndarray, scores: bool, window: Any = None
) -> np.ndarray:
    """Write the class (and score) bands of ``probs`` ``(k, h, w)`` at ``window``.

    Returns:
        The count of valid pixels per class.
    """
    k = probs.shape[0]
    cls = probs.argmax(0).astype(np.uint8)
    cls[~valid] = 255
    dst.write(cls, 1, window=window)
    if scores:
        pct = np.round(np.clip(probs, 0, 1) * 100).astype(np.uint8)
        pct[:, ~valid] = 255
        dst.write(pct, list(range(2, k + 2)), window=window)
    counts: np.ndarray = np.bincount(cls[valid], minlength=k)
    return counts


_RASTER_URL = re.compile(r"^(https?|s3|gs|az)://", re.IGNORECASE)


def _parse_input(text: str) -> tuple[str, str | None]:
    """What ``INPUT`` names: ``(raster, None)`` or ``(dataset, sample id)``.

    ``path/to/raster.tif`` or a raster URL (``https://``, ``s3://``, ``gs://``, ``az://``,
    read by GDAL) -> ``(text, None)``; ``DATASET:SAMPLE_ID`` (a dataset folder or URL, then a
    sample id, which holds no ``/``) -> ``(dataset, id)``.
    """
    if Path(text).is_file():
        return text, None
    if ":" in text:
        dataset, sample = text.rsplit(":", 1)
        if dataset and sample and "/" not in sample:
            return dataset, sample
    if _RASTER_URL.match(text):
        return text, None
    raise FileNotFoundError(f"{text}: neither a raster file, a raster URL nor DATASET:SAMPLE_ID")


def predict(
    checkpoint: str | Path,
    source: str,
    out: str | Path,
    classes: Sequence[str] | None = None,
    scores: bool = False,
    wavelengths: str | None = None,
    scale: float | None = None,
    sar_units: str = "linear",
    inputs: Sequence[str] | None = None,
    use_fusion: bool = False,
    fusion_gamma: float = 1.0,
    tile: int = 1024,
    halo: int = 64,
    device: str = "auto",
    storage_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Predict a GeoTIFF for a dataset sample or any raster, with any class names.

    Args:
        checkpoint: LandSegmenter checkpoint (or run folder).
        source: ``DATASET:SAMPLE_ID`` or a raster file.
        out: Output GeoTIFF.
        classes: Class names to prompt (zero-shot allowed); default the LAS keys.
        scores: Add one score band per class (percent).
        wavelengths: Raster band list for :func:`las_builder.model.bands.parse_band_spec`
            (``"B02,B03,B04,B08"``, ``"0.49,0.56"``, ``"vv,vh"``); default: recognised from
            the band descriptions.
        scale: Divide optical raster values by this (default: 10000 for 16-bit integers,
            255 for 8-bit, 1 for floats).
        sar_units: ``linear`` or ``db`` for SAR bands of a raster.
        inputs: Modalities of a dataset sample (default: the training config's eval inputs).
        use_fusion: Use the class-wise confidence-guided fusion.
        fusion_gamma: Its ``gamma``.
        tile: Tile size (pixels) for rasters: a raster is predicted and written tile by
            tile, so memory follows the tile, not the raster.
        halo: Pixels of context read around each tile (within the raster) and predicted
            with it; only the tile's own pixels are written. Fewer seams at tile edges.
        device: ``auto``, ``cpu`` or ``cuda``.
        storage_options: fsspec options for dataset URLs.
        progress: Show a progress bar over a raster's tiles.

    Returns:
        ``out``, ``classes``, ``shape`` and the share of pixels per class.

    """
    from affine import Affine

    dev = resolve_device(device)
    model, prompter, ckpt = load_checkpoint(checkpoint, dev)
    names = list(classes) if classes else None
    path, sample = _parse_input(source)
    tags = {"checkpoint": str(checkpoint), "fusion": str(use_fusion)}
    if sample is not None:
        tcfg = ckpt["train_config"]
        mods = list(inputs or tcfg.get("eval_inputs") or tcfg["inputs"][0])
        ds = LASDataset(
            path,
            modalities=mods,
            products=[],
            sample_ids=[sample],
            naip_factor=tcfg.get("naip_factor"),
            storage_options=storage_options,
        )
        names = names or ds.las_keys
        text = prompter.embed(names).to(dev)
        batch = default_collate([ds[0]])
        image, wl, pol = compose_input(batch, mods)
        probs = _scores(model, image, wl, pol, text, use_fusion, fusion_gamma, dev)[0].numpy()
        valid = image[0].abs().sum(0).numpy() > 0
        row = ds.rows[0]
        t = Affine(*row["transform"][:6])
        f = image.shape[-1] / row["shape"][1]
        if f != 1:
            t = t * Affine.scale(1 / f)
        shape = (int(probs.shape[1]), int(probs.shape[2]))
        crs = f"EPSG:{row['epsg']}"
        with _prediction_file(Path(out), shape, names, crs, t, scores, tags) as dst:
            counts = _write_window(dst, probs, valid, scores)
    else:
        shape, counts = _predict_raster(
            model, prompter, path, Path(out), names, scores, wavelengths, scale,
            sar_units, use_fusion, fusion_gamma, tile, halo, dev, tags, progress,
        )  # fmt: skip
        names = json.loads(_read_tags(Path(out))["classes"])
    share = {n: float(c) / max(1, counts.sum()) for n, c in zip(names, counts, strict=True)}
    return {"out": str(out), "classes": names, "shape": list(shape), "share": share}


def _read_tags(path: Path) -> dict[str, str]:
    import rasterio

    with rasterio.open(path) as src:
        tags: dict[str, str] = src.tags()
        return tags


def _predict_raster(
    model: Any,
    prompter: Any,
    path: str,
    out: Path,
    names: list[str] | None,
    scores: bool,
    wavelengths: str | None,
    scale: float | None,
    sar_units: str,
    use_fusion: bool,
    gamma: float,
    tile: int,
    halo: int,
    device: torch.device,
    tags: dict[str, str],
    progress: bool = False,
) -> tuple[tuple[int, int], np.ndarray]:
    """Predict a raster tile by tile (each with ``halo`` pixels of context) into ``out``.

    Returns:
        The raster's shape and the count of valid pixels per class.
    """
    import rasterio
    from rasterio.windows import Window
    from rich.console import Console
    from rich.progress import track

    from las_builder.catalog import load_taxonomy
    from las_builder.model.bands import band_from_name, parse_band_spec

    names = names or load_taxonomy().keys
    text = prompter.embed(names).to(device)
    try:
        opened = rasterio.open(path)
    except rasterio.errors.RasterioIOError as err:
        reason = redact(str(err))
        raise FileNotFoundError(f"{redact(path)}: cannot be read as a raster ({reason})") from None
    with opened as src:
        if wavelengths:
            wl, pol = parse_band_spec(wavelengths)
        else:
            found = [band_from_name(d or "") for d in src.descriptions]
            if not all(found):
                raise ValueError(
                    f"{path}: band descriptions {list(src.descriptions)} are not all "
                    "recognised; give --wavelengths (e.g. B02,B03,B04,B08 or 0.49,0.56,vv)"
                )
            wl = [f[0] for f in found if f]
            pol = [f[1] for f in found if f]
        if len(wl) != src.count:
            raise ValueError(f"{path} has {src.count} bands but {len(wl)} wavelengths were given")
        if scale is None:
            kind = np.dtype(src.dtypes[0])
            scale = 10000.0 if kind.kind in "iu" and kind.itemsize >= 2 else 255.0
            scale = 1.0 if kind.kind == "f" else scale
        elif not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"--scale must be a number above 0, got {scale}")
        if src.crs is None:  # still a prediction, but say it is not on any map
            warnings.warn(
                f"{redact(path)} has no CRS: the prediction is written on its pixel grid "
                "without one (it will not line up on a map)",
                stacklevel=2,
            )
        h, w = src.height, src.width
        polarised = np.asarray(pol) > 0
        counts = np.zeros(len(names), dtype=np.int64)
        with _prediction_file(out, (h, w), names, src.crs, src.transform, scores, tags) as dst:
            origins = [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]
            bar = track(origins, "predict", disable=not progress, console=Console(stderr=True))
            for y, x in bar:
                core = Window(x, y, min(tile, w - x), min(tile, h - y))
                # The tile with its halo, cut at the raster's edges.
                top, left = max(0, y - halo), max(0, x - halo)
                bottom = min(h, y + core.height + halo)
                right = min(w, x + core.width + halo)
                read = Window(left, top, right - left, bottom - top)
                image, ok = _raster_input(src, read, scale, polarised, sar_units)
                wl_t = torch.tensor(wl, dtype=torch.float32)
                p = _scores(model, image, wl_t, torch.tensor(pol), text, use_fusion, gamma, device)[
                    0
                ].numpy()
                rows = slice(y - top, y - top + core.height)
                cols = slice(x - left, x - left + core.width)
                counts += _write_window(dst, p[:, rows, cols], ok[rows, cols], scores, core)
    return (h, w), counts


def _raster_input(
    src: Any, window: Any, scale: float, polarised: np.ndarray, sar_units: str
) -> tuple[torch.Tensor, np.ndarray]:
    """A window of a raster as a model input ``(1, bands, h, w)``, and where it has data.

    Optical bands are divided by ``scale``, SAR bands normalised as the training data are. A
    pixel has no data where a band is not finite or every band is the nodata value (0 for a
    raster without one).
    """
    from las_builder.model.data import normalise

    raw = src.read(window=window).astype(np.float32)
    finite = np.isfinite(raw)
    ok = finite.all(0)
    nodata = src.nodata
    if nodata is not None and not np.isnan(nodata):
        ok &= ~(raw == nodata).all(0)
    else:
        ok &= ~(raw == 0).all(0)
    _check_values(src, raw, ok, scale, polarised, sar_units)
    x_in = raw / scale
    if polarised.any():
        x_in[polarised] = normalise("sentinel-1", raw[polarised], {"units": sar_units})
    # every non-finite value to 0: nan_to_num's default turns inf into float32's largest,
    # which the convolutions spread over the whole tile's prediction
    x_in[~finite] = 0
    return torch.from_numpy(x_in)[None], ok


MIN_REFLECTANCE, MAX_REFLECTANCE = -0.1, 2.0
"""Bounds of a band's median surface reflectance that is taken as one: bright snow is about
1, dark water a few hundredths (slightly below 0 in places after the BOA offset)."""


def _check_values(
    src: Any, raw: np.ndarray, ok: np.ndarray, scale: float, polarised: np.ndarray, units: str
) -> None:
    """Refuse values the model would read wrongly.

    Optical bands whose median (after ``scale``) is no reflectance, linear SAR backscatter
    below 0 (values in dB). A wrong ``--scale`` (a float raster of digital numbers, read
    with the float default of 1) otherwise gives a confident, wrong prediction.
    """
    sample = raw[:, ok][:, :: max(1, int(ok.sum()) // 4096)]  # a few thousand pixels suffice
    if sample.size == 0:
        return
    name = redact(str(src.name))
    for band, values in enumerate(sample, start=1):
        median = float(np.median(values))
        if polarised[band - 1]:
            if units == "linear" and median < 0:
                raise ValueError(
                    f"{name}: band {band} (SAR) has a median of {median:.3g}, below 0: "
                    "backscatter in dB? give --sar-units db"
                )
        elif not MIN_REFLECTANCE <= median / scale <= MAX_REFLECTANCE:
            raise ValueError(
                f"{name}: band {band} divided by --scale {scale:g} has a median of "
                f"{median / scale:.3g}, not a reflectance (0-1): give the --scale that "
                "turns its values into reflectance (e.g. 10000 for Sentinel-2 digital numbers)"
            )
