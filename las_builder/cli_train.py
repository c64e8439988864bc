"""``las train``, ``las eval`` and ``las predict``: LandSegmenter on LAS.

The lead registers them in ``las_builder/cli.py``::

    from las_builder.cli_train import eval_, predict, train
    app.command("train")(train)
    app.command("eval")(eval_)
    app.command("predict")(predict)
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["eval_", "predict", "train"]

DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps."


def _fail(message: str) -> typer.Exit:
    from las_builder.security import redact

    # The last guard: a raster URL or dataset path may carry ?token= or user:password@.
    typer.secho(f"error: {redact(message)}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _reason(err: Exception) -> str:
    """An error's message on one line (a KeyError's str() adds quotes around it)."""
    return _one_line(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))


def _split_list(text: str | None, option: str) -> list[str] | None:
    """The names of a comma-separated option (``None``: not given).

    Raises:
        typer.Exit: The option names nothing (``","``) or a name twice: its default, or one
            class map with two classes of one name, would be a silently wrong answer.

    """
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise _fail(f"{option} {text!r} names nothing: give comma-separated names")
    twice = sorted({t for t in items if items.count(t) > 1})
    if twice:
        raise _fail(f"{option} names {', '.join(twice)} more than once: give each name once")
    return items


def _interrupted(err: BaseException | None) -> bool:
    """Whether ``err`` is a KeyboardInterrupt or was raised while handling one."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _os_reason(err: OSError) -> str:
    """An OS error as ``reason: file``."""
    return f"{err.strerror}: {err.filename}" if err.strerror and err.filename else str(err)


def _check_out(out: Path, option: str) -> None:
    """Fail now, not after the minutes of work, where ``out`` cannot be a file.

    Raises:
        typer.Exit: ``out`` is a folder, or one of its folders is a file.

    """
    if out.is_dir():
        raise _fail(f"{option} {out} is a folder: give a file path")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise _fail(f"{option} {out}: {parent} is a file, not a folder")
            break


def train(
    config: Annotated[Path, typer.Argument(help="Training config YAML (configs/train-*.yaml).")],
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT_DIR/checkpoints/last.pt.")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value, e.g. --set optim.steps=100."),
    ] = None,
    device: Annotated[str | None, typer.Option(help=DEVICE_HELP)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train LandSegmenter on a LAS dataset's weak labels (checkpoints, CSV, TensorBoard)."""
    from las_builder.model.config import TrainConfigError, load_train_config
    from las_builder.model.train import train as run_train

    overrides = list(set_ or [])
    if device:
        overrides.append(f"device={device}")
    if config.is_dir():
        raise _fail(f"training config {config} is a folder: give its YAML file")
    try:
        cfg = load_train_config(config, overrides)
    except TrainConfigError as err:
        raise _fail(str(err)) from None
    except UnicodeDecodeError as err:  # a binary or UTF-16 file
        raise _fail(
            f"{config}: is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
            f"{err.start}): save it as UTF-8"
        ) from None
    except OSError as err:  # no permission, a FIFO that cannot be read ...
        raise _fail(f"{config}: cannot be read: {err.strerror or err}") from None
    try:
        summary = run_train(cfg, resume=resume, progress=not quiet)
    except BaseException as err:
        # Ctrl-C while a checkpoint is written surfaces as torch's RuntimeError about the
        # unfinished file, the KeyboardInterrupt only its context.
        if not _interrupted(err):
            if isinstance(err, FileNotFoundError | KeyError | ValueError):
                raise _fail(_reason(err)) from None
            raise
        # Checkpoints are written whole (a rename), so the last one is good to go on from.
        typer.secho(
            f"interrupted: the checkpoints written so far are kept in {cfg.out_dir}/checkpoints; "
            f"continue with `las train {config} --resume` (same --set options)",
            err=True,
            fg=typer.colors.YELLOW,
        )
        raise typer.Exit(code=130) from None
    if summary.get("sam2"):
        report = summary["sam2"]
        out = Path(cfg.out_dir) / "sam2_load.json"
        out.write_text(json.dumps(report, indent=1))
        typer.echo(
            f"SAM2 weights: {len(report['loaded'])} tensors loaded, "
            f"{len(report['shape_mismatch'])} shape mismatches, "
            f"{len(report['unused'])} unused, {len(report['not_in_checkpoint'])} new ({out})"
        )
    val = summary.get("val") or {}
    scores = "  ".join(f"{p} {v:.3f}" for p, v in val.items())
    loss = summary["last_loss"]
    done = (
        f"loss {loss:.3f}" if loss == loss else "nothing left to train (raise optim.steps)"
    )  # NaN: no step ran
    typer.echo(
        f"trained {cfg.name} to step {summary['step']} in {summary['minutes']:.1f} min; "
        f"{done}; checkpoint {summary.get('checkpoint')}"
        + (f"\nval mIoU: {scores}" if scores else "")
    )


def eval_(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint .pt or training run folder.")],
    dataset: Annotated[str, typer.Argument(help="LAS dataset folder or URL.")],
    truth: Annotated[
        str | None,
        typer.Option(
            help="Offline world folder, its serve.json or STAC API URL: also score "
            "against the truth."
        ),
    ] = None,
    products: Annotated[
        str | None, typer.Option(help="Comma-separated label products (default: trained ones).")
    ] = None,
    split: Annotated[str, typer.Option(help="val (held-out), train or all.")] = "val",
    inputs: Annotated[
        str | None, typer.Option(help="Comma-separated modalities, e.g. sentinel-2,sentinel-1.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="metrics.json path (default: beside the checkpoint).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per forward pass.")] = 8,
    fusion_gamma: Annotated[
        float, typer.Option(min=0, help="Gamma of the confidence fusion.")
    ] = 1.0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Score a checkpoint: mIoU and per-class IoU per product (LAS classes), and vs the truth."""
    from las_builder.model.evaluate import evaluate

    if split not in ("val", "train", "all"):
        raise _fail(f"--split must be val, train or all, got {split!r}")
    if out is None:
        base = checkpoint if checkpoint.is_dir() else checkpoint.parent
        if base.name == "checkpoints":
            base = base.parent
        out = base / "metrics.json"
    _check_out(out, "--out")
    try:
        metrics = evaluate(
            checkpoint,
            dataset,
            products=_split_list(products, "--products"),
            truth=truth,
            split=split,
            inputs=_split_list(inputs, "--inputs"),
            batch_size=batch_size,
            device=device,
            fusion_gamma=fusion_gamma,
            out=out,
            progress=not quiet,
        )
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise _fail(_reason(err)) from None
    except OSError as err:  # unreadable input, or metrics.json: read-only folder, disk full
        raise _fail(f"{_os_reason(err)} (output: {out}): check the files and --out") from None
    _print_scores(metrics)
    typer.echo(f"metrics written to {out}")


def _print_scores(metrics: dict[str, Any]) -> None:
    """Print each comparison's mIoU, then the IoU per class, a row per class.

    Classes as rows keep the table readable at 80 columns, however many classes there are.
    """
    from rich.console import Console
    from rich.table import Table

    scored: list[tuple[str, str, dict[str, Any]]] = []
    for product, report in metrics["products"].items():
        scored.append((product, "model", report))
        scored.append((product, "model+fusion", metrics["products_fused"][product]))
    if "truth" in metrics:
        truth = metrics["truth"]
        scored.append(("truth", "model", truth["model"]))
        scored.append(("truth", "model+fusion", truth["model_fused"]))
        scored.extend(("truth", f"label {p}", report) for p, report in truth["labels"].items())
    console = Console(markup=False)  # product and class names are text, not markup
    summary = Table(
        title=f"{metrics['split']} split, {metrics['samples']} samples, "
        f"inputs {'+'.join(metrics['inputs'])}"
    )
    summary.add_column("#", justify="right")
    summary.add_column("reference")
    summary.add_column("prediction")
    summary.add_column("mIoU", justify="right")
    for i, (reference, prediction, report) in enumerate(scored, start=1):
        summary.add_row(str(i), reference, prediction, f"{report['miou']:.3f}")
    console.print(summary)
    per_class = Table(title="IoU per class (columns: # above)")
    per_class.add_column("class")
    for i in range(1, len(scored) + 1):
        per_class.add_column(str(i), justify="right")
    for name in metrics["classes"]:
        cells = [
            f"{r['per_class_iou'][name]:.2f}" if name in r["per_class_iou"] else "-"
            for _ref, _pred, r in scored
        ]
        per_class.add_row(name, *cells)
    console.print(per_class)


def predict(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint .pt or training run folder.")],
    source: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="DATASET:SAMPLE_ID, or a raster: a file or a URL (https://, s3://, ...).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output GeoTIFF.")] = Path("pred.tif"),
    classes: Annotated[
        str | None,
        typer.Option(
            help='Comma-separated class names, any (zero-shot): "water,trees,...". '
            "Default: the LAS classes."
        ),
    ] = None,
    scores: Annotated[
        bool, typer.Option("--scores", help="Add one score band per class (percent).")
    ] = False,
    wavelengths: Annotated[
        str | None,
        typer.Option(
            help="Raster bands: wavelengths in um or names, e.g. B02,B03,B04,B08 or "
            "0.49,0.56,0.665 or vv,vh (default: from band descriptions)."
        ),
    ] = None,
    scale: Annotated[
        float | None,
        typer.Option(
            help="Divide optical raster values by this (default 10000 for 16-bit, "
            "255 for 8-bit, 1 for float)."
        ),
    ] = None,
    sar_units: Annotated[str, typer.Option(help="SAR raster bands: linear or db.")] = "linear",
    inputs: Annotated[
        str | None, typer.Option(help="Modalities of a dataset sample, e.g. sentinel-2.")
    ] = None,
    fusion: Annotated[
        bool, typer.Option("--fusion", help="Class-wise confidence-guided fusion with the prior.")
    ] = False,
    tile: Annotated[
        int,
        typer.Option(
            min=1,
            help="Tile size in pixels: a raster is predicted and written tile by tile (memory "
            "follows the tile, not the raster).",
        ),
    ] = 1024,
    halo: Annotated[
        int,
        typer.Option(
            min=0,
            help="Pixels of context predicted around each tile (only the tile's own are "
            "written): fewer seams at tile edges.",
        ),
    ] = 64,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Predict a class-index GeoTIFF (plus optional score bands) with any list of class names."""
    from las_builder.model.evaluate import predict as run_predict

    if sar_units not in ("linear", "db"):
        raise _fail(f"--sar-units must be linear or db, got {sar_units!r}")
    _check_out(out, "--out")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            result = run_predict(
                checkpoint,
                source,
                out,
                classes=_split_list(classes, "--classes"),
                scores=scores,
                wavelengths=wavelengths,
                scale=scale,
                sar_units=sar_units,
                inputs=_split_list(inputs, "--inputs"),
                use_fusion=fusion,
                tile=tile,
                halo=halo,
                device=device,
                progress=not quiet,
            )
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise _fail(_reason(err)) from None
    except OSError as err:  # unreadable input, or the GeoTIFF: read-only folder, disk full
        raise _fail(f"{_os_reason(err)} (output: {out}): check the files and --out") from None
    # e.g. an input without a CRS: said once, on one line, not as Python's file:line report
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    for message in dict.fromkeys(said):
        typer.secho(f"warning: {_one_line(message)}", err=True, fg=typer.colors.YELLOW)
    share = ", ".join(f"{n} {v:.0%}" for n, v in result["share"].items() if v > 0)
    share = share or "no pixel with data (the input is nodata everywhere), all 255"
    typer.echo(f"wrote {result['out']} ({result['shape'][0]}x{result['shape'][1]}): {share}")
