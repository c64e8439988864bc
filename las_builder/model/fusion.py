"""Class-wise confidence-guided fusion of LandSegmenter's masks with the image-text prior.

LandSegmenter's decoder can omit a class altogether (it never wins a pixel) even where the
image-text prior says the class is in the image. The fusion weighs, per class, the segmenter's
own confidence against the prior, so a class the segmenter is unsure of (or omits) can still
appear where the prior is confident. The exact rule (also in docs/landsegmenter.md):

Let ``P(k, x) = softmax_k(segmenter logits)``, ``Q(k, x) = softmax_k(dense prior logits)`` and
``pi_k = sigmoid(presence logit k)`` (image-level presence from the pooled image embedding
projected into the text space). With ``A_k = {x : argmax_j P(j, x) = k}``:

* confidence ``c_k = mean_{x in A_k} P(k, x)`` (0 when ``A_k`` is empty: the class is omitted);
* weight ``w_k = c_k ** gamma``;
* fused score ``F(k, x) = w_k * P(k, x) + (1 - w_k) * pi_k * Q(k, x)``;
* prediction ``argmax_k F(k, x)``.

A confidently segmented class keeps (almost) the segmenter's scores; an omitted class falls back
to the prior, gated by the prior's belief that the class is present at all.

Example:
    >>> import torch
    >>> from las_builder.model.fusion import fuse
    >>> seg = torch.zeros(1, 2, 2, 2); seg[:, 0] = 3.0        # class 1 never wins
    >>> prior = torch.zeros(1, 2, 2, 2); prior[:, 1, 0, 0] = 9.0
    >>> fused, w = fuse(seg, prior, torch.tensor([[4.0, 4.0]]))
    >>> fused.argmax(1)[0].tolist()
    [[1, 0], [0, 0]]

"""

from __future__ import annotations

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
    seg_logits: torch.Tensor,
    prior_logits: torch.Tensor,
    presence_logits: torch.Tensor | None = None,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse segmenter and prior scores class by class (see the module docstring).

    Args:
        seg_logits: Segmenter logits ``(B, K, H, W)``.
        prior_logits: Dense image-text prior logits ``(B, K, H, W)``.
        presence_logits: Image-level presence logits ``(B, K)``; ``None`` uses ``pi_k = 1``.
        gamma: Sharpness of the confidence weighting (``w_k = c_k ** gamma``).

    Returns:
        ``(fused scores (B, K, H, W), weights w (B, K))``.

    """
    p = seg_logits.softmax(1)
    q = prior_logits.softmax(1)
    w = class_confidence(p).pow(gamma)
    pi = torch.ones_like(w) if presence_logits is None else presence_logits.sigmoid()
    fused = w[..., None, None] * p + ((1.0 - w) * pi)[..., None, None] * q
    return fused, w
