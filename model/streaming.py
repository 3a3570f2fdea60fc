"""Live causal rebalancing: feed chunks of any size, get the processed signal back.

:class:`Streamer` buffers input into the causal model's blocks (``config.block`` samples, 128 =
2.9 ms at 44.1 kHz), runs the network with carried state, then the listener's hearing aid with
carried state. The concatenated output equals the offline causal model on the whole signal
(to float rounding). Algorithmic latency: ``config.lookahead`` samples (191 = 4.3 ms: the
block, plus the filterbank's synthesis overlap); the caller's hop adds its own wait.
"""

from __future__ import annotations

import numpy as np
import torch

from model.apply import Request
from model.tutti import Listener, TuttiModel


class Streamer:
    """One live session. ``process(chunk (2, n) float32) -> (2, m) float32`` at 44.1 kHz."""

    def __init__(self, model: TuttiModel, request: Request) -> None:
        if not model.config.causal:
            raise ValueError("streaming needs a causal model (config.causal = true)")
        self.model = model
        self.block = model.config.block
        self.request = request
        self.gains, self.presence, listener = request.tensors()
        self.listener = Listener(listener.audiogram, listener.ratio, listener.makeup_db)
        self._pending = np.zeros((2, 0), dtype=np.float32)
        self._state: dict | None = None
        self._ha_state = None
        self._fed = 0
        self._emitted = 0

    @property
    def latency(self) -> int:
        """Worst-case algorithmic latency (samples) between an input sample and its output."""
        return self.model.config.lookahead

    @property
    def buffered(self) -> int:
        """Input samples waiting for their block to complete."""
        return self._pending.shape[1]

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Add ``chunk (2, n)``; return every output sample that is now available ``(2, m)``."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[0] != 2:
            raise ValueError(f"chunk must be (2, samples), got shape {chunk.shape}")
        self._pending = np.concatenate([self._pending, chunk], axis=1)
        self._fed += chunk.shape[1]
        ready = self._pending.shape[1] // self.block * self.block
        if ready == 0:
            return np.zeros((2, 0), dtype=np.float32)
        x, self._pending = self._pending[:, :ready], self._pending[:, ready:]
        return self._run(x)

    def flush(self) -> np.ndarray:
        """End of input: zero-pad to whole blocks until every input sample has its output."""
        missing = self._fed - self._emitted
        if missing <= 0:
            return np.zeros((2, 0), dtype=np.float32)
        n = self._pending.shape[1]
        # The remix lags by ``delay``: run that much (zero) input past the end.
        padded = -(-(n + self.model.config.delay) // self.block) * self.block
        x = np.pad(self._pending, ((0, 0), (0, padded - n)))
        self._pending = np.zeros((2, 0), dtype=np.float32)
        return self._run(x)[:, :missing]

    @torch.no_grad()
    def _run(self, x: np.ndarray) -> np.ndarray:
        mixed, self._state = self.model.remix_aligned(
            torch.from_numpy(x)[None], self.gains, self.presence, self.listener, self._state)
        mixed = mixed[0].double().numpy()
        y, self._ha_state = self.model.hearing_aid.stream(
            mixed, self.request.ratio, self.request.makeup_db, self._ha_state)
        self._emitted += y.shape[1]
        return y.astype(np.float32)
