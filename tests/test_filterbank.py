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
