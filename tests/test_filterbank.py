"""Low-delay STFT helpers: the fast power and gain forms equal the plain complex maths; the
minimum-phase gain keeps its magnitude and is applied more faithfully than a real gain; the
log-frequency spectrum finds a tone's pitch, streams exactly and reads no later sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.filterbank import (
    LogFrequencySpectrum,
    LowDelaySTFT,
    apply_complex_gain,
    apply_gain,
    minimum_phase,
    power_spectrum,
)


def _spectra() -> torch.Tensor:
    torch.manual_seed(0)
    spectra, _ = LowDelaySTFT(256, 64).analyse(torch.randn(2, 2, 64 * 40))
    return spectra  # (2, 2, 40, 129) complex64


def test_power_spectrum_is_the_squared_magnitude() -> None:
    spectra = _spectra()
    assert torch.allclose(power_spectrum(spectra), spectra.abs().square(), rtol=1e-5, atol=1e-7)


def test_apply_gain_equals_the_complex_product_with_its_gradients() -> None:
    spectra = _spectra().requires_grad_(True)
    gain = torch.rand(spectra.shape, requires_grad=True)
    fast = apply_gain(spectra, gain)
    plain = spectra * gain
    assert fast.dtype == spectra.dtype and torch.allclose(fast, plain)
    weight = torch.randn(spectra.shape, dtype=spectra.dtype)
    grads = [torch.autograd.grad((y * weight).real.sum(), (spectra, gain)) for y in (fast, plain)]
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reach", [0, 92])
def test_filterbank_reconstructs_with_its_delay_and_look_ahead(reach: int) -> None:
    """An all-ones gain returns the input :attr:`delay` samples late, and with any gain an
    output sample depends on input at most ``synthesis + reach - 1`` samples ahead of it, and
    some sample of each hop on input two samples short of that (the periodic Hann's first
    sample and the falling tail's last are zero or nearly)."""
    fb = LowDelaySTFT(1024, 128, reach)
    assert fb.delay == 64 + reach
    torch.manual_seed(5)
    x = torch.randn(1, 2, 64 * 60)
    spectra, _ = fb.analyse(x)
    y, _ = fb.synthesise(spectra)
    assert torch.allclose(y[..., fb.delay :], x[..., : x.shape[-1] - fb.delay], atol=1e-5)
    gain = 2 * torch.rand(spectra.shape)
    out, _ = fb.synthesise(apply_gain(spectra, gain))
    ahead = 128 + reach - 1
    reached = []
    for t in range(2000, 2064):  # one hop of output samples (input time t)
        later = x.clone()
        later[..., t + ahead + 1 :] += 1.0
        changed, _ = fb.synthesise(apply_gain(fb.analyse(later)[0], gain))
        assert torch.equal(changed[..., : t + fb.delay + 1], out[..., : t + fb.delay + 1])
        nearer = x.clone()
        nearer[..., t + ahead - 2 :] += 1.0
        changed, _ = fb.synthesise(apply_gain(fb.analyse(nearer)[0], gain))
        reached.append(not torch.equal(changed[..., : t + fb.delay + 1],
                                       out[..., : t + fb.delay + 1]))
    assert any(reached)


@pytest.mark.parametrize("reach", [0, 92])
def test_few_frame_synthesis_equals_the_inverse_fft(reach: int) -> None:
    """A streamed block's synthesis (a product with a basis) equals the inverse-FFT path, the
    imaginary parts of the DC and Nyquist bins ignored as ``irfft`` ignores them."""
    fb = LowDelaySTFT(1024, 128, reach)
    torch.manual_seed(1)
    spectra, _ = fb.analyse(torch.randn(1, 2, 64 * 20))
    spectra = apply_gain(spectra, 2 * torch.rand(spectra.shape))
    spectra[..., 0] += 1j
    spectra[..., -1] += 3j
    whole, _ = fb.synthesise(spectra)  # 20 frames: the inverse FFT
    state, parts = None, []
    for start in range(0, 20, 4):  # 4 frames per call: the basis
        part, state = fb.synthesise(spectra[..., start : start + 4, :], state)
        parts.append(part)
    assert torch.allclose(torch.cat(parts, -1), whole, rtol=0, atol=2e-6 * whole.abs().max())


def test_minimum_phase_keeps_the_magnitude_and_is_causal() -> None:
    n = 1024
    f = torch.arange(n // 2 + 1) / n
    torch.manual_seed(2)
    # A smooth log-magnitude (few quefrencies): its cepstrum does not alias.
    log_mag = sum(a * torch.cos(2 * math.pi * q * f) for a, q in zip(torch.randn(12) * 0.3,
                                                                       range(12), strict=True))
    gain = torch.view_as_complex(minimum_phase(log_mag.double().expand(9, -1), n))[0]
    assert torch.allclose(gain.abs().log(), log_mag.double(), atol=1e-12)
    response = torch.fft.irfft(gain, n=n)
    assert response[: n // 2].square().sum() >= 0.9999 * response.square().sum()
    unit = minimum_phase(torch.zeros(3, n // 2 + 1), n)
    assert torch.equal(unit, torch.stack([torch.ones(3, n // 2 + 1), torch.zeros(3, n // 2 + 1)],
                                         dim=-1))


def test_minimum_phase_of_a_few_frames_equals_the_fft_path() -> None:
    """A streamed block's phase (a product with a basis) equals the FFT path of longer runs."""
    torch.manual_seed(4)
    log_mag = torch.randn(2, 2, 9, 513, dtype=torch.float64)  # rough: aliased cepstra too
    long = minimum_phase(log_mag, 1024)
    short = torch.cat([minimum_phase(log_mag[..., :4, :], 1024),
                       minimum_phase(log_mag[..., 4:, :], 1024)], dim=-3)
    assert torch.allclose(short, long, rtol=1e-9, atol=1e-9)


def test_apply_complex_gain_is_the_complex_product() -> None:
    spectra = _spectra()
    gain = torch.randn(*spectra.shape, 2)
    assert torch.allclose(apply_complex_gain(spectra, gain),
                          spectra * torch.view_as_complex(gain), atol=1e-6)


def _applied_response_error(gain_db: torch.Tensor, complex_gain: torch.Tensor,
                            reach: int = 0) -> float:
    """Mean |measured - wanted| (dB, 50 Hz to 8 kHz) of a gain applied to white noise through
    the causal filterbank (1024 / 128, ``reach``), measured on 4096-point long-term spectra."""
    fb = LowDelaySTFT(1024, 128, reach)
    torch.manual_seed(3)
    x = torch.randn(1, 1, 64 * 3000)
    spectra, _ = fb.analyse(x)
    y, _ = fb.synthesise(spectra * complex_gain)
    window = torch.hann_window(4096)

    def power(s: torch.Tensor) -> torch.Tensor:
        spectrum = torch.stft(s[0], 4096, 1024, window=window, return_complex=True)
        return spectrum.abs().square().mean(-1)[0]

    d = fb.delay
    measured = 10 * torch.log10(power(y[..., d:]) / power(x[..., : y.shape[-1] - d]))
    f_fine = torch.arange(2049) * 44100 / 4096
    f = torch.arange(513) * 44100 / 1024
    wanted = torch.from_numpy(np.interp(f_fine, f, gain_db)).float()
    band = (f_fine > 50) & (f_fine < 8000)
    return float((measured - wanted)[band].abs().mean())


def test_minimum_phase_gain_is_applied_finer_than_a_real_gain() -> None:
    """Peaks every 300 Hz (±6 dB): the low-delay filterbank loses a real gain's anti-causal half
    (its short synthesis window keeps the frame's end), the minimum-phase gain keeps its shape."""
    f = torch.arange(513) * 44100 / 1024
    gain_db = 6 * torch.cos(2 * math.pi * f / 300)
    log_mag = gain_db * math.log(10) / 20
    real = _applied_response_error(gain_db, torch.exp(log_mag).to(torch.cfloat))
    minimum = _applied_response_error(
        gain_db, torch.view_as_complex(minimum_phase(log_mag[None].expand(9, -1), 1024))[0])
    assert minimum < 0.8 < 1.5 < real, (minimum, real)


def test_reach_applies_a_real_gain_finer() -> None:
    """Peaks every 600 Hz (±6 dB: taps 74 samples either side): with the synthesis span ending
    92 samples before the frame's end (the anti-causal taps reach that far) the real gain
    keeps its shape (measured here: 0.3 dB off against 1.6 dB)."""
    f = torch.arange(513) * 44100 / 1024
    gain_db = 6 * torch.cos(2 * math.pi * f / 600)
    gain = torch.exp(gain_db * math.log(10) / 20).to(torch.cfloat)
    near = _applied_response_error(gain_db, gain)
    reaching = _applied_response_error(gain_db, gain, reach=92)
    assert reaching < 0.5 < 1.0 < near, (reaching, near)


def _log_frequency() -> LogFrequencySpectrum:
    return LogFrequencySpectrum(4096, 64, 44100, gain=30.0, filterbank=(1024, 128, 0))


@pytest.mark.parametrize("midi", [45.0, 57.0, 62.5, 81.0])
def test_log_frequency_spectrum_peaks_at_a_tones_pitch(midi: float) -> None:
    """A steady tone's frames peak at its point of the half-semitone grid (MIDI 33 up), or
    (low notes, where the grid is finer than the 10.8 Hz bins) a neighbour; the pooling
    spreads each point over the FFT bins with weights that sum to one."""
    spectrum = _log_frequency()
    pool = spectrum._pooling()
    assert np.allclose(pool.sum(0), 1.0) and (pool >= 0).all()
    t = np.arange(64 * 200) / 44100
    tone = np.sin(2 * np.pi * 440 * 2 ** ((midi - 69) / 12) * t)
    out, _ = spectrum(torch.from_numpy(0.01 * tone[None, None]).float())
    assert out.shape == (1, 1, 200, spectrum.pitches)
    peaks = out[0, 0, 100:].argmax(-1)  # frames whose window lies wholly in the tone
    assert ((peaks - round(2 * (midi - 33))).abs() <= (1 if midi < 70 else 0)).all(), peaks


def test_log_frequency_spectrum_streams_and_reads_no_later_sample() -> None:
    """Any split of the input (multiples of the hop) gives the one-pass frames; frame ``j``
    does not change when samples from ``64 * (j + 1)`` on do."""
    spectrum = _log_frequency()
    torch.manual_seed(0)
    x = torch.randn(2, 2, 64 * 90)
    whole, _ = spectrum(x)
    parts, state = [], None
    for start, stop in [(0, 64), (64, 64 * 31), (64 * 31, 64 * 33), (64 * 33, 64 * 90)]:
        part, state = spectrum(x[..., start:stop], state)
        parts.append(part)
    assert torch.allclose(torch.cat(parts, dim=2), whole, atol=1e-6)
    changed = x.clone()
    changed[..., 64 * 50:] += torch.randn_like(changed[..., 64 * 50:])
    later, _ = spectrum(changed)
    assert torch.equal(later[:, :, :50], whole[:, :, :50])
    assert not torch.allclose(later[:, :, 50], whole[:, :, 50])
    with pytest.raises(ValueError, match="not a multiple of the hop 64"):
        spectrum(x[..., :100])
