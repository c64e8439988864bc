"""Training configuration: ``configs/train-*.yaml``, validated.

Example (``configs/train-tiny.yaml``)::

    name: tiny
    dataset: ${LAS_DATASET:-out/demo/las}
    products: [esa-worldcover, io-lulc-annual-v02, dynamic-world-v1]
    inputs: [[sentinel-2], [sentinel-1], [sentinel-2, sentinel-1]]
    model: {size: tiny}
    optim: {lr: 0.002, batch_size: 8, steps: 600}
    out_dir: out/train/tiny

Strings may use ``${ENV}`` / ``${ENV:-default}``; ``las train CONFIG --set optim.steps=10``
overrides single values (YAML-typed), as ``las build --set`` does for recipes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from las_builder.model.data import MODALITIES, ProductSpec

__all__ = [
    "ModelSpec",
    "OptimSpec",
    "TextSpec",
    "TrainConfig",
    "TrainConfigError",
    "load_train_config",
]


class TrainConfigError(ValueError):
    """A training config that cannot be read or is invalid."""


class _Strict(BaseModel):
    # inf/NaN pass ``gt=0``-style bounds (an lr of inf trained NaN weights without a word)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelSpec(_Strict):
    """Which network to build.

    Attributes:
        size: Preset: ``tiny`` (CPU), ``small`` / ``base`` / ``large`` (SAM2 Hiera-T/B+/L).
        overrides: Values replacing the preset's (see ``ModelConfig``).
        sam2_checkpoint: Local SAM2 checkpoint whose trunk initialises the encoder.

    """

    size: Literal["tiny", "small", "base", "large"] = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)
    sam2_checkpoint: str | None = None

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        # checked here, not when the network is built: an unknown name was a TypeError
        # traceback, a width of 0 a RuntimeError in the first forward pass
        from dataclasses import fields

        from las_builder.model.model import ModelConfig

        known = {f.name: f for f in fields(ModelConfig) if f.name not in ("size", "extra")}
        for name, v in value.items():
            if name not in known:
                raise ValueError(f"unknown model setting {name!r}; known: {', '.join(known)}")
            default = getattr(ModelConfig(), name)
            if isinstance(default, tuple):
                ok = isinstance(v, list | tuple) and all(
                    isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v
                )
                ok = ok and (name == "global_att_blocks" or (bool(v) and min(v) >= 1))
                what = "a list of whole numbers" + ("" if name == "global_att_blocks" else " >= 1")
            elif isinstance(default, int):
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= 1
                what = "a whole number >= 1"
            else:
                ok = isinstance(v, int | float) and not isinstance(v, bool) and v == v
                ok = ok and abs(v) != float("inf") and v >= 0
                what = "a finite number >= 0"
            if not ok:
                raise ValueError(f"model setting {name}: expected {what}, got {v!r}")
        return value


class TextSpec(_Strict):
    """Text encoder of the prompter (see ``las_builder.model.text``)."""

    backend: Literal["minilm", "open_clip"] = "minilm"
    model: str | None = None
    weights: str | None = None
    template: str = "{}"
    dim: int = Field(default=384, ge=1)

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        # without "{}" every class gets the same prompt, and the model cannot tell them apart
        rest = value.replace("{}", "", 1)
        if "{}" not in value or "{" in rest or "}" in rest:
            raise ValueError(
                f"template {value!r} must hold the class name as exactly one {{}}, "
                "e.g. 'a satellite image of {}'"
            )
        return value


class OptimSpec(_Strict):
    """Optimisation.

    Attributes:
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: Samples per step.
        steps: Optimiser steps (ignored when ``epochs`` is set).
        epochs: Passes over the training split; sets ``steps``.
        warmup_steps: Linear warm-up, then cosine decay to ``lr * min_lr_ratio``.
        min_lr_ratio: Final learning rate relative to ``lr``.
        grad_clip: Max gradient norm (0 disables).
        prior_weight: Weight of the image-text presence loss.
        class_balance: Exponent ``a`` of per-batch class weights ``n_k ** -a`` in the
            cross-entropy (0: none, 0.5: square-root inverse frequency).

    """

    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    batch_size: int = Field(default=8, ge=1)
    steps: int = Field(default=1000, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    warmup_steps: int = Field(default=50, ge=0)
    min_lr_ratio: float = Field(default=0.05, ge=0, le=1)
    grad_clip: float = Field(default=1.0, ge=0)
    prior_weight: float = Field(default=0.1, ge=0)
    class_balance: float = Field(default=0.0, ge=0, le=1)


class TrainConfig(_Strict):
    """A LandSegmenter training run.

    Attributes:
        name: Run name.
        dataset: LAS dataset folder or URL (``las.zarr`` + ``index.parquet``).
        storage_options: fsspec options for URLs.
        products: Label products supervising the model: ``<product>`` (LAS classes),
            ``<product>:native`` (the product's legend) or ``consensus``.
        product_weights: Sampling weights of ``products`` (uniform if absent).
        product_sampling: ``batch`` (one product per step) or ``sample`` (one per sample).
        inputs: Modality combinations, one drawn per step (combinations some sample in the
            batch lacks are skipped).
        input_weights: Sampling weights of ``inputs``.
        eval_inputs: Modalities used by validation and ``las eval`` by default.
        naip_factor: NAIP pixels per label pixel fed to the network (``null``: stored).
        crop_px: Random training crops of this size (``null``: whole samples).
        augment: Random flips and 90-degree rotations.
        val_fraction: Samples held out for validation (by a hash of the sample id).
        split_seed: Seed of that split.
        split_by: Stratify the split by this index column (``epsg``: every UTM zone, i.e.
            region, keeps training samples and contributes held-out ones); ``null`` holds
            samples out by hash alone.
        presence_threshold: Fraction of a sample's labelled pixels above which a class
            counts as present for the image-text prior's loss.
        model: Network.
        text: Text encoder.
        optim: Optimisation.
        seed: Seed of weights, data order, crops and draws.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
        threads: torch intra-op CPU threads (``null``: torch's default).
        num_workers: DataLoader workers.
        log_every: Steps between metric rows.
        val_every: Steps between validations (0: only at the end).
        checkpoint_every: Steps between checkpoints (always one at the end).
        keep_checkpoints: Step checkpoints kept besides ``last.pt``.
        max_minutes: Stop (with a checkpoint) after this much wall time.
        out_dir: Where checkpoints, ``metrics.csv`` and ``tb/`` go.

    """

    name: str = "landsegmenter"
    dataset: str
    storage_options: dict[str, Any] = Field(default_factory=dict)
    products: list[str] = Field(min_length=1)
    product_weights: list[float] | None = None
    product_sampling: Literal["batch", "sample"] = "batch"
    inputs: list[list[str]] = Field(default_factory=lambda: [["sentinel-2"]], min_length=1)
    input_weights: list[float] | None = None
    eval_inputs: list[str] | None = None
    naip_factor: int | None = Field(default=None, ge=1)
    crop_px: int | None = Field(default=None, ge=32)
    augment: bool = True
    val_fraction: float = Field(default=0.2, ge=0, lt=1)
    split_seed: int = 0
    split_by: str | None = "epsg"
    presence_threshold: float = Field(default=0.01, ge=0, lt=1)
    model: ModelSpec = Field(default_factory=ModelSpec)
    text: TextSpec = Field(default_factory=TextSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    seed: int = 0
    device: str = "auto"
    threads: int | None = Field(default=None, ge=1)
    num_workers: int = Field(default=0, ge=0)
    log_every: int = Field(default=10, ge=1)
    val_every: int = Field(default=0, ge=0)
    checkpoint_every: int = Field(default=200, ge=1)
    keep_checkpoints: int = Field(default=2, ge=0)
    max_minutes: float | None = Field(default=None, gt=0)
    out_dir: str = "out/train/landsegmenter"

    @field_validator("products")
    @classmethod
    def _products(cls, value: list[str]) -> list[str]:
        # the name training keys labels and prompts by: ``x:las`` is ``x``, which failed at
        # the first step with a bare KeyError (and ``[x, x:las]`` listed one product twice)
        keys = [ProductSpec.parse(p).key for p in value]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"a product is listed twice: {', '.join(twice)}")
        return keys

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: list[list[str]]) -> list[list[str]]:
        for combo in value:
            if not combo:
                raise ValueError("an input combination is empty")
            bad = [m for m in combo if m not in MODALITIES]
            if bad:
                raise ValueError(f"unknown modalities {bad}; known: {', '.join(MODALITIES)}")
        return value

    @field_validator("eval_inputs")
    @classmethod
    def _eval_inputs(cls, value: list[str] | None) -> list[str] | None:
        bad = [m for m in value or [] if m not in MODALITIES]
        if bad:
            raise ValueError(f"unknown modalities {bad}; known: {', '.join(MODALITIES)}")
        return value

    @model_validator(mode="after")
    def _weights(self) -> TrainConfig:
        # a wrong count or sign failed at the first step, with random.choices' own words
        for name, weights, of in (
            ("product_weights", self.product_weights, self.products),
            ("input_weights", self.input_weights, self.inputs),
        ):
            if weights is None:
                continue
            listed = "products" if name == "product_weights" else "inputs"
            if len(weights) != len(of):
                raise ValueError(
                    f"{name} has {len(weights)} values for {len(of)} {listed}: give one each"
                )
            if any(w < 0 for w in weights) or not sum(weights) > 0:
                raise ValueError(f"{name} must be 0 or more, at least one above 0: {weights}")
        return self

    @property
    def modalities(self) -> list[str]:
        """Every modality any input combination (or evaluation) uses, in store order."""
        used = {m for combo in self.inputs for m in combo} | set(self.eval_inputs or [])
        return [m for m in MODALITIES if m in used]

    @property
    def default_eval_inputs(self) -> list[str]:
        """``eval_inputs``, else the first input combination."""
        return list(self.eval_inputs or self.inputs[0])


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read, substitute ``${ENV}``, apply ``--set`` overrides and validate a config.

    Raises:
        TrainConfigError: The file is missing, not YAML, or invalid (all problems listed).

    """
    from las_builder.catalog.yamlio import load_yaml, yaml_error_text
    from las_builder.recipe import _apply_override, _substitute

    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"training config {path} not found")
    try:
        # The strict loader: a repeated key is an error, not a silently dropped setting; an
        # alias bomb is refused before the ${VAR} substitution walks it.
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise TrainConfigError(f"{path}: not valid YAML: {yaml_error_text(err)}") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: expected a mapping at the top level")
    missing: list[tuple[str, str]] = []
    data = _substitute(data, "", missing)
    if missing:
        raise TrainConfigError("; ".join(f"{k}: {m}" for k, m in missing))
    for override in overrides:
        try:
            _apply_override(data, override)
        except ValueError as err:
            raise TrainConfigError(str(err)) from None
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors()
        ]
        raise TrainConfigError(f"{path}: " + "; ".join(problems)) from None
