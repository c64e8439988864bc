"""``las stats DATASET``: class frequencies and product agreement of a built dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from las_builder.security import redact

__all__ = ["stats"]


def stats(
    dataset: Annotated[
        Path,
        typer.Argument(help="The output folder of `las build` (las.zarr and index.parquet)."),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default: DATASET/stats)."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the files written.")
    ] = False,
) -> None:
    """Class frequencies per product and the confusion matrix of every pair of products.

    Counts only samples with status ok, in LAS codes; nodata (0) and ignore (255) are counted
    apart and left out of the confusion matrices. Writes stats.json, class_frequencies.png and
    confusion_<a>__<b>.png into DATASET/stats (or --out). During a build (no index.parquet
    yet) it counts the finished shards.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from las_builder.stats import CONSENSUS, StatsError, compute_stats, write_stats

    try:
        result = compute_stats(dataset)
        written = write_stats(result, dataset, out)
    except StatsError as err:
        typer.secho(f"error: {redact(str(err))}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    # Product and class names are text, not Rich markup (`[/x]` stopped the command).
    console = Console(soft_wrap=True, quiet=quiet, markup=False)
    if result.partial is not None:
        typer.secho(_partial_note(result.partial), err=True, fg=typer.colors.YELLOW)
    for layer in result.counts:
        unknown = result.unknown(layer)
        if unknown:
            typer.secho(
                f"{layer}: {sum(unknown.values())} pixels hold values of no LAS class "
                f"{sorted(unknown)}, left out of the frequencies and matrices (the store is "
                "damaged or of another taxonomy)",
                err=True,
                fg=typer.colors.YELLOW,
            )

    layers = list(result.counts)
    table = Table(
        title=f"LAS class frequencies, % of classified pixels ({result.samples_ok} of "
        f"{result.samples_total} samples ok)"
    )
    table.add_column("code", justify="right")
    table.add_column("class")
    for layer in layers:
        table.add_column(Text(layer, style="italic" if layer == CONSENSUS else ""), justify="right")
    frequencies = {layer: result.frequencies(layer) for layer in layers}
    # "-" where a layer classifies no pixel (no ok sample): 0.0 would claim a share of nothing
    empty = {layer: not result.classified(layer) for layer in layers}
    for c in result.classes:
        table.add_row(
            str(c.code),
            c.name,
            *(
                "-" if empty[layer] else f"{100 * frequencies[layer][c.code]:.1f}"
                for layer in layers
            ),
        )
    table.add_section()
    for label, value in (("nodata", 0), ("ignore", 255)):
        shares = []
        for layer in layers:
            total = int(result.counts[layer].sum())
            share = f"{100 * int(result.counts[layer][value]) / total:.1f}*" if total else "-"
            shares.append(share)
        table.add_row(str(value), label, *shares)
    console.print(table)
    console.print("* nodata and ignore: % of all pixels", style="dim")
    if not result.samples_ok:
        console.print(f"no ok sample among {result.samples_total}: nothing to count")

    for (a, b), matrix in result.confusion.items():
        agreement = result.agreement(a, b)
        text = "n/a" if agreement is None else f"{100 * agreement:.1f}%"
        cm = Table(
            title=f"{a} (rows) vs {b} (columns): % of each row, agreement {text}",
            box=box.SIMPLE_HEAD,
            padding=(0, 1),
            pad_edge=False,
        )
        cm.add_column("LAS")
        for c in result.classes:
            cm.add_column(str(c.code), justify="right")
        cm.add_column("pixels", justify="right")
        for i, c in enumerate(result.classes):
            total = int(matrix[i].sum())
            if not total:
                continue
            cells = [f"{100 * v / total:.0f}" if v else "." for v in matrix[i]]
            cm.add_row(str(c.code), *cells, str(total))
        console.print(cm)
    if result.confusion:
        legend = ", ".join(f"{c.code} {c.key}" for c in result.classes)
        console.print(f"LAS codes: {legend}", style="dim")
    for path in written:
        typer.echo(f"wrote {path}")


def _partial_note(partial: dict[str, int | None]) -> str:
    """The warning for statistics of an unfinished build."""
    planned = partial.get("shards_planned")
    of = f" of {planned}" if planned else ""
    return (
        f"partial build: no index.parquet yet, counting the {partial['shards_done']}{of} "
        "finished shards (`las build` is running or was stopped; run it to finish)"
    )
