"""Training losses: what each term rewards and punishes."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import (
    RemixLoss,
    band_level_error,
    compressed_spectrum_loss,
    envelope_cepstrum_loss,
    erb_band_matrix,
    long_term_band_db,
    long_term_spectrum_loss,
    si_sdr,
    slot_gain_loss,
    slot_weight_loss,
)

SR = 44100


def _tone(freq: float, amp: float, seconds: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    x = amp * torch.sin(2 * math.pi * freq * t)
    return torch.stack([x, x])[None]  # (1, 2, T)


def test_compressed_loss_weights_loud_bins() -> None:
    loud, quiet = _tone(440, 0.1), _tone(3000, 0.001)
    target = loud + quiet
    assert compressed_spectrum_loss(target, target).item() < 1e-6
    # The same relative error (-6 dB) on the loud tone costs more than on the quiet one ...
    on_loud = compressed_spectrum_loss(0.5 * loud + quiet, target).item()
    on_quiet = compressed_spectrum_loss(loud + 0.5 * quiet, target).item()
    assert on_loud > 2 * on_quiet > 0
    # ... and it is relative: scaling both signals leaves it unchanged.
    assert math.isclose(compressed_spectrum_loss(0.5 * loud + quiet, target).item(),
                        compressed_spectrum_loss(5 * loud + 10 * quiet, 10 * target).item(),
                        rel_tol=1e-3)


def test_long_term_spectrum_loss_is_band_level_error_in_db() -> None:
    bands = erb_band_matrix(4096, SR)
    assert bands.shape == (2049, 32) and bands.sum(1).max() == 1  # each bin in one band at most
    assert bands.sum(0).min() >= 1  # no empty band at 80 Hz
    low, high = _tone(300, 0.05, 1.0), _tone(2000, 0.05, 1.0)
    target = low + high
    assert long_term_spectrum_loss(target, target, bands).item() < 1e-6
    # A 6.02 dB level error in every band of a broadband signal costs 0.602 (dB / 10) ...
    noise = 0.01 * torch.randn(1, 2, SR, generator=torch.Generator().manual_seed(0))
    assert math.isclose(long_term_spectrum_loss(2 * noise, noise, bands).item(), 0.602,
                        abs_tol=2e-3)
    # ... a 6 dB error on one tone costs less (its bands only; leakage spreads a little) ...
    one = long_term_spectrum_loss(2 * low + high, target, bands).item()
    assert 0.05 < one < 0.4
    # ... and a tone far below the loudest band (> 50 dB) does not count.
    faint = _tone(5000, 0.05 * 10 ** (-70 / 20), 1.0)
    assert long_term_spectrum_loss(target + faint, target, bands).item() < 1e-3
    # It has gradients that point towards the target level.
    est = (0.5 * target).requires_grad_()
    long_term_spectrum_loss(est, target, bands).backward()
    assert (est.grad * target).sum() < 0


def test_band_levels_keep_batch_and_channels() -> None:
    """The band levels the long-term loss and ``benchmarks/balance_error.py`` compare: one row
    per example and channel; bands far below the target's loudest count as the floor."""
    bands = erb_band_matrix(4096, SR)
    left = 0.01 * torch.randn(2, SR, generator=torch.Generator().manual_seed(1))
    x = torch.stack([torch.stack([left[0], 0.1 * left[1]]), torch.stack([left[1], left[0]])])
    db = long_term_band_db(x, bands)
    assert db.shape == (2, 2, 32)
    # The quieter channel is 20 dB down in every band; the other example is unchanged.
    assert torch.allclose(db[0, 1] - db[1, 0], torch.full((32,), -20.0), atol=1e-3)
    assert torch.allclose(db[0, 0], db[1, 1])
    ref = torch.tensor([[0.0, -10.0, -60.0, -80.0]])
    assert math.isclose(band_level_error(ref + 3.0, ref).item(), 1.5)  # two bands under -50 dB
    assert math.isclose(band_level_error(ref + 3.0, ref, range_db=100.0).item(), 3.0)


def test_remix_loss_terms() -> None:
    loss = RemixLoss([1024, 256], [256, 64], [1024, 256], w_compressed=5.0, w_sisdr=1.0,
                     w_long_term=1.0, w_envelope=1.0)
    target = _tone(440, 0.1) + _tone(1500, 0.02)
    same = loss(target, target)
    assert set(same) == {"mrstft", "sum_diff", "l1", "neg_sisdr", "compressed", "long_term",
                         "envelope", "total"}
    assert same["total"].item() < -5  # the SI-SDR term rewards a perfect estimate
    worse = loss(_tone(440, 0.1), target)  # one instrument missing
    assert worse["total"].item() > 0.1 and worse["compressed"].item() > 0.05


def test_slot_weights_alone() -> None:
    """With the base weights at 0 the loss is the slot KL alone: no STFT term is computed, and
    its gradient reaches the weights but not the estimate."""
    loss = RemixLoss([1024, 256], [256, 64], [1024, 256], w_mrstft=0.0, w_sum_diff=0.0,
                     w_l1=0.0, w_sisdr=0.0, w_slot_weights=1.0)
    estimate = _tone(440, 0.1).requires_grad_()
    power = torch.rand(1, 2, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    logits = torch.zeros(1, 2, 2, 5, 7, requires_grad=True)
    terms = loss(estimate, _tone(440, 0.2), None, (torch.log_softmax(logits, 1), power))
    assert set(terms) == {"slot_weights", "total"}
    assert terms["total"] == terms["slot_weights"] > 0
    terms["total"].backward()
    assert estimate.grad is None and logits.grad.abs().sum() > 0


def test_slot_weight_loss_is_zero_at_the_true_shares() -> None:
    """KL from the stems' power shares: zero at them, positive elsewhere, loud bins weigh more,
    and padded (absent, -inf) slots give finite values and gradients."""
    g = torch.Generator().manual_seed(0)
    power = torch.rand(2, 3, 2, 5, 7, generator=g)
    power[1, 2] = 0.0  # example 1 has two slots, the third is padding
    shares = power / power.sum(1, keepdim=True)
    exact = shares.log()
    assert slot_weight_loss(exact, power).abs() < 1e-6
    logits = torch.zeros(2, 3, 2, 5, 7, requires_grad=True)
    uniform = torch.log_softmax(logits.masked_fill(power == 0, float("-inf")), dim=1)
    loss = slot_weight_loss(uniform, power)
    loss.backward()
    assert loss > 0.01 and torch.isfinite(logits.grad).all()
    # Wrong in a loud bin costs more than wrong in a quiet one.
    one = torch.zeros(1, 2, 1, 2, 1)
    one[0, 0, 0, 0] = 1.0   # loud bin: slot 0 alone
    one[0, 1, 0, 1] = 1e-4  # quiet bin: slot 1 alone
    wrong_loud = torch.log(torch.tensor([0.5, 0.5, 0.0, 1.0]).view(2, 1, 2, 1))[None]
    wrong_quiet = torch.log(torch.tensor([1.0, 0.5, 0.0, 0.5]).view(2, 1, 2, 1))[None]
    assert slot_weight_loss(wrong_loud, one) > 10 * slot_weight_loss(wrong_quiet, one)


def test_slot_gain_loss_counts_what_the_request_makes_audible() -> None:
    """Log-gain error of the weights for the request: zero at the true shares, free for slots
    asked for the same gain, dearer the further apart the confused slots' gains are; padded
    slots give finite values and gradients; the loss config and the training targets use it."""
    g = torch.Generator().manual_seed(0)
    power = torch.rand(2, 3, 2, 5, 7, generator=g)
    power[1, 2] = 0.0  # example 1 has two slots, the third is padding
    log_amp = torch.tensor([[0.0, 0.5, -0.5], [0.3, 0.0, 0.0]])
    exact = (power / power.sum(1, keepdim=True)).log()
    for order in (1.0, 2.0):
        assert slot_gain_loss(exact, power, log_amp, order).abs() < 1e-10
    logits = torch.zeros(2, 3, 2, 5, 7, requires_grad=True)
    uniform = torch.log_softmax(logits.masked_fill(power == 0, float("-inf")), dim=1)
    loss = slot_gain_loss(uniform, power, log_amp, 1.0)
    loss.backward()
    assert loss > 1e-3 and torch.isfinite(logits.grad).all()
    # Slot 0 alone sounds; the weights give half of it to slot 1.
    alone = torch.zeros(1, 2, 1, 1, 1)
    alone[0, 0] = 1.0
    half = torch.full((1, 2, 1, 1, 1), 0.5).log()
    same, near, far = (torch.tensor([[0.0, d]]) for d in (0.0, 0.2, 1.0))
    assert slot_gain_loss(half, alone, same, 1.0) < 1e-12  # same gain: no audible error
    assert slot_gain_loss(half, alone, far, 1.0) > 10 * slot_gain_loss(half, alone, near, 1.0)
    # The KL sees the same confusion whatever the request.
    assert slot_weight_loss(half, alone) > 0.5
    terms = RemixLoss([1024, 256], [256, 64], [1024, 256], w_mrstft=0.0, w_sum_diff=0.0,
                      w_l1=0.0, w_sisdr=0.0, w_slot_gain=1.0)(
        _tone(440, 0.1), _tone(440, 0.2), None, (half, alone, far, 1.0))
    assert set(terms) == {"slot_gain", "total"} and terms["total"] > 0


def test_si_sdr_is_scale_invariant() -> None:
    target = _tone(440, 0.1)
    noisy = target + 0.01 * torch.randn_like(target)
    assert torch.allclose(si_sdr(noisy, target), si_sdr(3 * noisy, target), atol=1e-4)
    assert si_sdr(noisy, target).item() > si_sdr(target + 0.05 * torch.randn_like(target),
                                                 target).item()


@pytest.mark.parametrize("win_lengths", [[1024, 256], [512, 200]])
def test_stft_terms_equal_auraloss(win_lengths: list[int]) -> None:
    """The faster magnitude STFT (no phase spectrum, unfold frames, half-size FFT backward)
    changes no number: the MR-STFT and sum/difference terms and their gradients equal
    auraloss's own classes, windows shorter than the FFT included."""
    import auraloss

    sizes = ([1024, 256], [256, 64], win_lengths)
    ours = RemixLoss(*sizes, w_log_mag=0.1, eps=1e-5)
    ref_mr = auraloss.freq.MultiResolutionSTFTLoss(*sizes, w_log_mag=0.1, eps=1e-5)
    ref_sd = auraloss.freq.SumAndDifferenceSTFTLoss(*sizes, w_log_mag=0.1, eps=1e-5)
    g = torch.Generator().manual_seed(0)
    target = 0.01 * torch.randn(2, 2, 8192, generator=g)
    estimate = (target + 0.005 * torch.randn(2, 2, 8192, generator=g)).requires_grad_()
    terms = ours(estimate, target)
    (grad,) = torch.autograd.grad(terms["mrstft"] + terms["sum_diff"], estimate)
    ref = ref_mr(estimate, target), ref_sd(estimate, target)
    (ref_grad,) = torch.autograd.grad(ref[0] + ref[1], estimate)
    assert torch.allclose(terms["mrstft"], ref[0]) and torch.allclose(terms["sum_diff"], ref[1])
    assert (grad - ref_grad).abs().max() < 1e-5 * ref_grad.abs().max()  # float32 rounding


@pytest.mark.parametrize("n", [16, 15])
def test_rfft_backward_matches_autograd(n: int) -> None:
    """The half-size rfft backward is the true gradient (even and odd lengths)."""
    from training.losses import _RFFT

    x = torch.randn(3, n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_RFFT.apply, (x,))


def test_capped_si_sdr_keeps_near_exact_estimates_from_swamping_the_gradient() -> None:
    """Uncapped, an estimate 80 dB from its target pulls ~100x harder than one at 15 dB; with
    ``max_db`` it pulls less than the 15 dB one, and the values below the cap barely move."""
    g = torch.Generator().manual_seed(0)
    target = _tone(440, 0.01) + 0.003 * torch.randn(1, 2, int(0.5 * SR), generator=g)
    noise = torch.randn(target.shape, generator=g)
    noise = noise / noise.norm() * target.norm()

    def pull(snr_db: float, max_db: float | None) -> tuple[float, float]:
        est = (target + 10 ** (-snr_db / 20) * noise).requires_grad_()
        value = si_sdr(est, target, max_db=max_db)
        value.sum().backward()
        return value.item(), est.grad.norm().item()

    (near, near_pull), (typical, typical_pull) = pull(80, None), pull(15, None)
    assert near > 75 and typical == pytest.approx(15, abs=0.5)
    assert near_pull > 100 * typical_pull
    (near_c, near_pull_c), (typical_c, typical_pull_c) = pull(80, 30.0), pull(15, 30.0)
    assert near_c <= 30.0 and typical_c == pytest.approx(typical, abs=0.2)
    assert near_pull_c < typical_pull_c


def _alternating(level_low: torch.Tensor, level_high: torch.Tensor) -> torch.Tensor:
    """Two notes (300 Hz and 2.5 kHz partials) whose amplitudes follow the given envelopes
    ``(T,)``: the balance between the low and the high band moves over time."""
    t = torch.arange(level_low.shape[-1]) / SR
    x = (level_low * torch.sin(2 * math.pi * 300 * t)
         + level_high * torch.sin(2 * math.pi * 2500 * t))
    return torch.stack([x, 0.9 * x])[None]


def test_envelope_cepstrum_loss_follows_the_moving_balance() -> None:
    """Zero for the target itself; small for a fixed gain or EQ of it (correlations ignore
    the mean; only what sinks under the target's floor changes); large when the balance moves
    against the target's; gradients are finite."""
    bands = erb_band_matrix(1024, SR)
    t = torch.arange(SR) / SR
    slow = 0.5 + 0.45 * torch.sin(2 * math.pi * 3 * t)
    target = _alternating(0.05 * slow, 0.02 * (1.0 - slow))
    assert envelope_cepstrum_loss(target, target, bands).item() < 1e-4
    assert envelope_cepstrum_loss(3 * target, target, bands).item() < 0.05
    eq = _alternating(0.1 * slow, 0.01 * (1.0 - slow))  # louder lows, softer highs, all along
    steady = _alternating(0.05 * torch.full_like(t, 0.5), 0.02 * torch.full_like(t, 0.5))
    reversed_ = _alternating(0.05 * (1.0 - slow), 0.02 * slow)
    fixed_eq, flat, wrong = (envelope_cepstrum_loss(x, target, bands).item()
                             for x in (eq, steady, reversed_))
    assert fixed_eq < flat / 3 and flat > 0.3 and wrong > 1.0 > flat
    estimate = steady.clone().requires_grad_(True)
    envelope_cepstrum_loss(estimate, target, bands).backward()
    assert estimate.grad is not None and torch.isfinite(estimate.grad).all()
    assert estimate.grad.abs().max() > 0
