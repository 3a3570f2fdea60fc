"""Listener population for rendered CAD2 splits: audiograms and hearing-aid parameters.

Audiograms start from the standard audiograms of Bisgaard, Vlaming and Dahlquist (2010), seven
flat / moderately sloping (N1-N7) and three steep-sloping (S1-S3) configurations, plus normal
hearing, then get a random shift, per-frequency ripple and a left/right difference, rounded to
5 dB as clinical audiograms are. Compressor parameters come from the CAD2 prescription
(:func:`model.prescription.prescribe`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

AUDIOGRAM_CFS: tuple[int, ...] = (250, 500, 1000, 2000, 3000, 4000, 6000, 8000)
"""CAD2 audiogram frequencies (Hz)."""

BISGAARD_CFS: tuple[int, ...] = (250, 375, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000)
"""Frequencies of the Bisgaard tables (Hz)."""
BISGAARD: dict[str, tuple[float, ...]] = {
    "N1": (10, 10, 10, 10, 10, 10, 15, 20, 30, 40),
    "N2": (20, 20, 20, 22.5, 25, 30, 35, 40, 45, 50),
    "N3": (35, 35, 35, 35, 40, 45, 50, 55, 60, 65),
    "N4": (55, 55, 55, 55, 55, 60, 65, 70, 75, 80),
    "N5": (65, 67.5, 70, 72.5, 75, 80, 80, 80, 80, 80),
    "N6": (75, 77.5, 80, 82.5, 85, 90, 90, 95, 100, 100),
    "N7": (90, 92.5, 95, 100, 105, 105, 105, 105, 105, 105),
    "S1": (10, 10, 10, 10, 10, 10, 15, 30, 55, 70),
    "S2": (20, 20, 20, 22.5, 25, 35, 55, 75, 95, 95),
    "S3": (30, 30, 35, 47.5, 60, 70, 75, 80, 80, 85),
}
"""Standard audiograms (dB HL at :data:`BISGAARD_CFS`)."""

HL_LIMITS = (-10.0, 120.0)
"""Range of hearing levels kept (dB HL)."""


def standard_audiogram(name: str) -> np.ndarray:
    """A standard audiogram at the CAD2 frequencies ``(8,)`` dB HL (``NH`` = 0 dB).

    The tables stop at 6 kHz; 8 kHz takes the 6 kHz value.
    """
    if name == "NH":
        return np.zeros(len(AUDIOGRAM_CFS))
    levels = np.asarray(BISGAARD[name], dtype=float)
    cfs = np.asarray(AUDIOGRAM_CFS, dtype=float)
    return np.interp(np.log(cfs), np.log(np.asarray(BISGAARD_CFS, dtype=float)), levels)


def _round5(levels: np.ndarray) -> np.ndarray:
    return np.clip(np.round(levels / 5.0) * 5.0, *HL_LIMITS) + 0.0


def random_listener(rng: np.random.Generator, weights: Mapping[str, float], *,
                    shift_sd_db: float = 5.0, ripple_sd_db: float = 4.0, ear_sd_db: float = 4.0,
                    asymmetric_prob: float = 0.1) -> tuple[str, np.ndarray, np.ndarray]:
    """Draw ``(category, left levels (8,), right levels (8,))`` in dB HL."""
    names = sorted(weights)
    p = np.array([float(weights[n]) for n in names])
    category = names[int(rng.choice(len(names), p=p / p.sum()))]
    base = standard_audiogram(category)
    n = len(AUDIOGRAM_CFS)
    if category == "NH":
        common = rng.normal(5.0, 4.0) + rng.normal(0.0, 3.0, n)
        left = common + rng.normal(0.0, 2.5, n)
        right = common + rng.normal(0.0, 2.5, n)
        return category, _round5(np.clip(left, -10, 20)), _round5(np.clip(right, -10, 20))
    ripple = np.convolve(rng.normal(0.0, ripple_sd_db, n + 2), [0.25, 0.5, 0.25], mode="valid")
    common = base + rng.normal(0.0, shift_sd_db) + ripple * 1.6
    left = common + rng.normal(0.0, ear_sd_db, n) / np.sqrt(2)
    right = common + rng.normal(0.0, ear_sd_db, n) / np.sqrt(2)
    if rng.random() < asymmetric_prob:
        worse = rng.uniform(5.0, 20.0) * np.linspace(0.6, 1.0, n)
        if rng.random() < 0.5:
            left = left + worse
        else:
            right = right + worse
    return category, _round5(left), _round5(right)


def prescribe_params(levels_l: np.ndarray, levels_r: np.ndarray) -> dict:
    """The CAD2 ``compressor_params`` entry for an audiogram pair (CAMFIT prescription)."""
    from model.prescription import prescribe  # imported lazily: owned by another module

    return prescribe([float(x) for x in levels_l], [float(x) for x in levels_r])


def make_listeners(rng: np.random.Generator, count: int, first_id: int,
                   weights: Mapping[str, float], **perturb: float
                   ) -> tuple[dict[str, dict], dict[str, dict], dict[str, str]]:
    """A population of ``count`` listeners with ids ``L{first_id:04d}``...

    Returns ``(listeners json, compressor_params json, {id: category})`` in the CAD2 schemas.
    """
    listeners, params, categories = {}, {}, {}
    for i in range(count):
        listener_id = f"L{first_id + i:04d}"
        category, left, right = random_listener(rng, weights, **perturb)
        listeners[listener_id] = {
            "name": listener_id,
            "audiogram_cfs": list(AUDIOGRAM_CFS),
            "audiogram_levels_l": [float(x) for x in left],
            "audiogram_levels_r": [float(x) for x in right],
        }
        params[listener_id] = prescribe_params(left, right)
        categories[listener_id] = category
    return listeners, params, categories
