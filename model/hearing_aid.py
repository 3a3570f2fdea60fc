"""The CAD2 hearing aid (pyclarity's multiband compressor) in torch, plus the recipe's remix maths.

:class:`HearingAid` re-implements ``clarity.enhancer.multiband_compressor.MultibandCompressor`` as
the CAD2 task-2 recipe configures it (44.1 kHz, six bands, per-band attack/release, -30 dB hard
knee, listener ratio and makeup gain per band and ear):

* **Crossover.** pyclarity's crossover is a chain of Linkwitz-Riley and all-pass IIR filters, i.e.
  linear and time-invariant. Each band's impulse response is computed once from pyclarity's own
  filter chain (an impulse through exactly that band's filters, truncated once it has decayed
  below 1e-15; 1043 taps) and applied by causal overlap-save FFT convolution: scipy's FFT for
  CPU tensors, torch's for CUDA tensors.
* **Compressor.** Per sample: level ``x_g = 20 log10|x|`` (exact zeros replaced by 1e-12, floor
  -120 dB); hard-knee gain reduction ``u = (x_g - T)(1 - 1/R)`` above the threshold ``T``, else 0;
  one-pole smoother ``s_t = a s_{t-1} + (1 - a) u_t`` with ``a`` = attack coefficient if
  ``u_t > s_{t-1}`` else release coefficient; output ``x * 10**((makeup - s) / 20)``, summed over
  bands. The smoother is a nonlinear sequential recursion, so this per-sample stage runs in a
  numba-compiled loop (internally float64) on the CPU; CUDA inputs hop to the CPU for it and
  back (band signals one way, the output the other, and the same in backward).
* **Autograd.** A :class:`torch.autograd.Function` with a hand-written backward: the adjoint of
  the crossover (FFT correlation) and the exact reverse-time recursion of the smoother for the
  recorded attack/release decisions, replayed frame by frame from checkpoints of the smoother
  state, so memory stays bounded. Gradients flow to ``x`` only (not to ratio or makeup gain).

Compiled code is cached by numba (``cache=True``) in ``model/__pycache__`` (or ``NUMBA_CACHE_DIR``,
or numba's user-wide cache if that is read-only), so only the first process pays the compilation
(a few seconds).

The remix helpers (:func:`apply_gains`, :func:`remix`, :func:`adjust_level`) reproduce the
recipe's ``apply_gains`` / ``remix_stems`` / ``adjust_level`` (``recipes/cad2/task2/baseline/
evaluate.py``) on batched torch tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache

import numba
import numpy as np
import scipy.fft
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

ParamLike = Tensor | np.ndarray | Sequence | float
"""Per-band compressor parameters: anything that broadcasts to ``(B, E, 6)``."""

_DB_TO_LN = math.log(10.0) / 20.0  # 10**(g/20) == exp(g * _DB_TO_LN)
_PARALLEL_SAMPLES = 1 << 16  # inputs with fewer samples (B*E*T) run on one thread


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
def _gain_computer(x: float, thr_db: float, thr_lin: float, slope: float) -> tuple[float, float]:
    """Hard-knee gain reduction ``u`` (dB) asked for one sample ``x``, and ``du/dx``.

    ``thr_lin`` is just below ``10**(thr_db/20)`` (a cheap pre-test that skips the logarithm).
    Needs ``thr_db > FLOOR_DB``, so the level floor never matters above the threshold.
    """
    ax = abs(x)
    if ax < thr_lin:
        return 0.0, 0.0
    xg = 20.0 * math.log10(ax)
    if xg < thr_db:
        return 0.0, 0.0
    return (xg - thr_db) * slope, slope / (_DB_TO_LN * x)


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
    frames, hop, offset, length, slope, makeup_db, a_att, a_rel, thr_db, state, y, frame_states
):
    """Compress and sum the bands of ``frames (C, G, K, N)`` into ``y (C, length)``.

    ``state (C, K)``: smoothed gain reduction ``s`` (dB) before the first sample; updated in place
    to the value after the last one, so consecutive chunks of frames chain exactly.
    ``frame_states (C, G or 0, K)``: if not empty, receives ``s`` at the start of every frame
    (the checkpoints backward replays from). The bands are interleaved in the inner loop (their
    independent recursions overlap in the CPU pipeline), and the band gain
    ``10**((makeup - s)/20)`` is updated multiplicatively per sample (``s`` moves by < 0.1 dB a
    sample) and recomputed exactly at every frame start (drift < 1e-12 relative).
    """
    n_chan, n_frames, n_bands, _ = frames.shape
    thr_lin = 10.0 ** ((thr_db - 1e-6) / 20.0)
    keep = frame_states.shape[1] > 0
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
                if keep:
                    frame_states[c, j, k] = s[k]
            stop = min(hop, length - t)
            for i in range(offset, offset + stop):
                acc = 0.0
                for k in range(n_bands):
                    x = np.float64(frames[c, j, k, i])
                    if x == 0.0:
                        x = EPS
                    u, _ = _gain_computer(x, thr_db, thr_lin, sl[k])
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
    frames, hop, offset, length, slope, makeup_db, a_att, a_rel, thr_db, frame_states, grad_y,
    carry_lam, carry_alpha, grad_frames,
):  # fmt: skip
    """Gradient of :func:`_compress_forward` w.r.t. ``frames``, written into ``grad_frames``.

    ``frames (C, G, K, N)`` cover ``length`` samples, ``grad_y (C, length)``. Frames are visited
    last to first. Each is replayed from its checkpoint in ``frame_states (C, G, K)`` with the
    forward arithmetic (hence the same attack/release decisions and gains), then ``dL/ds`` runs
    backwards in time through ``s_t = a_t s_{t-1} + (1 - a_t) u_t`` with the decisions held
    fixed. ``carry_lam`` / ``carry_alpha (C, K)``: ``dL/ds`` and the smoothing coefficient just
    after the last sample (zeros at the end of the signal), updated in place to their values at
    the first sample, so chunks of frames chain backwards exactly. Exact zeros (``EPS`` in
    forward) get the derivative of the unreplaced signal, i.e. the band gain. Entries of
    ``grad_frames`` outside the valid samples are left untouched.
    """
    n_chan, n_frames, n_bands, _ = frames.shape
    thr_lin = 10.0 ** ((thr_db - 1e-6) / 20.0)
    s = np.empty(n_bands)
    g = np.empty(n_bands)
    lam = np.empty(n_bands)
    a_next = np.empty(n_bands)
    gains = np.empty((hop, n_bands))
    alphas = np.empty((hop, n_bands))
    slopes = np.empty((hop, n_bands))  # du/dx
    for c in range(n_chan):
        sl = slope[c].copy()
        for k in range(n_bands):
            lam[k] = carry_lam[c, k]
            a_next[k] = carry_alpha[c, k]
        for j in range(n_frames - 1, -1, -1):
            t0 = j * hop
            stop = min(hop, length - t0)
            if stop <= 0:
                continue
            for k in range(n_bands):
                s[k] = frame_states[c, j, k]
                g[k] = math.exp(_DB_TO_LN * (makeup_db[c, k] - s[k]))
            for i in range(stop):
                for k in range(n_bands):
                    x = np.float64(frames[c, j, k, offset + i])
                    if x == 0.0:
                        x = EPS
                    u, dudx = _gain_computer(x, thr_db, thr_lin, sl[k])
                    s_old = s[k]
                    a = a_att[k] if u > s_old else a_rel[k]
                    s_new = a * s_old + (1.0 - a) * u
                    if s_new != s_old:
                        s[k] = s_new
                        g[k] *= _exp_small(_DB_TO_LN * (s_old - s_new))
                    gains[i, k] = g[k]
                    alphas[i, k] = a
                    slopes[i, k] = dudx
            for i in range(stop - 1, -1, -1):
                gy = np.float64(grad_y[c, t0 + i])
                for k in range(n_bands):
                    x = np.float64(frames[c, j, k, offset + i])
                    if x == 0.0:
                        x = EPS
                    gk = gains[i, k]
                    a_t = alphas[i, k]
                    lam[k] = -_DB_TO_LN * gy * x * gk + a_next[k] * lam[k]
                    grad_frames[c, j, k, offset + i] = gy * gk + slopes[i, k] * (1.0 - a_t) * lam[k]
                    a_next[k] = a_t
        for k in range(n_bands):
            carry_lam[c, k] = lam[k]
            carry_alpha[c, k] = a_next[k]


def _cpu_numpy(t: Tensor) -> np.ndarray:
    """A contiguous CPU numpy view (or copy) of ``t``."""
    return t.detach().to("cpu").contiguous().numpy()


class _ScipyFFT:
    """Overlap-save crossover on numpy arrays with scipy's FFT (one thread per call)."""

    def __init__(self, spectra: np.ndarray, size: int, taps: int) -> None:
        self.spectra = spectra  # (K, N//2+1), complex of the signal's precision
        self.size = size
        self.hop = size - taps + 1
        self.offset = taps - 1

    def pad(self, x: np.ndarray, n_frames: int) -> np.ndarray:
        """``x (C, T)`` zero-padded to ``offset + n_frames * hop`` samples."""
        return np.pad(x, ((0, 0), (self.offset, n_frames * self.hop - x.shape[-1])))

    def band_frames(self, padded: np.ndarray, first: int, stop: int) -> np.ndarray:
        """Band frames ``(C, stop - first, K, N)`` (layout: see :func:`_compress_forward`)."""
        span = padded[:, first * self.hop : (stop - 1) * self.hop + self.size]
        blocks = np.lib.stride_tricks.sliding_window_view(span, self.size, axis=-1)[:, :: self.hop]
        spectrum = scipy.fft.rfft(blocks, axis=-1)[..., None, :] * self.spectra
        return scipy.fft.irfft(spectrum, n=self.size, axis=-1)

    def new_gradient(self, n_chan: int, n_frames: int, dtype: np.dtype) -> np.ndarray:
        """Zeroed accumulator for the gradient w.r.t. the padded signal (one spare frame)."""
        return np.zeros((n_chan, (n_frames + 1) * self.hop + self.size), dtype=dtype)

    def accumulate(self, grad: np.ndarray, first: int, grad_frames: np.ndarray) -> None:
        """Add the adjoint of :meth:`band_frames` applied to ``grad_frames`` into ``grad``."""
        spectrum = (scipy.fft.rfft(grad_frames, axis=-1) * self.spectra.conj()).sum(axis=-2)
        blocks = scipy.fft.irfft(spectrum, n=self.size, axis=-1)  # (C, G, N)
        _overlap_add(grad, blocks, first * self.hop, self.hop)


class _TorchFFT:
    """The same with torch on the input's device (used for CUDA inputs)."""

    def __init__(self, spectra: Tensor, size: int, taps: int) -> None:
        self.spectra = spectra
        self.size = size
        self.hop = size - taps + 1
        self.offset = taps - 1

    def pad(self, x: Tensor, n_frames: int) -> Tensor:
        return torch.nn.functional.pad(x, (self.offset, n_frames * self.hop - x.shape[-1]))

    def band_frames(self, padded: Tensor, first: int, stop: int) -> Tensor:
        span = padded[:, first * self.hop : (stop - 1) * self.hop + self.size]
        blocks = span.unfold(-1, self.size, self.hop)  # (C, G, N)
        spectrum = torch.fft.rfft(blocks, n=self.size).unsqueeze(-2) * self.spectra
        return torch.fft.irfft(spectrum, n=self.size)

    def new_gradient(self, n_chan: int, n_frames: int, dtype: torch.dtype) -> Tensor:
        length = (n_frames + 1) * self.hop + self.size
        return torch.zeros(n_chan, length, dtype=dtype, device=self.spectra.device)

    def accumulate(self, grad: Tensor, first: int, grad_frames: np.ndarray) -> None:
        frames = torch.from_numpy(grad_frames).to(grad.device)
        spectrum = (torch.fft.rfft(frames, n=self.size) * self.spectra.conj()).sum(dim=-2)
        blocks = torch.fft.irfft(spectrum, n=self.size)
        _overlap_add(grad, blocks, first * self.hop, self.hop)


def _overlap_add(grad, blocks, start: int, hop: int) -> None:
    """``grad[:, start + j*hop : start + j*hop + N] += blocks[:, j]`` for ``blocks (C, G, N)``
    (numpy or torch)."""
    size = blocks.shape[-1]
    for j in range(blocks.shape[1]):
        grad[:, start + j * hop : start + j * hop + size] += blocks[:, j]


def _chunks(n_chan: int, n_frames: int, frame_bytes: int, chunk_bytes: int) -> list[range]:
    """Consecutive frame ranges holding about ``chunk_bytes`` of band signals each."""
    per_chunk = max(1, chunk_bytes // (n_chan * frame_bytes))
    return [range(f, min(f + per_chunk, n_frames)) for f in range(0, n_frames, per_chunk)]


def _forward_pass(fft, x, p: _Params, y: np.ndarray, checkpoints: np.ndarray, chunk_bytes: int):
    """Hearing aid of ``x (C, T)`` (numpy for ``_ScipyFFT``, torch for ``_TorchFFT``) into
    ``y (C, T)``; smoother state at frame starts into ``checkpoints (C, n_frames or 0, K)``."""
    n_chan, length = x.shape
    n_frames = max(1, -(-length // fft.hop))
    padded = fft.pad(x, n_frames)
    state = np.zeros((n_chan, NUM_BANDS))
    for frames_range in _chunks(n_chan, n_frames, NUM_BANDS * fft.size * y.itemsize, chunk_bytes):
        first, stop = frames_range.start, frames_range.stop
        frames = fft.band_frames(padded, first, stop)
        if isinstance(frames, Tensor):
            frames = _cpu_numpy(frames)
        start = first * fft.hop
        count = min((stop - first) * fft.hop, length - start)
        _compress_forward(
            frames, fft.hop, fft.offset, count, p.slope, p.makeup_db, p.a_att, p.a_rel, p.thr_db,
            state, y[:, start : start + count], checkpoints[:, first:stop],
        )  # fmt: skip


def _backward_pass(fft, x, p: _Params, checkpoints: np.ndarray, grad_y: np.ndarray, chunk_bytes):
    """Gradient w.r.t. ``x (C, T)`` of ``sum(grad_y * y)``, chunks of frames last to first;
    returned as ``fft``'s array type."""
    n_chan, length = x.shape
    n_frames = max(1, -(-length // fft.hop))
    padded = fft.pad(x, n_frames)
    grad = fft.new_gradient(n_chan, n_frames, x.dtype)
    carry_lam = np.zeros((n_chan, NUM_BANDS))
    carry_alpha = np.zeros((n_chan, NUM_BANDS))
    frame_bytes = NUM_BANDS * fft.size * grad_y.itemsize
    for frames_range in _chunks(n_chan, n_frames, frame_bytes, chunk_bytes)[::-1]:
        first, stop = frames_range.start, frames_range.stop
        frames = fft.band_frames(padded, first, stop)
        if isinstance(frames, Tensor):
            frames = _cpu_numpy(frames)
        start = first * fft.hop
        count = min((stop - first) * fft.hop, length - start)
        grad_frames = np.zeros_like(frames)
        _compress_backward(
            frames, fft.hop, fft.offset, count, p.slope, p.makeup_db, p.a_att, p.a_rel, p.thr_db,
            checkpoints[:, first:stop], grad_y[:, start : start + count], carry_lam, carry_alpha,
            grad_frames,
        )  # fmt: skip
        fft.accumulate(grad, first, grad_frames)
    return grad[:, fft.offset : fft.offset + length]


def _over_channel_groups(work: Callable[[slice], None], n_chan: int, n_samples: int) -> None:
    """``work(channels)`` over up to ``torch.get_num_threads()`` groups of channels, in parallel
    threads (numba, scipy.fft and numpy release the GIL) unless there are fewer than
    ``_PARALLEL_SAMPLES`` samples in all. Each thread does its own FFTs and compressor loops, so
    there is no synchronisation inside; a fresh pool per call keeps this fork-safe."""
    n_groups = max(1, min(torch.get_num_threads(), n_chan))
    if n_samples < _PARALLEL_SAMPLES:
        n_groups = 1
    bounds = np.linspace(0, n_chan, n_groups + 1).round().astype(int)
    groups = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if n_groups == 1:
        work(groups[0])
        return
    with ThreadPoolExecutor(max_workers=n_groups - 1) as pool:
        futures = [pool.submit(work, group) for group in groups[1:]]
        work(groups[0])
        for future in futures:
            future.result()


@dataclass(frozen=True)
class _Params:
    """Compressor settings of one call, flattened over channels ``C = B*E``."""

    slope: np.ndarray  # (C, K) 1 - 1/ratio
    makeup_db: np.ndarray  # (C, K) makeup gain (dB)
    a_att: np.ndarray  # (K,) attack smoothing coefficients
    a_rel: np.ndarray  # (K,) release smoothing coefficients
    thr_db: float  # threshold (dB)

    def __getitem__(self, channels: slice) -> _Params:
        return replace(self, slope=self.slope[channels], makeup_db=self.makeup_db[channels])


class _HearingAidFunction(torch.autograd.Function):
    """Crossover + compressor of ``x (C, T)`` with a hand-written, chunked backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, ha: HearingAid, p: _Params, keep: bool
    ) -> Tensor:
        """``(C, T)`` -> ``(C, T)``; ``keep``: keep the per-frame smoother states for backward."""
        y, checkpoints = ha._forward_impl(x.detach(), p, keep)
        if keep:
            ctx.save_for_backward(x)
            ctx.ha, ctx.params, ctx.checkpoints = ha, p, checkpoints
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        """Exact gradient w.r.t. ``x`` for the recorded attack/release decisions."""
        (x,) = ctx.saved_tensors
        grad = ctx.ha._backward_impl(x.detach(), ctx.params, ctx.checkpoints, grad_y)
        return grad, None, None, None


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _band_spectra(sample_rate: int, size: int) -> np.ndarray:
    """rfft of the crossover impulse responses zero-padded to ``size``: ``(K, size//2 + 1)``."""
    return scipy.fft.rfft(crossover_impulse_responses(sample_rate), size)


class HearingAid(torch.nn.Module):
    """pyclarity's CAD2 multiband compressor (hearing aid), batched, differentiable w.r.t. input.

    ``forward(x, ratio, makeup_db)``: ``x (B, E, T)`` float32/float64 at 44.1 kHz (E ears, each
    processed independently), ``ratio`` and ``makeup_db`` ``(B, E, 6)`` (anything broadcastable
    to it: compression ratio and makeup gain in dB per band, low to high). Returns ``(B, E, T)``
    of ``x``'s dtype and device. Output at sample t depends on input up to t only (causal).

    The signal is processed in chunks of overlap-save frames (about ``chunk_bytes`` of band
    signals at a time), so memory stays bounded. Autograd keeps only the input and the smoother
    state at each frame start; backward recomputes the band signals chunk by chunk (last to
    first) and applies the exact adjoints.

    CPU inputs: the ``B*E`` channels are split into up to ``torch.get_num_threads()`` groups,
    each processed start to end on its own thread (scipy FFTs + numba loops; no torch/OpenMP
    parallel regions, so nothing spins or waits on a busy machine). CUDA inputs: the FFTs run in
    torch on the GPU, the compressor loops on the CPU (band signals copied over and back, one
    thread). ``cpu_fft="torch"`` uses that torch path on the CPU too (for testing).
    """

    def __init__(
        self,
        sample_rate: float = SAMPLE_RATE,
        block_size: int = 16384,
        chunk_bytes: int = 2 << 20,
        cpu_fft: str = "scipy",
    ) -> None:
        """``block_size``: FFT length (samples) of the overlap-save crossover convolution;
        ``chunk_bytes``: band signals processed at once per thread (bytes); ``cpu_fft``:
        ``"scipy"`` or ``"torch"``."""
        super().__init__()
        irs = crossover_impulse_responses(float(sample_rate))
        if block_size < 2 * irs.shape[1]:
            raise ValueError(f"block_size must be >= {2 * irs.shape[1]} samples")
        if cpu_fft not in ("scipy", "torch"):
            raise ValueError(f"cpu_fft must be 'scipy' or 'torch', got {cpu_fft!r}")
        self.sample_rate = float(sample_rate)
        self.block_size = int(block_size)
        self.chunk_bytes = int(chunk_bytes)
        self.cpu_fft = cpu_fft
        self.taps = int(irs.shape[1])
        self.hop = self.block_size - self.taps + 1
        # Band spectra (K, N//2+1) as numpy, not as a buffer: the module holds no tensors, so
        # state dicts, meta-device construction and dtype/device casts leave it unchanged.
        self._spectra = np.fft.rfft(irs, n=self.block_size)
        self._spectra_cache: dict[tuple[str, torch.dtype], Tensor] = {}
        self.a_att = np.array([_smoothing_coefficient(t, sample_rate) for t in ATTACK_MS])
        self.a_rel = np.array([_smoothing_coefficient(t, sample_rate) for t in RELEASE_MS])
        self.threshold_db = THRESHOLD_DB  # must stay above FLOOR_DB (see _gain_computer)

    def forward(self, x: Tensor, ratio: ParamLike, makeup_db: ParamLike) -> Tensor:
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
            slope=1.0 - 1.0 / ratio_np,
            makeup_db=makeup_np,
            a_att=self.a_att,
            a_rel=self.a_rel,
            thr_db=self.threshold_db,
        )
        keep = torch.is_grad_enabled() and x.requires_grad
        y = _HearingAidFunction.apply(x.reshape(batch * ears, length), self, params, keep)
        return y.reshape(batch, ears, length)

    def stream(
        self, x: np.ndarray, ratio: ParamLike, makeup_db: ParamLike,
        state: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Live, block by block: ``x (E, n)`` -> ``(y (E, n), state)`` (float64, CPU).

        ``ratio``/``makeup_db`` broadcast to ``(E, 6)``. ``state`` (None at the start) carries the
        last ``taps - 1`` input samples and the smoothers, so consecutive calls of any sizes give
        :meth:`forward` of the whole signal (up to float rounding). The crossover is a direct
        FIR convolution by overlap-save FFTs (band spectra cached per FFT size).
        """
        x = np.ascontiguousarray(x, dtype=np.float64)
        ears, n = x.shape
        shape = (ears, NUM_BANDS)
        slope = 1.0 - 1.0 / _params(ratio, shape, "ratio")
        makeup = _params(makeup_db, shape, "makeup_db")
        if state is None:
            state = (np.zeros((ears, self.taps - 1)), np.zeros((ears, NUM_BANDS)))
        history, smoother = state[0], state[1].copy()
        buffer = np.concatenate([history, x], axis=1)
        if n == 0:
            return x.copy(), (history, smoother)
        # Overlap-save: the valid part of a circular convolution as long as the buffer.
        size = scipy.fft.next_fast_len(buffer.shape[1], real=True)
        spectrum = scipy.fft.rfft(buffer, size)[:, None] * _band_spectra(self.sample_rate, size)
        bands = scipy.fft.irfft(spectrum, size)[..., self.taps - 1 : self.taps - 1 + n]
        frames = np.ascontiguousarray(bands[:, None])  # (E, 1, K, n)
        y = np.empty((ears, n))
        _compress_forward(
            frames, n, 0, n, slope, makeup, self.a_att, self.a_rel, self.threshold_db, smoother,
            y, np.zeros((ears, 0, NUM_BANDS)),
        )  # fmt: skip
        return y, (buffer[:, buffer.shape[1] - (self.taps - 1):], smoother)

    def crossover(self, x: Tensor) -> Tensor:
        """Band signals ``(B, E, 6, T)`` of ``x (B, E, T)``: pyclarity's crossover output."""
        batch, ears, length = x.shape
        fft = self._torch_fft(x.dtype, x.device)
        n_frames = max(1, -(-length // self.hop))
        padded = fft.pad(x.reshape(batch * ears, length), n_frames)
        frames = fft.band_frames(padded, 0, n_frames)[..., self.taps - 1 :]
        bands = frames.permute(0, 2, 1, 3).reshape(batch, ears, NUM_BANDS, n_frames * self.hop)
        return bands[..., :length]

    # ---- internals ---------------------------------------------------------------------------

    def _torch_fft(self, dtype: torch.dtype, device: torch.device) -> _TorchFFT:
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        key = (str(device), complex_dtype)
        if key not in self._spectra_cache:
            spectra = torch.from_numpy(self._spectra).to(device=device, dtype=complex_dtype)
            self._spectra_cache[key] = spectra
        return _TorchFFT(self._spectra_cache[key], self.block_size, self.taps)

    def _scipy_fft(self, dtype: torch.dtype) -> _ScipyFFT:
        complex_dtype = np.complex128 if dtype == torch.float64 else np.complex64
        return _ScipyFFT(self._spectra.astype(complex_dtype), self.block_size, self.taps)

    def _uses_scipy(self, x: Tensor) -> bool:
        return x.device.type == "cpu" and self.cpu_fft == "scipy"

    def _forward_impl(self, x: Tensor, p: _Params, keep: bool) -> tuple[Tensor, np.ndarray]:
        """Output ``(C, T)`` and the smoother states at frame starts ``(C, n_frames or 0, K)``."""
        n_chan, length = x.shape
        n_frames = max(1, -(-length // self.hop))
        y = np.empty((n_chan, length), dtype=_NUMPY_DTYPE[x.dtype])
        checkpoints = np.zeros((n_chan, n_frames if keep else 0, NUM_BANDS))
        if self._uses_scipy(x):
            fft, x_np = self._scipy_fft(x.dtype), x.contiguous().numpy()

            def work(ch: slice) -> None:
                _forward_pass(fft, x_np[ch], p[ch], y[ch], checkpoints[ch], self.chunk_bytes)

            _over_channel_groups(work, n_chan, x.numel())
        else:
            with torch.no_grad():
                fft = self._torch_fft(x.dtype, x.device)
                _forward_pass(fft, x, p, y, checkpoints, self.chunk_bytes)
        return torch.from_numpy(y).to(x.device), checkpoints

    def _backward_impl(
        self, x: Tensor, p: _Params, checkpoints: np.ndarray, grad_y: Tensor
    ) -> Tensor:
        """Gradient w.r.t. ``x (C, T)`` given ``grad_y (C, T)``."""
        grad_np = _cpu_numpy(grad_y).astype(_NUMPY_DTYPE[x.dtype], copy=False)
        if self._uses_scipy(x):
            fft, x_np = self._scipy_fft(x.dtype), x.contiguous().numpy()
            grad = np.empty_like(x_np)

            def work(ch: slice) -> None:
                grad[ch] = _backward_pass(
                    fft, x_np[ch], p[ch], checkpoints[ch], grad_np[ch], self.chunk_bytes
                )

            _over_channel_groups(work, x.shape[0], x.numel())
            return torch.from_numpy(grad)
        with torch.no_grad():
            fft = self._torch_fft(x.dtype, x.device)
            return _backward_pass(fft, x, p, checkpoints, grad_np, self.chunk_bytes)


_NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def _params(value: ParamLike, shape: tuple[int, ...], name: str) -> np.ndarray:
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
        present = torch.as_tensor(mask, dtype=torch.bool, device=stems.device)[..., None, None]
        gained = torch.where(present, gained, gained.new_zeros(()))
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
