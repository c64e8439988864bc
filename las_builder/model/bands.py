"""Band descriptions for the wavelength-conditioned patch embedding.

Every input band enters LandSegmenter as a pair ``(wavelength in micrometres, polarisation
code)``. Optical bands carry their centre wavelength and polarisation :data:`POL_NONE`. SAR
bands get the pseudo-wavelength ``c / f`` of their radar frequency (C-band Sentinel-1 at
5.405 GHz is 55.5 mm = 55,465 um) and the code of their polarisation, because VV and VH share
one frequency and would otherwise receive identical patch-embedding kernels.

Example:
    >>> from las_builder.model.bands import parse_band_spec
    >>> wl, pol = parse_band_spec("B02,B03,0.665,vv,vh")
    >>> [round(w, 3) for w in wl[:3]], pol
    ([0.49, 0.56, 0.665], [0, 0, 0, 1, 2])

"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import yaml

from las_builder._paths import catalog_dir

__all__ = [
    "POLARISATIONS",
    "POL_NONE",
    "SENTINEL1_FREQUENCY_GHZ",
    "SPEED_OF_LIGHT_M_S",
    "band_from_name",
    "parse_band_spec",
    "sar_pseudo_wavelength_um",
    "sentinel2_wavelengths",
]

SPEED_OF_LIGHT_M_S = 299_792_458.0
"""Speed of light in vacuum (m/s)."""

SENTINEL1_FREQUENCY_GHZ = 5.405
"""Centre frequency of Sentinel-1's C-band SAR."""

POL_NONE = 0
"""Polarisation code of optical bands."""

POLARISATIONS: dict[str, int] = {"vv": 1, "vh": 2, "hh": 3, "hv": 4}
"""Polarisation codes of SAR bands (``0`` is optical)."""


def sar_pseudo_wavelength_um(frequency_ghz: float) -> float:
    """Return the radar wavelength ``c / f`` in micrometres.

    Args:
        frequency_ghz: Radar centre frequency in GHz.

    Returns:
        The wavelength in micrometres (5.405 GHz gives about 55,465 um).

    """
    if frequency_ghz <= 0:
        raise ValueError(f"frequency must be positive, got {frequency_ghz} GHz")
    return SPEED_OF_LIGHT_M_S / (frequency_ghz * 1e9) * 1e6


@functools.cache
def sentinel2_wavelengths() -> dict[str, float]:
    """Return ``{band name: centre wavelength (um)}`` from ``catalog/sensors``.

    Common names (``red``, ``nir`` ...) are included where a band has one that is unique.
    """
    data = yaml.safe_load((catalog_dir() / "sensors" / "sentinel-2-l2a.yaml").read_text())
    out: dict[str, float] = {}
    commons: dict[str, list[float]] = {}
    for band in data["bands"]:
        wl = float(band["center_wavelength"])
        out[band["name"].upper()] = wl
        if band.get("common_name"):
            commons.setdefault(band["common_name"].upper(), []).append(wl)
    for name, values in commons.items():
        if len(values) == 1:
            out.setdefault(name, values[0])
    return out


_NAIP = {"RED": 0.635, "GREEN": 0.555, "BLUE": 0.47, "NIR": 0.845}


def band_from_name(name: str) -> tuple[float, int] | None:
    """Recognise a band name or description; return ``(wavelength_um, polarisation)``.

    Recognised: Sentinel-2 band names (``B02``, ``B8A``, also ``B2``), unique common names
    (``blue``, ``swir16``), ``Red/Green/Blue/NIR``, SAR polarisations (``VV``, ``VH``, ``HH``,
    ``HV``: C-band pseudo-wavelength) and descriptions that start with one of those
    (``"B04 - Red"``).

    Args:
        name: A band name or a raster band description.

    Returns:
        ``(wavelength_um, polarisation code)``, or ``None`` if the name is not recognised.

    """
    token = name.strip().split()[0].strip(",;:-").upper() if name and name.strip() else ""
    if not token:
        return None
    if token.lower() in POLARISATIONS:
        return sar_pseudo_wavelength_um(SENTINEL1_FREQUENCY_GHZ), POLARISATIONS[token.lower()]
    s2 = sentinel2_wavelengths()
    if token in s2:
        return s2[token], POL_NONE
    if len(token) == 2 and token[0] == "B" and token[1].isdigit():
        padded = f"B0{token[1]}"
        if padded in s2:
            return s2[padded], POL_NONE
    if token in _NAIP:
        return _NAIP[token], POL_NONE
    return None


def parse_band_spec(spec: str | Sequence[str | float]) -> tuple[list[float], list[int]]:
    """Parse a comma-separated band list into wavelengths and polarisation codes.

    Each item is a wavelength in micrometres (``0.665``), a band name recognised by
    :func:`band_from_name` (``B04``, ``vv``), or ``sar:<GHz>:<pol>`` for other radars
    (``sar:1.27:hh`` for L-band).

    Args:
        spec: ``"B02,B03,B04,B08"`` or a sequence of such items.

    Returns:
        ``(wavelengths_um, polarisations)``, one entry per band.

    Raises:
        ValueError: An item is not understood.

    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    wavelengths: list[float] = []
    pols: list[int] = []
    for item in items:
        if isinstance(item, int | float):
            wavelengths.append(float(item))
            pols.append(POL_NONE)
            continue
        if not item:
            continue
        if item.lower().startswith("sar:"):
            parts = item.split(":")
            if len(parts) != 3 or parts[2].lower() not in POLARISATIONS:
                raise ValueError(f"SAR band {item!r}: expected sar:<GHz>:<vv|vh|hh|hv>")
            wavelengths.append(sar_pseudo_wavelength_um(float(parts[1])))
            pols.append(POLARISATIONS[parts[2].lower()])
            continue
        try:
            value = float(item)
        except ValueError:
            known = band_from_name(item)
            if known is None:
                raise ValueError(
                    f"band {item!r} not understood: give a wavelength in um, a Sentinel-2 band "
                    "name (B01..B12, B8A), red/green/blue/nir, vv/vh/hh/hv or sar:<GHz>:<pol>"
                ) from None
            wavelengths.append(known[0])
            pols.append(known[1])
        else:
            if value <= 0:
                raise ValueError(f"wavelength must be positive, got {item!r}")
            wavelengths.append(value)
            pols.append(POL_NONE)
    if not wavelengths:
        raise ValueError("no bands given")
    return wavelengths, pols
