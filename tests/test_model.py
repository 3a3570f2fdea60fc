"""The Tutti network: causality, streaming equivalence, packaging round trip, chunked inference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model.apply import Request, load_model, remix
from model.cad2 import SLOTS
from model.layers import LocalAttention
from model.tutti import Listener, TuttiConfig, TuttiModel, exponential_mean, present_slots

SMALL = dict(channels=(8, 16, 32), strides=(8, 8, 2), dim=32, heads=2, ffn=64, layers=2,
             window=8, cond_dim=32, gain_bands=4)
LONG_HOP = dict(SMALL, channels=(8, 16, 32, 32), strides=(8, 8, 8, 2), fb_window=2048,
                fb_synthesis=1024)
"""The shipped non-causal layout: a 2048-sample STFT with hop 512 (gains at encoder level 2)."""
STATIC_EQ = dict(SMALL, static_eq=True)
"""With the band EQ from time-averaged features (causal: a running mean)."""
CONTEXT_EQ = dict(SMALL, context_eq=True)
"""With band gains from the transformer's output."""
SPECTRAL = dict(SMALL, spectral_hidden=16)
"""With the per-frame MLP from the log spectrum to per-bin gains."""
SLOT = dict(SMALL, slot_gains=True)
"""With the gain as the weighted RMS of the requested slot gains."""
SLOT_BANDS = dict(SLOT, slot_bands=16)
"""With the slot weights per band, spread to the bins."""
SLOT_GATE = dict(SLOT_BANDS, slot_gate=True)
"""With the slot log-gain scaled by a learned scalar (0 at the start)."""
SLOT_SPECTRAL = dict(SLOT, slot_spectral=16, slot_context=3)
"""With the slot weights from an MLP of the log spectrum (3 frames) and the head's features."""
SLOT_LONG = dict(SLOT_SPECTRAL, slot_long_ms=(20.0, 100.0))
"""With the slot MLP also reading features averaged over the past (20 and 100 ms)."""
SLOT_GRU = dict(SLOT_SPECTRAL, slot_recurrent=8)
"""With the slot MLP also reading a GRU over its frames."""
SLOT_ATTENTION = dict(SLOT_SPECTRAL, slot_attention_ms=20.0)
"""With the slot MLP also reading an attention layer over its last 20 ms of frames."""
SLOT_PITCH = dict(SLOT_SPECTRAL, slot_pitch_window=512)
"""With the slot MLP also reading a 512-sample log-frequency spectrum."""
SLOT_GEOMETRIC = dict(SLOT_BANDS, slot_mean_order=0.0)
"""With the slot gain as the weighted geometric mean of the requested gains."""
SMOOTH = dict(SLOT_BANDS, gain_smooth_ms=10.0)
"""With the log-gain smoothed over frames."""
MIN_PHASE = dict(SMOOTH, min_phase=True)
"""With the gain applied as a minimum-phase filter per frame."""
LONG_SYNTHESIS = dict(SLOT_GRU, strides=(6, 6, 3), fb_synthesis=216)
"""conf/train_causal_long_synthesis.yaml's layout: a 216-sample synthesis window, the bottleneck
at its hop (108 samples: no decoder level), look-ahead 215 samples."""
REACH = dict(SLOT_GRU, fb_reach=28)
"""The shipped causal layout with its synthesis spans ending 28 samples before their frames'
ends: look-ahead 127 + 64 + 28 = 219 samples."""
REACH_AT_HOP = dict(SLOT_GRU, channels=(8, 16), strides=(8, 8), fb_reach=92)
"""The bottleneck at the hop (64 samples) and a reach of 92: look-ahead 63 + 64 + 92 = 219
samples; the output's delay (156) is longer than a block."""
LAGGED = dict(SLOT_GRU, fb_reach=92, gain_lag=1)
"""The shipped causal layout with its gains applied one frame (64 samples) late: the network
looks no further ahead than a frame's end, which leaves a reach of 92 (look-ahead 127 + 64 + 92
- 64 = 219 samples)."""
HEAD_LAYOUTS = dict(argnames="layout",
                    argvalues=[SMALL, STATIC_EQ, CONTEXT_EQ, SPECTRAL, SLOT, SLOT_BANDS,
                               SLOT_GATE, SLOT_SPECTRAL, SLOT_LONG, SLOT_GRU, SLOT_ATTENTION,
                               SLOT_PITCH, SMOOTH, MIN_PHASE, LONG_SYNTHESIS, REACH, REACH_AT_HOP,
                               LAGGED],
                    ids=["default", "static_eq", "context_eq", "spectral", "slot_gains",
                         "slot_bands", "slot_gate", "slot_spectral", "slot_long", "slot_gru",
                         "slot_attention", "slot_pitch", "smooth", "min_phase",
                         "long_synthesis", "reach", "reach_at_hop", "lagged"])
LOOKAHEAD = 220  # samples at 44.1 kHz (5 ms)


def _model(causal: bool, layout: dict = SMALL) -> TuttiModel:
    torch.manual_seed(0)
    model = TuttiModel(TuttiConfig(causal=causal, **layout)).eval()
    # A trained-looking (non-zero) gain head.
    torch.nn.init.normal_(model.head.weight, std=0.05)
    torch.nn.init.normal_(model.band_head.weight, std=0.05)
    if model.config.static_eq:
        torch.nn.init.normal_(model.eq_head.weight, std=0.05)
    if model.config.context_eq:
        torch.nn.init.normal_(model.context_head.weight, std=0.05)
    if model.config.spectral_hidden:
        torch.nn.init.normal_(model.spectral_out.weight, std=0.05)
    if model.config.slot_gains:
        torch.nn.init.normal_(model.slot_head.weight, std=0.5)
    if model.config.slot_gate:
        torch.nn.init.constant_(model.slot_scale, 0.08)
    if model.config.slot_spectral:
        torch.nn.init.normal_(model.slot_presence.proj.weight, std=0.5)
    if model.config.slot_long_ms:
        torch.nn.init.normal_(model.slot_long_out.weight, std=0.5)
    if model.config.slot_recurrent:
        torch.nn.init.normal_(model.slot_gru_out.weight, std=0.5)
    if model.config.slot_attention_ms:
        torch.nn.init.normal_(model.slot_attention_out.weight, std=0.5)
    if model.config.slot_pitch_window:
        torch.nn.init.normal_(model.slot_pitch_out.weight, std=0.5)
    return model


def _inputs(batch: int = 1, seconds: float = 1.0):
    g = torch.Generator().manual_seed(1)
    n = int(seconds * 44100)
    mixture = 0.02 * torch.randn(batch, 2, n, generator=g)
    gains = torch.zeros(batch, len(SLOTS))
    gains[:, SLOTS.index("Violin_1")] = 6.0
    gains[:, SLOTS.index("Cello")] = -3.0
    presence = torch.zeros(batch, len(SLOTS))
    presence[:, [SLOTS.index(s) for s in ("Violin_1", "Viola_1", "Cello")]] = 1.0
    audiogram = torch.tensor([[45, 45, 35, 45, 60, 65, 70, 65],
                              [40, 40, 45, 45, 60, 65, 80, 80]], dtype=torch.float32)
    ratio = torch.tensor([[2.1, 1.5, 1.3, 1.5, 2.4, 3.7]] * 2)
    makeup = torch.tensor([[9.6, 11.9, 12.9, 16.4, 19.0, 28.0]] * 2)
    def expand(t: torch.Tensor) -> torch.Tensor:
        return t.expand(batch, *t.shape)

    return mixture, gains, presence, expand(audiogram), expand(ratio), expand(makeup)


@pytest.mark.parametrize(**HEAD_LAYOUTS)
def test_causal_model_sees_at_most_5ms_ahead(layout: dict) -> None:
    """No output sample depends on input more than ``config.lookahead`` (<= 220) samples
    ahead."""
    model = _model(causal=True, layout=layout)
    ahead = model.config.lookahead
    assert ahead <= LOOKAHEAD
    mixture, *cond = _inputs()
    with torch.no_grad():
        y = model(mixture, *cond)
        for t0 in (10_000, 22_050, 30_001):
            perturbed = mixture.clone()
            perturbed[..., t0 + ahead + 1 :] += 0.02 * torch.randn_like(
                perturbed[..., t0 + ahead + 1 :])
            y2 = model(perturbed, *cond)
            # Bit-exact but for the rounding of the hearing aid's FFT convolution.
            past = (y[..., : t0 + 1] - y2[..., : t0 + 1]).abs().max()
            assert past <= 1e-6 * y.abs().max(), (t0, past)
            assert not torch.allclose(y[..., t0 + ahead + 1 :], y2[..., t0 + ahead + 1 :])


@pytest.mark.parametrize("name", ["static_eq", "context_eq"])
def test_eq_heads_need_bands(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} needs gain_bands"):
        TuttiModel(TuttiConfig(**dict(SMALL, gain_bands=0, **{name: True})))


@pytest.mark.parametrize("name", ["slot_gate", "slot_spectral"])
def test_slot_options_need_slot_gains(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} needs slot_gains"):
        TuttiModel(TuttiConfig(**dict(SMALL, **{name: 8})))


@pytest.mark.parametrize(("options", "message"), [
    (dict(SLOT, slot_long_ms=(100.0,)), "slot_long_ms needs slot_spectral"),
    (dict(SLOT_SPECTRAL, slot_long_ms=(100.0, 0.0)),
     r"slot_long_ms must be > 0 ms, got \[100.0, 0.0\]"),
    (dict(SLOT, slot_attention_ms=500.0), "slot_attention_ms needs slot_spectral"),
    (dict(SLOT_SPECTRAL, slot_attention_ms=-5.0), "slot_attention_ms must be >= 0 ms, got -5.0"),
    (dict(SLOT, slot_pitch_window=4096), "slot_pitch_window needs slot_spectral"),
    (dict(SLOT_SPECTRAL, slot_pitch_window=1000),
     "slot_pitch_window must be a multiple of the hop 64 above it, got 1000"),
])
def test_slot_long_context_options_are_checked(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TuttiModel(TuttiConfig(**options))


def test_attention_with_padded_past_is_attention_after_zero_frames() -> None:
    """``pad_past``: a causal attention over ``x`` equals the plain one over ``window`` frames of
    zero input followed by ``x`` (its output there), in one pass or streamed in blocks."""
    torch.manual_seed(0)
    attention = LocalAttention(16, 2, 10, causal=True, pad_past=True).eval()
    torch.nn.init.normal_(attention.qkv.bias, std=1.0)  # keys of zero input are not zero
    plain = LocalAttention(16, 2, 10, causal=True)
    plain.load_state_dict(attention.state_dict())
    x = torch.randn(2, 37, 16)
    with torch.no_grad():
        y, _ = attention(x)
        reference, _ = plain(torch.cat([torch.zeros(2, 10, 16), x], dim=1))
        outs, state = [], None
        for start, stop in [(0, 1), (1, 4), (4, 20), (20, 37)]:
            out, state = attention(x[:, start:stop], state)
            outs.append(out)
    assert torch.allclose(y, reference[:, 10:], atol=1e-6)
    assert torch.allclose(torch.cat(outs, dim=1), y, atol=1e-6)
    assert not torch.allclose(y, plain(x)[0], atol=1e-3)  # the padding is not masked out


def test_exponential_mean_streams_exactly() -> None:
    """Every frame is the decay-weighted mean of the frames so far, in one pass or in blocks
    of any size (the state carries the sum and its weight)."""
    x = torch.randn(2, 3, 150, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    decay = 0.95
    expected = torch.stack([
        (x[..., : t + 1] * decay ** torch.arange(t, -1, -1, dtype=x.dtype)).sum(-1)
        / (decay ** torch.arange(t + 1, dtype=x.dtype)).sum() for t in range(150)], dim=-1)
    whole, _ = exponential_mean(x, decay, block=64)
    assert torch.allclose(whole, expected, atol=1e-12)
    state, parts = None, []
    for a, b in [(0, 1), (1, 40), (40, 41), (41, 150)]:
        part, state = exponential_mean(x[..., a:b], decay, state, block=16)
        parts.append(part)
    assert torch.allclose(torch.cat(parts, -1), expected, atol=1e-12)


def test_pitch_branch_starts_where_its_model_was() -> None:
    """A model given ``slot_pitch_window`` and the weights of one without it (its new
    projection at zero) remixes as that one did; with the projection trained, it moves."""
    mixture, *cond = _inputs()
    plain = _model(causal=True, layout=SLOT_SPECTRAL)
    pitched = TuttiModel(TuttiConfig(causal=True, **SLOT_PITCH)).eval()
    missing, unexpected = pitched.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["slot_pitch_in.conv.bias", "slot_pitch_in.conv.weight",
                               "slot_pitch_out.bias", "slot_pitch_out.weight"] and not unexpected
    with torch.no_grad():
        expected = plain(mixture, *cond)
        assert torch.equal(pitched(mixture, *cond), expected)
        torch.nn.init.normal_(pitched.slot_pitch_out.weight, std=0.5)
        assert (pitched(mixture, *cond) - expected).abs().max() > 1e-3 * expected.abs().max()


def test_slot_context_must_be_a_frame_or_more() -> None:
    with pytest.raises(ValueError, match="slot_context must be >= 1 frame, got 0"):
        TuttiModel(TuttiConfig(**dict(SLOT_SPECTRAL, slot_context=0)))


@pytest.mark.parametrize("layout", [STATIC_EQ, CONTEXT_EQ, SPECTRAL, SLOT_GATE],
                         ids=["static_eq", "context_eq", "spectral", "slot_gate"])
def test_new_heads_start_as_the_identity(layout: dict) -> None:
    """A new head adds nothing: fine-tuning from a model without one starts where it was."""
    mixture, *cond = _inputs()
    torch.manual_seed(0)
    plain = TuttiModel(TuttiConfig(**SMALL)).eval()
    with_eq = TuttiModel(TuttiConfig(**layout)).eval()
    with_eq.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.normal_(plain.head.weight, std=0.05)
    with_eq.head.load_state_dict(plain.head.state_dict())
    with torch.no_grad():
        assert torch.equal(plain(mixture, *cond, hearing_aid=False),
                           with_eq(mixture, *cond, hearing_aid=False))


def test_gain_smoothing_follows_a_changed_time_constant() -> None:
    """``set_inference(gain_smooth_ms=...)`` takes effect on a model that has smoothed before."""
    torch.manual_seed(0)
    log_gain = torch.randn(1, 2, 80, 5)
    model = TuttiModel(TuttiConfig(causal=True, **dict(SMALL, gain_smooth_ms=10.0)))
    before = model._smooth_gains(log_gain, None)[0]
    model.set_inference(gain_smooth_ms=30.0)
    fresh = TuttiModel(TuttiConfig(causal=True, **dict(SMALL, gain_smooth_ms=30.0)))
    after = model._smooth_gains(log_gain, None)[0]
    assert torch.equal(after, fresh._smooth_gains(log_gain, None)[0])
    assert not torch.allclose(after, before, atol=1e-3)


def test_gain_smoothing_keeps_steady_gains_and_lags_steps() -> None:
    """``gain_smooth_ms``: a constant log-gain passes unchanged (so a 0 dB request stays the
    identity); a step rises monotonically, about 63 % of the way after one time constant and
    all of it after five; streamed in pieces it equals one pass; each frame is the
    exponentially weighted mean of the frames up to it."""
    model = TuttiModel(TuttiConfig(causal=True, **dict(SMALL, gain_smooth_ms=10.0)))
    hop_ms = 1e3 * 64 / 44100
    steady = torch.full((1, 2, 50, 5), 0.7)
    out, _ = model._smooth_gains(steady, None)
    assert torch.allclose(out, steady, atol=1e-6)
    step = torch.zeros(1, 2, 60, 5)
    step[:, :, 20:] = 1.0
    out, _ = model._smooth_gains(step, None)
    rise = out[0, 0, 19:, 0]
    assert rise[0] == 0 and torch.all(rise.diff() >= 0)
    tau = round(10.0 / hop_ms)
    assert 0.55 < rise[tau] < 0.72, rise[tau]
    assert rise[-1] > 0.99
    first, state = model._smooth_gains(step[:, :, :23], None)
    middle, state = model._smooth_gains(step[:, :, 23:23], state)  # an empty piece
    second, _ = model._smooth_gains(step[:, :, 23:], state)
    assert middle.shape[2] == 0
    assert torch.allclose(torch.cat([first, second], dim=2), out, atol=1e-6)
    # Long signals (several blocks), against the weighted mean written out frame by frame.
    noise = torch.randn(1, 2, 300, 5, dtype=torch.float64)
    out, _ = model._smooth_gains(noise, None)
    decay = math.exp(-hop_ms / 10.0)
    for t in (0, 1, 63, 64, 65, 200, 299):
        weights = decay ** torch.arange(t, -1, -1, dtype=torch.float64)
        reference = (noise[:, :, : t + 1] * weights[:, None]).sum(2) / weights.sum()
        assert torch.allclose(out[:, :, t], reference, atol=1e-9), t


def test_non_causal_gain_smoothing_has_zero_phase() -> None:
    """Non-causal, the window runs forwards and backwards: a constant passes unchanged, an
    impulse spreads symmetrically around its frame and a step is smoothed without lag (half
    way at the step); causal, it is the one-sided window alone."""
    config = dict(SMALL, gain_smooth_ms=10.0)
    model = TuttiModel(TuttiConfig(causal=False, **config))
    steady = torch.full((1, 2, 50, 5), -0.3)
    assert torch.allclose(model._smooth_gains(steady, None)[0], steady, atol=1e-6)
    impulse = torch.zeros(1, 2, 161, 5)  # far from the ends (the mean there has fewer frames)
    impulse[:, :, 80] = 1.0
    out = model._smooth_gains(impulse, None)[0][0, 0, :, 0]
    assert torch.allclose(out, out.flip(0), atol=1e-6) and out.argmax() == 80
    assert 0 < out[80] < 0.5 and out[70] > 0  # spread over the frames on both sides
    step = torch.zeros(1, 2, 200, 5)
    step[:, :, 100:] = 1.0
    out = model._smooth_gains(step, None)[0][0, 0, :, 0]
    assert torch.allclose(out[100:110] + out[90:100].flip(0), torch.ones(10), atol=1e-5)
    assert torch.all(out.diff() >= -1e-6) and 0.3 < out[99] < 0.5 < out[100] < 0.7
    causal = TuttiModel(TuttiConfig(causal=True, **config))
    one_sided = causal._smooth_gains(step, None)[0][0, 0, :, 0]
    assert torch.all(one_sided[:100] == 0) and torch.all(one_sided[100:].diff() >= 0)
    assert 0.1 < one_sided[100] < 0.2 and one_sided[120] > 0.9  # lags the step


def test_present_slots_pads_with_absent_ones() -> None:
    presence = torch.zeros(3, len(SLOTS))
    presence[0, [2, 5, 9]] = 1
    presence[1, [0, 11]] = 1
    index, valid = present_slots(presence)
    assert index.tolist()[:2] == [[2, 5, 9], [0, 11, index[1, 2].item()]]
    assert valid.tolist() == [[True] * 3, [True, True, False], [False] * 3]
    assert not presence[1, index[1, 2]]


@pytest.mark.parametrize("layout", [SLOT, SLOT_BANDS, SLOT_SPECTRAL, SLOT_GEOMETRIC,
                                    dict(SLOT_BANDS, slot_mean_order=1.0)],
                         ids=["per_bin", "bands", "spectral", "geometric", "mean"])
@pytest.mark.parametrize("causal", [True, False])
def test_slot_gains_follow_the_request(causal: bool, layout: dict) -> None:
    """The slot head's gain is a weighted mean of the requested gains: 0 dB everywhere is the
    identity whatever the weights; a slot that holds a bin gets its own gain there; raising a
    slot's gain never lowers a bin's gain; and nothing present is 0 dB too."""
    model = _model(causal, layout)
    width = model.config.slot_bands or model.filterbank.bins
    for head in (model.head, model.band_head):  # the slot head alone
        torch.nn.init.zeros_(head.weight)
    mixture, gains, presence, *rest = _inputs()
    with torch.no_grad():
        flat = model(mixture, torch.zeros_like(gains), presence, *rest, hearing_aid=False)
        assert torch.allclose(flat, mixture, atol=1e-7)
        x = torch.randn(1, model.slot_head.in_channels, 20)
        empty, _ = model.slot_log_gain(x, gains, torch.zeros_like(presence))
        assert torch.equal(empty, torch.zeros_like(empty))
        base, log_w = model.slot_log_gain(x, gains, presence)
        assert log_w.shape == (1, 3, 2, 20, width)
        assert torch.allclose(log_w.exp().sum(1), torch.ones(()), atol=1e-5)
        for slot in ("Violin_1", "Viola_1", "Cello"):
            louder = gains.clone()
            louder[0, SLOTS.index(slot)] += 6.0
            raised, _ = model.slot_log_gain(x, louder, presence)
            assert (raised >= base - 1e-6).all() and (raised > base + 1e-3).any()
        # All weight on the cello: its -3 dB everywhere.
        model.slot_head.bias.view(len(SLOTS), 2 * width)[SLOTS.index("Cello")] = 30.0
        cello, _ = model.slot_log_gain(x, gains, presence)
    assert cello.shape == (1, 2, 20, model.filterbank.bins)
    assert torch.allclose(cello, torch.full_like(cello, -3 * math.log(10) / 20), atol=1e-4)


def test_slot_mean_order_sets_the_power_mean() -> None:
    """Order 2 is the weighted RMS of the amplitude gains, 0 their weighted geometric mean, and
    a lower order never gives a higher gain (the power-mean inequality)."""
    _, gains, presence, *_ = _inputs()
    logs = {}
    for order in (0.0, 0.5, 1.0, 2.0):
        model = _model(True, dict(SLOT_BANDS, slot_mean_order=order))
        seed = torch.Generator().manual_seed(1)
        x = torch.randn(1, model.slot_head.in_channels, 12, generator=seed)
        with torch.no_grad():
            logs[order], log_w = model.slot_log_gain(x, gains, presence)
    index, _ = present_slots(presence)
    amp = 10 ** (gains.gather(1, index) / 20)[:, :, None, None, None]
    w = log_w.exp()  # the same weights for every order (same seed and input)
    rms = 0.5 * ((w * amp**2).sum(1)).log() @ model.slot_band_to_bin
    geometric = (w * amp.log()).sum(1) @ model.slot_band_to_bin
    assert torch.allclose(logs[2.0], rms, atol=1e-5)
    assert torch.allclose(logs[0.0], geometric, atol=1e-5)
    for low, high in ((0.0, 0.5), (0.5, 1.0), (1.0, 2.0)):
        assert (logs[low] <= logs[high] + 1e-6).all() and (logs[low] < logs[high] - 1e-3).any()


def test_slot_mean_order_is_checked() -> None:
    with pytest.raises(ValueError, match="slot_mean_order must be in \\[0, 4\\], got -1.0"):
        TuttiModel(TuttiConfig(**dict(SLOT_BANDS, slot_mean_order=-1.0)))


def test_slot_power_keeps_each_frames_power() -> None:
    """The slot-weight targets on bands hold the same power per frame as on bins, on the
    frames of the gains."""
    mixture, *_ = _inputs(batch=2, seconds=0.5)
    per_bin = _model(True, SLOT).slot_power(mixture)
    bands = _model(True, SLOT_BANDS).slot_power(mixture)
    assert bands.shape == (*per_bin.shape[:-1], 16)
    assert torch.allclose(bands.sum(-1), per_bin.sum(-1), rtol=1e-4)


def test_noncausal_model_uses_the_future() -> None:
    model = _model(causal=False)
    mixture, *cond = _inputs()
    with torch.no_grad():
        y = model(mixture, *cond, hearing_aid=False)
        perturbed = mixture.clone()
        perturbed[..., 30_000:] += 0.02 * torch.randn_like(perturbed[..., 30_000:])
        y2 = model(perturbed, *cond, hearing_aid=False)
    # Output more than 5 ms before the change moves (unaffected samples stay bit-exact).
    assert torch.equal(y[..., :20_000], y2[..., :20_000])
    before = slice(29_000, 30_000 - LOOKAHEAD)
    assert not torch.equal(y[..., before], y2[..., before])


@pytest.mark.parametrize(**HEAD_LAYOUTS)
def test_remix_streams_with_state(layout: dict) -> None:
    model = _model(causal=True, layout=layout)
    mixture, gains, presence, audiogram, ratio, makeup = _inputs()
    listener = Listener(audiogram, ratio, makeup)
    block = model.config.block
    x = mixture[..., : block * 300]
    with torch.no_grad():
        offline, _ = model.remix(x, gains, presence, listener)
        outs, state = [], None
        for n_blocks in [1, 3, 7, 2, 50, 1, 236]:
            start = sum(o.shape[-1] for o in outs)
            y, state = model.remix(x[..., start : start + n_blocks * block], gains, presence,
                                   listener, state)
            outs.append(y)
    streamed = torch.cat(outs, dim=-1)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max() <= 1e-5


@pytest.mark.parametrize("layout", [SMALL, LONG_HOP, dict(SMALL, min_phase=True)],
                         ids=["hop64", "hop512", "min_phase"])
def test_unit_gain_is_the_level_adjusted_mixture(layout: dict) -> None:
    model = TuttiModel(TuttiConfig(**layout)).eval()  # fresh: the gain head starts at 0 dB
    mixture, gains, presence, audiogram, ratio, makeup = _inputs()
    with torch.no_grad():
        y = model(mixture, gains, presence, audiogram, ratio, makeup, hearing_aid=False)
    level = 10 ** (-10 * np.log10((10 ** 0.6 + 1 + 10 ** -0.3) / 3) / 20)
    assert torch.allclose(y, mixture * level, atol=1e-7)


@pytest.mark.parametrize("layout", [SMALL, SLOT_PITCH], ids=["default", "slot_pitch"])
def test_save_and_load_round_trip(tmp_path: Path, layout: dict) -> None:
    """Saved and loaded offline (transformers builds the model on the meta device first)."""
    model = _model(causal=True, layout=layout)
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    assert loaded.config.causal and loaded.config.channels == list(SMALL["channels"])
    assert loaded.config.slot_pitch_window == layout.get("slot_pitch_window", 0)
    mixture, *cond = _inputs(seconds=0.3)
    with torch.no_grad():
        assert torch.equal(model(mixture, *cond), loaded(mixture, *cond))
    with pytest.raises(FileNotFoundError, match="not a Tutti model folder"):
        load_model(tmp_path)


def test_long_hop_layout() -> None:
    """The non-causal layout's filterbank frames are its encoder's level-2 frames."""
    config = TuttiConfig(**LONG_HOP)
    assert (config.mask_level, config.delay, config.block) == (2, 512, 1024)
    with pytest.raises(ValueError, match="no encoder level has the filterbank hop 256"):
        TuttiModel(TuttiConfig(**dict(LONG_HOP, fb_synthesis=512)))


@pytest.mark.parametrize(("layout", "causal", "chunk", "overlap"), [
    (SMALL, False, 1.0, 0.25), (SMALL, True, 1.0, 0.25), (LONG_HOP, False, 2.0, 1.0),
    (REACH_AT_HOP, True, 1.0, 0.25), (LAGGED, True, 1.0, 0.25)],
    ids=["hop64-noncausal", "hop64-causal", "hop512-noncausal", "reach-delay-over-a-block",
         "lagged"])
def test_chunked_inference_matches_whole_pass(layout: dict, causal: bool, chunk: float,
                                              overlap: float) -> None:
    model = _model(causal, layout)
    mixture, gains, presence, audiogram, ratio, makeup = _inputs(seconds=4.0)
    request = Request(gains[0].numpy(), presence[0].numpy(), audiogram[0].numpy(),
                      ratio[0].numpy(), makeup[0].numpy())
    x = mixture[0].numpy()
    whole = remix(model, x, request, chunk_seconds=10.0)
    chunked = remix(model, x, request, chunk_seconds=chunk, overlap_seconds=overlap)
    assert whole.shape == x.shape
    if causal:  # the streamed chunks end as the one pass does, however long the delay
        with torch.no_grad():
            one_pass = model(mixture, gains, presence, audiogram, ratio, makeup,
                             hearing_aid=False)[0].numpy()
        assert np.abs(whole - one_pass).max() <= 1e-5
    # Causal chunks carry state (exact); non-causal chunks cross-fade (near-exact here,
    # since the receptive field is shorter than the overlap).
    assert np.abs(whole - chunked).max() <= (1e-5 if causal else 1e-3 * np.abs(whole).max())
