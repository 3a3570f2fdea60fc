"""Serving configuration: ``conf/serving.yaml`` read with OmegaConf, plus optional overrides.

``TUTTI_SERVING_CONFIG`` names a YAML file merged over the defaults; ``TUTTI_SERVING_OVERRIDES``
holds space-separated ``key=value`` pairs (OmegaConf dotlist) applied last. Both are read in
every BentoML worker process, so ``tutti serve`` and the tests pass settings through them.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
"""Repository root (or the bento's ``src/`` folder): relative paths in the config start here."""
DEFAULT_CONFIG = ROOT / "conf" / "serving.yaml"
ENV_CONFIG = "TUTTI_SERVING_CONFIG"
ENV_OVERRIDES = "TUTTI_SERVING_OVERRIDES"


class ConfigError(ValueError):
    """A serving setting that cannot work; the message names the key."""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults from ``conf/serving.yaml``, then ``path`` (or ``$TUTTI_SERVING_CONFIG``), then
    ``overrides`` (or ``$TUTTI_SERVING_OVERRIDES``); validated."""
    cfg = OmegaConf.load(DEFAULT_CONFIG)
    path = path or os.environ.get(ENV_CONFIG)
    if path:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
    if overrides is None:
        overrides = shlex.split(os.environ.get(ENV_OVERRIDES, ""))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    assert isinstance(cfg, DictConfig)
    _validate(cfg)
    return cfg


def _validate(cfg: DictConfig) -> None:
    from model.apply import is_device_name

    lim = cfg.limits
    checks = {
        "limits.max_upload_mb": lim.max_upload_mb > 0,
        "limits.max_seconds": lim.max_seconds > 0,
        "limits.min_gain_db/max_gain_db": lim.min_gain_db <= 0 <= lim.max_gain_db,
        "limits.max_live_sessions": lim.max_live_sessions >= 0,
        "limits.max_frame_samples": lim.max_frame_samples > 0,
        "limits.live_idle_seconds": lim.live_idle_seconds > 0,
        "batching.max_batch_size": cfg.batching.max_batch_size >= 2,
        "batching.bucket_seconds": cfg.batching.bucket_seconds > 0,
        "batching.chunk_seconds": cfg.batching.chunk_seconds > 2 * cfg.batching.overlap_seconds,
        "streaming.http_chunk_seconds": cfg.streaming.http_chunk_seconds > 0,
        "models.device": is_device_name(str(cfg.models.device)),
        "streaming.device": is_device_name(str(cfg.streaming.device)),
        "batching.enabled": cfg.batching.enabled in (True, False, "auto"),
    }
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(f"serving config: bad value for {key}")
    for preset_id, preset in cfg.presets.items():
        if "left" not in preset or "right" not in preset:
            raise ConfigError(f"serving config: preset {preset_id!r} needs 'left' and 'right'")


def batching_on(cfg: DictConfig) -> bool:
    """``batching.enabled`` resolved: ``auto`` is on where the models run on a GPU (an H200 ran
    16 x 10 s jobs batched at about twice the audio per second of single files; on the 2-core
    CPU batching gained nothing measurable)."""
    if cfg.batching.enabled == "auto":
        from model.apply import pick_device

        return pick_device(str(cfg.models.device)).startswith("cuda")
    return bool(cfg.batching.enabled)


def model_path(cfg: DictConfig, causal: bool) -> Path:
    """The configured model folder (relative paths start at :data:`ROOT`)."""
    path = Path(cfg.models.causal if causal else cfg.models.noncausal)
    return path if path.is_absolute() else ROOT / path
