"""What `las predict`'s INPUT names: a raster file, a raster URL or a dataset's sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from las_builder.model.evaluate import _parse_input


def test_input_names_a_raster_or_a_sample(tmp_path: Path) -> None:
    raster = tmp_path / "scene.tif"
    raster.write_bytes(b"")
    cases = {
        str(raster): (str(raster), None),
        "out/las:10m128px_4805U_0630R": ("out/las", "10m128px_4805U_0630R"),
        "s3://bucket/las:sample-1": ("s3://bucket/las", "sample-1"),
        "https://host/scenes/scene.tif": ("https://host/scenes/scene.tif", None),
        "https://host:8080/scene.tif?sig=x": ("https://host:8080/scene.tif?sig=x", None),
        "s3://bucket/scene.tif": ("s3://bucket/scene.tif", None),
    }
    for text, expected in cases.items():
        assert _parse_input(text) == expected, text


@pytest.mark.parametrize("text", ["missing.tif", "ftp://host/scene.tif", "las:"])
def test_input_that_names_nothing_fails_saying_what_it_may_be(text: str) -> None:
    with pytest.raises(FileNotFoundError, match="neither a raster file, a raster URL nor"):
        _parse_input(text)
