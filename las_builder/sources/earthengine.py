"""Google Earth Engine as a source of LAS samples: the same modalities, fetched onto our grid.

For one sample :class:`~odc.geo.geobox.GeoBox`, :class:`EarthEngineSource` builds Earth Engine
expressions with the real ``earthengine-api`` client and fetches their pixels with
``ee.data.computePixels`` on a grid equal to the GeoBox (its CRS, affine transform and shape),
so Earth Engine does the reprojection and the arrays come back already on the sample grid.
Which asset serves each modality, the EE band names and their LAS order are plain data in
``catalog/sources/earthengine.yaml``.

Per sample (:meth:`EarthEngineSource.fetch`):

1. Sentinel-2 (``COPERNICUS/S2_SR_HARMONIZED``): the scenes over the sample in the recipe's
   window sorted by ``CLOUDY_PIXEL_PERCENTAGE``; one ``value:compute`` call lists the first
   few (``candidates``), then they are fetched by id in that order until one covers the sample
   (nodata at most ``max_nodata``) with at most ``max_cloud`` percent cloud over the sample
   (from SCL, as on the STAC path): the 12 bands in LAS order (B01..B08, B8A, B09, B11, B12;
   uint16 reflectance x 10000, 0 nodata; the harmonized collection needs no BOA offset) and
   SCL. ``composite: median`` takes the ``composite_k`` first scenes that cover the sample and
   the same median of clear observations as the STAC path.
2. Sentinel-1 (``COPERNICUS/S1_GRD``, IW, VV+VH): the scene closest in time to the chosen
   Sentinel-2 scene; EE serves sigma0 in dB, converted here to the recipe's units (float32,
   NaN nodata).
3. Labels, native codes: Dynamic World (``GOOGLE/DYNAMICWORLD/V1`` band ``label``) from the
   image with the Sentinel-2 scene's ``system:index``, else every image of the same UTC day;
   ESA WorldCover by version (2020: ``v100``, 2021: ``v200``, band ``Map``); MODIS MCD12Q1 by
   year. Masked pixels get the product's nodata from ``catalog/labels``.

Every request is checked: failures after the client's own retries (429, 5xx, broken
connections, with back-off; a read timeout from the catalog) become :class:`EarthEngineError`
with what to do, refused credentials :class:`EarthEngineAuthError`, and an answer that is not
the array asked for (shape, bands, a dtype that would change its values, a cut NPY) an error,
never a silently wrong sample.

Authentication (:func:`authenticate`) uses a service-account key file or the user's default
credentials; key files are never printed or logged. See ``docs/earth-engine.md``.

Example:
    >>> from las_builder.geobox import sample_geobox
    >>> authenticate(project="my-ee-project")  # doctest: +SKIP
    >>> source = EarthEngineSource(date(2021, 6, 1), date(2021, 9, 30),
    ...                            labels=[("esa-worldcover", 2021)])  # doctest: +SKIP
    >>> sample = source.fetch(sample_geobox(4.35, 50.85, 128, 10))  # doctest: +SKIP
    >>> sample.arrays["sentinel-2"].shape  # doctest: +SKIP
    (12, 128, 128)

"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import ee
import google.auth.exceptions
import numpy as np
import yaml
from odc.geo.geobox import GeoBox

from las_builder._paths import catalog_dir
from las_builder.catalog.labels import load_label_product
from las_builder.imagery import s2_nodata

if TYPE_CHECKING:
    from las_builder.build.config import BuildConfig

__all__ = [
    "NO_CREDENTIALS_MESSAGE",
    "SCL_CLOUD",
    "EarthEngineAuth",
    "EarthEngineAuthError",
    "EarthEngineError",
    "EarthEngineNoData",
    "EarthEngineSample",
    "EarthEngineSource",
    "authenticate",
    "catalog",
    "compute_pixels_grid",
    "sample_region",
]

log = logging.getLogger(__name__)

NO_CREDENTIALS_MESSAGE = (
    "no Earth Engine credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key "
    "file or run `earthengine authenticate`; see docs/earth-engine.md"
)
"""The error raised when neither a key file nor default credentials are present."""

SCL_CLOUD = (3, 8, 9, 10)
"""SCL codes counted as cloud: shadow, medium/high probability, thin cirrus (as the STAC path)."""

_INIT_LOCK = threading.Lock()


class EarthEngineError(RuntimeError):
    """An Earth Engine request failed; the message names the request and EE's reason."""


class EarthEngineAuthError(EarthEngineError):
    """No usable Earth Engine credentials. The message never holds a key file's path or text."""


class EarthEngineNoData(Exception):  # noqa: N818 - like SampleSkipped, an outcome
    """The sample cannot be built from Earth Engine; the message is the reason to record."""


@cache
def catalog() -> dict[str, Any]:
    """``catalog/sources/earthengine.yaml`` as plain data."""
    with (catalog_dir() / "sources" / "earthengine.yaml").open(encoding="utf-8") as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


# --------------------------------------------------------------------------- authentication


@dataclass(frozen=True)
class EarthEngineAuth:
    """How a process initialises Earth Engine; picklable, so dask workers can do it too.

    Attributes:
        key_file: A service-account JSON key file; ``None`` means ``GOOGLE_APPLICATION_CREDENTIALS``
            when it names a service-account key, else the default credentials.
        project: The Google Cloud project billed for the requests; ``None`` means
            ``LAS_EE_PROJECT``, else the service account's own project, else the credentials'
            quota project.
        url: The EE REST endpoint; ``None`` is the default endpoint. The high-volume endpoint
            (``catalog()["endpoints"]["high_volume"]``) suits many small requests.

    """

    key_file: str | None = None
    project: str | None = None
    url: str | None = None

    def __repr__(self) -> str:  # never show a key file's path
        key = "<key file>" if self.key_file else None
        return f"EarthEngineAuth(key_file={key}, project={self.project!r}, url={self.url!r})"


def _read_service_account(key_file: str) -> dict[str, Any] | None:
    """The key file's JSON when it is a service-account key; ``None`` for other JSON files.

    Raises:
        EarthEngineAuthError: The file cannot be read or is not JSON (path and text not shown).

    """
    try:
        with open(key_file, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise EarthEngineAuthError(
            "the Earth Engine key file does not exist (check GOOGLE_APPLICATION_CREDENTIALS or "
            "the key_file argument); see docs/earth-engine.md"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise EarthEngineAuthError(
            f"the Earth Engine key file cannot be read as JSON ({type(err).__name__}); "
            "see docs/earth-engine.md"
        ) from None
    if not isinstance(info, dict):
        raise EarthEngineAuthError("the Earth Engine key file is not a JSON object")
    return info if info.get("type") == "service_account" else None


def authenticate(
    key_file: str | None = None, project: str | None = None, *, url: str | None = None
) -> str | None:
    """Initialise the Earth Engine client of this process.

    With a service-account key file (``key_file``, else ``GOOGLE_APPLICATION_CREDENTIALS`` when
    it names one), the client signs in as that account (``ee.ServiceAccountCredentials`` with
    the email read from the file). Otherwise it uses the default credentials:
    ``earthengine authenticate`` or Application Default Credentials (``ee.Initialize``).
    Initialising again (another endpoint or account) resets the client first.

    Args:
        key_file: Path of a service-account JSON key file.
        project: Cloud project for quota and billing (see :class:`EarthEngineAuth`).
        url: EE REST endpoint (default: Earth Engine's).

    Returns:
        The project the client bills, or ``None`` when Earth Engine picked it.

    Raises:
        EarthEngineAuthError: No credentials, an unreadable key file, or Earth Engine refused
            them. The message never holds the key file's path or contents.

    """
    project = project or os.environ.get("LAS_EE_PROJECT") or None
    env_key = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
    credentials: Any = "persistent"
    info = None
    if key_file is not None:
        info = _read_service_account(key_file)
        if info is None:
            raise EarthEngineAuthError(
                "the Earth Engine key file is not a service-account key (its JSON has no "
                '"type": "service_account"); see docs/earth-engine.md'
            )
    elif env_key is not None and not os.path.isfile(env_key):
        raise EarthEngineAuthError(
            "GOOGLE_APPLICATION_CREDENTIALS names no file (path not shown): point it at the "
            "service-account key, or unset it to use `earthengine authenticate`'s credentials; "
            "see docs/earth-engine.md"
        )
    elif env_key is not None:
        info = _read_service_account(env_key)  # None: e.g. gcloud user credentials, use ADC
        key_file = env_key if info is not None else None
    if info is not None and key_file is not None:
        email = info.get("client_email")
        if not isinstance(email, str) or not email:
            raise EarthEngineAuthError('the service-account key file has no "client_email"')
        try:
            credentials = ee.ServiceAccountCredentials(email, key_file)
        except Exception as err:  # noqa: BLE001 - google-auth raises several types
            raise EarthEngineAuthError(
                f"the service-account key file could not be loaded ({type(err).__name__}); "
                "check that it is a complete JSON key; see docs/earth-engine.md"
            ) from None
        project = project or info.get("project_id") or None
    if ee.data.is_initialized():
        ee.Reset()
    try:
        ee.Initialize(credentials=credentials, project=project, url=url)
    except ee.EEException as err:
        text = str(err)
        if credentials == "persistent" and (
            "authorize access" in text or "earthengine authenticate" in text
        ):
            raise EarthEngineAuthError(NO_CREDENTIALS_MESSAGE) from None
        raise EarthEngineAuthError(
            f"Earth Engine refused to initialise: {_first_line(err)} ({_AUTH_HINT})"
        ) from None
    except Exception as err:  # noqa: BLE001 - token refresh errors of google-auth
        raise EarthEngineAuthError(
            f"Earth Engine could not be initialised ({type(err).__name__}: "
            f"{_first_line(err)}); {_AUTH_HINT}"
        ) from None
    # The client waits for ever by default: a stalled connection would hang the worker.
    ee.data.setDeadline(1000 * float(catalog()["compute_pixels"]["timeout_s"]))
    used = project or ee.data._get_state().cloud_api_user_project  # noqa: SLF001
    log.debug(
        "Earth Engine initialised (%s credentials, project %s)",
        "service-account" if info is not None else "default",
        used,
    )
    return used if isinstance(used, str) else None


_AUTH_HINT = (
    "check that the key is current, that the project is registered for Earth Engine and that "
    "the account may use it (project / LAS_EE_PROJECT); see docs/earth-engine.md"
)


def _first_line(err: BaseException) -> str:
    """The first line of an error, which for google-auth errors never holds key material."""
    return str(err).splitlines()[0][:200] if str(err) else ""


# --------------------------------------------------------------------------- grids


def compute_pixels_grid(
    geobox: GeoBox,
    row0: int = 0,
    rows: int | None = None,
    col0: int = 0,
    cols: int | None = None,
) -> dict[str, Any]:
    """The ``grid`` of a computePixels request: exactly the GeoBox (or a window of it).

    ``affineTransform`` is the GeoBox's transform: ``translateX``/``translateY`` are its
    upper-left corner and ``scaleY`` is negative for north-up grids. A window keeps the scales
    and moves the corner to its first pixel, so its pixels are the GeoBox's own.

    Args:
        geobox: The sample grid (a CRS with an EPSG code).
        row0: First row of the window (0: from the top).
        rows: Number of rows (default: all rows from ``row0``).
        col0: First column of the window (0: from the left).
        cols: Number of columns (default: all columns from ``col0``).

    Returns:
        ``{"dimensions": {"width", "height"}, "affineTransform": {...}, "crsCode": "EPSG:n"}``.

    Raises:
        ValueError: The GeoBox has no CRS, or its CRS has no EPSG code.

    """
    epsg = _epsg(geobox)
    height, width = geobox.shape.yx
    rows = height - row0 if rows is None else rows
    cols = width - col0 if cols is None else cols
    t = geobox.transform
    return {
        "dimensions": {"width": int(cols), "height": int(rows)},
        "affineTransform": {
            "scaleX": float(t.a),
            "shearX": float(t.b),
            "translateX": float(t.c + col0 * t.a + row0 * t.b),
            "shearY": float(t.d),
            "scaleY": float(t.e),
            "translateY": float(t.f + col0 * t.d + row0 * t.e),
        },
        "crsCode": f"EPSG:{epsg}",
    }


def sample_region(geobox: GeoBox) -> ee.Geometry:
    """The sample's footprint as an EE rectangle in the sample's own CRS (planar edges).

    Stating the rectangle in the UTM/UPS CRS keeps it exact and needs no antimeridian split.

    Raises:
        ValueError: The GeoBox has no CRS, or its CRS has no EPSG code.

    """
    epsg = _epsg(geobox)
    left, bottom, right, top = geobox.boundingbox
    # ee types this call as Any (an untyped decorator wraps it): name its documented type.
    region: ee.Geometry = ee.Geometry.Rectangle(
        [float(left), float(bottom), float(right), float(top)], f"EPSG:{epsg}", False
    )
    return region


def _epsg(geobox: GeoBox) -> int:
    """The EPSG code of the GeoBox's CRS.

    Args:
        geobox: A sample grid.

    Returns:
        The EPSG code.

    Raises:
        ValueError: The GeoBox has no CRS, or its CRS has no EPSG code.

    """
    epsg = geobox.crs.epsg if geobox.crs is not None else None
    if epsg is None:
        raise ValueError(f"the GeoBox's CRS has no EPSG code: {geobox.crs}")
    return epsg


# --------------------------------------------------------------------------- the source


@dataclass
class EarthEngineSample:
    """The arrays and index fields of one sample, keyed as on the STAC path.

    ``arrays`` holds ``sentinel-2`` (12, h, w) uint16, ``sentinel-2-scl`` (h, w) uint8,
    ``sentinel-1`` (2, h, w) float32 and ``labels/<product>/native`` (h, w) in each product's
    dtype; ``record`` the scene ids and times (``s2_item``, ``s2_datetime``, ``cloud_pct``,
    ``s1_item``, ``s1_datetime``, ``s1_orbit_state``, ``<product>_items``, ``nodata_pct``).
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


ComputePixels = Callable[[dict[str, Any]], Any]
ComputeValue = Callable[[Any], Any]


def _iso_ms(ms: float) -> str:
    when = dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _day_window(ms: float) -> tuple[str, str]:
    """The UTC day of a time in milliseconds, as EE filterDate bounds [start, end)."""
    day = dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC).date()
    return day.isoformat(), (day + dt.timedelta(days=1)).isoformat()


class EarthEngineSource:
    """Fetches LAS samples from Earth Engine for a recipe's window and products.

    Building expressions needs an initialised client: :meth:`fetch` calls :func:`authenticate`
    with ``auth`` once per process when the client is not initialised yet.

    Args:
        start: First day of the window (included).
        end: Last day of the window (included; EE's end bound is exclusive, so the request
            ends the day after).
        sentinel_2: Fetch Sentinel-2 (bands and SCL).
        max_cloud: Highest cloud over the sample (SCL shadow, cloud and cirrus) of the chosen
            scene, or share of the sample no scene of a composite saw clear, in percent.
        composite: ``None`` (the chosen scene) or ``"median"`` (median of clear observations
            of the ``composite_k`` clearest scenes).
        composite_k: Scenes in a median composite.
        sentinel_1: Fetch Sentinel-1 VV and VH.
        s1_units: ``"linear"`` (power) or ``"db"``.
        labels: ``(product, year)`` pairs; ``year`` is ``None`` for per-scene products
            (Dynamic World).
        max_nodata: Highest nodata fraction of a scene over the sample before the next
            candidate is tried.
        candidates: How many scenes of each sensor are listed per sample.
        auth: How to initialise Earth Engine in a process that has not yet.
        compute_pixels: The ``computePixels`` call (default ``ee.data.computePixels``).
        compute_value: The ``value:compute`` call (default ``ee.data.computeValue``).
        max_request_bytes: Largest request; bigger grids are fetched in bands of rows
            (default: EE's 48 MiB limit from the catalog).

    """

    def __init__(
        self,
        start: dt.date,
        end: dt.date,
        *,
        sentinel_2: bool = True,
        max_cloud: float = 60.0,
        composite: str | None = None,
        composite_k: int = 3,
        sentinel_1: bool = True,
        s1_units: str = "linear",
        labels: Sequence[tuple[str, int | None]] = (),
        max_nodata: float = 0.2,
        candidates: int = 5,
        auth: EarthEngineAuth | None = None,
        compute_pixels: ComputePixels | None = None,
        compute_value: ComputeValue | None = None,
        max_request_bytes: int | None = None,
    ) -> None:
        if end < start:
            raise ValueError(f"end {end} is before start {start}")
        if composite not in (None, "median"):
            raise ValueError(f"composite {composite!r}: use None or 'median'")
        if s1_units not in ("linear", "db"):
            raise ValueError(f"Sentinel-1 units {s1_units!r}: use 'linear' or 'db'")
        self.start = start
        self.end = end
        self.sentinel_2 = sentinel_2
        self.max_cloud = float(max_cloud)
        self.composite = composite
        self.composite_k = int(composite_k)
        self.sentinel_1 = sentinel_1
        self.s1_units = s1_units
        self.labels = [(str(p), None if y is None else int(y)) for p, y in labels]
        self.max_nodata = float(max_nodata)
        self.candidates = max(int(candidates), self.composite_k if composite else 1)
        self.auth = auth or EarthEngineAuth()
        self._compute_pixels = compute_pixels
        self._compute_value = compute_value
        limits = catalog()["compute_pixels"]
        self.max_request_bytes = min(
            int(max_request_bytes or limits["max_bytes"]), int(limits["max_bytes"])
        )
        if self.max_request_bytes < 1:
            raise ValueError(f"max_request_bytes {max_request_bytes}: use a positive size")
        for product, year in self.labels:
            # Fail early on products EE does not serve, and on per-scene products without
            # the Sentinel-2 scene they are matched to (they would be all nodata).
            if self._label_spec(product, year)["match"] == "s2-scene" and not sentinel_2:
                raise ValueError(
                    f"{product} is matched to the chosen Sentinel-2 scene, so it needs "
                    "Sentinel-2 in the recipe (imagery.sentinel-2)"
                )

    @classmethod
    def from_config(
        cls, cfg: BuildConfig, auth: EarthEngineAuth | None = None
    ) -> EarthEngineSource:
        """The source of a build configuration (``las_builder.build.config``).

        NAIP is not fetched from Earth Engine; a configuration with NAIP logs a warning.
        """
        if cfg.naip_collection:
            log.warning("NAIP is not fetched from Earth Engine; samples will have no naip array")
        return cls(
            cfg.start.date(),
            cfg.end.date(),
            sentinel_2=cfg.s2_collection is not None,
            max_cloud=cfg.max_cloud,
            composite=cfg.composite,
            composite_k=cfg.composite_k,
            sentinel_1=cfg.s1_collection is not None,
            s1_units=cfg.s1_units,
            labels=[(spec.product, spec.year) for spec in cfg.labels],
            max_nodata=cfg.max_nodata,
            auth=auth,
        )

    # ----------------------------------------------------------------- catalog views

    @property
    def s2_spec(self) -> dict[str, Any]:
        """The Sentinel-2 entry of the source catalog."""
        return dict(catalog()["imagery"]["sentinel-2"])

    @property
    def s1_spec(self) -> dict[str, Any]:
        """The Sentinel-1 entry of the source catalog."""
        return dict(catalog()["imagery"]["sentinel-1"])

    def _label_spec(self, product: str, year: int | None) -> dict[str, Any]:
        """The catalog entry of a label product, with ``asset`` resolved for ``year``."""
        labels = catalog()["labels"]
        if product not in labels:
            why = catalog().get("unavailable", {}).get(product, "no entry")
            raise ValueError(
                f"label product {product!r} is not available on Earth Engine ({why}); "
                f"available: {', '.join(labels)}"
            )
        spec = dict(labels[product])
        if spec["match"] == "version":
            if year is None:
                raise ValueError(f"{product}: a year is needed to pick the Earth Engine version")
            match = [v for v in spec["versions"] if int(v["year"]) == year]
            if not match:
                years = ", ".join(str(v["year"]) for v in spec["versions"])
                raise ValueError(f"{product}: no Earth Engine version for {year} (years: {years})")
            spec["asset"] = match[0]["asset"]
        elif spec["match"] == "year" and year is None:
            raise ValueError(f"{product}: a year is needed (one map per year)")
        return spec

    # ----------------------------------------------------------------- expressions

    def _window(self) -> tuple[str, str]:
        """The recipe window as EE filterDate bounds: [start, end + 1 day)."""
        return self.start.isoformat(), (self.end + dt.timedelta(days=1)).isoformat()

    def s2_collection(self, geobox: GeoBox) -> ee.ImageCollection:
        """Sentinel-2 scenes over the sample in the window, clearest (scene property) first.

        Scenes are not filtered by their scene-wide cloud cover: as on the STAC path, only
        the cloud over the sample (from SCL) decides, so a cloudy scene can still serve.
        """
        spec = self.s2_spec
        prop = spec["cloud_property"]
        # ee types its constructors and many methods as Any (untyped decorators wrap them), so
        # the results here and below are named with their documented types.
        col: ee.ImageCollection = (
            ee.ImageCollection(spec["asset"])
            .filterBounds(sample_region(geobox))
            .filterDate(*self._window())
            .sort(prop)
        )
        return col

    def s2_image(self, scene_id: str) -> ee.Image:
        """One Sentinel-2 scene by ``system:index``: 12 LAS bands (bilinear) then SCL (nearest).

        Every band is uint16 with 0 where EE masks it (SCL fits in uint16; it is cast back to
        uint8 after the fetch). Unmasked reflectance is at least 1, as on the STAC path
        (``harmonize_s2``): 0 means nodata in LAS, and the harmonised collection can serve 0 for
        a dark pixel whose negative reflectance it clamped.
        """
        spec = self.s2_spec
        image = ee.Image(f"{spec['asset']}/{scene_id}")
        bands = (
            image.select([b["ee"] for b in spec["bands"]], [b["las"] for b in spec["bands"]])
            .resample(spec["resampling"]["bands"])
            .max(int(spec["min_valid_dn"]))  # keeps the mask: masked pixels stay masked
        )
        scl = image.select([spec["scl"]["ee"]], [spec["scl"]["las"]])
        out: ee.Image = bands.addBands(scl).unmask(spec["nodata"]).toUint16()
        return out

    def s1_collection(self, geobox: GeoBox, near_ms: float | None = None) -> ee.ImageCollection:
        """IW scenes with VV and VH over the sample in the window, closest to ``near_ms`` first.

        Args:
            geobox: The sample grid.
            near_ms: Time (ms since 1970) of the chosen Sentinel-2 scene; ``None`` sorts by time.

        """
        spec = self.s1_spec
        col: ee.ImageCollection = (
            ee.ImageCollection(spec["asset"])
            .filterBounds(sample_region(geobox))
            .filterDate(*self._window())
            .filter(ee.Filter.eq("instrumentMode", spec["filters"]["instrumentMode"]))
        )
        for pol in spec["filters"]["transmitterReceiverPolarisation"]:
            col = col.filter(ee.Filter.listContains("transmitterReceiverPolarisation", pol))
        if near_ms is None:
            col = col.sort("system:time_start")
            return col
        near = ee.Number(float(near_ms))

        def distance(image: ee.Image) -> ee.Image:
            start = ee.Number(image.get("system:time_start"))
            # Element.set is typed to return Element; it casts the result back to an Image.
            return cast(ee.Image, image.set("las_dt", start.subtract(near).abs()))

        col = col.map(distance).sort("las_dt")
        return col

    def s1_image(self, scene_id: str) -> ee.Image:
        """One Sentinel-1 scene by ``system:index``: VV, VH in dB, masked pixels at the fill."""
        spec = self.s1_spec
        image = ee.Image(f"{spec['asset']}/{scene_id}")
        out: ee.Image = (
            image.select([b["ee"] for b in spec["bands"]], [b["las"] for b in spec["bands"]])
            .resample(spec["resampling"])
            .unmask(float(spec["fill"]))
            .toFloat()
        )
        return out

    def label_image(
        self, product: str, year: int | None, geobox: GeoBox, scene_ids: Sequence[str] = ()
    ) -> ee.Image:
        """A label product's native codes as one band named ``product``, nodata where masked.

        Args:
            product: Label product id.
            year: The recipe's year (``None`` for per-scene products).
            geobox: The sample grid.
            scene_ids: Per-scene products: the ``system:index`` of the images to mosaic, the
                first on top (as the STAC path fills from its first item).

        """
        spec = self._label_spec(product, year)
        band = spec["band"]
        if spec["match"] == "s2-scene":
            images = [ee.Image(f"{spec['asset']}/{i}").select([band]) for i in reversed(scene_ids)]
            mosaic = ee.ImageCollection.fromImages(images).mosaic()
        else:
            col = ee.ImageCollection(spec["asset"]).filterBounds(sample_region(geobox))
            if spec["match"] == "year" and year is not None:  # _label_spec demands the year
                col = col.filterDate(f"{year}-01-01", f"{year + 1}-01-01")
            mosaic = col.mosaic()
        out: ee.Image = mosaic.select([band], [product]).unmask(int(spec["nodata"]))
        return out

    def scene_info(
        self, collection: ee.ImageCollection, properties: Sequence[str]
    ) -> ee.Dictionary:
        """The first ``candidates`` scenes' properties, one list per property."""
        first = collection.limit(self.candidates)
        return ee.Dictionary({p: first.aggregate_array(p) for p in properties})

    # ----------------------------------------------------------------- requests

    def check_sign_in(self) -> None:
        """Sign in once, as each worker will, then reset the client.

        For the build's driver, before any shard: missing or refused credentials are one
        error then, not one failed sample each. The client is reset so that worker processes
        forked afterwards sign in themselves (a client's connections are not shared).

        Raises:
            EarthEngineAuthError: As :func:`authenticate`.
        """
        with _INIT_LOCK:
            a = self.auth
            authenticate(a.key_file, a.project, url=a.url)
            ee.Reset()

    def _ensure_ready(self) -> None:
        """Initialise the client of this process once (threads of a worker share it)."""
        with _INIT_LOCK:
            if not ee.data.is_initialized():
                a = self.auth
                authenticate(a.key_file, a.project, url=a.url)

    def _value(self, obj: Any, what: str) -> Any:
        call = self._compute_value or ee.data.computeValue
        try:
            return call(obj)
        except google.auth.exceptions.GoogleAuthError as err:  # the token could not be renewed
            raise _auth_failed(err, f"value:compute of {what}") from None
        except (ee.EEException, OSError) as err:  # OSError: the connection, after retries
            raise EarthEngineError(
                f"Earth Engine value:compute of {what}: {_first_line(err)}{_hint(err)}"
            ) from None

    def _scene_lists(self, info: Any, keys: Sequence[str], what: str) -> list[list[Any]]:
        """The property lists of a scene listing, checked to describe the same scenes.

        ``aggregate_array`` leaves out scenes that lack the property, so lists of unequal
        length no longer pair ids with times: the sample fails rather than mix up scenes.
        """
        lists = [info.get(k) if isinstance(info, Mapping) else None for k in keys]
        if any(not isinstance(v, list) for v in lists):
            got = sorted(info) if isinstance(info, Mapping) else type(info).__name__
            raise EarthEngineError(
                f"Earth Engine value:compute of {what}: expected lists {list(keys)}, got {got}"
            )
        lengths = {k: len(v) for k, v in zip(keys, cast(list[list[Any]], lists), strict=True)}
        if len(set(lengths.values())) > 1:
            raise EarthEngineError(
                f"Earth Engine value:compute of {what}: property lists of unequal length "
                f"{lengths} (a scene lacks a property), so scenes cannot be matched to their "
                "properties; check the catalog's property names (catalog/sources/earthengine.yaml)"
            )
        return cast(list[list[Any]], lists)

    def windows(
        self, height: int, width: int, n_bands: int, itemsize: int
    ) -> list[tuple[int, int, int, int]]:
        """The ``(row0, rows, col0, cols)`` windows a grid is fetched in.

        Each window is within EE's computePixels limits (``max_request_bytes`` of pixels and
        ``max_dimension`` pixels per axis): whole rows when they fit, else also split by
        columns.

        Raises:
            ValueError: More bands than one request may hold.
        """
        limits = catalog()["compute_pixels"]
        if n_bands > int(limits["max_bands"]):
            raise ValueError(f"{n_bands} bands: one computePixels holds {limits['max_bands']}")
        max_dim = int(limits["max_dimension"])
        pixel = n_bands * itemsize
        cols_per = max(1, min(width, max_dim, self.max_request_bytes // pixel))
        rows_per = max(1, min(height, max_dim, self.max_request_bytes // (cols_per * pixel)))
        return [
            (row0, min(rows_per, height - row0), col0, min(cols_per, width - col0))
            for row0 in range(0, height, rows_per)
            for col0 in range(0, width, cols_per)
        ]

    def pixels(
        self, image: ee.Image, geobox: GeoBox, bands: Sequence[str], dtype: str, what: str
    ) -> np.ndarray:
        """Fetch an image on the GeoBox's grid as (bands, rows, cols), in ``bands`` order.

        Grids over the request limits are fetched in windows (:meth:`windows`), each with its
        own corner. Each answer is checked: its shape, its bands, and that its values fit
        ``dtype`` unchanged (a lossy cast would give a silently wrong sample).

        Raises:
            EarthEngineError: A request failed or its answer is not the array asked for.
            EarthEngineAuthError: The credentials were refused mid-build.
        """
        call = self._compute_pixels or ee.data.computePixels
        height, width = geobox.shape.yx
        out = np.empty((len(bands), height, width), dtype=dtype)
        for row0, rows, col0, cols in self.windows(
            height, width, len(bands), np.dtype(dtype).itemsize
        ):
            request = {
                "expression": image,
                "fileFormat": catalog()["compute_pixels"]["file_format"],
                "grid": compute_pixels_grid(geobox, row0, rows, col0, cols),
            }
            try:
                data = call(request)
            except google.auth.exceptions.GoogleAuthError as err:
                raise _auth_failed(err, f"computePixels of {what}") from None
            except (ee.EEException, OSError) as err:  # OSError: the connection, after retries
                raise EarthEngineError(
                    f"Earth Engine computePixels of {what}: {_first_line(err)}{_hint(err)}"
                ) from None
            except (ValueError, EOFError) as err:  # the client's NPY decoding
                raise EarthEngineError(
                    f"Earth Engine computePixels of {what}: the answer is not a complete NPY "
                    f"array ({type(err).__name__}: {_first_line(err)}); retry the sample"
                ) from None
            window = out[:, row0 : row0 + rows, col0 : col0 + cols]
            window[...] = _checked_answer(data, (rows, cols), bands, dtype, what)
        return out

    # ----------------------------------------------------------------- one sample

    def fetch(self, geobox: GeoBox) -> EarthEngineSample:
        """Fetch one sample.

        Args:
            geobox: The sample grid.

        Returns:
            The arrays and record (see :class:`EarthEngineSample`).

        Raises:
            EarthEngineNoData: No Sentinel-2 or Sentinel-1 scene fits, or the chosen scene is
                too cloudy over the sample; the message is the reason.
            EarthEngineError: A request failed.
            EarthEngineAuthError: The client could not be initialised.

        """
        self._ensure_ready()
        sample = EarthEngineSample()
        s2_id: str | None = None
        s2_ms: float | None = None
        if self.sentinel_2:
            s2_id, s2_ms = self._fetch_s2(geobox, sample)
        info = self._s1_and_scene_labels_info(geobox, s2_id, s2_ms)
        if self.sentinel_1:
            self._fetch_s1(geobox, info["s1"], sample)
        self._fetch_labels(geobox, info.get("dw_same", []), info.get("dw_day", []), sample)
        nodata = s2_nodata(sample.arrays)
        sample.record["nodata_pct"] = (
            0.0 if nodata is None else round(100 * float(nodata.mean()), 3)
        )
        return sample

    def _fetch_s2(self, geobox: GeoBox, sample: EarthEngineSample) -> tuple[str, float]:
        """Choose and fetch the Sentinel-2 scene (or composite); return its id and time (ms)."""
        spec = self.s2_spec
        prop, id_prop = spec["cloud_property"], spec["id_property"]
        info = self._value(
            self.scene_info(self.s2_collection(geobox), [id_prop, "system:time_start", prop]),
            "the Sentinel-2 scenes",
        )
        ids, times, clouds = self._scene_lists(
            info, [id_prop, "system:time_start", prop], "the Sentinel-2 scenes"
        )
        if not ids:
            raise EarthEngineNoData(
                f"no {spec['asset']} scene between {self.start:%Y-%m-%d} and {self.end:%Y-%m-%d}"
            )
        names = [*(b["las"] for b in spec["bands"]), spec["scl"]["las"]]
        wanted = self.composite_k if self.composite == "median" else 1
        used: list[tuple[int, np.ndarray, np.ndarray, float]] = []
        nodata_fracs: list[float] = []
        cloudy: list[tuple[float, str]] = []
        for i, scene in enumerate(ids):  # clearest scene property first, as listed
            stack = self.pixels(self.s2_image(scene), geobox, names, "uint16", f"S2 {scene}")
            refl, scl = stack[:-1], stack[-1].astype(np.uint8)
            valid = (scl > 0) & (refl > 0).all(axis=0)  # 0 in any band is nodata
            refl[:, ~valid] = 0
            scl[~valid] = 0
            nodata_fracs.append(1.0 - float(valid.mean()))
            if nodata_fracs[-1] > self.max_nodata:
                continue
            # No valid pixel (max_nodata 1): all cloud, as the STAC path counts it.
            cloud_pct = (
                100.0 * float(np.isin(scl, SCL_CLOUD)[valid].mean()) if valid.any() else 100.0
            )
            if self.composite is None and cloud_pct > self.max_cloud:
                cloudy.append((cloud_pct, scene))
                continue
            used.append((i, refl, scl, cloud_pct))
            if len(used) >= wanted:
                break
        if not used and cloudy:
            cloud_pct, scene = min(cloudy)
            raise EarthEngineNoData(
                f"too cloudy: {cloud_pct:.1f}% cloud over the sample in the clearest scene "
                f"{scene} > {self.max_cloud:.0f}%"
            )
        if not used:
            raise EarthEngineNoData(
                f"too much nodata: {100 * min(nodata_fracs):.1f}% of the best of {len(ids)} "
                f"Sentinel-2 scenes > {100 * self.max_nodata:.0f}%"
            )
        best, refl, scl, cloud_pct = used[0]
        if self.composite == "median":
            from las_builder.build.sample import median_composite

            refl = median_composite([u[1] for u in used], [u[2] for u in used])
            seen = np.zeros(geobox.shape.yx, dtype=bool)
            for u in used:
                seen |= (u[2] > 0) & ~np.isin(u[2], SCL_CLOUD)
            cloud_pct = 100.0 * float((~seen).mean())
            sample.record["s2_composite_items"] = [ids[u[0]] for u in used]
            if cloud_pct > self.max_cloud:
                raise EarthEngineNoData(
                    f"too cloudy: {cloud_pct:.1f}% of the sample not seen clear by the "
                    f"{len(used)} scenes of the composite > {self.max_cloud:.0f}%"
                )
        sample.arrays["sentinel-2"] = refl.astype(np.uint16)
        sample.arrays["sentinel-2-scl"] = scl
        sample.record.update(
            s2_item=ids[best],
            s2_datetime=_iso_ms(times[best]),
            cloud_pct=round(cloud_pct, 3),
            s2_scene_cloud_pct=float(clouds[best]),
        )
        return ids[best], float(times[best])

    def _s1_and_scene_labels_info(
        self, geobox: GeoBox, s2_id: str | None, s2_ms: float | None
    ) -> dict[str, Any]:
        """One value:compute for the Sentinel-1 candidates and the per-scene label images."""
        parts: dict[str, Any] = {}
        if self.sentinel_1:
            id_prop, orbit = self.s1_spec["id_property"], self.s1_spec["orbit_property"]
            parts["s1"] = self.scene_info(
                self.s1_collection(geobox, s2_ms), [id_prop, "system:time_start", orbit]
            )
        scene_products = [
            p for p, y in self.labels if self._label_spec(p, y)["match"] == "s2-scene"
        ]
        if scene_products and s2_id is not None and s2_ms is not None:
            spec = self._label_spec(scene_products[0], None)
            col = ee.ImageCollection(spec["asset"]).filterBounds(sample_region(geobox))
            prop = spec["match_property"]
            parts["dw_same"] = col.filter(ee.Filter.eq(prop, s2_id)).aggregate_array(prop)
            parts["dw_day"] = col.filterDate(*_day_window(s2_ms)).aggregate_array(prop)
        if not parts:
            return {}
        return dict(self._value(ee.Dictionary(parts), "the Sentinel-1 and Dynamic World scenes"))

    def _fetch_s1(
        self, geobox: GeoBox, info: Mapping[str, list[Any]], sample: EarthEngineSample
    ) -> None:
        spec = self.s1_spec
        id_prop, orbit = spec["id_property"], spec["orbit_property"]
        names = [b["las"] for b in spec["bands"]]
        fill = float(spec["fill"])
        ids, times, orbits = self._scene_lists(
            info, [id_prop, "system:time_start", orbit], "the Sentinel-1 scenes"
        )
        for i, scene in enumerate(ids):
            db = self.pixels(self.s1_image(scene), geobox, names, "float32", f"S1 {scene}")
            db[db == fill] = np.nan
            if float(np.isnan(db[0]).mean()) <= self.max_nodata:
                if self.s1_units == "linear":
                    out = np.power(10.0, db / 10.0, dtype=np.float32)
                else:
                    out = db.astype(np.float32)
                sample.arrays["sentinel-1"] = out
                sample.record.update(
                    s1_item=scene,
                    s1_datetime=_iso_ms(times[i]),
                    s1_orbit_state=str(orbits[i]).lower(),
                )
                return
        raise EarthEngineNoData(f"no {spec['asset']} scene covers the sample")

    def _fetch_labels(
        self,
        geobox: GeoBox,
        dw_same: Sequence[str],
        dw_day: Sequence[str],
        sample: EarthEngineSample,
    ) -> None:
        """All label products in one request per dtype; per-scene products as the STAC path."""
        chosen = list(dw_same) or list(dw_day)  # the S2 scene's own image, else the same day
        by_dtype: dict[str, list[tuple[str, ee.Image]]] = {}
        for product, year in self.labels:
            spec = self._label_spec(product, year)
            legend = load_label_product(product)
            nodata = legend.fill
            key = f"labels/{product}/native"
            if spec["match"] == "s2-scene":
                sample.record[f"{product}_items"] = chosen
                if not chosen:
                    sample.arrays[key] = np.full(geobox.shape.yx, nodata, dtype=legend.dtype)
                    continue
                image = self.label_image(product, year, geobox, chosen)
            else:
                sample.record[f"{product}_items"] = [spec["asset"]]
                image = self.label_image(product, year, geobox)
            by_dtype.setdefault(legend.dtype, []).append((product, image))
        for dtype, group in by_dtype.items():
            stacked = group[0][1]
            for _, image in group[1:]:
                stacked = stacked.addBands(image)
            cast = getattr(stacked, _EE_CAST[dtype])()
            names = [p for p, _ in group]
            data = self.pixels(cast, geobox, names, dtype, f"labels {', '.join(names)}")
            for i, product in enumerate(names):
                sample.arrays[f"labels/{product}/native"] = data[i]


def _auth_failed(err: BaseException, what: str) -> EarthEngineAuthError:
    """The error of credentials refused mid-build (google-auth could not renew the token)."""
    return EarthEngineAuthError(
        f"Earth Engine {what}: the credentials were refused ({type(err).__name__}: "
        f"{_first_line(err)}); {_AUTH_HINT}"
    )


def _hint(err: BaseException) -> str:
    """What to do about a failed request, for the errors whose cause is known."""
    text = str(err).lower()
    if isinstance(err, TimeoutError) or "timed out" in text:
        return (
            f" (timed out: the client waits {catalog()['compute_pixels']['timeout_s']} s, EE "
            "computes for 5 minutes at most; retry the sample, or use smaller samples)"
        )
    if isinstance(err, ConnectionError) or "connection broken" in text:
        return " (the connection broke, also on the client's retries; retry the sample)"
    if "too many" in text or "quota" in text or "rate limit" in text:
        return (
            " (Earth Engine quota, still refused after the client's retries: lower workers x "
            "threads or the request rate, then retry; see docs/earth-engine.md section 4)"
        )
    if "permission" in text or "authentication" in text or "unauthenticated" in text:
        return f" ({_AUTH_HINT})"
    return ""


def _checked_answer(
    data: Any, shape: tuple[int, int], bands: Sequence[str], dtype: str, what: str
) -> np.ndarray:
    """A computePixels answer as (bands, rows, cols) of ``dtype``, or the reason it is wrong.

    The answer must be a structured array of ``shape`` with a scalar field per band (any
    order; extra fields are ignored), whose values ``dtype`` holds exactly: a safe cast, a
    float narrowed to float32, or integers within ``dtype``'s range.

    Raises:
        EarthEngineError: The answer is not that; the message says what came instead.
    """
    names = getattr(getattr(data, "dtype", None), "names", None) or ()
    if getattr(data, "shape", None) != shape or not set(bands) <= set(names):
        raise EarthEngineError(
            f"Earth Engine computePixels of {what}: expected a {shape[0]}x{shape[1]} array "
            f"with bands {list(bands)}, got shape {getattr(data, 'shape', None)} with "
            f"fields {list(names)}"
        )
    target = np.dtype(dtype)
    out = np.empty((len(bands), *shape), dtype=target)
    for i, name in enumerate(bands):
        field_type = data.dtype[name]
        values = data[name]
        if field_type.shape != ():
            fits = False
        elif np.can_cast(field_type, target, casting="safe"):
            fits = True
        elif field_type.kind == "f" and target.kind == "f":
            fits = True  # float64 for float32: a narrower float is what was asked
        elif field_type.kind in "iu" and target.kind in "iu":
            info = np.iinfo(target)
            fits = values.size == 0 or (info.min <= values.min() and values.max() <= info.max)
        else:
            fits = False
        if not fits:
            raise EarthEngineError(
                f"Earth Engine computePixels of {what}: band {name} came as {field_type}, "
                f"which {dtype} cannot hold unchanged (the expression's cast was not applied)"
            )
        out[i] = values
    return out


_EE_CAST = {
    "uint8": "toUint8",
    "int8": "toInt8",
    "uint16": "toUint16",
    "int16": "toInt16",
    "uint32": "toUint32",
    "int32": "toInt32",
}
"""The ee.Image cast of each label dtype of catalog/labels."""
