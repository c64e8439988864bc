"""The offline world's 2 m truth on LAS sample grids, in LAS classes.

The truth is the STAC collection ``las-world-truth`` (one item per region, asset ``truth``,
classes of ``catalog/world/truth.yaml``). For a sample it is reprojected onto the sample's grid
(index columns ``epsg``, ``transform``, ``shape``) with nearest resampling and mapped to LAS by
``catalog/world/truth_to_las.yaml``. Pixels no truth covers are 0 (nodata).

The world is given as its folder (``las world create`` output: the item file is read from
``stac/items/las-world-truth.json`` and asset hrefs are relative to the folder), a STAC API URL
(``http://127.0.0.1:PORT/``, e.g. from ``serve.json``), or a ``serve.json`` path.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from las_builder._paths import catalog_dir
from las_builder.security import HrefRefused, allowed_file_roots, check_href, open_asset

__all__ = ["TRUTH_COLLECTION", "TruthItem", "truth_items", "truth_lut", "truth_on_grid"]

TRUTH_COLLECTION = "las-world-truth"


@functools.cache
def truth_lut() -> np.ndarray:
    """Lookup table truth value -> LAS code (0 stays 0; unmapped values raise on use).

    Raises:
        ValueError: A truth class has no entry in ``truth_to_las.yaml`` or an unknown LAS key.

    """
    from las_builder.catalog import load_taxonomy

    truth = yaml.safe_load((catalog_dir() / "world" / "truth.yaml").read_text())
    table = yaml.safe_load((catalog_dir() / "world" / "truth_to_las.yaml").read_text())["map"]
    taxonomy = load_taxonomy()
    lut = np.full(256, 254, dtype=np.uint8)
    lut[int(truth.get("nodata", 0))] = 0
    for cls in truth["classes"]:
        entry = table.get(cls["name"])
        if entry is None:
            raise ValueError(f"truth class {cls['name']!r} is missing in truth_to_las.yaml")
        key = entry["to"] if isinstance(entry, dict) else entry
        lut[int(cls["id"])] = taxonomy.by_key(key).code
    return lut


class TruthItem:
    """One truth raster: its href, CRS and bounds (in its own CRS)."""

    def __init__(self, href: str, epsg: int, bounds: Sequence[float]) -> None:
        self.href, self.epsg, self.bounds = href, epsg, tuple(bounds)

    def __repr__(self) -> str:
        return f"TruthItem({self.href!r}, EPSG:{self.epsg})"


def _item(feature: dict[str, Any], base: str | None) -> TruthItem:
    # The project's item parser: proj:epsg or proj:code (pystac rewrites the one into the
    # other), item- or asset-level, 6 or 9 transform numbers.
    from las_builder.stac import parse_item

    scene = parse_item(feature)
    asset = scene.assets.get("truth")
    if asset is None or asset.epsg is None or asset.transform is None or asset.shape is None:
        raise ValueError(
            f"truth item {scene.id!r}: needs an asset 'truth' with an EPSG CRS, "
            "proj:transform and proj:shape"
        )
    href = asset.href
    if base is not None and "://" not in href and not href.startswith("/"):
        href = str(Path(base) / href)
    # Hrefs of a STAC API as those of a build; the world folder named on the command line is
    # an allowed root for its own files.
    roots = None if base is None else (Path(base).resolve(), *allowed_file_roots())
    try:
        href = check_href(href, roots)
    except HrefRefused as err:
        raise ValueError(f"truth item {scene.id!r}, asset 'truth': refused {err}") from None
    t, (rows, cols) = asset.transform, asset.shape
    x0, y0 = t[2], t[5]
    x1, y1 = x0 + t[0] * cols, y0 + t[4] * rows
    return TruthItem(href, asset.epsg, (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))


def truth_items(world: str | Path) -> list[TruthItem]:
    """List the truth rasters of a world folder, a ``serve.json`` or a STAC API URL."""
    text = str(world)
    if "://" not in text:
        path = Path(text)
        if path.name == "serve.json":
            text = json.loads(path.read_text())["stac_url"]
        else:
            items = path / "stac" / "items" / f"{TRUTH_COLLECTION}.json"
            if not items.is_file():
                raise FileNotFoundError(f"{items} not found: is {path} a world folder?")
            data = json.loads(items.read_text())
            features = data["features"] if isinstance(data, dict) else data
            return [_item(f, str(path)) for f in features]
    import pystac_client

    client = pystac_client.Client.open(text)
    search = client.search(collections=[TRUTH_COLLECTION], max_items=10_000)
    return [_item(item, None) for item in search.items_as_dicts()]


def truth_on_grid(
    items: Sequence[TruthItem], epsg: int, transform: Sequence[float], shape: Sequence[int]
) -> np.ndarray:
    """Reproject the truth onto a grid (nearest) and map it to LAS codes.

    Args:
        items: Truth rasters (:func:`truth_items`).
        epsg: EPSG code of the grid.
        transform: Affine coefficients ``(a, b, c, d, e, f)``.
        shape: ``(height, width)``.

    Returns:
        ``uint8 (H, W)`` LAS codes, 0 where no truth covers the pixel.

    """
    import rasterio
    from affine import Affine
    from pyproj import Transformer
    from rasterio.warp import Resampling, reproject

    h, w = int(shape[0]), int(shape[1])
    aff = Affine(*transform[:6])
    xs = [aff.c, aff.c + aff.a * w]
    ys = [aff.f, aff.f + aff.e * h]
    out = np.zeros((h, w), dtype=np.uint8)
    lut = truth_lut()
    for item in items:
        tr = Transformer.from_crs(epsg, item.epsg, always_xy=True)
        cx, cy = tr.transform(
            [xs[0], xs[1], xs[0], xs[1], sum(xs) / 2], [ys[0], ys[0], ys[1], ys[1], sum(ys) / 2]
        )
        bx0, by0, bx1, by1 = item.bounds
        if not np.isfinite(cx).all() or max(cx) < bx0 or min(cx) > bx1:
            continue
        if max(cy) < by0 or min(cy) > by1:
            continue
        tmp = np.zeros((h, w), dtype=np.uint8)
        with open_asset(item.href) as src:  # GeoTIFF/JPEG 2000 only: no VRT
            reproject(
                rasterio.band(src, 1),
                tmp,
                dst_transform=aff,
                dst_crs=f"EPSG:{epsg}",
                dst_nodata=0,
                resampling=Resampling.nearest,
            )
        mapped = lut[tmp]
        if (mapped == 254).any():
            bad = sorted(set(np.unique(tmp[mapped == 254]).tolist()))
            raise ValueError(f"{item.href}: truth values {bad} have no LAS class")
        fill = out == 0
        out[fill] = mapped[fill]
    return out
