"""Exponential moving average (EMA) of a model's weights, as demucs keeps one beside training.

With small batches (8 x 2 s on a CPU) each step's weights are noisy; their running average
over the last ~1 / (1 - decay) steps usually validates better than the last step's. Training
validates and saves the average, and keeps it in the checkpoint so a resumed run continues it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """EMA of ``model``'s floating-point parameters and buffers: after each optimiser step,
    ``average = decay * average + (1 - decay) * weights`` (``decay`` in [0, 1))."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), not {decay}")
        self.decay = float(decay)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()
                      if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights."""
        for name, value in model.state_dict().items():
            if name in self.state:
                self.state[name].mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the average from a checkpoint; raises when a name is missing or unknown."""
        if set(tensors) != set(self.state):
            missing = sorted(set(self.state) ^ set(tensors))
            raise ValueError(f"weight average does not fit this model: {missing[:5]}")
        for name, value in tensors.items():
            self.state[name].copy_(value)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block ``model`` holds the average; its own weights come back after."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.state}
        model.load_state_dict(self.state, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(own, strict=False)
