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

A refused href fails its sample, with the reason recorded in the index. An href that passes is
opened with :func:`open_asset`, which lets GDAL use only drivers of self-contained raster files
(:data:`ASSET_DRIVERS`): a VRT (or a WMS, MRF, GTI ... description) served by an allowed server
or lying under an allowed root would otherwise make GDAL read whatever files or URLs it names.

Recipes and catalog files are data: they are parsed by a safe loader, and
:func:`check_yaml_text` and :func:`check_yaml_node` refuse huge files and anchor/alias bombs
("billion laughs") before anything walks the parsed data.

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
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import yaml

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

__all__ = [
    "ALLOWED_FILE_ROOTS_ENV",
    "ASSET_DRIVERS",
    "MAX_YAML_CHARS",
    "MAX_YAML_NODES",
    "REMOTE_SCHEMES",
    "HrefRefused",
    "YamlTooLarge",
    "allowed_file_roots",
    "check_href",
    "check_yaml_node",
    "check_yaml_text",
    "install_log_redaction",
    "open_asset",
    "redact",
    "register_secret",
    "secret_values",
]

ALLOWED_FILE_ROOTS_ENV = "LAS_ALLOWED_FILE_ROOTS"
"""Environment variable: folders (``os.pathsep``-separated) local asset hrefs may lie in."""
REMOTE_SCHEMES = ("http", "https", "s3")
"""URL schemes of assets that are read without further checks."""
ASSET_DRIVERS = ("GTiff", "JP2OpenJPEG")
"""GDAL drivers assets are opened with: formats whose data lie in the one file (COG, JPEG 2000).

Not VRT, GTI, WMS, MRF, STACIT, HDF5 (external links) ...: their files name other files or URLs
that GDAL opens in turn, past :func:`check_href`."""
MAX_YAML_CHARS = 4 * 2**20
"""Largest recipe or catalog file read (characters); the largest shipped is ~30 KB."""
MAX_YAML_NODES = 200_000
"""Most nodes a YAML document may hold once its aliases are expanded (a recipe has ~300)."""

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
# Query parameters holding a credential: SAS ``sig``, S3 ``X-Amz-Signature``/``-Credential``/
# ``-Security-Token``, ``token``, ``key``/``subscription-key``, ``password``.
_SECRET_PARAM = re.compile(r"sig|token|key|secret|credential|password|auth", re.IGNORECASE)
_STOP = r"\s'\"<>,;)\]}"
# A query string (``?k=v&...``) glued to a URL or a file name: SAS tokens, presigned S3 URLs.
# It ends at whitespace, a quote, a bracket, ',', ';' or ': ' (a message's own separators).
_Q = rf"(?:(?!: )[^{_STOP}])"
_QUERY = re.compile(rf"(?<=[^\s?])\?{_Q}*={_Q}*")
# ``scheme://user:password@host``; also ``scheme:/user...`` (a URL passed through a Path,
# which folds ``//``)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://?)[^/\s@'\"]+@")
MASK = "***"

_registered: set[str] = set()
_registered_lock = threading.Lock()


class HrefRefused(ValueError):
    """An asset href may not be read; the message says why (and holds no credentials)."""


class YamlTooLarge(yaml.YAMLError):
    """A YAML text too large, or whose aliases expand too far, to be a recipe or catalog file.

    Callers catch it with the other ``yaml.YAMLError`` and name the file.
    """


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


def _is_vsi(path: str) -> bool:
    """Whether GDAL would read ``path`` through a virtual file system (``/vsicurl/`` ...)."""
    return path.lower().startswith("/vsi")


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
    if _is_vsi(path):
        raise HrefRefused(f"{_shown(href)}: GDAL virtual file system paths are refused")
    allowed = tuple(roots) if roots is not None else allowed_file_roots()
    if not allowed:
        raise HrefRefused(
            f"{_shown(href)}: local file hrefs are refused "
            f"(set {ALLOWED_FILE_ROOTS_ENV} to the folders they may lie in)"
        )
    resolved = Path(os.path.realpath(path))
    if _is_vsi(str(resolved)):  # "//vsicurl/..." or "/./vsis3/..." resolve to a GDAL path
        raise HrefRefused(f"{_shown(href)}: GDAL virtual file system paths are refused")
    for root in allowed:
        if resolved.is_relative_to(Path(os.path.realpath(root))):
            return str(resolved)
    raise HrefRefused(
        f"{_shown(href)}: local file outside the allowed roots ({ALLOWED_FILE_ROOTS_ENV})"
    )


def open_asset(target: str) -> DatasetReader:
    """Open a checked href (:func:`check_href`'s result) with :data:`ASSET_DRIVERS` only.

    Args:
        target: What :func:`check_href` returned.

    Returns:
        The open dataset.

    Raises:
        rasterio.errors.RasterioIOError: It cannot be opened, or is in another format (a VRT,
            say: that message does not repeat ``target``, which callers name).
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    for driver in ASSET_DRIVERS:  # rasterio takes one driver name per open
        try:
            return rasterio.open(target, driver=driver)
        except RasterioIOError as err:
            if "not recognized as" not in str(err):
                raise  # missing, refused, timed out ...: the same with any driver
    raise RasterioIOError(
        "not a GeoTIFF or JPEG 2000 file, the only asset formats read (a VRT, or another "
        "format whose file names further files, is refused: GDAL would read those too)"
    ) from None


def check_yaml_text(text: str, what: str = "the file") -> None:
    """Refuse a YAML text over :data:`MAX_YAML_CHARS` before parsing it.

    Raises:
        YamlTooLarge: It is larger.
    """
    if len(text) > MAX_YAML_CHARS:
        raise YamlTooLarge(
            f"{what} has {len(text):,} characters, more than the {MAX_YAML_CHARS:,} a recipe or "
            "catalog file may have: is it the right file?"
        )


def check_yaml_node(node: yaml.Node | None) -> None:
    """Refuse a composed YAML document whose aliases expand beyond :data:`MAX_YAML_NODES`.

    A safe loader shares an aliased value, so ``a: &a [x, x]; b: &b [*a, *a] ...`` parses into
    a few kilobytes; but whatever then walks the data as a tree (``${VAR}`` substitution,
    validation, JSON) visits 2**depth values: a "billion laughs" file hangs the process. The
    expanded size is counted over the node graph (each node once), and a self-referencing
    alias is refused too.

    Raises:
        YamlTooLarge: The document expands too far, or refers to itself.
    """
    if node is None:
        return
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise YamlTooLarge(
                f"an alias refers to a value that contains it ({_mark(n)}): recursive "
                "YAML is not read"
            )
        total = 1
        if isinstance(n, yaml.CollectionNode):
            open_.add(key)
            children: list[yaml.Node] = (
                [c for pair in n.value for c in pair]
                if isinstance(n, yaml.MappingNode)
                else list(n.value)
            )
            for child in children:
                total += size(child)
                if total > MAX_YAML_NODES:
                    raise YamlTooLarge(
                        f"the aliases (*name) of the value at {_mark(n)} expand to more than "
                        f"{MAX_YAML_NODES:,} values: a recipe or catalog file needs far fewer "
                        "(an alias bomb?)"
                    )
            open_.discard(key)
        sizes[key] = total
        return total

    try:
        size(node)
    except RecursionError:
        raise YamlTooLarge(
            f"the value at {_mark(node)} is nested too deeply for a recipe or catalog file"
        ) from None


def _mark(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"


def register_secret(value: str | None) -> None:
    """Mask ``value`` (a token, a key) wherever :func:`redact` runs in this process.

    For a query string (``sv=...&sig=...``) the values of its credential parameters are
    masked on their own too, as written and decoded: a message may quote just the signature.
    """
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    values = {value}
    for key, part in parse_qsl(value, keep_blank_values=False):
        if _SECRET_PARAM.search(key):
            values |= {v for v in (part, quote(part, safe="")) if len(v) >= _MIN_SECRET_LEN}
    with _registered_lock:
        _registered.update(values)


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
