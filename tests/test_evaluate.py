"""`tutti evaluate` gives the numbers of pyclarity's own CAD2 task-2 recipe."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.audio import write_submission
from model.cad2 import CAD2Split
from training.evaluate import enhanced_path, evaluate


def _write_enhanced(root: Path, out: Path) -> None:
    """Plausible submissions: the mixture, louder, with a little noise."""
    split = CAD2Split(root, "valid")
    rng = np.random.default_rng(1)
    for scene_id, listener_id in split.pairs():
        mix = split.mixture(split.scenes[scene_id].music_id)
        noisy = 10 * mix + 1e-3 * rng.standard_normal(mix.shape)
        write_submission(enhanced_path(out, scene_id, listener_id), noisy)


def test_matches_recipe(cad2_root: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    _write_enhanced(cad2_root, exp / "enhanced_signals")
    # pyclarity's recipe, run as its authors do (hydra), reading exp/enhanced_signals.
    subprocess.run(
        [sys.executable, "-m", "recipes.cad2.task2.baseline.evaluate",
         f"path.root={cad2_root}", f"path.exp_folder={exp}"],
        check=True, cwd=tmp_path, capture_output=True,
    )
    with (exp / "scores.csv").open() as fh:
        expected = {(r["scene"], r["listener"]): r for r in csv.DictReader(fh)}

    mean, rows = evaluate(cad2_root, "valid", exp / "enhanced_signals",
                          scores_csv=tmp_path / "ours.csv", jobs=2)
    assert len(rows) == len(expected) == 3
    for row in rows:
        ref = expected[(row["scene"], row["listener"])]
        assert row["song"] == ref["song"]
        for key in ("left_haaqi", "right_haaqi", "avg_haaqi"):
            assert float(row[key]) == pytest.approx(float(ref[key]), abs=1e-6)
    assert mean == pytest.approx(np.mean([float(r["avg_haaqi"]) for r in expected.values()]))
    with (tmp_path / "ours.csv").open() as fh:
        header = next(csv.reader(fh))
    assert header == ["scene", "song", "listener", "left_haaqi", "right_haaqi", "avg_haaqi"]

    # A shorter run reuses the saved rows and keeps those beyond its limit in the file.
    first, rows = evaluate(cad2_root, "valid", exp / "enhanced_signals",
                           scores_csv=tmp_path / "ours.csv", limit=1)
    assert len(rows) == 1 and first == pytest.approx(float(rows[0]["avg_haaqi"]))
    with (tmp_path / "ours.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3


def test_missing_enhanced_files_are_reported(cad2_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"3 of 3 enhanced file\(s\) missing"):
        evaluate(cad2_root, "valid", tmp_path)


def test_wrong_rate_submission_is_refused(cad2_root: Path, tmp_path: Path) -> None:
    from model.audio import write_audio

    split = CAD2Split(cad2_root, "valid")
    for scene_id, listener_id in split.pairs():
        write_audio(enhanced_path(tmp_path, scene_id, listener_id), np.zeros((2, 4410)), 44100)
    with pytest.raises(ValueError, match="sample rate 44100 Hz, expected 32000 Hz"):
        evaluate(cad2_root, "valid", tmp_path, limit=1)
