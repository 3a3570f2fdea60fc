"""Live causal rebalancing over a WebSocket (``/ws/stream``).

Protocol (float32 little-endian PCM, channels interleaved; 44.1 kHz unless the params name
another ``sample_rate`` from ``audio.output_rates``, which is converted to and from the model's
44.1 kHz by soxr's streaming "quick" resampler: it holds back no samples, so it adds no latency,
at some cost in quality):

1. Client connects. Over ``limits.max_live_sessions`` the handshake is refused with HTTP 429.
2. Client sends one text message: JSON :class:`serving.params.LiveParams` (gains, instruments,
   listener, channels, input_gain_db). Server answers ``{"type": "ready", "sample_rate",
   "channels", "latency_samples", "latency_ms", "block_samples", "hop_samples"}``.
3. Client sends binary frames of any whole number of samples (``4 * channels`` bytes each);
   the server answers with binary frames of processed stereo samples (always 2 channels),
   in order, each holding every sample completed since the previous answer. While the server
   keeps up that is one answer per frame that completes a model block; when it falls behind,
   the frames waiting in its queue are processed together (fewer, larger steps) until it has
   caught up. Output lags input by at most ``latency_samples`` (the model's look-ahead,
   219 samples = 5.0 ms for the shipped model) plus the client's hop and the compute time.
4. Client sends ``{"type": "end"}``: the server sends the rest of the signal, then
   ``{"type": "end", "samples_in", "samples_out"}`` and closes (1000). A client may also just
   close: its session is dropped.

Faults get a text message ``{"type": "error", "status": 4xx, "error": "..."}`` and a close with
code ``4000 + status`` (4400 bad frame, 4408 idle, 4413 frame too large, 4422 bad params).
"""

from __future__ import annotations

import json

import numpy as np
import soxr

from model.apply import Request
from model.streaming import CompiledStep, Streamer
from model.tutti import TuttiModel
from serving.params import ClientError


class LiveSession:
    """Per-connection state: frame decoding and the causal :class:`model.streaming.Streamer`.

    Args:
        model: the causal model.
        request: gains and listener.
        channels: interleaved channels of incoming frames (1 or 2).
        input_gain_db: gain applied to incoming samples (dB).
        max_frame_samples: largest accepted frame (samples per channel).
        sample_rate: rate of incoming and outgoing frames (Hz).
        step: the causal model's compiled block step (None: eager).
    """

    def __init__(self, model: TuttiModel, request: Request, channels: int = 2,
                 input_gain_db: float = 0.0, max_frame_samples: int = 44100,
                 sample_rate: int | None = None, step: CompiledStep | None = None) -> None:
        self.streamer = Streamer(model, request, step)
        self.channels = channels
        model_rate = model.config.sample_rate
        self.rate = int(sample_rate or model_rate)
        self._resample = None
        if self.rate != model_rate:
            self._resample = (
                soxr.ResampleStream(self.rate, model_rate, 2, dtype="float32", quality="QQ"),
                soxr.ResampleStream(model_rate, self.rate, 2, dtype="float32", quality="QQ"))
        self.gain = np.float32(10 ** (input_gain_db / 20))
        self.max_frame_samples = max_frame_samples
        self.samples_in = 0
        self.samples_out = 0

    def ready_message(self, hop_ms: float) -> dict[str, object]:
        """The reply to the params message."""
        rate = self.rate
        latency = int(round(self.streamer.latency * rate / self.streamer.model.config.sample_rate))
        return {"type": "ready", "sample_rate": rate, "channels": self.channels,
                "output_channels": 2, "latency_samples": latency,
                "latency_ms": round(1000 * latency / rate, 3),
                "block_samples": self.streamer.block,
                "hop_samples": int(round(hop_ms * rate / 1000))}

    def decode(self, data: bytes) -> np.ndarray:
        """A binary frame -> ``(2, n)`` float32; ClientError for partial samples, oversize or
        NaN/Inf."""
        width = 4 * self.channels
        if len(data) % width:
            raise ClientError(400, f"binary frame of {len(data)} bytes is not a whole number of "
                                   f"samples ({width} bytes each: float32 x {self.channels} ch)")
        n = len(data) // width
        if n > self.max_frame_samples:
            raise ClientError(413, f"frame of {n} samples exceeds the limit of "
                                   f"{self.max_frame_samples} per frame")
        x = np.frombuffer(data, dtype="<f4").reshape(n, self.channels).T
        if not np.isfinite(x).all():
            raise ClientError(400, "frame holds NaN or infinite samples")
        if self.channels == 1:
            x = np.repeat(x, 2, axis=0)
        return np.ascontiguousarray(x, dtype=np.float32) * self.gain

    def process(self, frame: np.ndarray) -> bytes:
        """Feed ``(2, n)``; the processed samples now available, interleaved float32 bytes."""
        self.samples_in += frame.shape[1]
        if self._resample is None:
            return self._bytes(self.streamer.process(frame))
        into, out_of = self._resample
        x = into.resample_chunk(np.ascontiguousarray(frame.T)).T
        return self._bytes(out_of.resample_chunk(np.ascontiguousarray(
            self.streamer.process(x).T)).T)

    def flush(self) -> bytes:
        """End of input: the remaining processed samples."""
        if self._resample is None:
            return self._bytes(self.streamer.flush())
        into, out_of = self._resample
        x = into.resample_chunk(np.zeros((0, 2), np.float32), last=True).T
        y = np.concatenate([self.streamer.process(x), self.streamer.flush()], axis=1)
        out = out_of.resample_chunk(np.ascontiguousarray(y.T), last=True).T
        # The two conversions round the count: answer exactly one output per input sample.
        missing = self.samples_in - self.samples_out - out.shape[1]
        if missing > 0:
            out = np.pad(out, ((0, 0), (0, missing)))
        return self._bytes(out[:, : max(0, self.samples_in - self.samples_out)])

    def _bytes(self, y: np.ndarray) -> bytes:
        self.samples_out += y.shape[1]
        return np.ascontiguousarray(y.T, dtype="<f4").tobytes()

    def end_message(self) -> dict[str, object]:
        """The last text message of a session that ended with ``{"type": "end"}``."""
        return {"type": "end", "samples_in": self.samples_in, "samples_out": self.samples_out}


def control_message(text: str) -> str:
    """The ``type`` of a text control message after the params (only ``end`` exists)."""
    try:
        msg = json.loads(text)
    except json.JSONDecodeError:
        raise ClientError(400, "text messages after the params must be JSON") from None
    if not isinstance(msg, dict) or msg.get("type") != "end":
        raise ClientError(400, 'the only control message is {"type": "end"}')
    return "end"
