"""Low-delay STFT helpers: the fast power and gain forms equal the plain complex maths."""

from __future__ import annotations

import torch

from model.filterbank import LowDelaySTFT, apply_gain, power_spectrum


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


def test_few_frame_synthesis_equals_the_inverse_fft() -> None:
    """A streamed block's synthesis (a product with a basis) equals the inverse-FFT path, the
    imaginary parts of the DC and Nyquist bins ignored as ``irfft`` ignores them."""
    fb = LowDelaySTFT(1024, 128)
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
