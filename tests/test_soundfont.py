"""SoundFont subsets: the presets kept render exactly as from the full font."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.render import render_fluid
from training.soundfont import SoundFontError, subset_soundfont

FLUID_R3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
MUSESCORE = Path("/usr/share/sounds/sf3/MuseScore_General_Full.sf3")
needs_fluid_r3 = pytest.mark.skipif(not FLUID_R3.is_file(), reason="scripts/setup.sh installs it")
NOTES = np.array([[0.0, 0.5, 55, 90], [0.3, 0.8, 67, 70], [0.9, 0.6, 79, 110]])


@needs_fluid_r3
def test_subset_renders_like_the_full_font(tmp_path: Path) -> None:
    keep = [(0, 42), (8, 40), (0, 65)]  # Cello, Slow Violin (bank 8), Alto Sax
    counts = subset_soundfont(FLUID_R3, tmp_path / "sub.sf2", keep)
    assert counts["presets"] == 3 and counts["samples"] > 10
    assert (tmp_path / "sub.sf2").stat().st_size < FLUID_R3.stat().st_size / 10
    for preset in keep:
        full = render_fluid(FLUID_R3, preset, NOTES, 66150, 44100, 256)
        sub = render_fluid(tmp_path / "sub.sf2", preset, NOTES, 66150, 44100, 256)
        assert np.abs(full).max() > 0.01
        np.testing.assert_array_equal(sub, full)
    with pytest.raises(Exception, match=r"no preset \(0, 40\)"):  # Violin was left out
        render_fluid(tmp_path / "sub.sf2", (0, 40), NOTES, 44100, 44100, 256)


@needs_fluid_r3
def test_subset_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    with pytest.raises(SoundFontError, match=r"no preset\(s\) \[\(3, 40\)\]"):
        subset_soundfont(FLUID_R3, tmp_path / "x.sf2", [(0, 40), (3, 40)])
    assert not list(tmp_path.iterdir())  # nothing half-written
    reserved = tmp_path / "TimGM6mb.sf2"
    reserved.write_bytes(b"RIFF")
    with pytest.raises(ValueError, match="reserved SoundFont"):
        subset_soundfont(reserved, tmp_path / "x.sf2", [(0, 40)])
    if MUSESCORE.is_file():
        with pytest.raises(SoundFontError, match="SF3 and other formats are not handled"):
            subset_soundfont(MUSESCORE, tmp_path / "x.sf2", [(0, 40)])
    (tmp_path / "bad.sf2").write_bytes(b"not a soundfont")
    with pytest.raises(SoundFontError, match="not a SoundFont 2 file"):
        subset_soundfont(tmp_path / "bad.sf2", tmp_path / "x.sf2", [(0, 40)])
