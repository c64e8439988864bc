"""``las build RECIPE``: build the planned samples into Zarr v3 shards and an index."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from las_builder.recipe import Recipe, RecipeError

__all__ = ["build"]

log = logging.getLogger("las_builder.build")


def _fail(message: str) -> typer.Exit:
    from las_builder.security import redact

    # The last guard: a message naming a URL may carry ?token= or user:password@.
    typer.secho(f"error: {redact(message)}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


_UNSET_ENV = re.compile(r"environment variable ([A-Za-z_][A-Za-z0-9_]*) is not set")


def _recipe_for_status(recipe: Path, overrides: list[str], err: RecipeError) -> Recipe | None:
    """The recipe for ``--status`` despite unset environment variables it does not need.

    ``--status`` reads only ``output.path``: a variable used elsewhere (``${LAS_STAC_URL}``,
    unset in a new shell) stands in as a placeholder URL. ``None`` when another problem remains
    or ``output.path`` itself needs one, so the original error is shown.
    """
    from las_builder.recipe import RecipeError, load_recipe

    names = []
    for key, message in err.problems:
        match = _UNSET_ENV.search(message)
        if match is None or key == "output" or key.startswith("output."):
            return None
        names.append(match.group(1))
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "http://unset.invalid"))
    try:
        return load_recipe(recipe, overrides)
    except RecipeError:
        return None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def build(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML file (plan it first).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe value, e.g. --set output.path=out/x."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Worker processes (a dask.distributed LocalCluster of N workers, two shard "
            "tasks each). Default: one per core where there are two or more; 0: threads in "
            "this process.",
        ),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Join an existing dask.distributed scheduler (tcp://...).")
    ] = None,
    read_threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="Samples each shard task builds at a time against remote storage: their "
            "reads overlap (network latency); a sample's band files are read together anyway. "
            "More against slow storage. Where a worker finds its storage answering at once "
            "it builds one at a time.",
        ),
    ] = 2,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Also rebuild finished shards that hold failed samples (after an outage).",
        ),
    ] = False,
    status: Annotated[
        bool, typer.Option("--status", help="Show done/remaining/skipped and exit.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Build LAS: search, read, reproject and harmonise every planned sample, shard by shard."""
    from las_builder._paths import require_catalog

    try:  # first: the modules below read the catalog when imported
        require_catalog("sensors", "taxonomy", "labels")
    except FileNotFoundError as err:  # LAS_CATALOG names no folder, or not a catalog
        raise _fail(str(err)) from None

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from las_builder.build.config import config_from_recipe
    from las_builder.build.run import (
        StatusError,
        build_status,
        finished_shards,
        plan_shards,
        reopen_failed_shards,
        run_build,
    )
    from las_builder.build.store import build_lock
    from las_builder.recipe import RecipeError, load_recipe

    try:
        spec = load_recipe(recipe, set_ or [])
    except RecipeError as err:
        lenient = _recipe_for_status(recipe, set_ or [], err) if status else None
        if lenient is None:
            raise _fail(str(err)) from None
        spec = lenient
    output = spec.output.path.rstrip("/") or "/"  # as the build names it (no `//las.zarr`)
    # Paths and skip reasons are text, not Rich markup (a `[/x]` in one would stop the
    # command at its summary), and a summary line is not wrapped at 80 columns in a log.
    console = Console(stderr=True, quiet=quiet, soft_wrap=True, markup=False, highlight=False)
    try:
        shards = plan_shards(output)
    except FileNotFoundError as err:
        raise _fail(str(err)) from None
    if status:
        try:
            counts = build_status(output, shards, check_plan=True)
        except StatusError as err:
            raise _fail(str(err)) from None
        typer.echo(json.dumps(counts, indent=1))
        return
    cfg = dataclasses.replace(config_from_recipe(spec), read_threads=read_threads)
    started = time.monotonic()
    done = {"samples": 0, "skipped": 0, "failed": 0}
    with (
        contextlib.ExitStack() as stack,
        Progress(
            TextColumn("[bold]build[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "{task.fields[rate]:.2f} samples/s  "
                "skipped {task.fields[skipped]}  failed {task.fields[failed]}"
            ),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
        ) as bar,
    ):
        task = bar.add_task(spec.name, total=len(shards), rate=0.0, skipped=0, failed=0)
        try:  # before anything in the output is changed (--retry-failed deletes parts)
            stack.enter_context(build_lock(output))
        except ValueError as err:
            raise _fail(str(err)) from None
        try:  # an unreadable part: name it rather than a traceback
            if retry_failed:  # first, so the bar counts their samples as still to do
                reopen_failed_shards(output, finished_shards(output))
            already = build_status(output, shards)
        except StatusError as err:
            raise _fail(str(err)) from None
        bar.advance(task, already["ok"] + already["skipped"] + already["failed"])

        def on_shard(shard: int, rows: list[dict[str, Any]]) -> None:
            log.info(
                "shard %d done",
                shard,
                extra={
                    "event": "shard_done",
                    "shard": shard,
                    "ok": sum(r["status"] == "ok" for r in rows),
                    "skipped": sum(r["status"] == "skipped" for r in rows),
                    "failed": sum(r["status"] == "failed" for r in rows),
                },
            )
            done["samples"] += len(rows)
            done["skipped"] += sum(r["status"] == "skipped" for r in rows)
            done["failed"] += sum(r["status"] == "failed" for r in rows)
            rate = done["samples"] / max(time.monotonic() - started, 1e-6)
            bar.update(
                task, advance=len(rows), rate=rate, skipped=done["skipped"], failed=done["failed"]
            )

        try:
            summary = run_build(
                cfg,
                output,
                spec.output.samples_per_shard,
                workers="auto" if workers is None else workers,
                scheduler=scheduler,
                on_shard=on_shard,
                attrs={"recipe": spec.name},
            )
        except ValueError as err:
            raise _fail(str(err)) from None
        except KeyboardInterrupt:
            # Finished shards are complete (a shard's index part is written last), the others
            # absent or rebuilt: the same command goes on from there.
            bar.stop()
            typer.secho(
                f"interrupted: finished shards are kept ({done['samples']} samples built by "
                "this run); run the same command again to build the rest (`las build --status` "
                "shows what is left)",
                err=True,
                fg=typer.colors.YELLOW,
            )
            raise typer.Exit(code=130) from None
    log.info(
        "build finished",
        extra={
            "event": "build_done",
            "output": output,
            **summary,
            "seconds": time.monotonic() - started,
        },
    )
    console.print(
        f"built {summary.get('ok', 0)} of {summary['samples']} samples "
        f"({summary.get('skipped', 0)} skipped, {summary.get('failed', 0)} failed) "
        f"in {time.monotonic() - started:.1f} s -> {output}/las.zarr, {output}/index.parquet"
    )
    for reason, n in summary["reasons"].items():
        console.print(f"  {n} x {reason}")
    memory = summary["memory"]
    workers_peak = memory["worker_peak_rss_mib"]
    console.print(
        f"peak memory: {memory['driver_peak_rss_mib']:.0f} MiB in this process"
        + (
            f", {max(workers_peak):.0f} MiB in the largest of {len(workers_peak)} workers"
            if workers_peak
            else ""
        )
    )
    if summary.get("read_threads"):
        sizes = ", ".join(f"{io} + {source}" for io, source in summary["read_threads"])
        console.print(f"read threads (I/O + source) per process, as the storage set them: {sizes}")
