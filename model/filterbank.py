"""Low-delay STFT: long asymmetric analysis window, short synthesis window, streamable.

The analysis window (``window`` samples, 1024 = 23 ms) gives fine frequency resolution; the
synthesis window covers only its last ``synthesis`` samples (128), so a frame's output ends with
its input: the whole filterbank delays by ``synthesis - hop`` samples (64 = 1.5 ms) and peeks at
no future sample. Analysis x synthesis is a periodic Hann of ``synthesis`` samples, which sums to
one at ``hop = synthesis / 2``, so an all-ones gain reconstructs the input exactly (delayed).

Frame ``j`` ends at input sample ``hop * (j + 1) - 1``; its output covers
``[hop * (j - 1), hop * (j + 1))``. Signals are ``(B, C, T)`` with ``T`` a multiple of ``hop``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

FEW_FRAMES = 8
"""Frames per call up to which :meth:`LowDelaySTFT.synthesise` multiplies by a basis
instead of taking an inverse FFT (a streamed block is two frames of the causal layout)."""


def low_delay_windows(window: int, synthesis: int, reach: int = 0) -> tuple[Tensor, Tensor]:
    """Analysis and synthesis windows ``(window,)`` (float64).

    Analysis: the rising half of a Hann window up to ``window - reach - synthesis / 2``
    samples, then (``reach`` 0) the falling half of a square-root Hann of ``synthesis`` samples,
    or (``reach`` > 0) ones for ``synthesis / 2`` samples and a falling half-cosine over the last
    ``reach``. Synthesis: periodic Hann of ``synthesis`` samples divided by the analysis window
    over the ``synthesis`` samples that end ``reach`` samples before the frame's end.
    """
    if synthesis % 2 or reach < 0 or synthesis + reach >= window:
        raise ValueError(f"synthesis must be even and synthesis + reach below window, got "
                         f"window {window}, synthesis {synthesis}, reach {reach}")
    rise = window - reach - synthesis // 2
    n = torch.arange(rise, dtype=torch.float64)
    rising = 0.5 * (1 - torch.cos(math.pi * n / rise))
    hann = 0.5 * (1 - torch.cos(2 * math.pi * torch.arange(synthesis, dtype=torch.float64)
                                / synthesis))
    if reach:
        m = torch.arange(1, reach + 1, dtype=torch.float64)
        tail = [torch.ones(synthesis // 2, dtype=torch.float64),
                0.5 * (1 + torch.cos(math.pi * m / (reach + 1)))]
    else:
        tail = [hann[synthesis // 2 :].sqrt()]
    analysis = torch.cat([rising, *tail])
    synth = torch.zeros(window, dtype=torch.float64)
    end = window - reach
    part = analysis[end - synthesis : end]
    synth[end - synthesis : end] = torch.where(part > 0, hann / part.clamp(min=1e-12), 0.0)
    return analysis, synth


def power_spectrum(spectra: Tensor) -> Tensor:
    """Power ``|X|^2`` of complex ``spectra (...)``, real ``(...)``: one fused pass over the
    real and imaginary parts (several times faster on a CPU than ``abs().square()`` or a sum
    over :func:`torch.view_as_real`)."""
    parts = torch.view_as_real(spectra)
    re, im = parts[..., 0], parts[..., 1]
    return torch.addcmul(re * re, im, im)


def apply_gain(spectra: Tensor, gain: Tensor) -> Tensor:
    """Complex ``spectra (...)`` times a real ``gain`` of the same shape, without promoting the
    gain to complex (a copy and a complex product: about 8x slower on a CPU)."""
    return torch.view_as_complex(torch.view_as_real(spectra) * gain.unsqueeze(-1))


_PHASE_BASES: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def minimum_phase_basis(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(bins, bins)``: the minimum phase of a log-magnitude ``L`` over the ``bins = n / 2 + 1``
    bins of an ``n``-point FFT is ``L @ basis`` (fold the real cepstrum ``irfft(L)``: positive
    quefrencies doubled, negative ones dropped; the phase is the imaginary part of its FFT),
    built from cosines and sines alone, so a compiled step needs no FFT. Kept per size, dtype
    and device, except one made while tracing (as :meth:`LowDelaySTFT.synthesis_basis`)."""
    key = (n, dtype, device)
    if key in _PHASE_BASES:
        return _PHASE_BASES[key]
    bins, half = n // 2 + 1, n // 2
    j = torch.arange(bins, dtype=torch.float64)[:, None]
    m = torch.arange(1, half, dtype=torch.float64)[None, :]  # the doubled quefrencies
    cepstrum = 2 * torch.cos(2 * math.pi * j * m / n) / n  # (bins, half - 1): irfft's weights
    cepstrum[0] /= 2
    cepstrum[-1] /= 2
    sine = torch.sin(2 * math.pi * m.T * j.T / n)  # (half - 1, bins)
    basis = (-2 * cepstrum @ sine).to(dtype=dtype, device=device)
    if not torch.compiler.is_compiling():
        _PHASE_BASES[key] = basis
    return basis


def minimum_phase(log_magnitude: Tensor, n: int) -> Tensor:
    """Minimum-phase gain with magnitude ``exp(log_magnitude)``: ``(..., frames, bins, 2)``
    real and imaginary parts from a natural-log magnitude ``(..., frames, bins)`` over the
    ``bins = n / 2 + 1`` bins of an ``n``-point FFT.

    A real (zero-phase) gain's impulse response is symmetric about 0; in the low-delay
    filterbank its anti-causal half lands on the tapered start of the analysis window and is
    lost, which smears the gain over frequency. The minimum-phase response is causal and
    front-loaded, so the frame applies nearly the requested magnitude; look-ahead is unchanged.
    A few frames (a streamed block) take the phase from :func:`minimum_phase_basis`, more
    frames from FFTs of the folded cepstrum: the same linear map.
    """
    if log_magnitude.shape[-2] <= FEW_FRAMES:
        phase = log_magnitude @ minimum_phase_basis(n, log_magnitude.dtype, log_magnitude.device)
    else:
        cepstrum = torch.fft.irfft(log_magnitude, n=n)[..., : n // 2 + 1]
        fold = torch.full((n // 2 + 1,), 2.0, dtype=cepstrum.dtype, device=cepstrum.device)
        fold[0] = fold[-1] = 1.0
        phase = torch.fft.rfft(cepstrum * fold, n=n).imag
    magnitude = torch.exp(log_magnitude)
    return torch.stack([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=-1)


def apply_complex_gain(spectra: Tensor, gain: Tensor) -> Tensor:
    """Complex ``spectra (...)`` times a complex ``gain`` given as real and imaginary parts
    ``(..., 2)``, in real arithmetic (a compiled step has no complex kernels)."""
    s = torch.view_as_real(spectra)
    re = s[..., 0] * gain[..., 0] - s[..., 1] * gain[..., 1]
    im = s[..., 0] * gain[..., 1] + s[..., 1] * gain[..., 0]
    return torch.view_as_complex(torch.stack([re, im], dim=-1))


def streamed_stft(x: Tensor, window: Tensor, hop: int, state: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Spectra ``(B, C, T / hop, n / 2 + 1)`` of ``x (B, C, T)`` through ``window (n,)``, frame
    ``j`` ending at sample ``hop * (j + 1) - 1``; ``state``: the ``n - hop`` input samples
    before ``x`` (None: zeros), returned for the next call."""
    if x.shape[-1] % hop:
        raise ValueError(f"length {x.shape[-1]} is not a multiple of the hop {hop}")
    past = window.shape[0] - hop
    if state is None:
        state = x.new_zeros(*x.shape[:-1], past)
    x = torch.cat([state, x], dim=-1)
    lead = x.shape[:-1]
    spectra = torch.stft(x.reshape(-1, x.shape[-1]), window.shape[0], hop, window=window,
                         center=False, return_complex=True)  # (N, bins, frames)
    spectra = spectra.reshape(*lead, *spectra.shape[-2:]).transpose(-1, -2)
    return spectra, x[..., x.shape[-1] - past :]


class LowDelaySTFT(nn.Module):
    """Analysis ``(B, C, T) -> (B, C, T / hop, window / 2 + 1)`` complex and gain-synthesis.

    Both carry state for streaming: the analysis keeps the last ``window - hop`` input samples,
    the synthesis the overlapping half of the last frame's output.

    ``reach`` > 0 ends each frame's synthesis span that many samples before the frame's end, so
    a gain's anti-causal taps reach at least ``reach`` samples ahead of every output sample
    (a zero-phase gain is applied with finer frequency detail); the delay grows by ``reach``:
    :attr:`delay` ``= synthesis / 2 + reach``, look-ahead ``synthesis + reach - 1`` samples.
    """

    def __init__(self, window: int = 1024, synthesis: int = 128, reach: int = 0) -> None:
        super().__init__()
        self.window, self.synthesis, self.hop = window, synthesis, synthesis // 2
        self.reach = reach
        analysis, synth = low_delay_windows(window, synthesis, reach)
        self.register_buffer("analysis_window", analysis.float())
        # Persistent: transformers' loader leaves non-persistent buffers uninitialised.
        self.register_buffer("synthesis_window", synth[self._span].float())
        self._basis: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    @property
    def bins(self) -> int:
        return self.window // 2 + 1

    @property
    def delay(self) -> int:
        """Samples by which :meth:`synthesise`'s output lags the analysed input."""
        return self.synthesis - self.hop + self.reach

    @property
    def _span(self) -> slice:
        """The samples of a frame that its synthesis keeps."""
        end = self.window - self.reach
        return slice(end - self.synthesis, end)

    def synthesis_basis(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``(2 * bins, synthesis)``: the ``synthesis`` samples of the inverse real FFT of a
        frame that its synthesis keeps, times the synthesis window, as a matrix acting on the
        frame's interleaved real and imaginary parts (what :func:`torch.fft.irfft` does to
        them, imaginary parts of the DC and Nyquist bins ignored). Kept per dtype and device;
        tracing a compiled step (torch.export) reads it (a constant of the graph) but never
        keeps one it made (a traced placeholder)."""
        key = (dtype, device)
        tracing = torch.compiler.is_compiling()
        if key not in self._basis:
            n = torch.arange(self._span.start, self._span.stop, dtype=torch.float64)
            k = torch.arange(self.bins, dtype=torch.float64)
            weight = torch.full((self.bins, 1), 2.0, dtype=torch.float64)
            weight[0] = weight[-1] = 1.0
            phase = 2 * math.pi * k[:, None] * n[None] / self.window
            scale = weight * self.synthesis_window.double().cpu() / self.window
            basis = torch.stack([torch.cos(phase) * scale, -torch.sin(phase) * scale], dim=1)
            basis = basis.flatten(0, 1).to(dtype=dtype, device=device)
            if tracing:
                return basis
            self._basis[key] = basis
        return self._basis[key]

    def analyse(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Spectra ``(B, C, T / hop, bins)`` of ``x (B, C, T)``; state: past input samples."""
        return streamed_stft(x, self.analysis_window.to(x.dtype), self.hop, state)

    def synthesise(self, spectra: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Signal ``(B, C, frames * hop)`` delayed by :attr:`delay`, from spectra
        ``(B, C, frames, bins)``; state: the last frame's overlapping half ``(B, C, hop)``.

        A few frames of a short synthesis window (a streamed block) are one product with
        :meth:`synthesis_basis`; longer runs are an inverse FFT of the whole window."""
        h = self.hop
        if spectra.shape[-2] <= FEW_FRAMES and self.synthesis * 4 <= self.window:
            basis = self.synthesis_basis(spectra.real.dtype, spectra.device)
            frames = torch.view_as_real(spectra).flatten(-2) @ basis
        else:
            frames = torch.fft.irfft(spectra, n=self.window)[..., self._span]
            frames = frames * self.synthesis_window.to(frames.dtype)
        first, second = frames[..., :h], frames[..., h:]
        if state is None:
            state = first.new_zeros(*first.shape[:-2], h)
        previous = torch.cat([state[..., None, :], second[..., :-1, :]], dim=-2)
        y = (first + previous).flatten(-2)
        return y, second[..., -1, :]


class LogFrequencySpectrum(nn.Module):
    """Causal long-window power spectrum on a log-frequency grid, at the filterbank's hop:
    ``(B, C, T) -> (B, C, T / hop, pitches)``, streamable (the state keeps the last
    ``window - hop`` input samples).

    Frame ``j`` ends, as the filterbank's, at input sample ``hop * (j + 1) - 1`` (no sample
    later), and reads the ``window`` samples up to there through a Hann window scaled to the
    sum of the analysis window of the filterbank ``(window, synthesis, reach)``. Its FFT bins
    (``sample_rate / window`` Hz apart: 10.8 Hz at 4096 samples) are pooled by triangles in
    log frequency onto ``per_semitone`` points per semitone from MIDI note ``lowest`` to
    ``highest`` (55 Hz to 3.5 kHz by default): fine enough to tell two voices a few semitones
    apart by their harmonics.
    """

    def __init__(self, window: int, hop: int, sample_rate: int, gain: float,
                 filterbank: tuple[int, int, int], lowest: int = 33, highest: int = 105,
                 per_semitone: int = 2) -> None:
        super().__init__()
        if window % hop or window <= hop:
            raise ValueError(f"the log-frequency window must be a multiple of the hop {hop} "
                             f"above it, got {window}")
        self.window, self.hop, self.sample_rate, self.gain = window, hop, sample_rate, gain
        self.filterbank = filterbank
        midi = np.arange(lowest * per_semitone, highest * per_semitone + 1) / per_semitone
        self.centres = 440.0 * 2 ** ((midi - 69) / 12)  # Hz
        self._constants: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    @property
    def pitches(self) -> int:
        return len(self.centres)

    def _pooling(self) -> np.ndarray:
        """``(bins, pitches)``: each point's weights over the FFT bins up to its upper
        neighbour, a triangle in log frequency (at least linear interpolation where the points
        are closer than the bins), summing to one."""
        df = self.sample_rate / self.window
        log_c = np.log(self.centres)
        step = log_c[1] - log_c[0]
        bins = int(np.ceil(self.centres[-1] * np.exp(step) / df)) + 2
        freqs = np.arange(bins) * df
        log_f = np.log(np.maximum(freqs, 1e-3))
        tri = np.clip(1 - np.abs(log_f[:, None] - log_c[None]) / step, 0, None)
        exact = self.centres / df  # linear interpolation at each centre
        below = np.floor(exact).astype(int)
        interp = np.zeros_like(tri)
        interp[below, np.arange(len(exact))] = 1 - (exact - below)
        interp[below + 1, np.arange(len(exact))] += exact - below
        pool = np.maximum(tri / np.maximum(tri.sum(0, keepdims=True), 1e-12), interp)
        return pool / pool.sum(0, keepdims=True)

    def constants(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """The analysis window ``(window,)`` and pooling ``(bins, pitches)``; kept per dtype and
        device, except while tracing (as :meth:`LowDelaySTFT.synthesis_basis`)."""
        key = (dtype, device)
        if key in self._constants:
            return self._constants[key]
        hann = torch.hann_window(self.window, periodic=True, dtype=torch.float64)
        reference = low_delay_windows(*self.filterbank)[0].sum()
        out = ((hann * reference / hann.sum()).to(dtype=dtype, device=device),
               torch.from_numpy(self._pooling()).to(dtype=dtype, device=device))
        if not torch.compiler.is_compiling():
            self._constants[key] = out
        return out

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``log1p(gain**2 * power) / 5`` ``(B, C, T / hop, pitches)`` of ``x (B, C, T)`` (the
        filterbank's log-power scale); state: past input samples."""
        window, pool = self.constants(x.dtype, x.device)
        spectra, state = streamed_stft(x, window, self.hop, state)
        power = power_spectrum(spectra[..., : pool.shape[0]]) @ pool
        return torch.log1p(power * self.gain**2) / 5.0, state
