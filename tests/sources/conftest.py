"""Fixtures of the Earth Engine source tests: the fake EE server and a signed-in real client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_earthengine import FakeEarthEngine, start_fake_earthengine


@pytest.fixture(scope="session")
def fake_ee_server() -> Iterator[FakeEarthEngine]:
    """The fake Earth Engine, serving for the whole session."""
    fake, server = start_fake_earthengine()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def service_account_key(
    fake_ee_server: FakeEarthEngine, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A freshly generated service-account key whose token_uri is the fake server's."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "las-builder@test-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": f"{fake_ee_server.url}/token",
    }
    path = tmp_path_factory.mktemp("ee-key") / "las-sa-key-SECRETPATH.json"
    path.write_text(json.dumps(info))
    return {"path": str(path), "info": info, "public_key": key.public_key()}


@pytest.fixture()
def no_earthengine_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ``ee.Initialize`` off the internet: its deprecated-asset list comes from GCS."""
    import ee.deprecation

    monkeypatch.setattr(ee.deprecation, "_FetchDataCatalogStac", lambda: {})


@pytest.fixture()
def fake_ee(
    fake_ee_server: FakeEarthEngine,
    service_account_key: dict[str, Any],
    no_earthengine_network: None,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[FakeEarthEngine]:
    """The real ``ee`` client, signed in with the service-account key, talking to the fake."""
    import ee

    from las_builder.sources.earthengine import authenticate

    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "LAS_EE_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    fake_ee_server.reset()
    authenticate(service_account_key["path"], url=fake_ee_server.url)
    ee.data.setMaxRetries(0)  # a failing test fails at once, not after back-off
    fake_ee_server.reset()  # the token exchange of initialisation is checked by its own test
    try:
        yield fake_ee_server
    finally:
        ee.Reset()


@pytest.fixture()
def no_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_earthengine_network: None
) -> None:
    """A home without Earth Engine or gcloud credentials and no metadata server."""
    import ee
    from google.auth.compute_engine import _metadata

    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "LAS_EE_PROJECT", "EARTHENGINE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True)
    if ee.data.is_initialized():
        ee.Reset()
