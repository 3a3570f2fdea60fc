"""Challenge batch jobs (`tutti enhance`): file format, worker processes, resuming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model.batch import BASELINES, run_batch
from model.cad2 import CAD2Split
from model.tutti import TuttiConfig, TuttiModel
from tests.test_model import SMALL
from tutti.cli import main


def _read_all(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sf.read(str(p), dtype="int16")[0] for p in sorted(folder.rglob("*.flac"))}


def test_enhance_with_workers_matches_one_process(cad2_root: Path, tmp_path: Path) -> None:
    """`--jobs 2` writes every pair, as 32 kHz 16-bit stereo, with the samples one process
    writes (to a least significant bit: the workers run fewer torch threads)."""
    torch.manual_seed(0)
    model = TuttiModel(TuttiConfig(**SMALL))
    torch.nn.init.normal_(model.head.weight, std=0.05)  # not the identity
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    runs = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        assert main(["enhance", str(cad2_root), "--model", str(tmp_path / "m"), "--out", str(out),
                     "--jobs", str(jobs)]) == 0
        runs[jobs] = _read_all(out)
    pairs = CAD2Split(cad2_root, "valid").pairs()
    assert sorted(runs[2]) == sorted(f"{s}_{lst}_remix.flac" for s, lst in pairs)
    info = sf.info(str(next((tmp_path / "jobs2").rglob("*.flac"))))
    assert (info.samplerate, info.channels, info.subtype) == (32000, 2, "PCM_16")
    for name, one in runs[1].items():
        assert np.abs(one.astype(int) - runs[2][name]).max() <= 1, name
        assert np.abs(one).max() > 0


def test_workers_resume_and_keep_finished_files(cad2_root: Path, tmp_path: Path) -> None:
    """Files already written are skipped (a resumed job leaves them untouched) and the
    workers write the rest exactly as one process does."""
    one = run_batch(cad2_root, "valid", tmp_path / "one", BASELINES["noop"])
    first = one[0].relative_to(tmp_path / "one")
    kept = tmp_path / "two" / first
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"finished earlier")
    two = run_batch(cad2_root, "valid", tmp_path / "two", BASELINES["noop"], jobs=2)
    assert [p.relative_to(tmp_path / "two") for p in two] == [
        p.relative_to(tmp_path / "one") for p in one]
    assert kept.read_bytes() == b"finished earlier"
    for a, b in zip(one[1:], two[1:], strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert not list((tmp_path / "two").rglob("*.part"))  # no partial file left


def test_jobs_must_be_positive(cad2_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        run_batch(cad2_root, "valid", tmp_path, BASELINES["noop"], jobs=0)
