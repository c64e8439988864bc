"""JSON-lines logs for batch runs (``las --log-json FILE ...``)."""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
from pathlib import Path
from typing import Any

from las_builder.security import redact

_STANDARD = set(vars(logging.makeLogRecord({})))


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # ``extra`` fields are set on the record after the record factory ran, so
        # install_log_redaction never saw them: redact them here (a skip reason or an href).
        entry.update({k: _redacted(v) for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # already formatted (and redacted) by install_log_redaction
            entry["exception"] = record.exc_text
        return json.dumps(entry)


def _redacted(value: Any) -> Any:
    """``value`` with every string in it redacted; what JSON cannot hold becomes its text."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {redact(str(k)): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(v) for v in value]
    return redact(str(value))


def log_json_to(path: Path, level: int = logging.INFO) -> logging.Handler:
    """Send the ``las_builder`` loggers' records to ``path`` as JSON lines (appending).

    Raises:
        OSError: ``path`` cannot be opened for appending (a folder, a file in the way of its
            folder, no permission).

    """
    for parent in path.parents:  # mkdir says "File exists" of a file in the way: say which
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(parent))
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonLinesFormatter())
    handler.setLevel(level)
    logger = logging.getLogger("las_builder")
    for old in [h for h in logger.handlers if isinstance(h.formatter, JsonLinesFormatter)]:
        logger.removeHandler(old)  # one JSON log per run, also when called again in-process
        old.close()
    logger.addHandler(handler)
    logger.setLevel(min(logger.level or level, level))
    return handler
