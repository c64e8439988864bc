"""Security: safe YAML only, asset hrefs limited to allowed schemes and roots, no leaked secrets."""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from faultkit import FAKE_AWS, ROOT, SECRETS, TOKEN, Proxied, build_args
from proxy import Fault

from las_builder.catalog import CatalogError, load_label_product, load_mapping
from las_builder.recipe import RecipeError, load_recipe
from las_builder.security import (
    HrefRefused,
    check_href,
    install_log_redaction,
    redact,
    register_secret,
)

EVIL = '!!python/object/apply:os.system ["touch {marker}"]'


def test_a_recipe_with_a_python_tag_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = (ROOT / "recipes" / "demo.yaml").read_text()
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(text.replace("name: las-demo", f"name: {EVIL.format(marker=marker)}"))
    with pytest.raises(RecipeError, match="is not valid YAML.*could not determine a constructor"):
        load_recipe(recipe)
    assert not marker.exists()
    result = subprocess.run(
        [sys.executable, "-m", "las_builder.cli", "plan", str(recipe), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "is not valid YAML" in result.stderr and "python/object/apply" in result.stderr
    assert not marker.exists()


def test_catalog_files_with_a_python_tag_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    catalog = tmp_path / "catalog"
    shutil.copytree(ROOT / "catalog", catalog)
    monkeypatch.setenv("LAS_CATALOG", str(catalog))
    product = catalog / "labels" / "esa-worldcover.yaml"
    product.write_text(product.read_text() + f"\nevil: {EVIL.format(marker=marker)}\n")
    with pytest.raises(CatalogError, match="could not determine a constructor"):
        load_label_product("esa-worldcover")
    mapping = catalog / "taxonomy" / "mappings" / "esa-worldcover.yaml"
    mapping.write_text(mapping.read_text() + f"\nevil: {EVIL.format(marker=marker)}\n")
    with pytest.raises(CatalogError, match="could not determine a constructor"):
        load_mapping("esa-worldcover")
    assert not marker.exists()


def _safe_loader_names(tree: ast.Module) -> set[str]:
    names = {"SafeLoader", "CSafeLoader"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {ast.unparse(b) for b in node.bases}
            if bases & {"yaml.SafeLoader", "yaml.CSafeLoader", "SafeLoader", "CSafeLoader"}:
                names.add(node.name)
    return names


def test_the_package_loads_yaml_with_safe_loaders_only() -> None:
    offenders = []
    for path in sorted((ROOT / "las_builder").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        safe = _safe_loader_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name = node.func.attr
            if name in {"unsafe_load", "full_load", "unsafe_load_all", "full_load_all"}:
                offenders.append(f"{path}:{node.lineno} {name}")
            elif name in {"load", "load_all"} and ast.unparse(node.func.value) == "yaml":
                loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
                if loader is None and len(node.args) > 1:
                    loader = node.args[1]
                shown = ast.unparse(loader).rsplit(".", 1)[-1] if loader is not None else ""
                if shown not in safe:
                    offenders.append(f"{path}:{node.lineno} yaml.{name}(Loader={shown})")
    assert not offenders, offenders


@pytest.mark.parametrize(
    "href",
    [
        "https://example.com/a.tif",
        "http://127.0.0.1:8000/a.tif?sv=1&sig=x",
        "s3://bucket/key/a.tif",
    ],
)
def test_remote_hrefs_are_allowed(href: str) -> None:
    assert check_href(href, roots=()) == href


@pytest.mark.parametrize(
    ("href", "why"),
    [
        ("/etc/passwd", "local file hrefs are refused"),
        ("file:///etc/passwd", "local file hrefs are refused"),
        ("ftp://example.com/a.tif", "scheme ftp:// is not allowed"),
        ("gs://bucket/a.tif", "scheme gs:// is not allowed"),
        ("/vsicurl/http://example.com/a.tif", "virtual file system"),
        ("/vsizip//tmp/a.zip/a.tif", "virtual file system"),
        ("file://otherhost/etc/passwd", "another host"),
        ("s3:///no-bucket", "needs a host or bucket"),
        ("", "empty"),
    ],
)
def test_other_hrefs_are_refused(href: str, why: str) -> None:
    with pytest.raises(HrefRefused, match=why):
        check_href(href, roots=())


def test_local_hrefs_only_under_the_allowed_roots(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "a.tif").write_bytes(b"x")
    (outside / "b.tif").write_bytes(b"x")
    (root / "link.tif").symlink_to(outside / "b.tif")
    assert check_href(str(root / "a.tif"), roots=[root]) == str((root / "a.tif").resolve())
    assert check_href((root / "a.tif").as_uri(), roots=[root]) == str((root / "a.tif").resolve())
    for href in (
        str(outside / "b.tif"),
        str(root / ".." / "outside" / "b.tif"),
        str(root / "link.tif"),  # a symlink out of the root
        "/etc/passwd",
    ):
        with pytest.raises(HrefRefused, match="outside the allowed roots"):
            check_href(href, roots=[root])


def test_redact_removes_tokens_userinfo_and_secret_values() -> None:
    env = {"AWS_SECRET_ACCESS_KEY": "s3cr3t/value+X", "HOME": "/root", "MY_API_TOKEN": "tok-123456"}
    text = (
        "cannot read https://acct.blob.core.windows.net/c/a.tif?st=1&se=2&sig=abc%3D: 404; "
        "a.tif?sig=abc, band 1 failed; https://user:pw@host/x key=s3cr3t/value+X tok-123456 "
        "is this a question? yes"
    )
    out = redact(text, env)
    for leaked in ("sig=", "abc%3D", "st=1", "user:pw", "s3cr3t", "tok-123456"):
        assert leaked not in out
    assert "https://acct.blob.core.windows.net/c/a.tif: 404" in out
    assert "a.tif, band 1 failed" in out
    assert "https://***@host/x" in out
    assert redact("home is /root", env) == "home is /root"  # ordinary variables stay
    assert "question? yes" in out


def test_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    register_secret("registered-secret-42")
    logger = logging.getLogger("las_builder.test")
    with caplog.at_level(logging.INFO):
        logger.info("GET %s", "https://h/a.tif?sv=1&sig=zzz")
        logger.warning("token registered-secret-42 in a message")
        try:
            raise RuntimeError("failed https://h/b.tif?sig=yyy")
        except RuntimeError:
            logger.exception("with a traceback")
    assert "https://h/a.tif" in caplog.text
    for leaked in ("sig=", "zzz", "yyy", "registered-secret-42"):
        assert leaked not in caplog.text


def test_a_debug_logged_build_leaks_no_secret(proxies: Proxied, tmp_path: Path) -> None:
    """A build with fake AWS keys, an Earth Engine key path and signed hrefs, logging at DEBUG,
    with failures whose reasons name hrefs: no secret in any output file or on stderr."""
    # Every 2021 ESA WorldCover tile answers 404: every sample fails, naming its tile's href.
    proxies.assets.set_faults(
        [Fault(r"ESA_WorldCover_10m_2021_v200_\w+_Map\.tif", "status", status=404)]
    )
    key_path = tmp_path / "ee-service-account-key.json"
    key_path.write_text(json.dumps({"private_key": "-----FAKE PRIVATE KEY-----"}))
    out = tmp_path / "las"
    env = {
        **os.environ,
        **FAKE_AWS,
        "GOOGLE_APPLICATION_CREDENTIALS": str(key_path),
        "GDAL_HTTP_TIMEOUT": "2",
    }
    script = (
        "import logging, sys; logging.basicConfig(level=logging.DEBUG); "
        "from las_builder.cli import app; app(sys.argv[1:])"
    )
    args = build_args(proxies.stac.url, out, "sample.count=4")
    for command in ("plan", "build"):
        result = subprocess.run(
            [sys.executable, "-c", script, command, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    logs = result.stdout + result.stderr
    assert "DEBUG" in logs and "404" in logs  # it did log, and the failures were met
    index = pd.read_parquet(out / "index.parquet")
    assert (index["status"] == "failed").all()
    assert index["reason"].str.contains(f"{proxies.assets.url}assets/esa-worldcover/").all()
    secrets = (*SECRETS, str(key_path), "FAKE PRIVATE KEY", TOKEN.split("&")[-1])
    for secret in secrets:
        assert secret not in logs, secret
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, (secret, path)
