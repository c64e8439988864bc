"""Find the STAC items under a group of samples (one search per collection per shard)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from pystac_client import Client
from pystac_client.exceptions import APIError
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from las_builder.security import redact
from las_builder.stac import SceneItem, parse_item

log = logging.getLogger(__name__)

STAC_TIMEOUT_ENV = "LAS_STAC_TIMEOUT_S"
"""Environment variable: seconds before a STAC request times out (default 60)."""
PARSED_ITEMS = 256
"""Parsed items kept (a shard finds tens; ~30 KB each with a label legend)."""
# Client errors that another try cannot fix: bad request, unauthorised, forbidden, not found.
_NO_RETRY = range(400, 500)
_RETRY_ANYWAY = (408, 429)


class SearchError(RuntimeError):
    """A STAC search failed after retries; the message names the endpoint and collection."""


def _stac_timeout() -> float:
    try:
        return float(os.environ.get(STAC_TIMEOUT_ENV, "60"))
    except ValueError:
        return 60.0


def _short(err: BaseException, limit: int = 300) -> str:
    """A one-line, bounded, redacted message (servers answer errors with whole HTML pages)."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = text if len(text) <= limit else text[:limit] + "..."
    status = getattr(err, "status_code", None)
    return redact(f"HTTP {status}: {text}" if status else text)


def _pieces(geometry: BaseGeometry) -> list[BaseGeometry]:
    """Split a footprint into polygons (antimeridian MultiPolygons become their parts)."""
    return list(getattr(geometry, "geoms", [geometry]))


class ParsedItems:
    """The items parsed lately, by (collection, id), shared by the searchers of one build.

    Neighbouring shards find the same scenes, and an item does not change within one build.
    One store for all of a build's threads, not one per thread: each kept item costs ~30 KB.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = PARSED_ITEMS if limit is None else limit
        self._items: OrderedDict[tuple[str, str], SceneItem] = OrderedDict()
        self._refused: set[tuple[str, str]] = set()  # ids only: a few bytes each
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[str, str]) -> SceneItem | None:
        """The item parsed under ``key``, or None."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def refused(self, key: tuple[str, str]) -> bool:
        """Whether the item under ``key`` could not be parsed (and was left out)."""
        with self._lock:
            return key in self._refused

    def refuse(self, key: tuple[str, str]) -> bool:
        """Note that the item under ``key`` cannot be parsed; True the first time."""
        with self._lock:
            first = key not in self._refused
            self._refused.add(key)
            return first

    def put(self, key: tuple[str, str], item: SceneItem) -> None:
        """Keep ``item``, letting go of the least recently used beyond the limit."""
        with self._lock:
            self._items[key] = item
            while len(self._items) > self.limit:
                self._items.popitem(last=False)


class StacSearcher:
    """Searches one STAC API with bounded retries, without `query`, `filter` or `sortby`.

    Some servers (rustac's memory backend) ignore those extensions and return nothing, so
    scene choice happens client-side on plain bbox/datetime/collection results.
    """

    def __init__(
        self,
        url: str,
        retries: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float | None = None,
        parsed: ParsedItems | None = None,
    ) -> None:
        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s if timeout_s is not None else _stac_timeout()
        self._client: Client | None = None
        self._collections: dict[str, dict[str, Any]] = {}
        # A searcher lives for one build (see ParsedItems).
        self._parsed = parsed if parsed is not None else ParsedItems()

    @property
    def client(self) -> Client:
        """The pystac-client client (opened on first use)."""
        if self._client is None:
            self._client = self._retry(
                lambda: Client.open(self.url, timeout=self.timeout_s), "open"
            )
        return self._client

    def _retry(self, call: Any, what: str) -> Any:
        """``call()`` with bounded retries and exponential backoff.

        HTTP 5xx, 408 and 429, timeouts, resets and unreadable answers are retried; other
        4xx answers fail at once (another try would get the same answer).
        """
        for attempt in range(self.retries + 1):
            try:
                return call()
            except (APIError, OSError, ValueError) as err:
                status = getattr(err, "status_code", None)
                final = status in _NO_RETRY and status not in _RETRY_ANYWAY
                if attempt == self.retries or final:
                    where = redact(self.url)
                    raise SearchError(f"STAC {what} at {where} failed: {_short(err)}") from None
                log.info("retrying STAC %s after: %s", what, _short(err))
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def collection(self, collection_id: str) -> dict[str, Any]:
        """The collection's JSON (cached), for item_assets fallbacks.

        Raises:
            SearchError: The API cannot be reached, or has no such collection (the message
                lists the ones it has).
        """
        if collection_id not in self._collections:
            col = self._retry(
                lambda: self.client.get_collection(collection_id), f"collection {collection_id}"
            )
            if col is None:  # pystac-client's answer to a 404 from some servers
                known = self._retry(
                    lambda: sorted(c.id for c in self.client.get_collections()), "collections"
                )
                raise SearchError(
                    f"no collection {collection_id!r} at {redact(self.url)} (it has: "
                    f"{', '.join(known) or 'none'})"
                )
            self._collections[collection_id] = col.to_dict()
        return self._collections[collection_id]

    def first_items(
        self, collection_id: str, start: dt.datetime, end: dt.datetime, limit: int = 5
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` items of a collection within [start, end], anywhere, as JSON."""
        when = f"{_iso(start)}/{_iso(end)}"

        def run() -> list[dict[str, Any]]:
            search = self.client.search(
                collections=[collection_id], datetime=when, limit=limit, max_items=limit
            )
            return list(search.items_as_dicts())

        found: list[dict[str, Any]] = self._retry(run, f"search of {collection_id}")
        return found

    def _parse(
        self, raw: dict[str, Any], collection_id: str, collection: dict[str, Any]
    ) -> SceneItem | None:
        """``parse_item`` of a found item, or the item parsed when an earlier search found it.

        An item whose metadata contradicts itself (a cloud cover of 150 %, a grid that
        disagrees with its bbox...) is left out with a warning naming it, once per process: one
        bad item of a catalog of millions must not fail every shard that finds it, and using
        it could build a wrong sample. A collection whose items are all bad is a recipe error
        before any shard (``check_sources`` parses a few of each).
        """
        key = (collection_id, str(raw.get("id")))
        item = self._parsed.get(key)
        if item is None:
            if self._parsed.refused(key):
                return None
            try:
                item = parse_item(raw, collection)
            except ValueError as err:
                if self._parsed.refuse(key):
                    why = str(err) if key[1] in str(err) else f"STAC item {key[1]!r}: {err}"
                    log.warning(
                        "%s; left out of the searches of %s at %s",
                        redact(why),
                        collection_id,
                        redact(self.url),
                    )
                return None
            self._parsed.put(key, item)
        return item

    def search(
        self,
        collection_id: str,
        footprints: Sequence[BaseGeometry],
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
    ) -> list[SceneItem]:
        """Items of a collection intersecting any of ``footprints`` within [start, end]."""
        pieces = [p for f in footprints for p in _pieces(f)]
        if not pieces:
            return []
        # One search for the shard, over the union of its samples' boxes (a MultiPolygon where
        # they lie apart), not over one box round them all: a shard is a run of samples along
        # one grid row, which in a global plan spans continents, and a box round it finds every
        # scene of the whole strip.
        area = unary_union([box(*p.bounds) for p in pieces])
        when = None
        if start or end:
            when = f"{_iso(start) if start else '..'}/{_iso(end) if end else '..'}"
        collection = self.collection(collection_id)
        found: dict[str, SceneItem] = {}

        def run() -> list[dict[str, Any]]:
            search = self.client.search(
                collections=[collection_id], intersects=mapping(area), datetime=when, limit=500
            )
            # Plain dicts: no pystac Item objects, no deep copies (a third of a shard's
            # search time went there).
            return _page_items(search.pages_as_dicts(), self.url, collection_id)

        for raw in self._retry(run, f"search of {collection_id}"):
            item = self._parse(raw, collection_id, collection)
            if item is not None:
                found.setdefault(item.id, item)
        union = unary_union(pieces)
        return sorted(
            (it for it in found.values() if _footprint(it).intersects(union)), key=lambda it: it.id
        )


def _page_items(pages: Iterable[dict[str, Any]], url: str, collection_id: str) -> list[Any]:
    """The features of every page of a search, refusing a paging that goes round in circles.

    pystac-client follows ``next`` links (GET, or POST with ``body`` and ``merge``) for as long
    as a page has features. A server whose ``next`` link repeats an earlier one, or that
    serves only items already seen page after page, would keep a build searching forever.

    Raises:
        SearchError: The paging repeats itself; the message names the endpoint and collection.
    """
    features: list[Any] = []
    seen_ids: set[str] = set()
    seen_next: set[str] = set()
    stale = 0
    for number, page in enumerate(pages, start=1):
        batch = page.get("features") or []
        ids = {str(f.get("id")) for f in batch if isinstance(f, dict)}
        # One page of repeats can be an item that moved between pages; two in a row is a loop.
        stale = stale + 1 if ids and ids <= seen_ids else 0
        link = next(
            (
                ln
                for ln in page.get("links") or []
                if isinstance(ln, dict) and ln.get("rel") == "next"
            ),
            None,
        )
        key = json.dumps([link.get("href"), link.get("body")], sort_keys=True) if link else None
        if stale >= 2 or (key is not None and key in seen_next):
            raise SearchError(
                f"STAC search of {collection_id} at {redact(url)}: page {number} repeats earlier "
                "pages (its 'next' link does not advance); the API's paging is broken"
            )
        if key is not None:
            seen_next.add(key)
        seen_ids |= ids
        features.extend(batch)
    return features


def _footprint(item: SceneItem) -> BaseGeometry:
    """The item's footprint; an item found by a search for an area has one."""
    footprint = item.footprint()
    if footprint is None:
        raise ValueError(f"STAC item {item.id!r} has neither a geometry nor a bbox")
    return footprint


def _iso(when: dt.datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
