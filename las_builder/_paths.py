"""Where the project's plain data lives."""

from __future__ import annotations

import os
from pathlib import Path


def catalog_dir() -> Path:
    """Return the ``catalog/`` folder of source, taxonomy and world definitions.

    ``LAS_CATALOG`` overrides it; otherwise it is the ``catalog/`` folder beside the package
    (the project is installed editable, so the data stays plain YAML in the repository).
    """
    override = os.environ.get("LAS_CATALOG")
    path = Path(override) if override else Path(__file__).resolve().parent.parent / "catalog"
    if not path.is_dir():
        raise FileNotFoundError(
            f"catalog folder {path} not found: set LAS_CATALOG to the project's catalog/ folder"
        )
    return path
