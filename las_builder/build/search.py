"""Find the STAC items under a group of samples (one search per collection per shard)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

from pystac_client import Client
from pystac_client.exceptions import APIError
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from las_builder.stac import SceneItem, parse_item


class SearchError(RuntimeError):
    """A STAC search failed after retries; the message names the endpoint and collection."""


def _pieces(geometry: BaseGeometry) -> list[BaseGeometry]:
    """Split a footprint into polygons (antimeridian MultiPolygons become their parts)."""
    return list(getattr(geometry, "geoms", [geometry]))


class StacSearcher:
    """Searches one STAC API with bounded retries, without `query`, `filter` or `sortby`.

    Some servers (rustac's memory backend) ignore those extensions and return nothing, so
    scene choice happens client-side on plain bbox/datetime/collection results.
    """

    def __init__(self, url: str, retries: int = 4, backoff_s: float = 0.5) -> None:
        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self._client: Client | None = None
        self._collections: dict[str, dict[str, Any]] = {}

    @property
    def client(self) -> Client:
        """The pystac-client client (opened on first use)."""
        if self._client is None:
            self._client = self._retry(lambda: Client.open(self.url), "open")
        return self._client

    def _retry(self, call: Any, what: str) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return call()
            except (APIError, OSError, ValueError) as err:
                if attempt == self.retries:
                    raise SearchError(f"STAC {what} at {self.url} failed: {err}") from None
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def collection(self, collection_id: str) -> dict[str, Any]:
        """The collection's JSON (cached), for item_assets fallbacks."""
        if collection_id not in self._collections:
            col = self._retry(
                lambda: self.client.get_collection(collection_id), f"collection {collection_id}"
            )
            self._collections[collection_id] = col.to_dict()
        return self._collections[collection_id]

    def search(
        self,
        collection_id: str,
        footprints: Sequence[BaseGeometry],
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
    ) -> list[SceneItem]:
        """Items of a collection intersecting any of ``footprints`` within [start, end]."""
        pieces = [p for f in footprints for p in _pieces(f)]
        # One bbox per side of the antimeridian keeps each search box small.
        east = [p for p in pieces if p.bounds[0] >= 0]
        west = [p for p in pieces if p.bounds[0] < 0]
        boxes = [box(*unary_union(group).bounds) for group in (east, west) if group]
        when = None
        if start or end:
            when = f"{_iso(start) if start else '..'}/{_iso(end) if end else '..'}"
        collection = self.collection(collection_id)
        found: dict[str, SceneItem] = {}
        for area in boxes:

            def run(area: BaseGeometry = area) -> list[dict[str, Any]]:
                search = self.client.search(
                    collections=[collection_id], intersects=mapping(area), datetime=when, limit=500
                )
                return [it.to_dict() for it in search.items()]

            for raw in self._retry(run, f"search of {collection_id}"):
                item = parse_item(raw, collection)
                found.setdefault(item.id, item)
        union = unary_union(pieces)
        return sorted(
            (it for it in found.values() if it.footprint().intersects(union)), key=lambda it: it.id
        )


def _iso(when: dt.datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
