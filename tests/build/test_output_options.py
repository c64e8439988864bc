"""Options of `las build` that name where and on what it builds: checked before any work."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest
from typer.testing import CliRunner

from las_builder.build import run
from las_builder.build.config import BuildConfig
from las_builder.build.store import OutputUnreachable, normalize_output, storage_access
from las_builder.cli import app

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": -1}, "--workers -1: give a number of worker processes, 0 for threads"),
        (
            {"workers": 2, "scheduler": "tcp://127.0.0.1:1"},
            "--workers 2 starts workers on this machine, --scheduler tcp://127.0.0.1:1 builds",
        ),
        ({"workers": 0, "client": object()}, "--workers 0 starts workers on this machine, the"),
    ],
)
def test_run_build_refuses_worker_counts_before_reading_anything(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    """No plan exists here: the refusal comes first, whatever the output holds."""
    cfg: Any = object()  # never read: the options are refused first
    with pytest.raises(ValueError, match="give") as err:
        run.run_build(cfg, str(tmp_path / "nothing"), 4, **kwargs)
    assert message in str(err.value)
    assert not (tmp_path / "nothing").exists()


def test_las_build_refuses_workers_with_a_scheduler_in_one_line(tmp_path: Path) -> None:
    """Before, `--workers 2 --scheduler ...` built on the scheduler and ignored --workers."""
    from las_builder.build.run import _check_workers

    _check_workers("auto", "tcp://127.0.0.1:1", None)  # the CLI's default goes with one
    _check_workers(None, None, None)
    out = tmp_path / "las"
    args = ["build", str(DEMO), "--set", f"output.path={out}", "--set", "stac.url=http://x"]
    result = CliRunner().invoke(app, [*args, "--workers", "-3"])
    assert result.exit_code == 2 and "--workers" in result.output  # typer: min=0


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("s3://bucket/prefix/", "s3://bucket/prefix"),
        ("s3://bucket", "s3://bucket"),
        ("s3://bucket/", "s3://bucket"),
        ("s3://bucket/with space/ünï//", "s3://bucket/with space/ünï"),
        ("/data/las/", "/data/las"),
        ("/", "/"),
    ],
)
def test_normalize_output_drops_trailing_slashes(given: str, expected: str) -> None:
    assert normalize_output(given) == expected


def test_normalize_output_makes_a_local_path_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers of a cluster may run in another folder: they get the build's absolute path."""
    monkeypatch.chdir(tmp_path)
    assert normalize_output("out/las/") == os.path.join(str(tmp_path), "out", "las")


def test_storage_access_names_the_object_and_hides_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "s3cr3t/Value+That0Must0Not0Leak"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with pytest.raises(OutputUnreachable) as err, storage_access("s3://b/p/x.parquet", "read"):
        raise PermissionError(f"Forbidden (signed with {secret})")
    text = str(err.value)
    assert text.startswith("cannot read s3://b/p/x.parquet (PermissionError: Forbidden")
    assert "check the credentials" in text and secret not in text
    assert isinstance(err.value, ValueError) and isinstance(err.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError) as missing, storage_access("s3://b/p", "read"):
        raise FileNotFoundError("s3://b/p/plan.parquet not found: run `las plan RECIPE` first")
    assert not isinstance(missing.value, OutputUnreachable)  # its own message goes through
    with pytest.raises(KeyError), storage_access("s3://b/p", "read"):
        raise KeyError("a bug, not the storage")


def test_a_store_of_another_layout_is_refused_even_without_a_fingerprint(
    tmp_path: Path,
) -> None:
    """A store made before the recipe's fingerprint was kept is still checked for its
    samples' shape and shard size (before, a new size failed every shard, a new shard size
    indexed only part of the plan)."""
    import datetime as dt

    import zarr

    from las_builder.build.config import LabelSpec
    from las_builder.build.store import create_store

    when = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
    cfg = BuildConfig(
        stac_url="http://x",
        start=when,
        end=when,
        size_px=16,
        resolution_m=10,
        max_nodata=0.2,
        s1_collection=None,
        labels=(LabelSpec("esa-worldcover", "esa-worldcover", "map", 2021),),
    )
    url = str(tmp_path / "las.zarr")
    create_store(url, 8, 4, cfg, {}, plan="a" * 64)
    root = zarr.open_group(url, mode="r+")
    assert cast(dict[str, Any], root.attrs["build_config"])["sample.size_px"] == 16
    del root.attrs["build_config"], root.attrs["plan_digest"]  # as an older store
    create_store(url, 8, 4, cfg, {}, plan="b" * 64)  # same layout: goes on
    with pytest.raises(ValueError, match=r"holds 4 samples a shard, the plan 8 \(output"):
        create_store(url, 8, 8, cfg, {})
    bigger = BuildConfig(**{**cfg.__dict__, "size_px": 32})
    with pytest.raises(ValueError, match=r"sentinel-2 holds samples of shape \(12, 16, 16\)"):
        create_store(url, 8, 4, bigger, {})


def _tiny_config() -> BuildConfig:
    import datetime as dt

    from las_builder.build.config import LabelSpec

    when = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
    return BuildConfig(
        stac_url="http://x",
        start=when,
        end=when,
        size_px=16,
        resolution_m=10,
        max_nodata=0.2,
        s1_collection=None,
        labels=(LabelSpec("esa-worldcover", "esa-worldcover", "map", 2021),),
    )


def test_a_zarr_group_las_builder_did_not_write_is_never_overwritten(tmp_path: Path) -> None:
    """``output.path`` naming someone's Zarr group: its arrays were overwritten (the store's
    arrays are created with ``overwrite=True`` when no version mark is found)."""
    import numpy as np
    import zarr

    from las_builder.build.store import create_store

    url = str(tmp_path / "las.zarr")
    theirs = zarr.open_group(url, mode="w", zarr_format=3)
    theirs.create_array("sentinel-2", shape=(4,), dtype="int16")[:] = np.arange(4)
    with pytest.raises(
        ValueError,
        match=r"las.zarr holds something las-builder did not write "
        r"\(sentinel-2\): .* set another output.path",
    ):
        create_store(url, 8, 4, _tiny_config(), {})
    assert np.asarray(zarr.open_array(f"{url}/sentinel-2", mode="r")[:]).tolist() == [0, 1, 2, 3]

    attrs_only = str(tmp_path / "attrs.zarr")
    zarr.open_group(attrs_only, mode="w", zarr_format=3).attrs["owner"] = "someone"
    with pytest.raises(ValueError, match=r"\(owner\)"):
        create_store(attrs_only, 8, 4, _tiny_config(), {})


def test_a_folder_of_files_is_not_made_a_store(tmp_path: Path) -> None:
    """A folder without ``zarr.json`` but with files: refused before zarr writes into it."""
    from las_builder.build.store import create_store

    folder = tmp_path / "las.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"\(notes.txt\)"):
        create_store(str(folder), 8, 4, _tiny_config(), {})
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_store_whose_creation_was_killed_is_made_again(tmp_path: Path) -> None:
    """A build killed after marking the store as begun (before its version mark) may make it
    again: that is the build's own half-made store, not someone else's group."""
    import zarr

    from las_builder.build.store import create_store, store_complete

    url = str(tmp_path / "las.zarr")
    cfg = _tiny_config()
    create_store(url, 8, 4, cfg, {})
    root = zarr.open_group(url, mode="r+")
    del root.attrs["las_store_version"]  # killed before the last step
    assert not store_complete(url)
    create_store(url, 8, 4, cfg, {})
    assert store_complete(url)
    empty = str(tmp_path / "empty.zarr")
    zarr.open_group(empty, mode="w", zarr_format=3)  # an empty group holds nothing to lose
    create_store(empty, 8, 4, cfg, {})
    assert store_complete(empty)
