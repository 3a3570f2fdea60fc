"""The CAD2 hearing aid (pyclarity's multiband compressor) in torch, plus the recipe's remix maths.

:class:`HearingAid` re-implements ``clarity.enhancer.multiband_compressor.MultibandCompressor`` as
the CAD2 task-2 recipe configures it (44.1 kHz, six bands, per-band attack/release, -30 dB hard
knee, listener ratio and makeup gain per band and ear):

* **Crossover.** pyclarity's crossover is a chain of Linkwitz-Riley and all-pass IIR filters, i.e.
  linear and time-invariant. Each band's impulse response is computed once from pyclarity's own
  coefficient function (an impulse through exactly that band's filter chain, truncated once it
  has decayed below 1e-15) and applied by causal overlap-save FFT convolution in torch, so it runs
  on any device and autograd differentiates it.
* **Compressor.** Per sample: level ``x_g = 20 log10|x|`` (exact zeros replaced by 1e-12, floor
  -120 dB); hard-knee gain reduction ``u = (x_g - T)(1 - 1/R)`` above the threshold ``T``, else 0;
  one-pole smoother ``s_t = a s_{t-1} + (1 - a) u_t`` with ``a`` = attack coefficient if
  ``u_t > s_{t-1}`` else release coefficient; output ``x * 10**((makeup - s) / 20)``, summed over
  bands. The smoother is a nonlinear sequential recursion, so this whole per-sample stage runs in
  one numba-compiled loop (internally float64) inside a :class:`torch.autograd.Function` whose
  backward is the exact reverse-time recursion for the recorded attack/release decisions.
  The numba stage runs on the CPU: CUDA inputs hop to the CPU for it and back (documented cost:
  one device-to-host copy of the band signals and one host-to-device copy of the output, and the
  same in backward). Gradients flow to ``x`` only (not to ratio or makeup gain).

Compiled code is cached by numba (``cache=True``) in ``model/__pycache__`` (or ``NUMBA_CACHE_DIR``),
so only the first process on a machine pays the compilation (a few seconds).

The remix helpers (:func:`apply_gains`, :func:`remix`, :func:`adjust_level`) reproduce the
recipe's ``apply_gains`` / ``remix_stems`` / ``adjust_level`` (``recipes/cad2/task2/baseline/
evaluate.py``) on batched torch tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np
import torch
from torch import Tensor

SAMPLE_RATE = 44100
"""Sample rate of the CAD2 hearing aid (Hz)."""
CROSSOVER_HZ: tuple[float, ...] = (353.55, 707.11, 1414.21, 2828.43, 5656.85)
"""Crossover frequencies of the six bands (Hz): (250, 500, 1000, 2000, 4000) x sqrt(2)."""
NUM_BANDS = len(CROSSOVER_HZ) + 1
"""Number of compressor bands (6)."""
ATTACK_MS: tuple[float, ...] = (11.0, 11.0, 14.0, 13.0, 11.0, 11.0)
"""Attack time per band (ms)."""
RELEASE_MS: tuple[float, ...] = (80.0, 80.0, 80.0, 80.0, 100.0, 100.0)
"""Release time per band (ms)."""
THRESHOLD_DB = -30.0
"""Compression threshold (dB re full scale of the band signal); hard knee (knee width 0)."""
EPS = 1e-12
"""pyclarity replaces exact zeros of a band signal by this value before taking the level."""
FLOOR_DB = -120.0
"""Floor of the level detector (dB)."""
IR_TOLERANCE = 1e-15
"""The crossover impulse responses are truncated after their last sample above this magnitude."""

_DB_TO_LN = math.log(10.0) / 20.0  # 10**(g/20) == exp(g * _DB_TO_LN)


# --------------------------------------------------------------------------------------------
# Crossover
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def crossover_impulse_responses(
    sample_rate: float = SAMPLE_RATE,
    crossover_hz: tuple[float, ...] = CROSSOVER_HZ,
    tolerance: float = IR_TOLERANCE,
) -> np.ndarray:
    """Impulse responses ``(bands, taps)`` (float64) of pyclarity's crossover bands.

    An impulse is filtered by pyclarity's ``Crossover`` (its own coefficients and filter chain,
    scipy ``lfilter``); the responses are cut after the last sample whose magnitude exceeds
    ``tolerance`` in any band. Cached per arguments; treat the returned array as read-only.
    """
    from clarity.enhancer.multiband_compressor.crossover import Crossover

    xover = Crossover(np.asarray(crossover_hz, dtype=float), sample_rate)
    length = int(sample_rate)  # 1 s: far longer than the decay of the lowest band
    impulse = np.zeros(length)
    impulse[0] = 1.0
    irs = np.asarray(xover(impulse), dtype=np.float64)  # (bands, length)
    above = np.nonzero(np.abs(irs).max(axis=0) > tolerance)[0]
    taps = int(above[-1]) + 1
    if taps > length // 2:
        raise RuntimeError(f"crossover impulse response did not decay within {length} samples")
    irs = np.ascontiguousarray(irs[:, :taps])
    irs.setflags(write=False)
    return irs


def _smoothing_coefficient(time_ms: float, sample_rate: float) -> float:
    """One-pole coefficient ``exp(-1 / (time * rate))`` for a time constant in ms."""
    return math.exp(-1.0 / (0.001 * sample_rate * time_ms))


# --------------------------------------------------------------------------------------------
# Compressor kernels (numba). Band signals arrive in overlap-save frame layout
# ``frames (C, n_frames, K, N)``: band k of channel c at sample t sits at
# ``frames[c, t // hop, k, offset + t % hop]``. Everything is computed in float64.
# --------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _level_reduction(x: float, thr_db: float, thr_lin: float, slope: float) -> float:
    """Gain reduction ``u`` (dB) asked by the hard-knee gain computer for one sample ``x``."""
    ax = abs(x)
    if ax < thr_lin:
        return 0.0
    xg = 20.0 * math.log10(ax)
    if xg < FLOOR_DB:
        xg = FLOOR_DB
    if xg < thr_db:
        return 0.0
    return (xg - thr_db) * slope


_EXP_C3 = 1.0 / 6.0
_EXP_C4 = 1.0 / 24.0
_EXP_C5 = 1.0 / 120.0
_EXP_C6 = 1.0 / 720.0


@numba.njit(cache=True, nogil=True)
def _exp_small(z: float) -> float:
    """``exp(z)``, by a degree-6 Taylor polynomial (relative error < 3e-16) when ``|z| < 0.02``."""
    if abs(z) >= 0.02:
        return math.exp(z)
    return 1.0 + z * (1.0 + z * (0.5 + z * (_EXP_C3 + z * (_EXP_C4 + z * (_EXP_C5 + z * _EXP_C6)))))


@numba.njit(cache=True, nogil=True)
def _compress_forward(
    frames, hop, offset, length, slope, makeup_db, a_att, a_rel, thr_db, state, y
):
    """Compress and sum the bands of ``frames (C, G, K, N)`` into ``y (C, length)``.

    ``state (C, K)``: smoothed gain reduction (dB) before the first sample; updated in place to
    the value after the last one, so consecutive chunks of frames chain exactly. The bands are
    interleaved in the inner loop (their independent recursions overlap in the CPU pipeline), and
    the band gain ``10**((makeup - s)/20)`` is updated multiplicatively per sample (``s`` moves
    by < 0.1 dB a sample) and recomputed exactly at every frame start (drift < 1e-12 relative).
    """
    n_chan, n_frames, n_bands, _ = frames.shape
    thr_lin = 10.0 ** ((max(thr_db, FLOOR_DB) - 1e-6) / 20.0)
    s = np.empty(n_bands)
    g = np.empty(n_bands)
    for c in range(n_chan):
        sl = slope[c].copy()
        for k in range(n_bands):
            s[k] = state[c, k]
        t = 0
        for j in range(n_frames):
            for k in range(n_bands):
                g[k] = math.exp(_DB_TO_LN * (makeup_db[c, k] - s[k]))
            stop = min(hop, length - t)
            for i in range(offset, offset + stop):
                acc = 0.0
                for k in range(n_bands):
                    x = np.float64(frames[c, j, k, i])
                    if x == 0.0:
                        x = EPS
                    u = _level_reduction(x, thr_db, thr_lin, sl[k])
                    s_old = s[k]
                    a = a_att[k] if u > s_old else a_rel[k]
                    s_new = a * s_old + (1.0 - a) * u
                    if s_new != s_old:
                        s[k] = s_new
                        g[k] *= _exp_small(_DB_TO_LN * (s_old - s_new))
                    acc += x * g[k]
                y[c, t] = acc
                t += 1
        for k in range(n_bands):
            state[c, k] = s[k]


@numba.njit(cache=True, nogil=True)
def _compress_backward(
    frames, hop, offset, length, slope, makeup_db, a_att, a_rel, thr_db, grad_y, grad_frames
):
    """Gradient of :func:`_compress_forward` (zero initial state) w.r.t. ``frames``.

    Written into ``grad_frames`` (same shape as ``frames``; entries outside the valid samples are
    left untouched). The forward recursion is replayed to recover the smoothed level ``s`` and
    the attack/release decisions, then ``dL/ds`` runs backwards in time through ``s_t = a_t
    s_{t-1} + (1 - a_t) u_t`` with the decisions held fixed. Exact zeros (replaced by ``EPS`` in
    forward) get the derivative of the unreplaced signal, i.e. the band gain.
    """
    n_chan, n_frames, n_bands, _ = frames.shape
    thr_lin = 10.0 ** ((max(thr_db, FLOOR_DB) - 1e-6) / 20.0)
    gains = np.empty(length)
    alphas = np.empty(length)
    for c in range(n_chan):
        for k in range(n_bands):
            sl = slope[c, k]
            mk = makeup_db[c, k]
            # replay the forward recursion (same arithmetic, hence the same decisions)
            s = 0.0
            t = 0
            for j in range(n_frames):
                stop = min(hop, length - t)
                for i in range(offset, offset + stop):
                    x = np.float64(frames[c, j, k, i])
                    if x == 0.0:
                        x = EPS
                    u = _level_reduction(x, thr_db, thr_lin, sl)
                    a = a_att[k] if u > s else a_rel[k]
                    s = a * s + (1.0 - a) * u
                    alphas[t] = a
                    gains[t] = math.exp(_DB_TO_LN * (mk - s))
                    t += 1
            # reverse time; lam = total dL/ds_t
            lam = 0.0
            a_next = 0.0
            for t in range(length - 1, -1, -1):
                j = t // hop
                i = offset + t - j * hop
                x = np.float64(frames[c, j, k, i])
                if x == 0.0:
                    x = EPS
                gy = np.float64(grad_y[c, t])
                g = gains[t]
                lam = -_DB_TO_LN * gy * x * g + a_next * lam
                a_t = alphas[t]
                grad = gy * g
                if sl != 0.0 and abs(x) >= thr_lin:
                    xg = 20.0 * math.log10(abs(x))
                    if xg >= thr_db and xg > FLOOR_DB:
                        # du/dx = slope * 20 / (ln(10) x)
                        grad += sl / (_DB_TO_LN * x) * (1.0 - a_t) * lam
                grad_frames[c, j, k, i] = grad
                a_next = a_t


def _cpu_numpy(t: Tensor) -> np.ndarray:
    """A contiguous CPU numpy view (or copy) of ``t``."""
    return t.detach().to("cpu").contiguous().numpy()


def _over_channel_groups(work: Callable[[slice], None], n_chan: int) -> None:
    """Run ``work(channel_slice)`` over groups of channels on up to ``torch.get_num_threads()``
    threads (the numba kernels release the GIL). A fresh pool per call keeps this fork-safe."""
    n_groups = max(1, min(torch.get_num_threads(), n_chan))
    if n_groups == 1:
        work(slice(0, n_chan))
        return
    bounds = np.linspace(0, n_chan, n_groups + 1).round().astype(int)
    groups = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    with ThreadPoolExecutor(max_workers=n_groups - 1) as pool:
        futures = [pool.submit(work, group) for group in groups[1:]]
        work(groups[0])
        for future in futures:
            future.result()


@dataclass(frozen=True)
class _Params:
    """Compressor settings of one call, flattened over channels ``C = B*E``."""

    hop: int  # overlap-save hop (samples)
    offset: int  # index of the first valid sample in a frame (taps - 1)
    length: int  # signal length T (samples)
    slope: np.ndarray  # (C, K) 1 - 1/ratio
    makeup_db: np.ndarray  # (C, K) dB
    a_att: np.ndarray  # (K,) attack coefficients
    a_rel: np.ndarray  # (K,) release coefficients
    thr_db: float  # threshold (dB)


def _compress(frames: np.ndarray, p: _Params, start: int, count: int, state, y) -> None:
    """Compress frames ``(C, G, K, N)`` covering samples ``start..start+count-1`` into ``y``."""

    def work(ch: slice) -> None:
        _compress_forward(
            frames[ch], p.hop, p.offset, count, p.slope[ch], p.makeup_db[ch], p.a_att, p.a_rel,
            p.thr_db, state[ch], y[ch, start : start + count],
        )  # fmt: skip

    _over_channel_groups(work, frames.shape[0])


class _CompressBands(torch.autograd.Function):
    """Per-band compression and band sum of whole band frames; the numba stage with autograd."""

    @staticmethod
    def forward(ctx, frames: Tensor, params: _Params) -> Tensor:  # type: ignore[override]
        """``frames (C, n_frames, K, N)`` -> compressed band sum ``(C, T)``."""
        frames_np = _cpu_numpy(frames)
        y = np.empty((frames.shape[0], params.length), dtype=frames_np.dtype)
        _compress(frames_np, params, 0, params.length, np.zeros(params.slope.shape), y)
        ctx.params = params
        ctx.device = frames.device
        if frames.device.type == "cpu":
            ctx.save_for_backward(frames)
            ctx.frames_cpu = None
        else:
            ctx.frames_cpu = frames_np  # keep the host copy for backward
        return torch.from_numpy(y).to(frames.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        """Exact gradient w.r.t. ``frames`` for the recorded attack/release decisions."""
        if ctx.frames_cpu is None:
            (frames,) = ctx.saved_tensors
            frames_np = _cpu_numpy(frames)
        else:
            frames_np = ctx.frames_cpu
        p: _Params = ctx.params
        grad_frames = np.zeros_like(frames_np)
        grad_np = _cpu_numpy(grad_y).astype(frames_np.dtype, copy=False)

        def work(ch: slice) -> None:
            _compress_backward(
                frames_np[ch], p.hop, p.offset, p.length, p.slope[ch], p.makeup_db[ch], p.a_att,
                p.a_rel, p.thr_db, grad_np[ch], grad_frames[ch],
            )  # fmt: skip

        _over_channel_groups(work, frames_np.shape[0])
        return torch.from_numpy(grad_frames).to(ctx.device), None


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


class HearingAid(torch.nn.Module):
    """pyclarity's CAD2 multiband compressor (hearing aid), batched, differentiable w.r.t. input.

    ``forward(x, ratio, makeup_db)``: ``x (B, E, T)`` float32/float64 at 44.1 kHz (E ears, each
    processed independently), ``ratio`` and ``makeup_db`` ``(B, E, 6)`` (anything broadcastable
    to it: compression ratio and makeup gain in dB per band, low to high). Returns ``(B, E, T)``
    of ``x``'s dtype and device. Output at sample t depends on input up to t only (causal).

    Without autograd (``torch.no_grad()`` or ``x`` not requiring grad) the signal is processed in
    chunks of overlap-save frames (bounded memory, cache-friendly); with autograd the band
    signals of the whole input are kept for backward (about ``B*E*6*T*1.07`` values). The
    compressor loop runs on up to ``torch.get_num_threads()`` threads, split over ``B*E``.
    """

    def __init__(
        self,
        sample_rate: float = SAMPLE_RATE,
        block_size: int = 16384,
        chunk_bytes: int = 8 << 20,
    ) -> None:
        """``block_size``: FFT length (samples) of the overlap-save crossover convolution;
        ``chunk_bytes``: size of the band frames processed at once without autograd."""
        super().__init__()
        irs = crossover_impulse_responses(float(sample_rate))
        if block_size < 2 * irs.shape[1]:
            raise ValueError(f"block_size must be >= {2 * irs.shape[1]} samples")
        self.sample_rate = float(sample_rate)
        self.block_size = int(block_size)
        self.chunk_bytes = int(chunk_bytes)
        self.taps = int(irs.shape[1])
        self.hop = self.block_size - self.taps + 1
        spectra = torch.fft.rfft(torch.from_numpy(irs.copy()), n=self.block_size)  # (K, N//2+1)
        self.register_buffer("band_spectra", spectra, persistent=False)
        self.a_att = np.array([_smoothing_coefficient(t, sample_rate) for t in ATTACK_MS])
        self.a_rel = np.array([_smoothing_coefficient(t, sample_rate) for t in RELEASE_MS])
        self.threshold_db = THRESHOLD_DB

    def _padded(self, x: Tensor) -> tuple[Tensor, int]:
        """``x (C, T)`` zero-padded for overlap-save, and the number of frames."""
        length = x.shape[-1]
        n_frames = max(1, -(-length // self.hop))
        return torch.nn.functional.pad(x, (self.taps - 1, n_frames * self.hop - length)), n_frames

    def _band_frames(self, padded: Tensor, first: int, stop: int) -> Tensor:
        """Band frames ``(C, stop - first, K, N)`` of overlap-save frames ``first..stop-1``.

        Band k of sample ``t`` (frame ``j = t // hop``) sits at ``[:, j, k, taps - 1 + t % hop]``.
        """
        span = padded[:, first * self.hop : (stop - 1) * self.hop + self.block_size]
        blocks = span.unfold(-1, self.block_size, self.hop)  # (C, G, N)
        dtype = torch.complex128 if padded.dtype == torch.float64 else torch.complex64
        spectra = self.band_spectra.to(dtype)
        bands = torch.fft.rfft(blocks, n=self.block_size).unsqueeze(-2) * spectra
        return torch.fft.irfft(bands, n=self.block_size)

    def crossover(self, x: Tensor) -> Tensor:
        """Band signals ``(B, E, 6, T)`` of ``x (B, E, T)``: pyclarity's crossover output."""
        batch, ears, length = x.shape
        padded, n_frames = self._padded(x.reshape(batch * ears, length))
        frames = self._band_frames(padded, 0, n_frames)[..., self.taps - 1 :]
        bands = frames.permute(0, 2, 1, 3).reshape(batch, ears, NUM_BANDS, n_frames * self.hop)
        return bands[..., :length]

    def forward(self, x: Tensor, ratio: Tensor, makeup_db: Tensor) -> Tensor:
        """Hearing-aid output ``(B, E, T)``; ``x (B, E, T)``, ``ratio``/``makeup_db (B, E, 6)``."""
        if x.ndim != 3:
            raise ValueError(f"x must be (batch, ears, samples), got shape {tuple(x.shape)}")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"x must be float32 or float64, got {x.dtype}")
        batch, ears, length = x.shape
        shape = (batch, ears, NUM_BANDS)
        ratio_np = _params(ratio, shape, "ratio")
        if np.any(ratio_np <= 0):
            raise ValueError("compression ratios must be positive")
        makeup_np = _params(makeup_db, shape, "makeup_db")
        if length == 0 or batch * ears == 0:
            return x.clone()
        params = _Params(
            hop=self.hop,
            offset=self.taps - 1,
            length=length,
            slope=1.0 - 1.0 / ratio_np,
            makeup_db=makeup_np,
            a_att=self.a_att,
            a_rel=self.a_rel,
            thr_db=self.threshold_db,
        )
        padded, n_frames = self._padded(x.reshape(batch * ears, length))
        if torch.is_grad_enabled() and x.requires_grad:
            frames = self._band_frames(padded, 0, n_frames)
            y = _CompressBands.apply(frames, params)
        else:
            with torch.no_grad():
                y = self._forward_chunked(padded, n_frames, params).to(x.device)
        return y.reshape(batch, ears, length)

    def _forward_chunked(self, padded: Tensor, n_frames: int, params: _Params) -> Tensor:
        """No-autograd forward over chunks of frames; returns ``(C, T)`` on the CPU."""
        n_chan = padded.shape[0]
        frame_bytes = n_chan * NUM_BANDS * self.block_size * padded.element_size()
        per_chunk = max(1, self.chunk_bytes // frame_bytes)
        dtype = np.float64 if padded.dtype == torch.float64 else np.float32
        y = np.empty((n_chan, params.length), dtype=dtype)
        state = np.zeros((n_chan, NUM_BANDS))
        for first in range(0, n_frames, per_chunk):
            stop = min(first + per_chunk, n_frames)
            frames = _cpu_numpy(self._band_frames(padded, first, stop))
            start = first * self.hop
            count = min((stop - first) * self.hop, params.length - start)
            _compress(frames, params, start, count, state, y)
        return torch.from_numpy(y)


def _params(value: Tensor | np.ndarray | Sequence, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Per-band parameters broadcast to ``shape`` and flattened to ``(B*E, K)`` float64."""
    if isinstance(value, Tensor):
        arr = value.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(value, dtype=np.float64)
    try:
        arr = np.broadcast_to(arr, shape)
    except ValueError as exc:
        raise ValueError(f"{name} of shape {arr.shape} does not broadcast to {shape}") from exc
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return np.ascontiguousarray(arr.reshape(-1, shape[-1]))


# --------------------------------------------------------------------------------------------
# The recipe's remix maths
# --------------------------------------------------------------------------------------------


def db_to_gain(gains_db: Tensor) -> Tensor:
    """Linear amplitude factor ``10**(g/20)`` of gains in dB (same shape)."""
    return torch.pow(10.0, gains_db / 20.0)


def apply_gains(stems: Tensor, gains_db: Tensor) -> Tensor:
    """Stems ``(..., S, C, T)`` scaled by per-stem gains ``(..., S)`` (dB).

    The recipe's ``apply_gains`` LUFS-normalises each stem to its own loudness + gain, which is
    the constant factor ``10**(gain/20)`` (also for silent stems, whose loudness it sets to -80).
    """
    gains_db = torch.as_tensor(gains_db, dtype=stems.dtype, device=stems.device)
    return stems * db_to_gain(gains_db)[..., None, None]


def remix(stems: Tensor, gains_db: Tensor, mask: Tensor | None = None) -> Tensor:
    """Sum of the gained stems ``(..., C, T)``: recipe ``remix_stems(apply_gains(...))``.

    ``stems (..., S, C, T)``, ``gains_db (..., S)`` dB, ``mask (..., S)`` bool (True = present;
    absent slots are left out of the sum). The level adjustment is separate: :func:`adjust_level`
    (or :func:`reference_remix` for both).
    """
    gained = apply_gains(stems, gains_db)
    if mask is not None:
        gained = gained * torch.as_tensor(mask, device=stems.device)[..., None, None]
    return gained.sum(dim=-3)


def level_adjustment_db(gains_db: Tensor, mask: Tensor | None = None) -> Tensor:
    """Recipe level correction ``G = -10 log10(sum_i 10**(g_i/10) / N)`` (dB), shape ``(...)``.

    ``gains_db (..., S)`` dB; the sum and ``N`` run over the present slots of ``mask (..., S)``
    (all slots when ``mask`` is None).
    """
    gains_db = torch.as_tensor(gains_db)
    power = torch.pow(10.0, gains_db / 10.0)
    if mask is None:
        return -10.0 * torch.log10(power.mean(dim=-1))
    mask = torch.as_tensor(mask, dtype=torch.bool, device=power.device)
    power = torch.where(mask, power, torch.zeros((), dtype=power.dtype, device=power.device))
    count = mask.sum(dim=-1)
    if torch.any(count == 0):
        raise ValueError("adjust_level needs at least one present source")
    return -10.0 * torch.log10(power.sum(dim=-1) / count)


def adjust_level(signal: Tensor, gains_db: Tensor, mask: Tensor | None = None) -> Tensor:
    """Recipe ``adjust_level``: ``signal (..., C, T)`` times ``10**(G/20)``.

    ``G`` = :func:`level_adjustment_db` of ``gains_db (..., S)`` over the present slots of
    ``mask (..., S)``. Returns ``signal``'s shape and dtype.
    """
    gains_db = torch.as_tensor(gains_db, dtype=torch.float64, device=signal.device)
    factor = db_to_gain(level_adjustment_db(gains_db, mask)).to(signal.dtype)
    return signal * factor[..., None, None]


def reference_remix(stems: Tensor, gains_db: Tensor, mask: Tensor | None = None) -> Tensor:
    """The recipe's reference mixture before the hearing aid: ``adjust_level(remix(...))``.

    ``stems (..., S, C, T)``, ``gains_db (..., S)`` dB, ``mask (..., S)`` bool -> ``(..., C, T)``.
    """
    return adjust_level(remix(stems, gains_db, mask), gains_db, mask)
