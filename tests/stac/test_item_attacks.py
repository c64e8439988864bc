"""Adversarial STAC items and search pages: each gives the right answer or a clear error.

Every case here once gave a silently wrong grid, band scale, date or search result, or is a
spelling real catalogs use. The fixture tests skip where ``../shared/fixtures`` is absent.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pystac
import pytest

from las_builder.build.search import SearchError, StacSearcher
from las_builder.imagery import s2_offset_dn
from las_builder.stac import ItemParseError, parse_item, parse_item_collection

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "stac"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"STAC fixtures not found at {FIXTURES}"
)
ITEM_FILES = sorted(FIXTURES.glob("*/items/*.json")) if FIXTURES.is_dir() else []

UTM_GRID = {"proj:shape": [10980, 10980], "proj:transform": [10, 0, 600000, 0, -10, 6000000]}


def _item(assets: dict[str, Any] | None = None, /, **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "attack-1",
        "collection": "sentinel-2-l2a",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[10, 50], [11, 50], [11, 51], [10, 51], [10, 50]]],
        },
        "bbox": [10, 50, 11, 51],
        "properties": {"datetime": "2021-06-01T10:00:00Z", **props},
        "assets": assets or {},
        "links": [],
    }


def _tif(**fields: Any) -> dict[str, Any]:
    return {"href": "https://x.test/a.tif", "type": "image/tiff", "roles": ["data"], **fields}


def _error(feature: dict[str, Any]) -> ItemParseError:
    with pytest.raises(ItemParseError) as err:
        parse_item(feature)
    assert err.value.item_id == feature["id"] and feature["id"] in str(err.value)
    return err.value


# --------------------------------------------------------------------------- real fixtures


@needs_fixtures
@pytest.mark.parametrize("path", ITEM_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_every_fixture_grid_matches_its_proj_bbox(path: Path) -> None:
    """Every asset grid spans exactly its proj:bbox (checked in parsing, re-derived here)."""
    fc = json.loads(path.read_text())
    coll = json.loads((path.parent.parent / "collections" / path.name).read_text())
    checked = 0
    for item, feature in zip(parse_item_collection(fc, coll), fc["features"], strict=True):
        for key, asset in item.assets.items():
            box = asset.geobox()
            raw_bbox = feature["assets"][key].get("proj:bbox") or feature["properties"].get(
                "proj:bbox"
            )
            if box is None or raw_bbox is None or not asset.is_raster:
                continue
            bb = box.boundingbox
            assert (bb.left, bb.bottom, bb.right, bb.top) == pytest.approx(raw_bbox), (item.id, key)
            checked += 1
    if path.stem in ("naip", "sentinel-1-grd"):
        assert checked > 0  # item-level proj:bbox in these files


@needs_fixtures
def test_fixture_grids_by_hand() -> None:
    """A few grids and scales read off the JSON by hand."""
    es = json.loads((FIXTURES / "earth-search/items/sentinel-2-l2a.json").read_text())
    item = parse_item(es["features"][0])
    # "coastal": proj:shape [1830, 1830], transform [60, 0, 399960, 0, -60, 4500000].
    coastal = item.asset("coastal")
    assert coastal.shape == (1830, 1830) and coastal.transform == (
        60.0, 0.0, 399960.0, 0.0, -60.0, 4500000.0,
    )  # fmt: skip
    assert coastal.bands[0].scale == 0.0001 and coastal.bands[0].offset == -0.1
    # "wvp": scale 0.001, offset 0 (not the reflectance offset).
    assert (item.asset("wvp").bands[0].scale, item.asset("wvp").bands[0].offset) == (0.001, 0.0)

    landsat = json.loads((FIXTURES / "planetary-computer/items/landsat-c2-l2.json").read_text())
    ls = parse_item(landsat["features"][0])
    # Item-level grid, inherited unchanged by every band (all 30 m): 7611 x 30 m wide.
    box = ls.asset("swir22").geobox()
    assert box is not None and box.crs is not None and box.crs.epsg == 32658
    assert box.boundingbox.right - box.boundingbox.left == 7611 * 30


@needs_fixtures
def test_earth_search_harmonisation_per_item() -> None:
    """BOA offset chosen per item from the real Earth Search and Planetary Computer JSON."""
    es = parse_item_collection(
        json.loads((FIXTURES / "earth-search/items/sentinel-2-l2a.json").read_text())
    )
    # boa_offset_applied: the COGs were harmonised already, whatever raster:bands says.
    assert {s2_offset_dn(i) for i in es} == {0}
    pc = parse_item_collection(
        json.loads((FIXTURES / "planetary-computer/items/sentinel-2-l2a.json").read_text())
    )
    assert {s2_offset_dn(i) for i in pc} == {0}  # baseline 02.12
    after = copy.deepcopy(json.loads((FIXTURES / "planetary-computer/items/sentinel-2-l2a.json")
                                     .read_text())["features"][0])  # fmt: skip
    after["properties"]["s2:processing_baseline"] = "05.10"
    assert s2_offset_dn(parse_item(after)) == 1000


# --------------------------------------------------------------------------- projection


def test_asset_shape_alone_gets_the_transform_of_the_item_grid() -> None:
    """A 20 m band restating only proj:shape under a 10 m item grid used to get 10 m pixels."""
    item = parse_item(
        _item(
            {"B05": _tif(**{"proj:shape": [5490, 5490]}), "B02": _tif()},
            **{"proj:epsg": 32633, **UTM_GRID},
        )
    )
    b05 = item.asset("B05")
    assert b05.shape == (5490, 5490)
    assert b05.transform == (20.0, 0.0, 600000.0, 0.0, -20.0, 6000000.0)
    assert item.asset("B02").transform == (10.0, 0.0, 600000.0, 0.0, -10.0, 6000000.0)
    b05_box, b02_box = b05.geobox(), item.asset("B02").geobox()
    assert b05_box is not None and b02_box is not None
    assert b05_box.boundingbox == b02_box.boundingbox


def test_asset_transform_alone_gets_its_shape_or_a_clear_error() -> None:
    transform = [60, 0, 600000, 0, -60, 6000000]
    item = parse_item(
        _item({"B01": _tif(**{"proj:transform": transform})}, **{"proj:epsg": 32633, **UTM_GRID})
    )
    assert item.asset("B01").shape == (1830, 1830)
    bad = _item(
        {"B01": _tif(**{"proj:transform": [70, 0, 600000, 0, -70, 6000000]})},
        **{"proj:epsg": 32633, **UTM_GRID},
    )
    err = _error(bad)
    assert err.field == "assets.B01.proj:transform" and "give the asset its own proj:shape" in str(
        err
    )


def test_shape_derived_from_proj_bbox_and_inconsistent_grid_refused() -> None:
    asset = _tif(
        **{
            "proj:epsg": 32633,
            "proj:transform": [20, 0, 600000, 0, -20, 6000000],
            "proj:bbox": [600000, 5890200, 709800, 6000000],
        }
    )
    assert parse_item(_item({"B05": asset})).asset("B05").shape == (5490, 5490)
    wrong = {**asset, "proj:shape": [10980, 10980]}  # 20 m x 10980 is twice the bbox
    err = _error(_item({"B05": wrong}))
    assert err.field == "assets.B05" and "proj:bbox" in str(err)


def test_proj_epsg_and_proj_code_must_agree() -> None:
    err = _error(_item(**{"proj:epsg": 32633, "proj:code": "EPSG:32634"}))
    assert err.field == "properties.proj:code" and "32633" in str(err)
    # proj v2 items keep a null proj:epsg beside proj:code.
    assert parse_item(_item(**{"proj:epsg": None, "proj:code": "EPSG:32634"})).epsg == 32634


def test_asset_null_epsg_keeps_the_item_wkt2() -> None:
    """``"proj:epsg": null`` on an asset means "no EPSG code", not "no CRS"."""
    wkt = 'PROJCRS["MODIS Sinusoidal",BASEGEOGCRS["WGS 84",DATUM["WGS84",ELLIPSOID["WGS 84",6378137,298.257223563]]],CONVERSION["Sinusoidal",METHOD["Sinusoidal"],PARAMETER["Longitude of natural origin",0],PARAMETER["False easting",0],PARAMETER["False northing",0]],CS[Cartesian,2],AXIS["easting",east,LENGTHUNIT["metre",1]],AXIS["northing",north,LENGTHUNIT["metre",1]]]'  # noqa: E501
    grid = {"proj:shape": [2400, 2400], "proj:transform": [463.3, 0, 0, 0, -463.3, 5559752.6]}
    item = parse_item(
        _item({"lc": _tif(**{"proj:epsg": None, **grid})}, **{"proj:epsg": None, "proj:wkt2": wkt})
    )
    lc = item.asset("lc")
    assert lc.crs == wkt and lc.epsg is None and lc.geobox() is not None


# --------------------------------------------------------------------------- hrefs


@pytest.mark.parametrize(
    ("self_href", "href", "expected"),
    [
        ("https://x.test/c/items/a.json", "./B04.tif", "https://x.test/c/items/B04.tif"),
        ("https://x.test/c/items/a.json", "../assets/B04.tif", "https://x.test/c/assets/B04.tif"),
        ("s3://bucket/c/items/a.json", "B04.tif", "s3://bucket/c/items/B04.tif"),
        ("/data/c/a.json", "./B04.tif", "/data/c/B04.tif"),
        ("https://x.test/c/a.json", "https://cdn.test/B04.tif", "https://cdn.test/B04.tif"),
        (None, "./B04.tif", "./B04.tif"),  # nothing to resolve against
    ],
)
def test_relative_hrefs_resolve_against_the_self_link(
    self_href: str | None, href: str, expected: str
) -> None:
    feature = _item({"B04": {**_tif(), "href": href}})
    if self_href:
        feature["links"] = [{"rel": "self", "href": self_href}]
    assert parse_item(feature).asset("B04").href == expected


def test_pystac_item_with_relative_hrefs_keeps_its_self_link() -> None:
    feature = _item({"B04": {**_tif(), "href": "./B04.tif"}})
    feature["links"] = [{"rel": "self", "href": "https://x.test/c/items/a.json"}]
    item = pystac.Item.from_dict(feature)
    assert parse_item(item).asset("B04").href == "https://x.test/c/items/B04.tif"


# --------------------------------------------------------------------------- bands


def test_stac_1_1_single_band_asset_without_a_band_list() -> None:
    """STAC 1.1 puts a one-band asset's scale on the asset; it used to be dropped."""
    asset = _tif(
        **{"raster:scale": 0.0001, "raster:offset": -0.1, "nodata": 0, "eo:common_name": "red"}
    )
    [band] = parse_item(_item({"B04": asset})).asset("B04").bands
    assert (band.scale, band.offset, band.nodata, band.common_name) == (0.0001, -0.1, 0, "red")
    # A metadata file with a unit gets no band.
    meta = {"href": "https://x.test/m.xml", "type": "application/xml", "unit": "m"}
    assert parse_item(_item({"meta": meta})).asset("meta").bands == ()


def test_band_lists_of_different_lengths_are_refused() -> None:
    asset = _tif(
        **{
            "eo:bands": [{"name": n} for n in ("red", "green", "blue", "nir")],
            "raster:bands": [{"scale": 0.5}],
        }
    )
    err = _error(_item({"image": asset}))
    assert err.field == "assets.image" and "eo:bands has 4, raster:bands has 1" in str(err)


@pytest.mark.parametrize(
    ("band", "field", "text"),
    [
        ({"scale": 0}, "assets.B04.bands[0].scale", "is 0"),
        ({"scale": math.nan}, "assets.B04.bands[0].scale", "finite"),
        ({"offset": math.inf}, "assets.B04.bands[0].offset", "finite"),
        ({"nodata": "none"}, "assets.B04.bands[0].nodata", "expected a number"),
    ],
)
def test_bad_scales_are_refused(band: dict[str, Any], field: str, text: str) -> None:
    err = _error(_item({"B04": _tif(**{"raster:bands": [band]})}))
    assert err.field == field and text in str(err)


def test_nodata_as_text() -> None:
    bands = [{"nodata": "-9999"}, {"nodata": "NaN"}, {"nodata": " -inf"}, {"nodata": "0.5"}]
    got = [
        b.nodata
        for b in parse_item(_item({"x": _tif(**{"raster:bands": bands})})).assets["x"].bands
    ]
    assert got[0] == -9999 and isinstance(got[0], int)
    assert got[1] is not None and math.isnan(got[1])
    assert got[2:] == [-math.inf, 0.5]


# --------------------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-06-01T10:00:00z", datetime(2021, 6, 1, 10, tzinfo=UTC)),
        ("2021-06-01t10:00:00Z", datetime(2021, 6, 1, 10, tzinfo=UTC)),
        ("2021-06-01T15:30:00+05:30", datetime(2021, 6, 1, 10, tzinfo=UTC)),
        ("2021-06-01T10:00:00.1234567Z", datetime(2021, 6, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2021-06-01T10:00:00", datetime(2021, 6, 1, 10, tzinfo=UTC)),  # no zone: UTC
    ],
)
def test_datetime_spellings(text: str, expected: datetime) -> None:
    assert parse_item(_item(datetime=text)).datetime == expected


def test_datetime_outside_its_range_is_refused_but_rounding_is_not() -> None:
    err = _error(
        _item(
            datetime="2022-03-01T00:00:00Z",
            start_datetime="2021-01-01T00:00:00Z",
            end_datetime="2021-12-31T23:59:59Z",
        )
    )
    assert err.field == "properties.datetime" and "outside" in str(err)
    rounded = _item(
        datetime="2021-06-01T10:00:08.21Z",
        start_datetime="2021-06-01T10:00:08.210318Z",
        end_datetime="2021-06-01T10:00:37Z",
    )
    assert parse_item(rounded).start_datetime.microsecond == 210318


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("value", [150, -1, math.nan, "n/a", True])
def test_cloud_cover_out_of_range_is_refused(value: Any) -> None:
    err = _error(_item(**{"eo:cloud_cover": value}))
    assert err.field == "properties.eo:cloud_cover"


def test_cloud_cover_as_text_or_absent() -> None:
    assert parse_item(_item(**{"eo:cloud_cover": "12.5"})).cloud_cover == 12.5
    assert parse_item(_item(**{"eo:cloud_cover": None})).cloud_cover is None


@pytest.mark.parametrize(
    ("props", "baseline", "offset"),
    [
        ({"s2:processing_baseline": "05.10"}, "05.10", 1000),
        ({"s2:processing_baseline": 5.1}, "05.10", 1000),
        ({"s2:processing_baseline": "4"}, "04.00", 1000),
        ({"s2:processing_baseline": 3.01}, "03.01", 0),
        ({"sentinel:processing_baseline": "04.00"}, "04.00", 1000),
        ({"processing:version": "05.11", "constellation": "sentinel-2"}, "05.11", 1000),
        ({"processing:version": "05.11", "constellation": "landsat"}, None, 0),
        ({"s2:product_uri": "S2B_MSIL2A_20220101T000000_N0400_R001_T01ABC_x.SAFE"}, "04.00", 1000),
    ],
)
def test_processing_baseline_sets_the_boa_offset_per_item(
    props: dict[str, Any], baseline: str | None, offset: int
) -> None:
    item = parse_item(_item({"B04": _tif(**{"eo:bands": [{"name": "B04"}]})}, **props))
    assert item.processing_baseline == baseline
    assert s2_offset_dn(item) == offset


def test_processing_baseline_that_cannot_be_compared_is_refused() -> None:
    err = _error(_item(**{"s2:processing_baseline": 400}))  # "400.00" >= "04.00" as text
    assert err.field == "properties.s2:processing_baseline"


# --------------------------------------------------------------------------- footprint


def test_bbox_with_swapped_axes_is_refused() -> None:
    feature = _item()
    feature["bbox"] = [50, 10, 51, 11]
    err = _error(feature)
    assert err.field == "bbox" and "axis order" in str(err)
    feature["bbox"] = [10, 51, 11, 50]
    assert "south" in str(_error(feature))


def test_naive_bbox_of_an_antimeridian_scene_is_replaced() -> None:
    feature = _item()
    feature["geometry"] = {
        "type": "Polygon",
        "coordinates": [[[179, -17], [-179, -17], [-179, -16], [179, -16], [179, -17]]],
    }
    feature["bbox"] = [-179, -17, 179, -16]  # min/max of the ring: the world minus the scene
    item = parse_item(feature)
    assert item.bbox == pytest.approx((179.0, -17.0, -179.0, -16.0))
    assert item.crosses_antimeridian
    footprint = item.footprint()
    assert footprint is not None and footprint.area == pytest.approx(2.0)


# --------------------------------------------------------------------------- search

API = "https://stac.test/api"


def _landing() -> dict[str, Any]:
    return {
        "type": "Catalog",
        "id": "test",
        "description": "fake STAC API",
        "stac_version": "1.0.0",
        "conformsTo": [
            "https://api.stacspec.org/v1.0.0/core",
            "https://api.stacspec.org/v1.0.0/item-search",
            "https://api.stacspec.org/v1.0.0/collections",
        ],
        "links": [
            {"rel": "self", "href": API},
            {"rel": "root", "href": API},
            {
                "rel": "search",
                "href": f"{API}/search",
                "type": "application/geo+json",
                "method": "POST",
            },
            {"rel": "data", "href": f"{API}/collections"},
        ],
    }


def _collection(cid: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "id": cid,
        "stac_version": "1.0.0",
        "description": cid,
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [[None, None]]},
        },
        "links": [],
    }


def _feature(n: int) -> dict[str, Any]:
    feature = _item({"B04": _tif()})
    feature["id"] = f"item-{n}"
    return feature


@contextmanager
def _api(pages: list[dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A STAC API on 127.0.0.1 serving the landing page, one collection and ``pages`` of
    POST /search in turn (the last one again and again); yields its URL and the search bodies.

    A real HTTP server, so pystac-client's paging runs as against any API; ``API`` in the
    answers is replaced by the server's own URL.
    """
    bodies: list[dict[str, Any]] = []
    collections = {"sentinel-2-l2a": _collection("sentinel-2-l2a")}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).replace(API, base).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?")[0].removeprefix("/api").rstrip("/")
            if path == "":
                self._answer(200, _landing())
            elif path == "/collections":
                self._answer(200, {"collections": list(collections.values()), "links": []})
            elif path.removeprefix("/collections/") in collections:
                self._answer(200, collections[path.removeprefix("/collections/")])
            else:
                self._answer(404, {"code": "NotFound", "description": path})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            bodies.append(json.loads(self.rfile.read(length)))
            self._answer(200, pages[min(len(bodies), len(pages)) - 1])

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{server.server_address[1]}/api"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, bodies
    finally:
        server.shutdown()
        server.server_close()


def _next(token: str) -> dict[str, Any]:
    return {
        "rel": "next",
        "href": f"{API}/search",
        "method": "POST",
        "body": {"token": token},
        "merge": True,
    }


def _searcher(url: str) -> StacSearcher:
    return StacSearcher(url, retries=0, backoff_s=0.0)


def _area() -> list[Any]:
    from shapely.geometry import box

    return [box(10.2, 50.2, 10.4, 50.4)]


def test_search_follows_post_next_links_and_drops_duplicates() -> None:
    pages: list[dict[str, Any]] = [
        {
            "type": "FeatureCollection",
            "features": [_feature(1), _feature(2)],
            "links": [_next("a")],
        },
        {
            "type": "FeatureCollection",
            "features": [_feature(2), _feature(3)],
            "links": [_next("b")],
        },
        {"type": "FeatureCollection", "features": [], "numberMatched": 3, "links": []},
    ]
    with _api(pages) as (url, bodies):
        found = _searcher(url).search("sentinel-2-l2a", _area())
    assert [i.id for i in found] == ["item-1", "item-2", "item-3"]
    # merge: true keeps the original query beside the token.
    assert bodies[1]["token"] == "a" and bodies[1]["collections"] == ["sentinel-2-l2a"]
    assert "intersects" in bodies[2] and bodies[2]["token"] == "b"


def test_search_refuses_a_next_link_that_goes_round() -> None:
    page = {"type": "FeatureCollection", "features": [_feature(1)], "links": [_next("same")]}
    with _api([page]) as (url, bodies):
        with pytest.raises(SearchError, match="sentinel-2-l2a.*does not advance"):
            _searcher(url).search("sentinel-2-l2a", _area())
    assert len(bodies) == 2  # stopped at the first repeat, not after 10,000 pages


def test_search_refuses_pages_of_repeats() -> None:
    """Tokens change, items don't: the API serves page 1 for ever."""
    pages = [
        {"type": "FeatureCollection", "features": [_feature(1)], "links": [_next(str(n))]}
        for n in range(10)
    ]
    with _api(pages) as (url, bodies):
        with pytest.raises(SearchError, match="repeats earlier pages"):
            _searcher(url).search("sentinel-2-l2a", _area())
    assert len(bodies) == 3


def test_search_of_an_empty_result_and_of_an_unknown_collection() -> None:
    empty = {"type": "FeatureCollection", "features": [], "numberMatched": 0, "links": []}
    with _api([empty]) as (url, _bodies):
        searcher = _searcher(url)
        assert searcher.search("sentinel-2-l2a", _area()) == []
        with pytest.raises(SearchError, match=r"no collection 'nope'.*it has: sentinel-2-l2a"):
            searcher.search("nope", _area())
