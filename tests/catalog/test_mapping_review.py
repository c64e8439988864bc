"""Review of every product's mapping onto LAS: the same kind of native class goes to the same
LAS class (or to ignore) in every product, and each judgement keeps its written reason.

A wrong rule is a silently wrong weak label in every sample, so the decisions are pinned here
with the class definitions they rest on (catalog/labels/<product>.yaml, catalog/taxonomy/las.yaml
and the products' documentation).
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from las_builder._paths import catalog_dir
from las_builder.catalog import (
    IGNORE,
    LAS_IGNORE,
    LAS_NODATA,
    label_product_ids,
    load_label_product,
    load_mapping,
    load_taxonomy,
)
from las_builder.consensus import consensus
from las_builder.model.truth import truth_lut

PRODUCTS = sorted(label_product_ids())

# Kinds of native class that several products share: (kind, LAS target, members). Each member
# is (product, native code). One kind, one target, whatever the product.
KINDS: list[tuple[str, str, list[tuple[str, int]]]] = [
    # Cropland mixed with natural vegetation at 300-500 m (CCI "mosaic" 30/40, MODIS 14 with
    # 40-60 % cultivation): neither cropland nor any natural class.
    (
        "cropland / natural vegetation mosaic",
        IGNORE,
        [("esa-cci-lc", 30), ("esa-cci-lc", 40), ("modis-12Q1-061", 14)],
    ),
    # Herbaceous cover dominant with some woody plants: CCI 110 (herbaceous > 50 %), IGBP
    # savannas (10-30 % trees over a herbaceous layer).
    ("herbaceous with sparse woody cover", IGNORE, [("esa-cci-lc", 110), ("modis-12Q1-061", 9)]),
    # Classes that lump LAS grassland with shrubland or cropland: Esri v02 Rangeland (former
    # Grass + Scrub/shrub), Chesapeake Low Vegetation (lawns, natural cover and tilled fields).
    (
        "grass lumped with shrubs or crops",
        IGNORE,
        [("io-lulc-annual-v02", 11), ("chesapeake-lc-13", 5)],
    ),
    # No land cover at all: Esri clouds, the masked Aberdeen Proving Ground.
    ("no land-cover information", IGNORE, [("io-lulc-annual-v02", 10), ("chesapeake-lc-13", 13)]),
    # Vegetated wetland whose life form is not resolved: LAS flooded vegetation says these
    # products' single wetland class maps there (DW 3, Esri 4, MODIS 11 Permanent Wetlands,
    # CCI 180 shrub or herbaceous flooded).
    (
        "vegetated wetland, life form unresolved",
        "flooded_vegetation",
        [
            ("dynamic-world-v1", 3),
            ("io-lulc-annual-v02", 4),
            ("modis-12Q1-061", 11),
            ("esa-cci-lc", 180),
        ],
    ),
    # Herbaceous vegetation on flooded or saturated ground.
    (
        "herbaceous wetland",
        "herbaceous_wetland",
        [("esa-worldcover", 90), ("chesapeake-lc-13", 2)],
    ),
    # Mangroves where the legend has them on their own (WorldCover 95; CCI 170, trees flooded
    # by saline water).
    ("mangroves", "mangroves", [("esa-worldcover", 95), ("esa-cci-lc", 170)]),
    # A tree class that also names mangroves (DW 1, Esri 2): trees, the bulk of the class; LAS
    # trees includes swamp forest flooded by fresh or brackish water (CCI 160).
    (
        "trees, swamp forest included",
        "trees",
        [("dynamic-world-v1", 1), ("io-lulc-annual-v02", 2), ("esa-cci-lc", 160)],
    ),
    # Snow or ice lasting the year (WorldCover "throughout the year", Esri "permanent", CCI
    # "permanent", MODIS "at least 10 months"): LAS snow and ice (10 months or more).
    (
        "permanent snow and ice",
        "snow_and_ice",
        [
            ("esa-worldcover", 70),
            ("io-lulc-annual-v02", 9),
            ("esa-cci-lc", 220),
            ("modis-12Q1-061", 15),
        ],
    ),
    # Snow in a single scene, seasonal or not (Google: "permanent and seasonal snow cover"):
    # LAS says seasonal snow is the land cover beneath, which the scene does not show.
    ("snow in one scene", IGNORE, [("dynamic-world-v1", 8)]),
    # Urban and built-up, however coarse (MODIS 13 >= 30 % impervious, CCI 190).
    (
        "built-up",
        "built_up",
        [
            ("esa-worldcover", 50),
            ("dynamic-world-v1", 6),
            ("io-lulc-annual-v02", 7),
            ("esa-cci-lc", 190),
            ("modis-12Q1-061", 13),
            ("chesapeake-lc-13", 7),
            ("chesapeake-lc-13", 8),
            ("chesapeake-lc-13", 9),
        ],
    ),
    # Barren land and vegetation below the LAS bare threshold (10 %, CCI 15 %).
    (
        "barren",
        "bare_sparse_vegetation",
        [
            ("esa-worldcover", 60),
            ("dynamic-world-v1", 7),
            ("io-lulc-annual-v02", 8),
            ("esa-cci-lc", 150),
            ("esa-cci-lc", 200),
            ("modis-12Q1-061", 16),
            ("chesapeake-lc-13", 6),
        ],
    ),
    ("moss and lichen", "moss_and_lichen", [("esa-worldcover", 100), ("esa-cci-lc", 140)]),
    # IGBP woody savannas: 30-60 % tree canopy, well above the LAS 10 % tree threshold.
    ("woody savanna", "trees", [("modis-12Q1-061", 8)]),
]


@pytest.mark.parametrize(("kind", "expected", "members"), KINDS, ids=[k for k, _, _ in KINDS])
def test_the_same_kind_of_class_maps_alike_in_every_product(
    kind: str, expected: str, members: list[tuple[str, int]]
) -> None:
    got = {(p, code): load_mapping(p).rules[code].to for p, code in members}
    assert set(got.values()) == {expected}, f"{kind}: {got}"


# Rules that are a judgement: the reason must stay written in the mapping file. (product,
# native code, words its `why` must keep).
REASONS = [
    ("dynamic-world-v1", 8, ["seasonal", "10 months"]),
    ("dynamic-world-v1", 0, ["ephemeral"]),
    ("dynamic-world-v1", 1, ["mangroves", "consensus"]),
    ("io-lulc-annual-v02", 2, ["mangroves", "consensus"]),
    ("io-lulc-annual-v02", 9, ["permanent", "Dynamic World"]),
    ("modis-12Q1-061", 9, ["CCI 110"]),
    ("modis-12Q1-061", 8, ["30-60 %"]),
    ("modis-12Q1-061", 11, ["life form"]),
    ("esa-cci-lc", 180, ["life forms"]),
    ("io-lulc-annual-v02", 11, ["grassland", "shrubland"]),
]


@pytest.mark.parametrize(("product_id", "native", "words"), REASONS)
def test_judgements_keep_their_reason(product_id: str, native: int, words: list[str]) -> None:
    why = load_mapping(product_id).rules[native].why
    assert why is not None, f"{product_id} {native}: the rule lost its why"
    for word in words:
        assert word in " ".join(why.split()), f"{product_id} {native}: why lacks {word!r}"


def test_a_per_scene_product_never_votes_permanent_snow() -> None:
    # LAS snow and ice lasts 10 months or more; one scene cannot tell that from seasonal snow.
    per_scene = [p for p in PRODUCTS if load_label_product(p).cadence == "per-scene"]
    assert per_scene, "no per-scene product left to check"
    for p in per_scene:
        to_snow = [c for c, r in load_mapping(p).rules.items() if r.to == "snow_and_ice"]
        assert to_snow == [], f"{p}: codes {to_snow} vote snow_and_ice from a single scene"


def test_seasonal_snow_in_a_dynamic_world_scene_is_not_a_snow_label() -> None:
    tax = load_taxonomy()
    crop = tax.by_key("cropland").code
    # A winter scene over fields: DW 8 (snow), DW 4 (crops), nodata 255, and water 0.
    dw = load_mapping("dynamic-world-v1").map(np.array([[8, 4, 255, 0]], dtype=np.uint8))
    assert dw.tolist() == [[LAS_IGNORE, crop, LAS_NODATA, tax.by_key("water").code]]
    # With WorldCover's cropland under it, the consensus is cropland, not a tie with snow.
    wc = load_mapping("esa-worldcover").map(np.array([[40, 40, 40, 80]], dtype=np.uint8))
    labels, agreement = consensus(np.stack([wc, dw]))
    assert labels[0, :3].tolist() == [crop, crop, crop]
    assert agreement[0, :2].tolist() == [1, 2]


def test_permanent_snow_still_reaches_las_from_the_annual_products() -> None:
    annual = {
        p
        for p in PRODUCTS
        if load_label_product(p).cadence == "annual"
        and "snow_and_ice" in {r.to for r in load_mapping(p).rules.values()}
    }
    assert annual == {"esa-worldcover", "io-lulc-annual-v02", "esa-cci-lc", "modis-12Q1-061"}


@pytest.mark.parametrize("product_id", PRODUCTS)
def test_a_class_that_names_mangroves_says_where_they_go(product_id: str) -> None:
    # LAS trees excludes mangroves: a legend class that includes them but maps elsewhere must
    # say why, so the lumping is a decision, not an oversight.
    product, mapping = load_label_product(product_id), load_mapping(product_id)
    for c in product.classes:
        text = f"{c.name} {c.description or ''}".lower().split("exclud")[0]
        rule = mapping.rules.get(c.value)
        if "mangrove" in text and rule is not None and rule.to != "mangroves":
            assert rule.why and "mangrove" in rule.why.lower(), f"{product_id} {c.value}"


@pytest.mark.parametrize("product_id", PRODUCTS)
def test_mosaic_classes_are_ignored(product_id: str) -> None:
    product, mapping = load_label_product(product_id), load_mapping(product_id)
    mosaics = [c.value for c in product.classes if "mosaic" in c.name.lower()]
    for code in mosaics:
        assert mapping.rules[code].to == IGNORE, f"{product_id} {code} is a mosaic class"


def test_world_truth_maps_like_the_products() -> None:
    # The world's truth classes are LAS classes by another name; road is built-up, as the
    # products' road classes are (Chesapeake 9 Impervious Roads).
    tax = load_taxonomy()
    truth = yaml.safe_load((catalog_dir() / "world" / "truth.yaml").read_text())
    lut = truth_lut()
    by_name = {c["name"]: int(lut[c["id"]]) for c in truth["classes"]}
    assert sorted(by_name.values()) == sorted(
        [tax.by_key(k).code for k in tax.keys if k != "flooded_vegetation"]
        + [tax.by_key("built_up").code]
    )
    roads = load_mapping("chesapeake-lc-13").target(9)
    assert by_name["road"] == by_name["built-up"] == roads
    for name, code in by_name.items():
        key = tax.by_code(code).key
        words = name.replace("-", " ").replace("snow ice", "snow and ice").split()
        assert name == "road" or all(w in key.replace("_", " ") for w in words), (name, key)


# --- classes that lump LAS classes together (a rule's `also`) --------------------------------

# (product, native code): the LAS classes its vote supports besides its target. Only products
# whose legend cannot tell them apart lump: WorldCover (95 mangroves, 90 herbaceous wetland)
# and ESA CCI (170 mangroves) resolve them, and are not outvoted by the others.
LUMPS = {
    ("dynamic-world-v1", 1): {"mangroves"},
    ("dynamic-world-v1", 3): {"herbaceous_wetland", "mangroves"},
    ("io-lulc-annual-v02", 2): {"mangroves"},
    ("io-lulc-annual-v02", 4): {"herbaceous_wetland", "mangroves"},
    ("modis-12Q1-061", 2): {"mangroves"},
    ("modis-12Q1-061", 11): {"herbaceous_wetland", "mangroves"},
    ("esa-cci-lc", 180): {"herbaceous_wetland"},
}


def test_every_lump_is_pinned_and_says_why() -> None:
    found = {
        (p, c): set(r.also) for p in PRODUCTS for c, r in load_mapping(p).rules.items() if r.also
    }
    assert found == LUMPS
    for (p, c), classes in LUMPS.items():
        why = " ".join((load_mapping(p).rules[c].why or "").split()).lower()
        for key in classes:
            assert key.replace("_", " ") in why, f"{p} {c}: why does not name {key}"


def test_no_product_lumps_a_class_its_own_legend_resolves() -> None:
    # A product with a mangroves class says "not mangroves" with its trees: no lump there.
    for p in PRODUCTS:
        mapping = load_mapping(p)
        targets = {r.to for r in mapping.rules.values()}
        for c, rule in mapping.rules.items():
            assert not set(rule.also) & targets, f"{p} {c}: lumps in a class it maps to itself"


def _vote(codes: dict[str, int]) -> tuple[str, int]:
    """The consensus (LAS key or 'ignore', agreement) of one pixel's native codes."""
    tax = load_taxonomy()
    layers, also = [], []
    for product, code in codes.items():
        mapping = load_mapping(product)
        native = np.array([[code]], dtype=np.dtype(load_label_product(product).dtype))
        layers.append(mapping.map(native))
        also.append(mapping.also_masks(native))
    labels, agreement = consensus(np.stack(layers), also=also)
    value = int(labels[0, 0])
    return (IGNORE if value == LAS_IGNORE else tax.by_code(value).key), int(agreement[0, 0])


def test_mangroves_named_by_worldcover_win_over_the_products_that_lump_them() -> None:
    lumpers = {"dynamic-world-v1": 1, "io-lulc-annual-v02": 2, "modis-12Q1-061": 2}
    # Before: trees 3, mangroves 1. Now every vote supports mangroves; trees has 3.
    assert _vote({"esa-worldcover": 95, **lumpers}) == ("mangroves", 4)
    assert _vote({"esa-worldcover": 10, **lumpers}) == ("trees", 4)
    assert _vote(lumpers) == ("trees", 3)  # nobody tells them apart: trees, as mapped
    # ESA CCI's trees say "not mangroves" (CCI has 170): WorldCover and CCI disagree, and the
    # lumping products support both: 4 : 4 support, 1 : 4 own votes -> trees.
    assert _vote({"esa-worldcover": 95, "esa-cci-lc": 50, **lumpers}) == ("trees", 4)
    assert _vote({"esa-worldcover": 95, "esa-cci-lc": 170, **lumpers}) == ("mangroves", 5)


def test_herbaceous_wetland_named_by_worldcover_wins_over_flooded_vegetation() -> None:
    flooded = {"dynamic-world-v1": 3, "io-lulc-annual-v02": 4, "modis-12Q1-061": 11}
    assert _vote({"esa-worldcover": 90, **flooded}) == ("herbaceous_wetland", 4)
    assert _vote(flooded) == ("flooded_vegetation", 3)
    assert _vote({"esa-cci-lc": 180, **flooded}) == ("flooded_vegetation", 4)
    # Swamp forest: WorldCover trees against flooded vegetation that does not lump trees in.
    assert _vote({"esa-worldcover": 10, "dynamic-world-v1": 3}) == (IGNORE, 0)
