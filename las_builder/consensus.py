"""Consensus of several products' LAS labels: a per-pixel vote.

Each product's native labels are first mapped to LAS label values
(:meth:`las_builder.catalog.ProductMapping.map`) on a common grid and stacked into layers of
shape ``(P, H, W)``. In a layer, ``0`` (:data:`~las_builder.catalog.LAS_NODATA`) means the
product does not cover the pixel and ``255`` (:data:`~las_builder.catalog.LAS_IGNORE`) that it
covers it without a usable class; neither is a vote. Every other value is a vote for that LAS
class. A product whose class lumps several LAS classes together (Dynamic World's trees include
mangroves) votes for its mapped class and *supports* the others (the mapping rule's ``also``),
so that a product that tells them apart decides between them.

Example:
    >>> import numpy as np
    >>> layers = np.array([[[2, 2]], [[2, 4]], [[5, 255]]], dtype=np.uint8)  # P=3, H=1, W=2
    >>> labels, agreement = consensus(layers)
    >>> labels.tolist(), agreement.tolist()
    ([[2, 255]], [[2, 0]])

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def _also_masks(
    arr: np.ndarray, also: Sequence[Mapping[int, np.ndarray]] | None
) -> list[dict[int, np.ndarray]]:
    """Check ``also`` against ``arr``; each mask kept only where its layer votes for a class."""
    if also is None:
        return [{} for _ in range(arr.shape[0])]
    if len(also) != arr.shape[0]:
        raise ValueError(f"also has {len(also)} entries for {arr.shape[0]} layers; give one each")
    checked = []
    for i, (layer, masks) in enumerate(zip(arr, also, strict=True)):
        votes = (layer != LAS_NODATA) & (layer != LAS_IGNORE)
        entry = {}
        for code, mask in masks.items():
            m = np.asarray(mask)
            if not 0 < int(code) < LUT_UNMAPPED:
                raise ValueError(f"also[{i}] names {code}, which is not a class code")
            if m.shape != layer.shape or m.dtype != np.bool_:
                raise ValueError(
                    f"also[{i}][{code}] must be a bool mask of shape {layer.shape}; "
                    f"got {m.dtype} {m.shape}"
                )
            entry[int(code)] = m & votes
        checked.append(entry)
    return checked


def consensus(
    layers: np.ndarray, also: Sequence[Mapping[int, np.ndarray]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Vote over products, pixel by pixel; lumped classes support what they lump in.

    Rules, per pixel:

    * votes are the layer values other than 0 (nodata) and 255 (ignore);
    * a class's *support* is the number of products that vote for it, plus those whose vote
      lumps it in (``also``: a product whose trees include mangroves supports mangroves where
      it votes trees). Without ``also`` the support is the vote count: a plain majority;
    * candidates are the classes at least one product votes for there (a class only lumped in
      never wins on its own);
    * the candidate with the most support wins, however little (one product alone decides
      where the others are nodata or ignore); between equal support, the one with more votes
      of its own; a tie on both gives 255 (ignore). So where WorldCover says mangroves and
      Dynamic World and Esri say trees (theirs lump mangroves in), mangroves have 3 support
      and trees 2: the product that tells them apart decides, and where it says trees, trees
      win 3 to 2;
    * no vote at all gives 255 (ignore) if at least one product says ignore, and 0 (nodata)
      if every product is nodata there.

    Args:
        layers: LAS label layers, uint8 of shape ``(P, H, W)``, one per product, on the same
            grid; ``1 <= P <= 255``.
        also: Per layer, ``{LAS class code: bool (H, W) mask}`` of the pixels where that
            product's vote also supports the class (:meth:`ProductMapping.also_masks
            <las_builder.catalog.ProductMapping.also_masks>`); None: no product lumps classes.

    Returns:
        ``(labels, agreement)``, both uint8 ``(H, W)``. ``labels`` is the consensus LAS value.
        ``agreement`` is the number of products that support the consensus class (vote for
        it or lump it in), and 0 where ``labels`` is 0 or 255 (ties included).

    Raises:
        ValueError: ``layers`` is not 3-D, has no or more than 255 layers, or holds 254 (the
            lookup-table marker of unmapped codes); ``also`` does not match the layers.
        TypeError: ``layers`` is not uint8.

    """
    arr = _check_layers(layers)
    masks = _also_masks(arr, also)
    height, width = arr.shape[1:]
    present = np.flatnonzero(np.bincount(arr.ravel(), minlength=256)).astype(np.uint8)
    classes = present[(present != LAS_NODATA) & (present != LAS_IGNORE)]
    any_ignore = (arr == LAS_IGNORE).any(axis=0)
    labels = np.where(any_ignore, np.uint8(LAS_IGNORE), np.uint8(LAS_NODATA)).astype(np.uint8)
    agreement = np.zeros((height, width), dtype=np.uint8)
    if classes.size == 0:
        return labels, agreement
    # Per class present (a handful): own votes and support, accumulated layer by layer so no
    # (P, H, W) temporary is made; whole-image operations only, never a loop over pixels.
    votes = np.zeros((classes.size, height, width), dtype=np.uint8)
    support = np.zeros((classes.size, height, width), dtype=np.uint8)
    for layer, lumped in zip(arr, masks, strict=True):
        for i, c in enumerate(classes):
            own = layer == c
            votes[i] += own
            extra = lumped.get(int(c))
            support[i] += own if extra is None else own | extra
    # One key orders by support, then own votes; a class no product votes for is no candidate.
    key = np.where(votes > 0, support.astype(np.uint16) << 8 | votes, np.uint16(0))
    best = key.max(axis=0)
    winners = (key == best).sum(axis=0)
    voted = best > 0
    decided = voted & (winners == 1)
    labels[voted] = LAS_IGNORE
    labels[decided] = classes[key.argmax(axis=0)][decided]
    agreement[decided] = (best >> 8).astype(np.uint8)[decided]
    return labels, agreement


def agreement_fraction(
    layers: np.ndarray,
    consensus: np.ndarray,
    also: Sequence[Mapping[int, np.ndarray]] | None = None,
) -> float:
    """Fraction of a sample's voted pixels on which every voting product agrees.

    With votes as in :func:`consensus` (layer values other than 0 and 255), let ``V`` be the
    pixels with at least one vote, and ``U`` the pixels of ``V`` where every vote supports the
    ``consensus`` value (is that class, or lumps it in by ``also``). The result is
    ``|U| / |V|``.

    Products that are nodata or ignore at a pixel do not count against agreement, so a pixel
    with a single vote counts as unanimous; tied pixels are in ``V`` but never in ``U``.

    Args:
        layers: LAS label layers, uint8 ``(P, H, W)``.
        consensus: The consensus labels of these layers, ``(H, W)`` (as from :func:`consensus`).
        also: As for :func:`consensus`.

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
    for layer, lumped in zip(arr, _also_masks(arr, also), strict=True):
        supports = layer == cons
        for code, mask in lumped.items():
            supports |= mask & (cons == code)
        for_consensus += supports
    is_class = (cons != LAS_NODATA) & (cons != LAS_IGNORE)
    unanimous = voted & is_class & (for_consensus == votes)
    return int(np.count_nonzero(unanimous)) / n_voted
