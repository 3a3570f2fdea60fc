"""Training-data renderer: a tiny render in the CAD2 layout, its guarantees and reservations."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyloudnorm as pyln
import pytest
import soundfile as sf

from model.audio import read_audio
from model.cad2 import CAD2Split
from training import corpus as C
from training import listeners as L
from training import render as R
from training import synth as S
from training import timbre as T

SR = 44100
# Tiny and fast: 3 s excerpts, short pre-roll, groups whose scores parse in well under a second.
TINY = [
    "excerpt_seconds=3.0",
    "preroll_seconds=0.6",
    "corpus.weights.quartets=0",
    "corpus.weights.palestrina=0.3",
    "corpus.weights.chorales=0.4",
    "corpus.weights.madrigals=0.3",
    "corpus.weights.early=0",
    "listeners.count.train=6",
    "listeners.count.valid=4",
    "reverb.rt60_s=[0.4,0.8]",
]
HOURS = 0.005  # 6 excerpts: 5 train + 1 valid (+ its held-out-timbre twin)
SPLITS = ("train", "valid", "valid_timbre")


def _overrides(cache: Path) -> list[str]:
    return [*TINY, f"cache_dir={cache}"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("score-cache")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    out = tmp_path_factory.mktemp("tutti-data") / "root"
    return R.render_dataset(out, HOURS, seed=7, jobs=2, overrides=_overrides(cache),
                            progress=False)


def _load(root: Path, name: str) -> dict:
    return json.loads((root / "metadata" / name).read_text(encoding="utf-8"))


def _digest(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and (
        p.suffix in (".flac", ".txt") or p.parent.name == "metadata"))
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


# ------------------------------------------------------------------------------------- layout


def test_layout_and_schema(root: Path) -> None:
    report = json.loads((root / "render_report.json").read_text())
    assert report["excerpts"]["failed"] == 0
    assert report["excerpts"]["rendered"] == 7
    gains = _load(root, "gains.json")
    for split in SPLITS:
        music = _load(root, f"music.{split}.json")
        scenes = _load(root, f"scenes.{split}.json")
        scene_listeners = _load(root, f"scene_listeners.{split}.json")
        listeners = _load(root, f"listeners.{split}.json")
        params = _load(root, f"compressor_params.{split}.json")
        assert music and scenes and listeners
        for music_id, entry in music.items():
            keys = list(entry)
            n = len(keys) - 1
            assert 2 <= n <= 5
            assert keys == [f"source_{i}" for i in range(1, n + 1)] + ["mixture"]
            assert entry["mixture"]["instrument"] == "Mixture"
            names = [entry[f"source_{i}"]["instrument"] for i in range(1, n + 1)]
            for item in entry.values():
                assert set(item) >= {"instrument", "track", "start", "duration",
                                     "source_dataset"}
                assert item["start"] == 0.0 and item["duration"] == 3.0
                path = root / "audio" / item["track"]
                assert path.is_file() and path.parent.name == music_id
                meta = sf.info(str(path))
                assert (meta.samplerate, meta.channels, meta.subtype, meta.frames) == (
                    SR, 2, "PCM_16", 3 * SR)
            for name in names:
                assert name.split("_")[0] in C.INSTRUMENTS
            assert len(set(names)) == n
            timbres = {entry[f"source_{i}"]["source_dataset"] for i in range(1, n + 1)}
            if split == "valid_timbre":
                assert timbres == {"tutti-musescore"}
            else:
                assert "tutti-musescore" not in timbres
        lo, hi = R.SCENE_RANGES[split]
        for scene_id, scene in scenes.items():
            assert lo <= int(scene_id[1:]) <= hi
            n = len(music[scene["music"]]) - 1
            g = gains[scene["gain"]]
            assert list(g) == [f"source_{i}" for i in range(1, n + 1)]
            changed = [v for v in g.values() if v != 0]
            assert 1 <= len(changed) <= n - 1
            assert set(changed) <= set(R.GAIN_STEPS_DB)
            assert all(x in listeners for x in scene_listeners[scene_id])
        for listener_id, entry in listeners.items():
            assert entry["name"] == listener_id
            assert entry["audiogram_cfs"] == list(L.AUDIOGRAM_CFS)
            assert set(params[listener_id]) == {"frequencies", "cr_l", "gain_l", "cr_r",
                                                "gain_r"}
            assert all(len(params[listener_id][k]) == 6 for k in ("cr_l", "gain_r"))
        # the reader the evaluate / baseline commands use accepts every split
        data = CAD2Split(root, split)
        assert len(data.pairs()) == sum(len(v) for v in scene_listeners.values())
    assert set(_load(root, "listeners.train.json")).isdisjoint(_load(root, "listeners.valid.json"))


def test_recipe_reference_mixture(root: Path) -> None:
    """The CAD2 recipe's own gain / remix / level functions run on a rendered scene."""
    from training.evaluate import reference_mixture

    data = CAD2Split(root, "valid")
    scene_id = next(iter(data.scenes))
    ref = reference_mixture(data, scene_id)
    assert ref.shape == (3 * SR, 2) and np.isfinite(ref).all() and np.abs(ref).max() > 0


def test_audio_sums_loudness_and_ranges(root: Path) -> None:
    meter = pyln.Meter(SR)
    for split in SPLITS:
        for music_id, entry in _load(root, f"music.{split}.json").items():
            mixture, _ = read_audio(root / "audio" / entry["mixture"]["track"])
            stems, tolerance = [], 0.0
            for key, item in entry.items():
                path = root / "audio" / item["track"]
                scale_file = path.with_suffix(".txt")
                scale = float(scale_file.read_text()) if scale_file.is_file() else 1.0
                tolerance += 0.5 * scale / 32768
                if key == "mixture":
                    continue
                stem, _ = read_audio(path)
                stems.append(stem)
                assert np.abs(stem).max() < 1.0  # no clipping
                assert np.sqrt(np.mean(stem**2)) > 0  # no silent stem
                assert meter.integrated_loudness(stem.T) > -75
                lo, hi = item["tutti"]["pitch_range"]
                rng = C.RANGES[item["instrument"].split("_")[0]]
                assert rng[0] <= lo <= hi <= rng[1], (music_id, item["instrument"])
            err = np.abs(np.sum(stems, axis=0) - mixture).max()
            assert err <= tolerance + 1e-7, (music_id, err, tolerance)
            assert abs(meter.integrated_loudness(mixture.T) - (-40.0)) <= 0.5


def test_deterministic_and_resumable(root: Path, cache: Path, tmp_path: Path) -> None:
    again = R.render_dataset(tmp_path / "again", HOURS, seed=7, jobs=1,
                             overrides=_overrides(cache), progress=False)
    assert _digest(again) == _digest(root)
    # resuming renders nothing new
    R.render_dataset(again, HOURS, seed=7, jobs=1, overrides=_overrides(cache), progress=False)
    report = json.loads((again / "render_report.json").read_text())
    assert report["excerpts"] == {"rendered": 0, "cached": 7, "failed": 0}
    # an interrupted excerpt (its folder missing) is rendered again, identically
    victim = next((again / "audio").glob("tutti-train-*"))
    for f in victim.iterdir():
        f.unlink()
    victim.rmdir()
    R.render_dataset(again, HOURS, seed=7, jobs=1, overrides=_overrides(cache), progress=False)
    report = json.loads((again / "render_report.json").read_text())
    assert report["excerpts"]["rendered"] == 1
    assert _digest(again) == _digest(root)
    # another seed gives other music; another config refuses the same folder
    with pytest.raises(ValueError, match="another configuration or seed"):
        R.render_dataset(again, HOURS, seed=8, overrides=_overrides(cache), progress=False)


def test_doubled_voices_are_numbered_by_register(root: Path) -> None:
    """Voice 1 of a doubled instrument is the higher part; equal registers keep score order."""
    assert C.name_voices(["Violin", "Violin", "Cello"], [60, 70.5, 48]) == [
        "Violin_2", "Violin_1", "Cello"]
    assert C.name_voices(["Flute", "Oboe", "Flute"], [72, 70, 72]) == [
        "Flute_1", "Oboe", "Flute_2"]
    with pytest.raises(ValueError, match="3 instruments but 2 registers"):
        C.name_voices(["Viola", "Viola", "Cello"], [60, 55])
    for split in SPLITS:
        for entry in _load(root, f"music.{split}.json").values():
            sources = {v["instrument"]: v["tutti"]["pitch_range"] for k, v in entry.items()
                       if k != "mixture"}
            for name, pitch in sources.items():
                if name.endswith("_2"):
                    assert sum(sources[name[:-1] + "1"]) >= sum(pitch), sources


def test_renumber_voices_of_an_older_render(root: Path, tmp_path: Path) -> None:
    """``renumber_voices`` gives an older render's doubled voices the register numbering: the
    higher stem's files, sidecar and metadata become voice 1, gains stay with the stems (the
    references do not change), interrupted runs finish, and a second run changes nothing."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(root, old)
    music = _load(old, "music.train.json")
    music_id, entry = next((m, e) for m, e in music.items() if len(e) >= 3)
    folder = old / "audio" / music_id
    info = json.loads((folder / "tutti.json").read_text())
    centres = [sum(stem["pitch_range"]) / 2 for stem in info["stems"]]
    low, high = sorted(range(2), key=lambda k: (centres[k], -k))  # voice 1 by register: high
    if centres[0] == centres[1]:
        pytest.skip("the first two stems share a register")
    # Make it look like a render numbered by score order: the lower stem named voice 1.
    names = list(info["instruments"])
    wrong = {low: "Viola_1", high: "Viola_2"}
    for k in (low, high):
        for ext in (".flac", ".txt"):
            if (folder / f"{names[k]}{ext}").exists():
                (folder / f"{names[k]}{ext}").rename(folder / f".{wrong[k]}{ext}")
        for ext in (".flac", ".txt"):
            if (folder / f".{wrong[k]}{ext}").exists():
                (folder / f".{wrong[k]}{ext}").rename(folder / f"{wrong[k]}{ext}")
        names[k] = wrong[k]
        entry[f"source_{k + 1}"].update(instrument=wrong[k], track=f"{music_id}/{wrong[k]}.flac")
    info["instruments"] = names
    (folder / "tutti.json").write_text(json.dumps(info))
    (old / "metadata" / "music.train.json").write_text(json.dumps(music))
    high_audio = (folder / f"{wrong[high]}.flac").read_bytes()
    before = _digest(old)
    # An interrupted earlier run left a half-built folder: it is discarded and rebuilt.
    (old / "audio" / f".{music_id}.renumber").mkdir()
    assert R.renumber_voices(old) == 1
    assert (folder / "Viola_1.flac").read_bytes() == high_audio
    fixed = _load(old, "music.train.json")[music_id]
    assert fixed[f"source_{high + 1}"]["instrument"] == "Viola_1"
    assert fixed[f"source_{high + 1}"]["track"] == f"{music_id}/Viola_1.flac"
    assert fixed[f"source_{low + 1}"]["track"] == f"{music_id}/Viola_2.flac"
    assert json.loads((folder / "tutti.json").read_text())["instruments"][high] == "Viola_1"
    assert not [p for p in (old / "audio").iterdir() if p.name.startswith(".")]
    after = _digest(old)
    assert {k for k in before if before[k] != after.get(k)} == {
        f"audio/{music_id}/Viola_1.flac", f"audio/{music_id}/Viola_2.flac",
        "metadata/music.train.json"} | ({f"audio/{music_id}/Viola_1.txt",
                                        f"audio/{music_id}/Viola_2.txt"} & set(before))
    assert CAD2Split(old, "train").pairs() == CAD2Split(root, "train").pairs()  # reads it
    assert R.renumber_voices(old) == 0 and _digest(old) == after
    with pytest.raises(FileNotFoundError, match="not a render"):
        R.renumber_voices(tmp_path / "nowhere")


# --------------------------------------------------------------------------------- reservations


RESERVED_IDS = (
    [f"mozart/k458/movement{i}.mxl" for i in range(1, 5)]
    + [f"schumann_robert/opus41no1/movement{i}.mxl" for i in range(1, 6)]
    + [f"monteverdi/madrigal.3.{i}.mxl" for i in range(1, 21)]
    + ["monteverdi/madrigal.3.1_old.mxl", "mozart/k458", "schumann_robert/opus41no1"]
)


def test_reserved_works_and_fonts_excluded(tmp_path: Path) -> None:
    for work in RESERVED_IDS:
        assert C.is_reserved_work(work), work
        with pytest.raises(C.ReservedWorkError):
            C.load_work(work)
    assert C.is_reserved_work(str(C.corpus_root() / "mozart/k458/movement2.mxl"))
    assert not C.is_reserved_work("mozart/k155/movement1.mxl")
    assert not C.is_reserved_work("monteverdi/madrigal.4.3.mxl")
    listed = [w for ws in C.list_works().values() for w in ws]
    assert listed and not any(C.is_reserved_work(w) for w in listed)
    assert not any(w.startswith(("mozart/k458", "schumann_robert/opus41no1",
                                 "monteverdi/madrigal.3.")) for w in listed)
    assert "mozart/k155/movement1.mxl" in listed and "monteverdi/madrigal.4.3.mxl" in listed
    # every work a large render could draw, in every split
    cfg = R.load_config()
    specs = R.plan(cfg, 30.0, seed=0)
    drawn = {w for s in specs for w in s.candidates}
    assert len(drawn) > 500 and not any(C.is_reserved_work(w) for w in drawn)
    # extra works cannot smuggle a reserved one in
    extra = C.works_by_split(0.1, {"quartets": ["mozart/k458/movement1.mxl"]})
    assert not any(C.is_reserved_work(w) for sp in extra.values() for g in sp.values()
                   for ws in g.values() for w in ws)
    # fonts: the configured ones are allowed, the reserved ones refused, also behind a link
    for path in cfg.timbre.sources.values():
        assert not C.is_reserved_soundfont(path)
    for name in ("TimGM6mb.sf2", "sf_GMbank.sf2"):
        assert C.is_reserved_soundfont(f"/usr/share/sounds/sf2/{name}")
        fake = tmp_path / name
        fake.write_bytes(b"RIFF")
        link = tmp_path / f"default-{name}"
        link.symlink_to(fake)
        assert C.is_reserved_soundfont(link)
        with pytest.raises(ValueError, match="reserved"):
            C.check_soundfont(link)
        with pytest.raises(ValueError, match="reserved"):
            R.load_config([f"timbre.sources.fluidr3={link}"])
        with pytest.raises(ValueError, match="reserved"):
            R.render_fluid(link, (0, 40), np.array([[0.0, 0.1, 60, 90]]), 4410, SR, 256)


def test_split_by_piece(root: Path) -> None:
    by_split = C.works_by_split(0.1)
    pieces = {s: {p for g in groups.values() for p in g} for s, groups in by_split.items()}
    works = {s: {w for g in groups.values() for ws in g.values() for w in ws}
             for s, groups in by_split.items()}
    assert pieces["train"] and pieces["valid"]
    assert pieces["train"].isdisjoint(pieces["valid"])
    assert works["train"].isdisjoint(works["valid"])
    # all movements of a quartet land together
    assert C.piece_of("haydn/opus74no1/movement3.mxl") == "haydn/opus74no1"
    assert C.piece_of("palestrina/Agnus_II_03_b.krn") == "palestrina/Agnus_II_03"
    specs = R.plan(R.load_config(), 30.0, seed=0)
    drawn = {s: {C.piece_of(w) for sp in specs if sp.split == s for w in sp.candidates}
             for s in ("train", "valid")}
    assert drawn["train"].isdisjoint(drawn["valid"])
    used = {s: {e["mixture"]["tutti"]["piece"] for e in _load(root, f"music.{s}.json").values()}
            for s in SPLITS}
    assert used["train"].isdisjoint(used["valid"] | used["valid_timbre"])


def test_bad_score_is_skipped(tmp_path: Path, cache: Path, caplog) -> None:
    bad = tmp_path / "broken.musicxml"
    bad.write_text("<score-partwise><part id='P1'><measure>oops", encoding="utf-8")
    cfg = R.load_config(_overrides(cache))
    spec = R.ExcerptSpec("tutti-train-09999", "train", 9999, (1, 1, 9999), "chorales",
                         [str(bad), "bach/bwv10.7.mxl"], heldout=False)
    (tmp_path / "audio").mkdir()
    info = R.render_excerpt(spec, cfg, tmp_path, cache)
    assert info["status"] == "rendered" and info["work"] == "bach/bwv10.7.mxl"
    assert info["skipped"][0][0] == str(bad) and "parse" in info["skipped"][0][1]
    assert "skipping work" in caplog.text
    only_bad = R.ExcerptSpec("tutti-train-09998", "train", 9998, (1, 1, 9998), "chorales",
                             [str(bad)], heldout=False)
    assert R.render_excerpt(only_bad, cfg, tmp_path, cache)["status"] == "failed"
    assert not (tmp_path / "audio" / "tutti-train-09998").exists()


# ------------------------------------------------------------------------------ building blocks


def test_listener_population() -> None:
    assert L.standard_audiogram("N2").tolist() == [20, 20, 25, 35, 40, 45, 50, 50]
    rng = np.random.default_rng(0)
    weights = {"NH": 1, "N3": 1, "S2": 1}
    listeners, params, cats = L.make_listeners(rng, 12, 1, weights)
    assert set(cats.values()) <= set(weights) and len(listeners) == 12
    for lid, entry in listeners.items():
        for ear in ("audiogram_levels_l", "audiogram_levels_r"):
            levels = np.array(entry[ear])
            assert levels.shape == (8,) and np.all(levels % 5 == 0)
            assert np.all((levels >= -10) & (levels <= 120))
        assert len(params[lid]["cr_l"]) == 6 and all(1 <= r <= 6 for r in params[lid]["cr_r"])


def test_gain_rule() -> None:
    rng = np.random.default_rng(0)
    for n in range(2, 6):
        for _ in range(50):
            gains = R.draw_gains(n, rng)
            changed = [v for v in gains.values() if v]
            assert list(gains) == [f"source_{i}" for i in range(1, n + 1)]
            assert 1 <= len(changed) <= n - 1 and set(changed) <= set(R.GAIN_STEPS_DB)


@pytest.mark.parametrize("instrument", C.INSTRUMENTS)
def test_procedural_synth_pitch(instrument: str) -> None:
    rng = np.random.default_rng(1)
    key = int(C.CENTRES[instrument])
    notes = np.array([[0.05, 0.8, key, 100]])
    mono = S.render_part(notes, S.random_params(instrument, rng), SR, SR, rng)
    assert np.isfinite(mono).all() and np.abs(mono).max() > 0
    seg = mono[int(0.3 * SR):int(0.7 * SR)]
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 8 * len(seg)))
    freqs = np.fft.rfftfreq(8 * len(seg), 1 / SR)
    f0 = 440 * 2 ** ((key - 69) / 12)
    peaks = freqs[np.argsort(spec)[-40:]]
    harmonics = np.round(peaks / f0)
    near = np.abs(peaks / np.maximum(harmonics, 1) - f0) < 0.03 * f0
    assert near.mean() > 0.8, instrument  # the strongest partials are harmonics of the note


def test_timbre_blocks() -> None:
    rng = np.random.default_rng(2)
    eq = T.random_eq(rng, 1.0)
    x = rng.standard_normal((2, SR))
    y = T.apply_sos(x, eq.sos(SR))
    assert y.shape == x.shape and np.isfinite(y).all()
    flat = T.random_eq(rng, 0.0)
    assert np.allclose(T.apply_sos(x, flat.sos(SR))[:, 1000:], x[:, 1000:], atol=1e-6) or \
        flat.highpass_hz or flat.lowpass_hz
    gain = T.attack_gain(np.array([0.1, 0.5]), SR, SR, 0.05, 0.8)
    assert gain[int(0.1 * SR)] == pytest.approx(0.2) and gain[int(0.2 * SR)] == 1.0
    curve = T.pitch_curve(T.pitch_style(rng, "Violin", 0.0), np.array([0.0]), 100, 0.01, rng)
    assert np.allclose(curve, 0.0)


# --------------------------------------------------------------------------------- render kit


@pytest.mark.skipif(not Path("/usr/share/sounds/sf2/FluidR3_GM.sf2").is_file(),
                    reason="scripts/setup.sh installs FluidR3_GM")
def test_render_from_a_kit_without_music21(tmp_path: Path, cache: Path, monkeypatch) -> None:
    """A render kit (score pack + SoundFont subset) renders on a machine without music21 and
    without the SoundFont packages' files: only packed works are drawn, unused sources need not
    exist, and a work outside the pack is named."""
    listed = C.list_works()
    works = {g: list(listed[g][:3]) for g in ("chorales", "palestrina", "madrigals")}
    with_music21 = C.load_work(works["chorales"][0], cache)
    kit = R.make_render_kit(tmp_path / "kit", works=works)
    assert any(k.startswith("timbre.sources.fluidr3=") for k in kit)
    assert not any(k.startswith("timbre.sources.musescore=") for k in kit)  # held out: stays
    monkeypatch.setitem(__import__("sys").modules, "music21", None)  # import music21 fails
    try:
        overrides = [*TINY, *kit, "timbre.sources.musescore=/nonexistent/held-out.sf3"]
        root = R.render_dataset(tmp_path / "root", HOURS, seed=7, overrides=overrides,
                                progress=False)
        assert C.list_works() == {g: tuple(ws) for g, ws in works.items()}
        packed = C.load_work(works["chorales"][0])
        np.testing.assert_array_equal(packed.parts[0].notes, with_music21.parts[0].notes)
        with pytest.raises(C.BadScoreError, match="not in the score pack"):
            C.load_work(listed["chorales"][5])
    finally:
        C.use_score_pack(None)
    music = _load(root, "music.train.json")
    drawn = {m["mixture"]["tutti"]["work"] for m in music.values()}
    assert drawn and drawn <= {w for ws in works.values() for w in ws}, drawn
    assert len(list((root / "audio").iterdir())) >= 4
    assert not any("valid_timbre" in p.name for p in (root / "audio").iterdir())
