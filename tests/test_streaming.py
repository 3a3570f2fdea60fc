"""Live streaming: any hop size reproduces the offline causal model (network + hearing aid)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model.apply import Request
from model.hearing_aid import HearingAid
from model.streaming import CompiledStep, Streamer, _cache_key, flat_state, settled_state
from model.tutti import TuttiConfig, TuttiModel
from tests.test_model import LAGGED, REACH_AT_HOP, SMALL


def _request() -> Request:
    return Request.from_gains(
        {"Violin_1": 6, "Cello": -3}, np.zeros((2, 8)), [[2.1, 1.5, 1.3, 1.5, 2.4, 3.7]] * 2,
        [[9.6, 11.9, 12.9, 16.4, 19.0, 28.0]] * 2, present=["Violin_1", "Viola", "Cello"])


@pytest.mark.parametrize(("layout", "hops"), [
    (SMALL, [1, 7, 220, 1000, 33]), (SMALL, [220]), (SMALL, [128]), (SMALL, [4410, 3]),
    (REACH_AT_HOP, [1, 7, 220, 1000, 33]), (LAGGED, [1, 7, 220, 1000, 33])],
    ids=["mixed", "220", "128", "long-short", "reach-mixed", "lagged-mixed"])
def test_stream_matches_offline(layout: dict, hops: list[int]) -> None:
    torch.manual_seed(0)
    model = TuttiModel(TuttiConfig(causal=True, **layout)).eval()
    torch.nn.init.normal_(model.band_head.weight, std=0.05)
    if model.decoder:
        torch.nn.init.normal_(model.decoder[-1].up.proj.weight, std=0.05)
    x = (0.02 * np.random.default_rng(0).standard_normal((2, 20_000))).astype(np.float32)
    request = _request()
    gains, presence, listener = request.tensors()
    with torch.no_grad():
        offline = model(torch.from_numpy(x)[None], gains, presence, listener.audiogram,
                        listener.ratio, listener.makeup_db)[0].numpy()
    streamer = Streamer(model, request)
    outs, start, i = [], 0, 0
    while start < x.shape[1]:
        hop = min(hops[i % len(hops)], x.shape[1] - start)
        out = streamer.process(x[:, start : start + hop])
        # Output never runs ahead of the input and lags it by less than one block.
        done = sum(o.shape[1] for o in outs) + out.shape[1]
        assert start + hop - streamer.latency - 1 <= done <= start + hop
        outs.append(out)
        start, i = start + hop, i + 1
    outs.append(streamer.flush())
    streamed = np.concatenate(outs, axis=1)
    assert streamed.shape == offline.shape
    assert np.abs(streamed - offline).max() <= 1e-5


def test_hearing_aid_stream_matches_forward() -> None:
    ha = HearingAid()
    x = 0.2 * np.random.default_rng(1).standard_normal((2, 9000))
    ratio, makeup = [[2.0, 1.5, 1.3, 1.5, 2.4, 3.7]] * 2, [[9.6, 11.9, 12.9, 16.4, 19, 28]] * 2
    whole = ha(torch.from_numpy(x)[None], torch.tensor(ratio)[None], torch.tensor(makeup)[None])
    outs, state = [], None
    for start in range(0, 9000, 700):
        y, state = ha.stream(x[:, start : start + 700], ratio, makeup, state)
        outs.append(y)
    # Float rounding only (the compressor's gain is updated multiplicatively within a block).
    whole = whole[0].numpy()
    assert np.abs(np.concatenate(outs, axis=1) - whole).max() <= 1e-7 * np.abs(whole).max()


def test_noncausal_model_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a causal model"):
        Streamer(TuttiModel(TuttiConfig(causal=False, **SMALL)), _request())


SLOTTED = dict(SMALL, slot_gains=True, slot_bands=8, slot_gate=True, slot_spectral=16,
               slot_context=3, gain_smooth_ms=10.0)
"""The shipped causal model's branches (slot gains, their spectral MLP, gain smoothing), small."""


def _slotted_model(**options: object) -> TuttiModel:
    """:data:`SLOTTED` (with ``options`` on top), its heads trained-looking (non-zero)."""
    torch.manual_seed(0)
    model = TuttiModel(TuttiConfig(causal=True, **SLOTTED, **options)).eval()
    for module in (model.decoder[-1].up.proj, model.slot_head, model.head):
        torch.nn.init.normal_(module.weight, std=0.05)
    with torch.no_grad():
        model.slot_scale.fill_(0.1)
    return model


def _stream(streamer: Streamer, x: np.ndarray, hops: list[int]) -> np.ndarray:
    outs, start, i = [], 0, 0
    while start < x.shape[1]:
        hop = min(hops[i % len(hops)], x.shape[1] - start)
        outs.append(streamer.process(x[:, start : start + hop]))
        start, i = start + hop, i + 1
    outs.append(streamer.flush())
    return np.concatenate(outs, axis=1)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[TuttiModel, CompiledStep, str]:
    """A small slotted model and its compiled step, tuned as a server builds it (AOTInductor:
    about 2.5 minutes, cold)."""
    model = _slotted_model()
    cache = str(tmp_path_factory.mktemp("compiled"))
    return model, CompiledStep.build(model, cache), cache


def test_slot_padding_is_exact() -> None:
    """A stream started with its slot request padded to every slot gives the same output."""
    model = _slotted_model()
    request = _request()
    x = (0.02 * np.random.default_rng(3).standard_normal((2, 4096))).astype(np.float32)
    gains, presence, listener = request.tensors()
    mixture = torch.from_numpy(x)[None]
    with torch.no_grad():
        plain, _ = model.remix_aligned(mixture, gains, presence, listener)
        padded, _ = model.remix_aligned(mixture, gains, presence, listener,
                                        model.stream_state(gains, presence, 12))
    assert padded.shape == plain.shape
    assert torch.equal(padded, plain)


def test_compiled_stream_matches_eager(compiled: tuple[TuttiModel, CompiledStep, str]) -> None:
    model, step, _ = compiled
    x = (0.02 * np.random.default_rng(4).standard_normal((2, 30_000))).astype(np.float32)
    hops = [220, 1, 219, 640, 128, 7, 300, 1500]  # 0 to 11 blocks at a time
    before = _stream(Streamer(model, _request()), x, hops)
    streamer = Streamer(model, _request(), step)
    fast = _stream(streamer, x, hops)
    # Every block after the first window (the state grows over it) runs compiled.
    settle = model.config.window + 2
    assert streamer.compiled_blocks >= x.shape[1] // model.config.block - settle - 12
    assert fast.shape == before.shape
    assert np.abs(fast - before).max() <= 1e-5 * max(1.0, float(np.abs(before).max()))
    # Building the step (tracing the model) left the eager path as it was.
    assert np.array_equal(_stream(Streamer(model, _request()), x, hops), before)


def test_compiled_min_phase_stream_matches_eager(tmp_path: Path) -> None:
    """With ``min_phase`` the compiled step takes a block's phase from its cos/sin basis (no
    FFT in the graph) and streams as the eager model does."""
    _assert_compiled_stream_matches_eager(_slotted_model(min_phase=True), tmp_path, seed=5)


def _assert_compiled_stream_matches_eager(model: TuttiModel, cache: Path, seed: int
                                          ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Streams 20,000 random samples through ``model`` eagerly and through its untuned compiled
    step (ATen's products: faster built), asserts the two agree with nearly every settled block
    compiled, and returns the input, the eager output and the hops."""
    step = CompiledStep.build(model, str(cache), tuned=False)
    x = (0.02 * np.random.default_rng(seed).standard_normal((2, 20_000))).astype(np.float32)
    hops = [220, 1, 640, 7, 1500]
    before = _stream(Streamer(model, _request()), x, hops)
    streamer = Streamer(model, _request(), step)
    fast = _stream(streamer, x, hops)
    assert streamer.compiled_blocks >= x.shape[1] // model.config.block - model.config.window - 14
    assert np.abs(fast - before).max() <= 1e-5 * max(1.0, float(np.abs(before).max()))
    return x, before, hops


def test_compiled_lagged_stream_matches_eager(tmp_path: Path) -> None:
    """A model whose gains lag a frame streams frame by frame through its compiled steps (one
    per length, 1 to 4 frames, and phase of the stream: the network's pending half block is in
    the state or not) as the eager model does, within its 219-sample look-ahead."""
    model = _slotted_model(fb_reach=92, gain_lag=1)
    x, before, hops = _assert_compiled_stream_matches_eager(model, tmp_path, seed=8)
    assert sorted(CompiledStep.build(model, str(tmp_path), tuned=False).runners) == [
        (n, phase) for n in (1, 2, 3, 4) for phase in (0, 1)]
    assert Streamer(model, _request()).latency == model.config.lookahead == 219


def test_compiled_slot_long_context_stream_matches_eager(tmp_path: Path) -> None:
    """With ``slot_long_ms`` the compiled step carries the exponential means' sums and weights
    and streams as the eager model does."""
    model = _slotted_model(slot_long_ms=(20.0, 200.0))
    torch.nn.init.normal_(model.slot_long_out.weight, std=0.5)
    x, before, hops = _assert_compiled_stream_matches_eager(model, tmp_path, seed=6)
    # The long context moves the output (the branch is live, not a zero projection).
    model.slot_long_out.weight.data.zero_()
    assert np.abs(_stream(Streamer(model, _request()), x, hops) - before).max() > 1e-4 * np.abs(
        before).max()


@pytest.mark.parametrize(("option", "value", "projection", "seed"), [
    ("slot_recurrent", 8, "slot_gru_out", 7),
    ("slot_attention_ms", 30.0, "slot_attention_out", 8),
    ("slot_pitch_window", 512, "slot_pitch_out", 9),
], ids=["gru", "attention", "pitch"])
def test_compiled_slot_context_stream_matches_eager(tmp_path: Path, option: str, value: float,
                                                    projection: str, seed: int) -> None:
    """With a slot GRU (``slot_recurrent``), slot attention (``slot_attention_ms``) or the
    pitch spectrum (``slot_pitch_window``) the compiled step carries its state (the GRU's
    hidden state; the attention's keys, full-size from the start; the spectrum's past samples)
    and streams as the eager model does."""
    model = _slotted_model(**{option: value})
    out = getattr(model, projection)
    torch.nn.init.normal_(out.weight, std=0.5)
    x, before, hops = _assert_compiled_stream_matches_eager(model, tmp_path, seed=seed)
    out.weight.data.zero_()  # the context moves the output: it is live
    assert np.abs(_stream(Streamer(model, _request()), x, hops) - before).max() > 1e-4 * np.abs(
        before).max()


def test_compiled_step_cache(compiled: tuple[TuttiModel, CompiledStep, str]) -> None:
    model, step, cache = compiled
    files = sorted(p.name for p in Path(cache).iterdir())
    assert len(files) == 2 and [f[-7:] for f in files] == ["-1-0.so", "-2-0.so"]  # steps-phase
    again = CompiledStep.build(model, cache)  # loads: nothing new is written
    assert sorted(p.name for p in Path(cache).iterdir()) == files
    state = settled_state(model, _request())
    gains, presence, _ = _request().tensors()
    block = torch.zeros(1, 2, 2 * model.config.block)
    out, new_state = again(block, gains, presence, state)
    ref, _ = step(block, gains, presence, state)
    assert torch.equal(out, ref)
    # The state comes back as the step takes it (same structure, contiguous): streams feed it
    # straight back.
    leaves, spec = torch.utils._pytree.tree_flatten(new_state)
    assert spec == torch.utils._pytree.tree_flatten(state)[1]
    assert all(t.is_contiguous() for t in leaves)
    # ... so a stream may keep it as its flat list of tensors.
    flat_out, flat_new = step.flat(block, gains, presence, flat_state(state))
    assert torch.equal(flat_out, out)
    assert all(torch.equal(a, b) for a, b in zip(flat_new, leaves, strict=True))
    with pytest.raises(ValueError, match=r"takes \[1, 2\] steps of 128 samples at phases \[0\], "
                       r"got 384 samples at phase 0"):
        step(torch.zeros(1, 2, 384), gains, presence, state)


def test_compiled_call_releases_the_gil(compiled: tuple[TuttiModel, CompiledStep, str]
                                        ) -> None:
    """While one thread loops on compiled calls, another Python thread keeps running (a call
    that held the GIL, as torch's own loader does, left it about 5 % of its pace here)."""
    model, step, _ = compiled
    state = settled_state(model, _request())
    gains, presence, _ = _request().tensors()
    block = torch.zeros(1, 2, 2 * model.config.block)
    stop = threading.Event()
    calls = [0]

    def call() -> None:
        while not stop.is_set():
            step(block, gains, presence, state)
            calls[0] += 1

    def pace(seconds: float) -> float:
        count, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            count += 1
        return count / seconds

    alone = pace(0.3)
    thread = threading.Thread(target=call)
    thread.start()
    try:
        shared = pace(0.6)
    finally:
        stop.set()
        thread.join()
    assert calls[0] > 0
    assert shared > 0.3 * alone, (shared, alone)


def test_compiled_step_key_follows_weights(compiled: tuple[TuttiModel, CompiledStep, str]
                                           ) -> None:
    """Weights are baked into the compiled code: changed weights get their own cache entry."""
    model, _, _ = compiled
    other = _slotted_model()
    assert _cache_key(other, True) == _cache_key(model, True)
    assert _cache_key(other, False) != _cache_key(model, True)  # tuned or not
    with torch.no_grad():
        other.slot_scale.fill_(0.2)
    assert _cache_key(other, True) != _cache_key(model, True)
    other.set_inference(gain_smooth_ms=5.0)
    assert _cache_key(other, True) != _cache_key(model, True)
    other = _slotted_model()
    other.config._name_or_path = "/somewhere/else"  # where it was loaded from does not count
    assert _cache_key(other, True) == _cache_key(model, True)


def test_compiled_step_needs_causal_cpu_model() -> None:
    with pytest.raises(ValueError, match="needs a causal model"):
        CompiledStep.build(TuttiModel(TuttiConfig(causal=False, **SMALL)))
