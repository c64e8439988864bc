"""`las plan` + `las build` to s3:// on a real S3-compatible server (moto) on 127.0.0.1.

The endpoint and keys come from the standard AWS variables only (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``); the dataset must equal a local build array
for array, and resume must work from the markers on S3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import zarr
from dask.distributed import Client, LocalCluster
from typer.testing import CliRunner

from las_builder.build.config import config_from_recipe
from las_builder.build.run import run_build
from las_builder.cli import app
from las_builder.recipe import load_recipe

moto_server = pytest.importorskip("moto.server")

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "demo.yaml"
BUCKET = "las-test"


def _args(stac_url: str, out: str) -> list[str]:
    sets = [
        f"stac.url={stac_url}",
        "sample.size_px=32",
        "sample.count=8",
        f"output.path={out}",
        "output.samples_per_shard=4",
        "imagery.naip.factor=4",
    ]
    return [str(RECIPE)] + [a for s in sets for a in ("--set", s)]


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A moto S3 server on a free loopback port, reached through the AWS variables only."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        mp.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.delenv("AWS_PROFILE", raising=False)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        try:
            yield f"s3://{BUCKET}"
        finally:
            fsspec.filesystem("s3").clear_instance_cache()
            server.stop()


@pytest.fixture(scope="module")
def builds(
    s3: str, served_world: dict, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    remote = f"{s3}/runs/tiny"
    local = tmp_path_factory.mktemp("s3-reference") / "las"
    for out, flags in ((remote, ("--workers", "2")), (str(local), ())):
        # s3://: two worker processes write to the store, reaching it through the environment.
        _run("plan", *_args(served_world["stac_url"], out), "--quiet")
        _run("build", *_args(served_world["stac_url"], out), "--quiet", *flags)
    return remote, local


def _arrays(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    out = {}
    for name, member in group.members():
        path = f"{prefix}{name}"
        if isinstance(member, zarr.Group):
            out.update(_arrays(member, f"{path}/"))
        else:
            out[path] = member
    return out


def _read_parquet(url: str) -> pd.DataFrame:
    with fsspec.open(url, "rb") as f:
        return pd.read_parquet(f)


def test_s3_build_equals_the_local_build(builds: tuple[str, Path]) -> None:
    remote, local = builds
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{remote}/index-parts")}
    assert names == {"shard-000000.parquet", "shard-000001.parquet"}
    assert fs.exists(f"{remote}/plan.parquet") and fs.exists(f"{remote}/index.parquet")
    remote_root = zarr.open_group(f"{remote}/las.zarr", mode="r")
    local_root = zarr.open_group(local / "las.zarr", mode="r")
    assert remote_root.attrs.asdict() == local_root.attrs.asdict()
    remote_arrays, local_arrays = _arrays(remote_root), _arrays(local_root)
    assert remote_arrays.keys() == local_arrays.keys()
    assert "sentinel-2" in remote_arrays and "labels/esa-worldcover/native" in remote_arrays
    for path, array in local_arrays.items():
        other = remote_arrays[path]
        assert (other.shape, other.dtype, other.shards) == (array.shape, array.dtype, array.shards)
        np.testing.assert_array_equal(other[:], array[:], err_msg=path)  # NaN == NaN here
    pd.testing.assert_frame_equal(
        _read_parquet(f"{remote}/index.parquet"), pd.read_parquet(local / "index.parquet")
    )
    pd.testing.assert_frame_equal(
        _read_parquet(f"{remote}/plan.parquet"), pd.read_parquet(local / "plan.parquet")
    )
    index = _read_parquet(f"{remote}/index.parquet")
    assert (index["status"] == "ok").sum() >= 6


def test_s3_resume_rebuilds_only_the_missing_shard(
    builds: tuple[str, Path], served_world: dict
) -> None:
    remote, local = builds
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    kept = f"{remote}/index-parts/shard-000000.parquet"
    before = fs.info(kept)["LastModified"]
    fs.rm(f"{remote}/index-parts/shard-000001.parquet")
    torn = [p for p in fs.find(f"{remote}/las.zarr") if "/c/1/" in p]
    assert torn
    for path in torn:  # a shard cut short: garbage where its arrays were, and no marker
        fs.pipe_file(path, b"torn")
    args = _args(served_world["stac_url"], remote)
    status = json.loads(_run("build", *args, "--status"))
    assert status["shards_done"] == 1 and status["shards_remaining"] == 1
    # Resume on a cluster the caller connected (as with dask-gateway or Coiled): run_build(client=).
    spec = load_recipe(args[0], args[2::2])
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            built = []
            run_build(
                config_from_recipe(spec),
                remote,
                spec.output.samples_per_shard,
                client=client,
                on_shard=lambda shard, rows: built.append(shard),
            )
    assert built == [1]
    fs.invalidate_cache()
    assert fs.info(kept)["LastModified"] == before
    assert fs.exists(f"{remote}/index-parts/shard-000001.parquet")
    remote_root = zarr.open_group(f"{remote}/las.zarr", mode="r")
    local_root = zarr.open_group(local / "las.zarr", mode="r")
    for path, array in _arrays(local_root).items():
        np.testing.assert_array_equal(_arrays(remote_root)[path][:], array[:], err_msg=path)
    pd.testing.assert_frame_equal(
        _read_parquet(f"{remote}/index.parquet"), pd.read_parquet(local / "index.parquet")
    )


def test_s3_shard_reader_reads_the_remote_store(builds: tuple[str, Path]) -> None:
    """The loader's whole-shard reader fetches shards through zarr's fsspec store: every
    shard of every array read from S3 equals zarr's read of the local build."""
    from las_builder.zarr_shards import ShardedArray, read_shards

    remote, local = builds
    remote_root = zarr.open_group(f"{remote}/las.zarr", mode="r")
    local_root = zarr.open_group(local / "las.zarr", mode="r")
    for path, array in _arrays(local_root).items():
        if array.shards is None:
            continue  # band-name coordinates
        reader = ShardedArray.for_array(remote_root[path])
        assert reader is not None, path
        shards = range(-(-array.shape[0] // array.shards[0]))
        for shard, got in zip(shards, read_shards([(reader, s) for s in shards]), strict=True):
            start, stop = reader.rows(shard)
            np.testing.assert_array_equal(got, array[start:stop], err_msg=f"{path} {shard}")


def test_a_file_written_whole_or_absent_on_s3_never_appears_half(s3: str) -> None:
    """An error while the index is written aborts its upload: no object, or the old one."""
    from las_builder.build.store import whole_or_absent

    fs = fsspec.filesystem("s3")
    url = f"{s3}/atomic/index.parquet"
    with pytest.raises(RuntimeError), whole_or_absent(url) as f:
        f.write(b"x" * (f.blocksize + 1))  # more than a block: a multipart upload under way
        assert f.mpu is not None
        raise RuntimeError("killed mid-write")
    fs.invalidate_cache()
    assert not fs.exists(url)
    with whole_or_absent(url) as f:
        f.write(b"old, whole")
    with pytest.raises(RuntimeError), whole_or_absent(url) as f:
        f.write(b"new, ha")
        raise RuntimeError("killed mid-write")
    fs.invalidate_cache()
    assert fs.cat_file(url) == b"old, whole"
    assert fs.list_multipart_uploads(BUCKET) == []  # the aborted upload left no parts behind
