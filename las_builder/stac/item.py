"""One normalised, typed model of a STAC item, whichever catalog it came from.

Microsoft Planetary Computer, Element 84 Earth Search v1 and the project's offline world all
describe scenes with STAC, but they spell the same facts differently: band metadata in
``eo:bands``, ``raster:bands`` or STAC 1.1 ``bands``; the CRS in ``proj:epsg``, ``proj:code``
(projection extension v2), ``proj:wkt2`` or ``proj:projjson``, at asset or item level; legends in
``classification:classes`` (with ``color-hint`` in v1.0 and ``color_hint`` in v1.1) or in
``file:values``; and often only in the collection's ``item_assets``. :func:`parse_item` folds
all of that into :class:`SceneItem`, :class:`AssetInfo` and :class:`BandInfo`, so the code that
chooses scenes and reads windows sees one layout.

Rules worth knowing:

* An item's asset overrides the collection's ``item_assets`` template field by field; bands are
  merged index by index when both sides list the same number of bands.
* Projection fields (``proj:*``) are never taken from ``item_assets``: catalogs such as Earth
  Search put one example tile's ``proj:transform`` there, which is wrong for every other item.
* Item-level projection fields and ``gsd`` are inherited only by raster assets (GeoTIFF,
  JPEG 2000, NetCDF, HDF, Zarr, or untyped ``data`` assets); metadata files and PNG/JPEG
  thumbnails get none.
* ``platform``/``constellation`` are normalised to lower case with hyphens (PC says
  ``"Sentinel-2A"``/``"Sentinel 2"``, Earth Search ``"sentinel-2a"``/``"sentinel-2"``); the
  untouched values stay in :attr:`SceneItem.properties`.
* Scale, offset and nodata are ``None`` when the catalog does not declare them; nothing is
  guessed (PC's Sentinel-2 items declare no ``raster:bands`` at all). A STAC 1.1 asset that
  states ``raster:scale``/``nodata`` on itself, with no band list, is one band.
* An asset inherits the item's ``proj:shape`` and ``proj:transform`` as one grid: restating
  only one of them derives the other over the item's extent; ``proj:bbox`` supplies a
  missing shape and must agree with the grid.
* Relative asset hrefs are resolved against the item's ``self`` link.
* Contradictions are refused with :class:`ItemParseError` rather than resolved by a guess:
  ``proj:epsg`` against an EPSG ``proj:code``, band lists of different lengths, a zero or
  non-finite scale, ``eo:cloud_cover`` off 0..100, ``datetime`` outside its own range, a
  ``bbox`` that does not hold the geometry (a naive min/max bbox of an antimeridian scene is
  replaced by the geometry's). Times without a zone are taken as UTC.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urljoin, urlsplit

import numpy as np
import pystac
import shapely
import shapely.geometry
from pydantic import BaseModel, ConfigDict, ValidationError
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

if TYPE_CHECKING:
    from odc.geo.geobox import GeoBox

__all__ = [
    "AssetInfo",
    "BandInfo",
    "BitField",
    "ClassInfo",
    "ItemParseError",
    "SceneItem",
    "parse_item",
    "parse_item_collection",
]

CollectionLike = Mapping[str, Any] | pystac.Collection
"""A STAC collection as a JSON dict or a :class:`pystac.Collection`."""

_FROZEN = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")

# Media types whose assets are rasters a reader can window into.
_RASTER_MEDIA = ("tiff", "jp2", "netcdf", "x-hdf", "hdf5", "zarr", "grib", "vnd+zarr")
# Fields of STAC 1.1 that an asset may carry for all of its bands at once.
_ASSET_BAND_DEFAULTS = {
    "nodata": "nodata",
    "data_type": "data_type",
    "unit": "unit",
    "raster:scale": "scale",
    "raster:offset": "offset",
    "raster:spatial_resolution": "spatial_resolution",
    "eo:common_name": "common_name",
    "eo:center_wavelength": "center_wavelength",
    "eo:full_width_half_max": "full_width_half_max",
}
_BASELINE_RE = re.compile(r"^(\d{1,2})\.(\d{1,2})$")
_PRODUCT_URI_BASELINE_RE = re.compile(r"_N(\d{2})(\d{2})_")


class ItemParseError(ValueError):
    """A STAC item (or its collection) holds a value that cannot be read.

    Attributes:
        item_id: The item's ``id`` (``None`` when the item has none).
        field: Where the bad value sits, e.g. ``"assets.B02.proj:transform"``.
        problem: What is wrong with it.

    """

    def __init__(self, item_id: str | None, field: str, problem: str) -> None:
        self.item_id = item_id
        self.field = field
        self.problem = problem
        super().__init__(f"STAC item {item_id!r}: field {field!r}: {problem}")


class ClassInfo(BaseModel):
    """One value of a categorical raster and what it means.

    Attributes:
        value: The pixel value.
        name: Short machine name (``classification:classes`` v1.1 ``name``), if given.
        description: Human description (``description``, or the ``summary`` of
            ``file:values``).
        color_hint: RGB hex colour without ``#`` (``color_hint`` or ``color-hint``).
        nodata: ``True`` when the catalog flags this value as no-data (``no_data``/``nodata``).
        source: Which extension the class came from.

    """

    model_config = _FROZEN

    value: int
    name: str | None = None
    description: str | None = None
    color_hint: str | None = None
    nodata: bool = False
    source: Literal["classification:classes", "file:values"] = "classification:classes"

    @property
    def label(self) -> str:
        """Return the most readable text for the class: description, name, or the value."""
        return self.description or self.name or str(self.value)


class BitField(BaseModel):
    """One bit field of a QA raster (``classification:bitfields``).

    Attributes:
        name: Field name, e.g. ``"cloud"``.
        description: Human description.
        offset: Index of the lowest bit.
        length: Number of bits.
        classes: Meaning of each value the field can take.

    """

    model_config = _FROZEN

    name: str | None = None
    description: str | None = None
    offset: int
    length: int
    classes: tuple[ClassInfo, ...] = ()

    def extract(self, value: int) -> int:
        """Return this field's value within an integer QA pixel value.

        Args:
            value: The raw QA pixel value.

        Returns:
            ``(value >> offset) & (2**length - 1)``.

        """
        return (int(value) >> self.offset) & ((1 << self.length) - 1)


class BandInfo(BaseModel):
    """One band of an asset, merged from ``eo:bands``, ``raster:bands`` and STAC 1.1 ``bands``.

    Attributes:
        name: Band name (``eo:bands`` name first, then ``raster:bands``/``bands`` name).
        description: Band description.
        common_name: EO common name such as ``"red"`` or ``"nir08"``.
        center_wavelength: Centre wavelength in micrometres.
        full_width_half_max: Full width at half maximum in micrometres.
        scale: Multiply raw values by this (``None`` when undeclared).
        offset: Then add this (``None`` when undeclared).
        nodata: No-data value; ``nan``/``inf`` are floats.
        data_type: Raster data type such as ``"uint16"``.
        unit: Unit of the scaled values.
        spatial_resolution: Pixel size the catalog states for the band, in CRS units.

    """

    model_config = _FROZEN

    name: str | None = None
    description: str | None = None
    common_name: str | None = None
    center_wavelength: float | None = None
    full_width_half_max: float | None = None
    scale: float | None = None
    offset: float | None = None
    nodata: int | float | None = None
    data_type: str | None = None
    unit: str | None = None
    spatial_resolution: float | None = None


class AssetInfo(BaseModel):
    """One asset of an item with its grid, bands and legend resolved.

    Attributes:
        key: The asset's key in the item (``"B02"``, ``"red"``, ``"map"`` ...).
        href: Where the file is.
        media_type: The asset's ``type``.
        title: The asset's title.
        roles: The asset's roles.
        epsg: EPSG code of the asset's CRS, when it has one.
        crs: CRS as text: ``"EPSG:n"``, a ``proj:code`` such as ``"IAU_2015:30100"``, WKT2,
            or PROJJSON serialised to a string.
        shape: ``(rows, cols)`` from ``proj:shape``.
        transform: Affine ``(a, b, c, d, e, f)`` from ``proj:transform`` (6 or 9 numbers).
        proj_bbox: Bounding box ``(minx, miny, maxx, maxy)`` in the asset's own CRS.
        gsd: Ground sample distance in metres (asset, collection template, or, for raster
            assets, the item's).
        bands: The asset's bands, in file order.
        classes: Legend of a categorical asset.
        bitfields: Bit fields of a QA asset.
        raw: The asset's JSON with the collection template merged under it.

    """

    model_config = _FROZEN

    key: str
    href: str
    media_type: str | None = None
    title: str | None = None
    roles: tuple[str, ...] = ()
    epsg: int | None = None
    crs: str | None = None
    shape: tuple[int, int] | None = None
    transform: tuple[float, float, float, float, float, float] | None = None
    proj_bbox: tuple[float, float, float, float] | None = None
    gsd: float | None = None
    bands: tuple[BandInfo, ...] = ()
    classes: tuple[ClassInfo, ...] = ()
    bitfields: tuple[BitField, ...] = ()
    raw: dict[str, Any] = {}

    def has_role(self, role: str) -> bool:
        """Return whether the asset carries ``role``."""
        return role in self.roles

    @property
    def is_raster(self) -> bool:
        """Return whether the asset looks like a raster a reader can open."""
        return _is_raster(self.media_type, list(self.roles), self.raw)

    @property
    def resolution(self) -> tuple[float, float] | None:
        """Return the pixel size ``(x, y)`` from the transform (y is usually negative)."""
        if self.transform is None:
            return None
        return (self.transform[0], self.transform[4])

    def class_map(self) -> dict[int, ClassInfo]:
        """Return the legend as a mapping from pixel value to class."""
        return {c.value: c for c in self.classes}

    def geobox(self) -> GeoBox | None:
        """Return the asset's pixel grid, or ``None`` when shape, transform or CRS is unknown.

        Returns:
            An :class:`odc.geo.geobox.GeoBox` of ``shape`` pixels placed by ``transform`` in
            ``crs``.

        """
        if self.shape is None or self.transform is None or self.crs is None:
            return None
        from affine import Affine
        from odc.geo.geobox import GeoBox

        return GeoBox(self.shape, Affine(*self.transform), self.crs)


class SceneItem(BaseModel):
    """A STAC item normalised for scene selection and reading.

    Attributes:
        id: The item's id.
        collection: The collection id, when the item names one.
        datetime: Nominal time, UTC (``datetime``, or ``start_datetime`` when that is null).
        start_datetime: Start of the acquisition, UTC (``datetime`` when not a range).
        end_datetime: End of the acquisition, UTC (``datetime`` when not a range).
        bbox: ``(west, south, east, north)`` in degrees; ``west > east`` when the footprint
            crosses the antimeridian.
        geometry: Footprint in WGS84 longitude/latitude; a polygon written across the
            antimeridian without splitting is split into a MultiPolygon at ±180°.
        platform: Platform, lower case with hyphens (``"sentinel-2a"``).
        constellation: Constellation, lower case with hyphens (``"sentinel-2"``).
        instruments: Instruments.
        cloud_cover: ``eo:cloud_cover`` in percent.
        processing_baseline: Sentinel-2 processing baseline as ``"NN.NN"`` (``"04.00"``).
        mgrs_tile: MGRS tile such as ``"58UFE"`` (``s2:mgrs_tile``, ``mgrs:*`` or
            ``grid:code``).
        orbit_state: ``"ascending"`` or ``"descending"``.
        relative_orbit: ``sat:relative_orbit``.
        epsg: Item-level EPSG code (``proj:epsg`` or an EPSG ``proj:code``).
        gsd: Item-level ground sample distance.
        properties: The item's properties, untouched.
        assets: The item's assets by key.
        stac_version: The item's STAC version.
        stac_extensions: Extension schema URLs the item declares.

    """

    model_config = _FROZEN

    id: str
    collection: str | None = None
    # ``_dt.datetime``: inside the class body the field ``datetime`` shadows the type.
    datetime: _dt.datetime
    start_datetime: _dt.datetime
    end_datetime: _dt.datetime
    bbox: tuple[float, float, float, float] | None = None
    geometry: BaseGeometry | None = None
    platform: str | None = None
    constellation: str | None = None
    instruments: tuple[str, ...] = ()
    cloud_cover: float | None = None
    processing_baseline: str | None = None
    mgrs_tile: str | None = None
    orbit_state: str | None = None
    relative_orbit: int | None = None
    epsg: int | None = None
    gsd: float | None = None
    properties: dict[str, Any] = {}
    assets: dict[str, AssetInfo] = {}
    stac_version: str | None = None
    stac_extensions: tuple[str, ...] = ()

    def asset(self, key: str) -> AssetInfo:
        """Return the asset ``key``.

        Args:
            key: The asset key.

        Returns:
            The asset.

        Raises:
            KeyError: The item has no such asset; the message lists the keys it has.

        """
        try:
            return self.assets[key]
        except KeyError:
            available = ", ".join(sorted(self.assets)) or "none"
            raise KeyError(
                f"item {self.id!r} has no asset {key!r}; available assets: {available}"
            ) from None

    @property
    def baseline_version(self) -> tuple[int, int] | None:
        """Return the processing baseline as ``(major, minor)`` for comparisons, or ``None``."""
        if self.processing_baseline is None:
            return None
        major, minor = self.processing_baseline.split(".")
        return (int(major), int(minor))

    @property
    def crosses_antimeridian(self) -> bool:
        """Return whether the footprint straddles longitude ±180°."""
        if self.bbox is not None and self.bbox[0] > self.bbox[2]:
            return True
        return self.geometry is not None and _touches_both_sides(self.geometry)

    def footprint(self) -> BaseGeometry | None:
        """Return the geometry, or the bbox as polygon(s) when the item has no geometry.

        Returns:
            A shapely geometry in longitude/latitude, or ``None`` when the item has neither.

        """
        if self.geometry is not None:
            return self.geometry
        if self.bbox is None:
            return None
        west, south, east, north = self.bbox
        if west > east:
            return MultiPolygon([box(west, south, 180.0, north), box(-180.0, south, east, north)])
        return box(west, south, east, north)

    def data_assets(self) -> dict[str, AssetInfo]:
        """Return the assets with the ``data`` role."""
        return {k: a for k, a in self.assets.items() if a.has_role("data")}


# --------------------------------------------------------------------------- public functions


def parse_item(
    item: Mapping[str, Any] | pystac.Item,
    collection: CollectionLike | None = None,
) -> SceneItem:
    """Parse one STAC item into a :class:`SceneItem`.

    Args:
        item: A STAC Item as a GeoJSON Feature dict or a :class:`pystac.Item`.
        collection: The item's collection (dict or :class:`pystac.Collection`), whose
            ``item_assets`` and ``summaries`` fill in band metadata and legends the item lacks.

    Returns:
        The normalised item.

    Raises:
        ItemParseError: A member is missing or malformed; the message names the item id and
            the field.

    """
    data = _item_dict(item)
    item_id = data.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise ItemParseError(
            item_id if isinstance(item_id, str) else None, "id", "missing or not a string"
        )
    try:
        return _parse_item_dict(item_id, data, _collection_dict(item_id, collection, data))
    except ItemParseError:
        raise
    except ValidationError as exc:  # a value that slipped past our checks
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        raise ItemParseError(item_id, loc or "item", err.get("msg", str(exc))) from exc


def parse_item_collection(
    feature_collection: Mapping[str, Any] | pystac.ItemCollection | Iterable[Any],
    collection: CollectionLike | Mapping[str, CollectionLike] | None = None,
) -> list[SceneItem]:
    """Parse every item of a GeoJSON FeatureCollection (an API search page).

    Args:
        feature_collection: A FeatureCollection dict, a :class:`pystac.ItemCollection`, or an
            iterable of item dicts / :class:`pystac.Item`.
        collection: One collection for all items, or a mapping from collection id to
            collection for mixed results (items of other collections get no fallback).

    Returns:
        The items, in order.

    Raises:
        ItemParseError: The container is not a FeatureCollection, or an item is malformed.

    """
    if isinstance(feature_collection, pystac.ItemCollection):
        features: Iterable[Any] = feature_collection.items
    elif isinstance(feature_collection, Mapping):
        kind = feature_collection.get("type")
        if kind == "Feature":
            raise ItemParseError(
                feature_collection.get("id"), "type", "got a single Feature: use parse_item"
            )
        if kind not in (None, "FeatureCollection"):
            raise ItemParseError(None, "type", f"expected 'FeatureCollection', got {kind!r}")
        raw = feature_collection.get("features")
        if not isinstance(raw, list):
            raise ItemParseError(None, "features", "missing or not a list")
        features = raw
    else:
        features = feature_collection

    by_id: Mapping[str, CollectionLike] | None = None
    single: CollectionLike | None = None
    if isinstance(collection, Mapping) and not _looks_like_collection(collection):
        by_id = collection
    else:
        single = collection

    out = []
    for feature in features:
        coll = single
        if by_id is not None:
            cid = _item_dict(feature).get("collection")
            coll = by_id.get(cid) if isinstance(cid, str) else None
        out.append(parse_item(feature, coll))
    return out


# --------------------------------------------------------------------------- item level


def _item_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, pystac.Item):
        # The self link stays: relative asset hrefs are resolved against it.
        return item.to_dict(include_self_link=True, transform_hrefs=False)
    if isinstance(item, Mapping):
        return dict(item)
    raise ItemParseError(
        None, "item", f"expected a STAC Item dict or pystac.Item, got {type(item).__name__}"
    )


def _looks_like_collection(d: Mapping[str, Any]) -> bool:
    return (
        d.get("type") == "Collection"
        or "item_assets" in d
        or "extent" in d
        or ("id" in d and "license" in d)
    )


def _collection_dict(
    item_id: str, collection: CollectionLike | None, item: Mapping[str, Any]
) -> dict[str, Any]:
    if collection is None:
        return {}
    if isinstance(collection, pystac.Collection):
        coll = collection.to_dict(include_self_link=False, transform_hrefs=False)
    elif isinstance(collection, Mapping):
        coll = dict(collection)
    else:
        raise ItemParseError(
            item_id,
            "collection",
            "expected a STAC Collection dict or pystac.Collection, "
            f"got {type(collection).__name__}",
        )
    cid, iid = coll.get("id"), item.get("collection")
    if isinstance(cid, str) and isinstance(iid, str) and cid != iid:
        raise ItemParseError(
            item_id, "collection", f"item belongs to {iid!r} but collection {cid!r} was given"
        )
    return coll


def _parse_item_dict(item_id: str, data: dict[str, Any], coll: dict[str, Any]) -> SceneItem:
    kind = data.get("type")
    if kind == "FeatureCollection":
        raise ItemParseError(item_id, "type", "got a FeatureCollection: use parse_item_collection")
    if kind not in (None, "Feature"):
        raise ItemParseError(item_id, "type", f"expected 'Feature', got {kind!r}")
    props = data.get("properties")
    if not isinstance(props, Mapping):
        raise ItemParseError(item_id, "properties", "missing or not an object")
    props = dict(props)

    nominal, start, end = _parse_times(item_id, props)
    geometry = _parse_geometry(item_id, data.get("geometry"))
    bbox = _parse_bbox(item_id, "bbox", data.get("bbox"))
    if bbox is None and geometry is not None:
        bbox = _bbox_of(geometry)
    elif bbox is not None and geometry is not None:
        bbox = _reconcile_bbox(item_id, bbox, geometry)

    collection_id = data.get("collection")
    if collection_id is not None and not isinstance(collection_id, str):
        raise ItemParseError(item_id, "collection", f"expected a string, got {collection_id!r}")

    item_proj = _parse_projection(item_id, "properties", props)
    item_gsd = _opt_float(item_id, "properties.gsd", props.get("gsd"))

    raw_assets = data.get("assets")
    if raw_assets is None:
        raw_assets = {}
    if not isinstance(raw_assets, Mapping):
        raise ItemParseError(item_id, "assets", "not an object")
    templates = coll.get("item_assets") or {}
    summaries = coll.get("summaries") or {}
    base = _self_href(data)
    assets = {
        key: _parse_asset(
            item_id, key, asset, templates.get(key), summaries, item_proj, item_gsd, base
        )
        for key, asset in raw_assets.items()
    }

    instruments = props.get("instruments") or ()
    if isinstance(instruments, str):
        instruments = (instruments,)
    ext = data.get("stac_extensions") or ()

    return SceneItem(
        id=item_id,
        collection=collection_id,
        datetime=nominal,
        start_datetime=start,
        end_datetime=end,
        bbox=bbox,
        geometry=geometry,
        platform=_norm_name(item_id, "properties.platform", props.get("platform")),
        constellation=_norm_name(item_id, "properties.constellation", props.get("constellation")),
        instruments=tuple(str(i) for i in instruments),
        cloud_cover=_parse_cloud_cover(item_id, props.get("eo:cloud_cover")),
        processing_baseline=_parse_baseline(item_id, props),
        mgrs_tile=_parse_mgrs(item_id, props),
        orbit_state=_parse_orbit_state(item_id, props.get("sat:orbit_state")),
        relative_orbit=_opt_int(
            item_id, "properties.sat:relative_orbit", props.get("sat:relative_orbit")
        ),
        epsg=item_proj.get("epsg"),
        gsd=item_gsd,
        properties=props,
        assets=assets,
        stac_version=data.get("stac_version"),
        stac_extensions=tuple(str(e) for e in ext),
    )


def _parse_dt(item_id: str, field: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            try:
                dt = pystac.utils.str_to_datetime(value)
            except (ValueError, OverflowError) as exc:
                raise ItemParseError(item_id, field, f"not an RFC 3339 time: {value!r}") from exc
    else:
        raise ItemParseError(item_id, field, f"expected a time string, got {value!r}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _parse_times(item_id: str, props: Mapping[str, Any]) -> tuple[datetime, datetime, datetime]:
    nominal = _parse_dt(item_id, "properties.datetime", props.get("datetime"))
    start = _parse_dt(item_id, "properties.start_datetime", props.get("start_datetime"))
    end = _parse_dt(item_id, "properties.end_datetime", props.get("end_datetime"))
    if nominal is None:
        if start is None:
            raise ItemParseError(
                item_id, "properties.datetime", "null or missing, and no start_datetime either"
            )
        nominal = start
    start = start or nominal
    end = end or nominal
    if end < start:
        raise ItemParseError(
            item_id,
            "properties.end_datetime",
            f"end {end.isoformat()} is before start {start.isoformat()}",
        )
    slack = _dt.timedelta(seconds=1)  # catalogs round datetime and the range differently
    if not start - slack <= nominal <= end + slack:
        # Which time would a date filter trust? The catalog must say one thing.
        raise ItemParseError(
            item_id,
            "properties.datetime",
            f"{nominal.isoformat()} lies outside start_datetime..end_datetime "
            f"({start.isoformat()} .. {end.isoformat()})",
        )
    return nominal, start, end


def _parse_cloud_cover(item_id: str, value: Any) -> float | None:
    """``eo:cloud_cover`` as a percentage; numeric text is read, anything off 0..100 refused."""
    field = "properties.eo:cloud_cover"
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ItemParseError(item_id, field, f"expected a number, got {value!r}") from None
    cover = _opt_float(item_id, field, value)
    if cover is None:
        return None
    # A -1 "unknown" or a 0..1 fraction read as percent would rank scenes wrongly.
    if not -1e-6 <= cover <= 100.0 + 1e-6:
        raise ItemParseError(
            item_id, field, f"expected a percentage between 0 and 100, got {value!r}"
        )
    return min(max(cover, 0.0), 100.0)


def _norm_name(item_id: str, field: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ItemParseError(item_id, field, f"expected a string, got {value!r}")
    return re.sub(r"[\s_]+", "-", value.strip().lower())


def _baseline_field(props: Mapping[str, Any]) -> tuple[str, Any]:
    """The property that holds the Sentinel-2 processing baseline, and its value."""
    for key in ("s2:processing_baseline", "sentinel:processing_baseline"):
        if props.get(key) is not None:
            return key, props[key]
    # Copernicus Data Space writes the baseline as the processing extension's version; other
    # missions use that field for unrelated versions.
    mission = f"{props.get('constellation')} {props.get('platform')}".lower().replace(" ", "-")
    if props.get("processing:version") is not None and "sentinel-2" in mission:
        return "processing:version", props["processing:version"]
    return "s2:processing_baseline", None


def _parse_baseline(item_id: str, props: Mapping[str, Any]) -> str | None:
    key, value = _baseline_field(props)
    field = f"properties.{key}"
    if value is None:
        uri = props.get("s2:product_uri")
        match = _PRODUCT_URI_BASELINE_RE.search(uri) if isinstance(uri, str) else None
        return f"{match.group(1)}.{match.group(2)}" if match else None
    if isinstance(value, bool):
        raise ItemParseError(item_id, field, f"expected 'NN.NN', got {value!r}")
    if isinstance(value, int | float):
        # 400 (for N0400) would compare as "400.00" and pass for any baseline test.
        if not math.isfinite(value) or not 0 <= value < 100:
            raise ItemParseError(
                item_id, field, f"expected a baseline like 4.0 or '04.00', got {value!r}"
            )
        return f"{float(value):05.2f}"
    if isinstance(value, str):
        text = value.strip()
        if text.upper().startswith("N") and text[1:].isdigit() and len(text) == 5:
            return f"{text[1:3]}.{text[3:5]}"
        if text.isdigit() and len(text) <= 2:
            return f"{int(text):02d}.00"
        match = _BASELINE_RE.match(text)
        if match:
            return f"{int(match.group(1)):02d}.{int(match.group(2).ljust(2, '0')):02d}"
    raise ItemParseError(item_id, field, f"expected a baseline like '04.00', got {value!r}")


def _parse_mgrs(item_id: str, props: Mapping[str, Any]) -> str | None:
    tile = props.get("s2:mgrs_tile")
    if tile is not None:
        if not isinstance(tile, str):
            raise ItemParseError(item_id, "properties.s2:mgrs_tile", f"not a string: {tile!r}")
        return tile.strip().upper().removeprefix("T")
    zone = props.get("mgrs:utm_zone")
    band = props.get("mgrs:latitude_band")
    square = props.get("mgrs:grid_square")
    if zone is not None and band is not None and square is not None:
        zone_n = _opt_int(item_id, "properties.mgrs:utm_zone", zone)
        if not isinstance(band, str) or not isinstance(square, str):
            raise ItemParseError(
                item_id,
                "properties.mgrs:latitude_band",
                "latitude band and grid square must be text",
            )
        return f"{zone_n:02d}{band.upper()}{square.upper()}"
    code = props.get("grid:code")
    if isinstance(code, str) and code.upper().startswith("MGRS-"):
        return code[5:].upper()
    return None


def _parse_orbit_state(item_id: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.strip().lower() not in (
        "ascending",
        "descending",
        "geostationary",
    ):
        raise ItemParseError(
            item_id, "properties.sat:orbit_state", f"expected ascending/descending, got {value!r}"
        )
    return value.strip().lower()


# --------------------------------------------------------------------------- geometry


def _parse_bbox(item_id: str, field: str, value: Any) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    nums = _numbers(item_id, field, value)
    if len(nums) == 4:
        out = (nums[0], nums[1], nums[2], nums[3])
    elif len(nums) == 6:
        out = (nums[0], nums[1], nums[3], nums[4])
    else:
        raise ItemParseError(item_id, field, f"expected 4 or 6 numbers, got {len(nums)}")
    # West may exceed east (across the antimeridian); south may never exceed north.
    if out[1] > out[3]:
        raise ItemParseError(
            item_id, field, f"south {out[1]} is north of north {out[3]}: check the axis order"
        )
    return out


def _reconcile_bbox(
    item_id: str, bbox: tuple[float, float, float, float], geometry: BaseGeometry
) -> tuple[float, float, float, float]:
    """The item's bbox, checked against its geometry.

    A geometry across the antimeridian under a naive min/max bbox (``[-179, s, 179, n]``, the
    whole world but the scene) gets the bbox of its geometry. Any other bbox that does not
    contain the geometry (swapped axes, another item's box) is refused: searches match on one
    and scene choice on the other. A margin of 0.05 degrees allows for rounding.
    """
    west, south, east, north = bbox
    tol = 0.05
    parts = list(getattr(geometry, "geoms", [geometry]))
    if west <= east:
        windows = [(west, east)]
    else:  # crosses the antimeridian: an eastern and a western window
        windows = [(west, 180.0), (-180.0, east)]
    for part in parts:
        minx, miny, maxx, maxy = part.bounds
        inside_x = any(minx >= w - tol and maxx <= e + tol for w, e in windows)
        if not (inside_x and miny >= south - tol and maxy <= north + tol):
            if west <= east and _touches_both_sides(geometry):
                return _bbox_of(geometry)
            raise ItemParseError(
                item_id,
                "bbox",
                f"{list(bbox)} does not contain the geometry (bounds "
                f"{[round(v, 6) for v in geometry.bounds]}); check the axis order",
            )
    return bbox


def _parse_geometry(item_id: str, value: Any) -> BaseGeometry | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or "type" not in value:
        raise ItemParseError(item_id, "geometry", "not a GeoJSON geometry object")
    try:
        geom = shapely.geometry.shape(value)
    except Exception as exc:  # shapely raises several types for malformed coordinates
        raise ItemParseError(item_id, "geometry", f"cannot be read: {exc}") from exc
    if geom.is_empty:
        raise ItemParseError(item_id, "geometry", "is empty")
    if isinstance(geom, Polygon | MultiPolygon):
        geom = _split_antimeridian(geom)
    return geom


def _split_antimeridian(geom: Polygon | MultiPolygon) -> Polygon | MultiPolygon:
    """Split polygons that were written across ±180° without splitting.

    A polygon whose longitudes span more than 180° is taken to jump the antimeridian: its
    negative longitudes are shifted by +360°, and the result is cut at 180° into an eastern
    and a western part.
    """
    parts = list(geom.geoms) if isinstance(geom, MultiPolygon) else [geom]
    out: list[Polygon] = []
    changed = False
    for poly in parts:
        minx, _, maxx, _ = poly.bounds
        if maxx - minx <= 180.0:
            out.append(poly)
            continue
        changed = True
        shifted = shapely.transform(poly, _shift_negative_lon)
        if not shifted.is_valid:
            shifted = shifted.buffer(0)
        east = shifted.intersection(box(-180.0, -90.0, 180.0, 90.0))
        west = affinity.translate(shifted.intersection(box(180.0, -90.0, 540.0, 90.0)), -360.0)
        for piece in (east, west):
            out.extend(_polygons(piece))
    if not changed:
        return geom
    return MultiPolygon(out) if len(out) > 1 else out[0]


def _shift_negative_lon(xy: np.ndarray) -> np.ndarray:
    out = np.array(xy, dtype=float, copy=True)
    out[:, 0] = np.where(out[:, 0] < 0.0, out[:, 0] + 360.0, out[:, 0])
    return out


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    return [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon) and not g.is_empty]


def _touches_both_sides(geom: BaseGeometry) -> bool:
    if not isinstance(geom, MultiPolygon):
        return False
    bounds = [p.bounds for p in geom.geoms]
    return any(b[2] >= 180.0 for b in bounds) and any(b[0] <= -180.0 for b in bounds)


def _bbox_of(geom: BaseGeometry) -> tuple[float, float, float, float]:
    if isinstance(geom, MultiPolygon) and _touches_both_sides(geom):
        east_parts = unary_union([p for p in geom.geoms if p.bounds[2] >= 180.0])
        west_parts = unary_union([p for p in geom.geoms if p.bounds[2] < 180.0])
        south = min(east_parts.bounds[1], west_parts.bounds[1])
        north = max(east_parts.bounds[3], west_parts.bounds[3])
        return (east_parts.bounds[0], south, west_parts.bounds[2], north)
    minx, miny, maxx, maxy = geom.bounds
    return (minx, miny, maxx, maxy)


# --------------------------------------------------------------------------- projection


def _parse_projection(item_id: str, where: str, d: Mapping[str, Any]) -> dict[str, Any]:
    """Read the projection fields present in ``d``; absent ones are left out of the result."""
    out: dict[str, Any] = {}
    crs_keys = ("proj:epsg", "proj:code", "proj:wkt2", "proj:projjson")
    # Only a value names a CRS: an asset's ``"proj:epsg": null`` says "no EPSG code" (the
    # item's WKT2 or PROJJSON then describes it) and must not erase what the item gives.
    if any(d.get(k) is not None for k in crs_keys):
        epsg: int | None = None
        crs: str | None = None
        if d.get("proj:epsg") is not None:
            epsg = _epsg(item_id, f"{where}.proj:epsg", d["proj:epsg"])
            crs = f"EPSG:{epsg}"
            code = d.get("proj:code")
            if isinstance(code, str) and code.partition(":")[0].strip().upper() == "EPSG":
                other = _epsg(item_id, f"{where}.proj:code", code.partition(":")[2])
                if other != epsg:
                    raise ItemParseError(
                        item_id,
                        f"{where}.proj:code",
                        f"{code!r} contradicts proj:epsg {epsg}; the item must name one CRS",
                    )
        elif d.get("proj:code") is not None:
            code = d["proj:code"]
            if not isinstance(code, str) or ":" not in code:
                raise ItemParseError(
                    item_id, f"{where}.proj:code", f"expected 'AUTHORITY:CODE', got {code!r}"
                )
            authority, _, num = code.partition(":")
            if authority.upper() == "EPSG":
                epsg = _epsg(item_id, f"{where}.proj:code", num)
                crs = f"EPSG:{epsg}"
            else:
                crs = code
        elif d.get("proj:wkt2") is not None:
            wkt = d["proj:wkt2"]
            if not isinstance(wkt, str) or not wkt.strip():
                raise ItemParseError(item_id, f"{where}.proj:wkt2", "expected WKT2 text")
            crs = wkt
        elif d.get("proj:projjson") is not None:
            pj = d["proj:projjson"]
            if not isinstance(pj, Mapping):
                raise ItemParseError(item_id, f"{where}.proj:projjson", "expected an object")
            ident = pj.get("id")
            if isinstance(ident, Mapping) and str(ident.get("authority")).upper() == "EPSG":
                epsg = _epsg(item_id, f"{where}.proj:projjson.id.code", ident.get("code"))
            crs = json.dumps(pj)
        out["epsg"] = epsg
        out["crs"] = crs
    if d.get("proj:shape") is not None:
        out["shape"] = _parse_shape(item_id, f"{where}.proj:shape", d["proj:shape"])
    if d.get("proj:transform") is not None:
        out["transform"] = _parse_transform(item_id, f"{where}.proj:transform", d["proj:transform"])
    if d.get("proj:bbox") is not None:
        out["proj_bbox"] = _parse_bbox(item_id, f"{where}.proj:bbox", d["proj:bbox"])
    return out


def _asset_grid(
    item_id: str, where: str, own: dict[str, Any], item: Mapping[str, Any]
) -> dict[str, Any]:
    """Combine an asset's own projection fields with those it inherits from the item.

    The item's ``proj:shape`` and ``proj:transform`` describe one grid together. An asset that
    restates only one of them (a 20 m band giving its own shape under a 10 m item transform)
    gets the other derived over the same extent, never the item's value unchanged: that would
    pair a 5490-pixel shape with a 10 m pixel and cover half the tile. Without a shape, one
    is derived from ``proj:bbox``. The result is checked against ``proj:bbox``.
    """
    proj = {**item, **own}
    has_shape, has_transform = "shape" in own, "transform" in own
    if has_shape != has_transform and "shape" in item and "transform" in item:
        if has_shape and own["shape"] != item["shape"]:
            proj["transform"] = _rescaled(item["transform"], item["shape"], own["shape"])
        elif has_transform and own["transform"] != item["transform"]:
            proj["shape"] = _shape_over(
                item_id, f"{where}.proj:transform", own["transform"], item["shape"], item
            )
    if "shape" not in proj and "transform" in proj and "proj_bbox" in proj:
        shape = _shape_from_bbox(proj["transform"], proj["proj_bbox"])
        if shape is not None:
            proj["shape"] = shape
    if {"shape", "transform", "proj_bbox"} <= proj.keys():
        extent = _extent(proj["transform"], proj["shape"])
        tol = max(abs(proj["transform"][0]), abs(proj["transform"][4]), 1e-9)
        if any(abs(a - b) > tol for a, b in zip(extent, proj["proj_bbox"], strict=True)):
            raise ItemParseError(
                item_id,
                where,
                f"proj:shape {list(proj['shape'])} and proj:transform cover {extent}, but "
                f"proj:bbox says {proj['proj_bbox']}; the grid is inconsistent",
            )
    return proj


def _rescaled(
    transform: tuple[float, ...], shape: tuple[int, int], new_shape: tuple[int, int]
) -> tuple[float, float, float, float, float, float]:
    """The transform of ``new_shape`` pixels over the extent of ``shape`` pixels."""
    a, b, c, d, e, f = transform
    sx, sy = shape[1] / new_shape[1], shape[0] / new_shape[0]
    return (a * sx, b * sy, c, d * sx, e * sy, f)


def _shape_over(
    item_id: str,
    field: str,
    transform: tuple[float, ...],
    shape: tuple[int, int],
    item: Mapping[str, Any],
) -> tuple[int, int]:
    """The pixel count of ``transform``'s pixels over the item grid's extent."""
    ia, _, _, _, ie, _ = item["transform"]
    cols, rows = shape[1] * ia / transform[0], shape[0] * ie / transform[4]
    if not all(n > 0 and abs(n - round(n)) < 1e-6 * max(1.0, n) for n in (cols, rows)):
        raise ItemParseError(
            item_id,
            field,
            f"pixels of {transform[0]} x {transform[4]} do not tile the item's "
            f"{shape[1]} x {shape[0]} grid; give the asset its own proj:shape",
        )
    return (round(rows), round(cols))


def _extent(
    transform: tuple[float, ...], shape: tuple[int, int]
) -> tuple[float, float, float, float]:
    a, b, c, d, e, f = transform
    rows, cols = shape
    xs = [c + a * i + b * j for i, j in ((0, 0), (cols, 0), (0, rows), (cols, rows))]
    ys = [f + d * i + e * j for i, j in ((0, 0), (cols, 0), (0, rows), (cols, rows))]
    return (min(xs), min(ys), max(xs), max(ys))


def _shape_from_bbox(
    transform: tuple[float, ...], bbox: tuple[float, float, float, float]
) -> tuple[int, int] | None:
    """``proj:shape`` of a north-up grid from its ``proj:bbox``, or None when it does not fit."""
    a, b, _, d, e, _ = transform
    if b != 0 or d != 0:
        return None
    cols, rows = (bbox[2] - bbox[0]) / abs(a), (bbox[3] - bbox[1]) / abs(e)
    if min(cols, rows) < 1 or any(abs(n - round(n)) > 1e-6 * n for n in (cols, rows)):
        return None
    return (round(rows), round(cols))


def _epsg(item_id: str, field: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    code = _opt_int(item_id, field, value)
    if code is None or code <= 0:
        raise ItemParseError(item_id, field, f"expected a positive EPSG code, got {value!r}")
    return code


def _parse_shape(item_id: str, field: str, value: Any) -> tuple[int, int]:
    nums = _numbers(item_id, field, value)
    if len(nums) != 2:
        raise ItemParseError(item_id, field, f"expected 2 numbers [rows, cols], got {len(nums)}")
    if any(not _is_integral(n) or n <= 0 for n in nums):
        raise ItemParseError(item_id, field, f"expected positive integers, got {list(value)}")
    return (int(nums[0]), int(nums[1]))


def _parse_transform(
    item_id: str, field: str, value: Any
) -> tuple[float, float, float, float, float, float]:
    nums = _numbers(item_id, field, value)
    if len(nums) == 9:
        if not all(
            math.isclose(a, b, abs_tol=1e-12)
            for a, b in zip(nums[6:], (0.0, 0.0, 1.0), strict=True)
        ):
            raise ItemParseError(
                item_id, field, f"9-number transform must end with 0, 0, 1, got {nums[6:]}"
            )
        nums = nums[:6]
    elif len(nums) != 6:
        raise ItemParseError(item_id, field, f"expected 6 or 9 numbers, got {len(nums)}")
    a, b, _, d, e, _ = nums
    if a * e - b * d == 0:
        raise ItemParseError(item_id, field, f"singular affine transform {nums}")
    return (nums[0], nums[1], nums[2], nums[3], nums[4], nums[5])


# --------------------------------------------------------------------------- assets


def _self_href(data: Mapping[str, Any]) -> str | None:
    links = data.get("links")
    for link in links if isinstance(links, list) else ():
        if isinstance(link, Mapping) and link.get("rel") == "self":
            href = link.get("href")
            return href if isinstance(href, str) and href else None
    return None


def _is_absolute(href: str) -> bool:
    return bool(urlsplit(href).scheme) or href.startswith(("/", "\\"))


def _resolve_href(href: str, base: str | None) -> str:
    """``href`` made absolute against the item's self link (STAC allows relative hrefs).

    Without an absolute self link a relative href is returned as given: there is nothing
    to resolve it against.
    """
    if _is_absolute(href) or base is None or not _is_absolute(base):
        return href
    scheme = urlsplit(base).scheme
    if scheme in ("", "http", "https", "file"):
        return urljoin(base, href)
    # urljoin leaves schemes it does not know (s3, gs, az ...) unjoined: join as http.
    joined = urljoin("http" + base[len(scheme) :], href)
    return scheme + joined[len("http") :]


def _is_raster(media_type: str | None, roles: list[str], asset: Mapping[str, Any]) -> bool:
    if media_type:
        mt = media_type.lower()
        return any(token in mt for token in _RASTER_MEDIA)
    if any(k in asset for k in ("proj:shape", "proj:transform", "raster:bands", "bands")):
        return True
    return "data" in roles


def _parse_asset(
    item_id: str,
    key: str,
    asset: Any,
    template: Any,
    summaries: Mapping[str, Any],
    item_proj: Mapping[str, Any],
    item_gsd: float | None,
    base: str | None = None,
) -> AssetInfo:
    where = f"assets.{key}"
    if not isinstance(asset, Mapping):
        raise ItemParseError(item_id, where, "not an object")
    tmpl = dict(template) if isinstance(template, Mapping) else {}
    # Per-item grid facts must never come from the collection's template.
    tmpl = {k: v for k, v in tmpl.items() if not k.startswith("proj:")}
    merged = {**tmpl, **asset}

    href = asset.get("href")
    if not isinstance(href, str) or not href:
        raise ItemParseError(item_id, f"{where}.href", "missing or not a string")
    href = _resolve_href(href, base)
    media_type = merged.get("type")
    if media_type is not None and not isinstance(media_type, str):
        raise ItemParseError(item_id, f"{where}.type", f"expected a string, got {media_type!r}")
    roles_raw = merged.get("roles") or []
    if isinstance(roles_raw, str) or not isinstance(roles_raw, list):
        raise ItemParseError(item_id, f"{where}.roles", f"expected a list, got {roles_raw!r}")
    roles = [str(r) for r in roles_raw]

    raster = _is_raster(media_type, roles, merged)
    own = _parse_projection(item_id, where, asset)
    proj = _asset_grid(item_id, where, own, item_proj if raster else {})

    gsd = _opt_float(item_id, f"{where}.gsd", merged.get("gsd"))
    if gsd is None and raster:
        gsd = item_gsd

    bands = _parse_bands(item_id, key, asset, tmpl, summaries, roles, media_type)
    classes = _parse_classes(item_id, where, merged)
    bitfields = _parse_bitfields(item_id, where, merged)
    title = merged.get("title")

    return AssetInfo(
        key=key,
        href=href,
        media_type=media_type,
        title=title if isinstance(title, str) else None,
        roles=tuple(roles),
        epsg=proj.get("epsg"),
        crs=proj.get("crs"),
        shape=proj.get("shape"),
        transform=proj.get("transform"),
        proj_bbox=proj.get("proj_bbox"),
        gsd=gsd,
        bands=bands,
        classes=classes,
        bitfields=bitfields,
        raw=merged,
    )


def _band_list(item_id: str, field: str, value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(b, Mapping) for b in value):
        raise ItemParseError(item_id, field, "expected a list of band objects")
    return [dict(b) for b in value]


def _merge_lists(
    item_list: list[dict[str, Any]] | None, tmpl_list: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    if item_list is None:
        return tmpl_list or []
    if tmpl_list and len(tmpl_list) == len(item_list):
        return [{**t, **i} for t, i in zip(tmpl_list, item_list, strict=True)]
    return item_list


def _parse_bands(
    item_id: str,
    key: str,
    asset: Mapping[str, Any],
    tmpl: Mapping[str, Any],
    summaries: Mapping[str, Any],
    roles: list[str],
    media_type: str | None,
) -> tuple[BandInfo, ...]:
    where = f"assets.{key}"
    lists = {}
    for ext in ("eo:bands", "raster:bands", "bands"):
        lists[ext] = _merge_lists(
            _band_list(item_id, f"{where}.{ext}", asset.get(ext)),
            _band_list(item_id, f"{where}.{ext}", tmpl.get(ext)),
        )
    sizes = {ext: len(v) for ext, v in lists.items() if v}
    if len(set(sizes.values())) > 1:
        # Bands are matched by index: with unequal lists a scale would land on the wrong band.
        listed = ", ".join(f"{ext} has {k}" for ext, k in sizes.items())
        raise ItemParseError(
            item_id, where, f"band lists disagree ({listed}); each must list every band in order"
        )
    n = max(len(v) for v in lists.values())
    if n == 0:
        lists["eo:bands"] = _summary_eo_band(item_id, key, summaries)
        if media_type and _is_raster(media_type, roles, asset) and "data" in roles:
            summary_raster = _band_list(
                item_id, "summaries.raster:bands", summaries.get("raster:bands")
            )
            lists["raster:bands"] = summary_raster or []
        n = max(len(v) for v in lists.values())

    merged_asset = {**tmpl, **asset}
    defaults = {
        target: merged_asset[src]
        for src, target in _ASSET_BAND_DEFAULTS.items()
        if merged_asset.get(src) is not None
    }
    if n == 0 and defaults and _is_raster(media_type, roles, merged_asset):
        # STAC 1.1 describes a single-band asset on the asset itself, with no band list.
        n = 1
    out = []
    for i in range(n):
        eo = lists["eo:bands"][i] if i < len(lists["eo:bands"]) else {}
        ras = lists["raster:bands"][i] if i < len(lists["raster:bands"]) else {}
        v11 = lists["bands"][i] if i < len(lists["bands"]) else {}
        out.append(_band(item_id, f"{where}.bands[{i}]", eo, ras, v11, defaults))
    return tuple(out)


def _summary_eo_band(item_id: str, key: str, summaries: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Find the one band in the collection's ``eo:bands`` summary named like the asset key."""
    bands = _band_list(item_id, "summaries.eo:bands", summaries.get("eo:bands")) or []
    k = key.lower()
    hits = [b for b in bands if str(b.get("name", "")).lower() == k]
    if not hits:
        hits = [b for b in bands if str(b.get("common_name", "")).lower() == k]
    return hits if len(hits) == 1 else []


def _first(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


def _band(
    item_id: str,
    field: str,
    eo: Mapping[str, Any],
    ras: Mapping[str, Any],
    v11: Mapping[str, Any],
    defaults: Mapping[str, Any],
) -> BandInfo:
    def num(name: str, *values: Any) -> float | None:
        return _opt_float(item_id, f"{field}.{name}", _first(*values))

    def text(name: str, *values: Any) -> str | None:
        value = _first(*values)
        if value is not None and not isinstance(value, str):
            raise ItemParseError(item_id, f"{field}.{name}", f"expected text, got {value!r}")
        return value

    scale = num("scale", ras.get("scale"), v11.get("raster:scale"), defaults.get("scale"))
    if scale == 0.0:
        # Every pixel would become the offset: a catalog error, not a value to apply.
        raise ItemParseError(item_id, f"{field}.scale", "is 0: no band has a zero scale")
    return BandInfo(
        name=text("name", eo.get("name"), v11.get("name"), ras.get("name")),
        description=text(
            "description", eo.get("description"), v11.get("description"), ras.get("description")
        ),
        common_name=text(
            "common_name",
            eo.get("common_name"),
            v11.get("eo:common_name"),
            defaults.get("common_name"),
        ),
        center_wavelength=num(
            "center_wavelength",
            eo.get("center_wavelength"),
            v11.get("eo:center_wavelength"),
            defaults.get("center_wavelength"),
        ),
        full_width_half_max=num(
            "full_width_half_max",
            eo.get("full_width_half_max"),
            v11.get("eo:full_width_half_max"),
            defaults.get("full_width_half_max"),
        ),
        scale=scale,
        offset=num("offset", ras.get("offset"), v11.get("raster:offset"), defaults.get("offset")),
        nodata=_nodata(
            item_id,
            f"{field}.nodata",
            _first(ras.get("nodata"), v11.get("nodata"), defaults.get("nodata")),
        ),
        data_type=text(
            "data_type", ras.get("data_type"), v11.get("data_type"), defaults.get("data_type")
        ),
        unit=text("unit", ras.get("unit"), v11.get("unit"), defaults.get("unit")),
        spatial_resolution=num(
            "spatial_resolution",
            ras.get("spatial_resolution"),
            v11.get("raster:spatial_resolution"),
            defaults.get("spatial_resolution"),
        ),
    )


def _nodata(item_id: str, field: str, value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "+inf": math.inf}
        if text in special:
            return special[text]
        # GDAL-minded writers put numbers in strings ("-9999", "0").
        try:
            number = float(text)
        except ValueError:
            raise ItemParseError(
                item_id, field, f"expected a number, 'nan', 'inf' or '-inf': {value!r}"
            ) from None
        return int(number) if re.fullmatch(r"[+-]?\d+", text) else number
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ItemParseError(item_id, field, f"expected a number, got {value!r}")
    return value


# --------------------------------------------------------------------------- legends


def _parse_classes(item_id: str, where: str, asset: Mapping[str, Any]) -> tuple[ClassInfo, ...]:
    out: list[ClassInfo] = []
    raw = asset.get("classification:classes")
    field = f"{where}.classification:classes"
    if raw is None:
        for i, band in enumerate(asset.get("raster:bands") or asset.get("bands") or []):
            if isinstance(band, Mapping) and band.get("classification:classes") is not None:
                raw = band["classification:classes"]
                field = f"{where}.bands[{i}].classification:classes"
                break
    if raw is not None:
        out.extend(_class_list(item_id, field, raw))

    values = asset.get("file:values")
    if values is not None:
        vfield = f"{where}.file:values"
        if not isinstance(values, list):
            raise ItemParseError(item_id, vfield, "expected a list of {values, summary} objects")
        for i, entry in enumerate(values):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("values"), list):
                raise ItemParseError(item_id, f"{vfield}[{i}]", "expected {values: [...], summary}")
            summary = entry.get("summary")
            for v in entry["values"]:
                out.append(
                    ClassInfo(
                        value=_class_value(item_id, f"{vfield}[{i}].values", v),
                        description=summary if isinstance(summary, str) else None,
                        source="file:values",
                    )
                )
    return tuple(out)


def _class_value(item_id: str, field: str, value: Any) -> int:
    if not _is_integral(value):
        raise ItemParseError(item_id, field, f"expected an integer class value, got {value!r}")
    return int(value)


def _class_list(item_id: str, field: str, raw: Any) -> list[ClassInfo]:
    if not isinstance(raw, list):
        raise ItemParseError(item_id, field, "expected a list of class objects")
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, Mapping) or "value" not in c:
            raise ItemParseError(item_id, f"{field}[{i}]", "expected an object with a 'value'")
        color = _first(c.get("color_hint"), c.get("color-hint"))
        out.append(
            ClassInfo(
                value=_class_value(item_id, f"{field}[{i}].value", c["value"]),
                name=c.get("name") if isinstance(c.get("name"), str) else None,
                description=c.get("description") if isinstance(c.get("description"), str) else None,
                color_hint=str(color).lstrip("#").upper() if color is not None else None,
                nodata=bool(_first(c.get("no_data"), c.get("nodata"), False)),
            )
        )
    return out


def _parse_bitfields(item_id: str, where: str, asset: Mapping[str, Any]) -> tuple[BitField, ...]:
    raw = asset.get("classification:bitfields")
    if raw is None:
        return ()
    field = f"{where}.classification:bitfields"
    if not isinstance(raw, list):
        raise ItemParseError(item_id, field, "expected a list of bit field objects")
    out = []
    for i, bf in enumerate(raw):
        f = f"{field}[{i}]"
        if not isinstance(bf, Mapping):
            raise ItemParseError(item_id, f, "expected an object")
        offset = _opt_int(item_id, f"{f}.offset", bf.get("offset"))
        length = _opt_int(item_id, f"{f}.length", bf.get("length"))
        if offset is None or offset < 0 or length is None or length <= 0:
            raise ItemParseError(item_id, f, "needs offset >= 0 and length > 0")
        out.append(
            BitField(
                name=bf.get("name") if isinstance(bf.get("name"), str) else None,
                description=bf.get("description")
                if isinstance(bf.get("description"), str)
                else None,
                offset=offset,
                length=length,
                classes=tuple(_class_list(item_id, f"{f}.classes", bf.get("classes") or [])),
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------- scalars


def _numbers(item_id: str, field: str, value: Any) -> list[float]:
    if not isinstance(value, list | tuple):
        raise ItemParseError(item_id, field, f"expected a list of numbers, got {value!r}")
    nums = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ItemParseError(item_id, field, f"expected finite numbers, got {v!r}")
        nums.append(float(v))
    return nums


def _opt_float(item_id: str, field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ItemParseError(item_id, field, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        # JSON parsers accept NaN/Infinity; a NaN scale or gsd poisons every pixel silently.
        raise ItemParseError(item_id, field, f"expected a finite number, got {value!r}")
    return float(value)


def _is_integral(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or (math.isfinite(value) and value == int(value))


def _opt_int(item_id: str, field: str, value: Any) -> int | None:
    if value is None:
        return None
    if not _is_integral(value):
        raise ItemParseError(item_id, field, f"expected an integer, got {value!r}")
    return int(value)
