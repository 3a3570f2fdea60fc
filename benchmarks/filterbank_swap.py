"""HAAQI of a model's own gains applied through another low-delay filterbank.

A filterbank realises a frame's gain only as far as its synthesis window lets the gain's impulse
response reach back from the frame's end, and it looks ``synthesis - 1`` samples ahead, so the
causal model (5 ms: at most 220 samples, less the network's own look-ahead) synthesises with 128
samples where the non-causal model has 1024. This script separates what a model's gains are
worth from what its filterbank lets them do: it runs the model over each whole file, takes the
log-gain its filterbank applies (``internals["log_gain"]`` of :meth:`TuttiModel.remix`), maps it
to the frames (centres aligned; averaged over the source frames a longer hop spans) and bins
(linear in frequency) of ``LowDelaySTFT(window, synthesis, reach)``, applies it there with zero
phase, then the model's level and the listener's hearing aid, and scores noop and the result
with the CAD2 recipe's HAAQI. With the model's own filterbank it reproduces the model's output.
``--bands k`` first averages the gain over ``k`` log-spaced bands (as ``slot_bands``);
``--reach r`` ends each frame's synthesis span ``r`` samples before the frame's end (look-ahead
``synthesis + r - 1``).

Usage: ``python benchmarks/filterbank_swap.py ROOT --split valid --model models/causal --out DIR
--window 2048 --synthesis 1024 [--reach 0] [--bands 0] [--limit 24] [--jobs 2]``
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.apply import load_model  # noqa: E402
from model.batch import BASELINES, Pair, hearing_aid, run_batch  # noqa: E402
from model.filterbank import LowDelaySTFT, apply_gain  # noqa: E402
from model.hearing_aid import db_to_gain, level_adjustment_db  # noqa: E402
from model.tutti import TuttiModel, band_matrix  # noqa: E402
from training.evaluate import evaluate  # noqa: E402


def map_frames(log_gain: torch.Tensor, source_hop: int, source_synthesis: int,
               hop: int, synthesis: int, frames: int, reach: int = 0) -> torch.Tensor:
    """``log_gain (..., K, bins)`` on frames of hop ``source_hop`` to ``frames`` frames of hop
    ``hop`` (samples): each target frame takes the source value at the same centre of its
    synthesis span (linear between frames), averaged over ``hop // source_hop`` source frames
    when the target hop is longer; clamped to the first and last source frames. ``reach``: the
    target's (:class:`LowDelaySTFT`), whose spans end that much before their frames."""
    count = log_gain.shape[-2]
    centre = hop * (torch.arange(frames, dtype=torch.float64) + 1) - synthesis / 2 - reach
    position = (centre + source_synthesis / 2) / source_hop - 1  # fractional source frame
    span = max(1, hop // source_hop)
    total = torch.zeros(*log_gain.shape[:-2], frames, log_gain.shape[-1], dtype=log_gain.dtype)
    for offset in torch.linspace(-(span - 1) / 2, (span - 1) / 2, span, dtype=torch.float64):
        p = (position + offset).clamp(0, count - 1)
        low = p.floor().long()
        high = (low + 1).clamp(max=count - 1)
        w = (p - low).to(log_gain.dtype)[:, None]
        total += log_gain[..., low, :] * (1 - w) + log_gain[..., high, :] * w
    return total / span


@dataclass
class GainsThrough:
    """A model's gains applied through ``LowDelaySTFT(window, synthesis, reach)``: a batch
    system."""

    model: TuttiModel
    window: int
    synthesis: int
    bands: int = 0
    reach: int = 0

    @torch.no_grad()
    def __call__(self, pair: Pair) -> np.ndarray:
        gains_db, presence, lst = pair.request().tensors()
        mixture = torch.from_numpy(np.ascontiguousarray(pair.mixture, dtype=np.float32))[None]
        length = mixture.shape[-1]
        internals: dict = {}
        self.model.remix_offline(mixture, gains_db, presence, lst, internals)
        cfg = self.model.config
        fb = LowDelaySTFT(self.window, self.synthesis, self.reach)
        extra = fb.delay + fb.hop  # the output's last sample, and the length a multiple of hops
        padded = F.pad(mixture, (0, extra + (-(length + extra)) % fb.hop))
        spectra, _ = fb.analyse(padded)
        log_gain = map_frames(internals["log_gain"], cfg.hop, cfg.fb_synthesis,
                              fb.hop, self.synthesis, spectra.shape[-2], self.reach)
        log_gain = F.interpolate(log_gain[0], size=fb.bins, mode="linear",
                                 align_corners=True)[None]
        if self.bands:
            to_bins = band_matrix(self.bands, fb.bins, cfg.sample_rate).to(log_gain.dtype)
            log_gain = (log_gain @ to_bins.T / to_bins.sum(1).clamp(min=1e-6)) @ to_bins
        out, _ = fb.synthesise(apply_gain(spectra, self.model.gain(log_gain)))
        level = db_to_gain(level_adjustment_db(gains_db, presence > 0))
        out = out[0, :, fb.delay : fb.delay + length] * level[0]
        return hearing_aid(out.double().numpy(), pair.ratio, pair.makeup_db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--window", type=int, required=True, help="analysis window (samples)")
    parser.add_argument("--synthesis", type=int, required=True,
                        help="synthesis window (samples; even; hop and delay are half of it)")
    parser.add_argument("--reach", type=int, default=0,
                        help="samples each synthesis span ends before its frame's end")
    parser.add_argument("--bands", type=int, default=0)
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    model = load_model(args.model)
    if model.config.min_phase:
        parser.error(f"{args.model}: a min_phase model's gains are not zero-phase")
    name = f"{args.model.name}_fb{args.window}_{args.synthesis}" + (
        f"_r{args.reach}" if args.reach else "") + (f"_k{args.bands}" if args.bands else "")
    systems = {"noop": BASELINES["noop"],
               name: GainsThrough(model, args.window, args.synthesis, args.bands, args.reach)}
    means = {}
    for system, fn in systems.items():
        out = args.out / args.split / system
        run_batch(args.root, args.split, out, fn, limit=args.limit, desc=system, jobs=args.jobs)
        means[system], rows = evaluate(args.root, args.split, out, jobs=args.jobs,
                                       limit=args.limit)
    print(f"{args.root} [{args.split}] {len(rows)} pairs: noop {means['noop']:.4f}, {args.model} "
          f"gains through LowDelaySTFT({args.window}, {args.synthesis}, reach {args.reach})"
          f"{f' on {args.bands} bands' if args.bands else ''}: {means[name]:.4f} "
          f"({means[name] - means['noop']:+.4f}; look-ahead "
          f"{args.synthesis + args.reach - 1} samples)")


if __name__ == "__main__":
    main()
