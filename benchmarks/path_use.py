"""Which paths of a Tutti model carry its rebalancing: the share of each model's change to the
mix (remix minus the level-adjusted mixture) that goes away when a path is cut.

Examples are drawn as in training (``training/dataset.py``, fixed seed), one 10 s segment each.
Per model, the energy of the output's change when a path is cut, relative to the energy of the
model's whole change to the mix (0 %: the path is unused; ~100 %: the path does all of it):

- ``bottleneck``: the transformer's output held at its time average (the deep, long-context path
  keeps its mean but loses all time structure);
- ``attention``: every attention layer's output held at its time average (what the model takes
  from other frames);
- ``eq heads``: the band EQ heads that read the transformer's output (``context_eq``) or the
  time-averaged head features (``static_eq``) switched off, where the model has them;
- ``spectral MLP``: the per-frame MLP from the log spectrum to per-bin gains
  (``spectral_hidden``) switched off, where the model has it.

Usage: ``python benchmarks/path_use.py ROOT --split valid --model models/noncausal
[--model models/causal] [--examples 40]``
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import drawn_examples  # noqa: E402
from model.apply import load_model  # noqa: E402
from model.tutti import TuttiModel  # noqa: E402


@contextlib.contextmanager
def cut(model: TuttiModel, path: str) -> Iterator[bool]:
    """Cut ``path`` of ``model`` inside the block; yields whether the model has that path."""
    handles, saved = [], []
    if path == "bottleneck":
        handles.append(model.transformer[-1].register_forward_hook(
            lambda m, a, out: (out[0].mean(-1, keepdim=True).expand_as(out[0]), out[1])))
    elif path == "attention":
        for layer in model.transformer:  # attention works on (B, T, D): frames on axis 1
            handles.append(layer.attn.register_forward_hook(
                lambda m, a, out: (out[0].mean(1, keepdim=True).expand_as(out[0]), out[1])))
    elif path in HEADS:
        for name in HEADS[path]:
            if hasattr(model, name):
                for param in getattr(model, name).parameters():  # weight and bias: head off
                    saved.append((param, param.detach().clone()))
                    with torch.no_grad():
                        param.zero_()
    try:
        yield bool(handles or saved)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for weight, value in saved:
                weight.copy_(value)


HEADS = {"eq heads": ("context_head", "eq_head"), "spectral MLP": ("spectral_out",)}
"""Paths cut by switching off their last layer (weights and bias zeroed)."""
PATHS = ("bottleneck", "attention", *HEADS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    drawn_examples.add_arguments(parser, examples=40)
    args = parser.parse_args()

    models = {path.name: load_model(path) for path in args.model}
    change = {name: 0.0 for name in models}
    lost = {(name, p): 0.0 for name in models for p in PATHS}
    has, used = {}, 0
    with torch.no_grad():
        for ex, inputs, noop in drawn_examples.draw(args):
            if not ex["gains_db"].any():
                continue  # nothing to rebalance
            used += 1
            for name, model in models.items():
                full = model.remix_offline(*inputs)[0]
                change[name] += float((full - noop).square().sum())
                for p in PATHS:
                    with cut(model, p) as present_path:
                        has[(name, p)] = present_path
                        if present_path:
                            out = model.remix_offline(*inputs)[0]
                            lost[(name, p)] += float((full - out).square().sum())

    print(f"\n{args.root} [{args.split}], {used} of {args.examples} examples of "
          f"{args.seconds:g} s (seed {args.seed}; those with gains to apply): energy of the "
          "output's change when a path is cut, relative to the model's change to the mix")
    print(f"{'model':>16s} " + " ".join(f"{p:>12s}" for p in PATHS))
    for name in models:
        cells = [f"{lost[(name, p)] / max(change[name], 1e-30):12.2%}" if has[(name, p)]
                 else f"{'-':>12s}" for p in PATHS]
        print(f"{name:>16s} " + " ".join(cells))


if __name__ == "__main__":
    main()
