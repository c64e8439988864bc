"""Helpers of the fault tests: the proxied world, build arguments, digests, item lookups."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "demo.yaml"
TOKEN = "sv=2024-05-04&sp=r&sig=FAKESIGNATURE0TOKEN%3D"
"""A SAS-like token the STAC proxy appends to every asset href: it must never leak."""
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEACCESSKEY0ID",
    "AWS_SECRET_ACCESS_KEY": "fake/Secret+Access0Key0That0Must0Not0Leak",
}
SECRETS = ("FAKESIGNATURE0TOKEN", "sig=", *FAKE_AWS.values())


@dataclass
class Proxied:
    """The world's STAC API and asset server, each behind a :class:`FaultProxy`."""

    stac: FaultProxy
    assets: FaultProxy
    world: Path
    # item id -> {asset key: new href, or None to remove the asset}
    edits: dict[str, dict[str, str | None]] = field(default_factory=dict)

    generation: int = 0

    def reset(self) -> None:
        """No faults, no edits, and new asset URLs (a new ``g=`` in the query).

        GDAL caches what it read by URL for the life of the process, so without new URLs a
        build would read the previous build's bytes from memory and never meet the faults.
        """
        self.stac.set_faults([])
        self.assets.set_faults([])
        self.edits.clear()
        self.generation += 1

    def href(self, path: str) -> str:
        """The href a build sees for the world file ``path`` (without its token)."""
        return f"{self.assets.url}{path}"


def edit_items(data: Any, edits: dict[str, dict[str, str | None]]) -> None:
    if isinstance(data, list):
        for value in data:
            edit_items(value, edits)
    elif isinstance(data, dict):
        if isinstance(data.get("assets"), dict) and data.get("id") in edits:
            for key, href in edits[data["id"]].items():
                if href is None:
                    data["assets"][f"{key}_gone"] = data["assets"].pop(key)
                else:
                    data["assets"][key]["href"] = href
        for value in data.values():
            edit_items(value, edits)


def build_args(stac_url: str, out: Path, *extra: str) -> list[str]:
    sets = [
        f"stac.url={stac_url}",
        "sample.size_px=32",
        "sample.count=12",  # 3 shards; all three regions, both sides of 180
        f"output.path={out}",
        "output.samples_per_shard=4",
        "imagery.naip.factor=4",
        *extra,
    ]
    return [str(RECIPE)] + [a for s in sets for a in ("--set", s)]


def zarr_digest(store: Path) -> dict[str, str]:
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


def world_items(world: Path) -> dict[str, dict[str, Any]]:
    """The world's items by id (relative hrefs), from WORLD/stac/items."""
    items = {}
    for path in (world / "stac" / "items").glob("*.json"):
        for feature in json.loads(path.read_text())["features"]:
            items[feature["id"]] = feature
    return items


def item_of(world: Path, asset_path: str) -> str:
    """The id of the item whose asset is the world file ``asset_path``."""
    for item_id, item in world_items(world).items():
        if any(a["href"] == asset_path for a in item["assets"].values()):
            return item_id
    raise KeyError(asset_path)
