"""Request parameters of the serving API (pydantic) and their resolution into a model request.

Every fault raises :class:`ClientError` with an HTTP status and a message that names the field:
400 malformed request, 413 too large/long, 415 unsupported audio, 422 invalid values,
429 too many live sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from omegaconf import DictConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.apply import Request
from model.cad2 import AUDIOGRAM_CFS, INSTRUMENTS, SLOTS, slot_of
from model.prescription import prescribe


class ClientError(Exception):
    """A request the server refuses: ``status`` (HTTP 4xx) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, object]:
        """The JSON error body every endpoint returns."""
        return {"error": self.message, "status": self.status}


_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class Audiogram(BaseModel):
    """Hearing thresholds (dB HL) at 250, 500, 1000, 2000, 3000, 4000, 6000, 8000 Hz."""

    model_config = _STRICT
    left: list[float] = Field(description="left ear, 8 values (dB HL)")
    right: list[float] = Field(description="right ear, 8 values (dB HL)")


class Compressor(BaseModel):
    """CAD2 hearing-aid settings per ear: ratios and makeup gains (dB) of the six bands
    (250, 500, 1000, 2000, 4000, 8000 Hz), as in ``compressor_params.<split>.json``."""

    model_config = _STRICT
    cr_l: list[float]
    gain_l: list[float]
    cr_r: list[float]
    gain_r: list[float]


class ListenerSpec(BaseModel):
    """The listener: a preset id, an audiogram (prescribed with CAMFIT as CAD2 does), or
    compressor settings (optionally with the audiogram the model is conditioned on; 0 dB HL
    when absent)."""

    model_config = _STRICT
    preset: str | None = Field(None, description="id from GET /listeners/presets, e.g. 'N3'")
    audiogram: Audiogram | None = None
    compressor: Compressor | None = None


class _Balance(BaseModel):
    """Fields every request shares: the gains, the ensemble and the listener."""

    model_config = _STRICT
    gains: dict[str, float] = Field(
        default_factory=dict, description="dB per instrument, e.g. {'Violin_1': 6, 'Cello': -3}")
    instruments: list[str] | None = Field(
        None, description="the ensemble (default: the instruments named in gains)")
    listener: ListenerSpec = Field(default_factory=lambda: ListenerSpec(preset="NH"))


class LiveParams(_Balance):
    """What to do with a live stream: the first WebSocket message."""

    channels: Literal[1, 2] = Field(2, description="interleaved channels in each binary frame")
    sample_rate: int = Field(44100, description="rate of the binary frames in both directions "
                             "(Hz); rates other than 44100 go through a low-latency resampler")
    input_gain_db: float = Field(
        0.0, ge=-60, le=60, description="gain applied to the input (dB): the model expects "
        "about -40 LUFS")


class RebalanceParams(_Balance):
    """What to do with an uploaded recording (the ``params`` JSON part of POST /rebalance)."""

    causal: bool = Field(False, description="use the causal (live) model")
    format: Literal["flac", "wav", "ogg"] = Field("flac", description="output file format")
    sample_rate: int = Field(44100, description="output sample rate (Hz)")


@dataclass(frozen=True)
class Preset:
    """A listener preset: audiogram ``(2, 8)`` dB HL and its prescribed compressor settings."""

    preset_id: str
    name: str
    audiogram: np.ndarray
    compressor: dict[str, list[float]]

    def to_json(self) -> dict[str, object]:
        """The entry of GET /listeners/presets."""
        return {
            "id": self.preset_id,
            "name": self.name,
            "audiogram": {"frequencies": list(AUDIOGRAM_CFS),
                          "left": self.audiogram[0].tolist(), "right": self.audiogram[1].tolist()},
            "compressor": self.compressor,
        }


def load_presets(cfg: DictConfig) -> dict[str, Preset]:
    """The presets of the config, each prescribed once (:func:`model.prescription.prescribe`)."""
    out = {}
    for preset_id, entry in cfg.presets.items():
        audiogram = np.array([list(entry.left), list(entry.right)], dtype=float)
        out[str(preset_id)] = Preset(str(preset_id), str(entry.get("name", preset_id)), audiogram,
                                     _prescribe(tuple(audiogram[0]), tuple(audiogram[1])))
    return out


@lru_cache(maxsize=1024)
def _prescribe(left: tuple[float, ...], right: tuple[float, ...]) -> dict[str, list[float]]:
    params = prescribe(left, right)
    return {k: params[k] for k in ("frequencies", "cr_l", "gain_l", "cr_r", "gain_r")}


def parse_params(cls: type[BaseModel], data: object) -> BaseModel:
    """Validate ``data`` as ``cls``; ValidationError becomes a 422 naming each bad field."""
    if not isinstance(data, dict):
        raise ClientError(400, f"params must be a JSON object, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False, include_input=False):
            loc = ".".join(str(p) for p in e["loc"]) or "params"
            problems.append(f"{loc}: {e['msg']}")
        raise ClientError(422, "invalid params: " + "; ".join(problems)) from None


def _numbers(values: list[float], count: int, what: str, lo: float, hi: float) -> np.ndarray:
    if len(values) != count:
        raise ClientError(422, f"{what}: expected {count} values, got {len(values)}")
    arr = np.asarray(values, dtype=float)
    bad = [v for v in values if not lo <= v <= hi]
    if bad:
        raise ClientError(422, f"{what}: {bad[0]:g} is outside [{lo:g}, {hi:g}]")
    return arr


def resolve_listener(spec: ListenerSpec, presets: dict[str, Preset]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(audiogram (2, 8) dB HL, ratio (2, 6), makeup (2, 6) dB)`` for a listener spec."""
    given = [k for k in ("preset", "audiogram", "compressor") if getattr(spec, k) is not None]
    if not given:
        raise ClientError(422, "listener: give one of 'preset', 'audiogram' or 'compressor'")
    if spec.preset is not None:
        if len(given) > 1:
            raise ClientError(422, "listener: 'preset' cannot be combined with other fields")
        if spec.preset not in presets:
            raise ClientError(422, f"listener.preset: unknown preset {spec.preset!r}; known: "
                                   f"{', '.join(presets)}")
        preset = presets[spec.preset]
        audiogram, comp = preset.audiogram, preset.compressor
    else:
        audiogram = np.zeros((2, len(AUDIOGRAM_CFS)))
        if spec.audiogram is not None:
            n = len(AUDIOGRAM_CFS)
            if len(spec.audiogram.left) != n or len(spec.audiogram.right) != n:
                raise ClientError(422, f"listener.audiogram: give {n} levels per ear (dB HL at "
                                       f"{list(AUDIOGRAM_CFS)} Hz)")
            try:
                prescribed = _prescribe(tuple(spec.audiogram.left), tuple(spec.audiogram.right))
            except ValueError as err:
                raise ClientError(422, f"listener.audiogram: {err}") from None
            audiogram = np.array([spec.audiogram.left, spec.audiogram.right], dtype=float)
            comp = prescribed
        if spec.compressor is not None:
            c = spec.compressor
            comp = {
                "cr_l": _numbers(c.cr_l, 6, "listener.compressor.cr_l", 1.0, 20.0).tolist(),
                "gain_l": _numbers(c.gain_l, 6, "listener.compressor.gain_l", -20.0, 80.0).tolist(),
                "cr_r": _numbers(c.cr_r, 6, "listener.compressor.cr_r", 1.0, 20.0).tolist(),
                "gain_r": _numbers(c.gain_r, 6, "listener.compressor.gain_r", -20.0, 80.0).tolist(),
            }
    ratio = np.array([comp["cr_l"], comp["cr_r"]], dtype=float)
    makeup = np.array([comp["gain_l"], comp["gain_r"]], dtype=float)
    return audiogram, ratio, makeup


def resolve(params: LiveParams | RebalanceParams, presets: dict[str, Preset],
            cfg: DictConfig) -> Request:
    """The model request for validated params; ClientError (422) names any bad value."""
    lo, hi = float(cfg.limits.min_gain_db), float(cfg.limits.max_gain_db)
    slots: dict[str, str] = {}
    for i, name in enumerate([*params.gains, *(params.instruments or [])]):
        try:
            slot = slot_of(name)
        except ValueError as err:
            raise ClientError(422, f"{err} (second voices: Flute_2, Sax_2, Viola_2, "
                                   "Violin_2)") from None
        if i < len(params.gains) and slot in slots:
            raise ClientError(422, f"gains: {slots[slot]!r} and {name!r} are the same "
                                   f"instrument ({slot}); name voices Violin_1/Violin_2")
        slots.setdefault(slot, name)
    if not slots:
        raise ClientError(422, "name at least one instrument in 'gains' or 'instruments'")
    for name, value in params.gains.items():
        if not lo <= value <= hi:
            raise ClientError(422, f"gains.{name}: {value:g} dB is outside [{lo:g}, {hi:g}] dB")
    audiogram, ratio, makeup = resolve_listener(params.listener, presets)
    present = list(params.instruments) if params.instruments else None
    if present is not None:
        present += [g for g in params.gains if g not in present]
    return Request.from_gains(dict(params.gains), audiogram, ratio, makeup, present=present)


def instruments_json() -> dict[str, object]:
    """GET /instruments: the vocabulary and the model's slots."""
    return {
        "instruments": list(INSTRUMENTS),
        "slots": list(SLOTS),
        "note": "name a second voice with _2 (Violin_2); Violin = Violin_1",
    }
