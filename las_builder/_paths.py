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


def require_catalog(*folders: str) -> Path:
    """Return :func:`catalog_dir` after checking that it holds ``folders`` (``sensors`` ...).

    Raises:
        FileNotFoundError: The catalog folder does not exist, or lacks one of ``folders``
            (``LAS_CATALOG`` naming some other folder); the message says which and what to do.
    """
    path = catalog_dir()
    missing = [f"{name}/" for name in folders if not (path / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"catalog folder {path} has no {', '.join(missing)}: it is not a las-builder "
            "catalog; set LAS_CATALOG to a copy of the project's catalog/ folder (or unset it)"
        )
    return path


def file_state(*paths: Path) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime, size) of each existing file: a cache key that changes when a file does."""
    state = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        state.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(state)
