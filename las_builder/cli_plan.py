"""``las plan RECIPE``: choose where every sample of a dataset lies and write ``plan.parquet``.

The lead registers :func:`plan` on the ``las`` app (``app.command("plan")(plan)``).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["plan"]


def _fail(message: str) -> typer.Exit:
    """Print ``error: message`` in red on stderr and return the exit to raise (code 2)."""
    from las_builder.security import redact

    # The last guard: a message naming a URL may carry ?token= or user:password@.
    typer.secho(f"error: {redact(message)}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _class_names(collection: str) -> dict[int, str]:
    """Legend names of a label product whose id is ``collection`` (empty when none is)."""
    from las_builder.catalog import CatalogError, label_product_ids, load_label_product

    if collection not in label_product_ids():
        return {}
    try:
        return {c.value: c.name for c in load_label_product(collection).classes}
    except CatalogError:
        return {}


def _built_digest(output: str) -> str | None:
    """The plan digest kept by ``OUTPUT/las.zarr`` (``None``: no store, or none kept).

    Raises:
        PlanError: The store cannot be read (damaged metadata, no access).

    """
    from las_builder.build.store import stored_plan_digest
    from las_builder.plan import PlanError

    try:
        return stored_plan_digest(output)
    except Exception as err:  # damaged metadata raises JSON, zarr or type errors alike
        raise PlanError(
            f"{output.rstrip('/')}/las.zarr cannot be read ({type(err).__name__}: "
            f"{err}), so whether it was built from this plan is unknown; the plan was not "
            "written: delete the output or choose another output.path"
        ) from None


def plan(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML file.")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a recipe value, e.g. --set sample.count=64 (repeatable; YAML value).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress line or table.")
    ] = False,
) -> None:
    """Plan the samples of a recipe and write OUTPUT/plan.parquet."""
    from las_builder._paths import require_catalog

    try:  # first: the modules below read the catalog when imported
        require_catalog("sensors", "taxonomy", "labels")
    except FileNotFoundError as err:  # LAS_CATALOG names no folder, or not a catalog
        raise _fail(str(err)) from None

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from las_builder.build.store import plan_digest
    from las_builder.plan import (
        PlanError,
        make_plan,
        plan_path,
        prepare_plan_target,
        write_plan,
    )
    from las_builder.recipe import RecipeError, load_recipe

    try:
        spec = load_recipe(recipe, set_ or [])
    except RecipeError as err:
        raise _fail(str(err)) from None

    # The plan's shortfall warning is printed below; keep the logger's copy off the terminal
    # unless the application configured logging itself.
    logger = logging.getLogger("las_builder.plan")
    if not logger.handlers and not logging.getLogger().handlers:
        logger.addHandler(logging.NullHandler())
    # Legend names and progress messages are text, not Rich markup: a class named
    # `Tree cover [closed]` lost its `[closed]`, and `[/x]` stopped the command.
    console = Console(stderr=True, quiet=quiet, markup=False)
    try:
        prepare_plan_target(plan_path(spec))  # before the planning's minutes, not after
        _built_digest(spec.output.path)  # likewise: a damaged store fails now
        with console.status(Text(f"planning {spec.name}")) as status:
            gdf = make_plan(
                spec, progress=lambda msg: status.update(Text(f"planning {spec.name}: {msg}"))
            )
            built = _built_digest(spec.output.path)  # again: a build may have begun meanwhile
            if built is not None and built != plan_digest(gdf["sample_id"].astype(str)):
                raise PlanError(
                    f"{spec.output.path.rstrip('/')}/las.zarr was built from another plan (this "
                    "recipe's samples differ); the plan was not written, so the store keeps its "
                    "own: delete the output or choose another output.path"
                )
            status.update(Text(f"planning {spec.name}: writing the plan"))
            path = write_plan(gdf, plan_path(spec))
    except PlanError as err:
        raise _fail(str(err)) from None
    except (OSError, ImportError, ValueError) as err:  # fsspec: no such folder, no s3fs, ...
        raise _fail(f"cannot write the plan to {plan_path(spec)}: {err}") from None

    note = gdf.attrs.get("plan_note")
    if note:
        typer.secho(f"warning: {note}", err=True, fg=typer.colors.YELLOW)

    counts = Counter(int(v) for v in gdf["stratum"].dropna())
    if counts and not quiet:
        stratify = spec.sampling.stratify
        names = _class_names(stratify.collection) if stratify is not None else {}
        candidates = {int(k): v for k, v in gdf.attrs.get("candidates_per_stratum", {}).items()}
        table = Table(title=f"strata ({stratify.collection if stratify else ''})")
        table.add_column("class", justify="right")
        table.add_column("name")
        table.add_column("samples", justify="right")
        table.add_column("candidates", justify="right")
        for value in sorted(counts):
            table.add_row(
                str(value),
                names.get(value, ""),
                str(counts[value]),
                str(candidates.get(value, "")),
            )
        Console(markup=False).print(table)
    strata = f", {len(counts)} strata" if counts else ""
    shards = int(gdf["shard"].max()) + 1 if len(gdf) else 0
    typer.echo(f"planned {len(gdf)} samples ({shards} shards{strata}) -> {path}")
