"""The label pixel path checked against answers computed independently of it.

Label tiles are written on their products' real global lattices (ESA WorldCover's 1/12000
degree 3-degree tiles, MODIS's sinusoidal tiles), each pixel holding a code that is a function
of its global lattice index, so the expected label of every sample pixel is found by carrying
its centre through PROJ alone. Mappings are checked against the catalog's YAML read directly,
and the consensus against a per-pixel vote count.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from rasterio.io import DatasetReader
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from las_builder._paths import catalog_dir
from las_builder.build import sample as sample_mod
from las_builder.build.config import BuildConfig, LabelSpec
from las_builder.build.read import DatasetCache
from las_builder.catalog import LAS_IGNORE, LAS_NODATA, UnknownCodeError, load_mapping
from las_builder.catalog.labels import LabelProduct, load_label_product
from las_builder.catalog.taxonomy import MappingRule, ProductMapping, load_taxonomy
from las_builder.geobox import sample_geobox
from las_builder.stac import SceneItem

YEAR = 2021
WC_RES = 1 / 12000  # ESA WorldCover's pixel, degrees
SINU = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"
MODIS_ORIGIN = (-20015109.354, 10007554.677)  # upper-left corner of tile h00v00
MODIS_RES = 463.312716528
MODIS_TILE = 2400

Codes = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _codes_of(legend: LabelProduct) -> Codes:
    """Legend codes by global lattice index: any one-pixel shift changes the code."""
    codes = np.array(legend.codes)
    assert len(codes) % 3 and len(codes) % 5  # steps of 3 and 5 never wrap to the same code

    def codes_at(col: np.ndarray, row: np.ndarray) -> np.ndarray:
        return codes[(3 * col + 5 * row) % len(codes)]

    return codes_at


class _Files:
    """A stand-in for :class:`DatasetCache`: item id -> file, opened for each read."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths

    @contextmanager
    def assets(self, item: Any, *keys: str) -> Iterator[list[DatasetReader]]:
        with rasterio.open(self.paths[item.id]) as ds:
            yield [ds for _ in keys]


def _item(item_id: str, when: dt.datetime | None = None, **properties: Any) -> SceneItem:
    when = when or dt.datetime(YEAR, 1, 1, tzinfo=dt.UTC)
    return cast(
        SceneItem,
        SimpleNamespace(id=item_id, datetime=when, start_datetime=when, properties=properties),
    )


def _read(
    product: str, paths: dict[str, Path], geobox: GeoBox, order: list[str] | None = None
) -> np.ndarray:
    """The product's native codes on ``geobox`` as a build reads them (tiles in ``order``)."""
    spec = LabelSpec(product, product, "data", YEAR)
    items = [_item(i) for i in (order or sorted(paths))]
    native, chosen = sample_mod._read_labels(
        spec, items, geobox, None, cast(DatasetCache, _Files(paths))
    )
    assert [it.id for it in chosen] == [it.id for it in items]
    return native


def _write_tile(
    path: Path,
    *,
    crs: str,
    transform: Affine,
    size: int,
    first: tuple[int, int],
    codes_at: Codes,
    geobox: GeoBox,
    nodata: int,
) -> Path:
    """A tile of ``size`` x ``size`` pixels with data only under ``geobox`` (sparse elsewhere).

    ``first`` is the global lattice index (col, row) of the tile's first pixel.
    """
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "sparse_ok": True,  # unwritten blocks read as nodata
    }
    assert geobox.crs is not None
    west, south, east, north = transform_bounds(
        geobox.crs.to_wkt(), crs, *geobox.boundingbox, densify_pts=21
    )
    boxes = [(west, south, east, north)]
    if west > east:  # across the antimeridian, in degrees
        boxes = [(west, south, 180.0, north), (-180.0, south, east, north)]
    with rasterio.open(path, "w", **profile) as dst:
        for bounds in boxes:
            window = from_bounds(*bounds, transform=transform)
            col0, row0 = max(int(window.col_off) - 4, 0), max(int(window.row_off) - 4, 0)
            col1 = min(int(window.col_off + window.width) + 5, size)
            row1 = min(int(window.row_off + window.height) + 5, size)
            if col1 <= col0 or row1 <= row0:
                continue
            cols, rows = np.meshgrid(np.arange(col0, col1), np.arange(row0, row1))
            data = codes_at(cols + first[0], rows + first[1]).astype("uint8")
            dst.write(data[None], window=Window(col0, row0, col1 - col0, row1 - row0))
    return path


def _centres(geobox: GeoBox, crs: str) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel centre of ``geobox`` carried through PROJ into ``crs``, one by one."""
    height, width = geobox.shape.yx
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x, y = geobox.transform @ (cols.ravel(), rows.ravel())
    assert geobox.crs is not None
    to_src = Transformer.from_crs(geobox.crs.to_wkt(), crs, always_xy=True)
    sx, sy = to_src.transform(x, y)
    return np.asarray(sx).reshape(height, width), np.asarray(sy).reshape(height, width)


def _assert_codes_under_centres(
    native: np.ndarray, col: np.ndarray, row: np.ndarray, codes_at: Codes, edge_px: float
) -> None:
    """Each pixel holds the code under its centre's global lattice position (col, row).

    A centre within ``edge_px`` of a pixel edge may take the pixel across that edge: both are
    right answers up to the placement's stated error, and only those.
    """
    allowed = [
        codes_at(np.floor(col + dc).astype(int), np.floor(row + dr).astype(int))
        for dc in (-edge_px, edge_px)
        for dr in (-edge_px, edge_px)
    ]
    ok = np.zeros(native.shape, dtype=bool)
    for codes in allowed:
        ok |= native == codes
    assert ok.all(), f"{int((~ok).sum())} pixels hold another code, first at {np.argwhere(~ok)[0]}"
    exact = np.all([codes == allowed[0] for codes in allowed], axis=0)
    assert exact.mean() > 0.5  # most centres have one right answer: the check has teeth


def _geobox(lon: float, lat: float, epsg: int | None, size: int, res: float) -> GeoBox:
    """The plan's grid at a point, or one in another UTM zone (either side of 180 degrees)."""
    if epsg is None:
        return sample_geobox(lon, lat, size, res)
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    west, north = round(x / res) * res - size * res / 2, round(y / res) * res + size * res / 2
    return GeoBox((size, size), Affine(res, 0, west, 0, -res, north), f"EPSG:{epsg}")


# --- tiles on the products' global lattices ---------------------------------------------------

# (lon, lat, sample EPSG or None for the plan's own, {tile: (south, west)}, edge tolerance in
# source pixels). Within one CRS pair the placement carries every centre exactly; across the
# antimeridian GDAL warps, whose approximate transformer may take the neighbour of a centre
# within 1/8 pixel of an edge.
WORLDCOVER_CASES = [
    pytest.param(
        27.0,
        69.0,
        None,
        {"N69E024": (69, 24), "N69E027": (69, 27), "N66E024": (66, 24), "N66E027": (66, 27)},
        1e-6,
        id="lapland-69N-four-tile-corner",
    ),
    pytest.param(
        180.0,
        -16.5,
        32760,
        {"S18E177": (-18, 177), "S18W180": (-18, -180)},
        0.125,
        id="fiji-antimeridian-utm60",
    ),
    pytest.param(
        180.0,
        -16.5,
        32701,
        {"S18E177": (-18, 177), "S18W180": (-18, -180)},
        0.125,
        id="fiji-antimeridian-utm1",
    ),
]


@pytest.mark.parametrize(("lon", "lat", "epsg", "tiles", "edge_px"), WORLDCOVER_CASES)
def test_worldcover_tiles_give_the_pixel_under_each_centre(
    tmp_path: Path,
    lon: float,
    lat: float,
    epsg: int | None,
    tiles: dict[str, tuple[int, int]],
    edge_px: float,
) -> None:
    """No half-pixel shift, no seam of nodata, no pixel from the wrong tile."""
    legend = load_label_product("esa-worldcover")
    codes_at = _codes_of(legend)
    geobox = _geobox(lon, lat, epsg, size=128, res=10.0)
    paths = {}
    for name, (south, west) in tiles.items():
        paths[name] = _write_tile(
            tmp_path / f"{name}.tif",
            crs="EPSG:4326",
            transform=Affine(WC_RES, 0, west, 0, -WC_RES, south + 3),
            size=36000,
            first=(round((west + 180) * 12000), round((90 - south - 3) * 12000)),
            codes_at=codes_at,
            geobox=geobox,
            nodata=0,
        )

    native = _read("esa-worldcover", paths, geobox)

    lon_c, lat_c = _centres(geobox, "EPSG:4326")
    lon_c = np.where(lon_c >= 180.0, lon_c - 360.0, lon_c)
    assert (native != legend.fill).all()  # every pixel covered: no seam
    _assert_codes_under_centres(
        native, (lon_c + 180) * 12000, (90 - lat_c) * 12000, codes_at, edge_px
    )


MODIS_CASES = [
    pytest.param(20.0, 60.0, None, [(18, 2), (19, 2), (18, 3), (19, 3)], 1e-6, id="h18-19v02-03"),
    pytest.param(180.0, -16.5, 32760, [(35, 10), (0, 10)], 0.125, id="fiji-h35-h00"),
]


@pytest.mark.parametrize(("lon", "lat", "epsg", "tiles", "edge_px"), MODIS_CASES)
def test_modis_sinusoidal_tiles_give_the_pixel_under_each_centre(
    tmp_path: Path,
    lon: float,
    lat: float,
    epsg: int | None,
    tiles: list[tuple[int, int]],
    edge_px: float,
) -> None:
    legend = load_label_product("modis-12Q1-061")
    codes_at = _codes_of(legend)
    geobox = _geobox(lon, lat, epsg, size=192, res=30.0)  # ~12 MODIS pixels a side
    x0, y0 = MODIS_ORIGIN
    span = MODIS_TILE * MODIS_RES
    paths = {
        f"h{h:02d}v{v:02d}": _write_tile(
            tmp_path / f"h{h:02d}v{v:02d}.tif",
            crs=SINU,
            transform=Affine(MODIS_RES, 0, x0 + h * span, 0, -MODIS_RES, y0 - v * span),
            size=MODIS_TILE,
            first=(h * MODIS_TILE, v * MODIS_TILE),
            codes_at=codes_at,
            geobox=geobox,
            nodata=255,
        )
        for h, v in tiles
    }

    native = _read("modis-12Q1-061", paths, geobox)

    sx, sy = _centres(geobox, SINU)
    assert (native != legend.fill).all()
    _assert_codes_under_centres(
        native, (sx - x0) / MODIS_RES, (y0 - sy) / MODIS_RES, codes_at, edge_px
    )


# --- overlap, nodata, partial cover ---------------------------------------------------------

UTM = "EPSG:32633"
GRID = GeoBox((8, 8), Affine(10, 0, 500_000, 0, -10, 5_000_080), UTM)


def _utm_tif(path: Path, data: np.ndarray, west: float, north: float, nodata: int | None) -> Path:
    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": UTM,
        "transform": Affine(10, 0, west, 0, -10, north),
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[None])
    return path


def test_overlapping_tiles_first_wins_and_nodata_is_filled_from_the_next(tmp_path: Path) -> None:
    """Tiles are taken in the given order (the search sorts by id): the first tile with data
    at a pixel gives it; its nodata and the area it does not cover come from the others."""
    a = np.full((8, 6), 10, "uint8")  # cols 0-5 of the sample
    a[2, 3] = 0  # nodata inside tile a
    b = np.full((8, 6), 20, "uint8")  # cols 2-7
    paths = {
        "a": _utm_tif(tmp_path / "a.tif", a, 500_000, 5_000_080, 0),
        "b": _utm_tif(tmp_path / "b.tif", b, 500_020, 5_000_080, 0),
    }
    want = np.full((8, 8), 10, "uint8")
    want[:, 6:] = 20
    want[2, 3] = 20

    np.testing.assert_array_equal(_read("esa-worldcover", paths, GRID, ["a", "b"]), want)
    flipped = np.full((8, 8), 20, "uint8")
    flipped[:, :2] = 10
    np.testing.assert_array_equal(_read("esa-worldcover", paths, GRID, ["b", "a"]), flipped)


def test_a_sample_half_outside_every_tile_is_nodata_there(tmp_path: Path) -> None:
    data = np.full((8, 4), 80, "uint8")  # water, cols 0-3 only
    paths = {"a": _utm_tif(tmp_path / "a.tif", data, 500_000, 5_000_080, 0)}
    native = _read("esa-worldcover", paths, GRID)
    las = load_mapping("esa-worldcover").map(native)
    assert (native[:, 4:] == 0).all()
    assert (las[:, :4] == load_taxonomy().code_of("water")).all()
    assert (las[:, 4:] == LAS_NODATA).all()


def _product(dtype: str, nodata: int | None, classes: dict[int, str]) -> LabelProduct:
    """A minimal label product with the given codes (``classes``: code -> LAS key)."""
    base = load_label_product("esa-worldcover").model_dump(exclude={"classes", "nodata", "dtype"})
    legend = [
        {"value": code, "name": key, "color": "#123456", "key": key.replace("_", "-")}
        for code, key in classes.items()
    ]
    return LabelProduct.model_validate(
        {**base, "dtype": dtype, "nodata": nodata, "classes": legend}
    )


def _use(monkeypatch: pytest.MonkeyPatch, product: LabelProduct) -> None:
    monkeypatch.setattr(sample_mod, "_from_catalog", lambda run_id, kind, name: product)


def _mapping(product: LabelProduct, classes: dict[int, str]) -> ProductMapping:
    rules = {code: MappingRule(to=key) for code, key in classes.items()}
    return ProductMapping(product=product, taxonomy=load_taxonomy(), rules=rules)


def test_code_zero_is_a_class_when_the_product_has_no_nodata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a nodata value, 0 is water inside the file; outside it the build's fill (not 0)
    marks the pixels no file covers."""
    classes = {0: "water", 1: "trees"}
    product = _product("uint8", None, classes)
    _use(monkeypatch, product)
    data = np.zeros((8, 4), "uint8")
    data[:, 2:] = 1
    paths = {"a": _utm_tif(tmp_path / "a.tif", data, 500_000, 5_000_080, None)}

    las = _mapping(product, classes).map(_read("esa-worldcover", paths, GRID))

    taxonomy = load_taxonomy()
    assert (las[:, :2] == taxonomy.code_of("water")).all()
    assert (las[:, 2:4] == taxonomy.code_of("trees")).all()
    assert (las[:, 4:] == LAS_NODATA).all()


def test_uint16_codes_above_255_are_mapped_not_wrapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    classes = {10: "water", 266: "trees", 1000: "cropland"}
    product = _product("uint16", 0, classes)
    _use(monkeypatch, product)
    data = np.array([[10, 266, 1000, 0]], "uint16").repeat(8, axis=0).repeat(2, axis=1)
    paths = {"a": _utm_tif(tmp_path / "a.tif", data, 500_000, 5_000_080, 0)}

    native = _read("esa-worldcover", paths, GRID)
    las = _mapping(product, classes).map(native)

    assert native.dtype == np.uint16
    taxonomy = load_taxonomy()
    want = [taxonomy.code_of(k) for k in ("water", "trees", "cropland")] + [LAS_NODATA]
    np.testing.assert_array_equal(las[0], np.repeat(want, 2))


def test_a_file_wider_than_its_legend_is_refused_not_wrapped(tmp_path: Path) -> None:
    """A uint16 file under a uint8 legend: 266 must not become 10 (WorldCover's tree cover)."""
    data = np.full((8, 8), 266, "uint16")
    data[:4] = 80  # values that fit are fine where they are legend codes
    paths = {"a": _utm_tif(tmp_path / "a.tif", data, 500_000, 5_000_080, 0)}
    with pytest.raises(UnknownCodeError, match=r"esa-worldcover: codes not in the legend: 266"):
        _read("esa-worldcover", paths, GRID)

    data[4:] = 30
    native = _read(
        "esa-worldcover", {"a": _utm_tif(tmp_path / "b.tif", data, 500_000, 5_000_080, 0)}, GRID
    )
    assert native.dtype == np.uint8
    np.testing.assert_array_equal(native, data.astype("uint8"))


def test_a_file_narrower_than_its_legend_reads_with_the_legends_fill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A uint8 file under a uint16 legend whose nodata (65535) a uint8 cannot hold."""
    classes = {10: "water", 300: "trees"}
    product = _product("uint16", 65535, classes)
    _use(monkeypatch, product)
    data = np.full((8, 4), 10, "uint8")
    paths = {"a": _utm_tif(tmp_path / "a.tif", data, 500_000, 5_000_080, None)}

    las = _mapping(product, classes).map(_read("esa-worldcover", paths, GRID))

    assert (las[:, :4] == load_taxonomy().code_of("water")).all()
    assert (las[:, 4:] == LAS_NODATA).all()


# --- mapping and consensus against the catalog's YAML ----------------------------------------

VOTERS = ["esa-worldcover", "esa-cci-lc", "modis-12Q1-061", "io-lulc-annual-v02"]


def _las_tables() -> tuple[dict[str, dict[int, int]], dict[str, dict[int, set[int]]]]:
    """``{product: {native code: LAS value}}`` and ``{product: {native code: LAS values its
    vote also supports}}`` (rules' ``also``), from the YAML files, without the catalog code."""
    las = yaml.safe_load((catalog_dir() / "taxonomy" / "las.yaml").read_text())
    code_of = {c["key"]: c["code"] for c in las["classes"]}
    tables, lumps = {}, {}
    for product in VOTERS:
        path = catalog_dir() / "taxonomy" / "mappings" / f"{product}.yaml"
        rules = yaml.safe_load(path.read_text())["map"]
        table, lump = {}, {}
        for code, rule in rules.items():
            to = rule if isinstance(rule, str) else rule["to"]
            table[int(code)] = 255 if to == "ignore" else code_of[to]
            also = [] if isinstance(rule, str) else rule.get("also", [])
            lump[int(code)] = {code_of[k] for k in also}
        tables[product], lumps[product] = table, lump
    return tables, lumps


def _vote(values: list[int], supports: list[set[int]]) -> tuple[int, int]:
    """One pixel's consensus and agreement, by counting: most support (votes plus the votes
    lumping a class in), then most votes of its own; only a voted class is a candidate."""
    votes = Counter(v for v in values if v not in (0, 255))
    if not votes:
        return (255 if 255 in values else 0), 0
    ranked = sorted(((sum(c in s for s in supports), votes[c], c) for c in votes), reverse=True)
    if len(ranked) > 1 and ranked[0][:2] == ranked[1][:2]:
        return 255, 0
    return ranked[0][2], ranked[0][0]


def test_harmonised_labels_consensus_and_counts_equal_an_independent_vote() -> None:
    rng = np.random.default_rng(7)
    tables, lumps = _las_tables()
    assert any(any(v) for v in lumps["io-lulc-annual-v02"].values())  # Esri trees: mangroves
    shape = (12, 12)
    natives = {}
    for product in VOTERS:
        legend = load_label_product(product)
        choices = [*tables[product], legend.fill]  # mapped codes and the product's nodata
        natives[product] = rng.choice(choices, size=shape).astype(legend.dtype)
    # Rows where every product is nodata, and where they split two against two.
    for product, native in natives.items():
        native[0] = load_label_product(product).fill
    wc, cci, modis, io = (natives[p] for p in VOTERS)
    wc[1], cci[1], modis[1], io[1] = 80, 210, 1, 2  # water, water, trees, trees: a tie
    cfg = BuildConfig(
        stac_url="http://127.0.0.1:1/",
        start=dt.datetime(YEAR, 1, 1, tzinfo=dt.UTC),
        end=dt.datetime(YEAR, 12, 31, tzinfo=dt.UTC),
        size_px=shape[0],
        resolution_m=10.0,
        max_nodata=1.0,
        s2_collection=None,
        s1_collection=None,
    )
    arrays: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {}

    sample_mod.harmonise_labels(dict(natives), arrays, record, cfg)

    layers = {
        p: np.vectorize(lambda v, t=tables[p]: t.get(int(v), 0))(n) for p, n in natives.items()
    }
    want = np.zeros(shape, "uint8")
    agree = np.zeros(shape, "uint8")
    unanimous = voted = 0
    for r in range(shape[0]):
        for c in range(shape[1]):
            values = [int(layers[p][r, c]) for p in VOTERS]
            supports = [
                {v} | lumps[p].get(int(natives[p][r, c]), set()) if v not in (0, 255) else set()
                for p, v in zip(VOTERS, values, strict=True)
            ]
            want[r, c], agree[r, c] = _vote(values, supports)
            voting = [s for s in supports if s]
            voted += bool(voting)
            unanimous += bool(voting) and all(int(want[r, c]) in s for s in voting)
    for product in VOTERS:
        np.testing.assert_array_equal(arrays[f"labels/{product}/las"], layers[product])
        np.testing.assert_array_equal(arrays[f"labels/{product}/native"], natives[product])
    np.testing.assert_array_equal(arrays["consensus"], want)
    np.testing.assert_array_equal(arrays["agreement"], agree)
    assert (want[0] == LAS_NODATA).all() and (want[1] == LAS_IGNORE).all()
    assert record["agreement"] == round(unanimous / voted, 6)
    assert record["ignore_pct"] == round(100 * float((want == 255).mean()), 3)
    counts = json.loads(record["class_counts"])
    for name, stored in [("consensus", arrays["consensus"])] + [
        (p, arrays[f"labels/{p}/las"]) for p in VOTERS
    ]:
        assert counts[name] == {
            str(k): v for k, v in sorted(Counter(stored.ravel().tolist()).items())
        }


def test_a_code_outside_the_mapping_fails_the_sample_naming_product_and_code() -> None:
    native = np.full((4, 4), 10, "uint8")
    native[0, 0] = 11  # not a WorldCover code
    cfg = BuildConfig(
        stac_url="http://127.0.0.1:1/",
        start=dt.datetime(YEAR, 1, 1, tzinfo=dt.UTC),
        end=dt.datetime(YEAR, 12, 31, tzinfo=dt.UTC),
        size_px=4,
        resolution_m=10.0,
        max_nodata=1.0,
        s2_collection=None,
        s1_collection=None,
    )
    with pytest.raises(
        UnknownCodeError, match=r"esa-worldcover: codes not in the legend: 11 \(1 px\)"
    ):
        sample_mod.harmonise_labels({"esa-worldcover": native}, {}, {}, cfg)


# --- Dynamic World: the chosen scene's own labels ---------------------------------------------


def test_dynamic_world_takes_the_chosen_scenes_labels_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image made from the chosen Sentinel-2 scene, not another scene of that day (a second
    overpass at high latitude) nor another day; without the link, the same day's images."""
    when = dt.datetime(YEAR, 7, 1, 10, 0, tzinfo=dt.UTC)
    s2 = _item("S2B_T33_20210701", when)
    paths = {}
    items = []
    for name, value, at, link in [
        ("dw-a-other-pass", 1, when + dt.timedelta(hours=1, minutes=40), "S2A_T33_20210701"),
        ("dw-b-chosen", 2, when, s2.id),
        ("dw-c-next-day", 3, when + dt.timedelta(days=1), "S2A_T33_20210702"),
    ]:
        data = np.full((8, 8), value, "uint8")
        paths[name] = _utm_tif(tmp_path / f"{name}.tif", data, 500_000, 5_000_080, 255)
        items.append(_item(name, at, **{"dynamicworld:s2_item": link}))
    spec = LabelSpec("dynamic-world-v1", "dynamic-world-v1", "label", None)
    files = cast(DatasetCache, _Files(paths))

    native, chosen = sample_mod._read_labels(spec, items, GRID, s2, files)
    assert [it.id for it in chosen] == ["dw-b-chosen"] and (native == 2).all()

    unlinked = [_item(it.id, it.datetime) for it in items]
    native, chosen = sample_mod._read_labels(spec, unlinked, GRID, s2, files)
    assert [it.id for it in chosen] == ["dw-b-chosen", "dw-a-other-pass"]  # nearest in time
    assert (native == 2).all()


def test_the_store_names_the_fill_of_a_product_without_nodata(catalog_copy: Path) -> None:
    """A product with ``nodata: null`` and a class at 0: the build fills pixels without data
    with a value no class uses, but the store said ``nodata: 0`` (and filled with 0), so
    readers dropped class 0 as nodata. The store must name the fill the build writes."""
    from las_builder.build.store import array_specs

    path = catalog_copy / "labels" / "dynamic-world-v1.yaml"  # class 0 is water
    path.write_text(path.read_text().replace("\nnodata: 255\n", "\nnodata: null\n"))
    product = load_label_product("dynamic-world-v1")
    assert product.nodata is None and 0 in product.codes
    cfg = BuildConfig(
        stac_url="http://127.0.0.1:1/",
        start=dt.datetime(YEAR, 1, 1, tzinfo=dt.UTC),
        end=dt.datetime(YEAR, 12, 31, tzinfo=dt.UTC),
        size_px=8,
        resolution_m=10.0,
        max_nodata=1.0,
        s2_collection=None,
        s1_collection=None,
        labels=(LabelSpec("dynamic-world-v1", "dynamic-world", "data", None),),
    )
    native = array_specs(cfg)["labels/dynamic-world-v1/native"]
    assert native.fill == native.attrs["nodata"] == product.fill
    assert product.fill not in product.codes  # 255: no class of the legend
    flags = {c["value"]: (c["is_nodata"], c["ignore"]) for c in native.attrs["classes"]}
    assert flags[0] == (False, False)  # water stays a class
