"""Trying to break `las world create|serve|stop` the way users (and bad luck) do.

Everything runs against the real servers on a copy of the session's tiny world; every server
a test starts is stopped through its own world folder.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from las_builder.cli import app
from las_builder.world import create as create_mod
from las_builder.world import serve as serve_mod
from las_builder.world.create import create_world
from las_builder.world.serve import ServeError, ServeInfo, serve_world, stop_world


def _runs(pid: int) -> bool:
    """Tell whether ``pid`` runs (our exited children are reaped; zombies count as gone)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(_runs(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _copy(tiny_world: Path, dest: Path) -> Path:
    shutil.copytree(tiny_world, dest, ignore=shutil.ignore_patterns(".serve", "serve.json"))
    return dest


@pytest.fixture(scope="module")
def served(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeInfo]:
    """A copy of the tiny world served in the background for this module's range tests."""
    world = _copy(tiny_world, tmp_path_factory.mktemp("attacks") / "world")
    (world / "truth" / "empty.txt").write_bytes(b"")
    info = serve_world(world, detach=True)
    _SERVED[info.assets_url] = world
    try:
        yield info
    finally:
        stop_world(world)


_SERVED: dict[str, Path] = {}


def _world(info: ServeInfo) -> Path:
    """The world folder a served world answers from."""
    return _SERVED[info.assets_url]


def _victim(cwd: Path) -> int:
    """Start ``sleep`` in its own session, not our child (so only /proc can vouch for it)."""
    out = subprocess.run(
        ["bash", "-c", "setsid sleep 120 >/dev/null 2>&1 & echo $!"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 5
    while os.getpgid(pid) != pid:  # setsid has not run yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return pid


def _kill(pid: int) -> None:
    """Kill a process this test started (by its pid only)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------
# the range server


@pytest.mark.parametrize(
    ("header", "status", "span"),
    [
        ("bytes=-500", 206, (-500, None)),
        ("bytes=100-", 206, (100, None)),
        ("bytes=0-0", 206, (0, 1)),
        ("bytes=10-99999999999", 206, (10, None)),
        ("bytes=-99999999", 206, (0, None)),
        ("bytes=0-1,5-9", 200, (0, None)),  # several ranges: ignored, the whole file
        ("bytes=5-2", 200, (0, None)),  # malformed: ignored
        ("bytes=1_0-2_0", 200, (0, None)),  # int() would read 10-20
        ("bytes=+5-9", 200, (0, None)),
        ("bytes=-", 200, (0, None)),
        ("items=0-9", 200, (0, None)),
    ],
)
def test_range_forms(served: ServeInfo, header: str, status: int, span: tuple) -> None:
    data = (_world(served) / "world.json").read_bytes()
    got = requests.get(served.assets_url + "world.json", headers={"Range": header}, timeout=10)
    assert got.status_code == status
    first, end = span
    assert got.content == data[first:end]
    if status == 206:
        start = first % len(data)
        end_byte = start + len(got.content) - 1
        assert got.headers["Content-Range"] == f"bytes {start}-{end_byte}/{len(data)}"


@pytest.mark.parametrize(
    ("name", "header"),
    [("world.json", "bytes=999999-"), ("world.json", "bytes=-0"), ("truth/empty.txt", "bytes=-5")],
)
def test_unsatisfiable_range_is_416_with_the_size(
    served: ServeInfo, name: str, header: str
) -> None:
    size = (_world(served) / name).stat().st_size
    for method in ("GET", "HEAD"):
        got = requests.request(
            method, served.assets_url + name, headers={"Range": header}, timeout=10
        )
        assert got.status_code == 416
        assert got.headers["Content-Range"] == f"bytes */{size}"
        assert got.content == b""


def test_head_answers_headers_only(served: ServeInfo) -> None:
    size = (_world(served) / "world.json").stat().st_size
    whole = requests.head(served.assets_url + "world.json", timeout=10)
    assert (whole.status_code, whole.headers["Content-Length"]) == (200, str(size))
    part = requests.head(
        served.assets_url + "world.json", headers={"Range": "bytes=10-19"}, timeout=10
    )
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 10-19/{size}"
    assert part.content == b""


def _raw(info: ServeInfo, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Send ``GET target`` exactly as written (no client normalisation); status and body."""
    host, port = info.assets_url[len("http://") : -1].split(":")
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    "target",
    [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/stac/..%2f..%2f..%2f..%2f..%2fetc/passwd",
        "//etc/passwd",
        "/%2f%2fetc/passwd",
        "/..%5c..%5c..%5cetc%5cpasswd",
        "/.serve/stac.log",
        "/%2eserve/stac.log",
        "//.serve/stac.log",
        "///.serve/stac.log",
        "//x/../.serve/stac.log",
        "/world.json%00",
        "/world.json%00.txt",
        "/%0d%0aX-Injected:%20yes",
    ],
)
def test_no_path_leaves_the_world(served: ServeInfo, target: str) -> None:
    if "serve/stac.log" in target:  # the hidden file is there: only the server keeps it out
        assert (_world(served) / ".serve" / "stac.log").is_file()
    status, body = _raw(served, target)
    assert status in (400, 404)
    assert b"root:" not in body
    # the server is still there (a NUL used to kill the connection with a traceback)
    assert requests.get(served.assets_url + "world.json", timeout=10).status_code == 200


def test_serve_json_is_not_served(served: ServeInfo) -> None:
    # it names the servers' pids and the world's local path: for `las world stop`, not clients
    assert (_world(served) / "serve.json").is_file()
    paths = ("/serve.json", "/%73erve.json", "//serve.json", "/./serve.json", "/x/../serve.json")
    for path in paths:
        for headers in ({}, {"Range": "bytes=0-3"}):
            status, body = _raw(served, path, headers)
            assert status == 404, path
            assert b"pid" not in body


def test_symlinks_out_of_the_world_are_not_followed(served: ServeInfo, tmp_path: Path) -> None:
    world = _world(served)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    links = [world / "truth" / "evil.tif", world / "truth" / "evil-dir", world / "inside.json"]
    links[0].symlink_to("/etc/passwd")
    links[1].symlink_to(outside)
    links[2].symlink_to(world / "world.json")  # a link that stays inside is fine
    try:
        for path in ("truth/evil.tif", "truth/evil-dir/secret.txt", "truth/evil-dir/"):
            for headers in ({}, {"Range": "bytes=0-3"}):
                got = requests.get(served.assets_url + path, headers=headers, timeout=10)
                assert got.status_code == 404, path
                assert b"root:" not in got.content and b"secret" not in got.content
        inside = requests.get(served.assets_url + "inside.json", timeout=10)
        assert inside.content == (world / "world.json").read_bytes()
    finally:
        for link in links:
            link.unlink()


def test_very_long_url_is_refused_and_the_server_lives(served: ServeInfo) -> None:
    status, _body = _raw(served, "/" + "a" * 70_000)
    assert status == 414
    assert requests.get(served.assets_url + "world.json", timeout=10).status_code == 200


def test_stats_path_ignores_a_query(served: ServeInfo) -> None:
    got = requests.get(served.assets_url + "_stats?fresh=1", timeout=10)
    assert got.status_code == 200 and "requests" in got.json()


def test_hang_ups_mid_body_then_50_parallel_range_reads(served: ServeInfo) -> None:
    world = _world(served)
    big = max(
        (p for p in world.rglob("*.tif") if ".serve" not in p.parts), key=lambda p: p.stat().st_size
    )
    data = big.read_bytes()
    rel = big.relative_to(world).as_posix()
    host, port = served.assets_url[len("http://") : -1].split(":")
    for _ in range(10):  # read a little of the whole file, then reset the connection
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(f"GET /{rel} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.recv(100)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()

    def read(seed: int) -> bool:
        rng = random.Random(seed)
        first = rng.randrange(len(data))
        last = min(len(data) - 1, first + rng.randrange(1, 200_000))
        got = requests.get(
            served.assets_url + rel, headers={"Range": f"bytes={first}-{last}"}, timeout=30
        )
        return got.status_code == 206 and got.content == data[first : last + 1]

    with cf.ThreadPoolExecutor(50) as pool:
        assert all(pool.map(read, range(100)))
    log = (world / ".serve" / "assets.log").read_text()
    assert "Traceback" not in log  # a client hanging up is not an error


# ---------------------------------------------------------------------------------------------
# serve and stop: stale, reused and copied pids, moved and deleted worlds


def test_serve_after_kill_9_then_stop(tiny_world: Path, tmp_path: Path) -> None:
    world = _copy(tiny_world, tmp_path / "world")
    first = serve_world(world, detach=True)
    for pid in first.pids.values():
        os.kill(pid, signal.SIGKILL)
    assert _gone(list(first.pids.values()))
    second = serve_world(world, detach=True)  # the stale serve.json is no obstacle
    try:
        assert requests.get(second.stac_url, timeout=10).status_code == 200
        for detach in (True, False):  # a second serve, background or not, is refused
            with pytest.raises(ServeError, match="already being served.*las world stop"):
                serve_world(world, detach=detach)
    finally:
        stop_world(world)
    assert _gone(list(second.pids.values()))


def test_stop_never_signals_a_process_that_is_not_ours(
    tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _copy(tiny_world, tmp_path / "world")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victims = [_victim(world), _victim(world), _victim(elsewhere)]
    try:
        start = serve_mod._proc_start_ticks(victims[2])
        cases = [
            {"pids": {"stac": victims[0]}},  # an old serve.json: no start times
            {"pids": {"stac": victims[1]}, "pid_starts": {"stac": 1}},  # pid reused
            # right start time, but it works elsewhere (a serve.json copied from there)
            {"pids": {"stac": victims[2]}, "pid_starts": {"stac": start}, "world": "/x"},
            # from an earlier boot: whatever runs under the pid now is not ours
            {
                "pids": {"stac": victims[2]},
                "pid_starts": {"stac": start},
                "boot_id": "not-this-boot",
            },
        ]
        for state in cases:
            (world / "serve.json").write_text(json.dumps(state))
            stop_world(world)
            assert "left alone" in capsys.readouterr().out
            assert not (world / "serve.json").exists()
            (world / "serve.json").write_text(json.dumps(state))
            info = serve_world(world, detach=True)  # not "already being served"
            stop_world(world)
            assert _gone(list(info.pids.values()))
        assert all(_runs(pid) for pid in victims)
    finally:
        for pid in victims:
            _kill(pid)
    # `true` is an int in JSON-to-Python: it must not name pid 1
    assert serve_mod._state_entries({"pids": {"stac": True, "assets": 0, "x": "12"}}) == []


def test_stale_serve_json_never_removes_folders_outside_the_world(
    tiny_world: Path, tmp_path: Path
) -> None:
    world = _copy(tiny_world, tmp_path / "world")
    precious = tmp_path / "precious"
    (precious / "data").mkdir(parents=True)
    state = {"pids": {}, "pgdata": str(precious / "data"), "world": str(world)}
    (world / "serve.json").write_text(json.dumps(state))
    stop_world(world)
    (world / "serve.json").write_text(json.dumps(state))
    info = serve_world(world, detach=True)
    stop_world(world)
    assert _gone(list(info.pids.values()))
    assert (precious / "data").is_dir()


def test_copy_of_a_served_world_is_its_own_world(served: ServeInfo, tmp_path: Path) -> None:
    world = _world(served)
    copy = tmp_path / "copy"
    shutil.copytree(world, copy, ignore=shutil.ignore_patterns(".serve"))  # with serve.json
    stop_world(copy)  # stale for the copy: the first world's servers are left alone
    assert requests.get(served.stac_url, timeout=10).status_code == 200
    shutil.copy(world / "serve.json", copy / "serve.json")
    info = serve_world(copy, detach=True)
    try:
        assert info.assets_url != served.assets_url
    finally:
        stop_world(copy)
    assert requests.get(served.stac_url, timeout=10).status_code == 200
    assert requests.get(served.assets_url + "world.json", timeout=10).status_code == 200


SERVERS = [
    pytest.param("rustac", id="rustac"),
    pytest.param("pgstac", id="pgstac", marks=pytest.mark.pgstac),
]


def _needs(server: str) -> None:
    reason = serve_mod.pgstac_missing() if server == "pgstac" else None
    if reason:
        pytest.skip(f"pgstac server unavailable here: {reason}")


@pytest.mark.parametrize("server", SERVERS)
def test_world_moved_while_served_is_stopped_at_its_new_place(
    tiny_world: Path, tmp_path: Path, server: str
) -> None:
    _needs(server)
    world = _copy(tiny_world, tmp_path / "world")
    info = serve_world(world, server=server, detach=True)
    moved = tmp_path / "moved"
    world.rename(moved)
    try:
        with pytest.raises(ServeError, match="already being served"):
            serve_world(moved, detach=True)
    finally:
        stop_world(moved)
    assert _gone(list(info.pids.values()))


@pytest.mark.parametrize("server", SERVERS)
def test_world_deleted_while_served_can_still_be_stopped(
    tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], server: str
) -> None:
    _needs(server)
    world = _copy(tiny_world, tmp_path / "world")
    info = serve_world(world, server=server, detach=True)
    pgdata = json.loads((world / "serve.json").read_text())["pgdata"]
    starts = {pid: serve_mod._proc_start_ticks(pid) for pid in info.pids.values()}
    shutil.rmtree(world)
    try:
        stop_world(world)
        out = capsys.readouterr().out
        assert f"deleted while served; stopped its {len(info.pids)} servers" in out
    finally:
        for pid, start in starts.items():  # never leave them behind, even if stop failed
            if _runs(pid) and serve_mod._proc_start_ticks(pid) == start:
                os.killpg(pid, signal.SIGKILL)
    assert _gone(list(info.pids.values()))
    assert pgdata is None or not Path(pgdata).exists()  # its temporary cluster is removed
    with pytest.raises(ServeError, match="does not exist"):
        stop_world(world)


def test_serve_dir_symlink_is_not_followed(tiny_world: Path, tmp_path: Path) -> None:
    world = _copy(tiny_world, tmp_path / "world")
    outside = tmp_path / "outside"
    outside.mkdir()
    (world / ".serve").symlink_to(outside)
    info = serve_world(world, detach=True)
    try:
        assert not (world / ".serve").is_symlink()
        assert (world / ".serve" / "stac.log").is_file()
        assert list(outside.iterdir()) == []
    finally:
        stop_world(world)
    assert _gone(list(info.pids.values()))


# ---------------------------------------------------------------------------------------------
# folders that are not (finished) worlds, bad options


def test_unfinished_and_old_worlds_say_what_to_do(tiny_world: Path, tmp_path: Path) -> None:
    half = _copy(tiny_world, tmp_path / "half")
    (half / "world.json").unlink()
    with pytest.raises(ServeError, match=r"unfinished world .*delete it and run `las world create"):
        serve_world(half, detach=True)
    old = _copy(tiny_world, tmp_path / "old")
    manifest = json.loads((old / "world.json").read_text())
    manifest["las_world_version"] = 0
    (old / "world.json").write_text(json.dumps(manifest))
    with pytest.raises(ServeError, match="las_world_version 0.*re-create the world"):
        serve_world(old, detach=True)
    (old / "world.json").write_text('{"las_world_version": 1, ')
    with pytest.raises(ServeError, match="unreadable"):
        serve_world(old, detach=True)
    assert not (half / "serve.json").exists() and not (old / "serve.json").exists()


@pytest.mark.parametrize("latency", [float("nan"), float("inf"), -0.5, 1e9])
def test_latency_must_be_a_sane_number(tiny_world: Path, latency: float) -> None:
    with pytest.raises(ServeError, match="--latency-ms must be between 0 and 10000"):
        serve_world(tiny_world, detach=True, latency_ms=latency)


def test_cli_stop_and_serve_of_a_file_are_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for command in ("stop", "serve"):
        done = CliRunner().invoke(app, ["world", command, str(afile)])
        assert done.exit_code == 2
        assert "is not a folder" in done.output and "Traceback" not in done.output


def test_create_into_a_file_or_below_one(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        create_world(afile, preset="tiny", progress=False)
    with pytest.raises(ValueError, match=r"cannot write into .*afile/world"):
        create_world(afile / "world", preset="tiny", progress=False)
    done = CliRunner().invoke(app, ["world", "create", str(afile), "--preset", "tiny", "-q"])
    assert done.exit_code == 2 and "is a file, not a folder" in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)
    assert afile.read_text() == "x"


def test_unknown_preset_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        create_world(tmp_path / "w", preset="huge", progress=False)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(28, "No space left on device")])
@pytest.mark.parametrize("existed", [False, True])
def test_failed_create_leaves_no_half_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, existed: bool
) -> None:
    world = tmp_path / "w"
    if existed:
        world.mkdir()

    def half(world_dir: Path, *args: object) -> dict:
        (world_dir / "stac").mkdir()
        (world_dir / "stac" / "x.json").write_text("{}")
        raise error

    monkeypatch.setattr(create_mod, "_create", half)
    expected = KeyboardInterrupt if isinstance(error, KeyboardInterrupt) else ValueError
    with pytest.raises(expected, match=None if expected is KeyboardInterrupt else "No space left"):
        create_world(world, preset="tiny", progress=False)
    assert world.exists() == existed
    if existed:
        assert list(world.iterdir()) == []


def _first_region_fails(world_dir: Path, preset: str, index: int, seed: int) -> list[object]:
    """Stands in for a region's rendering (module level: the pool pickles it by name)."""
    if index == 0:
        time.sleep(0.5)  # the others are queued by now
        raise OSError(28, "No space left on device")
    (world_dir.parent / f"rendered-{index}").touch()
    time.sleep(1)
    return []


def test_a_failed_region_stops_the_regions_still_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A region's error (or Ctrl-C) waited for the pool to render every queued region first:
    23 s for the demo world, minutes for bench, for a create that had already failed."""
    monkeypatch.setattr(create_mod, "_build_region", _first_region_fails)
    with pytest.raises(ValueError, match="No space left"):
        create_world(tmp_path / "w", preset="demo", progress=False, workers=1)
    rendered = sorted(p.name for p in tmp_path.glob("rendered-*"))
    # the region running and those already in the pool's call queue (workers + 1) still
    # run; the demo has 7, all rendered before
    assert len(rendered) <= 3, rendered
    assert not (tmp_path / "w").exists()
