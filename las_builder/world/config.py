"""Typed views of the world's plain data in ``catalog/world/`` and ``catalog/sensors/``."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from las_builder._paths import catalog_dir

_Model = TypeVar("_Model", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TruthClass(_Strict):
    """One ground-truth class and how each sensor sees it."""

    id: int = Field(ge=1, le=254)
    name: str
    description: str
    color: str
    reflectance: tuple[float, ...]
    backscatter: tuple[float, float]
    naip: tuple[int, int, int, int]
    scl: int


class Truth(_Strict):
    """The truth legend of the world."""

    nodata: int
    bands: tuple[str, ...]
    classes: tuple[TruthClass, ...]

    def by_name(self, name: str) -> TruthClass:
        """Return the class called ``name``."""
        for cls in self.classes:
            if cls.name == name:
                return cls
        raise KeyError(f"no truth class {name!r}; known: {[c.name for c in self.classes]}")


class Biome(_Strict):
    """Landscape parameters of one biome (see ``catalog/world/biomes.yaml``)."""

    lake_fraction: float = Field(ge=0, lt=1)
    rivers: int = Field(ge=0)
    river_width_m: tuple[float, float]
    agricultural_fraction: float = Field(ge=0, le=1)
    field_classes: dict[str, float]
    field_size_m: tuple[float, float]
    natural: dict[str, float]
    bare_fraction: float = Field(ge=0, lt=1)
    snow_fraction: float = Field(ge=0, lt=1)
    wetland_fraction: float = Field(ge=0, lt=1)
    wetland_class: str
    towns: int = Field(ge=0)
    town_radius_m: tuple[float, float]
    roads: int = Field(ge=0)


class Region(_Strict):
    """A region of the world: a square of truth around a centre point."""

    id: str = Field(pattern=r"^[a-z0-9-]+$")
    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-80, le=84)
    biome: str
    naip: bool = False


class DatedScenes(_Strict):
    """Acquisition dates (and cloud cover targets) of an imagery collection."""

    dates: tuple[str, ...]
    cloud_cover: tuple[float, ...] = ()


class Preset(_Strict):
    """A world size preset (``catalog/world/presets/<name>.yaml``)."""

    truth_resolution_m: float
    region_size_m: float
    naip_extent_m: float
    sentinel2: DatedScenes
    sentinel1: DatedScenes
    years: dict[str, tuple[int, ...]]
    regions: tuple[Region, ...]


class ProductGrid(_Strict):
    """The native grid family of a label product."""

    kind: Literal["utm", "geographic", "sinusoidal"]
    resolution_m: float | None = None
    pixel_deg: float | None = None
    tile_deg: float | None = None
    tile_px: int | None = None


ClassField = Literal[
    "value", "name", "description", "color-hint", "color_hint", "nodata", "no_data", "regional"
]


class ProductStac(_Strict):
    """How the product's real STAC collection writes its legend and its band.

    Attributes:
        legend: ``classification:classes`` (one object per class) or ``file:values``.
        extension: The classification extension's schema path (``classification/v1.1.0``).
        class_fields: Fields each class object has, in the extension's spelling: ``name`` is
            the legend's ``key``, ``description`` its ``name``, ``color-hint``/``color_hint``
            its colour, ``nodata``/``no_data``/``regional`` its flags (written when true).
        band: ``raster:bands`` fields besides ``data_type`` and ``nodata``.
        band_in: Where ``raster:bands`` is written: on each item's asset, or only in the
            collection's ``summaries`` (with ``nodata`` and ``band``, as Planetary Computer's
            io-lulc-annual-v02 does).
        description: The data asset's ``description``, if the real catalog gives one.
    """

    legend: Literal["classification:classes", "file:values"] = "classification:classes"
    extension: str = "classification/v1.0.0"
    class_fields: tuple[ClassField, ...] = ("value", "description", "name", "color-hint", "nodata")
    band: dict[str, Any] = Field(default_factory=lambda: {"sampling": "area"})
    band_in: Literal["asset", "summaries"] = "asset"
    description: str | None = None


class WorldProduct(_Strict):
    """How the world derives a label product from its truth."""

    grid: ProductGrid
    dtype: str
    nodata: int
    patch_m: float
    per_scene: bool = False
    stac: ProductStac = Field(default_factory=ProductStac)
    confusion: dict[str, dict[int, float]]


def _load_yaml(path: Path) -> Any:
    try:
        with path.open() as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing from the catalog") from None


def _validate(model: type[_Model], data: Any, path: Path) -> _Model:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: field {field!r}: {first['msg']}") from None


@cache
def load_truth() -> Truth:
    """Load ``catalog/world/truth.yaml``."""
    path = catalog_dir() / "world" / "truth.yaml"
    return _validate(Truth, _load_yaml(path), path)


@cache
def load_biomes() -> dict[str, Biome]:
    """Load ``catalog/world/biomes.yaml``."""
    path = catalog_dir() / "world" / "biomes.yaml"
    return {k: _validate(Biome, v, path) for k, v in _load_yaml(path).items()}


@cache
def load_products() -> dict[str, WorldProduct]:
    """Load ``catalog/world/products.yaml``."""
    path = catalog_dir() / "world" / "products.yaml"
    return {k: _validate(WorldProduct, v, path) for k, v in _load_yaml(path).items()}


def preset_names() -> list[str]:
    """Names of the available world presets."""
    return sorted(p.stem for p in (catalog_dir() / "world" / "presets").glob("*.yaml"))


def load_preset(name: str) -> Preset:
    """Load a world size preset by name."""
    path = catalog_dir() / "world" / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(preset_names())}")
    preset: Preset = _validate(Preset, _load_yaml(path), path)
    biomes = load_biomes()
    for region in preset.regions:
        if region.biome not in biomes:
            raise ValueError(
                f"{path}: region {region.id!r} has biome {region.biome!r}; "
                f"known biomes: {', '.join(sorted(biomes))}"
            )
    return preset


@cache
def load_collection_texts() -> dict[str, dict[str, Any]]:
    """Load ``catalog/world/collections.yaml``: each collection's texts, by collection id."""
    texts: dict[str, dict[str, Any]] = _load_yaml(catalog_dir() / "world" / "collections.yaml")
    return texts


def load_sensor(sensor_id: str) -> dict[str, Any]:
    """Load a sensor definition from ``catalog/sensors/<id>.yaml`` as plain data."""
    from las_builder.imagery import sensor

    return sensor(sensor_id)
