"""The build's view of a recipe: only what reading and writing a sample needs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from las_builder.recipe import Recipe


@dataclass(frozen=True)
class LabelSpec:
    """One label product to read: where it is served and which year (None: per scene)."""

    product: str
    collection: str
    asset: str
    year: int | None


@dataclass(frozen=True)
class BuildConfig:
    """Everything a shard task needs, picklable for dask.distributed workers."""

    stac_url: str
    start: dt.datetime
    end: dt.datetime
    size_px: int
    resolution_m: float
    max_nodata: float
    sign: str = "none"  # "planetary-computer": SAS-sign asset hrefs before reading
    s2_collection: str | None = "sentinel-2-l2a"
    max_cloud: float = 60.0
    composite: str | None = None  # None: the clearest scene; "median": median of the k clearest
    composite_k: int = 3
    s1_collection: str | None = "sentinel-1-rtc"
    s1_units: str = "linear"
    naip_collection: str | None = None
    naip_factor: int = 10
    labels: tuple[LabelSpec, ...] = field(default_factory=tuple)
    backend: str = "stac"  # or "earthengine": pixels from ee.data.computePixels
    ee_auth: Any = None  # las_builder.sources.earthengine.EarthEngineAuth (picklable)
    read_threads: int = 2  # samples of a shard built at a time (their reads overlap)
    compressor: str = "blosc-lz4"  # each sample's chunk (recipe output.compressor)
    run_id: str = ""  # set per `run_build` call: what workers may reuse within one build

    def record_columns(self) -> dict[str, str]:
        """The index columns a sample of this build may fill, in order, with Arrow types.

        Every row has them all (null where a sample stopped early or has no such source), so
        an index's columns depend on the recipe, never on what the build found.
        """
        columns: dict[str, str] = {}
        if self.s2_collection:
            columns |= {"s2_item": "string", "s2_datetime": "string"}
            if self.composite == "median":
                columns["s2_composite_items"] = "string"
            columns["cloud_pct"] = "double"
        if self.s1_collection:
            columns |= dict.fromkeys(("s1_item", "s1_datetime", "s1_orbit_state"), "string")
        if self.naip_collection:
            columns |= {"naip_item": "string", "naip_datetime": "string"}
        columns |= {f"{spec.product}_items": "string" for spec in self.labels}
        if self.labels:
            columns |= {"agreement": "double", "ignore_pct": "double"}
        return columns | {"class_counts": "string", "nodata_pct": "double"}


def config_from_recipe(recipe: Recipe) -> BuildConfig:
    """The build configuration of a validated recipe."""
    naip, s1 = recipe.imagery.naip, recipe.imagery.sentinel_1
    return BuildConfig(
        stac_url=recipe.stac.url,
        sign=recipe.stac.sign,
        start=dt.datetime.combine(recipe.time.start, dt.time.min, tzinfo=dt.UTC),
        end=dt.datetime.combine(recipe.time.end, dt.time.max, tzinfo=dt.UTC),
        size_px=recipe.sample.size_px,
        resolution_m=recipe.sample.resolution_m,
        max_nodata=recipe.max_nodata,
        s2_collection=recipe.imagery.sentinel_2.collection,
        max_cloud=recipe.imagery.sentinel_2.max_cloud,
        composite=recipe.imagery.sentinel_2.composite,
        s1_collection=s1.collection if s1 else None,
        s1_units=s1.units if s1 else "linear",
        naip_collection=naip.collection if naip else None,
        naip_factor=naip.factor if naip else 10,
        labels=tuple(LabelSpec(s.product, s.collection, s.asset, s.year) for s in recipe.labels),
        backend=recipe.backend,
        ee_auth=_ee_auth(recipe) if recipe.backend == "earthengine" else None,
        compressor=recipe.output.compressor,
    )


def _ee_auth(recipe: Recipe) -> Any:
    from las_builder.sources.earthengine import EarthEngineAuth, catalog

    spec = recipe.earthengine
    endpoints = catalog()["endpoints"]
    url = endpoints["high_volume" if spec.endpoint == "high-volume" else "default"]
    return EarthEngineAuth(spec.key_file or None, spec.project, url=url)
