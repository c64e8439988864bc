"""Train LandSegmenter on a LAS dataset with its weak labels (``las train CONFIG``).

Each step draws a modality combination (``inputs``) and, per batch or per sample, one of the
configured label products; every sample is prompted with the class names of the product that
supervises it. The loss is cross-entropy over the prompted classes with ``ignore_index`` 255, so
nodata (0) and ignore (255) pixels never enter it (a batch without any labelled pixel
contributes zero), plus a multi-label loss that trains the image-text prior's projection.

Outputs under ``out_dir``: ``checkpoints/last.pt`` (+ the last ``keep_checkpoints`` step
checkpoints), ``metrics.csv`` (one row per ``log_every`` steps and per validation),
``tb/`` (TensorBoard, when the ``tensorboard`` package is installed) and ``config.yaml``.
``--resume`` continues from ``last.pt`` at its step, with optimiser, scheduler, data order and
RNG states restored (random crops are seeded per batch: the same with any ``num_workers``); it
refuses a config whose settings differ from the checkpoint's, except :data:`RESUMABLE` ones.
"""

from __future__ import annotations

import csv
import math
import os
import random
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Dataset, default_collate

from las_builder.model.config import TrainConfig
from las_builder.model.data import IGNORE_INDEX, LASDataset, augment_batch, compose_input
from las_builder.model.model import LandSegmenter, ModelConfig, load_sam2_weights, model_config
from las_builder.model.text import TextEncoderSpec, TextPrompter

__all__ = [
    "CHECKPOINT_FORMAT",
    "load_checkpoint",
    "masked_cross_entropy",
    "presence_targets",
    "read_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "train",
]

CHECKPOINT_FORMAT = "landsegmenter-v1"
METRIC_FIELDS = [
    "step",
    "epoch",
    "split",
    "loss",
    "ce",
    "presence",
    "lr",
    "sec_per_step",
    "product",
    "inputs",
    "miou",
]


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device that ``name`` names.

    ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises:
        ValueError: Another name, or a device this machine does not have (saying what it has).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "mps") and not re.fullmatch(r"cuda(:\d+)?", name):
        raise ValueError(f"device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            build = "" if torch.version.cuda else f" (torch {torch.__version__} is a CPU build)"
            raise ValueError(f"device {name!r}: this machine has {have}{build}; use cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps': Apple's Metal is not available here; use cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, balance: float = 0.0
) -> tuple[torch.Tensor, int]:
    """Cross-entropy over prompted classes, ignoring :data:`IGNORE_INDEX` pixels.

    Args:
        logits: ``(B, K, H, W)``; resized to the target grid if it differs.
        target: ``(B, H, W)`` class indices, 255 = not supervised.
        balance: Class balancing exponent ``a``: pixels of class ``k`` weigh
            ``n_k ** -a`` (``n_k`` its supervised pixels in the batch), rescaled so the
            weights average 1 over the supervised pixels; 0 is plain cross-entropy.

    Returns:
        ``(mean loss over supervised pixels (0 if none), number of supervised pixels)``.

    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    mask = target != IGNORE_INDEX
    valid = int(mask.sum())
    weight = None
    if balance > 0 and valid:
        counts = torch.bincount(target[mask], minlength=logits.shape[1]).float()
        weight = torch.where(counts > 0, counts.clamp_min(1).pow(-balance), 0.0)
        weight = weight * valid / (weight * counts).sum()
    loss = F.cross_entropy(
        logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss / max(valid, 1), valid


def presence_targets(
    target: torch.Tensor, num_classes: int, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-level class presence from a label map.

    Args:
        target: ``(B, H, W)`` class indices (255 ignored).
        num_classes: Number of prompted classes.
        threshold: Minimum fraction of the labelled pixels for a class to count as present.

    Returns:
        ``(presence (B, K) float, has_labels (B,) bool)``.

    """
    b = target.shape[0]
    flat = target.reshape(b, -1)
    valid = flat != IGNORE_INDEX
    counts = torch.zeros(b, num_classes + 1, device=target.device)
    counts.scatter_add_(1, torch.where(valid, flat, num_classes), torch.ones_like(flat).float())
    n = valid.sum(1).float()
    frac = counts[:, :num_classes] / n.clamp_min(1)[:, None]
    return (frac > threshold).float(), n > 0


def _lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


# --- checkpoints -----------------------------------------------------------------------------


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write a checkpoint atomically (``path.tmp``, flushed to disk, then renamed).

    A run killed while writing (``kill -9``, power loss) leaves the previous checkpoint
    whole: the rename happens only once every byte of the new one is on disk.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint's dict, refusing anything that is not a whole LandSegmenter one.

    Loaded with ``weights_only=True``: a checkpoint holds tensors and plain values only, so
    a file from elsewhere cannot run code while it is read.

    Raises:
        FileNotFoundError: No such file.
        ValueError: A damaged (e.g. truncated) file, or not a LandSegmenter checkpoint.

    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        # torch's own messages run to a paragraph: its first sentence says enough
        reason = " ".join(str(err).split()).split(". ")[0][:160] or type(err).__name__
        raise ValueError(
            f"checkpoint {path} cannot be read ({reason}): it is damaged or not a "
            "LandSegmenter checkpoint; use another one (checkpoints/step-*.pt)"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a LandSegmenter checkpoint ({CHECKPOINT_FORMAT})")
    missing = [k for k in ("model", "model_config", "train_config", "text") if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}: it is incomplete; use another one")
    return ckpt


def _load_weights(model: LandSegmenter, state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's weights, saying how they differ from the network on a mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or reshaped:
        raise ValueError(
            f"checkpoint {path} does not fit the network (model.size {model.config.size!r}): "
            f"{len(missing)} tensors missing, {len(unexpected)} unknown, {len(reshaped)} of "
            "another shape; use the model settings it was trained with, or another out_dir"
        )
    model.load_state_dict(state)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[LandSegmenter, TextPrompter, dict[str, Any]]:
    """Load a LandSegmenter checkpoint.

    Args:
        path: A ``.pt`` written by :func:`train` (or a run folder: its ``checkpoints/last.pt``).
        device: Where to put the model.

    Returns:
        ``(model in eval mode, text prompter with the cached class embeddings, raw dict)``.

    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    ckpt = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
    except TypeError as err:
        raise ValueError(
            f"checkpoint {path}: its model_config is not this version's ({err})"
        ) from None
    model = LandSegmenter(config)
    _load_weights(model, ckpt["model"], path)
    model.to(device).eval()
    return model, TextPrompter.from_state(ckpt["text"]), ckpt


RESUMABLE = frozenset(
    {
        "name", "dataset", "storage_options", "eval_inputs", "device", "threads", "num_workers",
        "log_every", "val_every", "checkpoint_every", "keep_checkpoints", "max_minutes",
        "out_dir", "optim.steps", "optim.epochs", "model.sam2_checkpoint",
    }
)  # fmt: skip
"""Settings a ``--resume`` may change: where and how long it runs, not what it trains on."""


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "storage_options":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_resumable(cfg: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    """Refuse to resume a run whose settings the config changed (besides :data:`RESUMABLE`).

    The optimiser's state brings back the saved learning rate and weight decay, whatever the
    config says; other products, inputs, seed, batch size or split would continue the saved
    step with other data: either way the run would silently not be the one configured.

    Raises:
        ValueError: Names each changed setting with its saved and its new value.

    """
    now, then = _flat(cfg.model_dump()), _flat(saved)
    changed = [
        f"{key} {then.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(now.keys() | then.keys())
        if key not in RESUMABLE and now.get(key) != then.get(key)
    ]
    if changed:
        raise ValueError(
            f"--resume: checkpoint {path} was trained with other settings ({'; '.join(changed)}): "
            "set them back to resume it, or train anew in another out_dir"
        )


# --- data ------------------------------------------------------------------------------------


class _EpochBatches:
    """Deterministic batches: a seeded permutation per epoch, resumable at any step."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = max(1, n // batch_size) if n >= batch_size else 1

    def epoch(self, e: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + e)
        perm = torch.randperm(self.n, generator=g).tolist()
        if self.n < self.batch_size:
            return [perm]
        return [
            perm[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.per_epoch)
        ]


class _SeededBatches(Dataset[dict[str, Any]]):
    """A dataset's batches, each read under torch's RNG seeded for that batch alone.

    Random crops are drawn from torch's RNG while a batch is read: in the main process that
    RNG also draws the augmentations, and in a ``DataLoader`` worker it is the worker's own,
    which a resumed run starts afresh. Seeded per batch (and restored after it), a batch's
    crops depend on the run's seed, the epoch and the batch's place in it only: the same
    whatever ``num_workers``, and the same after ``--resume`` as without it.
    """

    def __init__(self, dataset: LASDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, list[int]]) -> dict[str, Any]:
        seed, positions = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset.batch(positions)


def _batches(
    dataset: LASDataset, sched: _EpochBatches, start_step: int, num_workers: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(epoch, batch)`` forever, starting at global step ``start_step``."""
    epoch, skip = divmod(start_step, sched.per_epoch)
    while True:
        batches = sched.epoch(epoch)
        seeds = [(sched.seed * 100_003 + epoch) * 1_000_003 + k for k in range(len(batches))]
        # Each element of ``order`` is a whole batch: the dataset builds it in one piece
        # (LASDataset.batch, equal to default_collate of its items), no per-sample collate.
        order = list(zip(seeds, batches, strict=True))[skip:]
        loader = DataLoader(
            _SeededBatches(dataset),
            sampler=order,
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=False,
            # its base seed is drawn from this, not from torch's global RNG: the global RNG
            # (saved in checkpoints) then advances alike whether an epoch starts here or not
            generator=torch.Generator().manual_seed(seeds[0]),
        )
        for batch in loader:
            yield epoch, batch
        epoch, skip = epoch + 1, 0


def _loader_workers(asked: int) -> int:
    """``num_workers``, at most the cores this process may use (with a warning saying so).

    The base and large presets ask for 8, right on a GPU host; on a laptop's 2 cores 8 worker
    processes only compete for them (a batch is the same whichever worker builds it).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if asked <= cores:
        return asked
    warnings.warn(
        f"num_workers: {asked} DataLoader workers asked, this machine gives {cores} cores: "
        f"using {cores}",
        stacklevel=2,
    )
    return cores


def _choose_inputs(cfg: TrainConfig, batch: dict[str, Any], rng: random.Random) -> list[str]:
    avail = batch["available"]
    ok = [
        i
        for i, combo in enumerate(cfg.inputs)
        if all(bool(torch.as_tensor(avail[m]).all()) for m in combo)
    ]
    if not ok:  # fall back to the combination most samples have
        ok = [max(range(len(cfg.inputs)), key=lambda i: _coverage(cfg.inputs[i], avail))]
    weights = [cfg.input_weights[i] if cfg.input_weights else 1.0 for i in ok]
    return list(cfg.inputs[rng.choices(ok, weights=weights)[0]])


def _coverage(combo: Sequence[str], avail: dict[str, Any]) -> float:
    return min(float(torch.as_tensor(avail[m]).float().mean()) for m in combo)


def _choose_products(cfg: TrainConfig, b: int, rng: random.Random) -> list[str]:
    weights = cfg.product_weights or [1.0] * len(cfg.products)
    if cfg.product_sampling == "batch":
        return [rng.choices(cfg.products, weights=weights)[0]] * b
    return rng.choices(cfg.products, weights=weights, k=b)


# --- evaluation during training --------------------------------------------------------------


@torch.no_grad()
def quick_miou(
    model: LandSegmenter,
    prompter: TextPrompter,
    dataset: LASDataset,
    inputs: Sequence[str],
    device: torch.device,
    batch_size: int = 8,
) -> dict[str, float]:
    """Return the mIoU of the model against each of the dataset's label products."""
    from las_builder.model.evaluate import confusion, miou

    model.eval()
    confs: dict[str, torch.Tensor] = {}
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=default_collate)
    for batch in loader:
        image, wl, pol = compose_input(batch, inputs)
        out_size = (image.shape[-2], image.shape[-1])
        feats = model.encode(image.to(device), wl.to(device), pol.to(device))
        by_names: dict[tuple[str, ...], torch.Tensor] = {}
        for product, target in batch["labels"].items():
            names = tuple(dataset.class_names[product])
            if names not in by_names:
                text = prompter.embed(names).to(device)
                by_names[names] = model.decode(feats, text, out_size)["logits"]
            logits = by_names[names]
            if logits.shape[-2:] != target.shape[-2:]:
                logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear")
            c = confusion(logits.argmax(1).cpu(), target, len(names))
            confs[product] = confs.get(product, 0) + c
    model.train()
    return {p: miou(c)[0] for p, c in confs.items()}


# --- training --------------------------------------------------------------------------------


class _Logger:
    """metrics.csv + optional TensorBoard."""

    def __init__(self, out_dir: Path, resume: bool, step: int = 0) -> None:
        self.path = out_dir / "metrics.csv"
        if not resume or not self.path.exists():
            with self.path.open("w", newline="") as f:
                csv.DictWriter(f, METRIC_FIELDS).writeheader()
        else:
            self._keep_until(step)
        self.tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn(
                "tensorboard is not installed: metrics go to metrics.csv only "
                "(pip install tensorboard)",
                stacklevel=2,
            )
        else:
            self.tb = SummaryWriter(str(out_dir / "tb"))

    def _keep_until(self, step: int) -> None:
        """Drop the rows past ``step``.

        A run killed after its last checkpoint logged steps that the resumed run trains (and
        logs) again: they would be in the file twice.
        """
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if not (r.get("step") or "").isdigit() or int(r["step"]) <= step]
        if len(kept) == len(rows):
            return
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        tmp.replace(self.path)

    def log(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS).writerow({k: row.get(k, "") for k in METRIC_FIELDS})
        if self.tb is not None:
            split = row.get("split", "train")
            for k, v in row.items():
                if isinstance(v, int | float) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{split}/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def build_model(cfg: TrainConfig) -> tuple[LandSegmenter, dict[str, list[str]] | None]:
    """Build the network of a config (loading SAM2 trunk weights when configured)."""
    mcfg = model_config(cfg.model.size, text_dim=cfg.text.dim, **cfg.model.overrides)
    model = LandSegmenter(mcfg)
    report = None
    if cfg.model.sam2_checkpoint:
        report = load_sam2_weights(model, cfg.model.sam2_checkpoint)
    return model, report


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run.

    Args:
        cfg: The validated config.
        resume: Continue from ``out_dir/checkpoints/last.pt``.
        progress: Show a rich progress bar.
        on_step: Called with ``(step, metrics)`` after every step (tests, notebooks).

    Returns:
        Summary: ``out_dir``, ``step``, ``checkpoint``, ``last_loss``, ``val`` (mIoU per
        product at the end, when there is a validation split), ``sam2`` (load report).

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint.

    """
    out_dir = Path(cfg.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {last}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)

    common: dict[str, Any] = dict(
        modalities=cfg.modalities,
        products=cfg.products,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        split_by=cfg.split_by,
        naip_factor=cfg.naip_factor,
        storage_options=cfg.storage_options or None,
    )
    train_ds = LASDataset(
        cfg.dataset, split="train", crop_px=cfg.crop_px, random_crop=True, **common
    )
    usable = train_ds.status_counts.get("ok", 0)
    if len(train_ds) == 0 and usable:
        raise ValueError(
            f"{cfg.dataset}: all {usable} usable samples are held out for validation "
            f"(val_fraction {cfg.val_fraction}, split_by {cfg.split_by}): lower val_fraction, "
            "or split by epsg, which keeps training samples in every region"
        )
    if len(train_ds) == 0:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(train_ds.status_counts.items()))
        raise ValueError(
            f"{cfg.dataset}: no usable training samples (index.parquet: {counts or 'no rows'}; "
            "only status ok samples train): see their reasons with `las build --status` "
            "or `las inspect`, then rebuild"
        )
    val_ds = LASDataset(cfg.dataset, split="val", **common) if cfg.val_fraction > 0 else None
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None

    model, sam2_report = build_model(cfg)
    model.to(device).train()
    prompter = TextPrompter(TextEncoderSpec(**cfg.text.model_dump()))
    text = {p: prompter.embed(names) for p, names in train_ds.class_names.items()}

    sched_batches = _EpochBatches(len(train_ds), cfg.optim.batch_size, cfg.seed)
    total = cfg.optim.epochs * sched_batches.per_epoch if cfg.optim.epochs else cfg.optim.steps
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "pos_embed" in name or "token" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.optim.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.optim.warmup_steps, total, cfg.optim.min_lr_ratio)
    )
    rng = random.Random(cfg.seed)
    step = 0
    if resume:
        state = read_checkpoint(last)
        _load_weights(model, state["model"], last)
        _check_resumable(cfg, state["train_config"], last)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        rng.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        prompter = TextPrompter.from_state(state["text"])
        text = {p: prompter.embed(names) for p, names in train_ds.class_names.items()}

    text = {p: t.to(device) for p, t in text.items()}
    logger = _Logger(out_dir, resume, step)
    use_amp = device.type == "cuda"

    def checkpoint(at: int, epoch: int) -> Path:
        state = dict(
            step=at,
            epoch=epoch,
            model=model.state_dict(),
            model_config=model.config.to_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            train_config=cfg.model_dump(),
            text=prompter.state(),
            class_names=train_ds.class_names,
            bands={m: [list(v) for v in b] for m, b in train_ds.bands.items()},
            rng={
                "python": rng.getstate(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            },
        )
        save_checkpoint(last, **state)
        if cfg.keep_checkpoints:
            save_checkpoint(ckpt_dir / f"step-{at:07d}.pt", **state)
            old = sorted(ckpt_dir.glob("step-*.pt"))[: -cfg.keep_checkpoints]
            for p in old:
                p.unlink()
        return last

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    started = time.monotonic()
    summary: dict[str, Any] = {"out_dir": str(out_dir), "sam2": sam2_report}
    last_loss = float("nan")
    epoch = step // sched_batches.per_epoch
    window: list[dict[str, float]] = []
    t_last = time.monotonic()
    with Progress(
        TextColumn(f"[bold]train[/] {cfg.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        console=Console(stderr=True),  # stdout carries results (a summary, metrics tables)
    ) as bar:
        task = bar.add_task("train", total=total, completed=step, loss=float("nan"), lr=0.0)
        batches = _batches(train_ds, sched_batches, step, _loader_workers(cfg.num_workers))
        while step < total:
            epoch, batch = next(batches)
            combo = _choose_inputs(cfg, batch, rng)
            image, wl, pol = compose_input(batch, combo)
            b = image.shape[0]
            products = _choose_products(cfg, b, rng)
            targets = torch.stack([batch["labels"][p][i] for i, p in enumerate(products)])
            if cfg.augment:
                image, (targets,) = augment_batch(image, [targets])
            image, targets = image.to(device), targets.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                feats = model.encode(image, wl.to(device), pol.to(device))
                ce_sum = torch.zeros((), device=device)
                pres_sum = torch.zeros((), device=device)
                n_valid = 0
                for product in dict.fromkeys(products):
                    idx = [i for i, p in enumerate(products) if p == product]
                    sel = torch.tensor(idx, device=device)
                    out = model.decode(
                        [f[sel] for f in feats], text[product], (image.shape[-2], image.shape[-1])
                    )
                    ce, valid = masked_cross_entropy(
                        out["logits"], targets[sel], cfg.optim.class_balance
                    )
                    ce_sum = ce_sum + ce * valid
                    n_valid += valid
                    pres, has = presence_targets(
                        targets[sel], len(train_ds.class_names[product]), cfg.presence_threshold
                    )
                    if bool(has.any()):
                        bce = F.binary_cross_entropy_with_logits(
                            out["presence_logits"][has].float(), pres[has]
                        )
                        pres_sum = pres_sum + bce * len(idx) / b
                ce_loss = ce_sum / max(n_valid, 1)
                loss = ce_loss + cfg.optim.prior_weight * pres_sum
            if not bool(torch.isfinite(loss.detach())):
                # a NaN/inf loss would poison every weight with the next update (and then
                # every checkpoint after it): stop, the last checkpoint is still good
                logger.close()
                kept = f"; {last} predates it" if last.is_file() else ""
                raise ValueError(
                    f"training diverged: the loss is {float(loss.detach())} at step {step + 1} "
                    f"(lr {scheduler.get_last_lr()[0]:.3g}); lower optim.lr or raise "
                    f"optim.warmup_steps and train again{kept}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            last_loss = float(loss.detach())
            now = time.monotonic()
            lr = scheduler.get_last_lr()[0]
            # a group's lr keeps the type it was given (AdamW(lr=float)): never a tensor here
            assert isinstance(lr, float)
            metrics = {
                "loss": last_loss,
                "ce": float(ce_loss.detach()),
                "presence": float(pres_sum.detach()),
                "lr": lr,
                "sec_per_step": now - t_last,
            }
            t_last = now
            window.append(metrics)
            if on_step is not None:
                on_step(step, metrics)
            bar.update(task, completed=step, loss=last_loss, lr=metrics["lr"])
            if step % cfg.log_every == 0 or step == total:
                mean = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                mean["lr"] = metrics["lr"]
                logger.log(
                    {
                        "step": step,
                        "epoch": epoch,
                        "split": "train",
                        **mean,
                        "product": "+".join(dict.fromkeys(products)),
                        "inputs": "+".join(combo),
                    }
                )
                window = []
            out_of_time = cfg.max_minutes is not None and (now - started) / 60 >= cfg.max_minutes
            if val_ds is not None and cfg.val_every and step % cfg.val_every == 0:
                _validate(model, prompter, val_ds, cfg, device, logger, step, epoch)
            if step % cfg.checkpoint_every == 0 or step == total or out_of_time:
                summary["checkpoint"] = str(checkpoint(step, epoch))
            if out_of_time:
                summary["stopped_early"] = f"max_minutes={cfg.max_minutes} reached"
                break
    if val_ds is not None:
        summary["val"] = _validate(model, prompter, val_ds, cfg, device, logger, step, epoch)
    if "checkpoint" not in summary and last.is_file():
        summary["checkpoint"] = str(last)
    logger.close()
    summary.update(step=step, last_loss=last_loss, minutes=(time.monotonic() - started) / 60)
    return summary


def _validate(
    model: LandSegmenter,
    prompter: TextPrompter,
    val_ds: LASDataset,
    cfg: TrainConfig,
    device: torch.device,
    logger: _Logger,
    step: int,
    epoch: int,
) -> dict[str, float]:
    scores = quick_miou(model, prompter, val_ds, cfg.default_eval_inputs, device)
    for product, value in scores.items():
        logger.log(
            {
                "step": step,
                "epoch": epoch,
                "split": "val",
                "product": product,
                "inputs": "+".join(cfg.default_eval_inputs),
                "miou": value,
            }
        )
    return scores
