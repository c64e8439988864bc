"""LandSegmenter: a wavelength-conditioned, text-prompted segmenter trained on LAS weak labels.

Modules: :mod:`~las_builder.model.data` (Dataset over the shards), :mod:`~.model` (network),
:mod:`~.text` (class-name prompter), :mod:`~.train`, :mod:`~.evaluate` (eval and predict),
:mod:`~.fusion` (confidence-guided fusion with the image-text prior), :mod:`~.truth` (the
offline world's truth on sample grids), :mod:`~.config` (training configs), :mod:`~.bands`.
Names are imported lazily so ``import las_builder.model`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LASDataset": "data",
    "compose_input": "data",
    "LandSegmenter": "model",
    "ModelConfig": "model",
    "model_config": "model",
    "load_sam2_weights": "model",
    "TextPrompter": "text",
    "TrainConfig": "config",
    "load_train_config": "config",
    "train": "train",
    "load_checkpoint": "train",
    "evaluate": "evaluate",
    "predict": "evaluate",
    "fuse": "fusion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"las_builder.model.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'las_builder.model' has no attribute {name!r}")
