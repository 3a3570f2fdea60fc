"""Training losses: auraloss multi-resolution STFT and sum/difference STFT, plus time-domain L1.

All take ``(B, 2, T)`` estimate and target (the remix before the hearing aid, about -40 LUFS).
"""

from __future__ import annotations

import math

import auraloss
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def compressed_spectrum_loss(estimate: Tensor, target: Tensor, n_fft: int = 1024, hop: int = 256,
                             power: float = 0.3) -> Tensor:
    """Relative L1 distance of power-law compressed complex spectra (magnitude ``** power``,
    phase kept), per channel: a scalar. Compression weights loud bins above near-silent ones
    (unlike a log), so errors where the instruments actually sound dominate."""
    window = torch.hann_window(n_fft, device=estimate.device, dtype=estimate.dtype)

    def spec(x: Tensor) -> Tensor:
        z = torch.stft(x.flatten(0, 1), n_fft, hop, window=window, return_complex=True)
        mag = z.abs().clamp(min=1e-8)
        return z / mag * mag.pow(power)

    est, ref = spec(estimate), spec(target)
    return (est - ref).abs().mean() / ref.abs().mean().clamp(min=1e-8)


def erb_band_matrix(n_fft: int, sample_rate: int, bands: int = 32, fmin: float = 80.0,
                    fmax: float = 8000.0) -> Tensor:
    """``(n_fft // 2 + 1, bands)`` 0/1 matrix summing STFT bins into ``bands`` bands equally
    spaced on the ERB-number scale from ``fmin`` to ``fmax`` Hz (HAAQI's ear model: 32 bands,
    80 Hz to 8 kHz)."""

    def erb_number(f: Tensor) -> Tensor:
        return 21.4 * torch.log10(1.0 + 0.00437 * f)

    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = erb_number(torch.tensor(fmin)), erb_number(torch.tensor(fmax))
    pos = (erb_number(freqs) - lo) / (hi - lo) * bands
    inside = (pos >= 0) & (pos < bands)
    out = torch.zeros(len(freqs), bands)
    out[inside.nonzero()[:, 0], pos[inside].long()] = 1.0
    return out


def band_power(x: Tensor, bands: Tensor) -> Tensor:
    """Power ``(B * C, bands, frames)`` of each STFT frame of ``x (B, C, T)`` summed in
    ``bands`` (:func:`erb_band_matrix`, whose rows set the Hann STFT's size; hop a quarter of
    it)."""
    n_fft = 2 * (bands.shape[0] - 1)
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    power = magnitude_stft(x.flatten(0, 1), n_fft, n_fft // 4, window, 1e-20).square()
    return bands.T @ power


def long_term_band_db(x: Tensor, bands: Tensor) -> Tensor:
    """Long-term average power ``(B, C, bands)`` in dB of ``x (B, C, T)``: the mean over frames
    of :func:`band_power`."""
    return 10 * torch.log10(band_power(x, bands).mean(-1) + 1e-20).unflatten(0, x.shape[:2])


def band_level_error(estimate_db: Tensor, target_db: Tensor, range_db: float = 50.0) -> Tensor:
    """Mean absolute difference (dB) of band levels ``(..., bands)``; bands more than
    ``range_db`` below the target's loudest band count as that floor."""
    floor = target_db.amax(-1, keepdim=True).detach() - range_db
    return (torch.maximum(estimate_db, floor) - torch.maximum(target_db, floor)).abs().mean()


def long_term_spectrum_loss(estimate: Tensor, target: Tensor, bands: Tensor,
                            range_db: float = 50.0) -> Tensor:
    """:func:`band_level_error` (dB / 10) between the :func:`long_term_band_db` of estimate and
    target ``(B, C, T)``, per channel. HAAQI's linear term compares these spectra: a fixed gain
    per band (32) that matches them lifts HAAQI by 0.06 over the unbalanced mix, by more with
    finer bands (README, headroom)."""
    return band_level_error(long_term_band_db(estimate, bands), long_term_band_db(target, bands),
                            range_db) / 10.0


def envelope_cepstrum_loss(estimate: Tensor, target: Tensor, bands: Tensor, orders: int = 5,
                           range_db: float = 60.0, active_db: float = 40.0) -> Tensor:
    """1 - the mean correlation over time of the band-envelope cepstra of estimate and target
    ``(B, C, T)``: a differentiable stand-in for HAAQI's ``cephigh``.

    Per channel, the :func:`band_power` of each frame in dB, floored ``range_db`` below
    the target's loudest band-frame; the cosine transform across bands, orders 1 to ``orders``
    (order 0, the overall level, left out, like HAAQI's high cepstral correlation); each order's
    correlation over the frames where the target is within ``active_db`` of its loudest frame.
    HAAQI's nonlinear term, three quarters of it this correlation cubed, holds most of the
    headroom left above the shipped non-causal model (README, session 19).
    """
    est, tgt = (10 * torch.log10(band_power(x, bands) + 1e-20) for x in (estimate, target))
    floor = tgt.detach().amax(dim=(1, 2), keepdim=True) - range_db
    est, tgt = torch.maximum(est, floor), torch.maximum(tgt, floor)
    k = bands.shape[1]
    j = torch.arange(1, orders + 1, device=est.device, dtype=est.dtype)[:, None]
    basis = torch.cos(math.pi * j * (torch.arange(k, device=est.device) + 0.5) / k)
    ce, ct = basis @ est, basis @ tgt  # (B * C, orders, frames)
    level = 10 * torch.log10((10 ** (tgt.detach() / 10)).sum(1))  # (B * C, frames)
    active = (level >= level.amax(-1, keepdim=True) - active_db).to(est.dtype)[:, None]
    count = active.sum(-1, keepdim=True).clamp(min=1.0)
    ce = (ce - (ce * active).sum(-1, keepdim=True) / count) * active
    ct = (ct - (ct * active).sum(-1, keepdim=True) / count) * active
    corr = (ce * ct).sum(-1) / torch.sqrt((ce**2).sum(-1) * (ct**2).sum(-1) + 1e-6)
    return 1.0 - corr.mean()


def slot_weight_loss(log_weights: Tensor, stem_power: Tensor) -> Tensor:
    """KL divergence from each slot's true share of a gain bin's power to the model's weights,
    averaged over bins weighted by their magnitude (silent bins count for nothing).

    ``log_weights (B, K, 2, frames, bins)``: the model's log-weights over its present slots
    (``-inf`` for padding); ``stem_power (B, K, 2, frames, bins)``: each slot's stem power on the
    same frames and bins (zero for padding). Scalar, in nats.
    """
    total = stem_power.sum(1, keepdim=True)
    share = stem_power / total.clamp(min=1e-20)
    kl = (share * (torch.log(share.clamp(min=1e-12)) - log_weights.clamp(min=-30.0))).sum(1)
    weight = total[:, 0].sqrt()
    per_example = (weight * kl).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1e-20)
    return per_example.mean()


def slot_log_gains(log_weights: Tensor, stem_power: Tensor, log_amp: Tensor, order: float
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The slot log-gain ``log(sum_k w_k a_k^p) / p`` (nepers) the weights give a request, the
    same with the stems' true shares as ``w_k``, and each bin's magnitude: three ``(B, 2,
    frames, bins)``. ``log_weights``, ``stem_power`` as :func:`slot_weight_loss`; ``log_amp
    (B, K)``: each present slot's requested amplitude gain ``log a_k`` (any value for padding);
    ``order``: the power mean's ``p`` (``slot_mean_order``, not 0)."""
    term = order * log_amp[:, :, None, None, None]
    total = stem_power.sum(1)
    log_share = (stem_power / total[:, None].clamp(min=1e-20)).clamp(min=1e-30).log()
    own = torch.logsumexp(log_weights.clamp(min=-1e4) + term, 1) / order
    true = torch.logsumexp(log_share + term, 1) / order
    return own, true, total.sqrt()


def slot_gain_loss(log_weights: Tensor, stem_power: Tensor, log_amp: Tensor,
                   order: float) -> Tensor:
    """Squared error (nepers^2) of the slot log-gain the weights give the request against the
    one the stems' true shares give (:func:`slot_log_gains`), averaged over bins weighted by
    their magnitude as :func:`slot_weight_loss`. Unlike the KL it counts only the confusions
    the request makes audible (slots asked for the same gain may be mixed up for free), and a
    weight wrongly given to a slot asked for much more or less costs more. Scalar."""
    own, true, weight = slot_log_gains(log_weights, stem_power, log_amp, order)
    per_example = ((weight * (own - true).square()).flatten(1).sum(1)
                   / weight.flatten(1).sum(1).clamp(min=1e-20))
    return per_example.mean()


class _RFFT(torch.autograd.Function):
    """``torch.fft.rfft`` along the last dim with a half-size backward: torch's own backward
    zero-pads the gradient to a full complex FFT; the same gradient is an ``irfft`` of it with the
    bins that stand for two conjugate frequencies halved (measured: 4x less backward FFT time)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.n = x.shape[-1]
        return torch.fft.rfft(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        n = ctx.n
        half = torch.ones(grad.shape[-1], dtype=grad.real.dtype, device=grad.device)
        half[1 : (n + 1) // 2] = 0.5
        return torch.fft.irfft(grad * half, n=n) * n


def magnitude_stft(x: Tensor, n_fft: int, hop: int, window: Tensor, eps: float) -> Tensor:
    """``|torch.stft(x, n_fft, hop, window=window)|`` floored at ``sqrt(eps)``, ``(B, n_fft//2+1,
    frames)`` from ``x (B, T)``, with a faster backward: frames by ``unfold`` (torch.stft's strided
    view has a slow backward) and :class:`_RFFT`. ``window`` may be shorter than ``n_fft``."""
    pad = (n_fft - window.shape[-1]) // 2
    window = F.pad(window, (pad, n_fft - window.shape[-1] - pad))
    x = F.pad(x[:, None], (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
    spec = _RFFT.apply(x.unfold(-1, n_fft, hop) * window).transpose(-1, -2)
    return torch.sqrt(torch.clamp(spec.real**2 + spec.imag**2, min=eps))


class _MagnitudeSTFTLoss(auraloss.freq.STFTLoss):
    """auraloss's ``STFTLoss`` without the phase spectrum that auraloss 0.4.0 computes even when
    its weight ``w_phs`` is 0 (``torch.angle`` took a third of the whole loss's time), on
    :func:`magnitude_stft`."""

    def stft(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.w_phs:
            return super().stft(x)
        return magnitude_stft(x, self.fft_size, self.hop_size, self.window, self.eps), None


def _magnitude_only(mrstft: auraloss.freq.MultiResolutionSTFTLoss) -> None:
    """Make every resolution of ``mrstft`` a :class:`_MagnitudeSTFTLoss` (same state)."""
    for loss in mrstft.stft_losses:
        loss.__class__ = _MagnitudeSTFTLoss


class RemixLoss(nn.Module):
    """Weighted sum of MR-STFT (per channel), sum/difference STFT and scaled L1 losses.

    ``eps`` floors the STFT magnitudes inside the log-magnitude terms: at -40 LUFS auraloss's
    default (1e-8) lets near-silent bins dominate, and a model started at the identity then does
    not learn at all (measured: loss flat over 150 steps on 4 examples; with 1e-5 it falls).
    ``w_hearing_aid`` adds an MR-STFT loss between the two signals after the listener's hearing
    aid (passed to :meth:`forward` as ``hearing_aid``), which weights errors as the listener
    hears them. ``w_compressed`` adds :func:`compressed_spectrum_loss`; ``w_sisdr`` adds the
    negative SI-SDR (dB / 10, soft-limited to ``sisdr_max_db``: :func:`si_sdr`);
    ``w_long_term`` adds :func:`long_term_spectrum_loss` (dB / 10) on
    ``long_term_bands`` ERB bands; ``w_envelope`` adds :func:`envelope_cepstrum_loss` (32 ERB
    bands); ``w_slot_weights`` adds :func:`slot_weight_loss` (the
    ``slot_gains`` head's weights against the stems' shares, passed to :meth:`forward`),
    ``w_slot_gain`` :func:`slot_gain_loss` (the log-gain those weights give the request).
    ``w_log_mag`` weights auraloss's log-magnitude term against
    its spectral convergence: measured, a model trained with full log-magnitude weight spends
    itself on matching near-silent bins (its loss falls 25 % below the unbalanced mix's while
    its SI-SDR improvement stays at 0 dB, on training and validation examples alike).
    """

    def __init__(self, fft_sizes: list[int], hop_sizes: list[int], win_lengths: list[int],
                 w_mrstft: float = 1.0, w_sum_diff: float = 0.5, w_l1: float = 10.0,
                 w_hearing_aid: float = 0.0, w_compressed: float = 0.0,
                 w_sisdr: float = 0.0, sisdr_max_db: float | None = None,
                 w_log_mag: float = 1.0, w_long_term: float = 0.0,
                 long_term_bands: int = 32, w_envelope: float = 0.0,
                 w_slot_weights: float = 0.0, w_slot_gain: float = 0.0,
                 sample_rate: int = 44100, eps: float = 1e-5) -> None:
        super().__init__()
        self.mrstft = auraloss.freq.MultiResolutionSTFTLoss(fft_sizes, hop_sizes, win_lengths,
                                                            w_log_mag=w_log_mag, eps=eps)
        self.sum_diff = auraloss.freq.SumAndDifferenceSTFTLoss(fft_sizes, hop_sizes, win_lengths,
                                                               w_log_mag=w_log_mag, eps=eps)
        _magnitude_only(self.mrstft)
        _magnitude_only(self.sum_diff.mrstft)
        self.w_mrstft, self.w_sum_diff = w_mrstft, w_sum_diff
        self.w_l1, self.w_hearing_aid = w_l1, w_hearing_aid
        self.w_compressed, self.w_sisdr = w_compressed, w_sisdr
        self.sisdr_max_db = sisdr_max_db
        self.w_long_term = w_long_term
        self.w_envelope = w_envelope
        self.w_slot_weights = w_slot_weights
        self.w_slot_gain = w_slot_gain
        self.register_buffer("bands", erb_band_matrix(4096, sample_rate, long_term_bands),
                             persistent=False)
        self.register_buffer("envelope_bands", erb_band_matrix(1024, sample_rate),
                             persistent=False)

    @property
    def wants_slots(self) -> bool:
        """Whether a slot term is on (:meth:`forward` then needs ``slot_weights``)."""
        return self.w_slot_weights > 0 or self.w_slot_gain > 0

    def forward(self, estimate: Tensor, target: Tensor, hearing_aid=None,
                slot_weights: tuple | None = None) -> dict[str, Tensor]:
        """Loss terms and their weighted ``total`` (scalars); ``slot_weights``: the
        arguments of :func:`slot_gain_loss` (log-weights, stem power, requested log-amplitudes,
        order; :func:`slot_weight_loss` takes the first two); the slot terms are skipped
        without them."""
        terms: dict[str, Tensor] = {}
        total = estimate.new_zeros(())
        # The three base terms are skipped at weight 0 (e.g. a slot branch trained on its KL
        # alone, whose backward then never reaches the STFTs).
        if self.w_mrstft > 0:
            terms["mrstft"] = self.mrstft(estimate, target)
            total = total + self.w_mrstft * terms["mrstft"]
        if self.w_sum_diff > 0:
            terms["sum_diff"] = self.sum_diff(estimate, target)
            total = total + self.w_sum_diff * terms["sum_diff"]
        if self.w_l1 > 0:
            terms["l1"] = torch.mean(torch.abs(estimate - target)) * 100.0
            total = total + self.w_l1 * terms["l1"]
        if self.w_sisdr > 0:
            terms["neg_sisdr"] = -si_sdr(estimate, target, max_db=self.sisdr_max_db).mean() / 10.0
            total = total + self.w_sisdr * terms["neg_sisdr"]
        if self.w_compressed > 0:
            terms["compressed"] = compressed_spectrum_loss(estimate, target)
            total = total + self.w_compressed * terms["compressed"]
        if self.w_long_term > 0:
            terms["long_term"] = long_term_spectrum_loss(estimate, target, self.bands)
            total = total + self.w_long_term * terms["long_term"]
        if self.w_envelope > 0:
            terms["envelope"] = envelope_cepstrum_loss(estimate, target, self.envelope_bands)
            total = total + self.w_envelope * terms["envelope"]
        if self.w_hearing_aid > 0 and hearing_aid is not None:
            terms["hearing_aid"] = self.mrstft(hearing_aid(estimate), hearing_aid(target))
            total = total + self.w_hearing_aid * terms["hearing_aid"]
        if self.w_slot_weights > 0 and slot_weights is not None:
            terms["slot_weights"] = slot_weight_loss(*slot_weights[:2])
            total = total + self.w_slot_weights * terms["slot_weights"]
        if self.w_slot_gain > 0 and slot_weights is not None:
            terms["slot_gain"] = slot_gain_loss(*slot_weights)
            total = total + self.w_slot_gain * terms["slot_gain"]
        terms["total"] = total
        return terms


def si_sdr(estimate: Tensor, target: Tensor, eps: float = 1e-8,
           max_db: float | None = None) -> Tensor:
    """Scale-invariant SDR (dB) per item of ``(B, C, T)`` signals (channels concatenated).

    ``max_db`` soft-limits it (noise floored at ``10^(-max_db/10)`` of the signal): as a loss,
    an uncapped SI-SDR's gradient grows without bound as an estimate nears its target, and one
    near-exact example (e.g. all gains 0 dB) then outweighs a whole batch (measured on the
    shipped non-causal model: ~1000× the gradient norm of a typical example at 85 dB).
    """
    est = estimate.flatten(1) - estimate.flatten(1).mean(-1, keepdim=True)
    ref = target.flatten(1) - target.flatten(1).mean(-1, keepdim=True)
    proj = (est * ref).sum(-1, keepdim=True) / ((ref * ref).sum(-1, keepdim=True) + eps) * ref
    signal, noise = proj.pow(2).sum(-1), (est - proj).pow(2).sum(-1)
    if max_db is not None:
        noise = noise + 10 ** (-max_db / 10) * signal
    return 10 * torch.log10((signal + eps) / (noise + eps))
