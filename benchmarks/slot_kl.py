"""Slot-weight KL of models against the stems' true shares, beside lagged true shares.

The slot KL (`training.losses.slot_weight_loss`, nats: each slot's true share of a band's power
against the weights, loud bands weighing more) of each model's slot head on fixed validation
examples of CAD2-layout roots, the ones `tutti train` validates on, next to references on the
same bands: uniform weights (what a head that knows nothing scores) and the true shares of a
causal exponential mean of each stem's band power (``--tau-ms``: shares as they were over the
last that many ms; `benchmarks/slot_headroom.py` gives their HAAQI).

Beside each KL, what the weights do with the example's request: the slot log-gain
``log(sum_k w_k a_k^p) / p`` (``p`` the first model's ``slot_mean_order``, ``a_k`` the requested
amplitude gains) against the same with the true shares, both taken relative to uniform weights'
(``d``: what the weights add to a flat gain; ``d*``: what the true shares add), averaged over
bands with loud ones weighing more, as the KL: their correlation, the slope of ``d`` on ``d*``,
the share of ``d*``'s variance explained at gate 1 (``R2``; 0: no better than uniform weights)
and the gate that would explain most (``best gate``). Session 33 found this correlation, not the
KL, tells the shipped models apart (HAAQI: the non-causal model's weights are worth +0.035 over
uniform ones, the causal model's nothing).

Usage: ``python benchmarks/slot_kl.py ROOT [ROOT ...] --model models/causal [--model M2 ...]
[--split valid] [--examples 32] [--config conf/train_causal.yaml] [--tau-ms 50 200 1000]``
(the examples as the config's training validates: its ``data`` settings, uniform over items).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.apply import load_model  # noqa: E402
from model.tutti import exponential_mean, present_slots  # noqa: E402
from training.dataset import RebalanceDataset, fixed_examples  # noqa: E402
from training.losses import slot_log_gains, slot_weight_loss  # noqa: E402
from training.train import example_config, load_config, slot_weight_targets  # noqa: E402


def lagged_log_shares(power: torch.Tensor, valid: torch.Tensor, decay: float) -> torch.Tensor:
    """Log true shares of ``power (B, K, 2, frames, bands)`` after a causal exponential mean
    over frames (``decay`` per frame; 0: the shares themselves); ``-inf`` where ``valid (B, K)``
    is false (padding)."""
    b, k, c, t, f = power.shape
    if decay > 0:
        flat = power.permute(0, 1, 2, 4, 3).reshape(b, k * c * f, t)
        power = exponential_mean(flat, decay)[0].reshape(b, k, c, f, t).permute(0, 1, 2, 4, 3)
    shares = power / power.sum(1, keepdim=True).clamp(min=1e-20)
    pad = ~valid[:, :, None, None, None].expand_as(shares)
    return shares.clamp(min=1e-12).log().masked_fill(pad, float("-inf"))


def log_gain_sums(log_weights: torch.Tensor, power: torch.Tensor, log_amp: torch.Tensor,
                  valid: torch.Tensor, order: float) -> torch.Tensor:
    """Weighted sums for :func:`agreement` of :func:`training.losses.slot_log_gains` relative to
    uniform weights' gain (``d``: the weights', ``d*``: the true shares'), ``valid (B, K)``
    the present slots: ``[sum w, sum w d d*, sum w d^2, sum w d*^2]``, ``w`` each band's
    magnitude."""
    own, true, w = slot_log_gains(log_weights, power, log_amp, order)
    uniform = (-valid.sum(1, keepdim=True).log()).expand(valid.shape).masked_fill(
        ~valid, float("-inf"))[:, :, None, None, None]
    flat, _, _ = slot_log_gains(uniform, power, log_amp, order)  # uniform weights' gain
    d, d_true = own - flat, true - flat
    return torch.stack([w.sum(), (w * d * d_true).sum(), (w * d * d).sum(),
                        (w * d_true * d_true).sum()]).double()


def agreement(sums: torch.Tensor) -> str:
    """Correlation, slope, R2 at gate 1 and best gate from :func:`log_gain_sums`' totals."""
    weight, cross, own, true = sums.tolist()
    if own <= 1e-12 * weight:
        return "no gain beyond a flat one"
    corr = cross / max(math.sqrt(own * true), 1e-30)
    r2 = 1 - (own - 2 * cross + true) / max(true, 1e-30)
    return (f"corr {corr:.3f}  slope {cross / max(true, 1e-30):.3f}  R2 {r2:+.3f}  "
            f"best gate {cross / max(own, 1e-30):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", type=Path, nargs="+")
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--config", type=Path, default=Path("conf/train_causal.yaml"))
    parser.add_argument("--tau-ms", type=float, nargs="*", default=[50.0, 200.0, 1000.0])
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    models = {str(m): load_model(m) for m in args.model}
    first = next(iter(models.values()))
    if not first.config.slot_gains:
        raise SystemExit(f"{args.model[0]}: the model has no slot gains")
    cfg = load_config(args.config, ["loss.w_slot_weights=1", "data.balance_slots=0"])
    config = example_config(cfg)
    dataset = RebalanceDataset([str(r) for r in args.roots], args.split, config, seed=12345)
    examples = fixed_examples(dataset, args.examples, seed=12345)
    references = {"uniform": None, "true shares": 0.0}
    references.update({f"true shares, {t:g} ms mean": math.exp(-first.config.frame_ms / t)
                       for t in args.tau_ms})
    totals: dict[str, float] = {}
    sums: dict[str, torch.Tensor] = {}
    order = first.config.slot_mean_order
    if order == 0:
        raise SystemExit("slot_mean_order 0 (geometric mean) is not covered")
    with torch.no_grad():
        for start in range(0, len(examples), args.batch):
            chunk = examples[start : start + args.batch]
            b = {k: torch.stack([e[k] for e in chunk]) for k in chunk[0]}
            _, valid = present_slots(b["presence"])
            for name, model in models.items():
                internals: dict = {}
                model(b["mixture"], b["gains_db"], b["presence"], b["audiogram"], b["ratio"],
                      b["makeup_db"], hearing_aid=False, internals=internals)
                log_weights, power, log_amp, _ = slot_weight_targets(model, b, internals)
                kl = slot_weight_loss(log_weights, power).item()
                totals[name] = totals.get(name, 0.0) + kl * len(chunk)
                sums[name] = sums.get(name, 0) + log_gain_sums(log_weights, power, log_amp,
                                                               valid, order)
            for name, decay in references.items():
                if decay is None:
                    log_shares = torch.zeros_like(power).masked_fill(
                        ~valid[:, :, None, None, None].expand_as(power), float("-inf")
                    ).log_softmax(1)
                else:
                    log_shares = lagged_log_shares(power, valid, decay)
                kl = slot_weight_loss(log_shares, power).item()
                totals[name] = totals.get(name, 0.0) + kl * len(chunk)
                sums[name] = sums.get(name, 0) + log_gain_sums(log_shares, power, log_amp,
                                                               valid, order)
    roots = ", ".join(str(r) for r in args.roots)
    print(f"slot KL (nats) on {len(examples)} [{args.split}] examples of {roots}, "
          f"{config.seconds:g} s each:")
    print(f"{'':42s} {'KL':>6s}  slot log-gain (order {order:g}) against the true shares'")
    for name, total in totals.items():
        print(f"  {name:40s} {total / len(examples):.4f}  {agreement(sums[name])}")


if __name__ == "__main__":
    main()
