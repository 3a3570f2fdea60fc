"""The Tutti network: one conditional Wave-U-Net/transformer hybrid.

``(mixture (B, 2, T), gains (B, 12) dB, presence (B, 12), listener)`` -> the rebalanced signal
through the listener's hearing aid ``(B, 2, T)`` at 44.1 kHz. Inside: a multi-scale strided
convolutional encoder, a local-attention transformer at the bottleneck and a transposed-conv
decoder with skips, all FiLM-conditioned on gains, presence and audiogram. The network predicts
the rebalanced remix before the hearing aid as ``level * mixture + correction`` (``level`` is the
recipe's ``adjust_level`` factor, so a zero correction is the unbalanced mix); the CAD2 hearing
aid (:class:`model.hearing_aid.HearingAid`) is the last, fixed layer.

The causal variant sees input up to the end of its current block of ``prod(strides)`` samples
(at most ``prod(strides) - 1`` samples ahead); every layer streams with carried state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from model.cad2 import SLOTS
from model.hearing_aid import HearingAid, db_to_gain, level_adjustment_db
from model.layers import DecoderLayer, EncoderLayer, TransformerLayer, sinusoid_features


class TuttiConfig(PretrainedConfig):
    """Hyper-parameters of :class:`TuttiModel` (stored as ``config.json``)."""

    model_type = "tutti"

    def __init__(
        self,
        causal: bool = False,
        sample_rate: int = 44100,
        channels: tuple[int, ...] = (32, 64, 128),
        strides: tuple[int, ...] = (8, 4, 4),
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
        """Samples per bottleneck frame; causal lookahead is at most ``block - 1`` samples."""
        out = 1
        for s in self.strides:
            out *= s
        return out


@dataclass
class Listener:
    """A batch of listeners: audiograms ``(B, 2, 8)`` dB HL, ratios and makeup ``(B, 2, 6)``."""

    audiogram: Tensor
    ratio: Tensor
    makeup_db: Tensor


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
        self.encoder = nn.ModuleList(
            EncoderLayer(chans[i], chans[i + 1], s, cd, causal=causal)
            for i, s in enumerate(config.strides)
        )
        self.to_dim = nn.Conv1d(chans[-1], config.dim, 1)
        self.transformer = nn.ModuleList(
            TransformerLayer(config.dim, config.heads, config.ffn, config.window, cd, causal=causal)
            for _ in range(config.layers)
        )
        self.from_dim = nn.Conv1d(config.dim, chans[-1], 1)
        self.decoder = nn.ModuleList(
            DecoderLayer(chans[i + 1], chans[i], s, cd, causal=causal, last=(i == 0))
            for i, s in reversed(list(enumerate(config.strides)))
        )
        self.hearing_aid = HearingAid(config.sample_rate)
        self.post_init()
        # Start as the identity rebalancer: the correction begins at zero.
        nn.init.zeros_(self.decoder[-1].up.proj.weight)

    def _init_weights(self, module: nn.Module) -> None:  # transformers hook; keep torch defaults
        return

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
    ) -> tuple[Tensor, dict | None]:
        """Rebalanced remix before the hearing aid ``(B, 2, T)``; T a multiple of ``block``.

        ``state`` carries a causal stream (None: start of the signal).
        """
        cfg = self.config
        presence = presence.to(mixture.dtype)
        cond = self.conditioning(gains_db, presence, listener)
        level = db_to_gain(level_adjustment_db(gains_db, presence > 0)).to(mixture.dtype)
        scale = 10 ** (cfg.input_gain_db / 20)
        state = state or {}
        new_state: dict = {}
        x = mixture * scale
        skips = []
        for i, layer in enumerate(self.encoder):
            x, new_state[f"enc{i}"] = layer(x, cond, state.get(f"enc{i}"))
            skips.append(x)
        x = self.to_dim(x)
        for i, layer in enumerate(self.transformer):
            x, new_state[f"tf{i}"] = layer(x, cond, state.get(f"tf{i}"))
        x = self.from_dim(x)
        for i, layer in enumerate(self.decoder):
            x, new_state[f"dec{i}"] = layer(x + skips.pop(), cond, state.get(f"dec{i}"))
        out = level[:, None, None] * mixture + x / scale
        return out, (new_state if cfg.causal else None)

    def forward(
        self,
        mixture: Tensor,
        gains_db: Tensor,
        presence: Tensor,
        audiogram: Tensor,
        ratio: Tensor,
        makeup_db: Tensor,
        hearing_aid: bool = True,
    ) -> Tensor:
        """Hearing-aid signal ``(B, 2, T)`` (or the remix before it with ``hearing_aid=False``).

        ``mixture (B, 2, T)`` at 44.1 kHz (any T: padded to a block internally), ``gains_db``
        and ``presence (B, 12)`` over :data:`model.cad2.SLOTS`, ``audiogram (B, 2, 8)`` dB HL,
        ``ratio``/``makeup_db (B, 2, 6)``.
        """
        length = mixture.shape[-1]
        pad = (-length) % self.config.block
        x = nn.functional.pad(mixture, (0, pad))
        remix, _ = self.remix(x, gains_db, presence, Listener(audiogram, ratio, makeup_db))
        remix = remix[..., :length]
        if not hearing_aid:
            return remix
        return self.hearing_aid(remix, ratio, makeup_db)
