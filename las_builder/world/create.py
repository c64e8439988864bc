"""``las world create``: generate a deterministic offline world."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from las_builder import __version__
from las_builder.world.cog import write_cog
from las_builder.world.config import Region, load_biomes, load_preset, load_truth
from las_builder.world.imagery import (
    RegionImagery,
    Scene,
    render_naip,
    render_sentinel1,
    render_sentinel2,
)
from las_builder.world.labels import render_labels
from las_builder.world.stac import write_stac
from las_builder.world.truth import generate_truth, region_geobox

WORLD_VERSION = 1
MANIFEST = "world.json"


def _epsg(geobox: GeoBox) -> int | None:
    """EPSG code of the CRS of a grid of the world (every grid of the world has a CRS)."""
    assert geobox.crs is not None
    return geobox.crs.epsg


def _truth_scene(region: Region, truth: np.ndarray, state: RegionImagery, world_dir: Path) -> Scene:
    legend = load_truth()
    href = Path("truth") / f"{region.id}.tif"
    write_cog(world_dir / href, truth, state.truth_geobox, nodata=legend.nodata, categorical=True)
    t = state.truth_geobox.transform
    scene = Scene(
        "las-world-truth",
        f"truth-{region.id}",
        dt.datetime(2021, 7, 1, tzinfo=dt.UTC),
        state.truth_geobox,
        {
            "las:region": region.id,
            "las:biome": region.biome,
            "proj:epsg": _epsg(state.truth_geobox),
        },
    )
    scene.assets["truth"] = {
        "href": str(href),
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "title": "Ground-truth land cover",
        "roles": ["data"],
        "proj:shape": list(state.truth_geobox.shape.yx),
        "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "classification:classes": [
            {
                "value": c.id,
                "name": c.name,
                "description": c.description,
                "color-hint": c.color[1:].upper(),
            }
            for c in legend.classes
        ],
    }
    return scene


def _build_region(world_dir: Path, preset_name: str, region_index: int, seed: int) -> list[Scene]:
    preset = load_preset(preset_name)
    region = preset.regions[region_index]
    legend = load_truth()
    geobox = region_geobox(region, preset.region_size_m, preset.truth_resolution_m)
    truth = generate_truth(region, geobox, load_biomes()[region.biome], legend, seed)
    state = RegionImagery(region, truth, geobox, legend)
    scenes = [_truth_scene(region, truth, state, world_dir)]
    s2 = render_sentinel2(state, preset, world_dir, seed)
    scenes += s2
    scenes += render_sentinel1(state, preset, world_dir, seed)
    if region.naip:
        scenes += render_naip(state, preset, world_dir, seed)
    scenes += render_labels(state, preset, s2, world_dir, seed)
    for scene in scenes:
        scene.cloud_mask = None  # not published; keep the pickles small
    return scenes


def create_world(
    world_dir: Path,
    seed: int = 0,
    preset: str = "demo",
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, Any]:
    """Generate the offline world into ``world_dir``.

    Args:
        world_dir: Output folder; must not exist or be empty.
        seed: Random seed. The same seed and preset give byte-identical files.
        preset: Size preset name (``catalog/world/presets``).
        progress: Show a progress bar.
        workers: Processes to use (default: the number of CPUs, at most the regions).

    Returns:
        The manifest written to ``world_dir/world.json``.

    Raises:
        FileExistsError: ``world_dir`` exists and is not empty.
        ValueError: An unknown preset, ``world_dir`` is a file, or it cannot be written (the
            message names the folder and the reason).
    """
    spec = load_preset(preset)
    world_dir = Path(world_dir)
    if world_dir.exists() and not world_dir.is_dir():
        raise ValueError(f"{world_dir} is a file, not a folder: give a new folder for the world")
    if world_dir.exists() and any(world_dir.iterdir()):
        raise FileExistsError(
            f"{world_dir} exists and is not empty: choose a new folder or delete it"
        )
    made = not world_dir.exists()
    try:
        world_dir.mkdir(parents=True, exist_ok=True)
        probe = world_dir / f".{MANIFEST}.tmp"
        probe.write_text("")  # fail now, not after minutes of rendering, if it is read-only
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"cannot write into {world_dir} ({err.strerror or err}): give a folder you can write"
        ) from None
    try:
        return _create(world_dir, spec.regions, seed, preset, progress, workers)
    except BaseException as err:
        # a failed or interrupted create leaves no half world behind (serve would refuse it,
        # and create again would find the folder not empty)
        if made:
            shutil.rmtree(world_dir, ignore_errors=True)
        else:
            for child in list(world_dir.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise ValueError(
                f"cannot write the world into {world_dir} ({err}): free space or "
                "give another folder, then run `las world create` again"
            ) from err
        raise


def _create(
    world_dir: Path,
    regions: tuple[Region, ...],
    seed: int,
    preset: str,
    progress: bool,
    workers: int | None,
) -> dict[str, Any]:
    """Render every region and write the STAC and ``world.json`` (see ``create_world``)."""
    workers = workers or min(os.cpu_count() or 1, len(regions))
    scenes: list[Scene] = []
    with Progress(
        TextColumn("[bold]world[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} regions"),
        TimeElapsedColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task(f"{preset} seed {seed}", total=len(regions))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(_build_region, world_dir, preset, i, seed) for i in range(len(regions))
            ]
            try:
                for future in futures:  # in region order: the result does not depend on timing
                    scenes += future.result()
                    bar.advance(task)
            except BaseException:
                # Ctrl-C or a region's error: the pool's exit would otherwise render every
                # region still queued first (23 s for the demo, minutes for bench).
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    collections = write_stac(world_dir, scenes)
    manifest = {
        "las_world_version": WORLD_VERSION,
        "generator": f"las-builder {__version__}",
        "seed": seed,
        "preset": preset,
        "href_base": "asset hrefs in stac/items are relative to this folder",
        "collections": collections,
        "regions": [
            {
                **region.model_dump(),
                "epsg": _epsg(s.geobox),
                "bounds": list(s.geobox.boundingbox),
                "truth": s.assets["truth"]["href"],
            }
            for region in regions
            for s in scenes
            if s.collection == "las-world-truth" and s.properties["las:region"] == region.id
        ],
    }
    # world.json marks a finished world: written last, and atomically
    tmp = world_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(world_dir / MANIFEST)
    return manifest
