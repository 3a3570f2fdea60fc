"""Per-worker state shared by the BentoML APIs and the mounted Starlette routes."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import anyio
import torch
from omegaconf import DictConfig

from model.apply import load_model
from model.tutti import TuttiModel
from serving.config import model_path
from serving.engine import Engine
from serving.params import Preset, load_presets


def pick_device(cfg: DictConfig) -> str:
    """``cuda`` when configured or (``auto``) available, else ``cpu``."""
    if cfg.models.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(cfg.models.device)


def load_engine(cfg: DictConfig, threads: int = 0) -> Engine:
    """Both shipped models on the configured device, wrapped in the batching rules;
    ``threads``: torch intra-op threads of this process (0: torch's default)."""
    if threads:
        torch.set_num_threads(int(threads))
    device = pick_device(cfg)
    models: dict[bool, TuttiModel] = {
        causal: load_model(model_path(cfg, causal), device=device) for causal in (False, True)
    }
    return Engine(models, cfg.batching.bucket_seconds, cfg.batching.chunk_seconds,
                  cfg.batching.overlap_seconds)


@dataclass
class Runtime:
    """What one API worker holds: config, presets, models and live-session accounting."""

    cfg: DictConfig
    presets: dict[str, Preset]
    engine: Engine
    live_sessions: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    live_limiter: anyio.CapacityLimiter | None = None
    stream_limiter: anyio.CapacityLimiter | None = None

    @classmethod
    def create(cls, cfg: DictConfig) -> Runtime:
        """Load models and presets (once per worker, from the service's ``__init__``)."""
        return cls(cfg, load_presets(cfg), load_engine(cfg, int(cfg.models.api_threads)))

    def limiters(self) -> tuple[anyio.CapacityLimiter, anyio.CapacityLimiter]:
        """Thread limits (created lazily, inside the event loop): live frames, HTTP streams."""
        if self.live_limiter is None or self.stream_limiter is None:
            self.live_limiter = anyio.CapacityLimiter(2)
            self.stream_limiter = anyio.CapacityLimiter(1)
        return self.live_limiter, self.stream_limiter

    def open_session(self) -> bool:
        """Count a new live session; False when ``limits.max_live_sessions`` are open."""
        with self._lock:
            if self.live_sessions >= int(self.cfg.limits.max_live_sessions):
                self.count("live_refused")
                return False
            self.live_sessions += 1
            self.count("live_sessions")
            return True

    def close_session(self) -> None:
        """A live session ended (any way)."""
        with self._lock:
            self.live_sessions -= 1

    def count(self, key: str) -> None:
        """Increment a counter shown by GET /stats."""
        self.counters[key] = self.counters.get(key, 0) + 1


_CURRENT: Runtime | None = None


def set_current(runtime: Runtime | None) -> None:
    """Register the worker's runtime (the service's ``__init__`` does it)."""
    global _CURRENT
    _CURRENT = runtime


def current() -> Runtime | None:
    """The worker's runtime, or None before the service has started."""
    return _CURRENT
