"""The `tutti` command: help, end-to-end baseline + evaluate, rebalance, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model.tutti import TuttiConfig, TuttiModel
from tests.test_model import SMALL
from tutti.cli import main, parse_audiogram, parse_gains

L0001 = "L:45,45,35,45,60,65,70,65;R:40,40,45,45,60,65,80,80"


def test_help_lists_subcommands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("evaluate", "baseline", "rebalance", "enhance", "data", "train", "export"):
        assert command in out


def test_baseline_then_evaluate(cad2_root: Path, tmp_path: Path, capsys) -> None:
    assert main(["baseline", "oracle", str(cad2_root), "--out", str(tmp_path), "--limit", "1"]) == 0
    assert (tmp_path / "valid" / "S50001_L0001_remix.flac").is_file()
    info = sf.info(str(tmp_path / "valid" / "S50001_L0001_remix.flac"))
    assert (info.samplerate, info.channels, info.subtype) == (32000, 2, "PCM_16")
    assert main(["evaluate", str(cad2_root), "--enhanced", str(tmp_path), "--limit", "1"]) == 0
    mean = float(capsys.readouterr().out.split("pairs: ")[1].split()[0])
    assert mean > 0.99  # the true remix through the same hearing aid


def test_parsers() -> None:
    assert parse_gains("Violin_1=+6, cello=-3") == {"Violin_1": 6.0, "cello": -3.0}
    left, right = parse_audiogram(L0001)
    assert left[0] == 45 and right[-1] == 80
    assert parse_audiogram("10,10,10,10,10,10,10,10") == ([10.0] * 8, [10.0] * 8)
    with pytest.raises(ValueError, match="unknown instrument 'Piano'"):
        parse_gains("Piano=3")
    with pytest.raises(ValueError, match="'loud' for 'Cello' is not a number"):
        parse_gains("Cello=loud")
    with pytest.raises(ValueError, match="give both ears"):
        parse_audiogram("L:1,2,3,4,5,6,7,8")


def test_rebalance_any_rate_mono(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    TuttiModel(TuttiConfig(**SMALL)).save_pretrained(tmp_path / "m", safe_serialization=True)
    mono = 0.1 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050)
    sf.write(tmp_path / "in.wav", mono, 22050)
    out = tmp_path / "out.flac"
    args = ["rebalance", str(tmp_path / "in.wav"), "--gains", "Violin_1=+6,Cello=-3",
            "--audiogram", L0001, "--model", str(tmp_path / "m"), "--out", str(out)]
    assert main(args) == 0
    data, rate = sf.read(str(out), always_2d=True)
    assert rate == 44100 and data.shape == (44100, 2) and np.abs(data).max() > 0.01

    bad = args.copy()
    bad[bad.index("--audiogram") + 1] = "L:1,2,3;R:1,2,3"
    assert main(bad) == 2
    assert "left ear: expected 8 audiogram levels" in capsys.readouterr().err
    sf.write(tmp_path / "nan.wav", np.full(100, np.nan, dtype=np.float32), 22050,
             subtype="FLOAT")
    bad = args.copy()
    bad[1] = str(tmp_path / "nan.wav")
    assert main(bad) == 2
    assert "NaN or infinite" in capsys.readouterr().err
    assert main([*args, "--device", "tpu"]) == 2
    assert "device 'tpu': expected cpu, cuda, cuda:N or auto" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*args, "--device", "cuda"]) == 2
        assert "torch sees no CUDA device" in capsys.readouterr().err
    else:  # one past the last GPU
        assert main([*args, "--device", f"cuda:{torch.cuda.device_count()}"]) == 2
        assert "CUDA device(s), cuda:0 to" in capsys.readouterr().err
    out.unlink()
    assert main([*args, "--device", "auto"]) == 0  # the CPU here, the GPU where there is one
    again, _ = sf.read(str(out), always_2d=True)
    assert np.abs(again - data).max() < 1e-3


def test_enhance_on_a_gpu_runs_in_one_process(cad2_root: Path, tmp_path: Path, capsys,
                                               monkeypatch) -> None:
    """A GPU model is not handed to worker processes: --jobs > 1 with a GPU is refused first."""
    import model.apply

    monkeypatch.setattr(model.apply, "pick_device", lambda name: "cuda")
    assert main(["enhance", str(cad2_root), "--out", str(tmp_path), "--device", "cuda",
                 "--jobs", "2"]) == 2
    assert "--device cuda runs in one process: drop --jobs 2" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*.flac"))


def test_export_sets_inference_settings_and_the_slot_gate(tmp_path: Path, capsys) -> None:
    """`tutti export --slot-gate G --set KEY=VALUE`: the copy has those settings and that gate,
    every other weight unchanged; a setting that weights depend on, a bad value or a gate on a
    model without one is an error and writes nothing."""
    from model.apply import load_model
    from tests.test_model import SLOT_GATE

    torch.manual_seed(0)
    TuttiModel(TuttiConfig(causal=True, **SLOT_GATE)).save_pretrained(tmp_path / "run")
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--slot-gate", "0.5",
                 "--set", "gain_smooth_ms=10", "slot_mean_order=1", "min_phase=1"]) == 0
    src, dst = load_model(tmp_path / "run"), load_model(out)
    assert (dst.config.gain_smooth_ms, dst.config.slot_mean_order) == (10.0, 1.0)
    assert dst.config.min_phase is True
    assert 10 * dst.slot_scale.item() == pytest.approx(0.5)
    for (name, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert name == "slot_scale" or torch.equal(a, b), name
    bad = {("--set", "window=3"): "not an inference-time setting: window",
           ("--set", "slot_mean_order=-1"): "slot_mean_order must be in \\[0, 4\\]",
           ("--set", "gain_smooth_ms"): "expected KEY=NUMBER",
           ("--set", "min_phase=0.5"): "min_phase is on or off \\(1 or 0\\), got 0.5",
           ("--slot-gate", "3"): "slot gate must be in \\[0, 2\\], got 3.0"}
    for args, message in bad.items():
        capsys.readouterr()
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "x"), *args]) == 2
        assert re.search(message, capsys.readouterr().err), args
        assert not (tmp_path / "x").exists()
    TuttiModel(TuttiConfig(**SMALL)).save_pretrained(tmp_path / "plain")
    assert main(["export", str(tmp_path / "plain"), "--out", str(tmp_path / "x"),
                 "--slot-gate", "0.5"]) == 2
    assert "the model has no slot gains" in capsys.readouterr().err


def test_export_sets_the_filterbank_reach(tmp_path: Path, capsys) -> None:
    """`tutti export --fb-reach R`: the same weights, the filterbank made for reach R (it
    reconstructs its input R samples later than before), look-ahead grown by R; a reach that
    takes a causal model past 5 ms is an error naming what fits, and writes nothing."""
    from model.apply import load_model
    from tests.test_model import SLOT_GATE

    torch.manual_seed(0)
    TuttiModel(TuttiConfig(causal=True, **SLOT_GATE)).save_pretrained(tmp_path / "run")
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--fb-reach", "28"]) == 0
    src, dst = load_model(tmp_path / "run"), load_model(out)
    assert (dst.config.fb_reach, dst.config.lookahead) == (28, src.config.lookahead + 28)
    for (name, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert name.startswith("filterbank.") or torch.equal(a, b), name
    x = torch.randn(1, 2, 64 * 40)
    spectra, _ = dst.filterbank.analyse(x)
    y, _ = dst.filterbank.synthesise(spectra)
    assert torch.allclose(y[..., 64 + 28 :], x[..., : -(64 + 28)], atol=1e-5)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "x"),
                 "--fb-reach", "30"]) == 2
    assert "would look 221 samples ahead, over 220 (at most 29 fits)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # Gains one frame late: the look-ahead a hop shorter, room for a reach of 92.
    assert main(["export", str(out), "--out", str(tmp_path / "lag"), "--gain-lag", "1",
                 "--fb-reach", "92"]) == 0
    lagged = load_model(tmp_path / "lag")
    assert (lagged.config.gain_lag, lagged.config.lookahead) == (1, 219)
    assert main(["export", str(tmp_path / "lag"), "--out", str(tmp_path / "x"),
                 "--gain-lag", "2"]) == 2
    assert "gain_lag must be 0 to 1 frames (a block holds 2), got 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_picks_the_run_weights_asked_for(tmp_path: Path, capsys) -> None:
    """`tutti export RUN --weights best|last|last-average` copies ``RUN/best``, the checkpoint's
    own weights or its weight average (``ema.safetensors``); asking a model folder, or a run
    without an average, for checkpoint weights is an error that writes nothing."""
    from safetensors.torch import save_file

    from model.apply import load_model

    run = tmp_path / "run"
    models = {}
    for seed, (name, folder) in enumerate((("best", "best"), ("last", "checkpoint"),
                                           ("last-average", "average"))):
        torch.manual_seed(seed)
        models[name] = TuttiModel(TuttiConfig(**SMALL))
        models[name].save_pretrained(run / folder)
    average = {k: v for k, v in models["last-average"].state_dict().items()
               if v.dtype.is_floating_point}
    save_file(average, str(run / "checkpoint" / "ema.safetensors"))
    for name, model in models.items():
        assert main(["export", str(run), "--out", str(tmp_path / name), "--weights", name]) == 0
        exported = load_model(tmp_path / name).state_dict()
        assert all(torch.equal(v, exported[k]) for k, v in model.state_dict().items()), name
    (run / "checkpoint" / "ema.safetensors").unlink()
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--weights",
                 "last-average"]) == 2
    assert "ema.safetensors is missing" in capsys.readouterr().err
    assert main(["export", str(run / "best"), "--out", str(tmp_path / "x"), "--weights",
                 "last"]) == 2
    assert "has no checkpoint/" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_gives_a_model_without_a_gate_one(tmp_path: Path) -> None:
    """`--slot-gate 1` on a slot-gain model without a gate changes no output; 0.5 halves the
    slot log-gain, so the output changes."""
    from model.apply import load_model
    from tests.test_model import SLOT_BANDS, _inputs

    torch.manual_seed(0)
    plain = TuttiModel(TuttiConfig(causal=True, **SLOT_BANDS))
    torch.nn.init.normal_(plain.slot_head.weight, std=0.5)
    plain.save_pretrained(tmp_path / "run")
    outputs = {}
    for gate in ("1", "0.5"):
        out = tmp_path / gate
        assert main(["export", str(tmp_path / "run"), "--out", str(out), "--slot-gate", gate]) == 0
        model = load_model(out)
        assert model.config.slot_gate
        with torch.no_grad():
            outputs[gate] = model(*_inputs(), hearing_aid=False)
    with torch.no_grad():
        reference = load_model(tmp_path / "run")(*_inputs(), hearing_aid=False)
    assert torch.allclose(outputs["1"], reference, atol=1e-6)
    assert not torch.allclose(outputs["0.5"], reference, atol=1e-4)
