"""The LAS taxonomy and how each label product's legend maps onto it.

Plain data, validated here:

* ``catalog/taxonomy/las.yaml``: the LAS classes, uint8 codes ``1..N`` with a key, a name, a
  written definition and a colour. Label rasters use :data:`LAS_NODATA` (0) where no product
  covers a pixel and :data:`LAS_IGNORE` (255) where a product covers it without a faithful LAS
  class.
* ``catalog/taxonomy/mappings/<product>.yaml``: for each native code of a product's legend the
  LAS key it becomes, or ``ignore``, with a short ``why`` where the choice is not obvious. An
  entry is either ``<code>: <key>`` or ``<code>: {to: <key>, why: <text>}``. Drafts written by
  ``las catalog add`` also carry ``review: true``, ``similarity`` and ``alternative`` until a
  person has checked them.

Example:
    >>> import numpy as np
    >>> from las_builder.catalog import load_mapping
    >>> wc = load_mapping("esa-worldcover")
    >>> wc.map(np.array([[10, 95], [0, 100]], dtype=np.uint8)).tolist()
    [[2, 10], [0, 11]]

"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from las_builder._paths import catalog_dir, file_state
from las_builder.catalog.labels import (
    _DTYPE_RANGE,
    CatalogError,
    LabelProduct,
    label_product_ids,
    labels_dir,
    load_label_product,
    read_catalog_text,
)
from las_builder.catalog.yamlio import load_yaml, yaml_error_text

__all__ = [
    "IGNORE",
    "LAS_IGNORE",
    "LAS_NODATA",
    "LUT_UNMAPPED",
    "TODO_MARK",
    "WARNING",
    "MappingRule",
    "ProductMapping",
    "Taxonomy",
    "TaxonomyClass",
    "UnknownCodeError",
    "check_catalog",
    "load_mapping",
    "load_taxonomy",
    "mapping_ids",
    "mapping_problems",
    "mappings_dir",
    "taxonomy_dir",
]

LAS_NODATA: Final = 0
"""LAS label value of pixels no product covers (the product's own nodata, or outside it)."""

LAS_IGNORE: Final = 255
"""LAS label value of pixels that are covered but carry no usable class: a native class without
a faithful LAS class (mosaics, clouds), or a tie between products in the consensus."""

LUT_UNMAPPED: Final = 254
"""Value of a lookup table (:meth:`ProductMapping.lut`) at codes that are not in the product's
legend or that its mapping does not cover. It never appears in a LAS label raster."""

IGNORE = "ignore"
"""The mapping target that sends a native code to :data:`LAS_IGNORE`."""

WARNING = "warning: "
"""Prefix of the problems :func:`check_catalog` reports as warnings rather than errors."""

TODO_MARK = "TODO(las catalog add)"
"""Marker of the lines of a drafted label file that a person must fill in or confirm."""

_MAX_CLASSES = LUT_UNMAPPED - 1
_BUILD_TAXONOMY = "las"
"""The taxonomy whose codes builds write (:func:`load_taxonomy`'s default)."""
_DENSE_TABLE_MAX = 2**16 - 1
"""Largest dtype maximum whose whole range :meth:`ProductMapping.lut` tables by default."""
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_KEY = r"^[a-z][a-z0-9_]*$"
_RESERVED_KEYS = {IGNORE, "nodata", "no_data", "unmapped"}

NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the taxonomy ----------------------------------------------------------------------------


class TaxonomyClass(_Strict):
    """One LAS class.

    Attributes:
        code: The uint8 label value, ``1..N``.
        key: Machine name (lower-case snake case), the target mapping files use.
        name: Human-readable name.
        definition: What the class includes and excludes, with thresholds.
        color: Display colour ``#rrggbb`` (normalised to lower case).

    """

    code: int = Field(strict=True, ge=1, le=_MAX_CLASSES)
    key: str = Field(pattern=_KEY)
    name: NonEmptyStr
    definition: NonEmptyStr
    color: str

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        if value in _RESERVED_KEYS:
            raise ValueError(f"{value!r} is reserved; reserved keys: {sorted(_RESERVED_KEYS)}")
        return value

    @field_validator("color")
    @classmethod
    def _check_color(cls, value: str) -> str:
        if not _HEX_COLOR.match(value):
            raise ValueError(
                f'{value!r} is not a colour: write "#rrggbb" with six hex digits, quoted '
                "(an unquoted # starts a YAML comment)"
            )
        return value.lower()

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The colour as an ``(r, g, b)`` tuple of 0-255 integers."""
        return (int(self.color[1:3], 16), int(self.color[3:5], 16), int(self.color[5:7], 16))


class Taxonomy(_Strict):
    """The LAS classes (``catalog/taxonomy/<id>.yaml``).

    Attributes:
        id: Identifier; equals the file name without ``.yaml``.
        title: Human-readable title.
        version: Integer version, raised whenever a code's meaning changes.
        description: What the taxonomy is for.
        nodata: The no-data label value; always :data:`LAS_NODATA`.
        ignore: The ignore label value; always :data:`LAS_IGNORE`.
        classes: The classes, codes ``1..N`` in ascending order without gaps.

    """

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    title: NonEmptyStr
    version: int = Field(strict=True, ge=1)
    description: NonEmptyStr | None = None
    nodata: Literal[0] = LAS_NODATA
    ignore: Literal[255] = LAS_IGNORE
    classes: tuple[TaxonomyClass, ...] = Field(min_length=1)

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, value: tuple[TaxonomyClass, ...]) -> tuple[TaxonomyClass, ...]:
        codes = [c.code for c in value]
        if codes != list(range(1, len(value) + 1)):
            raise ValueError(
                f"class codes must be 1..{len(value)} in ascending order without gaps; got {codes}"
            )
        for what, items in (
            ("key", [c.key for c in value]),
            ("name", [c.name.casefold() for c in value]),
            ("color", [c.color for c in value]),
        ):
            repeated = sorted(k for k, n in Counter(items).items() if n > 1)
            if repeated:
                raise ValueError(f"class {what} used more than once: {', '.join(repeated)}")
        return value

    @property
    def codes(self) -> list[int]:
        """The class codes, ascending."""
        return [c.code for c in self.classes]

    @property
    def keys(self) -> list[str]:
        """The class keys, in code order."""
        return [c.key for c in self.classes]

    def by_key(self, key: str) -> TaxonomyClass:
        """Return the class with machine name ``key``.

        Raises:
            KeyError: No class has that key.

        """
        for c in self.classes:
            if c.key == key:
                return c
        raise KeyError(f"taxonomy {self.id}: no class {key!r}; classes: {', '.join(self.keys)}")

    def by_code(self, code: int) -> TaxonomyClass:
        """Return the class with label value ``code``.

        Raises:
            KeyError: No class has that code (0 and 255 are not classes).

        """
        for c in self.classes:
            if c.code == code:
                return c
        raise KeyError(f"taxonomy {self.id}: no class with code {code}; codes: 1..{len(self)}")

    def code_of(self, target: str) -> int:
        """Return the label value of a mapping target: a class key, or ``ignore`` (255).

        Raises:
            KeyError: ``target`` is neither.

        """
        return LAS_IGNORE if target == IGNORE else self.by_key(target).code

    def names(self) -> dict[int, str]:
        """Return class names by code, ascending."""
        return {c.code: c.name for c in self.classes}

    def color_table(self) -> dict[int, tuple[int, int, int]]:
        """Return ``{code: (r, g, b)}`` for every class, ascending."""
        return {c.code: c.rgb for c in self.classes}

    def __len__(self) -> int:
        return len(self.classes)


# --- product mappings ------------------------------------------------------------------------


class MappingRule(_Strict):
    """Where one native code goes.

    Attributes:
        to: A LAS class key, or ``ignore``.
        why: The reason, where the choice is not obvious.
        review: The rule is a draft (written by ``las catalog add``) that a person has not yet
            checked; :func:`check_catalog` warns while any is left.
        similarity: Cosine similarity between the native class text and the suggested LAS
            class text, as computed by the suggestion (informative only).
        alternative: The runner-up LAS class of a suggestion (informative only).
        also: Further LAS classes the native class lumps in with ``to`` (Dynamic World's
            trees include mangroves): in the consensus its vote supports them too, so a
            product that tells them apart is not outvoted by products that cannot (see
            :func:`las_builder.consensus.consensus`). The label layer is still ``to``.

    """

    to: str = Field(pattern=_KEY)
    also: tuple[Annotated[str, Field(pattern=_KEY)], ...] = ()
    why: NonEmptyStr | None = None
    review: bool = False
    similarity: float | None = Field(default=None, ge=-1.0, le=1.0)
    alternative: str | None = Field(default=None, pattern=_KEY)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"to": data} if isinstance(data, str) else data


class UnknownCodeError(ValueError):
    """Label data holds codes that its product's mapping cannot translate.

    Attributes:
        product: The product id.
        codes: ``{native code: pixel count}`` of every offending code, ascending.
        unmapped: The offending codes that are in the legend but missing from the mapping file
            (the others are not in the legend at all).

    """

    def __init__(
        self, product: str, codes: Mapping[int, int], unmapped: Sequence[int] = ()
    ) -> None:
        self.product = product
        self.codes = dict(sorted((int(k), int(v)) for k, v in codes.items()))
        self.unmapped = sorted(int(c) for c in unmapped if c in self.codes)
        unknown = [c for c in self.codes if c not in self.unmapped]
        parts = []
        if unknown:
            parts.append(f"codes not in the legend: {self._list(unknown)}")
        if self.unmapped:
            parts.append(
                f"legend codes missing from taxonomy/mappings/{product}.yaml: "
                f"{self._list(self.unmapped)}"
            )
        super().__init__(f"{product}: {'; '.join(parts)}")

    def _list(self, codes: Sequence[int]) -> str:
        return ", ".join(f"{c} ({self.codes[c]} px)" for c in codes)


class ProductMapping(_Strict):
    """A product's legend mapped onto the LAS taxonomy.

    Build it with :func:`load_mapping`. Construction checks that every rule's code is a legend
    code other than nodata, that every target is a LAS key or ``ignore``, and that legend
    entries flagged ``ignore`` map to ``ignore``; it allows legend codes without a rule
    (:attr:`unmapped`), which :func:`check_catalog` reports and :meth:`map` refuses.

    Attributes:
        product: The label product (its legend, dtype and nodata).
        taxonomy: The taxonomy mapped onto.
        rules: ``{native code: rule}``.

    """

    product: LabelProduct
    taxonomy: Taxonomy
    rules: dict[int, MappingRule]

    @model_validator(mode="after")
    def _check_rules(self) -> ProductMapping:
        problems = mapping_problems(self.product, self.taxonomy, self.rules)
        if problems:
            raise ValueError("; ".join(f"{f}: {m}" for f, m in problems))
        return self

    @property
    def product_id(self) -> str:
        """The product id."""
        return self.product.id

    @property
    def mapped(self) -> dict[int, int]:
        """``{native code: LAS code}`` of the codes mapped to a LAS class, ascending."""
        return {
            c: self.taxonomy.code_of(r.to) for c, r in sorted(self.rules.items()) if r.to != IGNORE
        }

    @property
    def ignored(self) -> list[int]:
        """Native codes mapped to ``ignore``, ascending."""
        return sorted(c for c, r in self.rules.items() if r.to == IGNORE)

    @property
    def unmapped(self) -> list[int]:
        """Legend codes (nodata excluded) that have no rule, ascending."""
        return [c for c in self.product.codes if c not in self.rules]

    @property
    def to_review(self) -> list[int]:
        """Native codes whose rule is still marked ``review: true``, ascending."""
        return sorted(c for c, r in self.rules.items() if r.review)

    @property
    def also(self) -> dict[int, list[int]]:
        """``{LAS code: native codes whose vote also supports it}`` (rules' ``also``), ascending."""
        found: dict[int, list[int]] = {}
        for code, rule in sorted(self.rules.items()):
            for key in rule.also:
                found.setdefault(self.taxonomy.code_of(key), []).append(code)
        return dict(sorted(found.items()))

    def also_masks(self, native: np.ndarray) -> dict[int, np.ndarray]:
        """Where ``native`` also supports other LAS classes than its label (rules' ``also``).

        Args:
            native: Native codes, as given to :meth:`map`.

        Returns:
            ``{LAS code: bool mask of native's shape}``, one per class some rule lumps in,
            for :func:`las_builder.consensus.consensus`'s ``also``.

        """
        arr = np.asarray(native)
        return {las: np.isin(arr, codes) for las, codes in self.also.items()}

    def target(self, code: int) -> int:
        """Return the LAS label value of one native code (nodata gives :data:`LAS_NODATA`).

        Raises:
            UnknownCodeError: ``code`` is not in the legend or has no rule.

        """
        return int(self.map(np.array([code], dtype=np.int64))[0])

    def lut(self, dtype_max: int | None = None) -> np.ndarray:
        """Build a lookup table from native code to LAS label value.

        ``lut[native]`` gives the LAS value: the class code, :data:`LAS_IGNORE` for codes
        mapped to ``ignore``, :data:`LAS_NODATA` at the product's nodata value, and
        :data:`LUT_UNMAPPED` (254) at every other index (codes not in the legend, or legend
        codes without a rule) so callers can detect them.

        Args:
            dtype_max: Largest native value the table must index; defaults to the maximum of
                the product's dtype for 8- and 16-bit types (255 for uint8, 65535 for uint16)
                and to the largest legend code (or nodata value, when below 65536) for 32-bit
                types, whose whole range would take a table of 2-4 GiB.

        Returns:
            A uint8 array of length ``dtype_max + 1``.

        Raises:
            ValueError: ``dtype_max`` is below a legend code, or the legend has negative codes
                or codes above 65535 and no ``dtype_max`` is given (:meth:`map` handles
                those without a table).

        """
        top = max(self.product.codes)
        if dtype_max is None:
            dtype_max = _DTYPE_RANGE[self.product.dtype][1]
            if dtype_max > _DENSE_TABLE_MAX:
                if top > _DENSE_TABLE_MAX:
                    raise ValueError(
                        f"{self.product_id}: legend code {top} would need a table of "
                        f"{top + 1:,} entries; pass dtype_max, or use map()"
                    )
                nodata = self.product.nodata  # a larger one is left to map()
                small = nodata if nodata is not None and 0 <= nodata <= _DENSE_TABLE_MAX else 0
                dtype_max = max(top, small)
        if dtype_max < top:
            raise ValueError(f"{self.product_id}: dtype_max {dtype_max} is below legend code {top}")
        if min(self.product.codes) < 0:
            raise ValueError(f"{self.product_id}: negative legend codes cannot index a table")
        table = np.full(dtype_max + 1, LUT_UNMAPPED, dtype=np.uint8)
        fill = self.product.fill  # nodata, or the value builds read outside the product
        if 0 <= fill <= dtype_max:
            table[fill] = LAS_NODATA
        for code, rule in self.rules.items():
            table[code] = self.taxonomy.code_of(rule.to)
        return table

    def map(self, native: np.ndarray) -> np.ndarray:
        """Translate a native label array into LAS label values.

        Args:
            native: Integer array of native codes, any shape.

        Returns:
            A uint8 array of the same shape: LAS codes, :data:`LAS_IGNORE` and
            :data:`LAS_NODATA` (at the product's nodata value).

        Raises:
            TypeError: ``native`` is not an integer array.
            UnknownCodeError: ``native`` holds codes that are not in the legend or have no
                rule; nothing is mapped silently. The error lists them with pixel counts.

        """
        arr = np.asarray(native)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{self.product_id}: expected an integer array, got {arr.dtype}")
        out: np.ndarray
        legend = self.product.codes
        if min(legend) < 0 or max(legend) > _DENSE_TABLE_MAX:
            # A table indexed by code would take one byte per value up to the largest code:
            # 3 GB (and seconds) per sample for a 32-bit legend with a code of 3e9.
            out = self._map_sparse(arr)
        else:
            table = self.lut()
            size = table.shape[0]
            info = np.iinfo(arr.dtype)
            if info.min >= 0 and info.max < size:
                out = table[arr]
            else:
                outside = (arr < 0) | (arr >= size)
                out = table[np.where(outside, 0, arr)]
                out[outside] = LUT_UNMAPPED
                fill = self.product.fill
                if not 0 <= fill < size:
                    out[arr == fill] = LAS_NODATA
        bad = out == LUT_UNMAPPED
        if bad.any():
            codes, counts = np.unique(arr[bad], return_counts=True)
            found = dict(zip(codes.tolist(), counts.tolist(), strict=True))
            raise UnknownCodeError(self.product_id, found, unmapped=self.unmapped)
        return out

    def _map_sparse(self, arr: np.ndarray) -> np.ndarray:
        """Map by binary search in the sorted codes (legends with negative codes)."""
        pairs = {code: self.taxonomy.code_of(rule.to) for code, rule in self.rules.items()}
        pairs[self.product.fill] = LAS_NODATA
        keys = np.array(sorted(pairs), dtype=np.int64)
        values = np.array([pairs[k] for k in keys.tolist()], dtype=np.uint8)
        flat = arr.astype(np.int64)  # label dtypes are at most 32-bit: exact
        pos = np.searchsorted(keys, flat).clip(max=len(keys) - 1)
        hit = keys[pos] == flat
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:  # values past int64 wrapped
            hit &= arr <= np.iinfo(np.int64).max
        return np.where(hit, values[pos], np.uint8(LUT_UNMAPPED)).astype(np.uint8)


def mapping_problems(
    product: LabelProduct, taxonomy: Taxonomy, rules: Mapping[int, MappingRule]
) -> list[tuple[str, str]]:
    """Check a product's rules against its legend and the taxonomy.

    Legend codes without a rule are not reported here (see :attr:`ProductMapping.unmapped`).

    Returns:
        ``(field, message)`` pairs; ``field`` is ``map.<code>``.

    """
    problems = []
    legend = set(product.codes)
    keys = set(taxonomy.keys)
    for code, rule in sorted(rules.items()):
        field = f"map.{code}"
        if product.nodata is not None and code == product.nodata:
            problems.append(
                (
                    field,
                    f"{code} is the product's nodata, which always maps to {LAS_NODATA}; "
                    "remove the entry",
                )
            )
            continue
        if code not in legend:
            problems.append(
                (
                    field,
                    f"code {code} is not in the legend of {product.id}; legend codes: "
                    f"{', '.join(map(str, product.codes))}",
                )
            )
            continue
        if rule.to != IGNORE and rule.to not in keys:
            problems.append(
                (
                    field,
                    f"target {rule.to!r} is not a class of taxonomy {taxonomy.id}; use one "
                    f"of {', '.join(taxonomy.keys)} or {IGNORE}",
                )
            )
        if rule.also and rule.to == IGNORE:
            problems.append(
                (
                    f"{field}.also",
                    f"code {code} maps to {IGNORE}, which casts no vote to share; remove "
                    "`also` or map the code to a class",
                )
            )
        for key in rule.also:
            if key not in keys:
                problems.append(
                    (
                        f"{field}.also",
                        f"{key!r} is not a class of taxonomy {taxonomy.id}; use some of "
                        f"{', '.join(taxonomy.keys)}",
                    )
                )
            elif key == rule.to:
                problems.append((f"{field}.also", f"{key!r} is the rule's own target; remove it"))
        repeated = sorted({k for k in rule.also if rule.also.count(k) > 1})
        if repeated:
            problems.append((f"{field}.also", f"{', '.join(repeated)} listed more than once"))
        native = product.class_by_value(code)
        if native.ignore and rule.to != IGNORE:
            problems.append(
                (
                    field,
                    f"the legend marks {code} ({native.name}) as carrying no land-cover "
                    f"information; map it to {IGNORE}",
                )
            )
    return problems


class _MappingFile(_Strict):
    product: str
    taxonomy: str = Field(default="las", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    map: dict[int, MappingRule]

    @field_validator("map", mode="before")
    @classmethod
    def _codes_are_integers(cls, value: Any) -> Any:
        # pydantic would turn a quoted "20" into 20, and `20:` next to `"20":` would then
        # silently keep only one of the two rules; YAML's `true:` would become code 1.
        if not isinstance(value, Mapping):
            return value
        bad = [k for k in value if not isinstance(k, int) or isinstance(k, bool)]
        if bad:
            shown = ", ".join(f"{k!r} ({type(k).__name__})" for k in bad)
            raise ValueError(
                f"keys must be native codes written as plain integers (e.g. `20: shrubland`, "
                f'not `"20": shrubland`); got {shown}'
            )
        return value


# --- loading ---------------------------------------------------------------------------------


def taxonomy_dir() -> Path:
    """Return the folder of the taxonomy, ``<catalog>/taxonomy``."""
    return catalog_dir() / "taxonomy"


def mappings_dir() -> Path:
    """Return the folder of product mappings, ``<catalog>/taxonomy/mappings``."""
    return taxonomy_dir() / "mappings"


def mapping_ids() -> list[str]:
    """List the product ids that have a mapping file, sorted."""
    return sorted(p.stem for p in mappings_dir().glob("*.yaml"))


def load_taxonomy(taxonomy_id: str = _BUILD_TAXONOMY) -> Taxonomy:
    """Load and validate ``catalog/taxonomy/<taxonomy_id>.yaml``.

    Raises:
        CatalogError: The file is missing, is not valid YAML or breaks the schema.

    """
    path = taxonomy_dir() / f"{taxonomy_id}.yaml"
    data = _read_yaml(path, "taxonomy fields (id, title, version, classes)")
    try:
        taxonomy = Taxonomy.model_validate(data)
    except ValidationError as err:
        raise CatalogError(path, _problems(err, data)) from None
    if taxonomy.id != path.stem:
        raise CatalogError(
            path, [("id", f"{taxonomy.id!r} must equal the file name ({path.stem!r})")]
        )
    return taxonomy


def load_mapping(product_id: str) -> ProductMapping:
    """Load ``catalog/taxonomy/mappings/<product_id>.yaml`` with its product and taxonomy.

    Args:
        product_id: A label product id, e.g. ``esa-worldcover``.

    Returns:
        The validated mapping. Legend codes without a rule are allowed here (they show in
        :attr:`ProductMapping.unmapped`); :func:`check_catalog` reports them.

    Raises:
        CatalogError: The mapping file, the product or the taxonomy is missing or invalid, a
            key is repeated, a rule maps a code that is not in the legend (or the nodata
            value), a target is not a taxonomy class, or the mapping is onto another
            taxonomy than ``las`` (the one builds label with).

    """
    path = mappings_dir() / f"{product_id}.yaml"
    if not path.is_file():
        known = ", ".join(mapping_ids()) or "none"
        raise CatalogError(path, [("", f"no mapping for product {product_id!r}; known: {known}")])
    inputs = [path, labels_dir() / f"{product_id}.yaml", *sorted(taxonomy_dir().glob("*.yaml"))]
    return _load_mapping_cached(path, product_id, file_state(*inputs))


@functools.lru_cache(maxsize=128)
def _load_mapping_cached(
    path: Path, product_id: str, state: tuple[tuple[str, int, int], ...]
) -> ProductMapping:
    # Builds map labels for every sample; validate each mapping once per version of its files.
    data = _read_yaml(path, "mapping fields (product, taxonomy, map)")
    try:
        spec = _MappingFile.model_validate(data)
    except ValidationError as err:
        raise CatalogError(path, _problems(err, data)) from None
    if spec.product != path.stem:
        raise CatalogError(
            path, [("product", f"{spec.product!r} must equal the file name ({path.stem!r})")]
        )
    product = load_label_product(product_id)
    if not (taxonomy_dir() / f"{spec.taxonomy}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in taxonomy_dir().glob("*.yaml"))) or "none"
        problem = f"no taxonomy {spec.taxonomy!r} in {taxonomy_dir()}; known: {known}"
        raise CatalogError(path, [("taxonomy", problem)])
    if spec.taxonomy != _BUILD_TAXONOMY:
        # Builds, stores and stats label with the codes of catalog/taxonomy/las.yaml: rules
        # onto another taxonomy would write its codes as if they were LAS classes.
        problem = (
            f"{spec.taxonomy!r}: LAS labels use the classes of taxonomy {_BUILD_TAXONOMY!r} "
            f"(taxonomy/{_BUILD_TAXONOMY}.yaml); map onto it (taxonomy: {_BUILD_TAXONOMY})"
        )
        raise CatalogError(path, [("taxonomy", problem)])
    taxonomy = load_taxonomy(spec.taxonomy)
    problems = mapping_problems(product, taxonomy, spec.map)
    if problems:
        raise CatalogError(path, problems)
    return ProductMapping(product=product, taxonomy=taxonomy, rules=spec.map)


def check_catalog() -> list[str]:
    """Check the taxonomy, every label product and every mapping together.

    Errors: a file that does not load (missing names or colours, bad YAML, a repeated key), a
    product without a mapping file or a mapping file without a product, a legend code that is
    neither mapped nor ignored, a rule for a code that is not in the legend, a target that is
    not a taxonomy class. Warnings (prefixed :data:`WARNING`): a taxonomy class no product
    maps to, mapping rules still marked ``review: true``, label files that still hold a
    ``TODO(las catalog add)`` left by ``las catalog add``, and ``.yml`` files, which are not
    read.

    Returns:
        One line per problem, errors first; empty when the catalog is consistent.

    """
    errors: list[str] = []
    warnings: list[str] = []
    try:
        taxonomy = load_taxonomy()
    except CatalogError as err:
        return _lines(err)
    used: set[str] = set()
    products = label_product_ids()
    for product_id in products:
        try:
            load_label_product(product_id)
            mapping = load_mapping(product_id)
        except CatalogError as err:
            errors += _lines(err)
            continue
        if mapping.unmapped:
            names = ", ".join(
                f"{c} ({mapping.product.class_by_value(c).name})" for c in mapping.unmapped
            )
            errors.append(
                f"{_rel(mappings_dir() / f'{product_id}.yaml')}: legend codes neither mapped "
                f"nor ignored: {names}"
            )
        used |= {r.to for r in mapping.rules.values()}
        if mapping.to_review:
            codes = ", ".join(map(str, mapping.to_review))
            warnings.append(
                f"{WARNING}{_rel(mappings_dir() / f'{product_id}.yaml')}: "
                f"{len(mapping.to_review)} rule(s) still marked `review: true` (codes {codes}); "
                "check each suggestion, then remove review/similarity/alternative"
            )
        todos = _todo_count(labels_dir() / f"{product_id}.yaml")
        if todos:
            warnings.append(
                f"{WARNING}{_rel(labels_dir() / f'{product_id}.yaml')}: {todos} "
                f"{TODO_MARK} line(s) left to fill in or confirm"
            )
    for extra in sorted(set(mapping_ids()) - set(products)):
        errors.append(
            f"{_rel(mappings_dir() / f'{extra}.yaml')}: no label product {extra!r} "
            f"(catalog/labels/{extra}.yaml is missing)"
        )
    for folder in (labels_dir(), mappings_dir()):
        for path in sorted(folder.glob("*")):
            if path.suffix.lower() in (".yml", ".yaml") and path.suffix != ".yaml":
                warnings.append(f"{WARNING}{_rel(path)} is not read: catalog files end in .yaml")
    for c in taxonomy.classes:
        if c.key not in used:
            warnings.append(f"{WARNING}LAS class {c.code} {c.key!r} is the target of no product")
    return errors + warnings


def _todo_count(path: Path) -> int:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # reported when the file is loaded
        return 0
    return sum(TODO_MARK in line for line in text.splitlines())


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(catalog_dir()))
    except ValueError:
        return str(path)


def _lines(err: CatalogError) -> list[str]:
    where = _rel(err.path)
    return [f"{where}: {f}: {m}" if f else f"{where}: {m}" for f, m in err.problems]


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    text = read_catalog_text(path)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise CatalogError(path, [("", f"is not valid YAML: {yaml_error_text(err)}")]) from None
    if not isinstance(data, dict):
        raise CatalogError(path, [("", f"must be a YAML mapping of {what}")])
    return data


def _problems(err: ValidationError, data: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors(include_url=False):
        message = e["msg"]
        if e["type"] == "value_error" and "error" in e.get("ctx", {}):
            message = str(e["ctx"]["error"])
        elif e["type"] == "extra_forbidden":
            message = "unknown field"
        elif e["type"] == "missing":
            message = "required field is missing"
        else:
            message = f"{message} (got {e.get('input')!r})"
        problems.append((_format_loc(tuple(e["loc"]), data), message))
    return problems


def _format_loc(loc: tuple[Any, ...], data: Mapping[str, Any]) -> str:
    """Format an error location, naming taxonomy classes by code: ``classes[3] (code 4).color``."""
    text = ".".join(str(p) for p in loc)
    if len(loc) >= 2 and loc[0] == "classes" and isinstance(loc[1], int):
        classes = data.get("classes")
        code = None
        if isinstance(classes, list) and loc[1] < len(classes):
            entry = classes[loc[1]]
            code = entry.get("code") if isinstance(entry, dict) else None
        rest = ".".join(str(p) for p in loc[2:])
        text = f"classes[{loc[1]}]" + (f" (code {code})" if code is not None else "")
        text += f".{rest}" if rest else ""
    return text
