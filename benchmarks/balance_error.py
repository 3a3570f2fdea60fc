"""Long-term balance error of Tutti models: how far each output's average spectrum is from the
reference remix's, in ERB bands (dB), against the unbalanced mix.

This is the quantity behind most of HAAQI's gain (README, headroom: imposing the reference's
long-term spectrum on the mixture is worth +0.06 with 32 bands); it needs no HAAQI, so it is fast.
Examples are drawn as in training (``training/dataset.py``, fixed seed) from a CAD2-layout split,
one 10 s segment each. Printed per model and for strings-only, winds-only and mixed ensembles:
the mean absolute band error (dB) of the level-adjusted mixture (noop) and of the model's remix
before the hearing aid, the share of the noop error removed, and the correlation between the
model's long-term correction (remix minus mixture, dB per band, level removed) and the needed one.

Usage: ``python benchmarks/balance_error.py ROOT --split valid --model models/noncausal
[--model models/causal] [--examples 150] [--bands 32 128]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import drawn_examples  # noqa: E402
from model.apply import load_model  # noqa: E402
from model.cad2 import SLOTS, instrument_of  # noqa: E402
from training.corpus import ensemble_kind  # noqa: E402
from training.losses import band_level_error, erb_band_matrix, long_term_band_db  # noqa: E402

N_FFT = 4096
"""STFT size of the long-term spectra (10.8 Hz bins)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    drawn_examples.add_arguments(parser, examples=150)
    parser.add_argument("--bands", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args()

    models = {path.name: load_model(path) for path in args.model}
    # every band count in one matrix: one STFT per signal, split per band count afterwards
    bands = torch.cat([erb_band_matrix(N_FFT, 44100, n) for n in args.bands], dim=1)
    rows = []
    with torch.no_grad():
        for ex, inputs, noop in drawn_examples.draw(args):
            outputs = {"noop": noop}
            for name, model in models.items():
                outputs[name] = model.remix_offline(*inputs)[0]
            present = torch.nonzero(ex["presence"] > 0).flatten()
            kinds = (instrument_of(SLOTS[i]) for i in present)
            row = {"kind": ensemble_kind(kinds), "zero": not ex["gains_db"].any()}
            signals = {"target": ex["target"], **outputs}
            levels = {name: long_term_band_db(x[None], bands)[0].split(args.bands, dim=-1)
                      for name, x in signals.items()}
            for j, n in enumerate(args.bands):
                ref, mix = levels["target"][j], levels["noop"][j]
                for name in outputs:
                    est = levels[name][j]
                    row[(name, n)] = float(band_level_error(est, ref))
                    row[(name, n, "corr")] = ((est - mix).flatten(), (ref - mix).flatten())
            rows.append(row)

    print(f"\n{args.root} [{args.split}], {len(rows)} examples of {args.seconds:g} s "
          f"(seed {args.seed}); long-term band error in dB, ERB bands 80 Hz-8 kHz")
    systems = ["noop", *models]
    for n in args.bands:
        print(f"\n{n} bands: {'subset':8s} {'examples':>8s} "
              + " ".join(f"{s:>12s}" for s in systems)
              + "".join(f" {s + ' removed':>18s} {s + ' corr':>14s}" for s in models))
        for subset in ("all", "strings", "winds", "mixed"):
            chosen = [r for r in rows if subset == "all" or r["kind"] == subset]
            if not chosen:
                continue
            errs = {s: float(np.mean([r[(s, n)] for r in chosen])) for s in systems}
            line = f"{'':9s}{subset:8s} {len(chosen):8d} " + " ".join(
                f"{errs[s]:12.3f}" for s in systems)
            for s in models:
                removed = 1 - errs[s] / max(errs["noop"], 1e-9)
                # correlation over examples with some rebalancing to do
                pairs = [r[(s, n, "corr")] for r in chosen if not r["zero"]]
                got = torch.cat([p[0] for p in pairs]).double()
                need = torch.cat([p[1] for p in pairs]).double()
                corr = float(torch.corrcoef(torch.stack([got, need]))[0, 1])
                line += f" {removed:18.1%} {corr:14.3f}"
            print(line)


if __name__ == "__main__":
    main()
