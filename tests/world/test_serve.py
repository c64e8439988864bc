"""`las world serve` / `las world stop`: a real STAC API and a range server on loopback.

The tests build their own tiny world: two collections, four COG-backed items in EPSG:32632.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import requests
from pystac_client import Client
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window

from las_builder.world import serve as serve_mod
from las_builder.world.serve import ServeError, ServeInfo, pgstac_missing, serve_world, stop_world

S2 = "sentinel-2-l2a"
WC = "esa-worldcover"
SIZE = 256
RES = 10.0
CRS = "EPSG:32632"

# id -> (collection, UTM upper-left x, upper-left y, datetime)
ITEMS: dict[str, tuple[str, float, float, str]] = {
    "s2-a-0605": (S2, 500_000.0, 5_800_000.0, "2021-06-05T10:30:00Z"),
    "s2-b-0605": (S2, 520_000.0, 5_800_000.0, "2021-06-05T10:30:00Z"),
    "s2-a-0710": (S2, 500_000.0, 5_800_000.0, "2021-07-10T10:30:00Z"),
    "wc-a-2021": (WC, 500_000.0, 5_800_000.0, "2021-01-01T00:00:00Z"),
}


def pixels(item_id: str) -> np.ndarray:
    """Return the deterministic uint16 band written for ``item_id``."""
    seed = sum(map(ord, item_id))
    base = np.arange(SIZE * SIZE, dtype=np.uint32).reshape(SIZE, SIZE)
    return ((base * 7 + seed) % 65521).astype(np.uint16)


def lonlat_bbox(x: float, y: float) -> list[float]:
    """Return the WGS84 bbox of the tile whose upper-left corner is (x, y)."""
    return list(transform_bounds(CRS, "EPSG:4326", x, y - SIZE * RES, x + SIZE * RES, y))


def _item(item_id: str) -> dict[str, Any]:
    cid, x, y, when = ITEMS[item_id]
    utm = {
        "type": "Polygon",
        "coordinates": [
            [
                (x, y),
                (x + SIZE * RES, y),
                (x + SIZE * RES, y - SIZE * RES),
                (x, y - SIZE * RES),
                (x, y),
            ]
        ],
    }
    geometry = transform_geom(CRS, "EPSG:4326", utm)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": item_id,
        "collection": cid,
        "geometry": {"type": "Polygon", "coordinates": geometry["coordinates"]},
        "bbox": lonlat_bbox(x, y),
        "properties": {"datetime": when},
        "links": [
            {"rel": "self", "href": f"stac/items/{cid}.json#{item_id}"},
            {"rel": "license", "href": "truth/LICENSE.txt"},
        ],
        "assets": {
            "data": {
                "href": f"assets/{cid}/{item_id}_data.tif",
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
            }
        },
    }


def make_world(root: Path) -> Path:
    """Write a tiny world (world.json, STAC, COGs) into ``root`` and return it."""
    root.mkdir(parents=True, exist_ok=True)
    collections = [S2, WC]
    (root / "world.json").write_text(
        json.dumps({"las_world_version": 1, "collections": collections})
    )
    (root / "stac" / "collections").mkdir(parents=True)
    (root / "stac" / "items").mkdir(parents=True)
    (root / "truth").mkdir()
    (root / "truth" / "LICENSE.txt").write_text("CC-BY-4.0\n")
    for cid in collections:
        ids = [i for i, spec in ITEMS.items() if spec[0] == cid]
        items = [_item(i) for i in ids]
        for item in items:
            path = root / item["assets"]["data"]["href"]
            path.parent.mkdir(parents=True, exist_ok=True)
            _, x, y, _ = ITEMS[item["id"]]
            with rasterio.open(
                path,
                "w",
                driver="COG",
                width=SIZE,
                height=SIZE,
                count=1,
                dtype="uint16",
                crs=CRS,
                transform=from_origin(x, y, RES, RES),
                blocksize=128,
            ) as dst:
                dst.write(pixels(item["id"]), 1)
        bboxes = np.array([item["bbox"] for item in items])
        extent = [*bboxes[:, :2].min(axis=0).tolist(), *bboxes[:, 2:].max(axis=0).tolist()]
        collection = {
            "type": "Collection",
            "stac_version": "1.0.0",
            "stac_extensions": [],
            "id": cid,
            "description": f"test collection {cid}",
            "license": "CC-BY-4.0",
            "extent": {
                "spatial": {"bbox": [extent]},
                "temporal": {"interval": [["2021-01-01T00:00:00Z", "2021-12-31T23:59:59Z"]]},
            },
            "links": [
                {"rel": "self", "href": f"stac/collections/{cid}.json"},
                {"rel": "root", "href": "stac/catalog.json"},
            ],
        }
        (root / "stac" / "collections" / f"{cid}.json").write_text(json.dumps(collection))
        (root / "stac" / "items" / f"{cid}.json").write_text(
            json.dumps({"type": "FeatureCollection", "features": items})
        )
    return root


@pytest.fixture(scope="session")
def world_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny world, written once per session; copy it before serving."""
    return make_world(tmp_path_factory.mktemp("template") / "world")


LAS = str(Path(sys.executable).parent / "las")
SERVERS = [
    pytest.param("rustac", id="rustac"),
    pytest.param("pgstac", id="pgstac", marks=pytest.mark.pgstac),
]


def _needs(server: str) -> None:
    if server == "pgstac":
        reason = pgstac_missing()
        if reason:
            pytest.skip(f"pgstac server unavailable here: {reason}")


def _inner(item_id: str, margin: float = 0.005) -> list[float]:
    """A small bbox well inside the footprint of ``item_id``."""
    _, x, y, _ = ITEMS[item_id]
    west, south, east, north = lonlat_bbox(x, y)
    return [west + margin, south + margin, east - margin, north - margin]


BOTH_TILES = [8.9, 52.2, 9.4, 52.5]


def _running(pid: int) -> bool:
    """Tell whether ``pid`` runs (reaped if it is our exited child; other zombies are dead)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if stat[stat.rfind(")") + 2] in "ZX":  # a zombie leader with live threads is exiting
        try:
            return len(os.listdir(f"/proc/{pid}/task")) > 1
        except OSError:
            return False
    return True


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if text in cmdline and _running(int(entry.name)):
            found.append(int(entry.name))
    return found


def _children_of(pids: set[int]) -> list[int]:
    """Pids of live processes whose parent is in ``pids`` (e.g. postgres backends)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        if ppid in pids and _running(int(entry.name)):
            found.append(int(entry.name))
    return found


def _copy(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


@pytest.fixture(scope="module", params=SERVERS)
def served(
    request: pytest.FixtureRequest,
    world_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, ServeInfo]]:
    """A world served in the background by each STAC server."""
    server = request.param
    _needs(server)
    world = _copy(world_template, tmp_path_factory.mktemp(server) / "world")
    info = serve_world(world, server=server, detach=True)
    yield world, info
    if (world / "serve.json").exists():
        stop_world(world)


# ---------------------------------------------------------------------------------------------
# searching and reading through the served world


@pytest.mark.parametrize(
    ("collections", "bbox", "when", "expected"),
    [
        ([S2], _inner("s2-a-0605"), "2021-06-01/2021-06-30", {"s2-a-0605"}),
        ([S2], BOTH_TILES, "2021-06-01/2021-06-30", {"s2-a-0605", "s2-b-0605"}),
        ([S2], _inner("s2-a-0605"), None, {"s2-a-0605", "s2-a-0710"}),
        ([S2], _inner("s2-b-0605"), "2021-07-01/2021-07-31", set()),
        ([WC], _inner("s2-a-0605"), None, {"wc-a-2021"}),
        ([S2, WC], _inner("s2-a-0605"), "2021-01-01/2021-06-30", {"s2-a-0605", "wc-a-2021"}),
    ],
)
def test_search_returns_exactly_the_right_items(
    served: tuple[Path, ServeInfo],
    collections: list[str],
    bbox: list[float],
    when: str | None,
    expected: set[str],
) -> None:
    _world, info = served
    client = Client.open(info.stac_url)
    search = client.search(collections=collections, bbox=bbox, datetime=when, max_items=100)
    assert {item.id for item in search.items()} == expected


def test_collections_listed(served: tuple[Path, ServeInfo]) -> None:
    _world, info = served
    client = Client.open(info.stac_url)
    assert {c.id for c in client.get_collections()} == {S2, WC}


def test_asset_hrefs_are_absolute_and_readable_with_rasterio(
    served: tuple[Path, ServeInfo],
) -> None:
    _world, info = served
    client = Client.open(info.stac_url)
    (item,) = client.search(
        collections=[S2], bbox=_inner("s2-b-0605"), datetime="2021-06-05"
    ).items()
    href = item.assets["data"].href
    assert href == f"{info.assets_url}assets/{S2}/s2-b-0605_data.tif"
    links = {link.rel: link.href for link in item.links}
    assert links["license"] == f"{info.assets_url}truth/LICENSE.txt"
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(href) as src:
        assert src.crs.to_epsg() == 32632
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        block = src.read(1, window=Window(30, 10, 16, 8))
    np.testing.assert_array_equal(block, pixels("s2-b-0605")[10:18, 30:46])


def test_range_requests_answer_206(served: tuple[Path, ServeInfo]) -> None:
    world, info = served
    url = f"{info.assets_url}assets/{S2}/s2-a-0605_data.tif"
    raw = (world / "assets" / S2 / "s2-a-0605_data.tif").read_bytes()
    part = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=5)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(raw)}"
    assert part.content == raw[100:200]
    one = requests.get(url, headers={"Range": "bytes=0-0"}, timeout=5)
    assert (one.status_code, one.content) == (206, raw[:1])
    tail = requests.get(url, headers={"Range": "bytes=-10"}, timeout=5)
    assert (tail.status_code, tail.content) == (206, raw[-10:])
    beyond = requests.get(url, headers={"Range": f"bytes={len(raw)}-"}, timeout=5)
    assert beyond.status_code == 416
    whole = requests.get(url, timeout=5)
    assert (whole.status_code, whole.content) == (200, raw)
    # the served copies and logs (and a pgstac cluster) under .serve/ are not published
    assert requests.get(f"{info.assets_url}.serve/stac.log", timeout=5).status_code == 404


def test_serve_json_records_the_servers(served: tuple[Path, ServeInfo]) -> None:
    world, info = served
    state = json.loads((world / "serve.json").read_text())
    assert state["stac_url"] == info.stac_url
    assert state["assets_url"] == info.assets_url
    assert state["server"] == info.server
    assert state["pids"] == info.pids
    assert all(_running(pid) for pid in info.pids.values())
    # the world on disk keeps its relative hrefs; only the served copies are rewritten
    on_disk = json.loads((world / "stac" / "items" / f"{S2}.json").read_text())
    assert on_disk["features"][0]["assets"]["data"]["href"].startswith("assets/")


def test_serving_twice_says_stop_first(served: tuple[Path, ServeInfo]) -> None:
    world, info = served
    with pytest.raises(ServeError, match="already being served") as err:
        serve_world(world, server="rustac", detach=True)
    assert "las world stop" in str(err.value)
    assert json.loads((world / "serve.json").read_text())["pids"] == info.pids


# ---------------------------------------------------------------------------------------------
# stopping


@pytest.mark.parametrize("server", SERVERS)
def test_stop_leaves_no_process(server: str, world_template: Path, tmp_path: Path) -> None:
    _needs(server)
    world = _copy(world_template, tmp_path / "world")
    info = serve_world(world, server=server, detach=True)
    pids = set(info.pids.values())
    assert all(_running(pid) for pid in pids)
    pgdata = json.loads((world / "serve.json").read_text())["pgdata"]
    if server == "pgstac":
        assert "postgres" in info.pids
        assert Path(pgdata, "PG_VERSION").is_file()
    stop_world(world)
    assert not [pid for pid in pids if _running(pid)]
    assert not _children_of(pids)
    assert not _processes_mentioning(str(world))
    assert not (world / "serve.json").exists()
    assert not (world / ".serve" / "pg").exists()
    if pgdata:  # the throwaway cluster is gone (a temp folder when WORLD is private)
        assert not Path(pgdata).parent.exists()
    with pytest.raises(ServeError, match="not being served"):
        stop_world(world)


def test_failed_start_stops_what_started(
    world_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = _copy(world_template, tmp_path / "world")
    # the file server starts, then "rustac" exits at once
    monkeypatch.setattr(serve_mod, "_executable", lambda name: shutil.which("false"))
    with pytest.raises(ServeError, match="rustac STAC API exited with code 1"):
        serve_world(world, server="rustac", detach=True)
    assert not _processes_mentioning(str(world))
    assert not (world / "serve.json").exists()


def test_stale_serve_json_is_cleaned_up(world_template: Path, tmp_path: Path) -> None:
    world = _copy(world_template, tmp_path / "world")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (world / "serve.json").write_text(
        json.dumps(
            {"server": "rustac", "stac_url": "http://127.0.0.1:9/", "pids": {"stac": dead.pid}}
        )
    )
    info = serve_world(world, server="rustac", detach=True)
    try:
        assert json.loads((world / "serve.json").read_text())["pids"] == info.pids
    finally:
        stop_world(world)


# ---------------------------------------------------------------------------------------------
# bad input


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="does not exist.*las world create"):
        serve_world(tmp_path / "nope")
    with pytest.raises(ServeError, match="does not exist"):
        stop_world(tmp_path / "nope")


def test_folder_that_is_not_a_world(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match=r"not a world \(no world.json\).*las world create DIR"):
        serve_world(tmp_path)
    with pytest.raises(ServeError, match="not being served"):
        stop_world(tmp_path)


def test_duplicate_item_ids(world_template: Path, tmp_path: Path) -> None:
    world = _copy(world_template, tmp_path / "world")
    path = world / "stac" / "items" / f"{S2}.json"
    items = json.loads(path.read_text())
    items["features"][1]["id"] = items["features"][0]["id"]
    path.write_text(json.dumps(items))
    with pytest.raises(ServeError, match=f"items/{S2}.json repeats 1 item ids.*unique"):
        serve_world(world, detach=True)
    assert not _processes_mentioning(str(world))


def test_unknown_server(world_template: Path) -> None:
    with pytest.raises(ServeError, match="unknown server 'geoserver': use one of rustac, pgstac"):
        serve_world(world_template, server="geoserver")


def test_pgstac_without_postgis_says_make_install(
    world_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve_mod, "_pg_sharedirs", lambda bindir: [])
    if serve_mod._pg_bindir() is None:
        expected = "PostgreSQL .* is not installed: run `make install` as root"
    else:
        expected = "PostGIS is not installed .*: run `make install` as root"
    with pytest.raises(ServeError, match=expected):
        serve_world(world_template, server="pgstac", detach=True)
    assert not (world_template / "serve.json").exists()


def test_port_in_use(world_template: Path, tmp_path: Path) -> None:
    world = _copy(world_template, tmp_path / "world")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match=f"port {port} on 127.0.0.1 is in use.*--stac-port"):
            serve_world(world, detach=True, stac_port=port)
        with pytest.raises(ServeError, match=f"port {port} .*in use.*--assets-port"):
            serve_world(world, detach=True, assets_port=port)
    assert not (world / "serve.json").exists()
    assert not _processes_mentioning(str(world))


def test_given_ports_are_used(world_template: Path, tmp_path: Path) -> None:
    world = _copy(world_template, tmp_path / "world")
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        stac_port, assets_port = a.getsockname()[1], b.getsockname()[1]
    info = serve_world(world, detach=True, stac_port=stac_port, assets_port=assets_port)
    try:
        assert info.stac_url == f"http://127.0.0.1:{stac_port}/"
        assert info.assets_url == f"http://127.0.0.1:{assets_port}/"
    finally:
        stop_world(world)


# ---------------------------------------------------------------------------------------------
# the CLI


def test_cli_detach_then_stop(world_template: Path, tmp_path: Path) -> None:
    world = _copy(world_template, tmp_path / "world")
    started = subprocess.run(
        [LAS, "world", "serve", str(world), "--detach"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    state = json.loads((world / "serve.json").read_text())
    assert state["stac_url"] in started.stdout and state["assets_url"] in started.stdout
    pids = set(state["pids"].values())
    assert all(_running(pid) for pid in pids)  # they outlive the CLI
    assert requests.get(state["stac_url"], timeout=5).status_code == 200

    stopped = subprocess.run(
        [LAS, "world", "stop", str(world)], capture_output=True, text=True, timeout=60
    )
    assert stopped.returncode == 0, stopped.stderr
    assert not [pid for pid in pids if _running(pid)]
    assert not (world / "serve.json").exists()

    again = subprocess.run(
        [LAS, "world", "stop", str(world)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0
    assert "not being served" in again.stderr


def test_cli_bad_folder_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [LAS, "world", "serve", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {tmp_path} is not a world (no world.json): create one with `las world create DIR`"
    )


def test_cli_blocking_serve_stops_on_sigterm(world_template: Path, tmp_path: Path) -> None:
    world = _copy(world_template, tmp_path / "world")
    proc = subprocess.Popen(
        [LAS, "world", "serve", str(world)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (world / "serve.json").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "serve.json never appeared"
            time.sleep(0.05)
        state = json.loads((world / "serve.json").read_text())
        assert requests.get(state["stac_url"], timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert state["stac_url"] in out
    assert not [pid for pid in state["pids"].values() if _running(pid)]
    assert not (world / "serve.json").exists()


def test_latency_delays_each_answer_and_stats_count_them(
    world_template: Path, tmp_path: Path
) -> None:
    world = _copy(world_template, tmp_path / "world")
    info = serve_world(world, server="rustac", detach=True, latency_ms=150)
    try:
        assert json.loads((world / "serve.json").read_text())["latency_ms"] == 150
        url = f"{info.assets_url}assets/{S2}/s2-a-0605_data.tif"
        stats_url = info.assets_url.rstrip("/") + serve_mod.STATS_PATH
        before = requests.get(stats_url, timeout=5).json()
        started = time.perf_counter()
        part = requests.get(url, headers={"Range": "bytes=0-99"}, timeout=5)
        elapsed = time.perf_counter() - started
        assert part.status_code == 206
        assert elapsed >= 0.15  # at least the injected latency (an upper bound would be flaky)
        after = requests.get(stats_url, timeout=5).json()
        assert after["requests"] - before["requests"] == 1  # /_stats itself is not counted
        assert after["bytes"] - before["bytes"] == 100
    finally:
        stop_world(world)


def test_latency_out_of_range_is_refused(world_template: Path, tmp_path: Path) -> None:
    world = _copy(world_template, tmp_path / "world")
    with pytest.raises(ServeError, match="--latency-ms"):
        serve_world(world, detach=True, latency_ms=-1)
    assert not (world / "serve.json").exists()
