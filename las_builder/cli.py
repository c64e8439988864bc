"""The ``las`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Build LAS and train LandSegmenter on it.")
world_app = typer.Typer(no_args_is_help=True, help="Create and serve the offline world.")
app.add_typer(world_app, name="world")


@app.callback()
def _main(
    log_json: Annotated[
        Path | None,
        typer.Option(
            "--log-json",
            help="Also write progress and outcomes as JSON lines to this file (batch runs).",
        ),
    ] = None,
) -> None:
    """Build LAS and train LandSegmenter on it."""
    if log_json is not None:
        from las_builder.logs import log_json_to

        try:  # before the command runs: a batch run that cannot log should not start
            log_json_to(log_json)
        except OSError as err:
            raise CliError(
                f"--log-json {log_json}: cannot write the log ({_os_reason(err)}): give "
                "a file in a folder you can write"
            ) from None


def _os_reason(err: OSError) -> str:
    """An OS error as ``reason: file`` (the file named when it is not the one given)."""
    return f"{err.strerror}: {err.filename}" if err.strerror and err.filename else str(err)


def _register() -> None:
    from las_builder.cli_build import build
    from las_builder.cli_catalog import catalog_app
    from las_builder.cli_inspect import inspect
    from las_builder.cli_plan import plan
    from las_builder.cli_stats import stats
    from las_builder.cli_train import eval_, predict, train

    app.command("plan")(plan)
    app.command("build")(build)
    app.command("stats")(stats)
    app.command("inspect")(inspect)
    app.command("train")(train)
    app.command("eval")(eval_)
    app.command("predict")(predict)
    app.add_typer(catalog_app, name="catalog", help="Check and extend the source catalog.")


_register()


class CliError(typer.Exit):
    """Exit with a one-line message on stderr."""

    def __init__(self, message: str) -> None:
        from las_builder.security import redact

        # The last guard: a message naming a URL may carry ?token= or user:password@.
        typer.secho(f"error: {redact(message)}", err=True, fg=typer.colors.RED)
        super().__init__(code=2)


@world_app.command("create")
def world_create(
    directory: Annotated[Path, typer.Argument(help="Folder to write the world into.")],
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed gives identical files.")
    ] = 0,
    preset: Annotated[
        str,
        typer.Option(
            help="Size preset: tiny (tests, seconds), demo or bench (catalog/world/presets/)."
        ),
    ] = "demo",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Generate a deterministic offline world: truth, imagery, label products and STAC."""
    from las_builder._paths import require_catalog

    try:  # the presets, sensors and legends the world renders
        require_catalog("world", "sensors", "labels")
    except FileNotFoundError as err:
        raise CliError(str(err)) from None
    from las_builder.world.create import create_world

    try:
        manifest = create_world(directory, seed=seed, preset=preset, progress=not quiet)
    except (ValueError, FileExistsError) as err:
        raise CliError(str(err)) from None
    except FileNotFoundError as err:  # LAS_CATALOG names no folder (the presets live there)
        raise CliError(str(err)) from None
    except KeyboardInterrupt:
        # create_world removes what it wrote, so the same command starts again cleanly.
        typer.secho(
            f"interrupted: the unfinished world in {directory} was removed; run the same "
            "command again to create it",
            err=True,
            fg=typer.colors.YELLOW,
        )
        raise typer.Exit(code=130) from None
    typer.echo(f"world written to {directory} ({len(manifest['regions'])} regions)")


@world_app.command("serve")
def world_serve(
    directory: Annotated[Path, typer.Argument(help="A folder made by `las world create`.")],
    server: Annotated[str, typer.Option(help="STAC API server: rustac or pgstac.")] = "rustac",
    detach: Annotated[bool, typer.Option(help="Return once the servers are up.")] = False,
    stac_port: Annotated[int, typer.Option(help="Port of the STAC API; 0 picks a free one.")] = 0,
    assets_port: Annotated[
        int, typer.Option(help="Port of the asset file server; 0 picks a free one.")
    ] = 0,
    latency_ms: Annotated[
        float,
        typer.Option(
            help="Delay each asset answer by this many ms, like remote object storage "
            "(benchmarks); 0: loopback speed."
        ),
    ] = 0.0,
) -> None:
    """Serve a world: a STAC API and a range-request file server on 127.0.0.1."""
    from las_builder.world.serve import ServeError, serve_world

    try:
        serve_world(
            directory,
            server=server,
            detach=detach,
            stac_port=stac_port,
            assets_port=assets_port,
            latency_ms=latency_ms,
        )
    except ServeError as err:
        raise CliError(str(err)) from None


@world_app.command("stop")
def world_stop(
    directory: Annotated[Path, typer.Argument(help="A world folder being served.")],
) -> None:
    """Stop the servers started by `las world serve`."""
    from las_builder.world.serve import ServeError, stop_world

    try:
        stop_world(directory)
    except ServeError as err:
        raise CliError(str(err)) from None


if __name__ == "__main__":
    app()
