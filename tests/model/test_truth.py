"""The world's truth found from its folder, its serve.json or its STAC API, and put on a grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pystac
import pytest

from las_builder.model.truth import TRUTH_COLLECTION, truth_items, truth_on_grid


def _where(items: list) -> list[tuple[int, tuple[float, ...]]]:
    return sorted((item.epsg, item.bounds) for item in items)


def test_folder_serve_json_and_stac_api_give_the_same_truth(
    served_world: dict, las_tiny: Path
) -> None:
    world = Path(served_world["world"])
    from_folder = truth_items(world)
    from_json = truth_items(world / "serve.json")
    from_api = truth_items(served_world["stac_url"])
    assert len(from_folder) >= 3  # one per region of the tiny world
    assert _where(from_folder) == _where(from_json) == _where(from_api)
    assert all(Path(item.href).is_file() for item in from_folder)
    assert all(item.href.startswith("http://127.0.0.1:") for item in from_api)

    # the same truth pixels on a built sample's grid, read from the files or over HTTP
    index = pd.read_parquet(las_tiny / "index.parquet")
    row = index[index["status"] == "ok"].iloc[0]
    grid = (int(row["epsg"]), list(row["transform"]), list(row["shape"]))
    local = truth_on_grid(from_folder, *grid)
    assert (local > 0).any()
    np.testing.assert_array_equal(truth_on_grid(from_api, *grid), local)


def test_proj_code_items_as_pystac_writes_them(served_world: dict) -> None:
    """pystac (and so pystac-client's items) turns proj:epsg into proj:code."""
    path = Path(served_world["world"]) / "stac" / "items" / f"{TRUTH_COLLECTION}.json"
    data = json.loads(path.read_text())
    features = data["features"] if isinstance(data, dict) else data
    feature = pystac.Item.from_dict(features[0]).to_dict()
    text = json.dumps(feature)
    if '"proj:epsg"' in text:  # an older pystac kept it: write proj:code ourselves
        for holder in (feature["properties"], *feature["assets"].values()):
            if "proj:epsg" in holder:
                holder["proj:code"] = f"EPSG:{holder.pop('proj:epsg')}"
    assert '"proj:epsg"' not in json.dumps(feature)
    items_path = Path("stac") / "items" / f"{TRUTH_COLLECTION}.json"
    reference = truth_items(served_world["world"])
    by_json = Path(served_world["world"]).parent / "proj-code"
    (by_json / items_path).parent.mkdir(parents=True, exist_ok=True)
    (by_json / items_path).write_text(json.dumps({"features": [feature]}))
    (item,) = truth_items(by_json)
    assert (item.epsg, item.bounds) in _where(reference)


def test_an_item_without_a_usable_truth_asset_is_named(tmp_path: Path) -> None:
    feature: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "region-x",
        "geometry": None,
        "properties": {"datetime": "2021-01-01T00:00:00Z"},
        "assets": {"truth": {"href": "truth/x.tif"}},  # no CRS, transform or shape
        "links": [],
    }
    items = tmp_path / "stac" / "items" / f"{TRUTH_COLLECTION}.json"
    items.parent.mkdir(parents=True)
    items.write_text(json.dumps([feature]))
    with pytest.raises(ValueError, match="truth item 'region-x'.*proj:transform"):
        truth_items(tmp_path)
