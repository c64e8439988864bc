"""Items whose metadata contradicts itself, served through a proxy that edits the STAC API's
answers: one is left out of a search with a warning; a collection of them is a recipe error."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy import FaultProxy
from shapely.geometry import shape

from las_builder.build import run as run_mod
from las_builder.build.config import config_from_recipe
from las_builder.build.search import ParsedItems, StacSearcher
from las_builder.recipe import load_recipe

RECIPE = Path(__file__).parents[2] / "recipes" / "demo.yaml"


def _edited(data: Any, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``edit`` to every item (a Feature with properties) in a JSON answer."""
    if isinstance(data, list):
        for value in data:
            _edited(value, edit)
    elif isinstance(data, dict):
        if data.get("type") == "Feature" and isinstance(data.get("properties"), dict):
            edit(data)
        for value in data.values():
            _edited(value, edit)


@pytest.fixture
def editing_proxy(served_world: dict) -> Iterator[tuple[FaultProxy, list[Callable]]]:
    """A proxy of the STAC API whose answers pass through the item edits in the list."""
    edits: list[Callable[[dict[str, Any]], None]] = []
    proxy = FaultProxy(served_world["stac_url"])
    upstream = served_world["stac_url"]

    def rewrite(text: str) -> str:
        text = text.replace(upstream, proxy.url)
        if not edits:
            return text
        data = json.loads(text)
        for edit in edits:
            _edited(data, edit)
        return json.dumps(data)

    proxy.rewrite = rewrite
    proxy.start()
    try:
        yield proxy, edits
    finally:
        proxy.stop()


def _features(world: Path, collection: str) -> list[dict[str, Any]]:
    items = json.loads((world / ".serve" / "stac" / "items" / f"{collection}.json").read_text())
    return items["features"] if isinstance(items, dict) else items


def test_an_item_that_contradicts_itself_is_left_out_with_a_warning(
    served_world: dict,
    editing_proxy: tuple[FaultProxy, list[Callable]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, edits = editing_proxy
    features = _features(served_world["world"], "esa-worldcover")
    bad = features[0]["id"]

    def swap_bbox(item: dict[str, Any]) -> None:
        if item.get("id") == bad and item.get("bbox"):
            w, s, e, n = item["bbox"][:4]
            item["bbox"] = [w, n, e, s]  # north and south swapped: the axis order is wrong

    edits.append(swap_bbox)
    where = [shape(f["geometry"]).centroid.buffer(0.001) for f in features]
    expected = sorted(f["id"] for f in features)
    with caplog.at_level(logging.WARNING, logger="las_builder"):
        # The searchers of one build process share their parsed (and refused) items.
        shared = ParsedItems()
        found = StacSearcher(proxy.url, parsed=shared).search("esa-worldcover", where)
        again = StacSearcher(proxy.url, parsed=shared).search("esa-worldcover", where)
    assert [it.id for it in found] == [i for i in expected if i != bad]
    assert [it.id for it in again] == [it.id for it in found]
    warned = [r.getMessage() for r in caplog.records if bad in r.getMessage()]
    assert len(warned) == 1, warned  # once per process, whichever searcher met it
    assert "left out of the searches of esa-worldcover" in warned[0]
    assert re.search(r"bbox|axis", warned[0]), warned[0]


def test_a_collection_whose_items_cannot_be_read_is_a_recipe_error(
    served_world: dict, editing_proxy: tuple[FaultProxy, list[Callable]]
) -> None:
    proxy, edits = editing_proxy
    cfg = config_from_recipe(load_recipe(RECIPE, [f"stac.url={proxy.url}"]))
    run_mod.check_sources(cfg)  # the items as served pass

    def cloudier_than_possible(item: dict[str, Any]) -> None:
        if item.get("collection") == "sentinel-2-l2a":
            item["properties"]["eo:cloud_cover"] = 150.0

    edits.append(cloudier_than_possible)
    with pytest.raises(
        ValueError, match=r"^recipe imagery\.sentinel-2\.collection: none of the"
    ) as err:
        run_mod.check_sources(cfg)
    assert "'sentinel-2-l2a'" in str(err.value) and "cloud" in str(err.value)
    assert str(err.value).endswith("nothing was built")
