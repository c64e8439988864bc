"""`las plan` + `las build` to s3:// on a real S3-compatible server (moto) on 127.0.0.1.

The endpoint and keys come from the standard AWS variables only (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``); the dataset must equal a local build array
for array, and resume must work from the markers on S3.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

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


def _refused(*args: str) -> str:
    """The output of a command that must fail with a one-line error (exit 2, no traceback)."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert result.output.startswith("error: "), result.output
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


KEY_ID, SECRET = "testing-key-id", "testing-secret-key"  # the s3 fixture's credentials


def _etags(prefix: str) -> dict[str, str]:
    """Every object under ``prefix`` and its ETag (one listing)."""
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return {k: v["ETag"] for k, v in fs.find(prefix, detail=True).items()}


def _moto_auth(on: bool) -> None:
    """Make the moto server check credentials (it knows none, so every key is refused)."""
    request = urllib.request.Request(
        f"{os.environ['AWS_ENDPOINT_URL']}/moto-api/reset-auth",
        data=b"0" if on else b"inf",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_refused_credentials_are_a_one_line_error_naming_the_object(
    builds: tuple[str, Path], served_world: dict
) -> None:
    remote, _ = builds
    args = _args(served_world["stac_url"], remote)
    _moto_auth(True)
    try:
        outputs = [_refused("build", *args, "--quiet"), _refused("build", *args, "--status")]
    finally:
        _moto_auth(False)
    for output in outputs:
        assert f"cannot read {remote}/plan.parquet" in output
        assert "Forbidden" in output and "check the credentials" in output
        assert KEY_ID not in output and SECRET not in output


def test_an_unreachable_endpoint_is_a_one_line_error_after_bounded_retries(
    builds: tuple[str, Path], served_world: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote, _ = builds
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries; s3fs still makes 5 tries
    fsspec.filesystem("s3").clear_instance_cache()  # s3fs keeps the endpoint it was made with
    try:
        started = time.monotonic()
        output = _refused("build", *_args(served_world["stac_url"], remote), "--quiet")
        assert time.monotonic() - started < 30
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
    assert f"cannot read {remote}/plan.parquet (EndpointConnectionError: " in output
    assert f"check AWS_ENDPOINT_URL ({endpoint}) and the network" in output


class _SlowDownProxy:
    """An S3 endpoint in front of the moto server that answers ``503 SlowDown`` to the PUTs
    of the objects whose key matches ``pattern`` (``fails`` times each; None: always)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.pattern: re.Pattern[str] | None = None
        self.fails: int | None = None
        self.refused: dict[str, int] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go apart: no 40 ms delayed ACK

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "PUT" and proxy.refuse(self.path):
                    error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"  # noqa: E501
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.netloc, timeout=30)
                hop = {"connection", "content-length", "transfer-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in hop:
                        self.send_header(key, value)
                # a HEAD's length is the object's (s3fs reads the size from it)
                size = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", size or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = handle_one  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def refuse(self, path: str) -> bool:
        with self._lock:
            if self.pattern is None or not self.pattern.search(path):
                return False
            done = self.refused.get(path, 0)
            if self.fails is not None and done >= self.fails:
                return False
            self.refused[path] = done + 1
            return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_s3_slowdown_fails_the_shard_naming_the_object_then_resume_rides_it_out(
    s3: str,
    builds: tuple[str, Path],
    served_world: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Throttling (503 SlowDown) that outlasts the retries fails that shard only, with an
    error naming the object; the next build, throttled a few times per object, completes the
    dataset as an unthrottled build made it."""
    _, local = builds
    out = f"{s3}/throttled"
    args = _args(served_world["stac_url"], out)
    _run("plan", *args, "--quiet")
    proxy = _SlowDownProxy(os.environ["AWS_ENDPOINT_URL"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # s3fs's 5 tries are left, backing off ~2 s
    fsspec.filesystem("s3").clear_instance_cache()
    try:
        proxy.pattern = re.compile(r"/throttled/las\.zarr/sentinel-2/c/1/")  # shard 1's object
        output = _refused("build", *args, "--quiet", "--workers", "0")
        assert "1 of 2 shards were not built (shard 1: OSError: cannot write " in output
        assert f"{out}/las.zarr/sentinel-2/c/1/0/0/0 (ClientError: " in output
        assert "(SlowDown)" in output and "Please reduce your request rate" in output
        assert set(proxy.refused.values()) == {5}  # bounded: s3fs's tries, then the error
        proxy.refused.clear()
        # shard 1's objects and index part, each throttled twice: the retries ride it out
        proxy.pattern, proxy.fails = re.compile(r"/throttled/.*(/c/1/|shard-000001)"), 2
        _run("build", *args, "--quiet", "--workers", "0")
        assert len(proxy.refused) > 10 and set(proxy.refused.values()) == {2}
    finally:
        proxy.close()
        monkeypatch.undo()
        fsspec.filesystem("s3").clear_instance_cache()
    remote_arrays = _arrays(zarr.open_group(f"{out}/las.zarr", mode="r"))
    for path, array in _arrays(zarr.open_group(local / "las.zarr", mode="r")).items():
        np.testing.assert_array_equal(remote_arrays[path][:], array[:], err_msg=path)
    pd.testing.assert_frame_equal(
        _read_parquet(f"{out}/index.parquet"), pd.read_parquet(local / "index.parquet")
    )


def test_a_prefix_with_a_trailing_slash_spaces_and_unicode_is_built_where_readers_look(
    s3: str, builds: tuple[str, Path], served_world: dict, tmp_path: Path
) -> None:
    """`output.path: s3://bucket/with space/ünï/` (trailing slash): the store is at
    `ünï/las.zarr`, not at the key `ünï//las.zarr` that no reader opens; another plan of the
    same length is not written over it, and a build after one put there by other means is
    refused and changes nothing."""
    from las_builder.model.data import open_store, read_index

    _, local = builds
    out = f"{s3}/with space/ünï/"
    args = _args(served_world["stac_url"], out)
    _run("plan", *args, "--quiet")
    _run("build", *args, "--quiet", "--workers", "0")
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    keys = fs.find(f"{BUCKET}/with space")
    assert keys and not [k for k in keys if "//" in k]
    remote_arrays = _arrays(open_store(out))
    for path, array in _arrays(zarr.open_group(local / "las.zarr", mode="r")).items():
        np.testing.assert_array_equal(remote_arrays[path][:], array[:], err_msg=path)
    assert len(read_index(out)) == 8
    before = _etags(f"{BUCKET}/with space")
    output = _refused("plan", *args, "--set", "sample.seed=5", "--quiet")  # same length
    assert "las.zarr was built from another plan" in output and "not written" in output
    fs.invalidate_cache()
    assert _etags(f"{BUCKET}/with space") == before
    other = tmp_path / "other"  # the same other plan, copied there by hand
    _run("plan", *_args(served_world["stac_url"], str(other)), "--set", "sample.seed=5", "-q")
    fs.put(str(other / "plan.parquet"), f"{BUCKET}/with space/ünï/plan.parquet")
    output = _refused("build", *args, "--set", "sample.seed=5", "--quiet")
    assert "las.zarr was built from another plan" in output
    fs.invalidate_cache()
    after = _etags(f"{BUCKET}/with space")
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {f"{BUCKET}/with space/ünï/plan.parquet"}  # the copy above


def test_a_build_of_another_recipe_into_a_built_output_is_refused(
    builds: tuple[str, Path], served_world: dict
) -> None:
    """Before, all its shards being done, it "built" the old recipe's samples again."""
    remote, _ = builds
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    before = _etags(remote)
    args = _args(served_world["stac_url"], remote)
    output = _refused("build", *args, "--set", "time.start=2020-01-01", "--quiet")
    assert f"{remote}/las.zarr was built with another recipe or catalog: time.start is " in output
    assert "'2021-06-01' there, '2020-01-01' in this one" in output
    assert "delete it or choose another output.path" in output
    output = _refused("build", *args, "--set", "imagery.sentinel-2.max_cloud=20", "--quiet")
    assert "imagery.sentinel-2.max_cloud is 60.0 there, 20.0 in this one" in output
    fs.invalidate_cache()
    assert _etags(remote) == before


def test_no_credential_in_any_object_of_a_build(builds: tuple[str, Path]) -> None:
    remote, _ = builds
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    objects = fs.find(remote)
    assert len(objects) > 20
    for key in objects:
        data = fs.cat_file(key)
        assert KEY_ID.encode() not in data and SECRET.encode() not in data, key
    attrs = json.dumps(zarr.open_group(f"{remote}/las.zarr", mode="r").attrs.asdict())
    assert KEY_ID not in attrs and SECRET not in attrs and "127.0.0.1" not in attrs


def test_a_resumed_build_aborts_the_unfinished_uploads_of_a_killed_one(
    s3: str, builds: tuple[str, Path], served_world: dict
) -> None:
    """A shard object of 100 MiB or more goes up in parts; a build killed meanwhile leaves
    no object (the shard is rebuilt) but stored parts, which the next build aborts. Uploads
    outside the output are not touched."""
    remote, _ = builds
    fs = fsspec.filesystem("s3")
    bucket = BUCKET
    mine = f"{remote.removeprefix(f's3://{bucket}/')}/las.zarr/naip/c/9/0/0/0"
    other = "elsewhere/big.bin"
    for key in (mine, other):
        upload = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)
        fs.call_s3(
            "upload_part",
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=1,
            Body=b"x" * 1024,
        )
    try:
        _run("build", *_args(served_world["stac_url"], remote), "--quiet")
        left = {u["Key"] for u in fs.list_multipart_uploads(bucket)}
        assert left == {other}
        fs.invalidate_cache()
        assert not fs.exists(f"{bucket}/{mine}")
    finally:
        for upload in fs.list_multipart_uploads(bucket):
            fs.call_s3(
                "abort_multipart_upload",
                Bucket=bucket,
                Key=upload["Key"],
                UploadId=upload["UploadId"],
            )


@pytest.fixture
def credential_less_cluster(tmp_path: Path) -> Iterator[str]:
    """A dask scheduler and one worker started apart, as on other machines: the worker runs
    in a folder of its own and has the endpoint but no credentials."""
    from dask.distributed import Client

    file = tmp_path / "scheduler.json"
    elsewhere = tmp_path / "worker-home"
    elsewhere.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") or k in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
    }
    env |= {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(elsewhere / "none"),
        "AWS_CONFIG_FILE": str(elsewhere / "none"),
    }
    dask_cli = [sys.executable, "-m", "dask"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    started = [
        subprocess.Popen(
            [*dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", str(file)],
            **quiet,  # type: ignore[call-overload]
        )
    ]
    try:
        for _ in range(600):
            if file.exists() and file.stat().st_size:
                break
            assert started[0].poll() is None, "the dask scheduler exited"
            time.sleep(0.1)
        started.append(
            subprocess.Popen(
                [*dask_cli, "worker", "--scheduler-file", str(file), "--nworkers", "1"]
                + ["--nthreads", "2", "--no-dashboard"],
                cwd=elsewhere,
                env=env,
                **quiet,  # type: ignore[call-overload]
            )
        )
        with Client(scheduler_file=str(file), timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            address = str(client.scheduler.address)
        yield address
    finally:
        for proc in reversed(started):
            proc.terminate()
        for proc in reversed(started):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_a_cluster_whose_workers_cannot_reach_the_output_is_refused_before_building(
    s3: str,
    served_world: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    credential_less_cluster: str,
) -> None:
    """`--scheduler`: a worker without the credentials is named before any shard is tried
    (not every shard failed alike); a relative local path means the build's folder, not the
    one each worker runs in."""
    out = f"{s3}/on-a-cluster"
    args = _args(served_world["stac_url"], out)
    _run("plan", *args, "--quiet")
    output = _refused("build", *args, "--quiet", "--scheduler", credential_less_cluster)
    assert "1 of 1 workers of the cluster cannot read the output (worker tcp://" in output
    assert f"cannot read {out}/las.zarr/zarr.json (NoCredentialsError: " in output
    assert "give every worker the same credentials" in output and "nothing was built" in output
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert not fs.exists(f"{out}/index-parts")

    monkeypatch.chdir(tmp_path)
    relative = _args(served_world["stac_url"], "rel/las")
    _run("plan", *relative, "--quiet")
    _run("build", *relative, "--quiet", "--scheduler", credential_less_cluster)
    assert len(pd.read_parquet(tmp_path / "rel" / "las" / "index.parquet")) == 8
    assert not (tmp_path / "worker-home" / "rel").exists()


def test_a_plan_into_a_bucket_that_does_not_exist_is_refused_not_created(
    s3: str, served_world: dict
) -> None:
    """s3fs's makedirs creates a missing bucket: a typo in output.path made a new bucket."""
    out = "s3://no-such-bucket-typo/runs/x"
    output = _refused("plan", *_args(served_world["stac_url"], out), "--quiet")
    assert "no bucket 'no-such-bucket-typo' at s3://" in output and "create it first" in output
    assert "no-such-bucket-typo" not in fsspec.filesystem("s3", skip_instance_cache=True).ls("")


def test_a_dataset_missing_on_s3_says_what_is_missing(s3: str) -> None:
    from las_builder.model.data import read_index

    with pytest.raises(FileNotFoundError, match=r"index\.parquet not found: build the dataset"):
        read_index(f"{s3}/nothing-here")
