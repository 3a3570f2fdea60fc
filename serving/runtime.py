"""Per-worker state shared by the BentoML APIs and the mounted Starlette routes."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import torch
from omegaconf import DictConfig

from model.apply import load_model, pick_device
from model.streaming import CompiledStep
from model.tutti import TuttiModel
from serving.config import model_path
from serving.engine import Engine
from serving.params import Preset, load_presets


def load_engine(cfg: DictConfig, threads: int = 0) -> Engine:
    """Both shipped models on the configured device, wrapped in the batching rules and warmed
    up (:meth:`Engine.warm_up`); ``threads``: torch intra-op threads of this process (0: torch's
    default)."""
    if threads:
        torch.set_num_threads(int(threads))
    device = pick_device(str(cfg.models.device))
    models: dict[bool, TuttiModel] = {
        causal: load_model(model_path(cfg, causal), device=device) for causal in (False, True)
    }
    engine = Engine(models, cfg.batching.bucket_seconds, cfg.batching.chunk_seconds,
                    cfg.batching.overlap_seconds)
    engine.warm_up()
    return engine


def load_live_model(cfg: DictConfig, engine: Engine) -> TuttiModel:
    """The causal model live sessions run: on ``streaming.device``, the engine's own when it is
    there, else a second copy (GPU serving keeps live sessions on the CPU: 5 ms hops through the
    eager step take longer on an H200 than one hop lasts, ``benchmarks/gpu_check.py``)."""
    want = torch.device(pick_device(str(cfg.streaming.device)))
    model = engine.models[True]
    have = next(model.parameters()).device
    if have.type == want.type and want.index in (None, have.index):
        return model
    return load_model(model_path(cfg, True), device=str(want))


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
    live_step: CompiledStep | None = None
    live_step_status: str = "off"
    live_model: TuttiModel | None = None  # None: :func:`load_live_model` at construction

    def __post_init__(self) -> None:
        if self.live_model is None:
            self.live_model = load_live_model(self.cfg, self.engine)

    @classmethod
    def create(cls, cfg: DictConfig) -> Runtime:
        """Load models and presets (once per worker, from the service's ``__init__``); start
        building the compiled live step (``streaming.compiled_live``)."""
        rt = cls(cfg, load_presets(cfg), load_engine(cfg, int(cfg.models.api_threads)))
        rt.start_live_step()
        return rt

    def start_live_step(self) -> None:
        """Build the causal model's :class:`CompiledStep` in a background thread; live sessions
        opened once it is ready use it (``live_step_status``: off, building, ready or the
        failure). CPU only (``streaming.device``)."""
        model = self.live_model
        if not self.cfg.streaming.compiled_live:
            return
        if next(model.parameters()).device.type != "cpu":
            self.live_step_status = "off (not on the CPU)"
            return
        cache = self.cfg.streaming.compiled_cache
        cache_dir = Path(str(cache)).expanduser() if cache else None
        self.live_step_status = "building"

        def build() -> None:
            try:
                step = CompiledStep.build(model, cache_dir,
                                          tuned=bool(self.cfg.streaming.compiled_tuned))
            except Exception as err:  # e.g. no C++ compiler: live sessions stay eager
                self.live_step_status = f"failed: {type(err).__name__}: {err}"[:500]
                logging.getLogger(__name__).warning(
                    "compiled live step unavailable, live sessions run eagerly: %s", err)
                return
            self.live_step = step
            self.live_step_status = "ready"

        threading.Thread(target=build, name="tutti-live-step", daemon=True).start()

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
