"""The `tutti` command: help, end-to-end baseline + evaluate, rebalance, clear errors."""

from __future__ import annotations

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
