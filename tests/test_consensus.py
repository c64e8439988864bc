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
