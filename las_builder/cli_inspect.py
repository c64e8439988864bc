"""``las inspect DATASET``: quicklooks, maps, histograms and an offline HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from las_builder.security import redact

__all__ = ["inspect"]


def inspect(
    dataset: Annotated[
        Path,
        typer.Argument(help="The output folder of `las build` (las.zarr and index.parquet)."),
    ],
    samples: Annotated[
        int, typer.Option("--samples", "-n", min=0, help="How many ok samples to show.")
    ] = 12,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default: DATASET/inspect)."),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No progress bar or summary; print the report path."),
    ] = False,
) -> None:
    """Render quicklooks, a sample map, class histograms and confusion matrices into report.html.

    Quicklooks of N ok samples: Sentinel-2 true colour, Sentinel-1 false colour (VV, VH, VV/VH
    in dB), NAIP where present, each label product's native map in its own legend colours and
    its LAS map, and the consensus. The report opens offline (relative PNG links, no scripts).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from las_builder.inspect import InspectError, inspect_dataset, notes

    # Paths, product names and skip reasons are text: as Rich markup, `[/x]` in a folder name
    # stopped the command after the report was written, and `[red]` vanished from the output.
    console = Console(stderr=True, quiet=quiet, markup=False)
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
            # Not a terminal (CI logs, a pipe): a transient bar shows nothing but a blank line.
            disable=quiet or not console.is_terminal,
        ) as progress:
            result = inspect_dataset(dataset, out, samples=samples, progress=progress)
    except InspectError as err:
        typer.secho(f"error: {redact(str(err))}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    summary = result.summary
    for note in notes(summary):
        typer.secho(note, err=True, fg=typer.colors.YELLOW)
    planned = (summary.get("partial") or {}).get("samples_planned")
    of = f" of {planned} planned" if planned else ""
    table = Table(title=f"{dataset}: {summary['samples']}{of} samples")
    for column in ("ok", "skipped", "failed"):
        table.add_column(column, justify="right")
    table.add_row(str(summary["ok"]), str(summary["skipped"]), str(summary["failed"]))
    console.print(table)
    for reason in summary["reasons"]:
        console.print(f"  {reason['samples']:>5}  {reason['status']}: {reason['reason']}")
    agreement = Table(title="agreement with the consensus (ok samples)")
    agreement.add_column("product")
    agreement.add_column("classified %", justify="right")
    agreement.add_column("agreement", justify="right")
    for p in summary["products"]:
        classified = p["classified_pct"]
        agree = p["agreement_with_consensus"]
        agreement.add_row(
            p["product"],
            "-" if classified is None else f"{classified:.1f}",
            "-" if agree is None else f"{agree:.3f}",
        )
    console.print(agreement)
    typer.echo(str(result.report))
