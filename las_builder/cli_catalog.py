"""``las catalog``: check the taxonomy, the label legends and the mappings between them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from las_builder.security import redact

catalog_app = typer.Typer(
    no_args_is_help=True, help="Check and extend the catalog of plain YAML data."
)


@catalog_app.callback()
def _catalog() -> None:
    """Check and extend the catalog: LAS taxonomy, label product legends and their mappings."""


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
    from las_builder._paths import catalog_dir
    from las_builder.catalog import (
        WARNING,
        CatalogError,
        check_catalog,
        label_product_ids,
        load_mapping,
    )

    try:
        catalog_dir()
    except FileNotFoundError as err:  # LAS_CATALOG names no folder
        typer.secho(f"error: {redact(str(err))}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    console = Console(soft_wrap=True)
    table = Table(title="LAS catalog: label products mapped onto the LAS taxonomy")
    table.add_column("product")
    table.add_column("codes", justify="right")
    table.add_column("mapped", justify="right")
    table.add_column("ignored", justify="right")
    table.add_column("unmapped", justify="right")
    table.add_column("review", justify="right")
    table.add_column("status")
    for product_id in label_product_ids():
        try:
            mapping = load_mapping(product_id)
        except CatalogError:
            table.add_row(escape(product_id), "-", "-", "-", "-", "-", "[red]invalid[/red]")
            continue
        unmapped = mapping.unmapped
        if unmapped:
            state = "[red]incomplete[/red]"
        elif mapping.to_review:
            state = "[yellow]to review[/yellow]"
        else:
            state = "[green]ok[/green]"
        table.add_row(
            escape(product_id),  # a file name, not markup: `[/x].yaml` would stop the command
            str(len(mapping.product.codes)),
            str(len(mapping.mapped)),
            str(len(mapping.ignored)),
            str(len(unmapped)),
            str(len(mapping.to_review)),
            state,
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


@catalog_app.command("add")
def add(
    collection: Annotated[
        str,
        typer.Argument(
            metavar="COLLECTION_URL_OR_FILE",
            help="A STAC collection: a local JSON file or an http(s) URL.",
        ),
    ],
    product_id: Annotated[
        str | None,
        typer.Option("--product-id", help="Product id (file name); defaults to the collection id."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Catalog folder to write labels/ and taxonomy/mappings/ into "
            "[default: the project's catalog/].",
        ),
    ] = None,
    asset: Annotated[
        str | None,
        typer.Option(
            "--asset", help="Asset whose legend to use [default: the data asset with a legend]."
        ),
    ] = None,
    threshold: Annotated[
        float,
        typer.Option(
            min=-1.0,
            max=1.0,
            help="Below this cosine similarity (-1 to 1) a class is suggested as ignore.",
        ),
    ] = 0.35,
    suggest: Annotated[
        bool,
        typer.Option(
            "--suggest/--no-suggest",
            help="Suggest LAS targets with the all-MiniLM-L6-v2 text encoder; without it every "
            "rule is ignore, to review.",
        ),
    ] = True,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Draft a new label product from a STAC collection, with a suggested mapping onto LAS.

    Copies the legend of the collection's label asset (classification:classes or file:values
    in item_assets) into labels/<id>.yaml, and suggests taxonomy/mappings/<id>.yaml by text
    similarity between class names+descriptions and the LAS definitions. Every rule is marked
    `review: true`; review them (and the TODO lines of the label file), then run
    `las catalog check`.
    """
    from las_builder.catalog.suggest import (
        AddError,
        Encoder,
        EncoderUnavailable,
        add_product,
        load_encoder,
    )

    console = Console(soft_wrap=True)
    loaded: list[Encoder] = []

    def encoder(texts: Sequence[str]) -> Any:
        # Loaded (and said so) once the collection's legend is read and valid.
        if not loaded:
            console.print("loading the all-MiniLM-L6-v2 text encoder ...", style="dim")
            loaded.append(load_encoder())
        return loaded[0](texts)

    try:
        result = add_product(
            collection,
            out=out,
            product_id=product_id,
            asset=asset,
            threshold=threshold,
            suggest=suggest,
            force=force,
            encoder=encoder,
        )
    except (AddError, EncoderUnavailable) as err:
        typer.secho(f"error: {redact(str(err))}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None

    product = result.product
    table = Table(title=f"{escape(product.id)}: suggested mapping onto LAS (every rule to review)")
    table.add_column("code", justify="right")
    table.add_column("native class")
    table.add_column("suggested")
    table.add_column("similarity", justify="right")
    table.add_column("runner-up")
    by_code = {s.code: s for s in result.suggestions}
    for code in product.codes:
        s = by_code.get(code)
        name = escape(product.class_by_value(code).name)
        if s is None:
            table.add_row(str(code), name, "ignore", "-", "-")
            continue
        target = s.target if s.target != "ignore" else "[yellow]ignore[/yellow]"
        runner = "-"
        if s.alternative is not None and s.alternative_similarity is not None:
            runner = f"{s.alternative} ({s.alternative_similarity:.2f})"
        similarity = f"{s.similarity:.2f}" if s.similarity is not None else "-"
        table.add_row(str(code), name, target, similarity, runner)
    console.print(table)
    # Asset keys come from the collection and paths from the user: text, not Rich markup
    # (`[/x]` raised a MarkupError after the files were written).
    console.print(f"asset: {escape(result.asset)}", highlight=False)
    if result.other_assets:
        others = escape(", ".join(result.other_assets))
        console.print(f"other assets with a legend (--asset): {others}", highlight=False)
    label = escape(str(result.label_path))
    console.print(f"wrote {label} ({result.todos} TODO line(s))", highlight=False)
    console.print(f"wrote {escape(str(result.mapping_path))}", highlight=False)
    console.print(
        "next: review both files (docs/adding-a-source.md), then run `las catalog check`",
        highlight=False,
    )
