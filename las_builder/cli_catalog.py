"""``las catalog``: check the taxonomy, the label legends and the mappings between them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

catalog_app = typer.Typer(no_args_is_help=True, help="Check the catalog of plain YAML data.")


@catalog_app.callback()
def _catalog() -> None:
    """Check the catalog: LAS taxonomy, label product legends and their mappings."""


@catalog_app.command("check")
def check(
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 on warnings too (unused LAS classes).")
    ] = False,
) -> None:
    """Check that every legend code of every product maps to a LAS class or to ignore.

    Prints one row per label product (legend codes, how many map to a LAS class, to ignore,
    or nowhere) and every problem found; exits 1 on errors (and on warnings with --strict).
    """
    from las_builder.catalog import (
        WARNING,
        CatalogError,
        check_catalog,
        label_product_ids,
        load_mapping,
    )

    console = Console(soft_wrap=True)
    table = Table(title="LAS catalog: label products mapped onto the LAS taxonomy")
    table.add_column("product")
    table.add_column("codes", justify="right")
    table.add_column("mapped", justify="right")
    table.add_column("ignored", justify="right")
    table.add_column("unmapped", justify="right")
    table.add_column("status")
    for product_id in label_product_ids():
        try:
            mapping = load_mapping(product_id)
        except CatalogError:
            table.add_row(product_id, "-", "-", "-", "-", "[red]invalid[/red]")
            continue
        unmapped = mapping.unmapped
        table.add_row(
            product_id,
            str(len(mapping.product.codes)),
            str(len(mapping.mapped)),
            str(len(mapping.ignored)),
            str(len(unmapped)),
            "[red]incomplete[/red]" if unmapped else "[green]ok[/green]",
        )
    console.print(table)

    problems = check_catalog()
    errors = [p for p in problems if not p.startswith(WARNING)]
    warnings = [p for p in problems if p.startswith(WARNING)]
    for line in errors:
        console.print(f"[red]error:[/red] {escape(line)}", highlight=False)
    for line in warnings:
        text = escape(line.removeprefix(WARNING))
        console.print(f"[yellow]warning:[/yellow] {text}", highlight=False)
    if errors or (strict and warnings):
        console.print(f"{len(errors)} error(s), {len(warnings)} warning(s)")
        raise typer.Exit(code=1)
    console.print(f"catalog ok ({len(warnings)} warning(s))")
