"""Consensus of several products' LAS labels: a per-pixel majority vote.

Each product's native labels are first mapped to LAS label values
(:meth:`las_builder.catalog.ProductMapping.map`) on a common grid and stacked into layers of
shape ``(P, H, W)``. In a layer, ``0`` (:data:`~las_builder.catalog.LAS_NODATA`) means the
product does not cover the pixel and ``255`` (:data:`~las_builder.catalog.LAS_IGNORE`) that it
covers it without a usable class; neither is a vote. Every other value is a vote for that LAS
class.

Example:
    >>> import numpy as np
    >>> layers = np.array([[[2, 2]], [[2, 4]], [[5, 255]]], dtype=np.uint8)  # P=3, H=1, W=2
    >>> labels, agreement = consensus(layers)
    >>> labels.tolist(), agreement.tolist()
    ([[2, 255]], [[2, 0]])

"""

from __future__ import annotations

import numpy as np

from las_builder.catalog.taxonomy import LAS_IGNORE, LAS_NODATA, LUT_UNMAPPED

__all__ = ["agreement_fraction", "consensus", "valid_votes"]


def _check_layers(layers: np.ndarray) -> np.ndarray:
    arr = np.asarray(layers)
    if arr.ndim != 3:
        raise ValueError(f"layers must have shape (P, H, W); got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise TypeError(f"layers must be uint8 LAS label values; got {arr.dtype}")
    if not 1 <= arr.shape[0] <= 255:
        raise ValueError(f"need 1 to 255 product layers; got {arr.shape[0]}")
    if (arr == LUT_UNMAPPED).any():
        raise ValueError(
            f"layers hold {LUT_UNMAPPED}, the lookup-table marker of unmapped codes; map native "
            "labels with ProductMapping.map, which refuses unknown codes"
        )
    return arr


def valid_votes(layers: np.ndarray) -> np.ndarray:
    """Count the products that vote for a class at each pixel.

    Args:
        layers: LAS label layers, uint8 of shape ``(P, H, W)``.

    Returns:
        uint8 ``(H, W)``: the number of layers whose value is neither 0 nor 255.

    """
    arr = _check_layers(layers)
    votes: np.ndarray = ((arr != LAS_NODATA) & (arr != LAS_IGNORE)).sum(axis=0, dtype=np.uint8)
    return votes


def consensus(layers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote over products, pixel by pixel.

    Rules, per pixel:

    * votes are the layer values other than 0 (nodata) and 255 (ignore);
    * a single most-voted class wins, however few votes it has (one product alone decides
      where the others are nodata or ignore);
    * a tie between two or more classes for the most votes gives 255 (ignore);
    * no vote at all gives 255 (ignore) if at least one product says ignore, and 0 (nodata)
      if every product is nodata there.

    Args:
        layers: LAS label layers, uint8 of shape ``(P, H, W)``, one per product, on the same
            grid; ``1 <= P <= 255``.

    Returns:
        ``(labels, agreement)``, both uint8 ``(H, W)``. ``labels`` is the consensus LAS value.
        ``agreement`` is the number of products that voted for the consensus class, and 0
        where ``labels`` is 0 or 255 (ties included).

    Raises:
        ValueError: ``layers`` is not 3-D, has no or more than 255 layers, or holds 254 (the
            lookup-table marker of unmapped codes).
        TypeError: ``layers`` is not uint8.

    """
    arr = _check_layers(layers)
    height, width = arr.shape[1:]
    present = np.flatnonzero(np.bincount(arr.ravel(), minlength=256)).astype(np.uint8)
    classes = present[(present != LAS_NODATA) & (present != LAS_IGNORE)]
    any_ignore = (arr == LAS_IGNORE).any(axis=0)
    labels = np.where(any_ignore, np.uint8(LAS_IGNORE), np.uint8(LAS_NODATA)).astype(np.uint8)
    agreement = np.zeros((height, width), dtype=np.uint8)
    if classes.size == 0:
        return labels, agreement
    # Vote counts per class present (a handful), accumulated layer by layer so no (P, H, W)
    # temporary is made; whole-image operations only, never a loop over pixels.
    counts = np.zeros((classes.size, height, width), dtype=np.uint8)
    for layer in arr:
        for i, c in enumerate(classes):
            counts[i] += layer == c
    best = counts.max(axis=0)
    winners = (counts == best).sum(axis=0)
    voted = best > 0
    decided = voted & (winners == 1)
    labels[voted] = LAS_IGNORE
    labels[decided] = classes[counts.argmax(axis=0)][decided]
    agreement[decided] = best[decided]
    return labels, agreement


def agreement_fraction(layers: np.ndarray, consensus: np.ndarray) -> float:
    """Fraction of a sample's voted pixels on which every voting product agrees.

    With votes as in :func:`consensus` (layer values other than 0 and 255), let ``V`` be the
    pixels with at least one vote, and ``U`` the pixels of ``V`` where all votes are for the
    same class and that class is the ``consensus`` value. The result is ``|U| / |V|``.

    Products that are nodata or ignore at a pixel do not count against agreement, so a pixel
    with a single vote counts as unanimous; tied pixels are in ``V`` but never in ``U``.

    Args:
        layers: LAS label layers, uint8 ``(P, H, W)``.
        consensus: The consensus labels of these layers, ``(H, W)`` (as from :func:`consensus`).

    Returns:
        A fraction in ``[0, 1]``, or NaN when no pixel has a vote (undefined; NaN compares
        false with any threshold).

    Raises:
        ValueError: The shapes do not match, or as :func:`consensus`.

    """
    arr = _check_layers(layers)
    cons = np.asarray(consensus)
    if cons.shape != arr.shape[1:]:
        raise ValueError(f"consensus shape {cons.shape} does not match layers {arr.shape[1:]}")
    votes = valid_votes(arr)
    voted = votes > 0
    n_voted = int(np.count_nonzero(voted))
    if n_voted == 0:
        return float("nan")
    for_consensus = np.zeros(cons.shape, dtype=np.uint8)
    for layer in arr:
        for_consensus += layer == cons
    is_class = (cons != LAS_NODATA) & (cons != LAS_IGNORE)
    unanimous = voted & is_class & (for_consensus == votes)
    return int(np.count_nonzero(unanimous)) / n_voted
