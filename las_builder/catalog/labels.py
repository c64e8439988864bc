"""Label products: the land-cover maps LAS takes its weak labels from.

Each product is one plain YAML file, ``catalog/labels/<id>.yaml``, holding its official legend
(codes, names, descriptions, colours), its raster encoding (dtype, nodata), its native grid (CRS,
resolution, tiling), where it is served (a STAC collection and asset, an Earth Engine asset and
band), the years or versions available and how to cite it. This module gives typed, validated
views of those files.

Example:
    >>> from las_builder.catalog import load_label_product
    >>> wc = load_label_product("esa-worldcover")
    >>> wc.class_by_value(10).name
    'Tree cover'
    >>> wc.version_for_year(2021).name
    'v200'

"""

from __future__ import annotations

import datetime as _dt
import functools
import re
import types
import typing
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from las_builder._paths import catalog_dir, file_state
from las_builder.catalog.yamlio import load_yaml, yaml_error_text

__all__ = [
    "CatalogError",
    "DType",
    "EarthEngineRef",
    "LabelClass",
    "LabelProduct",
    "LabelVersion",
    "Resolution",
    "StacRef",
    "label_product_ids",
    "label_products",
    "labels_dir",
    "load_label_product",
    "read_catalog_text",
]

DType = Literal["uint8", "int8", "uint16", "int16", "uint32", "int32"]
"""Integer raster data types a label product may use."""

_DTYPE_RANGE: dict[str, tuple[int, int]] = {
    "uint8": (0, 2**8 - 1),
    "int8": (-(2**7), 2**7 - 1),
    "uint16": (0, 2**16 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint32": (0, 2**32 - 1),
    "int32": (-(2**31), 2**31 - 1),
}

_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")

_UTM = "UTM"
"""The ``crs`` value of products stored in the local WGS 84 / UTM zone of each tile."""

NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""A string that is not empty or blank once stripped."""


class CatalogError(ValueError):
    """A catalog file is missing, unreadable or breaks the schema.

    Attributes:
        path: The offending file.
        problems: ``(field, message)`` pairs; ``field`` is a dotted path such as
            ``classes[3].color`` (empty when the problem concerns the whole file).

    """

    def __init__(self, path: Path, problems: Sequence[tuple[str, str]]) -> None:
        self.path = Path(path)
        self.problems: list[tuple[str, str]] = list(problems) or [("", "invalid")]
        if len(self.problems) == 1:
            text = f"{self.path}: {_describe(*self.problems[0])}"
        else:
            lines = "\n".join(f"  - {_describe(f, m)}" for f, m in self.problems)
            text = f"{self.path}: {len(self.problems)} problems:\n{lines}"
        super().__init__(text)

    @property
    def field(self) -> str:
        """The field of the first problem (``""`` when it concerns the whole file)."""
        return self.problems[0][0]

    @property
    def fields(self) -> list[str]:
        """The fields of all problems, in order."""
        return [f for f, _ in self.problems]


def _describe(field: str, message: str) -> str:
    return f"field {field!r}: {message}" if field else message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelClass(_Strict):
    """One entry of a product's official legend.

    Attributes:
        value: The raster code.
        name: The official class name (where a STAC legend exists, its wording verbatim).
        key: Short machine name; where the STAC legend gives one (``classification:classes``
            ``name``) it is that name verbatim.
        description: The official class definition, or a faithful paraphrase.
        is_nodata: This entry is the product's nodata value, listed in the official legend.
        regional: Only used where regional training data allowed it (ESA CCI level-2 classes).
        ignore: A legend entry that carries no land-cover information (clouds, masked areas);
            taxonomy mappings should treat it as unlabelled.
        color: Display colour ``#rrggbb`` (lower case); required except for the nodata entry.

    """

    value: int = Field(strict=True)
    name: NonEmptyStr
    key: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: NonEmptyStr | None = None
    is_nodata: bool = False
    regional: bool = False
    ignore: bool = False
    color: str | None = Field(default=None, validate_default=True)

    @field_validator("color")
    @classmethod
    def _check_color(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if info.data.get("is_nodata"):
                return None
            raise ValueError(
                'missing: give the colour as a quoted string "#rrggbb" (an unquoted # starts a '
                "YAML comment); only the nodata entry (is_nodata: true) may omit it"
            )
        if not isinstance(value, str) or not _HEX_COLOR.match(value):
            raise ValueError(f'{value!r} is not a colour: write "#rrggbb" with six hex digits')
        return value.lower()

    @property
    def rgb(self) -> tuple[int, int, int] | None:
        """The colour as an ``(r, g, b)`` tuple of 0-255 integers, or ``None`` without one."""
        if self.color is None:
            return None
        return (int(self.color[1:3], 16), int(self.color[3:5], 16), int(self.color[5:7], 16))


class Resolution(_Strict):
    """A native pixel size with its unit."""

    value: float = Field(gt=0)
    unit: Literal["metre", "degree"]


class StacRef(_Strict):
    """Where a product is found in a STAC API.

    Attributes:
        collection: The collection id.
        asset: The asset key of the label raster in each item.
        planetary_computer: Whether Microsoft Planetary Computer serves this collection; when
            false, the id is the one LAS (and its offline world) uses.
        note: Anything a reader needs to know about this access route.

    """

    collection: NonEmptyStr
    asset: NonEmptyStr
    planetary_computer: bool = True
    note: NonEmptyStr | None = None


class EarthEngineRef(_Strict):
    """Where a product is found in Google Earth Engine."""

    asset: NonEmptyStr
    band: NonEmptyStr


class LabelVersion(_Strict):
    """A version (release) of a product and the years it covers.

    In YAML ``year: 2020`` is shorthand for ``start_year: 2020`` and ``end_year: 2020``.

    Attributes:
        name: The version name, e.g. ``v200``.
        start_year: First year covered.
        end_year: Last year covered; ``None`` when the product is still being produced.
        doi: DOI of this version, without the ``https://doi.org/`` prefix.
        citation: How to cite this version, when it differs from the product's citation.
        stac_query: Item properties that select this version inside the STAC collection.
        earth_engine: Earth Engine asset of this version, overriding the product's.
        notes: Free-text remarks.

    """

    name: NonEmptyStr
    start_year: int = Field(ge=1970, le=2100)
    end_year: int | None = Field(default=None, ge=1970, le=2100)
    doi: NonEmptyStr | None = None
    citation: NonEmptyStr | None = None
    stac_query: dict[str, str | int | float] = Field(default_factory=dict)
    earth_engine: EarthEngineRef | None = None
    notes: tuple[NonEmptyStr, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _year_shorthand(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "year" in data:
            if "start_year" in data or "end_year" in data:
                raise ValueError("give either `year` or `start_year`/`end_year`, not both")
            data = dict(data)
            year = data.pop("year")
            data["start_year"] = year
            data["end_year"] = year
        return data

    @field_validator("end_year")
    @classmethod
    def _check_end(cls, value: int | None, info: ValidationInfo) -> int | None:
        start = info.data.get("start_year")
        if value is not None and start is not None and value < start:
            raise ValueError(f"end_year {value} is before start_year {start}")
        return value

    @property
    def ongoing(self) -> bool:
        """Whether the version is still being produced (no ``end_year``)."""
        return self.end_year is None

    def years(self, until: int | None = None) -> list[int]:
        """List the years this version covers.

        Args:
            until: Last year to list for an ongoing version; defaults to the current year.

        Returns:
            The years in ascending order.

        """
        end = self.end_year
        if end is None:
            end = until if until is not None else _dt.date.today().year
        return list(range(self.start_year, end + 1))

    def covers(self, year: int) -> bool:
        """Whether ``year`` falls inside this version's years."""
        return self.start_year <= year and (self.end_year is None or year <= self.end_year)


class LabelProduct(_Strict):
    """A land-cover product used as a source of weak labels.

    Attributes:
        id: Identifier; equals the YAML file's name without ``.yaml``.
        title: Human-readable title.
        description: What the product is, in a few sentences.
        provider: Who produces it.
        homepage: Product home page.
        license: SPDX identifier, or ``proprietary`` (STAC 1.0 usage) when there is none.
        license_url: Where the licence text is.
        citation: How to cite the product.
        doi: Product DOI, without the ``https://doi.org/`` prefix.
        dtype: Raster data type of the label band.
        nodata: Raster fill value, or ``None`` when the product has none.
        crs: Native CRS: ``EPSG:<code>``, ``ESRI:<code>``, a PROJ string or WKT, or ``UTM`` for
            products stored in the WGS 84 / UTM zone of each tile.
        crs_note: Plain-words explanation of the CRS.
        resolution: Native pixel size in the CRS's unit.
        nominal_resolution_m: Nominal ground sampling distance in metres.
        tiling: How the product is cut into files.
        cadence: ``annual`` (a map per year), ``epoch`` (one map for the version's span of
            years) or ``per-scene`` (a map per satellite scene).
        stac: STAC access, if any.
        earth_engine: Earth Engine access, if any (versions may override it).
        versions: Releases and the years they cover, in chronological order.
        notes: Free-text remarks.
        classes: The official legend.

    """

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    title: NonEmptyStr
    description: NonEmptyStr
    provider: NonEmptyStr
    homepage: NonEmptyStr | None = None
    license: NonEmptyStr
    license_url: NonEmptyStr | None = None
    citation: NonEmptyStr
    doi: NonEmptyStr | None = None
    dtype: DType
    nodata: int | None = Field(strict=True)
    crs: NonEmptyStr
    crs_note: NonEmptyStr | None = None
    resolution: Resolution
    nominal_resolution_m: float = Field(gt=0)
    tiling: NonEmptyStr | None = None
    cadence: Literal["annual", "epoch", "per-scene"]
    stac: StacRef | None = None
    earth_engine: EarthEngineRef | None = None
    versions: tuple[LabelVersion, ...] = Field(min_length=1)
    notes: tuple[NonEmptyStr, ...] = ()
    classes: tuple[LabelClass, ...] = Field(min_length=1)

    @field_validator("nodata")
    @classmethod
    def _check_nodata(cls, value: int | None, info: ValidationInfo) -> int | None:
        dtype = info.data.get("dtype")
        if value is not None and dtype is not None:
            low, high = _DTYPE_RANGE[dtype]
            if not low <= value <= high:
                raise ValueError(f"{value} does not fit {dtype} (allowed {low}..{high})")
        return value

    @field_validator("crs")
    @classmethod
    def _check_crs(cls, value: str) -> str:
        if value == _UTM:
            return value
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            CRS.from_user_input(value)
        except CRSError as err:
            raise ValueError(
                f"{value!r} is not a CRS pyproj understands ({err}); write EPSG:<code>, "
                "ESRI:<code>, a PROJ string, WKT, or UTM for the local UTM zone of each tile"
            ) from None
        return value

    @field_validator("resolution")
    @classmethod
    def _check_resolution_unit(cls, value: Resolution, info: ValidationInfo) -> Resolution:
        crs = info.data.get("crs")
        if crs is None:
            return value
        expected = "degree" if _is_geographic(crs) else "metre"
        if value.unit != expected:
            raise ValueError(f"unit {value.unit!r} does not match CRS {crs!r}: use {expected!r}")
        return value

    @field_validator("versions")
    @classmethod
    def _check_versions(
        cls, value: tuple[LabelVersion, ...], info: ValidationInfo
    ) -> tuple[LabelVersion, ...]:
        _no_duplicates((v.name for v in value), "version name")
        for before, after in zip(value, value[1:], strict=False):
            if before.end_year is None or before.end_year >= after.start_year:
                raise ValueError(
                    f"versions {before.name!r} and {after.name!r} overlap or are out of order: "
                    "list versions chronologically with disjoint years"
                )
        has_ee = info.data.get("earth_engine") is not None or all(v.earth_engine for v in value)
        if info.data.get("stac") is None and not has_ee:
            raise ValueError(
                "the product is served nowhere: set `stac` and/or `earth_engine` "
                "(on the product or on every version)"
            )
        return value

    @field_validator("classes")
    @classmethod
    def _check_classes(
        cls, value: tuple[LabelClass, ...], info: ValidationInfo
    ) -> tuple[LabelClass, ...]:
        _no_duplicates((c.value for c in value), "class value")
        _no_duplicates((c.key for c in value if c.key is not None), "class key")
        dtype = info.data.get("dtype")
        nodata = info.data.get("nodata")
        for i, c in enumerate(value):
            where = f"classes[{i}] (value {c.value}, {c.name!r})"
            if dtype is not None:
                low, high = _DTYPE_RANGE[dtype]
                if not low <= c.value <= high:
                    raise ValueError(f"{where}: {c.value} does not fit {dtype} ({low}..{high})")
            if c.is_nodata and c.value != nodata:
                raise ValueError(
                    f"{where}: is_nodata is set but the product's nodata is {nodata}; "
                    "is_nodata marks the legend entry whose value is the nodata value"
                )
            if not c.is_nodata and nodata is not None and c.value == nodata:
                raise ValueError(
                    f"{where}: value {c.value} is the product's nodata; remove the class, or "
                    "set `is_nodata: true` if the official legend lists it"
                )
        if all(c.is_nodata for c in value):
            raise ValueError("the legend has no class besides the nodata entry")
        if nodata is None and dtype is not None:
            low, high = _DTYPE_RANGE[dtype]
            if len(value) > high - low:  # (values are unique and fit the dtype)
                # Builds fill pixels no file covers with a value no class uses (`fill`).
                raise ValueError(
                    f"the legend uses every value of {dtype}, so none is left for pixels "
                    "without data: give the product's `nodata` value, or a wider dtype"
                )
        return value

    @property
    def codes(self) -> list[int]:
        """Valid class values in ascending order, without the nodata value."""
        return sorted(c.value for c in self.classes if not c.is_nodata and c.value != self.nodata)

    @property
    def fill(self) -> int:
        """The value a build reads where the product has no data.

        Its ``nodata``; for a product without one, the largest value of its dtype that no
        legend entry uses: 0 (GDAL's default fill) may be a class, and pixels no file covers
        would become that class, or an unknown code that fails the sample.
        """
        if self.nodata is not None:
            return self.nodata
        used = {c.value for c in self.classes}
        value = _DTYPE_RANGE[self.dtype][1]
        while value in used:  # the legend has far fewer entries than any dtype has values
            value -= 1
        return value

    @property
    def nodata_class(self) -> LabelClass | None:
        """The legend entry of the nodata value, when the official legend lists one."""
        return next((c for c in self.classes if c.is_nodata), None)

    @property
    def is_utm(self) -> bool:
        """Whether the product is stored in the local UTM zone of each tile."""
        return self.crs == _UTM

    def class_by_value(self, value: int) -> LabelClass:
        """Return the legend entry of a raster value.

        Args:
            value: A raster code (the nodata value too, when the legend lists it).

        Raises:
            KeyError: ``value`` is not in the legend.

        """
        # Checks and drafts look every code up: a scan per code took minutes for 20,000 codes.
        classes, index = self.__dict__.get("_by_value", ((), {}))
        if classes is not self.classes:  # first use, or a model_copy with other classes
            index = {c.value: c for c in self.classes}
            self.__dict__["_by_value"] = (self.classes, index)  # a cache, not a field
        found: LabelClass | None = index.get(value)
        if found is None:
            raise KeyError(f"{self.id}: no class with value {value}; valid codes: {self.codes}")
        return found

    def class_by_key(self, key: str) -> LabelClass:
        """Return the legend entry with machine name ``key``.

        Raises:
            KeyError: No class has that key.

        """
        for c in self.classes:
            if c.key == key:
                return c
        keys = [c.key for c in self.classes if c.key]
        raise KeyError(f"{self.id}: no class with key {key!r}; keys: {keys}")

    def color_table(self) -> dict[int, tuple[int, int, int]]:
        """Return colours by value for every legend entry that has one (nodata too, if coloured).

        Returns:
            ``{value: (r, g, b)}`` with 0-255 components, in ascending value order.

        """
        table = {c.value: c.rgb for c in sorted(self.classes, key=lambda c: c.value)}
        return {v: rgb for v, rgb in table.items() if rgb is not None}

    def names(self) -> dict[int, str]:
        """Return class names by value, ascending (the nodata entry too, if listed)."""
        return {c.value: c.name for c in sorted(self.classes, key=lambda c: c.value)}

    def years(self, until: int | None = None) -> list[int]:
        """List all years covered by any version, ascending.

        Args:
            until: Last year to list for an ongoing version; defaults to the current year.

        """
        return sorted({y for v in self.versions for y in v.years(until)})

    def version_for_year(self, year: int) -> LabelVersion:
        """Return the version that covers ``year``.

        Raises:
            KeyError: No version covers it.

        """
        for v in self.versions:
            if v.covers(year):
                return v
        spans = ", ".join(
            f"{v.name}: {v.start_year}-{v.end_year if v.end_year is not None else 'ongoing'}"
            for v in self.versions
        )
        raise KeyError(f"{self.id}: no version covers {year} ({spans})")

    def earth_engine_for(self, version: LabelVersion | str) -> EarthEngineRef | None:
        """Return a version's Earth Engine asset: its own, else the product's, else ``None``."""
        if isinstance(version, str):
            matches = [v for v in self.versions if v.name == version]
            if not matches:
                raise KeyError(f"{self.id}: no version {version!r}")
            version = matches[0]
        return version.earth_engine or self.earth_engine


def _no_duplicates(items: Iterable[object], what: str) -> None:
    repeated = sorted((str(k) for k, n in Counter(items).items() if n > 1))
    if repeated:
        raise ValueError(
            f"{what} listed more than once: {', '.join(repeated)}; each must be unique"
        )


def _is_geographic(crs: str) -> bool:
    if crs == _UTM:
        return False
    from pyproj import CRS

    return bool(CRS.from_user_input(crs).is_geographic)


# --- loading ---------------------------------------------------------------------------------


def labels_dir() -> Path:
    """Return the folder of label product definitions, ``<catalog>/labels``."""
    return catalog_dir() / "labels"


def label_product_ids() -> list[str]:
    """List the ids of all label products defined in the catalog, sorted."""
    return sorted(p.stem for p in labels_dir().glob("*.yaml"))


def load_label_product(product_id: str) -> LabelProduct:
    """Load and validate ``catalog/labels/<product_id>.yaml``.

    Args:
        product_id: The product id, e.g. ``esa-worldcover``.

    Returns:
        The validated product.

    Raises:
        CatalogError: The file is missing, is not valid YAML or breaks the schema; the error
            names the file, the field and what is allowed.

    """
    path = labels_dir() / f"{product_id}.yaml"
    if not path.is_file():
        known = ", ".join(label_product_ids()) or "none"
        raise CatalogError(path, [("", f"no label product {product_id!r}; known: {known}")])
    return _load_file_cached(path, file_state(path))


@functools.lru_cache(maxsize=128)
def _load_file_cached(path: Path, state: tuple[tuple[str, int, int], ...]) -> LabelProduct:
    # Builds look legends up for every sample; parse each file once per version of it.
    return _load_file(path)


def label_products() -> dict[str, LabelProduct]:
    """Load every label product of the catalog.

    Returns:
        Products by id, sorted by id.

    Raises:
        CatalogError: For the first file that does not validate.

    """
    return {p.stem: _load_file(p) for p in sorted(labels_dir().glob("*.yaml"))}


def read_catalog_text(path: Path) -> str:
    """The text of a catalog file.

    Raises:
        CatalogError: It cannot be read, or is not UTF-8 (an editor's Latin-1 ``é``).

    """
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise CatalogError(path, [("", f"cannot be read: {err}")]) from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        problem = (
            f"is not UTF-8 text (byte 0x{err.object[err.start]:02x} at line {line}): save the "
            "file as UTF-8"
        )
        raise CatalogError(path, [("", problem)]) from None


def _load_file(path: Path) -> LabelProduct:
    text = read_catalog_text(path)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise CatalogError(path, [("", f"is not valid YAML: {yaml_error_text(err)}")]) from None
    if not isinstance(data, dict):
        raise CatalogError(
            path, [("", "must be a YAML mapping of product fields (id, title, classes, ...)")]
        )
    try:
        product = LabelProduct.model_validate(data)
    except ValidationError as err:
        raise CatalogError(path, _problems(err, data)) from None
    if product.id != path.stem:
        raise CatalogError(
            path, [("id", f"{product.id!r} must equal the file name without .yaml ({path.stem!r})")]
        )
    return product


def _problems(err: ValidationError, data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Turn pydantic's errors into ``(field, message)`` pairs that say what is allowed."""
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        message = e["msg"]
        if e["type"] == "value_error" and "error" in e.get("ctx", {}):
            message = str(e["ctx"]["error"])
        elif e["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc[:-1])
            message = "unknown field" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "missing":
            message = "required field is missing"
        elif e["type"].endswith("_type") or e["type"] == "literal_error":
            message = f"{message} (got {e.get('input')!r})"
        value = _class_value(loc, data)
        if value is not None:
            message += f" [class with value {value}]"
        problems.append((_format_loc(loc), message))
    return problems


def _format_loc(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _class_value(loc: Sequence[int | str], data: Mapping[str, Any]) -> Any:
    if len(loc) >= 3 and loc[0] == "classes" and isinstance(loc[1], int):
        classes = data.get("classes")
        if (
            isinstance(classes, list)
            and loc[1] < len(classes)
            and isinstance(classes[loc[1]], Mapping)
        ):
            return classes[loc[1]].get("value")
    return None


def _allowed_fields(loc: Sequence[int | str]) -> list[str]:
    model: type[BaseModel] | None = LabelProduct
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    if model is None:
        return []
    names = list(model.model_fields)
    if model is LabelVersion:
        names.append("year")
    return names


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, tuple, list, dict):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
