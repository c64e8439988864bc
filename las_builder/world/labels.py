"""Label products of the world, derived from the truth by coarsening plus product confusions."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox
from rasterio.warp import Resampling

from las_builder.catalog import LabelProduct, load_label_product
from las_builder.world.cog import write_cog
from las_builder.world.config import Preset, Truth, WorldProduct, load_products
from las_builder.world.grids import (
    MODIS_ORIGIN,
    MODIS_SINUSOIDAL,
    lattice_tiles,
    lonlat_pieces,
    mgrs_tile,
    sinusoidal_bounds,
    worldcover_tile_name,
)
from las_builder.world.imagery import RegionImagery, Scene, _grid_fields
from las_builder.world.noise import rng_for, uniform_field
from las_builder.world.render import resample

_COG = "image/tiff; application=geotiff; profile=cloud-optimized"
_WORLDCOVER_VERSIONS = {2020: ("v100", "1.0.0"), 2021: ("v200", "2.0.0")}


def apply_confusion(
    classes: np.ndarray,
    product: WorldProduct,
    truth: Truth,
    pixel_m: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Map truth class ids to a product's native codes, confusing them in coherent patches.

    Args:
        classes: Truth class ids on the product grid (0 = outside the truth).
        product: The product's world definition (its confusion table).
        truth: The truth legend.
        pixel_m: Approximate pixel size of the grid in metres (sets the patch size).
        rng: Random generator for the patches.

    Returns:
        Native codes, the product's nodata outside the truth.
    """
    out = np.full(classes.shape, product.nodata, dtype=np.dtype(product.dtype))
    u = uniform_field(rng, classes.shape, product.patch_m / pixel_m)
    for name, table in product.confusion.items():
        cls = truth.by_name(name)
        where = classes == cls.id
        if not where.any():
            continue
        # A class-specific shift keeps the marginal uniform but decorrelates classes' patches.
        draw = (u[where] + 0.6180339 * cls.id) % 1.0
        total = sum(table.values())
        codes = np.fromiter(table, dtype=np.int64)
        edges = np.cumsum(np.fromiter(table.values(), dtype=np.float64)) / total
        out[where] = codes[np.minimum(np.searchsorted(edges, draw, side="right"), codes.size - 1)]
    return out


def _classification(legend: LabelProduct, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The legend as ``classification:classes``, with only the fields the real catalog writes."""
    classes = []
    for c in legend.classes:
        values: dict[str, Any] = {
            "value": c.value,
            "name": c.key,
            "description": c.name,
            "color-hint": c.color[1:].upper() if c.color else None,
            "color_hint": c.color[1:].upper() if c.color else None,
            # Flags are written only where true, as the real collections do.
            "nodata": c.is_nodata or None,
            "no_data": c.is_nodata or None,
            "regional": c.regional or None,
        }
        classes.append({f: values[f] for f in fields if values[f] is not None})
    return classes


def _file_values(legend: LabelProduct) -> list[dict[str, Any]]:
    return [{"values": [c.value], "summary": c.name} for c in legend.classes]


def _year_span(year: int) -> dict[str, Any]:
    return {
        "datetime": None,
        "start_datetime": f"{year}-01-01T00:00:00Z",
        "end_datetime": f"{year}-12-31T23:59:59Z",
    }


def _label_asset(
    href: Path, grid: GeoBox, legend: LabelProduct, product: WorldProduct, title: str
) -> dict[str, Any]:
    stac = product.stac
    asset: dict[str, Any] = {"href": str(href), "type": _COG, "title": title, "roles": ["data"]}
    if stac.description:
        asset["description"] = stac.description
    if stac.band_in == "asset":
        band = {"data_type": product.dtype, "nodata": product.nodata, **stac.band}
        asset["raster:bands"] = [band]
    asset.update(_grid_fields(grid))
    if stac.legend == "file:values":
        asset["file:values"] = _file_values(legend)
    else:
        asset["classification:classes"] = _classification(legend, stac.class_fields)
    return asset


def _label_scene(
    product: WorldProduct,
    collection: str,
    item_id: str,
    when: dt.datetime,
    grid: GeoBox,
    properties: dict[str, Any],
) -> Scene:
    """A label product's scene, declaring the classification extension version it writes."""
    scene = Scene(collection, item_id, when, grid, properties)
    scene.extensions["classification"] = product.stac.extension
    return scene


def render_labels(
    state: RegionImagery,
    preset: Preset,
    s2_scenes: list[Scene],
    world_dir: Path,
    seed: int,
) -> list[Scene]:
    """Render every label product of one region and return their scenes."""
    products = load_products()
    dominant = state.dominant()  # the 10 m mode of the truth
    metres_per_degree = 111_320.0
    scenes: list[Scene] = []
    region = state.region.id

    def classes_on(grid: GeoBox, coarse: bool) -> np.ndarray:
        resampling = Resampling.mode if coarse else Resampling.nearest
        return resample(dominant, state.grid10, grid, resampling, 0)

    # ESA WorldCover and ESA CCI: tiles of a global geographic lattice.
    for pid in ("esa-worldcover", "esa-cci-lc"):
        product, legend = products[pid], load_label_product(pid)
        pixel = product.grid.pixel_deg or 0.0
        tile_px = round((product.grid.tile_deg or 0.0) / pixel)
        for year in preset.years.get(pid, ()):
            for piece in lonlat_pieces(state.truth_geobox):
                for tile in lattice_tiles(piece, 4326, (-180.0, 90.0), pixel, tile_px):
                    name = worldcover_tile_name(tile, product.grid.tile_deg or 0.0)
                    classes = classes_on(tile.geobox, coarse=pixel * metres_per_degree > 15)
                    rng = rng_for(seed, pid, region, year, name)
                    codes = apply_confusion(
                        classes, product, state.legend, pixel * metres_per_degree, rng
                    )
                    if pid == "esa-worldcover":
                        version, semver = _WORLDCOVER_VERSIONS[year]
                        item_id = f"ESA_WorldCover_10m_{year}_{version}_{name}"
                        href = Path(f"assets/esa-worldcover/{version}/{year}/map/{item_id}_Map.tif")
                        props = {
                            "esa_worldcover:product_tile": name,
                            "esa_worldcover:product_version": semver,
                            "mission": "sentinel-1, sentinel-2",
                            "proj:epsg": 4326,
                        }
                        key, title = "map", "Land Cover Classes"
                    else:
                        item_id = f"C3S-LC-L4-LCCS-Map-300m-P1Y-{year}-v2.1.1-{name}"
                        href = Path(f"assets/esa-cci-lc/{year}/{item_id}.tif")
                        props = {
                            "esa_cci_lc:version": "2.1.1",
                            "esa_cci_lc:tile": name,
                            "proj:epsg": 4326,
                        }
                        key, title = (
                            "lccs_class",
                            "Land Cover Class Defined in the Land Cover Classification System",
                        )
                    write_cog(
                        world_dir / href,
                        codes,
                        tile.geobox,
                        nodata=product.nodata,
                        categorical=True,
                    )
                    scene = _label_scene(
                        product,
                        pid,
                        item_id,
                        dt.datetime(year, 1, 1, tzinfo=dt.UTC),
                        tile.geobox,
                        {**_year_span(year), **props},
                    )
                    scene.assets[key] = _label_asset(href, tile.geobox, legend, product, title)
                    scenes.append(scene)

    # MODIS MCD12Q1: sinusoidal 10 x 10 degree tiles.
    pid = "modis-12Q1-061"
    product, legend = products[pid], load_label_product(pid)
    pixel = product.grid.resolution_m or 0.0
    for year in preset.years.get(pid, ()):
        for piece in lonlat_pieces(state.truth_geobox):
            bounds = sinusoidal_bounds(piece)
            for tile in lattice_tiles(
                bounds, MODIS_SINUSOIDAL, MODIS_ORIGIN, pixel, product.grid.tile_px or 2400
            ):
                hv = f"h{tile.column:02d}v{tile.row:02d}"
                classes = classes_on(tile.geobox, coarse=True)
                codes = apply_confusion(
                    classes, product, state.legend, pixel, rng_for(seed, pid, region, year, hv)
                )
                item_id = f"MCD12Q1.A{year}001.{hv}.061"
                href = Path(f"assets/modis-12Q1-061/MCD12Q1.061/{year}/{item_id}.tif")
                write_cog(
                    world_dir / href, codes, tile.geobox, nodata=product.nodata, categorical=True
                )
                props = {
                    **_year_span(year),
                    "modis:horizontal-tile": tile.column,
                    "modis:vertical-tile": tile.row,
                    "modis:tile-id": f"51{tile.column:03d}{tile.row:03d}",
                    "platform": "terra",
                    "instruments": ["modis"],
                    "proj:wkt2": MODIS_SINUSOIDAL.to_wkt(),
                }
                scene = _label_scene(
                    product,
                    pid,
                    item_id,
                    dt.datetime(year, 1, 1, tzinfo=dt.UTC),
                    tile.geobox,
                    props,
                )
                scene.assets["LC_Type1"] = _label_asset(
                    href,
                    tile.geobox,
                    legend,
                    product,
                    "Land Cover Type 1: Annual International Geosphere-Biosphere Programme "
                    "(IGBP) classification",
                )
                scenes.append(scene)

    # Esri 10 m annual LULC: one 10 m UTM grid per zone the region touches.
    pid = "io-lulc-annual-v02"
    product, legend = products[pid], load_label_product(pid)
    for year in preset.years.get(pid, ()):
        for grid in state.tiles:
            assert grid.crs is not None  # every grid of the world has a CRS
            zone = int(str(grid.crs.epsg)[-2:])
            tile_name = mgrs_tile(state.region.lon, state.region.lat, zone)[:3]
            classes = classes_on(grid, coarse=False)
            codes = apply_confusion(
                classes, product, state.legend, 10.0, rng_for(seed, pid, region, year, tile_name)
            )
            item_id = f"{tile_name}-{year}"
            href = Path(
                f"assets/io-lulc-annual-v02/{year}/{tile_name}_{year}0101-{year + 1}0101.tif"
            )
            write_cog(world_dir / href, codes, grid, nodata=product.nodata, categorical=True)
            props = {
                **_year_span(year),
                "io:tile_id": tile_name,
                "io:supercell_id": tile_name,
                "proj:epsg": grid.crs.epsg,
            }
            scene = _label_scene(
                product, pid, item_id, dt.datetime(year, 1, 1, tzinfo=dt.UTC), grid, props
            )
            scene.assets["data"] = _label_asset(
                href, grid, legend, product, "Global land cover data"
            )
            scenes.append(scene)

    # Dynamic World: one label image per Sentinel-2 scene, masked under clouds.
    pid = "dynamic-world-v1"
    product, legend = products[pid], load_label_product(pid)
    for s2 in s2_scenes:
        grid = s2.geobox
        assert grid.crs is not None  # every grid of the world has a CRS
        classes = classes_on(grid, coarse=False)
        codes = apply_confusion(
            classes, product, state.legend, 10.0, rng_for(seed, pid, s2.item_id)
        )
        if s2.cloud_mask is not None:
            codes[s2.cloud_mask] = product.nodata
        stamp = s2.datetime.strftime("%Y%m%dT%H%M%S")
        item_id = f"{stamp}_{stamp}_T{s2.properties['s2:mgrs_tile']}"
        href = Path(f"assets/dynamic-world-v1/{s2.datetime:%Y/%m/%d}/{item_id}_label.tif")
        write_cog(world_dir / href, codes, grid, nodata=product.nodata, categorical=True)
        props = {
            "s2:mgrs_tile": s2.properties["s2:mgrs_tile"],
            "dynamicworld:s2_item": s2.item_id,
            "proj:epsg": grid.crs.epsg,
        }
        scene = _label_scene(product, pid, item_id, s2.datetime, grid, props)
        scene.assets["label"] = _label_asset(
            href, grid, legend, product, "Dynamic World label (class of highest probability)"
        )
        scenes.append(scene)
    return scenes
