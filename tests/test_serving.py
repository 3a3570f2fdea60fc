"""Serving building blocks without a server: config, params, audio decoding, batching, live."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from model.apply import Request, hearing_aid, prepare_input, rebalance, remix
from model.tutti import TuttiConfig, TuttiModel
from serving.config import ConfigError, batching_on, load_config
from serving.engine import Engine, Job
from serving.live import LiveSession, control_message
from serving.media import decode, encode, wav_header
from serving.params import (
    ClientError,
    LiveParams,
    RebalanceParams,
    load_presets,
    parse_params,
    resolve,
)
from tests.test_model import SMALL


@pytest.fixture(scope="module")
def cfg():
    return load_config(overrides=[])


@pytest.fixture(scope="module")
def presets(cfg):
    return load_presets(cfg)


@pytest.fixture(scope="module")
def engine() -> Engine:
    torch.manual_seed(0)
    models = {}
    for causal in (False, True):
        m = TuttiModel(TuttiConfig(causal=causal, **SMALL)).eval()
        torch.nn.init.normal_(m.head.weight, std=0.05)  # a non-zero gain head
        models[causal] = m
    return Engine(models, bucket_seconds=0.25, chunk_seconds=1.0, overlap_seconds=0.25)


def _wav(signal: np.ndarray, rate: int = 44100, fmt: str = "WAV",
         subtype: str = "FLOAT") -> io.BytesIO:
    buf = io.BytesIO()
    sf.write(buf, signal.T, rate, format=fmt, subtype=subtype)
    buf.seek(0)
    return buf


def _noise(n: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    return (0.05 * np.random.default_rng(seed).standard_normal((channels, n))).astype(np.float32)


def _request(presets, **kw) -> Request:
    params = parse_params(RebalanceParams, {"gains": {"Violin_1": 6, "Cello": -3}, **kw})
    return resolve(params, presets, load_config(overrides=[]))


def test_config_overrides_and_validation(tmp_path) -> None:
    cfg = load_config(overrides=["limits.max_live_sessions=3", "batching.enabled=false"])
    assert cfg.limits.max_live_sessions == 3 and cfg.batching.enabled is False
    extra = tmp_path / "o.yaml"
    extra.write_text("limits:\n  max_upload_mb: 5\n")
    assert load_config(extra, overrides=[]).limits.max_upload_mb == 5
    with pytest.raises(ConfigError, match="max_batch_size"):
        load_config(overrides=["batching.max_batch_size=1"])
    with pytest.raises(ConfigError, match="batching.enabled"):
        load_config(overrides=["batching.enabled=sometimes"])
    with pytest.raises(ConfigError, match="streaming.device"):
        load_config(overrides=["streaming.device=tpu"])
    for bad in ("cuda:", "cuda:x", "cuda1", "gpu"):
        with pytest.raises(ConfigError, match="models.device"):
            load_config(overrides=[f"models.device={bad}"])
    # a device index is a name the config takes on any host (the runtime checks the machine)
    assert load_config(overrides=["models.device=cuda:1"]).models.device == "cuda:1"
    gpu = torch.cuda.is_available()
    for value, on in (("true", True), ("false", False), ("auto", gpu)):
        assert batching_on(load_config(overrides=[f"batching.enabled={value}"])) is on
    assert batching_on(load_config(overrides=["batching.enabled=auto", "models.device=cpu"])) \
        is False


def test_presets_are_the_training_audiograms(presets) -> None:
    from training.listeners import standard_audiogram  # the tests may import training/

    for preset_id, preset in presets.items():
        expected = standard_audiogram(preset_id)
        assert np.array_equal(preset.audiogram, np.stack([expected, expected])), preset_id
        assert len(preset.compressor["cr_l"]) == 6
    assert max(presets["NH"].compressor["gain_l"]) < max(presets["N4"].compressor["gain_l"])


def test_resolve_listener_forms(presets) -> None:
    by_preset = _request(presets, listener={"preset": "N2"})
    audiogram = presets["N2"].audiogram
    by_audiogram = _request(presets, listener={"audiogram": {
        "left": audiogram[0].tolist(), "right": audiogram[1].tolist()}})
    assert np.array_equal(by_preset.ratio, by_audiogram.ratio)
    assert np.array_equal(by_preset.makeup_db, by_audiogram.makeup_db)
    comp = {"cr_l": [2] * 6, "gain_l": [10] * 6, "cr_r": [1.5] * 6, "gain_r": [5] * 6}
    by_comp = _request(presets, listener={"compressor": comp})
    assert by_comp.ratio[1, 0] == 1.5 and np.all(by_comp.audiogram == 0)
    req = _request(presets, instruments=["Violin_1", "Viola", "Cello"])
    assert req.presence.sum() == 3 and req.gains_db.sum() == 3


@pytest.mark.parametrize("params, status, words", [
    ({"gains": {"Tuba": 3}}, 422, "unknown instrument 'Tuba'"),
    ({"gains": {"Violin_1": 25}}, 422, "outside [-20, 20]"),
    ({"gains": {"Violin": 3, "Violin_1": 6}}, 422, "same instrument"),
    ({"gains": {"Violin_1": "loud"}}, 422, "gains.Violin_1"),
    ({"gains": {"Violin_1": float("nan")}}, 422, "gains.Violin_1"),
    ({}, 422, "at least one instrument"),
    ({"gains": {"Cello": 1}, "listener": {"preset": "X9"}}, 422, "unknown preset 'X9'"),
    ({"gains": {"Cello": 1}, "listener": {"audiogram": {"left": [10] * 7, "right": [10] * 8}}},
     422, "8 levels"),
    ({"gains": {"Cello": 1}, "listener": {"audiogram": {"left": [200] * 8, "right": [1] * 8}}},
     422, "outside [-10, 120]"),
    ({"gains": {"Cello": 1}, "listener": {}}, 422, "give one of"),
    ({"gains": {"Cello": 1}, "listener": {"compressor": {
        "cr_l": [0.5] * 6, "gain_l": [0] * 6, "cr_r": [1] * 6, "gain_r": [0] * 6}}},
     422, "cr_l"),
    ({"gains": {"Cello": 1}, "colour": "red"}, 422, "colour"),
    ({"gains": {"Cello": 1}, "format": "mp3"}, 422, "format"),
])
def test_bad_params_are_named(presets, params, status, words) -> None:
    with pytest.raises(ClientError) as err:
        resolve(parse_params(RebalanceParams, params), presets, load_config(overrides=[]))
    assert err.value.status == status and words in err.value.message


def test_decode_accepts_and_refuses() -> None:
    formats, limit = ["WAV", "FLAC", "OGG"], 10.0
    x = _noise(4410)
    for fmt, subtype in (("WAV", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")):
        signal, rate = decode(_wav(x, 22050, fmt, subtype), formats=formats, max_seconds=limit)
        assert signal.shape[0] == 2 and rate == 22050 and abs(signal.shape[1] - 4410) < 2000
    mono, _ = decode(_wav(x[:1]), formats=formats, max_seconds=limit)
    assert mono.shape == (1, 4410)
    cases = [
        (_wav(_noise(100, channels=3)), 422, "3 channels"),
        (_wav(np.full((2, 10), np.nan, np.float32)), 422, "NaN"),
        (_wav(_noise(44100 * 11)), 413, "limit is 10 s"),
        (_wav(x, fmt="AIFF", subtype="PCM_16"), 415, "AIFF"),
        (io.BytesIO(b"hello, this is text and not audio at all" * 10), 415, "not audio"),
        (io.BytesIO(_wav(x).getvalue()[:20] + b"\x00" * 50), 400, "corrupt WAV"),
        (io.BytesIO(b""), 400, "empty"),
    ]
    for file, status, words in cases:
        with pytest.raises(ClientError) as err:
            decode(file, formats=formats, max_seconds=limit)
        assert err.value.status == status and words in err.value.message, err.value.message


def test_prepare_input_edge_cases() -> None:
    x = _noise(48000, channels=1)
    y = prepare_input(x, 48000)
    assert y.shape == (2, 44100) and np.array_equal(y[0], y[1])
    assert np.all(prepare_input(np.zeros((2, 44100), np.float32), 44100) == 0)  # silence kept
    assert prepare_input(np.ones((2, 1), np.float32) * 0.1, 44100).shape == (2, 1)


def test_encode_formats() -> None:
    y = _noise(44100)
    for fmt in ("flac", "wav", "ogg"):
        data, rate = sf.read(io.BytesIO(encode(y, 44100, 32000, fmt)))
        assert rate == 32000 and abs(data.shape[0] - 32000) < 2000
    header = wav_header(10, 44100)
    assert len(header) == 44 and header[:4] == b"RIFF"


def test_batching_is_exact_and_independent(engine, presets) -> None:
    req_a = _request(presets, listener={"preset": "N3"})
    req_b = _request(presets, listener={"preset": "S2"}, gains={"Flute": -6})
    a, b = _noise(30_000, seed=1), _noise(25_000, seed=2)
    for causal in (False, True):
        alone = engine.run([Job(a, req_a, causal)])[0]
        together = engine.run([Job(b, req_b, causal), Job(a, req_a, causal)])
        assert alone.shape == a.shape and together[0].shape == b.shape
        assert np.abs(together[1] - alone).max() < 1e-5  # batch composition changes nothing
        reference = rebalance(engine.models[causal], a, req_a)
        err = np.abs(alone - reference)
        if causal:  # zero padding after the end is exact for a causal model
            assert err.max() < 1e-5
        else:  # the non-causal edge sees more silence: only the last ~0.1 s may move
            assert err[:, : -4410].max() < 1e-4
    long = _noise(60_000, seed=3)  # > chunk_seconds: runs alone through model.apply.rebalance
    for causal in (False, True):
        out = engine.run([Job(long, req_a, causal), Job(a, req_a, causal)])
        assert np.abs(out[0] - rebalance(engine.models[causal], long, req_a)).max() < 1e-6


def test_stream_equals_rebalance(engine, presets) -> None:
    req = _request(presets, listener={"preset": "N1"})
    x = _noise(70_000, seed=4)
    for causal in (False, True):
        pieces = list(engine.stream(x, req, causal, causal_chunk_seconds=0.5))
        assert len(pieces) > 1
        streamed = np.concatenate(pieces, axis=1)
        # The CLI's computation with the engine's windows (non-causal windows cross-fade).
        model = engine.models[causal]
        mixed = remix(model, x, req, engine.chunk_seconds, engine.overlap_seconds)
        assert np.abs(streamed - hearing_aid(model, mixed, req)).max() < 1e-5


def test_live_session_at_48k(engine, presets) -> None:
    from model.audio import resample

    params = parse_params(LiveParams, {"gains": {"Cello": 3}, "sample_rate": 48000})
    req = resolve(params, presets, load_config(overrides=[]))
    session = LiveSession(engine.models[True], req, sample_rate=48000)
    # Music-like: energy below 8 kHz (the live resampler is cheap near Nyquist).
    x = resample(_noise(16_000, seed=6), 16000, 48000)
    out, start = [], 0
    for n in (240, 1, 1000, 4799, 240, 41_720):
        out.append(session.process(session.decode(
            np.ascontiguousarray(x[:, start : start + n].T).astype("<f4").tobytes())))
        start += n
    out.append(session.flush())
    y = np.frombuffer(b"".join(out), "<f4").reshape(-1, 2).T
    assert y.shape == (2, 48_000) and session.end_message()["samples_out"] == 48_000
    assert session.ready_message(5.0)["hop_samples"] == 240
    # The same as offline processing through high-quality resampling, but for the cheaper
    # live resampler (compared away from the edges).
    offline = rebalance(engine.models[True], resample(x, 48000, 44100), req)
    reference = resample(offline, 44100, 48000)
    core = slice(2000, 46_000)
    err = y[:, core] - reference[:, core]
    snr = 10 * np.log10(np.sum(reference[:, core] ** 2) / np.sum(err**2))
    assert snr > 20.0, snr


def test_live_session_frames(engine, presets) -> None:
    params = parse_params(LiveParams, {"gains": {"Cello": 3}, "channels": 1})
    req = resolve(params, presets, load_config(overrides=[]))
    session = LiveSession(engine.models[True], req, channels=1, max_frame_samples=4096)
    x = _noise(5000, channels=1, seed=5)
    out, start = [], 0
    for n in (1, 3, 127, 128, 1000, 3741):
        frame = session.decode(x[0, start : start + n].astype("<f4").tobytes())
        out.append(session.process(frame))
        start += n
    out.append(session.flush())
    y = np.frombuffer(b"".join(out), "<f4").reshape(-1, 2).T
    assert y.shape == (2, 5000) and session.end_message()["samples_out"] == 5000
    reference = rebalance(engine.models[True], np.repeat(x, 2, axis=0), req)
    assert np.abs(y - reference).max() < 1e-5
    ready = session.ready_message(5.0)
    assert ready["latency_samples"] <= 220 and ready["hop_samples"] == 220
    for data, status in ((b"\x00" * 7, 400), (np.full(3, np.inf, "<f4").tobytes(), 400),
                         (np.zeros(5000, "<f4").tobytes(), 413)):
        with pytest.raises(ClientError) as err:
            session.decode(data)
        assert err.value.status == status
    assert control_message('{"type": "end"}') == "end"
    with pytest.raises(ClientError):
        control_message('{"type": "pause"}')


def test_cli_serve_refuses_bad_settings(capsys) -> None:
    from tutti.cli import build_parser, main

    args = build_parser().parse_args(["serve", "--port", "3001", "limits.max_live_sessions=3"])
    assert args.port == 3001 and args.overrides == ["limits.max_live_sessions=3"]
    assert main(["serve", "batching.max_batch_size=1"]) == 2  # refused before BentoML starts
    assert "batching.max_batch_size" in capsys.readouterr().err


def test_live_sessions_run_on_the_streaming_device(engine: Engine, presets) -> None:
    """Live sessions use the engine's causal model when it sits on ``streaming.device`` (the
    CPU by default, where the compiled step runs); a device this machine lacks is named."""
    import serving.runtime as runtime_module

    cfg = load_config(overrides=["streaming.compiled_live=false"])
    rt = runtime_module.Runtime(cfg, presets, engine)
    assert rt.live_model is engine.models[True]
    if not torch.cuda.is_available():
        gpu = load_config(overrides=["streaming.device=cuda"])
        with pytest.raises(ValueError, match="device 'cuda': torch sees no CUDA device"):
            runtime_module.Runtime(gpu, presets, engine)


def test_live_step_failure_leaves_sessions_eager(engine: Engine, presets, monkeypatch) -> None:
    """A worker whose compiled live step cannot be built (e.g. no C++ compiler) says why in
    ``live_step`` and serves live sessions eagerly."""
    import serving.runtime as runtime_module

    def no_compiler(model, cache_dir=None, tuned=True):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(runtime_module.CompiledStep, "build", no_compiler)
    cfg = load_config(overrides=["streaming.compiled_live=true"])
    rt = runtime_module.Runtime(cfg, presets, engine)
    rt.start_live_step()
    for _ in range(100):
        if rt.live_step_status != "building":
            break
        time.sleep(0.05)
    assert rt.live_step_status == "failed: RuntimeError: no C++ compiler found"
    assert rt.live_step is None
    off = runtime_module.Runtime(load_config(overrides=["streaming.compiled_live=false"]),
                                 presets, engine)
    off.start_live_step()
    assert off.live_step_status == "off" and off.live_step is None
