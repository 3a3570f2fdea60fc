"""CAD2 reader: parsing, conventions (sidecar scale, cropping, slots) and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.audio import SAMPLE_RATE, AudioError, read_audio, write_audio
from model.cad2 import SLOTS, CAD2Split, MetadataError, slot_of, split_folder


def test_reads_split(cad2_root: Path) -> None:
    split = CAD2Split(cad2_root, "valid")
    assert split.pairs() == [("S50001", "L0001"), ("S50001", "N0000"), ("S50002", "L0001")]
    music = split.music["quartet_a"]
    assert music.slots() == {"source_1": "Violin_1", "source_2": "Viola_1", "source_3": "Cello"}
    stems = split.stems("quartet_a")
    assert set(stems) == {"source_1", "source_2", "source_3"}
    assert all(s.shape == (2, 2 * SAMPLE_RATE) for s in stems.values())
    # The mixture is the sum of the stems up to 16-bit quantisation.
    err = split.mixture("quartet_a") - sum(stems.values())
    assert np.abs(err).max() < 4 / 32768
    assert split.compressor["L0001"].as_arrays()[0].shape == (2, 6)
    assert split.scene_gains("S50002") == {"source_1": -10.0, "source_2": 0.0}


def test_slots_and_split_folders() -> None:
    assert len(SLOTS) == 12
    assert slot_of("Violin") == "Violin_1"
    assert slot_of("violin 2") == "Violin_2"
    assert slot_of("Cello") == "Cello"
    with pytest.raises(ValueError, match="no second voice"):
        slot_of("Cello_2")
    with pytest.raises(ValueError, match="unknown instrument 'Piano'"):
        slot_of("Piano")
    assert [split_folder(s) for s in ("S00010", "S50001", "S55001", "S60000")] == [
        "train", "valid", "valid", "test"]


def test_sidecar_scale_and_crop(tmp_path: Path) -> None:
    signal = np.full((2, 1000), 0.25, dtype=np.float32)
    path = write_audio(tmp_path / "x.flac", signal, SAMPLE_RATE)
    # Written atomically, but with the mode a plain open() would give (not mkstemp's 0600).
    (tmp_path / "plain").write_text("")
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    assert not list(tmp_path.glob(".*.part"))
    (tmp_path / "x.txt").write_text("2.0")
    out, rate = read_audio(path)
    assert rate == SAMPLE_RATE and out.shape == (2, 1000)
    assert np.allclose(out, 0.5, atol=1e-4)
    raw, _ = read_audio(path, scale_sidecar=False)
    assert np.allclose(raw, 0.25, atol=1e-4)


def test_start_duration_crop(cad2_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "r"
    shutil.copytree(cad2_root, root)
    music_file = root / "metadata" / "music.valid.json"
    music = json.loads(music_file.read_text())
    for entry in music["quartet_a"].values():
        entry["start"], entry["duration"] = 0.5, 1.0
    music_file.write_text(json.dumps(music))
    split = CAD2Split(root, "valid")
    full = CAD2Split(cad2_root, "valid").stems("quartet_a")["source_1"]
    cropped = split.stems("quartet_a")["source_1"]
    assert cropped.shape == (2, SAMPLE_RATE)
    assert np.array_equal(cropped, full[:, SAMPLE_RATE // 2 : SAMPLE_RATE // 2 + SAMPLE_RATE])


def _broken(cad2_root: Path, tmp_path: Path, name: str, edit) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(cad2_root, root)
    path = root / "metadata" / name
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return root


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("music.valid.json", lambda d: d["quartet_a"]["source_2"].pop("track"),
         r"music.valid.json: entry 'quartet_a.source_2' lacks key 'track'"),
        ("music.valid.json", lambda d: d["winds_b"]["source_1"].update(instrument="Piano"),
         r"music.valid.json: entry 'winds_b' key 'source_1': unknown instrument 'Piano'"),
        ("scenes.valid.json", lambda d: d["S50002"].update(music="nope"),
         r"scenes.valid.json: entry 'S50002' key 'music': unknown 'nope'"),
        ("gains.json", lambda d: d["g1"].pop("source_3"),
         r"gains.json: entry 'g1' lacks key\(s\) \['source_3'\]"),
        ("listeners.valid.json", lambda d: d["L0001"].update(audiogram_levels_l=[1, 2]),
         r"listeners.valid.json: entry 'L0001' key 'audiogram_levels_l' must be 8 finite"),
        ("compressor_params.valid.json", lambda d: d["N0000"].pop("cr_r"),
         r"compressor_params.valid.json: entry 'N0000' lacks key 'cr_r'"),
        ("scene_listeners.valid.json", lambda d: d["S50002"].append("L9999"),
         r"scene_listeners.valid.json: entry 'S50002': listener 'L9999' is not in"),
    ],
)
def test_malformed_metadata_names_file_and_key(cad2_root, tmp_path, name, edit, message) -> None:
    root = _broken(cad2_root, tmp_path, name, edit)
    with pytest.raises(MetadataError, match=message):
        CAD2Split(root, "valid")


def test_missing_and_invalid_files(cad2_root: Path, tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="metadata folder not found"):
        CAD2Split(tmp_path, "valid")
    with pytest.raises(MetadataError, match=r"music.test.json: metadata file not found"):
        CAD2Split(cad2_root, "test")
    root = tmp_path / "r"
    shutil.copytree(cad2_root, root)
    (root / "metadata" / "scenes.valid.json").write_text("{not json")
    with pytest.raises(MetadataError, match=r"scenes.valid.json: not valid JSON"):
        CAD2Split(root, "valid")


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.unlink(), "audio file not found"),
        (lambda p: p.write_bytes(b"garbage" * 100), "not a readable audio file"),
        (lambda p: sf.write(p, np.zeros((100, 2)), 22050, format="FLAC"),
         "sample rate 22050 Hz, expected 44100 Hz"),
        (lambda p: sf.write(p, np.zeros(100), SAMPLE_RATE, format="FLAC"),
         r"1 channel\(s\), expected 2"),
        (lambda p: sf.write(p, np.full((100, 2), np.nan, dtype=np.float32), SAMPLE_RATE,
                            format="WAV", subtype="FLOAT"), "are NaN or infinite"),
    ],
)
def test_bad_audio_gives_clear_error(cad2_root: Path, tmp_path: Path, write, message) -> None:
    root = tmp_path / "r"
    shutil.copytree(cad2_root, root)
    path = root / "audio" / "winds_b" / "Flute.flac"
    write(path)
    split = CAD2Split(root, "valid")
    with pytest.raises(AudioError, match=message):
        split.stems("winds_b")
