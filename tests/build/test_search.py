"""The shard search: items found again by a later search are not parsed again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import shape

from las_builder.build import search as search_mod
from las_builder.build.search import StacSearcher


def _footprints(world: Path, collection: str, n: int) -> list:
    items = json.loads((world / ".serve" / "stac" / "items" / f"{collection}.json").read_text())
    feats = items["features"] if isinstance(items, dict) else items
    return [shape(f["geometry"]).centroid.buffer(0.001) for f in feats[:n]]


def test_items_found_again_come_from_the_parsed_items(
    served_world: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second search over the same area parses nothing and returns equal items; the
    searcher keeps at most PARSED_ITEMS parsed items."""
    parsed: list[str] = []
    real = search_mod.parse_item  # type: ignore[attr-defined]  # search.py's import, patched

    def counting(raw: dict, collection: dict) -> object:
        parsed.append(raw["id"])
        return real(raw, collection)

    monkeypatch.setattr(search_mod, "parse_item", counting)
    searcher = StacSearcher(served_world["stac_url"])
    where = _footprints(served_world["world"], "esa-worldcover", 2)
    first = searcher.search("esa-worldcover", where)
    assert first and len(parsed) >= len(first)
    n = len(parsed)
    again = searcher.search("esa-worldcover", where)
    assert len(parsed) == n  # nothing parsed twice
    assert [it.id for it in again] == [it.id for it in first]
    assert all(a is b for a, b in zip(again, first, strict=True))
    fresh = StacSearcher(served_world["stac_url"]).search("esa-worldcover", where)
    assert [it.asset("map").href for it in fresh] == [it.asset("map").href for it in first]

    monkeypatch.setattr(search_mod, "PARSED_ITEMS", 1)
    bounded = StacSearcher(served_world["stac_url"])
    bounded.search("esa-worldcover", where)
    assert len(bounded._parsed) == 1

    # Searchers handed one store share what either parsed.
    shared = search_mod.ParsedItems(limit=64)
    StacSearcher(served_world["stac_url"], parsed=shared).search("esa-worldcover", where)
    n = len(parsed)
    other = StacSearcher(served_world["stac_url"], parsed=shared)
    assert [it.id for it in other.search("esa-worldcover", where)] == [it.id for it in first]
    assert len(parsed) == n


def test_a_shard_of_samples_far_apart_is_searched_over_their_own_boxes(
    served_world: dict,
) -> None:
    """Samples along one grid row can lie continents apart: one search over the union of their
    boxes (a MultiPolygon), never over the box round them all, and the same items as a search
    per sample."""
    features = json.loads(
        (served_world["world"] / ".serve" / "stac" / "items" / "esa-worldcover.json").read_text()
    )
    feats = features["features"] if isinstance(features, dict) else features
    centres = [shape(f["geometry"]).centroid for f in feats]
    far = max(((a, b) for a in centres for b in centres), key=lambda ab: ab[0].distance(ab[1]))
    where = [c.buffer(0.001) for c in far]
    assert far[0].distance(far[1]) > 10  # degrees apart: regions of the tiny world
    searcher = StacSearcher(served_world["stac_url"])
    sent: list[dict] = []
    real = searcher.client.search

    def spy(**kwargs: Any) -> Any:
        sent.append(dict(kwargs))
        return real(**kwargs)

    searcher.client.search = spy  # type: ignore[method-assign]  # records, then calls
    found = searcher.search("esa-worldcover", where)
    assert len(sent) == 1
    area = shape(sent[0]["intersects"])
    assert area.geom_type == "MultiPolygon" and len(area.geoms) == 2
    assert area.area < 1e-3  # two sample boxes, not the tens of square degrees between them
    one_by_one = {
        it.id for w in where for it in StacSearcher(served_world["stac_url"]).search(
            "esa-worldcover", [w]
        )
    }  # fmt: skip
    assert found and [it.id for it in found] == sorted(one_by_one)
