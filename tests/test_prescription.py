"""Tests for model.prescription (CAMFIT-based CAD2 compressor parameters)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.prescription import COMPRESSOR_CFS, prescribe

L0001_L = [45, 45, 35, 45, 60, 65, 70, 65]
L0001_R = [40, 40, 45, 45, 60, 65, 80, 80]
PUBLISHED_CR_L = [2.1, 1.5, 1.3, 1.5, 2.4, 3.7]
PUBLISHED_GAIN_L = [9.6, 11.9, 12.9, 16.4, 19.0, 28.0]
# Reached: max |diff| 0.1 dB for gains and 0.1 for ratios (one-decimal rounding of values that
# the organisers' table puts a few hundredths away); tolerance rounded up a little.
GAIN_TOL_DB = 0.15
RATIO_TOL = 0.15


def test_l0001_reproduces_published_left_ear() -> None:
    params = prescribe(L0001_L, L0001_R)
    assert params["frequencies"] == list(COMPRESSOR_CFS) == [250, 500, 1000, 2000, 4000, 8000]
    np.testing.assert_allclose(params["gain_l"], PUBLISHED_GAIN_L, atol=GAIN_TOL_DB, rtol=0)
    np.testing.assert_allclose(params["cr_l"], PUBLISHED_CR_L, atol=RATIO_TOL, rtol=0)


def test_schema_and_types() -> None:
    params = prescribe(L0001_L, L0001_R)
    assert set(params) == {"frequencies", "cr_l", "gain_l", "cr_r", "gain_r"}
    for key in ("cr_l", "gain_l", "cr_r", "gain_r"):
        assert len(params[key]) == 6
        assert all(isinstance(x, float) and math.isfinite(x) for x in params[key])
        assert all(round(x, 1) == x for x in params[key])
    for key in ("cr_l", "cr_r"):
        assert all(1.0 <= x <= 6.0 for x in params[key])


def test_unrounded_matches_rounded() -> None:
    raw = prescribe(L0001_L, L0001_R, decimals=None)
    rounded = prescribe(L0001_L, L0001_R)
    for key in ("cr_l", "gain_l", "cr_r", "gain_r"):
        np.testing.assert_allclose(raw[key], rounded[key], atol=0.05 + 1e-9)


def test_ears_are_independent() -> None:
    swapped = prescribe(L0001_R, L0001_L)
    params = prescribe(L0001_L, L0001_R)
    assert swapped["cr_l"] == params["cr_r"] and swapped["gain_r"] == params["gain_l"]


def test_normal_hearing_is_transparent() -> None:
    params = prescribe([0] * 8, [0] * 8)
    assert params["cr_l"] == params["cr_r"] == [1.0] * 6
    assert params["gain_l"] == params["gain_r"] == [0.0] * 6


def test_near_normal_hearing_gets_little() -> None:
    params = prescribe([10] * 8, [-10, 0, 5, 10, 10, 5, 0, 10])
    for key in ("cr_l", "cr_r"):
        assert max(params[key]) <= 1.2
    for key in ("gain_l", "gain_r"):
        assert max(params[key]) <= 3.0


def test_more_loss_more_gain_flat() -> None:
    gains = [np.array(prescribe([hl] * 8, [hl] * 8)["gain_l"]) for hl in range(0, 100, 10)]
    for quieter, louder in zip(gains[:-1], gains[1:], strict=True):
        assert np.all(louder >= quieter)
    assert np.all(gains[6] > gains[2])  # 60 vs 20 dB HL: strictly more everywhere


def test_more_loss_more_gain_shifted_audiogram() -> None:
    base = prescribe(L0001_L, L0001_R)
    worse = prescribe([x + 10 for x in L0001_L], [x + 10 for x in L0001_R])
    for key in ("gain_l", "gain_r"):
        assert np.all(np.array(worse[key]) >= np.array(base[key]))
        assert sum(worse[key]) > sum(base[key])


def test_gain_is_limited_by_max_output() -> None:
    params = prescribe([120] * 8, [120] * 8)
    assert max(params["gain_l"]) <= 35.0  # 100 dB SPL output limit at 65 dB input


def test_accepts_numpy_and_tuples() -> None:
    a = prescribe(np.array(L0001_L), tuple(L0001_R))
    assert a == prescribe(L0001_L, L0001_R)


@pytest.mark.parametrize(
    ("left", "right", "match"),
    [
        (L0001_L[:7], L0001_R, r"left ear: expected 8 audiogram levels .* got 7"),
        (L0001_L, L0001_R + [80], r"right ear: expected 8 audiogram levels .* got 9"),
        (L0001_L, [[40] * 8], r"right ear: expected 8 audiogram levels .* shape \(1, 8\)"),
        ([45, 45, float("nan"), 45, 60, 65, 70, 65], L0001_R, r"left ear: level at 1000 Hz is nan"),
        (L0001_L, [40, 40, 45, 45, 60, 65, 80, float("inf")], r"right ear: .*8000 Hz is inf"),
        (L0001_L, [40, 40, 45, 45, 60, 121, 80, 80], r"right ear: .*4000 Hz is 121 dB HL, outside"),
        ([-11, 45, 35, 45, 60, 65, 70, 65], L0001_R, r"left ear: .*250 Hz is -11 dB HL, outside"),
        (["a"] * 8, L0001_R, r"left ear: audiogram levels must be numbers"),
    ],
)
def test_malformed_audiograms(left: list, right: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prescribe(left, right)


def test_bad_frequencies() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        prescribe([40] * 3, [40] * 3, cfs=[250, 250, 500])
    with pytest.raises(ValueError, match="evaluation_cfs"):
        prescribe(L0001_L, L0001_R, evaluation_cfs=[250, 500])


def test_custom_audiogram_frequencies() -> None:
    params = prescribe([40, 50, 60], [40, 50, 60], cfs=[500, 2000, 8000])
    assert params["gain_l"] == params["gain_r"]
    assert params["gain_l"][-1] > params["gain_l"][0]
