"""Seeded, spatially coherent random fields for the world generator."""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt
from scipy import ndimage, special


def rng_for(seed: int, *keys: str | int) -> np.random.Generator:
    """A random generator that depends only on ``seed`` and the ``keys`` (stable across runs)."""
    words = [seed & 0xFFFFFFFF] + [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(words)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """A zero-mean, unit-variance random field whose features are about ``cell_px`` pixels wide."""
    cell = max(float(cell_px), 1.0)
    coarse_shape = (int(shape[0] / cell) + 4, int(shape[1] / cell) + 4)
    coarse: npt.NDArray[np.float32] = ndimage.gaussian_filter(
        rng.standard_normal(coarse_shape).astype(np.float32), 0.8
    )
    if cell <= 1.0:
        field = coarse[: shape[0], : shape[1]]
    else:
        # Bilinear upsampling of smoothed coarse noise, as two small matrix products.
        field = _interpolation_matrix(shape[0], cell, coarse_shape[0]) @ coarse
        field = field @ _interpolation_matrix(shape[1], cell, coarse_shape[1]).T
    field = field - field.mean()
    std = field.std()
    out: npt.NDArray[np.float32] = (field / std if std > 0 else field).astype(np.float32)
    return out


def _interpolation_matrix(n: int, cell: float, n_coarse: int) -> np.ndarray:
    """Rows of linear interpolation weights from a coarse axis onto ``n`` fine pixels."""
    pos = np.arange(n, dtype=np.float64) / cell + 1.0
    lower = pos.astype(np.int64)
    frac = (pos - lower).astype(np.float32)
    weights = np.zeros((n, n_coarse), dtype=np.float32)
    weights[np.arange(n), lower] = 1 - frac
    weights[np.arange(n), lower + 1] = frac
    return weights


def uniform_field(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """A spatially coherent field with a uniform [0, 1) marginal."""
    u: npt.NDArray[np.float32] = special.ndtr(smooth_field(rng, shape, cell_px)).astype(np.float32)
    return np.minimum(u, np.float32(0.999999))


def top_fraction(score: np.ndarray, fraction: float, where: np.ndarray | None = None) -> np.ndarray:
    """Mask of the ``fraction`` of pixels (among ``where``) with the highest ``score``."""
    if fraction <= 0:
        return np.zeros(score.shape, dtype=bool)
    pool = score[where] if where is not None else score.ravel()
    if pool.size == 0:
        return np.zeros(score.shape, dtype=bool)
    sample = pool[:: max(1, pool.size // 200_000)]
    threshold = np.quantile(sample, 1.0 - min(fraction, 1.0))
    mask: npt.NDArray[np.bool_] = score > threshold
    return mask & where if where is not None else mask
