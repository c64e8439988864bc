"""Reading STAC catalogs: the normalised item model shared by every catalog."""

from las_builder.stac.item import (
    AssetInfo,
    BandInfo,
    BitField,
    ClassInfo,
    ItemParseError,
    SceneItem,
    parse_item,
    parse_item_collection,
)

__all__ = [
    "AssetInfo",
    "BandInfo",
    "BitField",
    "ClassInfo",
    "ItemParseError",
    "SceneItem",
    "parse_item",
    "parse_item_collection",
]
