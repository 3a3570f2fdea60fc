"""Direction of every slot's gain, and where a second voice's slot weight falls.

For each model folder, prints per slot the factor by which raising it 6 dB multiplies its
least-squares share of the output relative to the others' (the ratio
`tests/test_shipped_models.py` asserts above 1.05, on the same FluidR3 melodies and
ensembles), then, for the ensembles of the second voices (voice 1, voice 2 and the cello), the
slot weight each stem's power sees: row = a slot's weight, column = whose stem, the mean of
the weight over frames and bands weighted by that stem's power; the stems' true shares beside
it. A second voice whose weight falls on the cello as much as on itself cannot raise its share.
Last, whether the weights follow the music at all: their distance from the true shares (half
the L1 distance summed over slots, averaged over frames and bands weighted by the mixture's
power) beside that of the excerpt's own per-band shares held fixed over time (a hindsight
reference for a causal model; weights well above it hardly follow the parts).

Usage: ``python benchmarks/direction.py [MODEL ...]`` (default: the shipped ``models/*``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tests.test_shipped_models as shipped  # noqa: E402
from model.apply import Request, load_model, remix  # noqa: E402
from model.cad2 import SLOTS  # noqa: E402
from model.tutti import TuttiModel  # noqa: E402


def direction(model: TuttiModel, stems: dict[str, np.ndarray], slot: str) -> float:
    """Raising ``slot`` 6 dB: its share relative to the others' mean, after over before."""
    members = shipped._ensemble(slot)
    mixture, scale = shipped._mixture(stems, members)
    shares = []
    for raised in (0.0, 6.0):
        request = Request.from_gains({m: raised if m == slot else 0.0 for m in members},
                                     **shipped.LISTENER)
        shares.append(shipped._shares(remix(model, mixture, request), stems, members, scale))
    i = members.index(slot)
    before, after = (s[i] / np.delete(s, i).mean() for s in shares)
    return float(after / before)


def weights_seen(model: TuttiModel, stems: dict[str, np.ndarray], members: list[str]
                 ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """``(K, K)`` power-weighted mean slot weight (row: slot, column: stem, both in ``members``
    order) of the model at 0 dB, the same of the stems' true band shares, and
    :func:`tracking` of the weights."""
    mixture, scale = shipped._mixture(stems, members)
    request = Request.from_gains({m: 0.0 for m in members}, **shipped.LISTENER)
    gains, presence, listener = request.tensors()
    x = torch.from_numpy(mixture)[None]
    x = torch.nn.functional.pad(x, (0, (-x.shape[-1]) % model.config.block + model.config.drain))
    internals: dict = {}
    with torch.no_grad():
        model.remix(x, gains, presence, listener, internals=internals)
        power = torch.stack([model.slot_power(torch.from_numpy(scale * stems[m]).float()[None])[0]
                             for m in members]).numpy()
    log_w = internals["slot_log_weights"][0].numpy()  # present slots in SLOTS order
    order = [sorted(members, key=SLOTS.index).index(m) for m in members]
    weights = np.exp(log_w[order])
    frames = min(weights.shape[2], power.shape[2])
    weights, power = weights[:, :, :frames], power[:, :, :frames]
    share = power / np.maximum(power.sum(0, keepdims=True), 1e-12)
    seen = [[float((w * p).sum() / p.sum()) for p in power] for w in weights]
    true = [[float((s * p).sum() / p.sum()) for p in power] for s in share]
    return np.array(seen), np.array(true), tracking(weights, power)


def tracking(weights: np.ndarray, power: np.ndarray) -> tuple[float, float]:
    """Distance of ``weights (K, 2, frames, bands)`` from the shares of the stems' ``power``
    (same shape): half the L1 distance over slots, averaged over ears, frames and bands
    weighted by the mixture's power; and the same for each band's share over the whole
    excerpt held fixed in time."""
    total = power.sum(0)
    share = power / np.maximum(total, 1e-12)
    fixed = power.sum(2, keepdims=True) / np.maximum(total.sum(1, keepdims=True), 1e-12)

    def distance(w: np.ndarray) -> float:
        return float((np.abs(w - share).sum(0) * total).sum() / total.sum() / 2)

    return distance(weights), distance(fixed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path,
                        default=[ROOT / "models" / "noncausal", ROOT / "models" / "causal"])
    args = parser.parse_args()
    stems = shipped.stems.__wrapped__()
    for folder in args.models:
        model = load_model(folder)
        ratios = {slot: direction(model, stems, slot) for slot in SLOTS}
        passed = sum(r > 1.05 for r in ratios.values())
        print(f"\n{folder}: direction {passed} of {len(SLOTS)} above x1.05")
        print("  " + "  ".join(f"{s} x{r:.3f}" for s, r in ratios.items()))
        if not model.config.slot_gains:
            continue
        for slot in (s for s in SLOTS if s.endswith("_2")):
            members = shipped._ensemble(slot)
            seen, true, (moving, fixed) = weights_seen(model, stems, members)
            print(f"  {slot} ensemble {members}: weight (row) seen by each stem's power "
                  "(column), model | true shares")
            for name, row, row_true in zip(members, seen, true, strict=True):
                print(f"    {name:9s} " + " ".join(f"{v:5.2f}" for v in row) + "  | "
                      + " ".join(f"{v:5.2f}" for v in row_true))
            print(f"    distance from the true shares: weights {moving:.3f}, "
                  f"the excerpt's fixed band shares {fixed:.3f}")


if __name__ == "__main__":
    main()
