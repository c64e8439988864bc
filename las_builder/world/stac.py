"""STAC collections and items of the world, laid out like Planetary Computer's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox
from shapely.geometry import MultiPolygon, Polygon, box, mapping
from shapely.ops import unary_union

from las_builder.world.config import load_collection_texts, load_products
from las_builder.world.grids import boundary_lonlat
from las_builder.world.imagery import Scene

STAC_VERSION = "1.0.0"
_EXT = "https://stac-extensions.github.io/{}/schema.json"
_EXTENSIONS = {
    "eo": "eo/v1.0.0",
    "proj": "projection/v1.1.0",
    "raster": "raster/v1.1.0",
    "sat": "sat/v1.0.0",
    "sar": "sar/v1.0.0",
    "classification": "classification/v1.0.0",
    "file": "file/v2.1.0",
}


def footprint(geobox: GeoBox) -> Polygon | MultiPolygon:
    """Footprint of a grid in longitude/latitude, split in two where it crosses 180 degrees."""
    lon, lat = boundary_lonlat(geobox, points_per_side=32)
    if lon.max() - lon.min() > 180:
        shifted = Polygon(zip(np.where(lon < 0, lon + 360, lon), lat, strict=True))
        east = shifted.intersection(box(-180, -90, 180, 90))
        west = shifted.intersection(box(180, -90, 540, 90))
        west = Polygon([(x - 360, y) for x, y in west.exterior.coords])
        return MultiPolygon([east, west])
    return Polygon(zip(lon, lat, strict=True))


def _round_geometry(geom: Any) -> dict[str, Any]:
    rounded: dict[str, Any] = json.loads(
        json.dumps(mapping(geom)), parse_float=lambda s: round(float(s), 7)
    )
    return rounded


def _extensions(fields: set[str], versions: dict[str, str]) -> list[str]:
    paths = _EXTENSIONS | versions
    return sorted(_EXT.format(path) for prefix, path in paths.items() if prefix in fields)


def _prefixes(obj: dict[str, Any]) -> set[str]:
    found = {k.split(":")[0] for k in obj if ":" in k}
    for value in obj.values():
        if isinstance(value, dict):
            found |= _prefixes(value)
    return found


def scene_item(scene: Scene) -> dict[str, Any]:
    """A STAC item for a generated scene (asset hrefs relative to the world root)."""
    geom = footprint(scene.geobox)
    props = dict(scene.properties)
    if "datetime" not in props:
        props["datetime"] = scene.datetime.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    prefixes = _prefixes(props) | set().union(*(_prefixes(a) for a in scene.assets.values()))
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": _extensions(prefixes, scene.extensions),
        "id": scene.item_id,
        "collection": scene.collection,
        "geometry": _round_geometry(geom),
        "bbox": [round(v, 7) for v in geom.bounds],
        "properties": props,
        "assets": scene.assets,
        "links": [],
    }


def collection(collection_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """A STAC collection for ``items``, with ``item_assets`` and extents taken from them."""
    text = load_collection_texts()[collection_id]
    geoms = [Polygon(box(*it["bbox"])) for it in items]
    bounds = unary_union(geoms).bounds
    times = sorted(
        it["properties"].get("datetime") or it["properties"]["start_datetime"] for it in items
    )
    item_assets: dict[str, Any] = {}
    for it in items:
        for key, asset in it["assets"].items():
            if key not in item_assets:
                item_assets[key] = {
                    k: v for k, v in asset.items() if k != "href" and not k.startswith("proj:")
                }
    extensions = set().union(*(set(it["stac_extensions"]) for it in items))
    extensions.add("https://stac-extensions.github.io/item-assets/v1.0.0/schema.json")
    summaries: dict[str, Any] = {}
    product = load_products().get(collection_id)
    if product is not None and product.stac.band_in == "summaries":
        summaries["raster:bands"] = [{"nodata": product.nodata, **product.stac.band}]
        extensions.add(_EXT.format(_EXTENSIONS["raster"]))
    out: dict[str, Any] = {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": sorted(extensions),
        "id": collection_id,
        "title": text["title"],
        "description": text["description"],
        "license": text["license"],
        "keywords": ["las-builder", "offline world"],
        "providers": [{"name": "las-builder offline world", "roles": ["producer", "host"]}],
        "extent": {
            "spatial": {"bbox": [[round(v, 7) for v in bounds]]},
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "item_assets": item_assets,
        "links": [],
    }
    if summaries:
        out["summaries"] = summaries
    return out


def write_stac(world_dir: Path, scenes: list[Scene]) -> list[str]:
    """Write ``stac/collections/<id>.json`` and ``stac/items/<id>.json`` for all scenes."""
    by_collection: dict[str, list[dict[str, Any]]] = {}
    for scene in scenes:
        by_collection.setdefault(scene.collection, []).append(scene_item(scene))
    for cid, items in sorted(by_collection.items()):
        items.sort(key=lambda it: it["id"])
        _write_json(world_dir / "stac" / "collections" / f"{cid}.json", collection(cid, items))
        _write_json(
            world_dir / "stac" / "items" / f"{cid}.json",
            {"type": "FeatureCollection", "features": items},
        )
    return sorted(by_collection)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
