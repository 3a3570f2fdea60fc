"""Shared fixtures: a tiny synthetic CAD2-layout root (harmonic tones, 2 s, 44.1 kHz stereo)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyloudnorm as pyln
import pytest

from model.audio import SAMPLE_RATE, write_audio
from model.cad2 import write_metadata

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

L0001 = {
    "name": "L0001",
    "audiogram_cfs": [250, 500, 1000, 2000, 3000, 4000, 6000, 8000],
    "audiogram_levels_l": [45, 45, 35, 45, 60, 65, 70, 65],
    "audiogram_levels_r": [40, 40, 45, 45, 60, 65, 80, 80],
}
L0001_COMPRESSOR = {
    "frequencies": [250, 500, 1000, 2000, 4000, 8000],
    "cr_l": [2.1, 1.5, 1.3, 1.5, 2.4, 3.7],
    "gain_l": [9.6, 11.9, 12.9, 16.4, 19.0, 28.0],
    "cr_r": [1.9, 1.6, 1.5, 1.5, 2.5, 4.0],
    "gain_r": [8.9, 11.0, 14.1, 16.5, 19.5, 31.0],
}
NORMAL = {
    "name": "N0000",
    "audiogram_cfs": [250, 500, 1000, 2000, 3000, 4000, 6000, 8000],
    "audiogram_levels_l": [0] * 8,
    "audiogram_levels_r": [5] * 8,
}
NORMAL_COMPRESSOR = {
    "frequencies": [250, 500, 1000, 2000, 4000, 8000],
    "cr_l": [1.0] * 6,
    "gain_l": [0.0] * 6,
    "cr_r": [1.0] * 6,
    "gain_r": [0.0] * 6,
}


def tone(f0: float, seconds: float, rng: np.random.Generator, pan: float) -> np.ndarray:
    """A bowed-ish harmonic note sequence ``(2, samples)`` with vibrato and note envelopes."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    notes = f0 * 2 ** (rng.integers(0, 8, size=8) / 12)
    freq = np.repeat(notes, int(np.ceil(n / 8)))[:n] * (1 + 0.004 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    mono = sum(np.sin(k * phase) / k**1.2 for k in range(1, 12))
    env = np.abs(np.sin(np.pi * (t * 4) % np.pi)) ** 0.3
    mono = mono * env + 0.01 * rng.standard_normal(n)
    return np.stack([mono * (1 - pan), mono * pan])


ENSEMBLES = {
    "quartet_a": [("Violin_1", 440.0), ("Viola", 294.0), ("Cello", 131.0)],
    "winds_b": [("Flute", 587.0), ("Clarinet", 233.0)],
}


def make_root(root: Path, seconds: float = 2.0, seed: int = 0,
              ensembles: dict[str, list[tuple[str, float]]] = ENSEMBLES) -> Path:
    """Write a 2-scene, 2-listener CAD2 ``valid`` split under ``root`` (mixtures at -40 LUFS):
    ``ensembles`` maps two music ids to their (instrument, lowest f0 in Hz) parts."""
    rng = np.random.default_rng(seed)
    first, second = ensembles
    meter = pyln.Meter(SAMPLE_RATE)
    music = {}
    for music_id, parts in ensembles.items():
        stems = [tone(f0, seconds, rng, pan=0.3 + 0.4 * i / len(parts))
                 for i, (_, f0) in enumerate(parts)]
        mix = sum(stems)
        scale = 10 ** ((-40 - meter.integrated_loudness(mix.T)) / 20)
        entry = {}
        for i, ((inst, _), stem) in enumerate(zip(parts, stems, strict=True), 1):
            track = f"{music_id}/{inst}.flac"
            if any(other == inst for other, _ in parts[:i - 1]):  # a second voice
                track = f"{music_id}/{inst}_{i}.flac"
            write_audio(root / "audio" / track, stem * scale, SAMPLE_RATE)
            entry[f"source_{i}"] = {"instrument": inst, "track": track, "start": 0.0,
                                    "duration": seconds, "source_dataset": "synthetic"}
        write_audio(root / "audio" / music_id / "mixture.flac", mix * scale, SAMPLE_RATE)
        entry["mixture"] = {"instrument": "Mixture", "track": f"{music_id}/mixture.flac",
                            "start": 0.0, "duration": seconds, "source_dataset": "synthetic"}
        music[music_id] = entry
    write_metadata(
        root,
        "valid",
        music=music,
        gains={
            "g1": {"source_1": 6.0, "source_2": 0.0, "source_3": -3.0},
            "g2": {"source_1": -10.0, "source_2": 0.0},
        },
        scenes={"S50001": {"music": first, "gain": "g1"},
                "S50002": {"music": second, "gain": "g2"}},
        scene_listeners={"S50001": ["L0001", "N0000"], "S50002": ["L0001"]},
        listeners={"L0001": L0001, "N0000": NORMAL},
        compressor_params={"L0001": L0001_COMPRESSOR, "N0000": NORMAL_COMPRESSOR},
    )
    return root


@pytest.fixture(scope="session")
def cad2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only tiny CAD2 root shared by the session's tests."""
    return make_root(tmp_path_factory.mktemp("cad2"))
