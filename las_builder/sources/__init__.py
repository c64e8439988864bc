"""Imagery and label sources other than STAC: Google Earth Engine (:mod:`.earthengine`).

The Earth Engine module imports ``ee`` (the ``earthengine-api`` package) only when it is used,
so importing :mod:`las_builder.sources` costs nothing for STAC builds.
"""
