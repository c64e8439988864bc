"""Imagery of the world: Sentinel-2 L2A, Sentinel-1 RTC and NAIP rendered from the truth."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from rasterio.warp import Resampling

from las_builder.world.cog import write_cog
from las_builder.world.config import (
    Preset,
    Region,
    Truth,
    load_collection_texts,
    load_sensor,
)
from las_builder.world.grids import mgrs_tile, snapped_geobox, utm_geobox, utm_zones
from las_builder.world.noise import rng_for, smooth_field, uniform_field
from las_builder.world.render import block_mean, class_fractions, resample

_S2_FACTOR = 5  # truth pixels (2 m) per 10 m pixel


@dataclass
class Scene:
    """One generated acquisition: where its files are and what its STAC item says."""

    collection: str
    item_id: str
    datetime: dt.datetime
    geobox: GeoBox  # the finest grid of the scene
    properties: dict[str, Any]
    assets: dict[str, dict[str, Any]] = field(default_factory=dict)
    cloud_mask: np.ndarray | None = None  # 10 m cloud/shadow mask (Sentinel-2), not published
    # Extension schema paths other than the defaults of world.stac, by prefix (the real
    # catalog's version, e.g. "classification": "classification/v1.1.0").
    extensions: dict[str, str] = field(default_factory=dict)


def _grid_fields(geobox: GeoBox) -> dict[str, Any]:
    t = geobox.transform
    return {
        "proj:shape": list(geobox.shape.yx),
        "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "proj:bbox": list(geobox.boundingbox),
    }


def _tile_geoboxes(truth_geobox: GeoBox, region: Region) -> list[GeoBox]:
    """10 m UTM grids of every zone the region touches (60 m aligned, like S2 tiles)."""
    south = region.lat < 0
    out = []
    for zone in utm_zones(truth_geobox):
        g60 = utm_geobox(truth_geobox, zone, 60.0, south)
        out.append(
            GeoBox((g60.shape.y * 6, g60.shape.x * 6), g60.transform * Affine.scale(1 / 6), g60.crs)
        )
    return out


def _coarsen(geobox: GeoBox, factor: int) -> GeoBox:
    return GeoBox(
        (geobox.shape.y // factor, geobox.shape.x // factor),
        geobox.transform * Affine.scale(factor),
        geobox.crs,
    )


class RegionImagery:
    """Per-region rendering state shared by the imagery products."""

    def __init__(
        self, region: Region, truth: np.ndarray, truth_geobox: GeoBox, legend: Truth
    ) -> None:
        self.region = region
        self.truth = truth
        self.truth_geobox = truth_geobox
        self.legend = legend
        n = max(c.id for c in legend.classes)
        self.fractions = class_fractions(truth, _S2_FACTOR, n)  # (n + 1, h, w) at 10 m
        self.grid10 = _coarsen(truth_geobox, _S2_FACTOR)
        self.valid = self.fractions[0] < 0.5
        self.tiles = _tile_geoboxes(truth_geobox, region)

    def mix(self, table: np.ndarray) -> np.ndarray:
        """Linear mixture of per-class values (n + 1, bands) by class fraction at 10 m."""
        out: npt.NDArray[np.float32] = np.einsum(
            "khw,kb->bhw", self.fractions[1:], table[1:].astype(np.float32)
        )
        out /= np.maximum(1.0 - self.fractions[0], 1e-6)[None]
        out[:, ~self.valid] = np.nan
        return out

    def dominant(self) -> np.ndarray:
        """Dominant truth class at 10 m (0 where mostly nodata)."""
        dom: npt.NDArray[np.uint8] = np.argmax(self.fractions[1:], axis=0).astype(np.uint8) + 1
        dom[~self.valid] = 0
        return dom

    def class_table(self, attribute: str, width: int) -> np.ndarray:
        """Per-class values of a truth attribute, indexed by class id."""
        table = np.zeros((max(c.id for c in self.legend.classes) + 1, width), dtype=np.float32)
        for c in self.legend.classes:
            table[c.id] = np.atleast_1d(getattr(c, attribute))
        return table


def render_sentinel2(
    state: RegionImagery, preset: Preset, world_dir: Path, seed: int
) -> list[Scene]:
    """Render the Sentinel-2 L2A scenes of a region (one tile per UTM zone it touches)."""
    sensor = load_sensor("sentinel-2-l2a")
    bands = sensor["bands"]
    reflectance = state.mix(state.class_table("reflectance", len(bands)))
    scl_base = state.class_table("scl", 1)[:, 0].astype(np.uint8)[state.dominant()]
    scl_base[~state.valid] = 0
    scenes = []
    for tile_geobox in state.tiles:
        assert tile_geobox.crs is not None  # every grid of the world has a CRS
        zone = int(str(tile_geobox.crs.epsg)[-2:])
        tile = mgrs_tile(state.region.lon, state.region.lat, zone)
        refl = resample(reflectance, state.grid10, tile_geobox, Resampling.bilinear, np.nan)
        scl_tile = resample(scl_base, state.grid10, tile_geobox, Resampling.nearest, 0)
        for i, date in enumerate(preset.sentinel2.dates):
            when = dt.datetime.fromisoformat(date).replace(
                hour=10, minute=36, second=21, tzinfo=dt.UTC
            )
            rng = rng_for(seed, "s2", state.region.id, tile, date)
            target = preset.sentinel2.cloud_cover[i % len(preset.sentinel2.cloud_cover)]
            scene_refl, scl = _add_atmosphere(refl, scl_tile, target, rng)
            baseline = "04.00" if when >= dt.datetime(2022, 1, 25, tzinfo=dt.UTC) else "03.01"
            offset = (
                sensor["boa_offset"]["dn"]
                if baseline >= sensor["boa_offset"]["from_baseline"]
                else 0
            )
            platform = "Sentinel-2A" if i % 2 == 0 else "Sentinel-2B"
            orbit = 22 + (hash_small(state.region.id) % 100)
            stamp = when.strftime("%Y%m%dT%H%M%S")
            item_id = f"S2{platform[-1]}_MSIL2A_{stamp}_R{orbit:03d}_T{tile}_{when:%Y%m%d}T235959"
            folder = (
                Path("assets/sentinel-2-l2a")
                / tile[:2]
                / tile[2]
                / tile[3:]
                / f"{when:%Y/%m/%d}"
                / item_id
            )
            valid_px = scl > 0
            cloudy = np.isin(scl, (8, 9, 10)) & valid_px
            cloud_cover = round(100.0 * cloudy.sum() / max(valid_px.sum(), 1), 2)
            scene = Scene(
                "sentinel-2-l2a",
                item_id,
                when,
                tile_geobox,
                {
                    "platform": platform,
                    "constellation": "Sentinel 2",
                    "instruments": ["msi"],
                    "eo:cloud_cover": cloud_cover,
                    "proj:epsg": tile_geobox.crs.epsg,
                    "s2:mgrs_tile": tile,
                    "s2:processing_baseline": baseline,
                    "s2:product_type": "S2MSI2A",
                    "s2:nodata_pixel_percentage": round(100.0 * (~valid_px).mean(), 4),
                    "sat:orbit_state": "descending",
                    "sat:relative_orbit": orbit,
                },
            )
            for band in bands:
                factor = int(band["gsd"] // 10)
                index = [b["name"] for b in bands].index(band["name"])
                values = scene_refl[index] if factor == 1 else block_mean(scene_refl[index], factor)
                dn = np.where(
                    np.isnan(values), 0, np.clip(np.round(values * 10000) + offset, 1, 65535)
                )
                grid = tile_geobox if factor == 1 else _coarsen(tile_geobox, factor)
                name = f"T{tile}_{stamp}_{band['name']}_{band['gsd']}m.tif"
                write_cog(
                    world_dir / folder / name,
                    dn.astype(np.uint16),
                    grid,
                    nodata=0,
                    categorical=False,
                )
                scene.assets[band["name"]] = {
                    "href": str(folder / name),
                    "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                    "title": f"{band['description']} - {band['gsd']}m",
                    "roles": ["data"],
                    "gsd": float(band["gsd"]),
                    "eo:bands": [_eo_band(band)],
                    **_grid_fields(grid),
                }
            grid20 = _coarsen(tile_geobox, 2)
            name = f"T{tile}_{stamp}_SCL_20m.tif"
            write_cog(world_dir / folder / name, scl[::2, ::2], grid20, nodata=0, categorical=True)
            scene.assets["SCL"] = {
                "href": str(folder / name),
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "title": "Scene classfication map (SCL)",
                "roles": ["data"],
                "gsd": 20.0,
                **_grid_fields(grid20),
            }
            scene.cloud_mask = np.isin(scl, (3, 8, 9, 10))
            scenes.append(scene)
    return scenes


def hash_small(text: str) -> int:
    """A small stable integer from a string."""
    return sum(ord(ch) * (i + 1) for i, ch in enumerate(text))


def _eo_band(band: dict[str, Any]) -> dict[str, Any]:
    out = {
        "name": band["name"],
        "description": band["description"],
        "center_wavelength": band["center_wavelength"],
        "full_width_half_max": band["full_width_half_max"],
    }
    if band.get("common_name"):
        out["common_name"] = band["common_name"]
    return out


def _add_atmosphere(
    refl: np.ndarray, scl: np.ndarray, cloud_target: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Clouds, their shadows, thin cirrus and sensor noise, with the SCL that flags them."""
    shape = refl.shape[1:]
    # float32 at run time (NEP 50); numpy's stubs widen some of the steps below to float64.
    out: npt.NDArray[np.floating[Any]] = refl * np.float32(rng.uniform(0.97, 1.03))
    out *= 1 + 0.03 * smooth_field(rng, shape, 8)[None]
    out += rng.normal(0, 0.004, size=refl.shape).astype(np.float32)
    scl = scl.copy()
    if cloud_target > 0:
        density = uniform_field(rng, shape, 40)  # clouds ~400 m across
        alpha = np.clip((density - (1 - cloud_target / 100)) / 0.08, 0, 1)
        shift = (int(rng.integers(8, 25)), int(rng.integers(8, 25)))
        shadow = np.roll(alpha, shift, axis=(0, 1)) > 0.3
        shadow &= alpha < 0.05
        cirrus = (uniform_field(rng, shape, 80) > 1 - cloud_target / 400) & (alpha < 0.05)
        cloud_refl = np.linspace(0.55, 0.35, refl.shape[0], dtype=np.float32)[:, None, None]
        out = out * (1 - alpha) + cloud_refl * alpha
        out[:, shadow] *= 0.35
        out[:, cirrus] += 0.04
        valid = scl > 0
        scl[valid & shadow] = 3
        scl[valid & cirrus] = 10
        scl[valid & (alpha > 0.3)] = 8
        scl[valid & (alpha > 0.7)] = 9
    out[:, scl == 0] = np.nan
    return np.clip(out, 0.0001, 1.5), scl


def render_sentinel1(
    state: RegionImagery, preset: Preset, world_dir: Path, seed: int
) -> list[Scene]:
    """Render Sentinel-1 RTC VV/VH scenes (float32 linear gamma0), ascending and descending."""
    sensor = load_sensor("sentinel-1-rtc")
    nodata = float(sensor["nodata"])
    descriptions = load_collection_texts()["sentinel-1-rtc"]["asset_descriptions"]
    linear = state.mix(10 ** (state.class_table("backscatter", 2) / 10))
    scenes = []
    for tile_geobox in state.tiles:
        # UTM tiles: always a CRS with an EPSG code
        assert tile_geobox.crs is not None and tile_geobox.crs.epsg is not None
        power = resample(linear, state.grid10, tile_geobox, Resampling.bilinear, np.nan)
        for i, date in enumerate(preset.sentinel1.dates):
            ascending = i % 2 == 0
            hour = 18 if ascending else 6
            when = dt.datetime.fromisoformat(date).replace(
                hour=hour, minute=4, second=11, tzinfo=dt.UTC
            )
            rng = rng_for(seed, "s1", state.region.id, tile_geobox.crs.epsg, date)
            looks = 4.4
            speckle = rng.gamma(looks, 1 / looks, size=power.shape).astype(np.float32)
            gain = np.float32(10 ** (rng.uniform(-0.3, 0.3) / 10))
            scene_power = np.where(np.isnan(power), nodata, power * speckle * gain).astype(
                np.float32
            )
            stamp = when.strftime("%Y%m%dT%H%M%S")
            orbit_abs = 38000 + hash_small(f"{state.region.id}{date}{tile_geobox.crs.epsg}") % 9000
            end = f"{stamp[:9]}{hour:02d}0436"
            datatake = f"04{orbit_abs % 4096:04X}"
            item_id = f"S1A_IW_GRDH_1SDV_{stamp}_{end}_{orbit_abs:06d}_{datatake}_rtc"
            epsg = tile_geobox.crs.epsg
            folder = Path("assets/sentinel-1-rtc") / f"{when:%Y/%m/%d}" / "IW" / "DV" / item_id
            scene = Scene(
                "sentinel-1-rtc",
                item_id,
                when,
                tile_geobox,
                {
                    "platform": "SENTINEL-1A",
                    "constellation": "Sentinel-1",
                    "proj:epsg": epsg,
                    "sar:instrument_mode": "IW",
                    "sar:polarizations": ["VV", "VH"],
                    "sar:product_type": "GRD",
                    "sar:frequency_band": "C",
                    "sar:center_frequency": 5.405,
                    "sar:resolution_range": 20,
                    "sar:resolution_azimuth": 22,
                    "sar:pixel_spacing_range": 10,
                    "sar:pixel_spacing_azimuth": 10,
                    "sar:looks_equivalent_number": looks,
                    "sar:observation_direction": "right",
                    "sat:orbit_state": "ascending" if ascending else "descending",
                    "sat:absolute_orbit": orbit_abs,
                    "sat:relative_orbit": orbit_abs % 175 + 1,
                    "s1:processing_level": "1",
                    "s1:resolution": "high",
                    "s1:product_timeliness": "Fast-24h",
                },
            )
            for index, band in enumerate(sensor["bands"]):
                name = f"{band['name']}.tif"
                write_cog(
                    world_dir / folder / name,
                    scene_power[index],
                    tile_geobox,
                    nodata=nodata,
                    categorical=False,
                )
                scene.assets[band["name"]] = {
                    "href": str(folder / name),
                    "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                    "title": band["description"],
                    "description": descriptions[band["name"]],
                    "roles": ["data"],
                    # An integral nodata is a JSON integer there (-32768), not -32768.0.
                    "raster:bands": [
                        {
                            "data_type": "float32",
                            "nodata": int(nodata) if nodata.is_integer() else nodata,
                            "spatial_resolution": 10,
                        }
                    ],
                    **_grid_fields(tile_geobox),
                }
            scenes.append(scene)
    return scenes


def render_naip(state: RegionImagery, preset: Preset, world_dir: Path, seed: int) -> list[Scene]:
    """Render a NAIP 4-band 0.6 m image (NAD83 UTM) over the centre of a US region."""
    sensor = load_sensor("naip")
    gsd = float(sensor["gsd"])
    assert state.truth_geobox.crs is not None  # every grid of the world has a CRS
    zone = int(str(state.truth_geobox.crs.epsg)[-2:])
    epsg = 26900 + zone
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(
        state.region.lon, state.region.lat
    )
    half = preset.naip_extent_m / 2
    grid = snapped_geobox((x - half, y - half, x + half, y + half), epsg, gsd)
    classes = resample(state.truth, state.truth_geobox, grid, Resampling.nearest, 0)
    rng = rng_for(seed, "naip", state.region.id)
    colours = state.class_table("naip", 4)
    texture = smooth_field(rng, grid.shape.yx, 6)  # crowns, furrows, roofs
    image = colours[classes].transpose(2, 0, 1)
    image += 14 * texture[None]
    image += rng.integers(-6, 7, size=image.shape, dtype=np.int16).astype(np.float32)
    image = np.clip(np.round(image), 1, 255).astype(np.uint8)
    image[:, classes == 0] = 0
    year = 2021
    lat, lon = int(abs(state.region.lat)), int(abs(state.region.lon))
    # A 1 degree block's 64 quarter quads are numbered 01..64, as in NAIP file names.
    quad = f"{lat:02d}{lon:03d}{hash_small(state.region.id) % 64 + 1:02d}"
    state_code = {"iowa-us": "ia", "california-us": "ca"}.get(state.region.id, "us")
    name = f"m_{quad}_ne_{zone}_060_{year}0718"
    item_id = f"{state_code}_{name}_{year}1019"  # Planetary Computer adds the publication date
    href = (
        Path("assets/naip/v002")
        / state_code
        / str(year)
        / f"{state_code}_060cm_{year}"
        / quad[:5]
        / f"{name}.tif"
    )
    write_cog(
        world_dir / href,
        image,
        grid,
        nodata=None,
        categorical=False,
        band_names=["Red", "Green", "Blue", "NIR"],
    )
    t = grid.transform
    scene = Scene(
        "naip",
        item_id,
        dt.datetime(year, 7, 18, tzinfo=dt.UTC),
        grid,
        {
            "gsd": gsd,
            "naip:year": str(year),
            "naip:state": state_code,
            "proj:epsg": epsg,
            "proj:shape": list(grid.shape.yx),
            "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f, 0.0, 0.0, 1.0],
            "proj:bbox": list(grid.boundingbox),
        },
    )
    descriptions = load_collection_texts()["naip"]["band_descriptions"]
    bands = []
    for b in sensor["bands"]:
        band = {"name": b["name"], "common_name": b["common_name"]}
        if b["name"] in descriptions:
            band["description"] = descriptions[b["name"]]
        bands.append(band)
    scene.assets["image"] = {
        "href": str(href),
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "title": "RGBIR COG tile",
        "roles": ["data"],
        "eo:bands": bands,
    }
    return [scene]
