"""Serve an offline world on 127.0.0.1: a STAC API and a range-request file server.

``las world serve DIR`` starts two servers for a folder made by ``las world create``:

* a range-request HTTP file server rooted at the world (``RangeRequestHandler`` from the
  ``rangehttpserver`` package, in a child process), so GDAL reads the COGs through ``/vsicurl/``;
* a real STAC API: ``rustac serve`` (in-memory backend, up in a fraction of a second) or
  stac-fastapi-pgstac on a throwaway PostgreSQL/PostGIS cluster (the stack Planetary Computer runs).

Before the STAC server starts, served copies of the world's collections and items are written to
``WORLD/.serve/`` with every relative asset href rewritten to an absolute URL of the file server.
``WORLD/serve.json`` records the URLs and the process ids, so ``las world stop DIR`` can stop a
detached serve. Every child runs in its own process group; logs are ``WORLD/.serve/*.log``.

This file is also run as a script, ``python -P serve.py _range PORT DIR`` (the file server) and
``python -P serve.py _pgload DSN COLLECTIONS ITEMS`` (pgstac migrate + load).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import posixpath
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit

SERVERS = ("rustac", "pgstac")
"""STAC API servers that ``serve_world`` knows."""

WORLD_VERSION = 1
SERVE_DIR = ".serve"
SERVE_JSON = "serve.json"
READY_TIMEOUT_S = 60.0
"""How long each server may take to answer its first request."""
PROBE_TIMEOUT_S = 2.0
"""Timeout of one readiness probe."""
LOAD_TIMEOUT_S = 300.0
"""How long ``pypgstac migrate`` plus loading may take."""
STOP_TIMEOUT_S = 10.0
"""How long a process may take to exit after its stop signal before it is killed."""

PG_USER = "postgres"
PG_DATABASE = "postgres"
PG_PASSWORD = "postgres"  # trust authentication on loopback: any password is accepted

_STRUCTURAL_RELS = frozenset(
    {"self", "root", "parent", "collection", "items", "child", "item", "next", "prev", "search"}
)
_MAKE_INSTALL = "run `make install` as root"
# Children run this file as a script: -P keeps its folder (and the working folder) off
# sys.path, and the las_builder package is not imported at all.
_SELF = (sys.executable, "-P", str(Path(__file__).resolve()))


_PG_WORLD = "world.txt"
"""File beside a temporary cluster's ``data`` folder naming the world it serves."""

_DETACHED: dict[int, subprocess.Popen[bytes]] = {}
"""Children left running by a detached serve of this process, so they are not garbage
collected while they run (Popen warns then) and ``stop_world`` can reap them."""


class ServeError(Exception):
    """A world cannot be served or stopped; the message is one line that says what to do."""


@dataclass
class ServeInfo:
    """Where a served world answers.

    Attributes:
        stac_url: Root of the STAC API, e.g. ``http://127.0.0.1:7822/``.
        assets_url: Root of the range-request file server (the world folder).
        server: ``rustac`` or ``pgstac``.
        pids: Process id (and process group id) of each started server, by name.

    """

    stac_url: str
    assets_url: str
    server: str
    pids: dict[str, int]


# --------------------------------------------------------------------------------------------
# processes


def _boot_id() -> str | None:
    """Return this boot's id (``/proc/sys/kernel/random/boot_id``), or None without procfs.

    Pids and their start times repeat across reboots; a ``serve.json`` from an earlier boot
    names processes that are all gone, whatever now runs under those pids.
    """
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _has_procfs() -> bool:
    """Tell whether ``/proc`` can tell a process's start time (Linux)."""
    return Path(f"/proc/{os.getpid()}/stat").exists()


def _proc_cwd(pid: int) -> str | None:
    """Return the working folder of ``pid`` as the kernel names it, or None if unreadable.

    A deleted folder reads ``PATH (deleted)``; a moved one reads its new path.
    """
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _proc_cmdline(pid: int) -> list[str]:
    """Return the arguments of ``pid`` (empty if unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _proc_start_ticks(pid: int) -> int | None:
    """Return the start time of ``pid`` in clock ticks since boot, or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])


def _alive(pid: int, start: int | None = None) -> bool:
    """Tell whether ``pid`` runs (not a zombie) and, if ``start`` is given, is the same process.

    Our own children are asked with ``waitpid`` (which also reaps them): a multi-threaded
    child that is exiting shows a zombie leader in ``/proc`` while its threads still run.
    """
    try:
        reaped, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: ask /proc
    except OSError:
        return False
    else:
        return reaped == 0  # our child: 0 means it still runs (and cannot have been reused)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no procfs: fall back on signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        try:  # a zombie leader with live threads is still exiting
            return len(os.listdir(f"/proc/{pid}/task")) > 1
        except OSError:
            return False
    return start is None or int(fields[19]) == start


def _signal(pid: int, sig: int, group: bool) -> None:
    """Send ``sig`` to ``pid`` (or to its process group when it leads one), ignoring races."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _terminate(entries: list[tuple[str, int, int | None]], timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop processes started by ``serve_world``, in the given order, and wait until they exit.

    ``postgres`` gets SIGINT (a fast shutdown, what ``pg_ctl stop -m fast`` sends); every other
    process group gets SIGTERM. Whatever still runs after ``timeout`` is killed with SIGKILL.

    Args:
        entries: ``(name, pid, start ticks)`` of each process; each pid leads its process group.
        timeout: Seconds to wait for a clean exit before SIGKILL.

    """
    live = [(name, pid, start) for name, pid, start in entries if _alive(pid, start)]
    for name, pid, _start in live:
        if name == "postgres":
            _signal(pid, signal.SIGINT, group=False)
        else:
            _signal(pid, signal.SIGTERM, group=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid, start) for _n, pid, start in live):
        time.sleep(0.05)
    for _name, pid, start in live:
        if _alive(pid, start):
            _signal(pid, signal.SIGKILL, group=True)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_alive(pid, start) for _n, pid, start in live):
        time.sleep(0.05)
    for _name, pid, _start in live:  # stray members of the groups (the leaders are gone)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


@dataclass
class _Proc:
    """A child process started by ``serve_world``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    start: int | None


class _Started:
    """Everything ``serve_world`` started, so that a failure can stop it all."""

    def __init__(self) -> None:
        self.procs: list[_Proc] = []
        self.remove_dirs: list[Path] = []

    def spawn(
        self,
        name: str,
        cmd: list[str],
        log: Path,
        *,
        cwd: Path,
        env: dict[str, str] | None = None,
        as_user: str | None = None,
    ) -> _Proc:
        """Start ``cmd`` in a new session with stdout and stderr in ``log``."""
        user_kwargs: dict[str, Any] = {}
        if as_user is not None:
            user_kwargs = {"user": as_user, "group": as_user, "extra_groups": []}
        with open(log, "wb") as out:
            try:
                popen = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    **user_kwargs,
                )
            except OSError as err:
                raise ServeError(f"cannot start {name} ({cmd[0]}): {err.strerror}") from None
        proc = _Proc(name, popen, log, _proc_start_ticks(popen.pid))
        self.procs.append(proc)
        return proc

    def entries(self) -> list[tuple[str, int, int | None]]:
        """Return ``(name, pid, start)`` in stop order: the last started first."""
        return [(p.name, p.popen.pid, p.start) for p in reversed(self.procs)]

    def stop(self) -> None:
        """Stop every started process and remove throwaway folders."""
        _terminate(self.entries())
        for proc in self.procs:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                proc.popen.wait(timeout=1.0)
        for folder in self.remove_dirs:
            shutil.rmtree(folder, ignore_errors=True)


def _log_tail(log: Path) -> str:
    """Return the last non-empty line of a log file, or an empty string."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _died(proc: _Proc, what: str) -> ServeError:
    """Build the error for a child that exited while it should run."""
    code = proc.popen.returncode
    tail = _log_tail(proc.log)
    detail = f": {tail}" if tail else ""
    return ServeError(f"{what} exited with code {code}{detail} (full log: {proc.log})")


def _probe(url: str, method: str = "GET") -> int | None:
    """Request ``url`` once with a timeout; return the HTTP status or None if nothing answered."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (OSError, ValueError):
        return None


def _wait_http(proc: _Proc, url: str, what: str, method: str = "GET") -> None:
    """Wait until ``url`` answers 200, failing early if ``proc`` exits."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    delay = 0.05
    status: int | None = None
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise _died(proc, what)
        status = _probe(url, method)
        if status == 200:
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    answer = f"it answered {status}" if status else "nothing answered"
    raise ServeError(
        f"{what} did not become ready within {READY_TIMEOUT_S:.0f} s at {url} ({answer}); "
        f"see {proc.log}"
    )


# --------------------------------------------------------------------------------------------
# ports


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _check_port(port: int, option: str) -> None:
    """Raise ServeError unless ``port`` can be bound on 127.0.0.1."""
    if not 1 <= port <= 65535:
        raise ServeError(f"{option} {port} is not a TCP port: give 1-65535, or 0 for a free one")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ServeError(
                f"port {port} on 127.0.0.1 is in use: pick another {option} or leave it out "
                "for a free one"
            ) from None


# --------------------------------------------------------------------------------------------
# the world and its served copies


def _world_root(world_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Check that ``world_dir`` is a world; return its absolute path and its manifest."""
    root = Path(world_dir).expanduser()
    if not root.exists():
        raise ServeError(f"{world_dir} does not exist: create a world with `las world create DIR`")
    if not root.is_dir():
        raise ServeError(f"{world_dir} is not a folder: give the folder made by `las world create`")
    root = root.resolve()
    manifest_path = root / "world.json"
    if not manifest_path.is_file() and any((root / d).exists() for d in ("stac", "assets")):
        # `las world create` writes world.json last: this one was stopped midway
        raise ServeError(
            f"{world_dir} is an unfinished world (stac/ or assets/ but no world.json; "
            f"`las world create` was stopped midway?): delete it and run "
            f"`las world create {world_dir}` again"
        )
    if not manifest_path.is_file():
        raise ServeError(
            f"{world_dir} is not a world (no world.json): create one with `las world create DIR`"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise ServeError(
            f"{manifest_path} is unreadable ({err}): re-create the world with `las world create`"
        ) from None
    if not isinstance(manifest, dict):
        raise ServeError(f"{manifest_path} is not a JSON object: re-create the world")
    version = manifest.get("las_world_version")
    if version != WORLD_VERSION:
        raise ServeError(
            f"{manifest_path} has las_world_version {version!r}, this las serves "
            f"version {WORLD_VERSION}: re-create the world with this las"
        )
    return root, manifest


def _collection_ids(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Return the collection ids a world lists."""
    ids = manifest.get("collections")
    if not isinstance(ids, list) or not ids or not all(isinstance(c, str) and c for c in ids):
        raise ServeError(
            f"{root / 'world.json'} lists no collections: re-create the world with "
            "`las world create`"
        )
    for cid in ids:
        if "/" in cid or cid.startswith("."):
            raise ServeError(f"collection id {cid!r} in world.json is not a plain name")
    return ids


def _read_json(path: Path, what: str) -> Any:
    """Read a JSON file of the world, with a one-line error if it is missing or broken."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ServeError(
            f"{what} {path} is missing: re-create the world with `las world create`"
        ) from None
    except (OSError, ValueError) as err:
        raise ServeError(f"{what} {path} is unreadable ({err}): re-create the world") from None


def _absolute(href: str, assets_url: str) -> str:
    """Turn an href relative to the world root into a URL of the file server."""
    if urlsplit(href).scheme or href.startswith("/"):
        return href
    path = posixpath.normpath(href)
    if path == ".." or path.startswith("../"):
        return href
    return assets_url + quote(path, safe="/")


def _rewrite_assets(assets: Any, assets_url: str) -> None:
    """Rewrite the hrefs of an ``assets`` object (and alternate-assets hrefs) in place."""
    if not isinstance(assets, dict):
        return
    for asset in assets.values():
        if not isinstance(asset, dict):
            continue
        if isinstance(asset.get("href"), str):
            asset["href"] = _absolute(asset["href"], assets_url)
        alternates = asset.get("alternate")
        if isinstance(alternates, dict):
            for alternate in alternates.values():
                if isinstance(alternate, dict) and isinstance(alternate.get("href"), str):
                    alternate["href"] = _absolute(alternate["href"], assets_url)


def _rewrite_links(obj: dict[str, Any], assets_url: str) -> None:
    """Drop structural links (the API makes its own) and absolutise the others in place."""
    links = obj.get("links")
    kept = []
    if isinstance(links, list):
        for link in links:
            if not isinstance(link, dict) or link.get("rel") in _STRUCTURAL_RELS:
                continue
            if isinstance(link.get("href"), str):
                link["href"] = _absolute(link["href"], assets_url)
            kept.append(link)
    obj["links"] = kept


def _served_copies(
    root: Path, ids: list[str], assets_url: str
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Read each collection and its items, with hrefs pointing at the file server."""
    served = []
    for cid in ids:
        collection = _read_json(root / "stac" / "collections" / f"{cid}.json", "collection")
        if not isinstance(collection, dict) or collection.get("id") != cid:
            raise ServeError(
                f"stac/collections/{cid}.json does not hold collection {cid!r}: re-create the world"
            )
        _rewrite_links(collection, assets_url)
        _rewrite_assets(collection.get("assets"), assets_url)
        data = _read_json(root / "stac" / "items" / f"{cid}.json", "item file")
        features = data.get("features") if isinstance(data, dict) else data
        if not isinstance(features, list):
            raise ServeError(
                f"stac/items/{cid}.json is not a FeatureCollection: re-create the world"
            )
        seen: set[str] = set()
        duplicates: list[str] = []
        for item in features:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise ServeError(f"stac/items/{cid}.json holds an item without an id")
            if item["id"] in seen:
                duplicates.append(item["id"])
            seen.add(item["id"])
            if item.setdefault("collection", cid) != cid:
                raise ServeError(
                    f"stac/items/{cid}.json holds item {item['id']} of collection "
                    f"{item['collection']!r}: re-create the world"
                )
            _rewrite_links(item, assets_url)
            _rewrite_assets(item.get("assets"), assets_url)
        if duplicates:
            raise ServeError(
                f"stac/items/{cid}.json repeats {len(duplicates)} item ids (e.g. "
                f"{duplicates[0]}): item ids must be unique in a collection; re-create the world"
            )
        served.append((collection, features))
    return served


def _write_json(path: Path, value: Any, indent: int | None = None) -> None:
    """Write JSON atomically (a temporary file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=indent) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# serve.json


def _read_state(root: Path) -> dict[str, Any] | None:
    """Return the content of ``serve.json``, or None if there is none (or it is unreadable)."""
    try:
        state = json.loads((root / SERVE_JSON).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _state_entries(state: dict[str, Any]) -> list[tuple[str, int, int | None]]:
    """Return ``(name, pid, start)`` of the processes ``serve.json`` names, in stop order.

    That is the reverse of the start order: the STAC API, then PostgreSQL, then the files.
    """
    raw_pids, raw_starts = state.get("pids"), state.get("pid_starts")
    pids: dict[str, Any] = raw_pids if isinstance(raw_pids, dict) else {}
    starts: dict[str, Any] = raw_starts if isinstance(raw_starts, dict) else {}
    entries = []
    for name, pid in pids.items():
        # bool is an int: `true` would name pid 1
        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
            start = starts.get(name)
            entries.append((name, pid, start if isinstance(start, int) else None))
    return entries[::-1]


def _safe_pgdata(root: Path, state: dict[str, Any]) -> Path | None:
    """Return the cluster folder ``serve.json`` names if a serve of ``root`` made it, else None.

    ``serve.json`` may be stale, copied from another world or edited by hand: only
    ``WORLD/.serve/pg/data``, or a ``las-pgstac-*/data`` temporary folder recorded by a serve
    of this very folder (or of the place it was moved from), is ever removed.
    """
    pgdata = state.get("pgdata")
    if not isinstance(pgdata, str) or not pgdata:
        return None
    path = Path(pgdata)
    if path.name != "data" or ".." in path.parts:
        return None
    if path.parent == root / SERVE_DIR / "pg":
        return path
    origin = state.get("world")
    if (
        path.parent.parent == Path(tempfile.gettempdir())
        and path.parent.name.startswith("las-pgstac-")
        # served from this folder, or from where it was before a move (not a copy of another)
        and isinstance(origin, str)
        and (origin == str(root) or not Path(origin).exists())
    ):
        return path
    return None


def _remove_pgdata(root: Path, state: dict[str, Any]) -> None:
    """Remove the throwaway PostgreSQL cluster a serve of ``root`` used, if any."""
    pgdata = _safe_pgdata(root, state)
    if pgdata is not None:
        shutil.rmtree(pgdata.parent, ignore_errors=True)


Entry = tuple[str, int, int | None]
"""``(name, pid, start ticks)`` of a server process."""


def _owned(root: Path, state: dict[str, Any]) -> tuple[list[Entry], list[Entry]]:
    """Split the running processes that ``serve.json`` names into this world's and others'.

    A process is this world's only when it is provably the one the serve started: same boot,
    same start time (so a reused pid is not) and a working folder in this world (so a
    ``serve.json`` copied along with a served world names the other world's servers, which
    are left alone). Only a system without procfs falls back on the pid alone.

    Returns:
        ``(ours, others)``, both in stop order.

    """
    procfs = _has_procfs()
    boot = state.get("boot_id")
    same_boot = not isinstance(boot, str) or boot == _boot_id()
    # postgres works in its data folder; the others in the world, .serve or the pg parent
    dirs = {str(root), str(root / SERVE_DIR), str(root / SERVE_DIR / "pg" / "data")}
    pgdata = _safe_pgdata(root, state)
    if pgdata is not None:
        dirs.add(str(pgdata))
    ours: list[Entry] = []
    others: list[Entry] = []
    for name, pid, start in _state_entries(state):
        if not _alive(pid):
            continue
        mine = same_boot and (start is not None or not procfs) and _alive(pid, start)
        if mine:
            cwd = _proc_cwd(pid)
            mine = cwd is None or cwd in dirs
        (ours if mine else others).append((name, pid, start))
    return ours, others


def _server_name(pid: int) -> str | None:
    """Name the server ``serve_world`` starts that ``pid`` looks like (None: not one of ours).

    Every server leads its own process group; anything else is never taken for one.
    """
    try:
        if os.getpgid(pid) != pid:
            return None
    except OSError:
        return None
    args = _proc_cmdline(pid)
    if len(args) > 3 and args[3] == "_range" and Path(args[2]).name == "serve.py":
        return "assets"
    names = {Path(arg).name for arg in args[:2]}  # rustac may be `python .../bin/rustac`
    if "postgres" in names:
        return "postgres"
    if "rustac" in names or "stac_fastapi.pgstac.app:create_app" in args:
        return "stac"
    return None


def _orphans(world_dir: Path) -> tuple[list[Entry], list[Path]]:
    """Find the servers of a world folder that was deleted while served.

    The kernel names the working folder of such a process ``PATH (deleted)``; only processes
    that look like our servers and lead their own process group are returned, with the
    temporary PostgreSQL clusters they used.
    """
    path = Path(os.path.abspath(world_dir))
    with contextlib.suppress(OSError):
        path = path.parent.resolve() / path.name
    pgdata = path / SERVE_DIR / "pg" / "data"
    gone = {f"{d} (deleted)" for d in (path, path / SERVE_DIR, pgdata)}
    found: list[Entry] = []
    clusters: list[Path] = []
    try:
        listing = list(Path("/proc").iterdir())
    except OSError:
        return [], []
    for entry in listing:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        cwd = _proc_cwd(pid)
        name = _server_name(pid) if cwd in gone else None
        if name is None and cwd is not None and Path(cwd).parent.name.startswith("las-pgstac-"):
            # PostgreSQL on a temporary cluster: its folder names the world it served
            with contextlib.suppress(OSError):
                if (Path(cwd).parent / _PG_WORLD).read_text().strip() == str(path):
                    name = _server_name(pid)
                    clusters.append(Path(cwd).parent)
        if name is not None:
            found.append((name, pid, _proc_start_ticks(pid)))
    order = {"stac": 0, "postgres": 1, "assets": 2}  # stop order, as for a served world
    return sorted(found, key=lambda entry: order[entry[0]]), clusters


# --------------------------------------------------------------------------------------------
# pgstac prerequisites


def _pg_bindir() -> Path | None:
    """Return the folder with ``initdb`` and ``postgres`` (newest Debian version first)."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    return None


def _pg_sharedirs(bindir: Path) -> list[Path]:
    """Return the folders where this PostgreSQL may keep ``extension/*.control``."""
    dirs = []
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [str(pg_config), "--sharedir"], capture_output=True, text=True, timeout=10
            )
            if out.returncode == 0 and out.stdout.strip():
                dirs.append(Path(out.stdout.strip()))
    if bindir.parent.name.isdigit():  # Debian: /usr/lib/postgresql/15/bin
        dirs.append(Path("/usr/share/postgresql") / bindir.parent.name)
    dirs += [bindir.parent / "share" / "postgresql", bindir.parent / "share"]
    return dirs


def pgstac_missing() -> str | None:
    """Say why the pgstac server cannot run here, or return None when it can.

    Returns:
        A one-line reason (PostgreSQL, PostGIS, the ``postgres`` OS user or the Python packages
        missing) that says what to do, or None.

    """
    bindir = _pg_bindir()
    if bindir is None:
        return f"PostgreSQL (initdb, postgres) is not installed: {_MAKE_INSTALL}"
    if not any((d / "extension" / "postgis.control").is_file() for d in _pg_sharedirs(bindir)):
        return f"PostGIS is not installed for PostgreSQL in {bindir.parent}: {_MAKE_INSTALL}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"there is no `{PG_USER}` OS user to run PostgreSQL as: {_MAKE_INSTALL}"
    for module in ("stac_fastapi.pgstac", "pypgstac", "psycopg", "uvicorn"):
        try:
            spec = importlib.util.find_spec(module)
        except ImportError:
            spec = None
        if spec is None:
            return (
                f"Python package {module} is missing: pip install 'las-builder[pgstac]' "
                f"(or {_MAKE_INSTALL})"
            )
    return None


def _executable(name: str) -> str:
    """Find a console script of this environment (beside the interpreter) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ServeError(f"`{name}` is not installed: pip install las-builder (or {_MAKE_INSTALL})")
    return found


# --------------------------------------------------------------------------------------------
# starting the servers


def _start_range_server(
    started: _Started, root: Path, serve_dir: Path, port: int, latency_ms: float = 0.0
) -> _Proc:
    """Start the range-request file server and wait until it answers."""
    proc = started.spawn(
        "assets",
        [*_SELF, "_range", str(port), str(root), str(latency_ms)],
        serve_dir / "assets.log",
        cwd=root,
    )
    _wait_http(proc, f"http://127.0.0.1:{port}/world.json", "the asset file server", "HEAD")
    return proc


def _start_rustac(
    started: _Started, serve_dir: Path, port: int, files: list[Path]
) -> tuple[_Proc, str]:
    """Start ``rustac serve`` on the served copies; return it and the STAC API root."""
    url = f"http://127.0.0.1:{port}/"
    cmd = [_executable("rustac"), "serve", "--addr", f"127.0.0.1:{port}", *map(str, files)]
    proc = started.spawn("stac", cmd, serve_dir / "stac.log", cwd=serve_dir)
    _wait_http(proc, url, "the rustac STAC API")
    return proc, url


def _pg_dir_usable(path: Path, user: str | None) -> bool:
    """Tell whether ``user`` (None: ourselves) can create files in ``path``."""
    if user is None:
        return os.access(path, os.W_OK | os.X_OK)
    try:
        done = subprocess.run(
            ["test", "-w", str(path), "-a", "-x", str(path)],
            user=user,
            group=user,
            extra_groups=[],
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _pg_datadir(started: _Started, serve_dir: Path, user: str | None) -> tuple[Path, bool]:
    """Make an empty folder for the cluster, owned by ``user``; say if it is a temp folder.

    ``WORLD/.serve/pg`` is used when ``user`` can reach it; a world under a private folder
    (``/root``, pytest's ``/tmp/pytest-of-root``) gets a temporary folder instead.
    """
    parent = serve_dir / "pg"
    parent.mkdir()
    started.remove_dirs.append(parent)
    usable = True
    if user is not None:
        try:
            shutil.chown(parent, user, user)
        except OSError:  # e.g. a file system without owners
            usable = False
    if usable and _pg_dir_usable(parent, user):
        return parent / "data", False
    shutil.rmtree(parent, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="las-pgstac-"))
    started.remove_dirs.append(tmp)
    # which world this cluster serves: `las world stop` of a deleted world finds it by this
    (tmp / _PG_WORLD).write_text(str(serve_dir.parent) + "\n")
    if user is not None:
        shutil.chown(tmp, user, user)
    return tmp / "data", True


def _start_pgstac(
    started: _Started,
    serve_dir: Path,
    stac_port: int,
    pg_port: int,
    served: list[tuple[dict[str, Any], list[dict[str, Any]]]],
) -> tuple[str, Path, bool]:
    """Start PostgreSQL, load pgstac and start stac-fastapi-pgstac; return its root URL."""
    bindir = _pg_bindir()
    assert bindir is not None
    user = PG_USER if os.geteuid() == 0 else None
    pgdata, pgdata_tmp = _pg_datadir(started, serve_dir, user)

    initdb_log = serve_dir / "initdb.log"
    init = started.spawn(
        "initdb",
        [
            str(bindir / "initdb"),
            "-D",
            str(pgdata),
            "-U",
            PG_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        initdb_log,
        cwd=pgdata.parent,
        as_user=user,
    )
    try:
        init.popen.wait(timeout=READY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ServeError(f"initdb took over {READY_TIMEOUT_S:.0f} s: see {initdb_log}") from None
    started.procs.remove(init)
    if init.popen.returncode != 0:
        raise _died(init, "initdb")

    postgres = started.spawn(
        "postgres",
        [
            str(bindir / "postgres"),
            "-D",
            str(pgdata),
            "-p",
            str(pg_port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ],
        serve_dir / "postgres.log",
        cwd=pgdata.parent,
        as_user=user,
    )
    _wait_postgres(postgres, pg_port)

    collections_file = serve_dir / "stac" / "collections.ndjson"
    items_file = serve_dir / "stac" / "items.ndjson"
    with open(collections_file, "w") as out:
        for collection, _items in served:
            out.write(json.dumps(collection) + "\n")
    with open(items_file, "w") as out:
        for _collection, items in served:
            for item in items:
                out.write(json.dumps(item) + "\n")
    dsn = f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{pg_port}/{PG_DATABASE}"
    load = started.spawn(
        "pgload",
        [
            *_SELF,
            "_pgload",
            dsn,
            str(collections_file),
            str(items_file),
        ],
        serve_dir / "pgload.log",
        cwd=serve_dir,
    )
    try:
        load.popen.wait(timeout=LOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ServeError(
            f"loading pgstac took over {LOAD_TIMEOUT_S:.0f} s: see {load.log}"
        ) from None
    started.procs.remove(load)
    if load.popen.returncode != 0:
        raise _died(load, "pypgstac migrate/load")

    env = dict(os.environ)
    env.update(
        PGHOST="127.0.0.1",
        PGPORT=str(pg_port),
        PGUSER=PG_USER,
        PGPASSWORD=PG_PASSWORD,
        PGDATABASE=PG_DATABASE,
        # names read by stac-fastapi-pgstac before 4.0
        POSTGRES_HOST_READER="127.0.0.1",
        POSTGRES_HOST_WRITER="127.0.0.1",
        POSTGRES_PORT=str(pg_port),
        POSTGRES_USER=PG_USER,
        POSTGRES_PASS=PG_PASSWORD,
        POSTGRES_DBNAME=PG_DATABASE,
        STAC_FASTAPI_TITLE=f"las world {serve_dir.parent.name}",
        STAC_FASTAPI_DESCRIPTION="An offline LAS world served by stac-fastapi-pgstac",
        STAC_FASTAPI_LANDING_ID="las-world",
        STAC_FASTAPI_VERSION="1.0.0",
    )
    url = f"http://127.0.0.1:{stac_port}/"
    api = started.spawn(
        "stac",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "stac_fastapi.pgstac.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(stac_port),
            "--log-level",
            "warning",
        ],
        serve_dir / "stac.log",
        cwd=serve_dir,  # stac-fastapi reads a .env from its working folder: keep it ours
        env=env,
    )
    _wait_http(api, url, "the stac-fastapi-pgstac STAC API")
    return url, pgdata, pgdata_tmp


def _wait_postgres(proc: _Proc, port: int) -> None:
    """Wait until PostgreSQL accepts connections on 127.0.0.1:``port``."""
    import psycopg

    dsn = f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{PG_DATABASE}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise _died(proc, "PostgreSQL")
        try:
            with psycopg.connect(dsn, connect_timeout=int(PROBE_TIMEOUT_S)) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            time.sleep(0.05)
    raise ServeError(
        f"PostgreSQL did not accept connections within {READY_TIMEOUT_S:.0f} s: see {proc.log}"
    )


# --------------------------------------------------------------------------------------------
# public API


def serve_world(
    world_dir: Path,
    server: str = "rustac",
    detach: bool = False,
    *,
    stac_port: int = 0,
    assets_port: int = 0,
    latency_ms: float = 0.0,
) -> ServeInfo:
    """Serve a world: a STAC API and a range-request file server on 127.0.0.1.

    Writes ``WORLD/serve.json`` (URLs, pids) and prints both URLs. Item asset hrefs, relative
    to the world root on disk, are served as absolute URLs of the file server.

    Args:
        world_dir: A folder made by ``las world create``.
        server: ``rustac`` (in-memory, fast) or ``pgstac`` (PostgreSQL + stac-fastapi-pgstac).
        detach: Return once the servers answer and leave them running (stop them with
            ``stop_world``); otherwise block until Ctrl-C or SIGTERM, then stop them.
        stac_port: Port of the STAC API; 0 picks a free one.
        assets_port: Port of the file server; 0 picks a free one.
        latency_ms: The file server waits this long before each answer, like remote object
            storage (first-byte latency); 0 answers at loopback speed. For benchmarks.

    Returns:
        Where the servers answer.

    Raises:
        ServeError: Bad input, or a server failed to start (everything started is stopped).

    """
    if server not in SERVERS:
        raise ServeError(f"unknown server {server!r}: use one of {', '.join(SERVERS)}")
    if not 0 <= latency_ms <= 10_000:
        raise ServeError(f"--latency-ms must be between 0 and 10000, got {latency_ms}")
    root, manifest = _world_root(world_dir)
    ids = _collection_ids(root, manifest)

    state = _read_state(root)
    if (root / SERVE_JSON).exists():
        if state is not None and _owned(root, state)[0]:
            raise ServeError(
                f"{world_dir} is already being served at {state.get('stac_url')}: "
                f"run `las world stop {world_dir}` first"
            )
        if state is not None:  # stale: its processes are gone (or are not this world's)
            _remove_pgdata(root, state)
        (root / SERVE_JSON).unlink(missing_ok=True)

    if server == "pgstac":
        reason = pgstac_missing()
        if reason is not None:
            raise ServeError(reason)
    else:
        _executable("rustac")

    ports: dict[str, int] = {}
    for option, port in (("--stac-port", stac_port), ("--assets-port", assets_port)):
        if port:
            _check_port(port, option)
    if stac_port and stac_port == assets_port:
        raise ServeError(f"--stac-port and --assets-port are both {stac_port}: give two ports")
    free = iter(p for p in _free_ports(5) if p not in (stac_port, assets_port))
    ports["stac"] = stac_port or next(free)
    ports["assets"] = assets_port or next(free)
    ports["postgres"] = next(free)
    assets_url = f"http://127.0.0.1:{ports['assets']}/"

    serve_dir = root / SERVE_DIR
    served = _served_copies(root, ids, assets_url)
    files = []
    try:
        # a link or a file named .serve (a world copied from elsewhere) is replaced, never
        # followed: the served copies and the logs are written inside the world only
        if serve_dir.is_symlink() or (serve_dir.exists() and not serve_dir.is_dir()):
            serve_dir.unlink()
        shutil.rmtree(serve_dir, ignore_errors=True)
        (serve_dir / "stac" / "collections").mkdir(parents=True)
        (serve_dir / "stac" / "items").mkdir(parents=True)
        for collection, _items in served:
            path = serve_dir / "stac" / "collections" / f"{collection['id']}.json"
            _write_json(path, collection)
            files.append(path)
        for collection, items in served:
            path = serve_dir / "stac" / "items" / f"{collection['id']}.json"
            _write_json(path, {"type": "FeatureCollection", "features": items})
            files.append(path)
    except OSError as err:
        raise ServeError(
            f"cannot write {serve_dir} ({err.strerror or err}): serving writes .serve/ and "
            f"serve.json into the world folder; make {world_dir} writable or serve a copy"
        ) from None

    started = _Started()
    pgdata: Path | None = None
    pgdata_tmp = False
    try:
        _start_range_server(started, root, serve_dir, ports["assets"], latency_ms)
        if server == "rustac":
            _proc, stac_url = _start_rustac(started, serve_dir, ports["stac"], files)
        else:
            stac_url, pgdata, pgdata_tmp = _start_pgstac(
                started, serve_dir, ports["stac"], ports["postgres"], served
            )
        info = ServeInfo(
            stac_url=stac_url,
            assets_url=assets_url,
            server=server,
            pids={p.name: p.popen.pid for p in started.procs},
        )
        state = {
            "server": server,
            "stac_url": stac_url,
            "assets_url": assets_url,
            "pids": info.pids,
            "pid_starts": {p.name: p.start for p in started.procs},
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "world": str(root),
            "logs": str(serve_dir),
            "pgdata": str(pgdata) if pgdata else None,
            "pgdata_tmp": pgdata_tmp,
            "latency_ms": latency_ms,
            "boot_id": _boot_id(),
        }
        _write_json(root / SERVE_JSON, state, indent=1)
    except BaseException:
        started.stop()
        (root / SERVE_JSON).unlink(missing_ok=True)
        raise

    print(f"STAC API ({server}): {stac_url}", flush=True)
    print(f"assets:           {assets_url}", flush=True)
    if detach:
        _DETACHED.update((p.popen.pid, p.popen) for p in started.procs)
        print(
            f"serving {world_dir} in the background; stop with `las world stop {world_dir}`",
            flush=True,
        )
        return info
    print(f"serving {world_dir}; press Ctrl-C to stop", flush=True)
    _block_until_stopped(root, started, info)
    return info


def _block_until_stopped(root: Path, started: _Started, info: ServeInfo) -> None:
    """Wait for Ctrl-C, SIGTERM, ``las world stop`` or a dying server; then stop everything."""
    handlers: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    if threading.current_thread() is threading.main_thread():

        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        # SIGINT too: a shell starts background jobs with SIGINT ignored
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, interrupt)
    failure: ServeError | None = None
    try:
        while True:
            time.sleep(0.5)
            state = _read_state(root)
            if state is None or state.get("pids") != info.pids:
                break  # `las world stop` took over
            dead = [p for p in started.procs if p.popen.poll() is not None]
            if dead:
                time.sleep(0.2)
                state = _read_state(root)
                if state is None or state.get("pids") != info.pids:
                    break
                failure = _died(dead[0], f"the {dead[0].name} server")
                break
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        for sig in handlers:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        started.stop()
        state = _read_state(root)
        if state is not None and state.get("pids") == info.pids:
            _remove_pgdata(root, state)
            (root / SERVE_JSON).unlink(missing_ok=True)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if failure is not None:
        raise failure


def stop_world(world_dir: Path) -> None:
    """Stop the servers that ``serve_world`` started for a world and remove ``serve.json``.

    Only processes that are provably this world's servers are signalled (see ``_owned``): a
    pid reused by another process, or a ``serve.json`` copied from another served world, is
    left alone. A world folder deleted while served has its orphaned servers found and stopped.

    Args:
        world_dir: A world folder being served.

    Raises:
        ServeError: The folder does not exist or nothing is being served there.

    """
    root = Path(world_dir).expanduser()
    if not root.exists():
        orphans, clusters = _orphans(root)
        if orphans:
            _terminate(orphans)
            for cluster in clusters:
                shutil.rmtree(cluster, ignore_errors=True)
            still = [str(pid) for _name, pid, start in orphans if _alive(pid, start)]
            if still:
                raise ServeError(
                    f"{world_dir} was deleted while served; could not stop its servers "
                    f"(pids {', '.join(still)}): kill them by hand"
                )
            print(f"{world_dir} was deleted while served; stopped its {len(orphans)} servers")
            return
        raise ServeError(f"{world_dir} does not exist: give the folder of a served world")
    if not root.is_dir():
        raise ServeError(f"{world_dir} is not a folder: give the folder of a served world")
    root = root.resolve()
    path = root / SERVE_JSON
    if not path.exists():
        raise ServeError(
            f"{world_dir} is not being served (no serve.json): nothing to stop; "
            f"start it with `las world serve {world_dir}`"
        )
    state = _read_state(root) or {}
    live, others = _owned(root, state)
    path.unlink(missing_ok=True)  # first: a blocking `las world serve` then exits quietly
    _terminate(live)
    for _name, pid, _start in _state_entries(state):
        popen = _DETACHED.pop(pid, None)
        if popen is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                popen.wait(timeout=1.0)
    still = [name for name, pid, start in live if _alive(pid, start)]
    _remove_pgdata(root, state)
    if still:
        raise ServeError(
            f"could not stop {', '.join(still)} (pids "
            f"{', '.join(str(p) for n, p, _ in live if n in still)}): kill them by hand"
        )
    if live:
        print(f"stopped {len(live)} server processes of {world_dir}")
    else:
        print(f"{world_dir} had no running servers; removed its stale serve.json")
    if others:
        named = ", ".join(f"{pid} ({name})" for name, pid, _start in others)
        origin = state.get("world")
        copied = f", or serve.json was copied from {origin}" if origin != str(root) else ""
        print(
            f"left alone pids {named}: they are not servers of {world_dir} "
            f"(the pids were reused{copied})"
        )


# --------------------------------------------------------------------------------------------
# child entry points: `python -P serve.py _range|_pgload ...`


def _parse_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """Parse a single-range ``Range`` header against a file of ``size`` bytes.

    Returns:
        ``(first, last)`` inclusive; None when the range cannot be satisfied (416); False when
        the header is malformed or asks for several ranges (then it is ignored: 200).

    """
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return False
    first_s, dash, last_s = spec.strip().partition("-")
    if not dash:
        return False
    # RFC 9110 allows only ASCII digits; int() would also take "1_0", "+5" or " 5"
    if not all(part == "" or (part.isascii() and part.isdigit()) for part in (first_s, last_s)):
        return False
    if first_s == "":  # suffix: the last N bytes
        if last_s == "":
            return False
        length = int(last_s)
        if length <= 0 or size == 0:  # nothing to send: unsatisfiable, not bytes 0--1
            return None
        return max(size - length, 0), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return False
    if first >= size:
        return None
    return first, min(last, size - 1)


STATS_PATH = "/_stats"
"""Path of the file server's request counters."""


def _range_main(port: int, directory: str, latency_ms: float = 0.0) -> None:
    """Serve ``directory`` on 127.0.0.1:``port`` with HTTP Range support until killed.

    With ``latency_ms`` every answer waits that long first (one thread per connection, so
    concurrent requests wait concurrently, as they do against remote object storage).
    """
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    if TYPE_CHECKING:  # RangeHTTPServer ships no types; its handler subclasses this one
        from http.server import SimpleHTTPRequestHandler as RangeRequestHandler
    else:
        from RangeHTTPServer import RangeRequestHandler

    stats = {"requests": 0, "bytes": 0}
    stats_lock = threading.Lock()
    root = os.path.realpath(directory)

    class Handler(RangeRequestHandler):
        """RangeRequestHandler with suffix ranges, 416, keep-alive and hidden files refused.

        ``GET /_stats`` answers the requests served and bytes sent so far (JSON), so
        benchmarks can count what a build asked of its "remote" storage.
        """

        protocol_version = "HTTP/1.1"  # keep-alive: GDAL makes many small range requests
        # Small range replies otherwise wait ~40 ms for the client's delayed ACK (Nagle).
        disable_nagle_algorithm = True
        timeout = 120

        def send_head(self) -> BinaryIO | None:
            self.range = None
            # The path as translate_path() will read it: urlsplit() takes "//.serve/x" for a
            # host and path "/x", which would slip a hidden file past the checks below.
            url_path = self.path.split("?", 1)[0].split("#", 1)[0]
            if url_path == STATS_PATH:
                with stats_lock:
                    body = json.dumps(stats).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                return io.BytesIO(body)
            with stats_lock:
                stats["requests"] += 1
            if latency_ms > 0:
                time.sleep(latency_ms / 1000)
            decoded = unquote(url_path)
            if any(ord(char) < 32 or char in "\\\x7f" for char in decoded):
                # a NUL made open() raise ValueError: the connection died with a traceback
                self.send_error(400, "Bad path")
                return None
            parts = decoded.split("/")
            if any(part.startswith(".") for part in parts if part):  # .serve/ holds pg data
                self.send_error(404, "File not found")
                return None
            if posixpath.normpath("/" + decoded).strip("/") == SERVE_JSON:
                # pids and local paths, for `las world stop`: not the clients' business
                self.send_error(404, "File not found")
                return None
            path = self.translate_path(self.path)
            real = os.path.realpath(path)
            if real != root and not real.startswith(root + os.sep):
                # a symbolic link in the world that points out of it: never serve it
                self.log_message("refused %s: it leads out of the world", decoded)
                self.send_error(404, "File not found")
                return None
            header = self.headers.get("Range")
            if header is None or os.path.isdir(path):
                return SimpleHTTPRequestHandler.send_head(self)
            try:
                handle = open(path, "rb")  # closed by the caller
            except OSError:
                self.send_error(404, "File not found")
                return None
            stat = os.fstat(handle.fileno())
            span = _parse_range(header, stat.st_size)
            if span is False:
                handle.close()
                return SimpleHTTPRequestHandler.send_head(self)
            if span is None:
                handle.close()
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{stat.st_size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            assert isinstance(span, tuple)
            first, last = span
            self.range = (first, last)
            self.send_response(206)
            self.send_header("Content-Type", self.guess_type(path))
            self.send_header("Content-Range", f"bytes {first}-{last}/{stat.st_size}")
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Last-Modified", self.date_time_string(int(stat.st_mtime)))
            self.end_headers()
            return handle

        def copyfile(self, source: Any, outputfile: Any) -> None:
            if not self.range:
                SimpleHTTPRequestHandler.copyfile(self, source, outputfile)
                return
            first, last = self.range
            with stats_lock:
                stats["bytes"] += last - first + 1
            source.seek(first)
            left = last - first + 1
            while left > 0:
                chunk = source.read(min(left, 1 << 16))
                if not chunk:
                    break
                outputfile.write(chunk)
                left -= len(chunk)

        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            if isinstance(code, int) and code >= 400:
                super().log_request(code, size)

    class Server(ThreadingHTTPServer):
        """A threading server that does not log a traceback when a client hangs up."""

        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
                return  # a client that stops reading mid-body (GDAL does) is no error
            super().handle_error(request, client_address)

    handler = functools.partial(Handler, directory=directory)
    with Server(("127.0.0.1", port), handler) as httpd:
        httpd.daemon_threads = True
        print(f"serving {directory} on http://127.0.0.1:{port}/", flush=True)
        httpd.serve_forever()


def _pgload_main(dsn: str, collections: str, items: str) -> None:
    """Migrate a fresh database to pgstac and load collections and items (ndjson files)."""
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods
    from pypgstac.migrate import Migrate

    started = time.monotonic()
    step = "migrate"
    try:
        with PgstacDB(dsn=dsn) as db:
            print(f"pgstac migrated to {Migrate(db).run_migration()}", flush=True)
            loader = Loader(db=db)
            step = "load collections"
            loader.load_collections(collections, Methods.insert)
            step = "load items"
            loader.load_items(items, Methods.insert)
    except Exception as err:
        import traceback

        traceback.print_exc()
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        # the last line is what `las world serve` shows
        print(f"{step} failed: {type(err).__name__}: {first}", flush=True)
        raise SystemExit(1) from None
    print(f"loaded in {time.monotonic() - started:.1f} s", flush=True)


def _main(argv: list[str]) -> int:
    """Run a child entry point."""
    usage = "usage: python -P serve.py _range PORT DIR [LATENCY_MS] | _pgload DSN COLLECTIONS ITEMS"
    if len(argv) in (3, 4) and argv[0] == "_range":
        _range_main(int(argv[1]), argv[2], float(argv[3]) if len(argv) == 4 else 0.0)
        return 0
    if len(argv) == 4 and argv[0] == "_pgload":
        _pgload_main(argv[1], argv[2], argv[3])
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
