"""HAAQI headroom of the slot-gain mechanism: its gain with the stems' true shares as weights.

The causal model's slot head (`model.slot_gains`) multiplies each band's gain by the power mean
``(sum_k w_k a_k^p)^(1/p)`` of the requested amplitude gains ``a_k``, ``w_k`` the network's
estimate of slot ``k``'s share of the band's power. This script puts the stems' true band
shares in its place (no network, no other gain) on the causal low-delay filterbank and scores
the result with the CAD2 recipe's HAAQI: what the mechanism is worth if the weights were right.
``--blend b`` mixes the true shares with uniform ones (``b`` true), ``--tau-ms`` replaces each
stem's band power by its causal running mean (time constant in ms) before the shares are taken.

Usage: ``python benchmarks/slot_headroom.py ROOT --split valid --out DIR [--order 2] [--gate 1]
[--blend 1] [--tau-ms 0] [--bands 64] [--window 1024] [--synthesis 128] [--limit 24] [--jobs 2]``
(``--window``/``--synthesis``: another low-delay filterbank, e.g. the non-causal 2048 / 1024; its
look-ahead is ``synthesis - 1`` samples)
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.batch import Pair, hearing_aid, run_batch  # noqa: E402
from model.filterbank import LowDelaySTFT, apply_gain, power_spectrum  # noqa: E402
from model.hearing_aid import adjust_level  # noqa: E402
from model.tutti import band_matrix, exponential_mean  # noqa: E402
from training.evaluate import evaluate  # noqa: E402

SAMPLE_RATE = 44100


def running_mean(power: torch.Tensor, hop: int, tau_ms: float) -> torch.Tensor:
    """Causal exponential mean over frames (dim 2) of ``power (K, 2, frames, bands)``, started
    from zero: frame ``t`` is ``(1 - decay) * sum_k decay**k power[t - k]``, the normalised
    :func:`model.tutti.exponential_mean` times its weight so far ``1 - decay**(t + 1)``."""
    decay = math.exp(-hop / (SAMPLE_RATE * tau_ms / 1000))
    k, c, frames, bands = power.shape
    mean, _ = exponential_mean(power.transpose(2, 3).reshape(k * c, bands, frames), decay)
    weight = 1 - decay ** torch.arange(1, frames + 1, dtype=power.dtype)
    return (mean * weight).reshape(k, c, bands, frames).transpose(2, 3)


@dataclass
class TrueShareSlotGain:
    """The slot mechanism with true band shares as its weights: a batch system (pickles)."""

    order: float = 2.0
    gate: float = 1.0
    blend: float = 1.0
    tau_ms: float = 0.0
    bands: int = 64
    window: int = 1024
    synthesis: int = 128

    def __call__(self, pair: Pair) -> np.ndarray:
        stack, gains = pair.stem_stack()
        mixture = adjust_level(torch.from_numpy(pair.mixture.astype(np.float64)), gains)
        fb = LowDelaySTFT(self.window, self.synthesis).double()
        length = mixture.shape[-1]
        pad = (-length) % fb.hop + fb.hop
        spectra, _ = fb.analyse(torch.nn.functional.pad(mixture, (0, pad))[None])
        stem_spectra, _ = fb.analyse(torch.nn.functional.pad(stack, (0, pad)))
        to_bins = band_matrix(self.bands, spectra.shape[-1], SAMPLE_RATE).double()
        power = power_spectrum(stem_spectra) @ to_bins.T  # (K, 2, frames, bands)
        if self.tau_ms > 0:
            power = running_mean(power, fb.hop, self.tau_ms)
        power = power + 1e-12  # silent bands: equal shares
        shares = power / power.sum(0, keepdim=True)
        shares = self.blend * shares + (1 - self.blend) / len(gains)
        term = (10 ** (gains / 20))[:, None, None, None] ** self.order
        log_gain = torch.log((shares * term).sum(0)) / self.order * self.gate
        out, _ = fb.synthesise(apply_gain(spectra, torch.exp(log_gain @ to_bins)[None]))
        return hearing_aid(out[0, :, fb.hop : fb.hop + length].numpy(), pair.ratio,
                           pair.makeup_db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--order", type=float, default=2.0)
    parser.add_argument("--gate", type=float, default=1.0)
    parser.add_argument("--blend", type=float, default=1.0)
    parser.add_argument("--tau-ms", type=float, default=0.0)
    parser.add_argument("--bands", type=int, default=64)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--synthesis", type=int, default=128)
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    system = TrueShareSlotGain(args.order, args.gate, args.blend, args.tau_ms, args.bands,
                               args.window, args.synthesis)
    name = (f"true_shares_p{args.order:g}_g{args.gate:g}_b{args.blend:g}_t{args.tau_ms:g}"
            f"_k{args.bands}")
    if (args.window, args.synthesis) != (1024, 128):
        name += f"_fb{args.window}_{args.synthesis}"
    out = args.out / args.split / name
    run_batch(args.root, args.split, out, system, limit=args.limit, desc=name, jobs=args.jobs)
    mean, rows = evaluate(args.root, args.split, out, jobs=args.jobs, limit=args.limit)
    print(f"{args.root} [{args.split}] {name}: mean HAAQI {mean:.4f} over {len(rows)} pairs")


if __name__ == "__main__":
    main()
