"""Safe YAML loading through libyaml where PyYAML was built with it.

The catalog's legends and mappings are read by every build process; PyYAML's pure-Python
parser took ~0.2 s of CPU per process for them, libyaml's ~10 times less. Both build the
same plain data with the same safe constructors (no tags that make objects).
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["SafeLoader", "safe_load"]

# libyaml's safe loader, or PyYAML's own where libyaml is missing (PyYAML defines
# ``CSafeLoader`` exactly when it was built with libyaml); imported, not assigned, so that it
# is a class to the type checker and loaders can subclass it.
try:
    from yaml import CSafeLoader as SafeLoader
except ImportError:  # pragma: no cover - PyYAML without libyaml
    # Another class than the stubs' CSafeLoader; both are safe loaders with the same constructors.
    from yaml import SafeLoader  # type: ignore[assignment]


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with :data:`SafeLoader`."""
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a safe loader
