"""Typed, validated views of the plain data in ``catalog/``."""

from las_builder.catalog.labels import (
    CatalogError,
    DType,
    EarthEngineRef,
    LabelClass,
    LabelProduct,
    LabelVersion,
    Resolution,
    StacRef,
    label_product_ids,
    label_products,
    labels_dir,
    load_label_product,
)

__all__ = [
    "CatalogError",
    "DType",
    "EarthEngineRef",
    "LabelClass",
    "LabelProduct",
    "LabelVersion",
    "Resolution",
    "StacRef",
    "label_product_ids",
    "label_products",
    "labels_dir",
    "load_label_product",
]
