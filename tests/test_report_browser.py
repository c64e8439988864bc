"""`las inspect`'s report.html in a real headless Chromium: every image renders, offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from las_builder.inspect import inspect_dataset

# Marks images that did not decode once the page has loaded; --dump-dom prints the result.
CHECK = """<script>
window.addEventListener("load", function () {
  var broken = [], imgs = document.images;
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken.push(imgs[i].getAttribute("src"));
  }
  var pre = document.createElement("pre");
  pre.id = "las-check";
  pre.textContent = JSON.stringify({images: imgs.length, broken: broken});
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str | None:
    for candidate in (os.environ.get("LAS_CHROMIUM"), "/usr/bin/chromium", "chromium"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _chromium()
    if path is None:
        pytest.skip(
            "Debian chromium is not installed (scripts/system-deps.sh installs it only as root); "
            "the browser check of report.html is skipped"
        )
    return path


@pytest.fixture(scope="module")
def report(chromium: str, small_las: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "inspect"
    inspect_dataset(small_las, out, samples=3)
    return out


def _run(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _check(chromium: str, page: Path, profile: Path) -> dict:
    result = _run(chromium, profile, "--dump-dom", page.as_uri())
    marker = '<pre id="las-check">'
    assert marker in result.stdout, f"no check result; stderr: {result.stderr[-2000:]}"
    text = result.stdout.split(marker, 1)[1].split("</pre>", 1)[0]
    return json.loads(text.replace("&quot;", '"').replace("&amp;", "&"))


def test_every_image_renders(chromium: str, report: Path, tmp_path: Path) -> None:
    html = (report / "report.html").read_text(encoding="utf-8")
    page = report / "report-check.html"  # beside the report, so relative links resolve alike
    page.write_text(html.replace("</body>", CHECK + "</body>"), encoding="utf-8")
    result = _check(chromium, page, tmp_path / "profile")
    expected = html.count("<img ")
    assert result["images"] == expected >= 3 * 10
    assert result["broken"] == []


def test_a_broken_image_is_caught(chromium: str, report: Path, tmp_path: Path) -> None:
    html = (report / "report.html").read_text(encoding="utf-8")
    page = report / "report-broken.html"
    page.write_text(
        html.replace("</body>", '<img src="missing.png" alt="missing">' + CHECK + "</body>"),
        encoding="utf-8",
    )
    result = _check(chromium, page, tmp_path / "profile")
    assert result["broken"] == ["missing.png"]


def test_screenshot_shows_the_quicklooks(chromium: str, report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    result = _run(
        chromium,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1400,1000",
        (report / "report.html").as_uri(),
    )
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as img:
        rgb = np.asarray(img.convert("RGB"))
    assert rgb.shape[:2] == (1000, 1400)
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    assert len(colours) > 200, "the page looks blank: quicklooks did not render"
