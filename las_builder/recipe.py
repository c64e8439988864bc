"""Recipes: one YAML file that says how to build a LAS dataset.

A recipe names the STAC API to build from, the time window, how many samples of what size to
cut, where they may lie and how they are stratified, which imagery and label products each
sample gets, and where the dataset is written. :func:`load_recipe` reads it:

* ``${VAR}`` in any string is replaced by the environment variable ``VAR`` (an error names the
  variable and the key when it is unset); ``${VAR:-default}`` falls back to ``default``;
  ``$$`` is a literal ``$``.
* ``overrides`` (the command line's ``--set dotted.key=value``) replace single values before
  validation; values are parsed as YAML (``--set sample.count=64``,
  ``--set sampling.stratify=null``, ``--set labels[0].year=2020`` or ``labels.0.year``).
* Validation errors raise :class:`RecipeError`, whose message names the file, the dotted key,
  the bad value and what is allowed, e.g.
  ``recipes/demo.yaml: sample.size_px = -3: must be > 0``.

Example:
    >>> recipe = load_recipe("recipes/demo.yaml", ["sample.count=8"])  # doctest: +SKIP
    >>> recipe.sample.spacing  # doctest: +SKIP
    2000.0

"""

from __future__ import annotations

import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from las_builder.catalog import CatalogError, LabelVersion, label_product_ids, load_mapping
from las_builder.catalog.yamlio import load_yaml, yaml_error_text
from las_builder.security import redact

__all__ = [
    "EarthEngineSpec",
    "Imagery",
    "LabelSpec",
    "NaipSpec",
    "OutputSpec",
    "Recipe",
    "RecipeError",
    "SampleSpec",
    "SamplingSpec",
    "Sentinel1Spec",
    "Sentinel2Spec",
    "StacSpec",
    "StratifySpec",
    "FrameSpec",
    "TimeWindow",
    "load_recipe",
]

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""A string that is not empty or blank."""


def _not_bool(value: Any) -> Any:
    # pydantic reads true/false as 1/0 for an int, and YAML 1.1 reads yes/no/on/off as
    # booleans: `count: yes` would plan one sample.
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, not {str(value).lower()}")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
"""An integer; a YAML boolean is refused rather than read as 1 or 0."""


def _not_bool_number(value: Any) -> Any:
    # `max_nodata: yes` would otherwise keep samples of any nodata (1.0), `resolution_m: true`
    # plan 1 m pixels.
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


Float = Annotated[float, BeforeValidator(_not_bool_number), Field(allow_inf_nan=False)]
"""A finite number; a YAML boolean, ``.inf`` and ``.nan`` are refused."""

_MIN_RESOLUTION_M = 0.001
"""Finest pixel: 1 mm. Below ~1e-9 m footprints fall under the precision of longitudes."""
_MAX_EDGE_M = 1_000_000.0
"""Largest sample edge: 1,000 km. A sample is one UTM grid; far larger ones project to outlines
GEOS cannot intersect (a 10,000 km edge failed planning)."""
_MAX_SPACING_M = math.pi * 6_378_137.0 / 2
"""Largest grid spacing: a quarter meridian of the grid's sphere (:mod:`las_builder.geobox`),
so that each hemisphere keeps a row of cells; beyond it the grid arithmetic overflows."""


class RecipeError(ValueError):
    """A recipe cannot be read or breaks the schema.

    Attributes:
        path: The recipe file.
        problems: ``(dotted key, message)`` pairs; the key is empty when the problem concerns
            the whole file. Each message already holds the bad value and what is allowed.

    """

    def __init__(self, path: Path | str, problems: Sequence[tuple[str, str]]) -> None:
        self.path = Path(path)
        self.problems: list[tuple[str, str]] = list(problems) or [("", "invalid")]
        lines = [f"{self.path}: {_join(key, msg)}" for key, msg in self.problems]
        super().__init__("\n".join(lines))

    @property
    def keys(self) -> list[str]:
        """The dotted keys of all problems, in order."""
        return [k for k, _ in self.problems]


def _join(key: str, message: str) -> str:
    if not key:
        return message
    return f"{key} {message}" if message.startswith("= ") else f"{key}: {message}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StacSpec(_Strict):
    """The STAC API to build from.

    Attributes:
        url: Root of the STAC API.
        sign: How asset hrefs are signed before reading: ``none`` or ``planetary-computer``
            (SAS tokens from the Planetary Computer token API).

    """

    url: Name
    sign: Literal["none", "planetary-computer"] = "none"

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL of a STAC API root")
        return value


class TimeWindow(_Strict):
    """The time window imagery is searched in (both days included)."""

    start: date
    end: date

    @field_validator("end")
    @classmethod
    def _ordered(cls, value: date, info: ValidationInfo) -> date:
        start = info.data.get("start")
        if start is not None and value < start:
            raise ValueError(f"must not be before start ({start})")
        return value

    @property
    def interval(self) -> str:
        """The window as a STAC ``datetime`` search interval."""
        return f"{self.start.isoformat()}T00:00:00Z/{self.end.isoformat()}T23:59:59Z"


class SampleSpec(_Strict):
    """How many samples, of what size, and how they are drawn.

    Attributes:
        count: Number of samples to plan.
        size_px: Sample edge in pixels at ``resolution_m``; the edge is at most 1,000 km.
        resolution_m: Pixel size in metres (at least 1 mm).
        seed: Random seed of the plan (>= 0); the same seed gives the same plan.
        spacing_m: Grid cell size (distance between sample centres); ``None`` means
            1.25 sample edges. Must be at least one sample edge, so samples cannot overlap,
            and at most a quarter meridian (~10,019 km).

    """

    count: Int = Field(gt=0)
    size_px: Int = Field(default=256, gt=0)
    resolution_m: Float = Field(default=10.0, ge=_MIN_RESOLUTION_M)
    seed: Int = Field(default=0, ge=0)  # numpy's generators take no negative seed
    spacing_m: Float | None = Field(default=None, gt=0, le=_MAX_SPACING_M)

    @field_validator("resolution_m")
    @classmethod
    def _edge_fits(cls, value: float, info: ValidationInfo) -> float:
        size = info.data.get("size_px")
        if size is not None and size * value > _MAX_EDGE_M:
            raise ValueError(
                f"a sample edge of size_px * resolution_m = {size * value:g} m is more than "
                f"{_MAX_EDGE_M:g} m: use fewer pixels (size_px) or smaller ones"
            )
        return value

    @field_validator("spacing_m")
    @classmethod
    def _spacing_fits(cls, value: float | None, info: ValidationInfo) -> float | None:
        size, res = info.data.get("size_px"), info.data.get("resolution_m")
        if value is not None and size is not None and res is not None and value < size * res:
            raise ValueError(
                f"must be >= one sample edge (size_px * resolution_m = {size * res:g} m) so "
                "that samples do not overlap"
            )
        return value

    @property
    def edge_m(self) -> float:
        """Sample edge in metres."""
        return self.size_px * self.resolution_m

    @property
    def spacing(self) -> float:
        """The grid spacing in metres: ``spacing_m`` or its default, 1.25 sample edges."""
        from las_builder.geobox import default_spacing

        if self.spacing_m is not None:
            return float(self.spacing_m)
        return default_spacing(self.size_px, self.resolution_m)


class FrameSpec(_Strict):
    """Where samples may lie: inside the union of a collection's item footprints."""

    collection: Name


class StratifySpec(_Strict):
    """Stratify by the class at each candidate's centre in a categorical raster collection."""

    collection: Name
    asset: Name


class SamplingSpec(_Strict):
    """The sampling frame and the stratification (``None``: no stratification)."""

    frame: FrameSpec
    stratify: StratifySpec | None = None


class Sentinel2Spec(_Strict):
    """Sentinel-2 L2A imagery.

    Attributes:
        collection: STAC collection id.
        max_cloud: Highest scene cloud cover in percent.
        composite: ``None`` (one best scene per sample) or ``median`` (a median of the
            scenes in the window).

    """

    collection: Name = "sentinel-2-l2a"
    max_cloud: Float = Field(default=60.0, ge=0, le=100)
    composite: Literal["median"] | None = None


class Sentinel1Spec(_Strict):
    """Sentinel-1 RTC backscatter; ``units`` is ``linear`` (power) or ``db``."""

    collection: Name = "sentinel-1-rtc"
    units: Literal["linear", "db"] = "linear"


class NaipSpec(_Strict):
    """NAIP aerial imagery where it exists.

    Attributes:
        collection: STAC collection id.
        factor: Size multiplier: a NAIP sample has ``factor`` times as many pixels per edge
            as the 10 m sample (``factor`` NAIP pixels per 10 m pixel edge).

    """

    collection: Name = "naip"
    factor: Int = Field(default=10, gt=0)


class Imagery(_Strict):
    """Imagery each sample gets.

    ``sentinel-1: null`` leaves Sentinel-1 out; ``naip`` is optional. Sentinel-2 is always
    read: scene choice, Dynamic World and nodata follow it.
    """

    sentinel_2: Sentinel2Spec = Field(default_factory=Sentinel2Spec, alias="sentinel-2")
    sentinel_1: Sentinel1Spec | None = Field(default_factory=Sentinel1Spec, alias="sentinel-1")
    naip: NaipSpec | None = None

    @field_validator("sentinel_2", mode="before")
    @classmethod
    def _sentinel_2_is_read(cls, value: Any) -> Any:
        if value is None:
            raise ValueError(
                "Sentinel-2 cannot be left out (scene choice, Dynamic World and nodata follow "
                "it); sentinel-1 and naip can be null"
            )
        return value


class LabelSpec(_Strict):
    """One label product.

    Attributes:
        product: Product id; a file of ``catalog/labels``.
        collection: STAC collection id.
        asset: Asset key of the label raster.
        year: Year of the map; ``None`` for per-scene products (matched to the chosen
            Sentinel-2 scene).

    """

    product: Name
    collection: Name
    asset: Name
    year: Int | None = Field(default=None, ge=1970, le=2100, validate_default=True)

    @field_validator("product")
    @classmethod
    def _known_product(cls, value: str) -> str:
        try:
            known = label_product_ids()
        except FileNotFoundError as err:  # LAS_CATALOG names no folder
            raise ValueError(str(err)) from None
        if value not in known:
            raise ValueError(f"unknown label product; allowed: {', '.join(known)}")
        # A build maps every sample's labels with the product's mapping: a broken or
        # incomplete one is a recipe error now, not a failed sample per shard later.
        try:
            mapping = load_mapping(value)
        except CatalogError as err:
            raise ValueError(
                f"its catalog entry does not load (`las catalog check` lists the problems): {err}"
            ) from None
        if mapping.unmapped:
            codes = ", ".join(map(str, mapping.unmapped))
            raise ValueError(
                f"legend codes {codes} are neither mapped nor ignored in "
                f"taxonomy/mappings/{value}.yaml; map each (or send it to ignore), then run "
                "`las catalog check`"
            )
        return value

    @field_validator("year")
    @classmethod
    def _year_fits_cadence(cls, value: int | None, info: ValidationInfo) -> int | None:
        product = info.data.get("product")
        if product is None:  # the product was refused above
            return value
        legend = load_mapping(product).product
        if legend.cadence == "per-scene" and value is not None:
            # The build would mosaic the product's scenes of the whole year over the sample,
            # whichever date each has, instead of the one taken with its Sentinel-2 scene.
            raise ValueError(
                f"{product} has a map per satellite scene (cadence per-scene in "
                f"catalog/labels/{product}.yaml): write `year: null`, each sample then takes "
                "the map of its own Sentinel-2 scene"
            )
        if legend.cadence != "per-scene" and value is None:
            # Without a year the build looks for a map of the Sentinel-2 scene's day, which
            # an annual product does not have: the layer would be empty.
            years = ", ".join(f"{v.name}: {_span(v)}" for v in legend.versions)
            raise ValueError(
                f"{product} has one map per {'year' if legend.cadence == 'annual' else 'epoch'} "
                f"(cadence {legend.cadence}): give the year of the map to use ({years})"
            )
        return value


def _span(version: LabelVersion) -> str:
    """A version's years as ``2020``, ``2016-2020`` or ``2015-now``."""
    if version.end_year == version.start_year:
        return str(version.start_year)
    return f"{version.start_year}-{version.end_year if version.end_year is not None else 'now'}"


class OutputSpec(_Strict):
    """Where the dataset goes: a local path or an ``s3://bucket/prefix`` URL."""

    path: Name
    samples_per_shard: Int = Field(default=8, gt=0)
    # Each sample's chunk: Blosc LZ4 over bit-shuffled values (on the offline world's imagery
    # smaller than zstd level 3, ~4x faster to decompress, ~7x to compress) or zstd level 3.
    compressor: Literal["blosc-lz4", "zstd"] = "blosc-lz4"

    @field_validator("path")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        # s3fs reads `KEY:SECRET@` as part of the bucket name, which every message about the
        # bucket (a botocore error, "no bucket ...") would then print.
        if "::" in value:
            # fsspec reads "a::b" as URL chaining: `loc::x` wrote the plan to `loc`
            raise ValueError(
                "must not contain '::' (fsspec reads it as chained URLs and would write "
                "elsewhere): rename the folder"
            )
        scheme, sep, rest = value.partition("://")
        if sep and "@" in rest.split("/", 1)[0]:
            raise ValueError(
                f"must not carry credentials ({scheme}://user:password@...): give them by the "
                "environment or a profile (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
            )
        return value


class EarthEngineSpec(_Strict):
    """Earth Engine access, used when ``backend: earthengine``."""

    project: Name | None = None
    key_file: str | None = None  # "" (e.g. ${GOOGLE_APPLICATION_CREDENTIALS:-}) means none
    endpoint: Literal["default", "high-volume"] = "high-volume"


class Recipe(_Strict):
    """A validated recipe. Field names are the YAML keys (``imagery.sentinel-2`` etc.)."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    stac: StacSpec
    time: TimeWindow
    sample: SampleSpec
    sampling: SamplingSpec
    imagery: Imagery = Field(default_factory=Imagery)
    labels: list[LabelSpec] = Field(min_length=1)
    max_nodata: Float = Field(default=0.2, ge=0, le=1)
    output: OutputSpec
    backend: Literal["stac", "earthengine"] = "stac"  # where pixels come from
    earthengine: EarthEngineSpec = Field(default_factory=EarthEngineSpec)

    _source: Path | None = PrivateAttr(default=None)

    @field_validator("labels")
    @classmethod
    def _unique_products(cls, value: list[LabelSpec]) -> list[LabelSpec]:
        seen: set[str] = set()
        for spec in value:
            if spec.product in seen:
                raise ValueError(f"product {spec.product!r} is listed twice")
            seen.add(spec.product)
        return value

    @property
    def source(self) -> Path | None:
        """The file the recipe was loaded from (``None`` when built in code)."""
        return self._source


# --------------------------------------------------------------------------- loading


_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute(value: Any, key: str, missing: list[tuple[str, str]]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree."""
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is not None:
                return found
            if default is not None:
                return default
            missing.append(
                (
                    key,
                    f"environment variable {name} is not set (set it, or write "
                    f"${{{name}:-default}} in the recipe)",
                )
            )
            return match.group(0)

        return _ENV_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, _child(key, k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{key}[{i}]", missing) for i, v in enumerate(value)]
    return value


def _child(key: str, part: Any) -> str:
    return f"{key}.{part}" if key else str(part)


_KEY_PART_RE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _split_key(dotted: str) -> list[str | int]:
    """Split ``a.b[0].c`` or ``a.b.0.c`` into ``["a", "b", 0, "c"]``."""
    parts: list[str | int] = []
    pos = 0
    for match in _KEY_PART_RE.finditer(dotted):
        gap = dotted[pos : match.start()]
        if gap not in ("", "."):
            raise ValueError(f"cannot read key {dotted!r}")
        name, index = match.group(1), match.group(2)
        if index is not None:
            parts.append(int(index))
        elif name.isdigit():
            parts.append(int(name))
        else:
            parts.append(name)
        pos = match.end()
    if not parts or dotted[pos:] not in ("",):
        raise ValueError(f"cannot read key {dotted!r}")
    return parts


def _format_key(parts: Sequence[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _apply_override(data: dict[str, Any], override: str) -> str:
    """Set one ``dotted.key=value`` in ``data``; return the normalised dotted key."""
    if "=" not in override:
        raise ValueError(f"--set {override!r}: expected KEY=VALUE, e.g. sample.count=64")
    raw_key, raw_value = override.split("=", 1)
    raw_key = raw_key.strip()
    try:
        parts = _split_key(raw_key)
        value = load_yaml(raw_value) if raw_value.strip() else ""
    except ValueError as err:
        raise ValueError(f"--set {override!r}: {err}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"--set {override!r}: {yaml_error_text(err)}") from None
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = _format_key(parts[:i])
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                size = len(node) if isinstance(node, list) else 0
                raise ValueError(f"--set {raw_key}: {where} has no item {part} (it has {size})")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise ValueError(f"--set {raw_key}: {_format_key(parts[:i])} is not a mapping")
            if node.get(part) is None:  # absent or null: start a mapping
                node[part] = {}
            elif not isinstance(node[part], dict | list):
                raise ValueError(f"--set {raw_key}: {_format_key(parts[: i + 1])} is not a mapping")
            node = node[part]
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ValueError(f"--set {raw_key}: {_format_key(parts[:-1])} has no item {last}")
    elif not isinstance(node, dict):
        raise ValueError(f"--set {raw_key}: {_format_key(parts[:-1])} is not a mapping")
    node[last] = value
    return _format_key(parts)


def load_recipe(path: Path | str, overrides: Sequence[str] = ()) -> Recipe:
    """Read, substitute, override and validate a recipe file.

    Args:
        path: The recipe YAML file.
        overrides: ``dotted.key=value`` strings (the CLI's ``--set``); values are YAML.

    Returns:
        The validated recipe; ``recipe.source`` is ``path``.

    Raises:
        RecipeError: The file is missing or not YAML, an override cannot be applied, an
            environment variable is unset, or a value breaks the schema; the message names
            the file, the dotted key, the bad value and what is allowed.

    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RecipeError(path, [("", f"cannot be read: {err.strerror or err}")]) from None
    except UnicodeDecodeError as err:
        byte = err.object[err.start]
        problem = f"is not UTF-8 text (byte {byte:#04x} at offset {err.start}): save it as UTF-8"
        raise RecipeError(path, [("", problem)]) from None
    try:
        data = load_yaml(text)  # a repeated key (a second `labels:`) is an error, not ignored
    except yaml.YAMLError as err:
        raise RecipeError(path, [("", f"is not valid YAML: {yaml_error_text(err)}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            path, [("", "must be a YAML mapping of recipe keys (name, stac, time, sample, ...)")]
        )

    overridden: set[str] = set()
    for override in overrides:
        try:
            overridden.add(_apply_override(data, override))
        except ValueError as err:
            raise RecipeError(path, [("", str(err))]) from None

    missing: list[tuple[str, str]] = []
    data = _substitute(data, "", missing)
    if missing:
        raise RecipeError(path, missing)

    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(path, _problems(err, data, overridden)) from None
    recipe._source = path
    return recipe


# --------------------------------------------------------------------------- error messages


def _lookup(data: Any, loc: Sequence[str | int]) -> tuple[bool, Any]:
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False, None
    return True, node


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class whose fields sit at ``loc`` (by YAML key), if any."""
    model: Any = Recipe
    for part in loc:
        model = _unwrap(model)
        if isinstance(part, int):
            args = typing.get_args(model)
            if typing.get_origin(model) is list and args:
                model = args[0]
                continue
            return None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = next(
            (f for n, f in model.model_fields.items() if part in (n, f.alias)),
            None,
        )
        if field is None:
            return None
        model = field.annotation
    model = _unwrap(model)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Strip ``Optional``/``Annotated`` from an annotation."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _allowed_keys(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _what(error: Mapping[str, Any]) -> str:
    """Say what is allowed, from one pydantic error."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    bounds = {
        "greater_than": ("gt", ">"),
        "greater_than_equal": ("ge", ">="),
        "less_than": ("lt", "<"),
        "less_than_equal": ("le", "<="),
    }
    if kind in bounds:
        name, op = bounds[kind]
        bound = ctx.get(name)
        shown = f"{bound:g}" if isinstance(bound, int | float) else str(bound)
        return f"must be {op} {shown}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be an integer"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("string_type",):
        return "must be a string"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind.startswith("date_"):
        return "must be a date YYYY-MM-DD"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping"
    if kind == "list_type":
        return "must be a list"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    msg = str(error.get("msg", "invalid"))
    return msg[:1].lower() + msg[1:]


def _problems(
    err: ValidationError, data: Mapping[str, Any], overridden: set[str]
) -> list[tuple[str, str]]:
    """Turn pydantic's errors into ``(dotted key, message)`` pairs."""
    problems = []
    for error in err.errors(include_url=False):
        loc = [p for p in error["loc"] if isinstance(p, int | str)]
        key = _format_key(loc)
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(_model_at(loc[:-1]))
            message = f"unknown key {loc[-1]!r}" + (
                f"; allowed: {', '.join(allowed)}" if allowed else ""
            )
        elif error["type"] == "missing":
            message = "required key is missing"
            allowed = _allowed_keys(_model_at(loc))
            if allowed:
                message += f" (a mapping of {', '.join(allowed)})"
        else:
            found, value = _lookup(data, loc)
            shown = _show(value) if found else _show(error.get("input"))
            message = f"= {shown}: {_what(error)}"
            if key in overridden:
                message = f"= {shown} (from --set): {_what(error)}"
            if not loc:  # a whole-recipe check
                message = _what(error)
            problems.append((key, message) if loc else ("", message))
            continue
        problems.append((key, message))
    return problems


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(redact(value))  # a URL's token or user:password@ is never shown
    if isinstance(value, dict | list):
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        return text if len(text) <= 80 else text[:77] + "..."
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
