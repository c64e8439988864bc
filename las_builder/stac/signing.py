"""Signing asset hrefs for catalogs that need it (Planetary Computer SAS tokens)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import requests

from las_builder.security import redact, register_secret

PC_TOKEN_URL = "https://planetarycomputer.microsoft.com/api/sas/v1/token/{collection}"
_PC_BLOB = ".blob.core.windows.net"


class SigningError(RuntimeError):
    """A token could not be obtained; the message names the token URL."""


class PlanetaryComputerSigner:
    """Append a per-collection SAS token to Azure blob hrefs, refreshed before it expires.

    Tokens come from the Planetary Computer token endpoint (or the ``planetary-computer``
    package when it is installed). Only ``https://<account>.blob.core.windows.net/...`` hrefs
    are signed: a catalog entry must not get the token sent elsewhere (an href such as
    ``https://evil.example/x.blob.core.windows.net/a.tif``). Hrefs elsewhere, and hrefs already
    signed, pass unchanged. The token itself is never logged or written into outputs (it is
    registered with :func:`las_builder.security.register_secret`; the index holds no hrefs).
    """

    def __init__(self, token_url: str = PC_TOKEN_URL, timeout_s: float = 30.0) -> None:
        self.token_url = token_url
        self.timeout_s = timeout_s
        self._tokens: dict[str, tuple[str, dt.datetime]] = {}
        self._lock = threading.Lock()

    def token(self, collection: str) -> str:
        """A valid SAS token for ``collection`` (cached until five minutes before expiry)."""
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            cached = self._tokens.get(collection)
            if cached and cached[1] - dt.timedelta(minutes=5) > now:
                return cached[0]
            url = self.token_url.format(collection=collection)
            try:
                response = requests.get(url, timeout=self.timeout_s)
                response.raise_for_status()
                body = response.json()
                token = body["token"]
            except (requests.RequestException, ValueError, KeyError, TypeError) as err:
                # The token URL may carry a subscription key (?subscription-key=...).
                raise SigningError(
                    redact(f"cannot get a Planetary Computer token from {url}: {err}")
                ) from None
            if not isinstance(token, str) or not token:
                raise SigningError(
                    redact(f"the Planetary Computer token endpoint {url} answered no token")
                )
            register_secret(token)  # masked in every message and log from now on
            expires = now + dt.timedelta(minutes=45)
            expiry = body.get("msft:expiry")
            if isinstance(expiry, str):
                try:
                    expires = dt.datetime.fromisoformat(expiry.replace("Z", "+00:00"))
                    if expires.tzinfo is None:  # compared with an aware time: read as UTC
                        expires = expires.replace(tzinfo=dt.UTC)
                except ValueError:
                    pass  # an unreadable expiry: the default lifetime
            self._tokens[collection] = (token, expires)
            return token

    def __call__(self, href: str, collection: str) -> str:
        """The readable href of an asset of ``collection``."""
        if "?" in href or not _is_blob(href):
            return href
        return f"{href}?{self.token(collection)}"


def _is_blob(href: str) -> bool:
    """Whether ``href`` is an https URL of an Azure blob storage account (nothing else)."""
    parts = urlsplit(href)
    host = (parts.hostname or "").lower()
    return (
        parts.scheme.lower() == "https"
        and not parts.username
        and not parts.password
        and host.endswith(_PC_BLOB)
        and host != _PC_BLOB.lstrip(".")
    )


def make_signer(mode: str, token_url: str = PC_TOKEN_URL) -> Callable[[str, str], str]:
    """The ``(href, collection) -> href`` signer for a recipe's ``stac.sign`` mode."""
    if mode == "none":
        return lambda href, _collection: href
    if mode == "planetary-computer":
        return PlanetaryComputerSigner(token_url)
    raise ValueError(f"stac.sign {mode!r}: use 'none' or 'planetary-computer'")
