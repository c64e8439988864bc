"""What a build may read, and keeping credentials out of logs, messages and outputs.

Asset hrefs come from STAC APIs that the builder does not control, so every href is checked
before GDAL sees it (:func:`check_href`):

* ``http://``, ``https://`` and ``s3://`` URLs are read;
* ``file://`` URLs and plain paths are read only under the folders listed in the environment
  variable ``LAS_ALLOWED_FILE_ROOTS`` (``os.pathsep``-separated; symlinks are resolved before
  the check). Without it every local href is refused, so an item pointing at ``/etc/passwd``
  cannot make a build read it;
* anything else (``ftp://``, ``gs://``, GDAL virtual paths such as ``/vsicurl/...`` or
  ``/vsizip/...``) is refused.

A refused href fails its sample, with the reason recorded in the index.

Credentials (Planetary Computer SAS tokens in signed hrefs, S3 keys, the Earth Engine key file
path, anything registered with :func:`register_secret`) never reach a log record, an error
message or an output file: :func:`redact` removes URL query strings and user-info and masks the
values of credential-like environment variables, and :func:`install_log_redaction` applies it to
every log record of the process.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = [
    "ALLOWED_FILE_ROOTS_ENV",
    "REMOTE_SCHEMES",
    "HrefRefused",
    "allowed_file_roots",
    "check_href",
    "install_log_redaction",
    "redact",
    "register_secret",
    "secret_values",
]

ALLOWED_FILE_ROOTS_ENV = "LAS_ALLOWED_FILE_ROOTS"
"""Environment variable: folders (``os.pathsep``-separated) local asset hrefs may lie in."""
REMOTE_SCHEMES = ("http", "https", "s3")
"""URL schemes of assets that are read without further checks."""

_SECRET_NAME = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY|SAS_|SIGNATURE",
    re.IGNORECASE,
)
_SECRET_NAMES = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "PC_SDK_SUBSCRIPTION_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_STORAGE_ACCESS_KEY",
    }
)
_MIN_SECRET_LEN = 6  # shorter values would mask ordinary words
_STOP = r"\s'\"<>,;)\]}"
# A query string (``?k=v&...``) glued to a URL or a file name: SAS tokens, presigned S3 URLs.
# It ends at whitespace, a quote, a bracket, ',', ';' or ': ' (a message's own separators).
_Q = rf"(?:(?!: )[^{_STOP}])"
_QUERY = re.compile(rf"(?<=[^\s?])\?{_Q}*={_Q}*")
# ``scheme://user:password@host``
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")
MASK = "***"

_registered: set[str] = set()
_registered_lock = threading.Lock()


class HrefRefused(ValueError):
    """An asset href may not be read; the message says why (and holds no credentials)."""


def allowed_file_roots(env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The folders local asset hrefs may lie in (``LAS_ALLOWED_FILE_ROOTS``), resolved.

    Args:
        env: The environment to read (default: ``os.environ``).

    Returns:
        The resolved folders; empty when the variable is unset or empty.
    """
    value = (env if env is not None else os.environ).get(ALLOWED_FILE_ROOTS_ENV, "")
    return tuple(Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p.strip())


def _shown(href: str) -> str:
    return redact(href)


def check_href(href: str, roots: Iterable[Path] | None = None) -> str:
    """Check that an asset href may be read; return what to open.

    Args:
        href: The asset href (already signed, if the catalog signs hrefs).
        roots: Folders local files may lie in (default: :func:`allowed_file_roots`).

    Returns:
        ``href`` itself for remote URLs; the resolved absolute path for local files.

    Raises:
        HrefRefused: The scheme is not allowed, or a local file lies outside the roots.
    """
    if not isinstance(href, str) or not href.strip() or "\x00" in href:
        raise HrefRefused("empty or malformed asset href")
    parts = urlsplit(href)
    scheme = parts.scheme.lower()
    if scheme in REMOTE_SCHEMES:
        if not parts.netloc:
            raise HrefRefused(f"{_shown(href)}: a {scheme}:// href needs a host or bucket")
        return href
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise HrefRefused(f"{_shown(href)}: file:// hrefs on another host are refused")
        path = unquote(parts.path)
    elif scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        path = href
    else:
        raise HrefRefused(
            f"{_shown(href)}: scheme {scheme}:// is not allowed "
            f"(allowed: {', '.join(REMOTE_SCHEMES)}, and file under {ALLOWED_FILE_ROOTS_ENV})"
        )
    if path.startswith("/vsi"):
        raise HrefRefused(f"{_shown(href)}: GDAL virtual file system paths are refused")
    allowed = tuple(roots) if roots is not None else allowed_file_roots()
    if not allowed:
        raise HrefRefused(
            f"{_shown(href)}: local file hrefs are refused "
            f"(set {ALLOWED_FILE_ROOTS_ENV} to the folders they may lie in)"
        )
    resolved = Path(os.path.realpath(path))
    for root in allowed:
        if resolved.is_relative_to(Path(os.path.realpath(root))):
            return str(resolved)
    raise HrefRefused(
        f"{_shown(href)}: local file outside the allowed roots ({ALLOWED_FILE_ROOTS_ENV})"
    )


def register_secret(value: str | None) -> None:
    """Mask ``value`` (a token, a key) wherever :func:`redact` runs in this process."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _registered_lock:
            _registered.add(value)


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values of credential-like environment variables and registered secrets, longest first."""
    env = env if env is not None else os.environ
    values = {
        value
        for name, value in env.items()
        if (name in _SECRET_NAMES or _SECRET_NAME.search(name)) and len(value) >= _MIN_SECRET_LEN
    }
    with _registered_lock:
        values |= _registered
    return sorted(values, key=len, reverse=True)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` without query strings, URL user-info or known secret values.

    Args:
        text: A message, an href, a log line.
        env: The environment whose credential-like values are masked (default: ``os.environ``).

    Returns:
        The redacted text.
    """
    if not text:
        return text
    for value in secret_values(env):
        text = text.replace(value, MASK)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _QUERY.sub("", text)


_installed = False
_install_lock = threading.Lock()


def install_log_redaction() -> None:
    """Redact every log record this process creates from now on (idempotent).

    The record's message is formatted and redacted when the record is made, so no handler,
    however configured (rasterio's GDAL error messages, dask's task errors ...), sees a secret.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a broken format string: leave it to logging to report
                return record
            record.msg = redact(message)
            record.args = None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
