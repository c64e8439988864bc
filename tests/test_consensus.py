"""Consensus of LAS label layers: majority, ties, ignore, nodata and agreement."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from las_builder.catalog import LAS_IGNORE, LAS_NODATA, LUT_UNMAPPED
from las_builder.consensus import agreement_fraction, consensus, valid_votes

NO, IG = LAS_NODATA, LAS_IGNORE


def stack(*columns: list[int]) -> np.ndarray:
    """Layers (P, 1, W) from W columns, each listing the P products' values at one pixel."""
    return np.array(columns, dtype=np.uint8).T[:, np.newaxis, :]


CASES = [
    # (votes per product, consensus, agreement)
    ([2, 2, 2], 2, 3),  # unanimous
    ([3, 3, 3, 3, 3, 3], 3, 6),  # unanimous, six products
    ([2, 2, 4], 2, 2),  # majority
    ([5, 4, 5, 4, 5], 5, 3),  # majority
    ([2, 4], IG, 0),  # tie
    ([2, 2, 4, 4, 5], IG, 0),  # tie at the top
    ([2, 4, 5], IG, 0),  # three-way tie
    ([4, 4, 2, 5], 4, 2),  # plurality beats two singles
    ([2, IG, IG], 2, 1),  # ignore is not a vote
    ([NO, NO, 3], 3, 1),  # nodata is not a vote
    ([NO, IG, 7, 7, 9], 7, 2),
    ([2, IG, 4], IG, 0),  # tie after ignores
    ([NO, NO, NO], NO, 0),  # nobody covers it
    ([IG, IG, IG], IG, 0),  # all ignore
    ([NO, IG, NO], IG, 0),  # covered but never classed -> ignore
    ([12, NO, 12], 12, 2),
]


@pytest.mark.parametrize(("votes", "label", "agree"), CASES)
def test_single_pixels(votes: list[int], label: int, agree: int) -> None:
    labels, agreement = consensus(stack(votes))
    assert labels.dtype == np.uint8 and agreement.dtype == np.uint8
    assert labels.shape == agreement.shape == (1, 1)
    assert (int(labels[0, 0]), int(agreement[0, 0])) == (label, agree)


def test_many_pixels_at_once() -> None:
    same = [c for c in CASES if len(c[0]) == 3]
    layers = stack(*(v for v, _, _ in same))
    labels, agreement = consensus(layers)
    assert labels[0].tolist() == [lab for _, lab, _ in same]
    assert agreement[0].tolist() == [a for _, _, a in same]


def test_two_dimensional_grid() -> None:
    a = np.array([[1, 2], [0, 255]], dtype=np.uint8)
    b = np.array([[1, 3], [0, 255]], dtype=np.uint8)
    c = np.array([[1, 3], [0, 0]], dtype=np.uint8)
    labels, agreement = consensus(np.stack([a, b, c]))
    np.testing.assert_array_equal(labels, [[1, 3], [NO, IG]])
    np.testing.assert_array_equal(agreement, [[3, 2], [0, 0]])
    labels, agreement = consensus(a[np.newaxis])  # one product: its own labels
    np.testing.assert_array_equal(labels, a)
    np.testing.assert_array_equal(agreement, [[1, 1], [0, 0]])


def _brute(votes: list[int]) -> tuple[int, int]:
    valid = [v for v in votes if v not in (NO, IG)]
    if not valid:
        return (IG if IG in votes else NO), 0
    counts = Counter(valid).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return IG, 0
    return counts[0]


def test_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    values = np.array([NO, IG, 1, 2, 3, 4], dtype=np.uint8)
    layers = rng.choice(values, size=(5, 17, 19)).astype(np.uint8)
    labels, agreement = consensus(layers)
    for y in range(layers.shape[1]):
        for x in range(layers.shape[2]):
            assert (labels[y, x], agreement[y, x]) == _brute(layers[:, y, x].tolist())
    np.testing.assert_array_equal(
        valid_votes(layers), ((layers != NO) & (layers != IG)).sum(axis=0)
    )


def test_agreement_fraction() -> None:
    # pixels: unanimous(3) | unanimous with nodata | majority | tie | single vote | no vote
    layers = stack([2, 2, 2], [NO, 5, 5], [2, 2, 4], [2, 4, IG], [IG, NO, 3], [NO, IG, NO])
    labels, _ = consensus(layers)
    # voted pixels: the first five; unanimous: pixels 0, 1 and 4
    assert agreement_fraction(layers, labels) == pytest.approx(3 / 5)
    assert agreement_fraction(stack([2, 2], [3, 3]), np.array([[2, 3]], np.uint8)) == 1.0
    assert agreement_fraction(stack([2, 4]), np.array([[IG]], np.uint8)) == 0.0
    assert math.isnan(agreement_fraction(stack([NO, IG], [NO, NO]), np.array([[IG, NO]], np.uint8)))
    with pytest.raises(ValueError, match="does not match"):
        agreement_fraction(layers, labels[:, :2])


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"shape \(P, H, W\)"):
        consensus(np.zeros((3, 4), dtype=np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        consensus(np.zeros((2, 3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="1 to 255 product layers"):
        consensus(np.zeros((0, 3, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="unmapped"):
        consensus(stack([2, LUT_UNMAPPED]))


def test_large_stack_is_vectorised() -> None:
    rng = np.random.default_rng(0)
    layers = rng.integers(0, 13, size=(6, 512, 512), dtype=np.uint8)
    labels, agreement = consensus(layers)
    assert labels.shape == (512, 512)
    decided = (labels != NO) & (labels != IG)
    assert (agreement[decided] >= 1).all() and (agreement[~decided] == 0).all()
    # the consensus class really has `agreement` votes
    votes = (layers == labels[np.newaxis]).sum(axis=0)
    np.testing.assert_array_equal(votes[decided], agreement[decided])


# --- lumped classes (a mapping rule's `also`) -------------------------------------------------

TREES, MANGROVES, WETLAND, FLOODED = 2, 10, 9, 12
LUMPS = {TREES: (MANGROVES,), FLOODED: (WETLAND, MANGROVES)}  # as Dynamic World's rules


def lumped(layers: np.ndarray, lumping: list[bool]) -> list[dict[int, np.ndarray]]:
    """``also`` for ``layers``: a lumping layer's trees and flooded votes support LUMPS."""
    out = []
    for layer, lumps in zip(layers, lumping, strict=True):
        masks: dict[int, np.ndarray] = {}
        if lumps:
            for cls, extra in LUMPS.items():
                for e in extra:
                    masks[e] = masks.get(e, np.zeros(layer.shape, bool)) | (layer == cls)
        out.append(masks)
    return out


LUMPED_CASES = [
    # (votes, which products lump, consensus, agreement)
    ([MANGROVES, TREES, TREES], [False, True, True], MANGROVES, 3),  # WC decides for DW+Esri
    ([TREES, TREES, TREES], [False, True, True], TREES, 3),  # ... and against mangroves
    ([MANGROVES, TREES, TREES], [False, False, False], TREES, 2),  # without `also`: majority
    ([TREES, TREES], [True, True], TREES, 2),  # mangroves only lumped in: never win alone
    ([FLOODED, TREES], [True, True], IG, 0),  # their only common class is no candidate
    ([WETLAND, FLOODED, FLOODED, FLOODED], [False, True, True, True], WETLAND, 4),
    ([FLOODED, FLOODED], [True, True], FLOODED, 2),  # nobody tells the life form: flooded
    ([MANGROVES, TREES, TREES, TREES], [False, True, True, False], TREES, 3),  # 3:3, own 1:3
]


@pytest.mark.parametrize(("votes", "lumping", "label", "agree"), LUMPED_CASES)
def test_lumped_votes_support_what_they_lump_in(
    votes: list[int], lumping: list[bool], label: int, agree: int
) -> None:
    layers = stack(votes)
    labels, agreement = consensus(layers, also=lumped(layers, lumping))
    assert (int(labels[0, 0]), int(agreement[0, 0])) == (label, agree)


def test_equal_support_goes_to_more_votes_of_its_own() -> None:
    # WorldCover says mangroves, a lumping product trees, a specific one trees: support 2 : 2,
    # own votes 1 : 2 -> trees. With one more lumping product mangroves lead on support.
    layers = stack([MANGROVES, TREES, TREES])
    labels, agreement = consensus(layers, also=lumped(layers, [False, True, False]))
    assert (int(labels[0, 0]), int(agreement[0, 0])) == (TREES, 2)
    layers = stack([MANGROVES, TREES])
    labels, _ = consensus(layers, also=lumped(layers, [False, True]))  # 2 : 1 support
    assert int(labels[0, 0]) == MANGROVES
    layers = stack([MANGROVES, TREES])
    labels, _ = consensus(layers, also=lumped(layers, [False, False]))  # 1 : 1 and 1 : 1
    assert int(labels[0, 0]) == IG


def _brute_lumped(votes: list[int], supports: list[set[int]]) -> tuple[int, int]:
    """Support = votes for a class or lumping it in; candidates have a vote of their own."""
    own = Counter(v for v in votes if v not in (NO, IG))
    if not own:
        return (IG if IG in votes else NO), 0
    ranked = sorted(((sum(c in s for s in supports), own[c], c) for c in own), reverse=True)
    if len(ranked) > 1 and ranked[0][:2] == ranked[1][:2]:
        return IG, 0
    return ranked[0][2], ranked[0][0]


def test_lumped_votes_match_brute_force() -> None:
    rng = np.random.default_rng(11)
    values = np.array([NO, IG, TREES, MANGROVES, WETLAND, FLOODED, 4], dtype=np.uint8)
    layers = rng.choice(values, size=(5, 23, 29)).astype(np.uint8)
    lumping = [True, False, True, False, True]
    also = lumped(layers, lumping)
    labels, agreement = consensus(layers, also=also)
    for y in range(layers.shape[1]):
        for x in range(layers.shape[2]):
            votes = layers[:, y, x].tolist()
            supports = [
                ({v} | {c for c, m in masks.items() if m[y, x]}) if v not in (NO, IG) else set()
                for v, masks in zip(votes, also, strict=True)
            ]
            assert (labels[y, x], agreement[y, x]) == _brute_lumped(votes, supports), votes
    plain, plain_agreement = consensus(layers, also=[{} for _ in layers])
    np.testing.assert_array_equal(plain, consensus(layers)[0])  # no lumps: the plain vote
    np.testing.assert_array_equal(plain_agreement, consensus(layers)[1])


def test_agreement_fraction_counts_lumped_support_as_agreeing() -> None:
    # pixel 0: WC mangroves, DW trees (lumping): both support mangroves -> unanimous
    # pixel 1: WC trees, DW flooded (lumping): tie -> not unanimous
    layers = stack([MANGROVES, TREES], [TREES, FLOODED])
    also = lumped(layers, [False, True])
    labels, _ = consensus(layers, also=also)
    assert labels[0].tolist() == [MANGROVES, IG]
    assert agreement_fraction(layers, labels, also=also) == pytest.approx(1 / 2)
    assert agreement_fraction(layers, labels) == 0.0  # without it: DW said trees


def test_rejects_bad_also() -> None:
    layers = stack([TREES, TREES])
    with pytest.raises(ValueError, match="also has 1 entries for 2 layers"):
        consensus(layers, also=[{}])
    with pytest.raises(ValueError, match=r"also\[1\]\[10\] must be a bool mask of shape \(1, 1\)"):
        consensus(layers, also=[{}, {MANGROVES: np.ones((2, 2), bool)}])
    with pytest.raises(ValueError, match=r"also\[0\]\[10\] must be a bool mask"):
        consensus(layers, also=[{MANGROVES: np.ones((1, 1), np.uint8)}, {}])
    with pytest.raises(ValueError, match=r"also\[0\] names 255, which is not a class code"):
        consensus(layers, also=[{IG: np.ones((1, 1), bool)}, {}])


def test_a_lump_mask_where_the_layer_casts_no_vote_is_no_support() -> None:
    # A mask set on nodata/ignore pixels (a careless caller) must not invent votes.
    layers = stack([MANGROVES, NO, TREES], [MANGROVES, IG, TREES])
    also = [{}, {MANGROVES: np.ones((1, 2), bool)}, {}]
    labels, agreement = consensus(layers, also=also)
    assert labels[0].tolist() == [IG, IG]  # 1 : 1 either way, the mask added nothing
    assert agreement[0].tolist() == [0, 0]
