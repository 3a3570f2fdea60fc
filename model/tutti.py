"""The Tutti network: one conditional Wave-U-Net/transformer hybrid.

``(mixture (B, 2, T), gains (B, 12) dB, presence (B, 12), listener)`` -> the rebalanced signal
through the listener's hearing aid ``(B, 2, T)`` at 44.1 kHz. Inside: a multi-scale strided
convolutional encoder on the waveform (joined by the mixture's log spectrum at the filterbank's
frame rate), a local-attention transformer at the bottleneck and a transposed-conv decoder with
skips, all FiLM-conditioned on gains, presence and audiogram. The decoder ends in a time-frequency
gain (per ear, frame and bin of a low-delay STFT, :mod:`model.filterbank`) applied to
``level * mixture`` (``level`` is the recipe's ``adjust_level`` factor, so a unit gain is the
unbalanced mix); the CAD2 hearing aid (:class:`model.hearing_aid.HearingAid`) is the last, fixed
layer.

:meth:`TuttiModel.remix` works in blocks of ``prod(strides)`` samples and returns its output
``delay`` samples late (the filterbank's synthesis overlap); :meth:`TuttiModel.remix_offline`
aligns it. The causal variant sees at most ``lookahead`` samples ahead (191 = 4.3 ms with the
low-delay layout of ``conf/train_causal.yaml``); every layer streams with carried state. The
non-causal default (``conf/train_noncausal.yaml``) uses a 2048-sample STFT with hop 512.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from model.cad2 import SLOTS
from model.filterbank import (
    LogFrequencySpectrum,
    LowDelaySTFT,
    apply_complex_gain,
    apply_gain,
    minimum_phase,
    power_spectrum,
)
from model.hearing_aid import HearingAid, db_to_gain, level_adjustment_db
from model.layers import (
    DecoderLayer,
    EncoderLayer,
    FiLM,
    StreamConv1d,
    TransformerLayer,
    pointwise,
    sinusoid_features,
)


class TuttiConfig(PretrainedConfig):
    """Hyper-parameters of :class:`TuttiModel` (stored as ``config.json``)."""

    model_type = "tutti"

    def __init__(
        self,
        causal: bool = False,
        sample_rate: int = 44100,
        channels: tuple[int, ...] = (32, 64, 128),
        strides: tuple[int, ...] = (8, 8, 2),
        fb_window: int = 1024,
        fb_synthesis: int = 128,
        fb_reach: int = 0,
        gain_lag: int = 0,
        gain_bands: int = 0,
        static_eq: bool = False,
        context_eq: bool = False,
        spectral_hidden: int = 0,
        slot_gains: bool = False,
        slot_bands: int = 0,
        slot_gate: bool = False,
        slot_spectral: int = 0,
        slot_context: int = 1,
        slot_mean_order: float = 2.0,
        slot_long_ms: tuple[float, ...] = (),
        slot_recurrent: int = 0,
        slot_attention_ms: float = 0.0,
        slot_pitch_window: int = 0,
        gain_smooth_ms: float = 0.0,
        min_phase: bool = False,
        dim: int = 128,
        heads: int = 4,
        ffn: int = 256,
        layers: int = 4,
        window: int = 64,
        cond_dim: int = 128,
        input_gain_db: float = 30.0,
        slots: tuple[str, ...] = SLOTS,
        **kwargs,
    ) -> None:
        self.causal = bool(causal)
        self.sample_rate = int(sample_rate)
        self.channels = list(channels)
        self.strides = list(strides)
        self.fb_window = int(fb_window)
        self.fb_synthesis = int(fb_synthesis)
        self.fb_reach = int(fb_reach)
        self.gain_lag = int(gain_lag)
        self.gain_bands = int(gain_bands)
        self.static_eq = bool(static_eq)
        self.context_eq = bool(context_eq)
        self.spectral_hidden = int(spectral_hidden)
        self.slot_gains = bool(slot_gains)
        self.slot_bands = int(slot_bands)
        self.slot_gate = bool(slot_gate)
        self.slot_spectral = int(slot_spectral)
        self.slot_context = int(slot_context)
        self.slot_mean_order = float(slot_mean_order)
        self.slot_long_ms = [float(t) for t in slot_long_ms]
        self.slot_recurrent = int(slot_recurrent)
        self.slot_attention_ms = float(slot_attention_ms)
        self.slot_pitch_window = int(slot_pitch_window)
        self.gain_smooth_ms = float(gain_smooth_ms)
        self.min_phase = bool(min_phase)
        self.dim = dim
        self.heads = heads
        self.ffn = ffn
        self.layers = layers
        self.window = window
        self.cond_dim = cond_dim
        self.input_gain_db = float(input_gain_db)
        self.slots = list(slots)
        super().__init__(**kwargs)

    @property
    def block(self) -> int:
        """Samples per bottleneck frame: :meth:`TuttiModel.remix` takes multiples of it."""
        out = 1
        for s in self.strides:
            out *= s
        return out

    @property
    def hop(self) -> int:
        """Samples per gain frame: the filterbank hop, ``fb_synthesis / 2``."""
        return self.fb_synthesis // 2

    @property
    def delay(self) -> int:
        """Samples by which :meth:`TuttiModel.remix` output lags its input (the filterbank's
        :attr:`~model.filterbank.LowDelaySTFT.delay`: half its synthesis plus ``fb_reach``)."""
        return self.hop + self.fb_reach

    @property
    def frame_ms(self) -> float:
        """Milliseconds per gain frame (the filterbank hop, ``fb_synthesis / 2`` samples)."""
        return 1e3 * self.hop / self.sample_rate

    @property
    def drain(self) -> int:
        """Samples of zeros, in whole blocks, that bring out the last ``delay`` samples of a
        signal after its (block-padded) end."""
        return -(-self.delay // self.block) * self.block

    @property
    def lookahead(self) -> int:
        """Causal: the furthest input sample ahead of an output sample that it depends on (a
        frame's gain sees to the end of its block; ``gain_lag`` frames late, that much less)."""
        return self.block - 1 + self.delay - self.gain_lag * self.hop

    @property
    def step(self) -> int:
        """Samples that :meth:`TuttiModel.remix` takes multiples of: ``block``, or the filterbank
        hop when the gains lag all but one frame of a block (``gain_lag``): the filterbank then
        runs frame by frame while the network waits for whole blocks, and a stream's latency
        is its look-ahead."""
        hop = self.hop
        return hop if self.gain_lag and self.gain_lag == self.block // hop - 1 else self.block

    @property
    def mask_level(self) -> int:
        """Index of the encoder level whose frame rate is the filterbank hop."""
        hop, out = self.hop, 1
        for i, s in enumerate(self.strides):
            out *= s
            if out == hop:
                return i
        raise ValueError(f"no encoder level has the filterbank hop {hop} (strides "
                         f"{self.strides})")


def band_matrix(bands: int, bins: int, sample_rate: int) -> Tensor:
    """``(bands, bins)`` triangular interpolation from log-spaced band centres (50 Hz to 16 kHz)
    to STFT bins; each bin's weights sum to one (flat band gains give flat bin gains)."""
    freqs = np.linspace(0, sample_rate / 2, bins)
    log_centres = np.linspace(math.log(50.0), math.log(16000.0), bands)
    pos = np.log(np.clip(freqs, 50.0, 16000.0))
    idx = np.clip(np.searchsorted(log_centres, pos), 1, bands - 1)
    lo, hi = log_centres[idx - 1], log_centres[idx]
    frac = np.clip((pos - lo) / (hi - lo), 0, 1)
    out = np.zeros((bands, bins))
    cols = np.arange(bins)
    out[idx - 1, cols] = 1 - frac
    out[idx, cols] += frac
    return torch.from_numpy(out.astype(np.float32))


def present_slots(presence: Tensor, min_slots: int = 1) -> tuple[Tensor, Tensor]:
    """Indices ``(B, K)`` of each example's present slots (in slot order, padded with absent
    ones; K the most present in the batch, at least ``min_slots``) and which of them are
    present ``(B, K)`` bool."""
    present = presence > 0
    k = min(presence.shape[1], max(1, min_slots, int(present.sum(1).max())))
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :k]
    return order, present.gather(1, order)


def requested_log_amplitudes(gains_db: Tensor, presence: Tensor, index: Tensor) -> Tensor:
    """Requested amplitude gains ``log a_k`` (nepers) ``(B, K)`` of the slots ``index (B, K)``
    (:func:`present_slots`); 0 for absent slots."""
    return (gains_db * presence).gather(1, index) * (math.log(10.0) / 20.0)


@dataclass
class Listener:
    """A batch of listeners: audiograms ``(B, 2, 8)`` dB HL, ratios and makeup ``(B, 2, 6)``."""

    audiogram: Tensor
    ratio: Tensor
    makeup_db: Tensor


def exponential_mean(x: Tensor, decay: float, state: Tensor | None = None,
                     block: int = 64) -> tuple[Tensor, Tensor]:
    """Causal exponentially weighted mean of ``x (B, C, frames)`` over frames, ``(B, C,
    frames)``: frame ``t`` is ``sum_k decay**k x[t - k] / sum_k decay**k`` over the frames of
    the stream so far (at its start, the mean of the frames there are). ``state (B, C + 1)``
    carries a stream: the weighted sum and, last, its total weight (None: the start). Exact at
    any block size; computed ``block`` frames at a time by one product with a triangular
    matrix of powers of ``decay``.
    """
    b, c, n = x.shape
    if state is None:
        state = x.new_zeros(b, c + 1)
    if n == 0:
        return x, state
    total, weight = state[:, :c, None], state[:, c:, None]
    size = min(block, n)
    steps = torch.arange(size, dtype=x.dtype, device=x.device)
    powers = decay ** (steps[:, None] - steps[None, :]).clamp(min=0)  # decay^(i-j)
    tri_t = torch.tril(powers).T  # (size, size); a shorter block takes its top-left corner
    carries = decay ** (steps + 1)  # what the previous sum weighs at each frame
    out = []
    for start in range(0, n, block):
        m = min(block, n - start)
        tri, carry = tri_t[:m, :m], carries[:m]
        sums = x[:, :, start:start + m] @ tri + total * carry
        weights = tri.sum(0) + weight * carry
        out.append(sums / weights)
        total, weight = sums[:, :, -1:], weights[:, :, -1:]
    mean = out[0] if len(out) == 1 else torch.cat(out, dim=2)
    return mean, torch.cat([total, weight], dim=1)[..., 0]


INFERENCE_SETTINGS = ("gain_smooth_ms", "slot_mean_order", "min_phase")
"""Config settings that no weight depends on: a saved model's may change without training."""


def _check_inference_settings(config: TuttiConfig) -> None:
    if config.gain_smooth_ms < 0:
        raise ValueError(f"gain_smooth_ms must be >= 0 ms, got {config.gain_smooth_ms}")
    if not 0.0 <= config.slot_mean_order <= 4.0:
        raise ValueError(f"slot_mean_order must be in [0, 4], got {config.slot_mean_order}")


class TuttiModel(PreTrainedModel):
    """Conditional rebalancing network with the CAD2 hearing aid as its last layer."""

    config_class = TuttiConfig
    base_model_prefix = "tutti"
    main_input_name = "mixture"

    def __init__(self, config: TuttiConfig) -> None:
        super().__init__(config)
        n = len(config.slots)
        causal = config.causal
        cd = config.cond_dim
        # gains (sinusoid features + linear), presence, audiogram (16 values), makeup/ratio (24)
        cond_in = n * 16 + n + n + 16 + 24
        self.cond = nn.Sequential(nn.Linear(cond_in, cd), nn.GELU(), nn.Linear(cd, cd), nn.GELU())
        chans = [2, *config.channels]
        k = config.mask_level
        self.filterbank = LowDelaySTFT(config.fb_window, config.fb_synthesis, config.fb_reach)
        bins = self.filterbank.bins
        self.encoder = nn.ModuleList(
            EncoderLayer(chans[i], chans[i + 1], s, cd, causal=causal)
            for i, s in enumerate(config.strides)
        )
        self.spectrum = nn.Conv1d(2 * bins, chans[k + 1], 1)
        self.to_dim = nn.Conv1d(chans[-1], config.dim, 1)
        self.transformer = nn.ModuleList(
            TransformerLayer(config.dim, config.heads, config.ffn, config.window, cd, causal=causal)
            for _ in range(config.layers)
        )
        self.from_dim = nn.Conv1d(config.dim, chans[-1], 1)
        self.decoder = nn.ModuleList(
            DecoderLayer(chans[i + 1], chans[i], config.strides[i], cd, causal=causal)
            for i in reversed(range(k + 1, len(config.strides)))
        )
        c = chans[k + 1]
        self.head_context = StreamConv1d(c, 2 * c, 3, causal=causal)
        self.head_film = FiLM(cd, 2 * c)
        self.head = nn.Conv1d(c, 2 * bins, 1)
        self.hearing_aid = HearingAid(config.sample_rate)
        self.post_init()
        # Start as the identity rebalancer: every log-gain begins at zero.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        if config.gain_bands:
            # Smooth gains on a few log-spaced bands, spread to the bins (learns fast, EQ-like).
            self.band_head = nn.Conv1d(c, 2 * config.gain_bands, 1)
            nn.init.zeros_(self.band_head.weight)
            nn.init.zeros_(self.band_head.bias)
            self.register_buffer("band_to_bin", band_matrix(config.gain_bands, bins,
                                                            config.sample_rate))
        for name in ("static_eq", "context_eq"):
            if getattr(config, name) and not config.gain_bands:
                raise ValueError(f"{name} needs gain_bands > 0")
        for name in ("slot_gate", "slot_spectral"):
            if getattr(config, name) and not config.slot_gains:
                raise ValueError(f"{name} needs slot_gains")
        for name in ("slot_long_ms", "slot_recurrent", "slot_attention_ms", "slot_pitch_window"):
            if getattr(config, name) and not config.slot_spectral:
                raise ValueError(f"{name} needs slot_spectral")
        if config.slot_attention_ms < 0:
            raise ValueError(f"slot_attention_ms must be >= 0 ms, got {config.slot_attention_ms}")
        if config.slot_pitch_window and (config.slot_pitch_window % config.hop
                                         or config.slot_pitch_window <= config.hop):
            raise ValueError(f"slot_pitch_window must be a multiple of the hop {config.hop} "
                             f"above it, got {config.slot_pitch_window}")
        if config.slot_recurrent < 0:
            raise ValueError(f"slot_recurrent must be >= 0 units, got {config.slot_recurrent}")
        if any(t <= 0 for t in config.slot_long_ms):
            raise ValueError(f"slot_long_ms must be > 0 ms, got {config.slot_long_ms}")
        if config.slot_context < 1:
            raise ValueError(f"slot_context must be >= 1 frame, got {config.slot_context}")
        frames_per_block = config.block // config.hop
        if not 0 <= config.gain_lag < frames_per_block:
            raise ValueError(f"gain_lag must be 0 to {frames_per_block - 1} frames (a block "
                             f"holds {frames_per_block}), got {config.gain_lag}")
        _check_inference_settings(config)
        if config.static_eq:
            # Band gains from the head's features averaged over the signal so far (causal: a
            # running mean; non-causal: the whole chunk): a slowly changing EQ for the
            # long-term balance.
            self.eq_head = nn.Linear(c, 2 * config.gain_bands)
            nn.init.zeros_(self.eq_head.weight)
            nn.init.zeros_(self.eq_head.bias)
        if config.context_eq:
            # Band gains straight from the transformer's output, one set per bottleneck frame:
            # the path with long context sets the balance (the skip at the gain level gives the
            # head local features only, and trained models leave the bottleneck unused).
            self.context_head = nn.Linear(config.dim, 2 * config.gain_bands)
            nn.init.zeros_(self.context_head.weight)
            nn.init.zeros_(self.context_head.bias)
        if config.spectral_hidden:
            # A per-frame MLP from the full log spectrum and the head's features to per-bin
            # log-gains: the gain head alone is linear in ``c`` features (a rank-``c`` mask).
            h = config.spectral_hidden
            self.spectral_in = nn.Conv1d(2 * bins + c, h, 1)
            self.spectral_film = FiLM(cd, h)
            self.spectral_mid = nn.Conv1d(h, h, 1)
            self.spectral_out = nn.Conv1d(h, 2 * bins, 1)
            nn.init.zeros_(self.spectral_out.weight)
            nn.init.zeros_(self.spectral_out.bias)
        if config.slot_gains:
            # Per present slot, a log-weight for every ear, frame and bin (its share of the
            # bin's power); the bin's gain is the weighted RMS of the requested slot gains, so
            # the request enters the gain multiplicatively and 0 dB everywhere is the identity.
            # With ``slot_bands`` the weights are per log-spaced band and the log-gain is spread
            # to the bins like the band head's (several times cheaper at the causal hop of 64).
            width = config.slot_bands or bins
            slot_in = c
            if config.slot_spectral:
                # The weights read a per-frame MLP of the full log spectrum (``slot_context``
                # frames: causal, the past ones) and the head's features, modulated by the
                # presence alone (a slot's share of a bin does not depend on the request's gains
                # or the listener): the head's own features are local and low-rank, and the
                # weights are the network's estimate of which instrument holds each bin.
                h = slot_in = config.slot_spectral
                self.slot_spectrum = StreamConv1d(2 * bins + c, h, config.slot_context,
                                                  causal=causal)
                self.slot_presence = FiLM(n, h)
                self.slot_mid = nn.Conv1d(h, h, 1)
                if config.slot_long_ms:
                    # Long context for "who holds this band": per frame ``h`` features of the
                    # same input, averaged over the past by an exponential window per time
                    # constant (non-causal: forwards and backwards), added to the MLP's first
                    # layer through a projection that starts at zero (a fine-tune starts where
                    # its model was).
                    self.slot_long_in = nn.Conv1d(2 * bins + c, h, 1)
                    self.slot_long_out = nn.Conv1d(h * len(config.slot_long_ms), h, 1)
                    nn.init.zeros_(self.slot_long_out.weight)
                    nn.init.zeros_(self.slot_long_out.bias)
                if config.slot_recurrent:
                    # A recurrent context: a GRU over the frames of the MLP's first-layer
                    # features (forwards only, so causal; a stream carries its hidden state),
                    # added through a projection that starts at zero.
                    r = config.slot_recurrent
                    self.slot_gru = nn.GRU(h, r, batch_first=True)
                    self.slot_gru_out = nn.Conv1d(r, h, 1)
                    nn.init.zeros_(self.slot_gru_out.weight)
                    nn.init.zeros_(self.slot_gru_out.bias)
                if config.slot_pitch_window:
                    # A long-window spectrum of the mid signal on a half-semitone grid (4096
                    # samples: 10.8 Hz bins), so that two voices of one timbre a few semitones
                    # apart can be told by their harmonics; causal (each frame ends where the
                    # filterbank's does). Its projection starts at zero (a model fine-tuned
                    # from one without it starts where it was).
                    self.slot_pitch = LogFrequencySpectrum(
                        config.slot_pitch_window, config.hop, config.sample_rate,
                        10 ** (config.input_gain_db / 20),
                        (config.fb_window, config.fb_synthesis, config.fb_reach))
                    self.slot_pitch_in = StreamConv1d(self.slot_pitch.pitches, h,
                                                      config.slot_context, causal=causal)
                    self.slot_pitch_out = nn.Conv1d(h, h, 1)
                    nn.init.zeros_(self.slot_pitch_out.weight)
                    nn.init.zeros_(self.slot_pitch_out.bias)
                if config.slot_attention_ms:
                    # Attention over the last ``slot_attention_ms`` of frames (non-causal: that
                    # much either side), FiLM on presence: the frames where each instrument
                    # began its note, not only its sustain, inform who holds a band now. The
                    # past before the start is zero input (a stream's state has its final shape
                    # at once); added through a projection that starts at zero.
                    frames = max(1, round(config.slot_attention_ms / config.frame_ms))
                    self.slot_attention = TransformerLayer(h, config.heads, 2 * h, frames, n,
                                                           causal=causal, pad_past=True)
                    self.slot_attention_out = nn.Conv1d(h, h, 1)
                    nn.init.zeros_(self.slot_attention_out.weight)
                    nn.init.zeros_(self.slot_attention_out.bias)
            self.slot_head = nn.Conv1d(slot_in, n * 2 * width, 1)
            nn.init.zeros_(self.slot_head.weight)
            nn.init.zeros_(self.slot_head.bias)
            if config.slot_gate:
                # A learned scale of the slot log-gain that starts at 0: a model fine-tuned from
                # one without the slot head starts where it was (its own heads kept). Stored as
                # a tenth of the scale, so that Adam (steps of about lr) can move it to ~1 in a
                # few hundred steps.
                self.slot_scale = nn.Parameter(torch.zeros(1))
            if config.slot_bands:
                self.register_buffer("slot_band_to_bin", band_matrix(config.slot_bands, bins,
                                                                     config.sample_rate))

    def _init_weights(self, module: nn.Module) -> None:  # transformers hook; keep torch defaults
        return

    def set_inference(self, **settings: float) -> None:
        """Change :data:`INFERENCE_SETTINGS` in place (checked; the config saves them)."""
        unknown = sorted(set(settings) - set(INFERENCE_SETTINGS))
        if unknown:
            raise ValueError(f"not an inference-time setting: {', '.join(unknown)} (these are: "
                             f"{', '.join(INFERENCE_SETTINGS)})")
        old = {k: getattr(self.config, k) for k in settings}
        for key, value in settings.items():
            if isinstance(old[key], bool) and float(value) not in (0.0, 1.0):
                raise ValueError(f"{key} is on or off (1 or 0), got {value}")
        for key, value in settings.items():
            kind = bool if isinstance(old[key], bool) else float
            setattr(self.config, key, kind(float(value)))
        try:
            _check_inference_settings(self.config)
        except ValueError:
            for key, value in old.items():
                setattr(self.config, key, value)
            raise

    def with_fb_reach(self, reach: int, gain_lag: int | None = None,
                      max_lookahead: int | None = 220) -> TuttiModel:
        """A copy whose filterbank's synthesis spans end ``reach`` samples before their frames'
        ends (:class:`~model.filterbank.LowDelaySTFT`; the delay and a causal model's look-ahead
        grow by ``reach``), every weight kept and the filterbank's windows made for the new
        reach; ``gain_lag`` (None: kept) frames by which the gains are applied late (a causal
        model's look-ahead shrinks by that many hops). A causal model's look-ahead must stay
        within ``max_lookahead`` samples (220: 5 ms at 44.1 kHz; None: no limit)."""
        if reach < 0:
            raise ValueError(f"fb_reach must be >= 0 samples, got {reach}")
        lag = self.config.gain_lag if gain_lag is None else int(gain_lag)
        config = TuttiConfig(**{**self.config.to_dict(), "fb_reach": int(reach), "gain_lag": lag})
        if config.causal and max_lookahead is not None and config.lookahead > max_lookahead:
            raise ValueError(
                f"fb_reach {reach} with gain_lag {lag}: the causal model would look "
                f"{config.lookahead} samples ahead, over {max_lookahead} (at most "
                f"{max_lookahead - config.lookahead + reach} fits)")
        model = TuttiModel(config).to(self.device).eval()
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("filterbank.")}
        missing, unexpected = model.load_state_dict(own, strict=False)
        assert all(k.startswith("filterbank.") for k in missing) and not unexpected
        return model

    def with_slot_gate(self, value: float) -> TuttiModel:
        """A model whose slot log-gain is scaled by ``value`` (0: no slot gain, 1: all of it),
        e.g. to follow requests more gently than training chose: a ``slot_gate`` model itself,
        its learned scale set in place; otherwise a copy with a gate."""
        if not self.config.slot_gains:
            raise ValueError("the model has no slot gains (slot_gains is off)")
        if not 0.0 <= value <= 2.0:
            raise ValueError(f"slot gate must be in [0, 2], got {value}")
        model = self
        if not self.config.slot_gate:
            config = TuttiConfig(**{**self.config.to_dict(), "slot_gate": True})
            model = TuttiModel(config).to(self.device).eval()
            missing, unexpected = model.load_state_dict(self.state_dict(), strict=False)
            assert missing == ["slot_scale"] and not unexpected, (missing, unexpected)
        with torch.no_grad():
            model.slot_scale.fill_(value / 10.0)  # stored as a tenth of the scale
        return model

    def conditioning(self, gains_db: Tensor, presence: Tensor, listener: Listener) -> Tensor:
        """Conditioning vector ``(B, cond_dim)``."""
        g = gains_db * presence
        feats = [
            sinusoid_features(g / 12.0).flatten(1),
            presence.to(g.dtype),
            (db_to_gain(g) - 1.0) * presence,
            listener.audiogram.flatten(1) / 100.0,
            listener.makeup_db.flatten(1) / 40.0,
            (1.0 - 1.0 / listener.ratio.clamp(min=1.0)).flatten(1),
        ]
        return self.cond(torch.cat(feats, dim=1).float())

    def remix(
        self,
        mixture: Tensor,
        gains_db: Tensor,
        presence: Tensor,
        listener: Listener,
        state: dict | None = None,
        internals: dict | None = None,
    ) -> tuple[Tensor, dict]:
        """Rebalanced remix before the hearing aid ``(B, 2, T)``, ``delay`` samples late
        (its first ``delay`` samples precede the input); T a multiple of ``step`` (``block``, or the
        filterbank hop for a model whose network waits for whole blocks: see
        :attr:`TuttiConfig.step`).

        ``state`` carries a stream (None: start of the signal); the non-causal model also returns
        one, but only the causal model's streamed output equals one pass over the whole signal.
        ``internals``, if given, receives ``slot_log_weights`` (``slot_gains`` models; see
        :meth:`slot_log_gain`) for training losses and ``log_gain (B, 2, frames, bins)``, the
        natural-log gain the filterbank applies (before :meth:`log_gain_limit`).
        """
        cfg = self.config
        presence = presence.to(mixture.dtype)
        state = state or {}
        new_state: dict = {}
        if "cond" in state:  # a stream keeps its request: conditioning and level are fixed
            cond, level = state["cond"]
        else:
            cond = self.conditioning(gains_db, presence, listener)
            level = db_to_gain(level_adjustment_db(gains_db, presence > 0)).to(mixture.dtype)
        new_state["cond"] = (cond, level)
        scale = 10 ** (cfg.input_gain_db / 20)
        spectra, new_state["fb_in"] = self.filterbank.analyse(mixture, state.get("fb_in"))
        power = torch.log1p(power_spectrum(spectra) * scale**2) / 5.0
        power = rearrange(power, "b c t f -> b (c f) t")
        if cfg.slot_pitch_window:  # rides with the power spectrum (a network waits for blocks)
            pitch, new_state["pitch_in"] = self.slot_pitch(mixture.mean(1, keepdim=True),
                                                           state.get("pitch_in"))
            power = torch.cat([power, rearrange(pitch, "b c t p -> b (c p) t")], dim=1)
        x = mixture * scale
        if cfg.step != cfg.block:  # the network takes whole blocks; the rest waits in the state
            if "net_x" in state:
                x = torch.cat([state["net_x"], x], dim=-1)
                power = torch.cat([state["net_power"], power], dim=-1)
            whole = x.shape[-1] // cfg.block * cfg.block
            frames = whole // cfg.hop
            new_state["net_x"], new_state["net_power"] = x[..., whole:], power[..., frames:]
            x, power = x[..., :whole], power[..., :frames]
        if x.shape[-1]:
            log_gain = self._network_log_gain(x, power, cond, gains_db, presence, state,
                                              new_state, internals)
        else:  # no whole block yet: the network's state stands
            log_gain = power.new_zeros(*spectra.shape[:2], 0, spectra.shape[-1])
            for key, value in state.items():
                new_state.setdefault(key, value)
        if cfg.gain_lag:  # each frame takes the gain of the frame gain_lag earlier (0 at first)
            before = state.get("lag")
            if before is None:
                before = log_gain.new_zeros(*log_gain.shape[:2], cfg.gain_lag,
                                            log_gain.shape[3])
            lagged = torch.cat([before, log_gain], dim=2)
            n = spectra.shape[2]
            log_gain, new_state["lag"] = lagged[:, :, :n], lagged[:, :, n:]
        if internals is not None:
            internals["log_gain"] = log_gain
        if cfg.min_phase:
            masked = apply_complex_gain(
                spectra, minimum_phase(self.log_gain_limit(log_gain), cfg.fb_window))
        else:
            masked = apply_gain(spectra, self.gain(log_gain))
        out, new_state["fb_out"] = self.filterbank.synthesise(masked, state.get("fb_out"))
        return out * level[:, None, None], new_state  # synthesis is linear: level last

    def _network_log_gain(self, x: Tensor, power: Tensor, cond: Tensor, gains_db: Tensor,
                          presence: Tensor, state: dict, new_state: dict,
                          internals: dict | None) -> Tensor:
        """The network: natural-log gains ``(B, 2, frames, bins)`` at the filterbank hop from the
        scaled mixture ``x (B, 2, T)`` (T a multiple of ``block``) and its log power spectrum
        ``power (B, 2 bins, frames)`` (with ``slot_pitch_window``, the log-frequency spectrum's
        ``pitches`` rows after them); reads its stream state from ``state``, writes it to
        ``new_state``."""
        cfg = self.config
        if cfg.slot_pitch_window:
            power, pitch = power.split([2 * self.filterbank.bins, self.slot_pitch.pitches], 1)
        skips = []
        mask_level = cfg.mask_level
        for i, layer in enumerate(self.encoder):
            x, new_state[f"enc{i}"] = layer(x, cond, state.get(f"enc{i}"))
            if i == mask_level:
                x = x + pointwise(self.spectrum, power)
            skips.append(x)
        x = pointwise(self.to_dim, x)
        for i, layer in enumerate(self.transformer):
            x, new_state[f"tf{i}"] = layer(x, cond, state.get(f"tf{i}"))
        context = x
        x = pointwise(self.from_dim, x)
        for i, layer in enumerate(self.decoder):
            x, new_state[f"dec{i}"] = layer(x + skips.pop(), cond, state.get(f"dec{i}"))
        x, new_state["head"] = self.head_context(x + skips.pop(), state.get("head"))
        x = F.glu(self.head_film(x, cond), dim=1)
        per_bin = pointwise(self.head, x)
        if cfg.spectral_hidden:
            h = pointwise(self.spectral_in, torch.cat([power, x], dim=1))
            h = F.gelu(pointwise(self.spectral_mid, F.gelu(self.spectral_film(h, cond))))
            per_bin = per_bin + pointwise(self.spectral_out, h)
        log_gain = rearrange(per_bin, "b (c f) t -> b c t f", c=2)
        if cfg.gain_bands:
            bands = rearrange(pointwise(self.band_head, x), "b (c k) t -> b c t k", c=2)
            log_gain = log_gain + bands @ self.band_to_bin
        if cfg.static_eq:  # causal: a running mean; non-causal: one EQ for the whole chunk
            if cfg.causal:
                mean, new_state["eq"] = self._running_mean(x, state.get("eq"))
            else:
                mean = x.mean(-1, keepdim=True).transpose(1, 2)
            log_gain = log_gain + self._band_gains(self.eq_head(mean))
        if cfg.context_eq:  # each bottleneck frame's bands cover its gain frames
            eq = self._band_gains(self.context_head(context.transpose(1, 2)))
            log_gain = log_gain + eq.repeat_interleave(log_gain.shape[2] // eq.shape[2], dim=2)
        if cfg.slot_gains:
            features = x
            if cfg.slot_spectral:
                spectrum_and_features = torch.cat([power, x], dim=1)
                features, new_state["slot"] = self.slot_spectrum(spectrum_and_features,
                                                                 state.get("slot"))
                if cfg.slot_long_ms:
                    long, new_state["slot_long"] = self._slot_long_context(
                        spectrum_and_features, state.get("slot_long"))
                    features = features + pointwise(self.slot_long_out, long)
                if cfg.slot_pitch_window:
                    heard, new_state["slot_pitch"] = self.slot_pitch_in(pitch,
                                                                        state.get("slot_pitch"))
                    features = features + pointwise(self.slot_pitch_out, F.gelu(heard))
                if cfg.slot_recurrent:
                    seq, new_state["slot_gru"] = self.slot_gru(
                        F.gelu(features).transpose(1, 2), state.get("slot_gru"))
                    features = features + pointwise(self.slot_gru_out, seq.transpose(1, 2))
                if cfg.slot_attention_ms:
                    seq, new_state["slot_attention"] = self.slot_attention(
                        F.gelu(features), presence, state.get("slot_attention"))
                    features = features + pointwise(self.slot_attention_out, seq)
                features = F.gelu(self.slot_presence(features, presence))
                features = F.gelu(pointwise(self.slot_mid, features))
            request = state.get("slot_request") or self.slot_request(gains_db, presence)
            new_state["slot_request"] = request  # a stream keeps its request
            slot_log_gain, log_weights = self.slot_log_gain(features, gains_db, presence,
                                                            internals is not None, request)
            if cfg.slot_gate:
                slot_log_gain = slot_log_gain * (10.0 * self.slot_scale)
            log_gain = log_gain + slot_log_gain
            if internals is not None:
                internals["slot_log_weights"] = log_weights
        if cfg.gain_smooth_ms > 0:
            log_gain, new_state["smooth"] = self._smooth_gains(log_gain, state.get("smooth"))
        return log_gain

    def slot_request(self, gains_db: Tensor, presence: Tensor, min_slots: int = 1,
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """What :meth:`slot_log_gain` needs of a request: the present slots' indices ``(B, K)``
        (K at least ``min_slots``: :func:`present_slots`), a mask ``(B, 1, K, 1)`` added to their
        logits (0, or ``-inf`` for padding) and each one's term of the power mean ``(B, K)``. A
        stream computes it once."""
        index, valid = present_slots(presence, min_slots)
        valid = valid.clone()
        valid[:, 0] |= ~valid.any(1)  # nothing present: one slot at 0 dB, the identity
        mask = torch.zeros(valid.shape, dtype=gains_db.dtype, device=gains_db.device)
        mask = mask.masked_fill(~valid, float("-inf"))[:, None, :, None]
        order = self.config.slot_mean_order
        log_amp = requested_log_amplitudes(gains_db, presence, index)
        term = log_amp if order == 0 else (order * log_amp).exp()  # per slot, averaged by w
        return index, mask, term

    def slot_log_gain(self, x: Tensor, gains_db: Tensor, presence: Tensor,
                      with_weights: bool = True,
                      request: tuple[Tensor, Tensor, Tensor] | None = None,
                      ) -> tuple[Tensor, Tensor | None]:
        """Log-gain ``(B, 2, frames, bins)`` from the slot head's input ``x (B, c, frames)`` (the
        head's features, or with ``slot_spectral`` its MLP's, that many channels): the log of
        the power mean ``(sum_k w_k * a_k**p) ** (1 / p)`` over the present slots ``k``
        (:func:`present_slots`), ``a_k`` the requested amplitude gain, ``w_k`` the head's
        softmax weights and ``p`` the config's ``slot_mean_order`` (2: the weighted RMS, the
        power of incoherent sources; smaller orders lean less to the loudest requests where
        the weights are unsure; 0: the geometric mean ``sum_k w_k * log a_k``); also (with
        ``with_weights``) the log-weights ``(B, K, 2, frames, width)``, ``-inf`` where a padded
        slot is absent. ``width`` is ``slot_bands`` (the log-gain then spread to the bins) or
        ``bins``. ``request``: :meth:`slot_request` of ``gains_db`` and ``presence``, if
        already computed."""
        index, mask, term = request or self.slot_request(gains_db, presence)
        order = self.config.slot_mean_order
        slots = len(self.config.slots)

        weight, bias = self.slot_head.weight[..., 0], self.slot_head.bias
        every_slot = index.shape[1] == slots  # a padded stream request
        if not every_slot:  # only the present slots' weights (most requests have 2 to 5 of 12)
            weight = weight.view(slots, -1, x.shape[1])[index]  # (B, K, 2 width, c)
            bias = bias.view(slots, -1)[index][:, None]  # (B, 1, K, 2 width)

        def frames(part: Tensor, with_weights: bool) -> tuple[Tensor, Tensor | None]:
            """(log-gain (B, t, 2 width), log-weights (B, K, t, 2 width)) of some frames: one
            softmax over the slots and one product with their terms (on a CPU several times
            faster than a loop of reductions over the few slots)."""
            if every_slot:  # the head's own weights in one product, which a compiled step
                # packs once; then pick the request's slots
                every = F.linear(part.transpose(1, 2), weight, bias).unflatten(2, (slots, -1))
                logits = every.gather(2, index[:, None, :, None].expand(
                    -1, every.shape[1], -1, every.shape[3]))
            else:
                logits = torch.einsum("bkoc,bct->btko", weight, part) + bias
            logits = logits + mask  # (B, t, K, 2 width)
            log_w = F.log_softmax(logits, dim=2) if with_weights else None
            w = log_w.exp() if log_w is not None else F.softmax(logits, dim=2)
            mean = (term[:, None, None, :] @ w).squeeze(2)  # sum_k w_k * term_k
            log_gain = mean if order == 0 else mean.log() / order
            return log_gain, None if log_w is None else log_w.transpose(1, 2)

        if with_weights:
            log_gain, log_w = frames(x, True)
            log_w = rearrange(log_w, "b k t (c f) -> b k c t f", c=2)
        else:  # inference: a few frames at a time (the (B, K, frames, 2 width) tensors are big)
            parts = [frames(x[..., i : i + 128], False)[0] for i in range(0, x.shape[-1], 128)]
            log_gain = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            log_w = None
        log_gain = rearrange(log_gain, "b t (c f) -> b c t f", c=2)
        if self.config.slot_bands:
            log_gain = log_gain @ self.slot_band_to_bin
        return log_gain, log_w

    def _smooth_gains(self, log_gain: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """``log_gain (B, 2, frames, bins)`` smoothed over frames by :func:`exponential_mean`
        with time constant ``gain_smooth_ms``: fewer fast gain fluctuations, the artifacts HAAQI
        punishes. Causal, ``state (B, 2 bins + 1)`` carries a stream (O(1) per frame);
        non-causal, the mean runs forwards and then backwards over the chunk, so the gains do
        not lag the music (zero phase)."""
        cfg = self.config
        decay = math.exp(-cfg.frame_ms / cfg.gain_smooth_ms)
        channels = log_gain.shape[1]
        x = rearrange(log_gain, "b c t f -> b (c f) t")
        out, state = exponential_mean(x, decay, state)
        if not cfg.causal:
            out = exponential_mean(out.flip(-1), decay)[0].flip(-1)
        return rearrange(out, "b (c f) t -> b c t f", c=channels), state

    def _slot_long_context(self, x: Tensor, state: list[Tensor] | None
                           ) -> tuple[Tensor, list[Tensor]]:
        """The slot branch's long context ``(B, h * len(slot_long_ms), frames)`` from its input
        ``x (B, 2 bins + c, frames)``: GELU features averaged by :func:`exponential_mean` per
        time constant (non-causal: then backwards too, zero phase); ``state`` carries a stream."""
        cfg = self.config
        h = F.gelu(pointwise(self.slot_long_in, x))
        state = state or [None] * len(cfg.slot_long_ms)
        out, new_state = [], []
        for tau, carried in zip(cfg.slot_long_ms, state, strict=True):
            decay = math.exp(-cfg.frame_ms / tau)
            mean, carried = exponential_mean(h, decay, carried)
            if not cfg.causal:
                mean = exponential_mean(mean.flip(-1), decay)[0].flip(-1)
            out.append(mean)
            new_state.append(carried)
        return torch.cat(out, dim=1), new_state

    def _band_gains(self, bands: Tensor) -> Tensor:
        """Log-gains ``(B, 2, frames, bins)`` from band log-gains ``(B, frames, 2 * bands)``."""
        return rearrange(bands, "b t (c k) -> b c t k", c=2) @ self.band_to_bin

    @staticmethod
    def _running_mean(x: Tensor, state: tuple[Tensor, int] | None
                      ) -> tuple[Tensor, tuple[Tensor, int]]:
        """Mean of ``x (B, C, frames)`` over every frame of the stream up to each one,
        ``(B, frames, C)``; the state carries the running sum and count."""
        total, count = state if state is not None else (x.new_zeros(x.shape[:2]), 0)
        n = x.shape[-1]
        sums = total[..., None] + x.cumsum(-1)
        counts = count + torch.arange(1, n + 1, device=x.device, dtype=x.dtype)
        return (sums / counts).transpose(1, 2), (sums[..., -1], count + n)

    @staticmethod
    def log_gain_limit(log_gain: Tensor) -> Tensor:
        """The head's log-gain ``(B, 2, frames, bins)`` soft-limited to ±4 nepers (±35 dB)."""
        return 4.0 * torch.tanh(log_gain / 4.0)

    def gain(self, log_gain: Tensor) -> Tensor:
        """Time-frequency gain ``(B, 2, frames, bins)`` from the head's log-gain (soft-limited
        to ±4 nepers, ±35 dB)."""
        return torch.exp(self.log_gain_limit(log_gain))

    def stream_state(self, gains_db: Tensor, presence: Tensor, min_slots: int = 1) -> dict:
        """The state that starts a stream, as ``state=None`` does in :meth:`remix_aligned`, with
        the slot request padded to at least ``min_slots`` slots (padding adds exact zeros): with
        ``len(config.slots)`` every request streams with the same tensor shapes, which a
        compiled stream (:mod:`model.streaming`) needs."""
        state: dict = {"skip": self.config.delay}
        if self.config.slot_gains:
            state["slot_request"] = self.slot_request(gains_db, presence.to(gains_db.dtype),
                                                      min_slots)
        return state

    def remix_aligned(self, mixture: Tensor, gains_db: Tensor, presence: Tensor,
                      listener: Listener, state: dict | None = None,
                      internals: dict | None = None) -> tuple[Tensor, dict]:
        """:meth:`remix` of the next chunk of a stream, with the stream's first ``delay`` output
        samples (those before its input began) dropped: the concatenated outputs line up with
        the input, ``delay`` samples behind it until ``delay`` more input (e.g. zeros) drains it.
        """
        skip = self.config.delay if state is None else state["skip"]
        out, state = self.remix(mixture, gains_db, presence, listener, state, internals)
        state["skip"] = max(0, skip - out.shape[-1])
        return out[..., skip:], state

    def remix_offline(self, mixture: Tensor, gains_db: Tensor, presence: Tensor,
                      listener: Listener, internals: dict | None = None) -> Tensor:
        """Remix of a whole signal ``(B, 2, T)`` (any T), aligned with its input."""
        length = mixture.shape[-1]
        out, _ = self.remix_aligned(self._pad_offline(mixture), gains_db, presence, listener,
                                    internals=internals)
        return out[..., :length]

    def _pad_offline(self, signal: Tensor) -> Tensor:
        """``signal (..., T)`` padded at the end as :meth:`remix_offline` pads its input: to
        whole blocks, then :attr:`TuttiConfig.drain`."""
        pad = (-signal.shape[-1]) % self.config.block + self.config.drain
        return F.pad(signal, (0, pad))

    def slot_power(self, signal: Tensor) -> Tensor:
        """Power spectrum ``(..., 2, frames, width)`` of ``signal (..., 2, T)`` on the frames of
        :meth:`remix_offline`'s gains and the slot head's bins or ``slot_bands`` (e.g. a stem's
        share of each; a bin's power goes to its bands with its interpolation weights)."""
        spectra, _ = self.filterbank.analyse(self._pad_offline(signal), None)
        power = power_spectrum(spectra)
        if self.config.slot_bands:
            power = power @ self.slot_band_to_bin.T
        return power

    def forward(
        self,
        mixture: Tensor,
        gains_db: Tensor,
        presence: Tensor,
        audiogram: Tensor,
        ratio: Tensor,
        makeup_db: Tensor,
        hearing_aid: bool = True,
        internals: dict | None = None,
    ) -> Tensor:
        """Hearing-aid signal ``(B, 2, T)`` (or the remix before it with ``hearing_aid=False``).

        ``mixture (B, 2, T)`` at 44.1 kHz (any T: padded to a block internally), ``gains_db``
        and ``presence (B, 12)`` over :data:`model.cad2.SLOTS`, ``audiogram (B, 2, 8)`` dB HL,
        ``ratio``/``makeup_db (B, 2, 6)``; ``internals`` as in :meth:`remix`.
        """
        remix = self.remix_offline(mixture, gains_db, presence,
                                   Listener(audiogram, ratio, makeup_db), internals)
        if not hearing_aid:
            return remix
        return self.hearing_aid(remix, ratio, makeup_db)
