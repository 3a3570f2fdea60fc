"""CAD2 hearing-aid prescription: compressor ratios and makeup gains from an audiogram.

Follows the Cadenza organisers' description (CAMFIT gains for a 65 dB presentation level, ratio
from the prescribed outputs at 55 and 85 dB input, capped at 6:1) as their CAD2 development code
implements it (``compute_55_65_85_params`` in ``recipes/cad2/common/amplification.py`` of the
clarity repository, not shipped in pyclarity 0.9.0):

1. pyclarity's compressive CAMFIT rule (:func:`gainrule_camfit_compr`, 9 bands at
   177-11314 Hz, 100 dB SPL output limit) gives a gain table over input levels -10..110 dB SPL.
2. Per CAMFIT band: ``gain`` = table gain at 65 dB input (dB);
   ``ratio = (85 - 55) / (out85 - out55)`` with ``out = input + gain`` (ratio 1 where both
   outputs sit at the 100 dB limit, as the organisers' code does).
3. Both are interpolated linearly in frequency to 250, 500, 1000, 2000, 4000 and **6000** Hz:
   the organisers evaluate the top band at 6 kHz although the metadata labels it 8000 Hz.
4. Ratios are clipped to [1, 6]; everything is rounded to 0.1.

This reproduces the published L0001 left-ear parameters within 0.1 (see
``benchmarks/prescription_l0001.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from model.cad2 import AUDIOGRAM_CFS, COMPRESSOR_CFS

EVALUATION_CFS: tuple[int, ...] = (250, 500, 1000, 2000, 4000, 6000)
"""Frequencies at which the organisers read the CAMFIT table for those six bands (Hz)."""

HL_RANGE_DB: tuple[float, float] = (-10.0, 120.0)
"""Accepted hearing threshold levels (dB HL)."""
MAX_RATIO = 6.0
"""Compression ratio cap."""
GAIN_LEVEL_DB = 65.0
"""Input level at which the makeup gain is read (dB SPL)."""
RATIO_LEVELS_DB: tuple[float, float] = (55.0, 85.0)
"""Input levels whose prescribed outputs define the compression ratio (dB SPL)."""
MAX_OUTPUT_DB = 100.0
"""CAMFIT output limit (dB SPL), pyclarity's and the organisers' default."""

# CAMFIT band layout used by pyclarity's GHA (clarity.enhancer.gha.gha_utils.get_gaintable) and by
# the organisers' CAD2 gain table: centre and edge frequencies (Hz), input levels (dB SPL).
_CAMFIT_CFS = np.array([177, 297, 500, 841, 1414, 2378, 4000, 6727, 11314], dtype=float)
_CAMFIT_EDGES = np.array(
    [1e-8, 229.2793, 385.3570, 648.4597, 1090.5, 1833.7, 3084.2, 5187.3, 8724.1, 10000001.0]
)
_CAMFIT_LEVELS = np.arange(-10, 111)
_NOISEGATE_LEVEL_DB = 45.0  # only shapes the table below 45 dB input; unused rows here


def _check_ear(levels: Sequence[float], cfs: Sequence[float], ear: str) -> np.ndarray:
    """Return ``levels`` (dB HL) as a float array, or raise ValueError naming ear and frequency."""
    try:
        arr = np.asarray(levels, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{ear} ear: audiogram levels must be numbers (dB HL): {exc}") from None
    if arr.ndim != 1 or arr.size != len(cfs):
        raise ValueError(
            f"{ear} ear: expected {len(cfs)} audiogram levels (one per frequency "
            f"{list(cfs)} Hz), got {arr.size if arr.ndim == 1 else f'shape {arr.shape}'}"
        )
    lo, hi = HL_RANGE_DB
    for freq, level in zip(cfs, arr, strict=True):
        if not np.isfinite(level):
            raise ValueError(f"{ear} ear: level at {freq:g} Hz is {level} (must be finite dB HL)")
        if not lo <= level <= hi:
            raise ValueError(
                f"{ear} ear: level at {freq:g} Hz is {level:g} dB HL, outside [{lo:g}, {hi:g}]"
            )
    return arr


def _check_cfs(cfs: Sequence[float]) -> np.ndarray:
    """Return audiogram frequencies (Hz) as an array; they must be positive and increasing."""
    arr = np.asarray(cfs, dtype=float)
    if arr.ndim != 1 or arr.size < 2 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"cfs must be at least 2 finite positive frequencies (Hz), got {cfs!r}")
    if np.any(np.diff(arr) <= 0):
        raise ValueError(f"cfs must be strictly increasing (Hz), got {list(cfs)}")
    return arr


def camfit_gain_tables(
    levels_l: np.ndarray, levels_r: np.ndarray, cfs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CAMFIT compressive gain tables (dB), shape (121 input levels -10..110 dB SPL, 9 bands)."""
    # Imported here: the module calls logging.basicConfig() at import time.
    from clarity.enhancer.gha.gainrule_camfit import gainrule_camfit_compr
    from clarity.utils.audiogram import Audiogram

    fit = {
        "frequencies": _CAMFIT_CFS,
        "edge_frequencies": _CAMFIT_EDGES,
        "levels": _CAMFIT_LEVELS,
        "channels": 2,
        "side": "lr",
    }
    table, _, _ = gainrule_camfit_compr(
        Audiogram(levels=levels_l, frequencies=cfs),
        Audiogram(levels=levels_r, frequencies=cfs),
        fit,  # type: ignore[arg-type]
        noisegatelevels=_NOISEGATE_LEVEL_DB,
        noisegateslope=1.0,
        level=0,
        max_output_level=MAX_OUTPUT_DB,
    )
    return table[:, :, 0], table[:, :, 1]


def _row(table: np.ndarray, level_db: float) -> np.ndarray:
    """Gains (dB) of ``table`` at input level ``level_db`` (dB SPL), one per CAMFIT band."""
    return table[int(np.flatnonzero(_CAMFIT_LEVELS == level_db)[0])]


def _ear_params(
    table: np.ndarray, evaluation_cfs: Sequence[float], decimals: int | None
) -> tuple[list[float], list[float]]:
    """Compression ratios and makeup gains (dB) at ``evaluation_cfs`` from one ear's table."""
    low, high = RATIO_LEVELS_DB
    span = (high + _row(table, high)) - (low + _row(table, low))  # output dB range, >= 0
    ratio_bands = np.divide(
        high - low, span, out=np.ones_like(span), where=span > 0
    )  # both outputs at the limit -> ratio 1, as the organisers' code does
    ratio = np.interp(evaluation_cfs, _CAMFIT_CFS, ratio_bands)
    gain = np.interp(evaluation_cfs, _CAMFIT_CFS, _row(table, GAIN_LEVEL_DB))
    ratio = np.clip(ratio, 1.0, MAX_RATIO)
    if decimals is not None:
        ratio, gain = np.round(ratio, decimals), np.round(gain, decimals) + 0.0
    return [float(x) for x in ratio], [float(x) for x in gain]


def prescribe(
    audiogram_levels_l: Sequence[float],
    audiogram_levels_r: Sequence[float],
    cfs: Sequence[float] = AUDIOGRAM_CFS,
    *,
    evaluation_cfs: Sequence[float] = EVALUATION_CFS,
    decimals: int | None = 1,
) -> dict[str, Any]:
    """CAD2 compressor parameters for a listener, as in ``compressor_params.<split>.json``.

    Args:
        audiogram_levels_l: left-ear hearing thresholds (dB HL), one per ``cfs`` entry.
        audiogram_levels_r: right-ear hearing thresholds (dB HL).
        cfs: audiogram frequencies (Hz); CAD2's eight by default.
        evaluation_cfs: frequencies (Hz) at which the six bands are read from the CAMFIT table;
            the default reproduces the organisers (top band read at 6 kHz).
        decimals: rounding of the outputs (``None``: unrounded).

    Returns:
        ``{"frequencies": [250, ..., 8000], "cr_l": [6 ratios], "gain_l": [6 dB],
        "cr_r": [...], "gain_r": [...]}``.

    Raises:
        ValueError: malformed audiogram (count, non-finite or outside [-10, 120] dB HL).
    """
    freqs = _check_cfs(cfs)
    left = _check_ear(audiogram_levels_l, cfs, "left")
    right = _check_ear(audiogram_levels_r, cfs, "right")
    if len(evaluation_cfs) != len(COMPRESSOR_CFS):
        raise ValueError(f"evaluation_cfs must have {len(COMPRESSOR_CFS)} frequencies (Hz)")
    table_l, table_r = camfit_gain_tables(left, right, freqs)
    cr_l, gain_l = _ear_params(table_l, evaluation_cfs, decimals)
    cr_r, gain_r = _ear_params(table_r, evaluation_cfs, decimals)
    return {
        "frequencies": list(COMPRESSOR_CFS),
        "cr_l": cr_l,
        "gain_l": gain_l,
        "cr_r": cr_r,
        "gain_r": gain_r,
    }
