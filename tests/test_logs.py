"""JSON-lines logs: ``extra`` fields are redacted like the message."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from las_builder.logs import log_json_to
from las_builder.security import install_log_redaction


def test_json_log_redacts_extra_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``extra`` fields are set on a record after the record factory redacted its message, so a
    skip reason or href carried in them reached the file with its token."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-K7MDENG-EXAMPLEKEY")
    install_log_redaction()
    path = tmp_path / "log.jsonl"
    handler = log_json_to(path)
    logger = logging.getLogger("las_builder.test_logs")
    try:
        logger.info(
            "sample skipped",
            extra={
                "href": "https://host/b04.tif?sig=s3cr3t-sas",
                "reasons": {"s-1": "403 at s3://AKIAX:wJalrXUtnFEMI-K7MDENG-EXAMPLEKEY@b/x.tif"},
                "counts": [1, 2.5, None, True],
                "path": Path("/data/las.zarr"),
            },
        )
    finally:
        logging.getLogger("las_builder").removeHandler(handler)
        handler.close()
    text = path.read_text()
    assert "s3cr3t" not in text and "wJalrXUtnFEMI" not in text and "AKIAX" not in text
    entry = json.loads(text.splitlines()[-1])
    assert entry["href"] == "https://host/b04.tif"
    assert entry["reasons"]["s-1"].startswith("403 at s3://")
    assert entry["counts"] == [1, 2.5, None, True]  # numbers and nulls kept as they are
    assert entry["path"] == "/data/las.zarr"  # what JSON cannot hold: its text
