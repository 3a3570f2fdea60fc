"""Benchmark systems whose figures the README quotes: `benchmarks/filterbank_swap.py` and
`benchmarks/direction.py`'s tracking figure."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model.batch import ModelSystem, run_batch
from model.tutti import TuttiConfig, TuttiModel
from tests.test_model import LONG_HOP, SLOT_BANDS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from direction import tracking  # noqa: E402
from filterbank_swap import GainsThrough, map_frames  # noqa: E402


@pytest.mark.parametrize("layout", [dict(SLOT_BANDS, causal=True), dict(LONG_HOP, causal=False)],
                         ids=["causal", "non-causal"])
def test_gains_through_own_filterbank_reproduce_the_model(cad2_root: Path, tmp_path: Path,
                                                          layout: dict) -> None:
    """Through the model's own filterbank the swapped gains give the model's output (to a
    least significant bit of the 16-bit files), and through another one a different output."""
    torch.manual_seed(0)
    model = TuttiModel(TuttiConfig(**layout)).eval()
    torch.nn.init.normal_(model.band_head.weight, std=0.3)  # not the identity
    cfg = model.config
    systems = {"model": ModelSystem(model),
               "own": GainsThrough(model, cfg.fb_window, cfg.fb_synthesis),
               "other": GainsThrough(model, 1024, 216)}
    out = {}
    for name, system in systems.items():
        paths = run_batch(cad2_root, "valid", tmp_path / name, system, limit=2)
        out[name] = [sf.read(str(p), dtype="int16")[0].astype(int) for p in paths]
    for a, b, c in zip(out["model"], out["own"], out["other"], strict=True):
        assert np.abs(a).max() > 100
        assert np.abs(a - b).max() <= 1
        assert np.abs(a - c).max() > 10


def test_map_frames_aligns_the_centres_of_synthesis_spans() -> None:
    """A log-gain equal to each source frame's centre time maps to each target frame's centre
    time (exact for a linear ramp: interpolation and the symmetric average keep it) away from
    the ends, where it is clamped to the first and last source frames."""
    source_hop, source_synthesis, hop, synthesis = 64, 128, 512, 1024
    frames = 200
    index = torch.arange(frames * 8, dtype=torch.float64)
    centres = source_hop * (index + 1) - source_synthesis / 2
    log_gain = centres[None, :, None].expand(2, -1, 3)
    mapped = map_frames(log_gain, source_hop, source_synthesis, hop, synthesis, frames + 10)
    target = hop * (torch.arange(frames + 10, dtype=torch.float64) + 1) - synthesis / 2
    inside = (target - 4 * source_hop >= centres[0]) & (target + 4 * source_hop <= centres[-1])
    assert inside.sum() > frames - 5
    torch.testing.assert_close(mapped[0, inside, 0], target[inside])
    assert mapped[1, -1, 2] == centres[-1]  # past the end: the last source frame
    slower = map_frames(log_gain[:, ::8], 512, 1024, source_hop, source_synthesis, frames * 8)
    torch.testing.assert_close(slower[0, 100:1400, 0], centres[100:1400])


def test_tracking_tells_weights_that_follow_the_parts_from_fixed_ones() -> None:
    """Two stems taking turns in every band: weights equal to their shares are at distance 0;
    the excerpt's fixed band shares are about half wrong, and as weights score that figure."""
    rng = np.random.default_rng(0)
    power = rng.uniform(0.1, 1.0, (2, 2, 40, 5))  # (stems, ears, frames, bands)
    power[0, :, :20] *= 100.0
    power[1, :, 20:] *= 100.0
    moving, fixed = tracking(power / power.sum(0), power)
    assert moving == pytest.approx(0.0, abs=1e-9)
    assert 0.4 < fixed < 0.5
    held = power.sum(2, keepdims=True) / power.sum((0, 2), keepdims=True)
    assert tracking(np.broadcast_to(held, power.shape), power)[0] == pytest.approx(fixed)
    assert tracking(np.full(power.shape, 0.5), power)[0] > 0.45  # uniform weights: no better
