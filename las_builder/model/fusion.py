"""Class-wise confidence-guided fusion of LandSegmenter's masks with the image-text prior.

LandSegmenter's decoder can omit a class altogether (it never wins a pixel) even where the
image-text prior says the class is in the image. The fusion weighs, per class, the segmenter's
own confidence against the prior, so a class the segmenter is unsure of (or omits) can still
appear where its own scores are the runner-up and the prior believes it is present, and a class
the prior rules out is damped. The exact rule (also in docs/landsegmenter.md):

Let ``P(k, x) = softmax_k(segmenter logits)`` and ``pi_k = sigmoid(presence logit k)``, the
CLIP-like prior: the pooled image embedding projected into the text space, compared with the
class's text embedding. With ``A_k = {x : argmax_j P(j, x) = k}``:

* confidence ``c_k = mean_{x in A_k} P(k, x)`` (0 when ``A_k`` is empty: the class is omitted);
* weight ``w_k = c_k ** gamma``;
* fused score ``F(k, x) = P(k, x) * (w_k + (1 - w_k) * 2 * pi_k)``;
* prediction ``argmax_k F(k, x)``.

``2 * pi_k`` is 1 when the prior is undecided (``pi_k = 0.5``), up to 2 when it is sure the class
is present, down to 0 when it is sure the class is absent. A confidently segmented class
(``w_k`` near 1) keeps its scores; the less confident the segmenter is about a class, the more
the prior rescales it.

Example:
    >>> import torch
    >>> from las_builder.model.fusion import fuse
    >>> seg = torch.zeros(1, 2, 1, 2)
    >>> seg[0, 0] = torch.tensor([[2.0, 0.2]])               # class 1 never wins
    >>> fused, w = fuse(seg, torch.tensor([[0.0, 6.0]]))     # the prior is sure class 1 is there
    >>> fused.argmax(1)[0].tolist()
    [[0, 1]]

"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["class_confidence", "fuse"]


def class_confidence(probs: torch.Tensor) -> torch.Tensor:
    """Return ``c_k``: the mean probability of class ``k`` over the pixels it wins.

    Args:
        probs: Segmenter probabilities ``(B, K, H, W)``.

    Returns:
        ``(B, K)``; 0 for classes that win no pixel.

    """
    k = probs.shape[1]
    winners = F.one_hot(probs.argmax(1), k).permute(0, 3, 1, 2).to(probs.dtype)
    count = winners.sum((2, 3))
    return (probs * winners).sum((2, 3)) / count.clamp_min(1.0)


def fuse(
    seg_logits: torch.Tensor, presence_logits: torch.Tensor, gamma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse segmenter scores with the image-level prior class by class (see the module doc).

    Args:
        seg_logits: Segmenter logits ``(B, K, H, W)``.
        presence_logits: Image-text prior presence logits ``(B, K)``.
        gamma: Sharpness of the confidence weighting (``w_k = c_k ** gamma``).

    Returns:
        ``(fused scores (B, K, H, W), weights w (B, K))``.

    Raises:
        ValueError: ``gamma`` is negative or not finite (``0 ** gamma`` of an omitted class
            would be infinite, and every fused score of that class NaN).

    """
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"fusion gamma must be a finite number of 0 or more, got {gamma}")
    p = seg_logits.float().softmax(1)
    w = class_confidence(p).pow(gamma)
    factor = w + (1.0 - w) * 2.0 * presence_logits.float().sigmoid()
    return p * factor[..., None, None], w
