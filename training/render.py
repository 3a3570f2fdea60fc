"""Render Tutti's training data: scores -> per-instrument stems -> a CAD2-layout dataset root.

``render_dataset(out, hours, seed)`` (``tutti data render``) plans excerpts, renders each one in a
process pool and writes::

    ROOT/audio/<music_id>/<Instrument>.flac (+ .txt scale sidecar), mixture.flac, tutti.json
    ROOT/metadata/music.<split>.json, scenes.<split>.json, scene_listeners.<split>.json,
                  listeners.<split>.json, compressor_params.<split>.json, gains.json
    ROOT/render_config.yaml, ROOT/render_report.json

for the splits ``train`` (scenes S00001..), ``valid`` (S50001..S54999) and ``valid_timbre``
(S55001..S59998: the valid excerpts re-rendered with the held-out timbre source).

One excerpt: a window of a corpus work (:mod:`training.corpus`) with 2-5 active parts, each
assigned a CAD2 instrument within its range; a randomised tempo with rubato; humanised onsets,
durations and velocities; expression (CC11) swells; each part rendered on a fresh FluidSynth
(FluidR3 or MuseScore General) or by the procedural synthesiser (:mod:`training.synth`), with
timbre randomisation (:mod:`training.timbre`); stem balance, stereo seating and a small-hall
reverb per stem, so that the stems sum exactly to the mixture; the mixture at -40 LUFS.

Every decision is drawn from generators seeded by ``(seed, split, index)``: a render is
deterministic for a seed and independent of ``jobs``. Excerpt folders appear atomically, so an
interrupted render resumes where it stopped; a work that fails is skipped with a logged reason.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from omegaconf import DictConfig, OmegaConf
from scipy import signal as sps
from tqdm import tqdm

from training import corpus as C
from training import synth as S
from training import timbre as T
from training.listeners import make_listeners

logger = logging.getLogger("tutti.render")

CONF_PATH = Path(__file__).resolve().parents[1] / "conf" / "data.yaml"
"""The renderer's configuration file."""

SOURCES: tuple[str, ...] = ("fluidr3", "musescore", "procedural")
"""Timbre sources; the first two are SoundFonts (paths in the config)."""
SOURCE_DATASET = {s: f"tutti-{s}" for s in SOURCES}
"""``source_dataset`` value of a stem rendered from each source."""
SPLIT_CODES: dict[str, int] = {"train": 1, "valid": 2}
SCENE_RANGES: dict[str, tuple[int, int]] = {
    "train": (1, 49998),
    "valid": (50001, 54999),
    "valid_timbre": (55001, 59998),
}
"""Scene numbers per split (the CAD2 recipe puts 1-49998 in train and 50001-59998 in valid)."""
LISTENER_FIRST: dict[str, int] = {"train": 1, "valid": 5001}
GAIN_STEPS_DB: tuple[float, ...] = (-10.0, -6.0, -3.0, 3.0, 6.0, 10.0)
"""CAD2 gain values for the changed sources (dB)."""
GM_PROGRAMS: dict[str, int] = {
    "Violin": 40, "Viola": 41, "Cello": 42, "Oboe": 68, "Bassoon": 70, "Clarinet": 71,
    "Flute": 73, "Sax": 65,
}
"""General MIDI programs (bank 0)."""
SAX_PROGRAMS: tuple[int, int, int] = (64, 65, 66)
"""Soprano, alto and tenor sax (GM): the sax preset follows the part's register."""
ALT_PRESETS: dict[str, dict[str, list[tuple[int, int]]]] = {
    "fluidr3": {"Violin": [(8, 40)]},
    "musescore": {inst: [(17, prog)] for inst, prog in GM_PROGRAMS.items()} | {
        "Violin": [(8, 40), (17, 40), (18, 40)]},
}
"""Alternative (bank, program) presets per SoundFont, used when randomising."""
MAX_RENDER_FAILURES = 3
"""Candidates whose audio fails checks before an excerpt is abandoned."""


class RenderError(RuntimeError):
    """An excerpt that could not be rendered from a given work (the message says why)."""


# --------------------------------------------------------------------------------------------
# Configuration and planning


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """``conf/data.yaml`` with OmegaConf dotlist ``overrides`` (``key.sub=value``) applied."""
    cfg = OmegaConf.load(CONF_PATH)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    check_config(cfg)
    return cfg


def check_config(cfg: DictConfig) -> None:
    """Raise ValueError for settings that would break the data's guarantees."""
    heldout = cfg.timbre.heldout
    if heldout not in SOURCES:
        raise ValueError(f"timbre.heldout must be one of {SOURCES}, got {heldout!r}")
    shares = {k: float(v) for k, v in cfg.timbre.shares.items()}
    if shares.get(heldout, 0.0) != 0.0:
        raise ValueError(f"timbre.shares.{heldout} must be 0: it is the held-out timbre source")
    if sum(v for k, v in shares.items() if k in SOURCES) <= 0:
        raise ValueError("timbre.shares must give some source a positive share")
    for name, path in cfg.timbre.sources.items():
        if C.is_reserved_soundfont(path):
            raise ValueError(f"timbre.sources.{name}: {path} is a reserved SoundFont")
    if cfg.excerpt_seconds <= 0 or cfg.sample_rate != 44100:
        raise ValueError("excerpt_seconds must be > 0 and sample_rate 44100 (CAD2)")


@dataclass
class ExcerptSpec:
    """What one excerpt is made of; everything else follows from its seed key."""

    music_id: str
    split: str  # train, valid or valid_timbre
    index: int  # 1-based, per base split
    seed_key: tuple[int, ...]  # entropy of the excerpt's generators
    group: str
    candidates: list[str]
    heldout: bool  # render with the held-out timbre source, unrandomised


def _weights(mapping: Any, keys: list[str]) -> np.ndarray:
    w = np.array([max(float(mapping.get(k, 0.0)), 0.0) for k in keys])
    if w.sum() <= 0:
        raise ValueError(f"weights for {keys} are all zero")
    return w / w.sum()


def plan(cfg: DictConfig, hours: float, seed: int) -> list[ExcerptSpec]:
    """The excerpts of a render: ``hours`` of train + valid music, valid re-used for
    ``valid_timbre``. Excerpt *i* of a split depends only on ``(seed, split, i)``, so a larger
    render extends a smaller one."""
    n_total = max(2, int(round(hours * 3600.0 / float(cfg.excerpt_seconds))))
    n_valid = max(1, int(round(n_total * float(cfg.splits.valid_fraction))))
    counts = {"train": max(1, n_total - n_valid), "valid": n_valid}
    extra = {g: list(ws) for g, ws in cfg.corpus.get("extra_works", {}).items()}
    by_split = C.works_by_split(float(cfg.splits.valid_piece_fraction), extra)
    specs: list[ExcerptSpec] = []
    for split, count in counts.items():
        pools = by_split[split]
        groups = [g for g in pools if float(cfg.corpus.weights.get(g, 0.0)) > 0]
        if not groups:
            raise ValueError(f"no corpus group with a positive weight has {split} pieces")
        p = _weights(cfg.corpus.weights, groups)
        for index in range(1, count + 1):
            key = (int(seed), SPLIT_CODES[split], index)
            rng = np.random.default_rng(np.random.SeedSequence(key + (0,)))
            group = groups[int(rng.choice(len(groups), p=p))]
            pieces = list(pools[group])
            candidates = []
            for _ in range(int(cfg.splits.n_candidates)):
                works = pools[group][pieces[int(rng.integers(len(pieces)))]]
                candidates.append(works[int(rng.integers(len(works)))])
            specs.append(ExcerptSpec(f"tutti-{split}-{index:05d}", split, index, key, group,
                                     candidates, heldout=False))
            if split == "valid" and cfg.splits.valid_timbre:
                specs.append(ExcerptSpec(f"tutti-valid_timbre-{index:05d}", "valid_timbre",
                                         index, key, group, candidates, heldout=True))
    return specs


# --------------------------------------------------------------------------------------------
# Choosing the excerpt: window, parts, instruments, tempo


@dataclass
class Selection:
    """A playable excerpt of a work."""

    start_ql: float
    qpm: float
    parts: list[int]  # indices into work.parts, high to low
    instruments: list[str]
    shifts: list[int]  # semitones (octave multiples)
    kind: str


def _median_ioi_ql(work: C.Work) -> float:
    """Median gap between successive onsets of all parts together (quarter lengths)."""
    onsets = np.unique(np.round(np.concatenate([p.notes[:, 0] for p in work.parts]), 4))
    gaps = np.diff(onsets)
    return float(np.median(gaps)) if len(gaps) else 1.0


def choose_tempo(work: C.Work, group: str, offset_ql: float, cfg: DictConfig,
                 rng: np.random.Generator) -> float:
    """Quarter notes per minute for an excerpt starting at ``offset_ql``: the score's mark
    (trusted groups only, jittered) or a log-uniform draw from the group's range, then kept such
    that the median inter-onset gap lies in ``tempo.ioi_seconds``."""
    tcfg = cfg.tempo
    lo, hi = (float(x) for x in tcfg.qpm.get(group, tcfg.qpm.default))
    qpm = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    use_mark = group in list(tcfg.marked_groups) and rng.random() < float(tcfg.marked_prob)
    marked = work.tempo_at(offset_ql) if use_mark else None
    if marked:
        return float(marked * (1 + rng.uniform(-1, 1) * float(tcfg.marked_jitter)))
    ioi_lo, ioi_hi = (float(x) for x in tcfg.ioi_seconds)
    ioi_ql = _median_ioi_ql(work)
    # ioi seconds = ioi_ql * 60 / qpm  ->  qpm in [60 ioi_ql / ioi_hi, 60 ioi_ql / ioi_lo]
    return float(np.clip(qpm, 60.0 * ioi_ql / ioi_hi, 60.0 * ioi_ql / ioi_lo))


def _duplicate(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two note lists are (almost) the same line: unison doublings."""
    if len(a) == 0 or len(b) == 0:
        return False
    sa = {(round(on, 3), int(p)) for on, _, p, _ in a}
    sb = {(round(on, 3), int(p)) for on, _, p, _ in b}
    return len(sa & sb) / max(len(sa | sb), 1) >= 0.8


def choose_selection(work: C.Work, group: str, cfg: DictConfig,
                     rng: np.random.Generator) -> Selection:
    """Pick tempo, window, parts and instruments for one excerpt (raises RenderError)."""
    length_s = float(cfg.excerpt_seconds) + 0.5
    chosen = None
    for _ in range(25):
        u = rng.random()
        qpm = choose_tempo(work, group, u * work.length_ql, cfg, rng)
        width_ql = length_s * qpm / 60.0 * (1 + float(cfg.tempo.rubato))
        if work.length_ql < width_ql:
            continue
        start = u * (work.length_ql - width_ql)
        if rng.random() < 0.7:
            start = float(np.floor(start))
        active: list[int] = []
        for i, part in enumerate(work.parts):
            if part.activity(start, start + width_ql) < float(cfg.corpus.min_activity):
                continue
            window = part.window(start, start + width_ql)
            if any(_duplicate(window, work.parts[j].window(start, start + width_ql))
                   for j in active):
                continue
            active.append(i)
        if len(active) >= 2:
            chosen = (start, qpm, width_ql, active)
            break
    if chosen is None:
        raise RenderError("no window with at least 2 active, distinct parts")
    start, qpm, width_ql, active = chosen

    sizes = np.arange(2, 2 + len(cfg.corpus.ensemble_size_weights))
    w = np.array([float(x) for x in cfg.corpus.ensemble_size_weights])
    n = int(min(sizes[int(rng.choice(len(sizes), p=w / w.sum()))], len(active), 5))
    parts = sorted(int(i) for i in rng.choice(active, size=n, replace=False))
    medians = {i: float(np.median(work.parts[i].window(start, start + width_ql)[:, 2]))
               for i in parts}
    parts.sort(key=lambda i: (-medians[i], i))

    kinds_cfg = cfg.corpus.kinds.get(group, cfg.corpus.kinds.default)
    kind_names = sorted(kinds_cfg)
    kind = kind_names[int(rng.choice(len(kind_names), p=_weights(kinds_cfg, kind_names)))]
    best = None
    classic = kind == "strings" and n in (3, 4) and \
        rng.random() < float(cfg.corpus.classic_strings_prob)
    for attempt in range(12):
        if classic and attempt == 0:  # string trio / quartet: Violin(s), Viola, Cello
            instruments = ["Violin"] * (n - 2) + ["Viola", "Cello"]
        else:
            instruments = C.sample_instruments(n, kind, rng)
        shifts, worst = [], 0.0
        for i, inst in zip(parts, instruments, strict=True):
            shift, out = C.best_octave_shift(work.parts[i].window(start, start + width_ql)[:, 2],
                                             inst)
            shifts.append(shift)
            worst = max(worst, out)
        if best is None or worst < best[0]:
            best = (worst, instruments, shifts)
        if worst <= float(cfg.corpus.max_out_of_range):
            break
    assert best is not None
    if best[0] > 0.5:
        raise RenderError(f"no {kind} ensemble fits the parts' ranges")
    return Selection(float(start), float(qpm), parts, best[1], best[2], kind)


# --------------------------------------------------------------------------------------------
# Performance: time map, humanised notes, control curves


class TimeMap:
    """Quarter-length offsets -> seconds from the excerpt start, with a smooth rubato."""

    def __init__(self, start_ql: float, qpm: float, rubato: float, rng: np.random.Generator,
                 span_ql: tuple[float, float]) -> None:
        step = 1.0 / 48
        grid = np.arange(span_ql[0], span_ql[1] + step, step)
        wander = np.zeros_like(grid)
        for _ in range(2):
            period = rng.uniform(6.0, 24.0)
            wander += rng.uniform(0, rubato / 2) * np.sin(
                2 * np.pi * (grid - start_ql) / period + rng.uniform(0, 2 * np.pi))
        sec_per_ql = 60.0 / (qpm * (1 + wander))
        secs = np.concatenate([[0.0], np.cumsum(sec_per_ql[:-1]) * step])
        secs -= np.interp(start_ql, grid, secs)
        self.grid, self.secs = grid, secs

    def __call__(self, ql: np.ndarray) -> np.ndarray:
        return np.interp(ql, self.grid, self.secs)

    def ql_at(self, seconds: float) -> float:
        """The offset (quarter lengths) reached after ``seconds``."""
        return float(np.interp(seconds, self.secs, self.grid))


def perform_part(notes: np.ndarray, instrument: str, shift: int, tmap: TimeMap,
                 span_ql: tuple[float, float], preroll_s: float, cfg: DictConfig,
                 rng: np.random.Generator) -> np.ndarray:
    """Humanised notes of one part in render time: ``(n, 4)`` onset s, duration s, MIDI key,
    velocity (render time 0 = ``preroll_s`` before the excerpt)."""
    pcfg = cfg.performance
    keep = (notes[:, 0] < span_ql[1]) & (notes[:, 0] + notes[:, 1] > span_ql[0])
    sel = notes[keep].copy()
    part_offset = rng.normal(0.0, float(pcfg.ensemble_sd_s))
    articulation = rng.uniform(*[float(x) for x in pcfg.articulation])
    vel_offset = rng.normal(0.0, float(pcfg.part_velocity_sd))
    if len(sel) == 0:
        return np.zeros((0, 4))
    sel[:, 2] = C.fold_into_range(sel[:, 2] + shift, instrument)
    if instrument in C.WINDS:  # one note at a time: keep the top note of chords
        order = np.lexsort((-sel[:, 2], sel[:, 0]))
        sel = sel[order]
        first = np.concatenate([[True], np.diff(sel[:, 0]) > 1e-6])
        sel = sel[first]
        nxt = np.append(sel[1:, 0], np.inf)
        sel[:, 1] = np.minimum(sel[:, 1], nxt - sel[:, 0])
    onsets_ql = np.maximum(sel[:, 0], span_ql[0])
    ends_ql = sel[:, 0] + sel[:, 1]
    on_s = tmap(onsets_ql)
    full_s = tmap(ends_ql) - tmap(sel[:, 0])
    uniq, inverse = np.unique(np.round(sel[:, 0], 6), return_inverse=True)
    jitter = rng.normal(0.0, float(pcfg.onset_sd_s), len(uniq))[inverse] + part_offset
    factor = articulation * rng.uniform(0.93, 1.04, len(sel))
    dur_s = np.maximum(full_s * factor - (on_s - tmap(sel[:, 0])), 0.05)
    on_s = on_s + jitter + preroll_s
    vel = np.clip(np.round(sel[:, 3] + vel_offset + rng.normal(0, float(pcfg.velocity_sd),
                                                                len(sel))), 15, 127)
    out = np.stack([np.maximum(on_s, 0.0), dur_s, sel[:, 2], vel], axis=1)
    out = out[np.lexsort((out[:, 2], out[:, 0]))]
    for key in np.unique(out[:, 2]):  # a re-struck key must end before it starts again
        rows = np.flatnonzero(out[:, 2] == key)
        for a, b in zip(rows[:-1], rows[1:], strict=True):
            end = out[a, 0] + out[a, 1]
            if end > out[b, 0] - 0.01:
                out[a, 1] = max(out[b, 0] - 0.01 - out[a, 0], 0.01)
    return out


# --------------------------------------------------------------------------------------------
# FluidSynth


_FLUID: dict[str, Any] = {}


def _fluid() -> dict[str, Any]:
    """pyfluidsynth plus the C functions it does not wrap (float output, generator offsets)."""
    if not _FLUID:
        import fluidsynth

        _FLUID["module"] = fluidsynth
        _FLUID["write_float"] = fluidsynth.cfunc(
            "fluid_synth_write_float", ctypes.c_int,
            ("synth", ctypes.c_void_p, 1), ("len", ctypes.c_int, 1),
            ("lout", ctypes.c_void_p, 1), ("loff", ctypes.c_int, 1), ("lincr", ctypes.c_int, 1),
            ("rout", ctypes.c_void_p, 1), ("roff", ctypes.c_int, 1), ("rincr", ctypes.c_int, 1))
        _FLUID["set_gen"] = fluidsynth.cfunc(
            "fluid_synth_set_gen", ctypes.c_int,
            ("synth", ctypes.c_void_p, 1), ("chan", ctypes.c_int, 1),
            ("param", ctypes.c_int, 1), ("value", ctypes.c_float, 1))
    return _FLUID


def render_fluid(font: str | Path, preset: tuple[int, int], notes: np.ndarray, n_samples: int,
                 sr: int, hop: int, expression: np.ndarray | None = None,
                 bend_cents: np.ndarray | None = None,
                 gens: dict[int, float] | None = None) -> np.ndarray:
    """Render notes (``(n, 4)``: onset s, duration s, key, velocity) on a fresh synth.

    ``expression`` (CC11) and ``bend_cents`` (pitch deviation, +-200 cents) are control curves on
    a ``hop``-sample grid; ``gens`` are SoundFont generator offsets for the channel. Returns
    float64 ``(2, n_samples)``; internal reverb and chorus are off.
    """
    font = C.check_soundfont(font)
    fl = _fluid()
    synth = fl["module"].Synth(gain=0.2, samplerate=float(sr), **{
        "synth.reverb.active": 0, "synth.chorus.active": 0,
        "synth.dynamic-sample-loading": 1, "synth.polyphony": 128})
    try:
        sfid = synth.sfload(str(font))
        if sfid < 0:
            raise RenderError(f"FluidSynth cannot load {font}")
        if synth.program_select(0, sfid, int(preset[0]), int(preset[1])) != 0:
            raise RenderError(f"{font.name} has no preset {preset}")
        for gen, value in (gens or {}).items():
            fl["set_gen"](synth.synth, 0, int(gen), float(value))
        events: list[tuple[int, int, int, int, int]] = []  # (sample, order, kind, a, b)
        for onset, dur, key, vel in notes:
            on = int(round(onset * sr))
            off = max(on + 1, int(round((onset + dur) * sr)))
            if on >= n_samples:
                continue
            events.append((on, 2, 0, int(key), int(vel)))
            if off < n_samples:
                events.append((off, 0, 1, int(key), 0))
        if expression is not None:
            values = np.clip(np.round(expression), 0, 127).astype(int)
            changes = np.flatnonzero(np.diff(values, prepend=-1))
            events += [(int(i) * hop, 1, 2, 11, int(values[i])) for i in changes]
        if bend_cents is not None:
            values = np.clip(np.round(np.asarray(bend_cents) * 8192 / 200), -8192, 8191)
            values = values.astype(int)
            changes = np.flatnonzero(np.diff(values, prepend=-10**6))
            events += [(int(i) * hop, 1, 3, int(values[i]), 0) for i in changes]
        events = [e for e in events if e[0] < n_samples]
        events.sort()
        left = np.zeros(n_samples, dtype=np.float32)
        right = np.zeros(n_samples, dtype=np.float32)
        lp, rp = left.ctypes.data, right.ctypes.data
        write = fl["write_float"]
        pos = 0
        for sample, _, kind, a, b in events:
            if sample > pos:
                write(synth.synth, sample - pos, lp, pos, 1, rp, pos, 1)
                pos = sample
            if kind == 0:
                synth.noteon(0, a, b)
            elif kind == 1:
                synth.noteoff(0, a)
            elif kind == 2:
                synth.cc(0, a, b)
            else:
                synth.pitch_bend(0, a)
        if pos < n_samples:
            write(synth.synth, n_samples - pos, lp, pos, 1, rp, pos, 1)
    finally:
        synth.delete()
    return np.stack([left, right]).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Room: seating and reverb


def make_ir(rng: np.random.Generator, sr: int, rt60: float, predelay_s: float) -> np.ndarray:
    """A synthetic small-hall impulse response ``(2, n)`` without the direct sound: sparse early
    reflections, then decorrelated noise decaying faster at high frequencies; unit energy per
    channel."""
    n = int(min(2.5, 1.1 * rt60 + predelay_s + 0.1) * sr)
    t = np.arange(n) / sr
    bands = [(None, 300.0), (300.0, 1200.0), (1200.0, 4500.0), (4500.0, None)]
    scales = np.array([1.25, 1.1, 0.9, 0.6]) * rng.uniform(0.9, 1.1, 4)
    ir = np.zeros((2, n))
    late_start = predelay_s + rng.uniform(0.01, 0.03)
    for ch in range(2):
        noise = rng.standard_normal(n)
        tail = np.zeros(n)
        for (lo, hi), scale in zip(bands, scales, strict=True):
            if lo is None:
                sos = sps.butter(2, hi, "lowpass", fs=sr, output="sos")
            elif hi is None:
                sos = sps.butter(2, lo, "highpass", fs=sr, output="sos")
            else:
                sos = sps.butter(2, [lo, hi], "bandpass", fs=sr, output="sos")
            tail += sps.sosfilt(sos, noise) * np.exp(-6.9 * t / (rt60 * scale))
        tail *= np.clip((t - late_start) / 0.03, 0.0, 1.0)
        for _ in range(int(rng.integers(6, 12))):
            when = predelay_s + rng.uniform(0.0, 0.05)
            i = int(when * sr)
            if i < n:
                ir[ch, i] += rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.7) * np.exp(-when / 0.08)
        ir[ch] += tail * 0.6
        ir[ch] /= np.sqrt(np.sum(ir[ch] ** 2)) + 1e-12
    return ir


def place(x: np.ndarray, pan: float, width: float, itd_samples: int) -> np.ndarray:
    """Seat a stem: narrow a stereo source to ``width``, pan its centre to ``pan`` (-1 left ..
    +1 right, constant power) and delay the far channel by ``itd_samples``."""
    mid = 0.5 * (x[0] + x[1])
    side = 0.5 * (x[0] - x[1]) * width
    theta = (pan + 1) * np.pi / 4
    left = np.sqrt(2) * np.cos(theta) * mid + side
    right = np.sqrt(2) * np.sin(theta) * mid - side
    if itd_samples > 0:
        far = right if pan < 0 else left
        far[itd_samples:] = far[:-itd_samples].copy()
        far[:itd_samples] = 0.0
    return np.stack([left, right])


def reverberate(x: np.ndarray, ir: np.ndarray, wet_gain: float) -> np.ndarray:
    """Direct sound plus ``wet_gain`` x the stem through the stereo IR (cross-fed 75/25)."""
    n = x.shape[1]
    feed_l = 0.75 * x[0] + 0.25 * x[1]
    feed_r = 0.25 * x[0] + 0.75 * x[1]
    wet_l = sps.oaconvolve(feed_l, ir[0])[:n]
    wet_r = sps.oaconvolve(feed_r, ir[1])[:n]
    return x + wet_gain * np.stack([wet_l, wet_r])


# --------------------------------------------------------------------------------------------
# Writing


def quantise(x: np.ndarray, sidecar: bool) -> tuple[np.ndarray, float | None]:
    """``(2, n)`` float -> ``(int16 (n, 2), scale)``: with ``sidecar`` the peak maps to 32767 and
    ``scale`` (to multiply after dividing by 32768) is returned, else the signal is written as is
    and ``scale`` is None."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if sidecar and peak > 0:
        scale = peak * 32768.0 / 32767.0
        q = np.round(x / scale * 32768.0)
    else:
        scale = None
        q = np.round(x * 32768.0)
    return np.clip(q, -32768, 32767).astype(np.int16).T, scale


def write_flac(path: Path, x: np.ndarray, sr: int, sidecar: bool) -> float | None:
    """Write ``(2, n)`` as 16-bit FLAC (+ ``.txt`` scale sidecar); returns the scale."""
    data, scale = quantise(x, sidecar)
    sf.write(str(path), data, sr, subtype="PCM_16", format="FLAC")
    if scale is not None:
        path.with_suffix(".txt").write_text(repr(scale), encoding="utf-8")
    return scale


def _lufs(x: np.ndarray, sr: int) -> float:
    import pyloudnorm as pyln

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(pyln.Meter(sr).integrated_loudness(x.T))


# --------------------------------------------------------------------------------------------
# One excerpt


def _rngs(spec: ExcerptSpec) -> tuple[np.random.Generator, np.random.SeedSequence]:
    """Performance generator and the timbre seed sequence of an excerpt."""
    perf = np.random.default_rng(np.random.SeedSequence(tuple(spec.seed_key) + (1,)))
    return perf, np.random.SeedSequence(tuple(spec.seed_key) + (2,))


def _preset(source: str, instrument: str, median_pitch: float, rng: np.random.Generator,
            alt_prob: float) -> tuple[int, int]:
    program = GM_PROGRAMS[instrument]
    if instrument == "Sax":
        soprano, alto, tenor = SAX_PROGRAMS
        program = tenor if median_pitch < 56 else (soprano if median_pitch > 74 else alto)
    alts = ALT_PRESETS.get(source, {}).get(instrument, [])
    if alts and rng.random() < alt_prob:
        bank, alt_program = alts[int(rng.integers(len(alts)))]
        return bank, (alt_program if instrument != "Sax" else program)
    return 0, program


def _draw_sources(n: int, cfg: DictConfig, heldout: bool, rng: np.random.Generator) -> list[str]:
    if heldout:
        return [str(cfg.timbre.heldout)] * n
    names = [s for s in SOURCES if float(cfg.timbre.shares.get(s, 0.0)) > 0]
    p = _weights(cfg.timbre.shares, names)
    if rng.random() < float(cfg.timbre.per_stem_prob):
        return [names[int(rng.choice(len(names), p=p))] for _ in range(n)]
    return [names[int(rng.choice(len(names), p=p))]] * n


def render_from_work(work: C.Work, spec: ExcerptSpec, cfg: DictConfig,
                     perf: np.random.Generator, timbre_seq: np.random.SeedSequence
                     ) -> tuple[list[np.ndarray], dict]:
    """Render one excerpt of ``work``: ``(stems (2, n) at -40 LUFS mixture level, info)``.

    Raises RenderError when the work offers no usable excerpt or the audio fails a check.
    """
    sr = int(cfg.sample_rate)
    hop = int(cfg.control_hop)
    length_s = float(cfg.excerpt_seconds)
    pre_s = float(cfg.preroll_seconds)
    sel = choose_selection(work, spec.group, cfg, perf)
    n_parts = len(sel.parts)

    # --- performance (identical for an excerpt and its held-out-timbre twin)
    span = (sel.start_ql - (pre_s + 1.0) * sel.qpm / 60.0 * 1.3 - 1.0,
            sel.start_ql + (length_s + 1.0) * sel.qpm / 60.0 * 1.3 + 1.0)
    tmap = TimeMap(sel.start_ql, sel.qpm, float(cfg.tempo.rubato), perf, span)
    render_ql = (tmap.ql_at(-pre_s), tmap.ql_at(length_s))
    n_render = int(round((pre_s + length_s) * sr))
    n_frames = n_render // hop + 2
    part_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(
        int(perf.integers(2**63))).spawn(n_parts)]
    performed, expressions = [], []
    for i, inst, shift, prng in zip(sel.parts, sel.instruments, sel.shifts, part_rngs,
                                    strict=True):
        notes = perform_part(work.parts[i].notes, inst, shift, tmap, render_ql, pre_s, cfg, prng)
        if len(notes) == 0:
            raise RenderError(f"part {i} has no notes in the window")
        performed.append(notes)
        expressions.append(T.expression_curve(prng, n_frames, hop / sr,
                                              float(cfg.performance.expression_depth)))
    pcfg = cfg.performance
    width = perf.uniform(*[float(x) for x in pcfg.pan_width])
    seats = np.linspace(-width, width, n_parts) if n_parts > 1 else np.zeros(1)
    if perf.random() < float(pcfg.pan_shuffle_prob):
        seats = perf.permutation(seats)
    pans = np.clip(seats + perf.normal(0, 0.08, n_parts), -1, 1)
    widths = perf.uniform(*[float(x) for x in pcfg.stereo_width], n_parts)
    balance = perf.normal(0.0, float(pcfg.balance_sd_db), n_parts)
    balance -= balance.mean()
    rcfg = cfg.reverb
    rt60 = float(perf.uniform(*[float(x) for x in rcfg.rt60_s]))
    predelay = float(perf.uniform(*[float(x) for x in rcfg.predelay_ms])) / 1000.0
    ir = make_ir(perf, sr, rt60, predelay)
    wet_db = float(perf.uniform(*[float(x) for x in rcfg.wet_db]))
    stem_wet_db = wet_db + perf.normal(0.0, float(rcfg.stem_wet_sd_db), n_parts)

    # --- timbre (differs between an excerpt and its held-out-timbre twin)
    trng = np.random.default_rng(timbre_seq.spawn(1)[0])
    sources = _draw_sources(n_parts, cfg, spec.heldout, trng)
    tcfg = cfg.timbre
    strength = float(tcfg.strength)
    stems, stem_info = [], []
    for k in range(n_parts):
        prng = np.random.default_rng(timbre_seq.spawn(1)[0])
        inst, notes, source = sel.instruments[k], performed[k], sources[k]
        family = C.FAMILY[inst]
        info: dict[str, Any] = {"timbre": source, "part": work.parts[sel.parts[k]].name,
                                "octave_shift": int(sel.shifts[k]),
                                "pitch_range": [int(notes[:, 2].min()), int(notes[:, 2].max())],
                                "notes": int(len(notes))}
        randomise = not spec.heldout and prng.random() < float(tcfg.randomise_prob)
        style = T.pitch_style(prng, inst, strength if randomise or source == "procedural"
                              else 0.0)
        bend = None
        if randomise or source == "procedural":
            bend = T.pitch_curve(style, notes[:, 0], n_frames, hop / sr, prng)
        if source == "procedural":
            params = S.random_params(inst, prng)
            gain_db = 40 * np.log10(np.maximum(expressions[k], 1.0) / 127.0)
            mono = S.render_part(notes, params, n_render, sr, prng, cents=bend, gain_db=gain_db,
                                 hop=hop)
            raw = np.stack([mono, mono])
            info["synth"] = params.describe()
        else:
            font = tcfg.sources[source]
            preset = _preset(source, inst, float(np.median(notes[:, 2])), prng,
                             float(tcfg.alt_program_prob) if randomise else 0.0)
            gens = T.fluid_gen_offsets(prng, family, strength) if randomise else {}
            raw = render_fluid(font, preset, notes, n_render, sr, hop, expressions[k], bend, gens)
            info["preset"] = list(preset)
            if gens:
                info["generators"] = {str(g): round(v, 1) for g, v in gens.items()}
        eq_on = randomise or (source == "procedural" and not spec.heldout
                              and prng.random() < float(tcfg.randomise_prob))
        if eq_on:
            eq = T.random_eq(prng, strength, **dict(tcfg.eq))
            raw = T.apply_sos(raw, eq.sos(sr))
            info["eq"] = eq.describe()
        if randomise and source != "procedural" and prng.random() < float(tcfg.attack_prob):
            attack_s, depth = T.random_attack(prng, family, strength)
            raw = raw * T.attack_gain(notes[:, 0], n_render, sr, attack_s, depth)
            info["attack"] = [round(attack_s, 3), round(depth, 2)]
        if randomise and source != "procedural" and prng.random() < float(tcfg.noise_prob):
            noise, level = T.playing_noise(raw, prng, family, sr, strength)
            raw = raw + noise
            info["noise_db"] = round(level, 1)
        info["randomised"] = bool(randomise or (source == "procedural" and not spec.heldout))
        if style.vibrato_cents and bend is not None:
            info["vibrato"] = [round(style.vibrato_cents, 1), round(style.vibrato_hz, 2)]
        if not np.all(np.isfinite(raw)):
            raise RenderError(f"{inst}: non-finite samples from {source}")
        excerpt = raw[:, int(pre_s * sr):]
        lufs = _lufs(excerpt, sr)
        if not np.isfinite(lufs) or lufs < -120:
            raise RenderError(f"{inst} ({source}) is silent in the excerpt")
        raw = raw * 10 ** ((balance[k] - lufs - 20.0) / 20)
        stems.append(raw)
        stem_info.append(info)

    # --- room
    itd_max = float(pcfg.itd_ms) / 1000.0 * sr
    start, stop = int(round(pre_s * sr)), int(round(pre_s * sr)) + int(round(length_s * sr))
    fade = max(1, int(float(cfg.fade_ms) / 1000.0 * sr))
    ramp = np.ones(stop - start)
    ramp[:fade] = np.linspace(0.0, 1.0, fade, endpoint=False)
    ramp[-fade:] = np.minimum(ramp[-fade:], np.linspace(1.0, 0.0, fade))
    final = []
    for k, raw in enumerate(stems):
        seated = place(raw, float(pans[k]), float(widths[k]), int(round(abs(pans[k]) * itd_max)))
        wet = reverberate(seated, ir, 10 ** (stem_wet_db[k] / 20))
        final.append(wet[:, start:stop] * ramp)
        stem_info[k].update(pan=round(float(pans[k]), 3), wet_db=round(float(stem_wet_db[k]), 2))
    mixture = np.sum(final, axis=0)
    mix_lufs = _lufs(mixture, sr)
    if not np.isfinite(mix_lufs):
        raise RenderError("silent mixture")
    gain = 10 ** ((float(cfg.loudness_lufs) - mix_lufs) / 20)
    final = [s * gain for s in final]
    for k, s in enumerate(final):
        stem_info[k]["lufs"] = round(_lufs(s, sr), 2)
        stem_info[k]["peak_dbfs"] = round(20 * np.log10(np.max(np.abs(s)) + 1e-12), 2)
    meta = {
        "work": work.work_id, "piece": work.piece_id, "group": spec.group, "kind": sel.kind,
        "qpm": round(sel.qpm, 2), "window_ql": [round(render_ql[0], 3), round(render_ql[1], 3)],
        "start_ql": round(sel.start_ql, 3), "rt60_s": round(rt60, 3),
        "wet_db": round(wet_db, 2), "instruments": C.name_voices(
            sel.instruments, [sum(info["pitch_range"]) / 2 for info in stem_info]),
        "stems": stem_info,
    }
    return final, meta


def render_excerpt(spec: ExcerptSpec, cfg: DictConfig, root: Path,
                   cache_dir: Path | None = None) -> dict:
    """Render one excerpt into ``root/audio/<music_id>/`` (atomically) and return its info.

    Tries the spec's candidate works in order; a work that cannot be used is skipped with its
    reason in ``info["skipped"]``. When no candidate works, returns ``{"status": "failed"}``.
    An excerpt whose folder already exists is not rendered again (``status`` ``cached``).
    """
    audio_dir = root / "audio"
    final_dir = audio_dir / spec.music_id
    info_path = final_dir / "tutti.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        info["status"] = "cached"
        return info
    perf, timbre_seq = _rngs(spec)
    skipped: list[list[str]] = []
    render_failures = 0
    for work_id in spec.candidates:
        try:
            work = C.load_work(work_id, cache_dir)
            stems, meta = render_from_work(work, spec, cfg, perf, timbre_seq)
        except C.BadScoreError as err:
            logger.warning("%s: skipping work %s: %s", spec.music_id, work_id, err)
            skipped.append([work_id, str(err)])
            continue
        except RenderError as err:
            logger.info("%s: no excerpt from %s: %s", spec.music_id, work_id, err)
            skipped.append([work_id, str(err)])
            render_failures += 1
            if render_failures > MAX_RENDER_FAILURES:
                break
            continue
        break
    else:
        stems = []
    if not stems:
        return {"status": "failed", "music_id": spec.music_id, "split": spec.split,
                "skipped": skipped}

    sr = int(cfg.sample_rate)
    names = meta["instruments"]
    tmp = audio_dir / f".{spec.music_id}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sidecar = bool(cfg.scale_sidecar)
    for name, stem in zip(names, stems, strict=True):
        write_flac(tmp / f"{name}.flac", stem, sr, sidecar)
    write_flac(tmp / "mixture.flac", np.sum(stems, axis=0), sr, sidecar)
    info = {"music_id": spec.music_id, "split": spec.split, "duration": float(
        cfg.excerpt_seconds), "heldout": spec.heldout, "skipped": skipped, **meta}
    (tmp / "tutti.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    try:
        os.replace(tmp, final_dir)
    except OSError:  # rendered meanwhile by another process: keep that one
        shutil.rmtree(tmp, ignore_errors=True)
    info["status"] = "rendered"
    return info


# --------------------------------------------------------------------------------------------
# Metadata


def draw_gains(n_sources: int, rng: np.random.Generator) -> dict[str, float]:
    """CAD2 rule: 1..N-1 sources change by one of -10, -6, -3, +3, +6, +10 dB, the rest 0."""
    changed = int(rng.integers(1, n_sources)) if n_sources > 1 else 0
    which = set(int(i) for i in rng.choice(n_sources, size=changed, replace=False))
    return {f"source_{i + 1}": (float(rng.choice(GAIN_STEPS_DB)) if i in which else 0.0)
            for i in range(n_sources)}


def _music_entry(info: dict) -> dict:
    entry: dict[str, Any] = {}
    mid, dur = info["music_id"], float(info["duration"])
    for k, (name, stem) in enumerate(zip(info["instruments"], info["stems"], strict=True), 1):
        entry[f"source_{k}"] = {
            "instrument": name,
            "track": f"{mid}/{name}.flac",
            "start": 0.0,
            "duration": dur,
            "source_dataset": SOURCE_DATASET[stem["timbre"]],
            "tutti": stem,
        }
    timbres = sorted({s["timbre"] for s in info["stems"]})
    extra = {k: info[k] for k in ("work", "piece", "group", "kind", "qpm", "start_ql",
                                  "window_ql", "rt60_s", "wet_db", "heldout")}
    entry["mixture"] = {
        "instrument": "Mixture",
        "track": f"{mid}/mixture.flac",
        "start": 0.0,
        "duration": dur,
        "source_dataset": "tutti-" + "+".join(timbres),
        "tutti": extra,
    }
    return entry


def build_metadata(cfg: DictConfig, seed: int, specs: list[ExcerptSpec],
                   infos: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """``{file name: content}`` of every metadata file, from the rendered excerpts' infos."""
    out: dict[str, dict[str, dict]] = {}
    gains_all: dict[str, dict[str, float]] = {}
    lcfg = cfg.listeners
    populations = {}
    for base in ("train", "valid"):
        rng = np.random.default_rng(np.random.SeedSequence((int(seed), 11, SPLIT_CODES[base])))
        populations[base] = make_listeners(
            rng, int(lcfg.count[base]), LISTENER_FIRST[base], dict(lcfg.weights),
            shift_sd_db=float(lcfg.shift_sd_db), ripple_sd_db=float(lcfg.ripple_sd_db),
            ear_sd_db=float(lcfg.ear_sd_db), asymmetric_prob=float(lcfg.asymmetric_prob))
    splits = ["train", "valid"] + (["valid_timbre"] if cfg.splits.valid_timbre else [])
    for split in splits:
        base = "train" if split == "train" else "valid"
        per_music = int(cfg.splits.scenes_per_music[base])
        first, last = SCENE_RANGES[split]
        music, scenes, scene_listeners = {}, {}, {}
        listeners, params, _ = populations[base]
        listener_ids = sorted(listeners)
        for spec in sorted((s for s in specs if s.split == split), key=lambda s: s.index):
            info = infos.get(spec.music_id)
            if info is None:
                continue
            music[spec.music_id] = _music_entry(info)
            n_sources = len(info["instruments"])
            for j in range(per_music):
                number = first + (spec.index - 1) * per_music + j
                if number > last:
                    raise ValueError(f"too many {split} scenes for ids up to S{last}: "
                                     "render fewer hours or fewer scenes per music")
                scene_id, gain_id = f"S{number:05d}", f"G{number:05d}"
                key = tuple(spec.seed_key) + (j,)
                grng = np.random.default_rng(np.random.SeedSequence(key + (3,)))
                gains_all[gain_id] = draw_gains(n_sources, grng)
                scenes[scene_id] = {"music": spec.music_id, "gain": gain_id}
                lrng = np.random.default_rng(np.random.SeedSequence(key + (4,)))
                count = min(int(lcfg.per_scene), len(listener_ids))
                scene_listeners[scene_id] = [
                    listener_ids[int(i)] for i in lrng.choice(len(listener_ids), count,
                                                              replace=False)]
        out[f"music.{split}.json"] = music
        out[f"scenes.{split}.json"] = scenes
        out[f"scene_listeners.{split}.json"] = scene_listeners
        out[f"listeners.{split}.json"] = listeners
        out[f"compressor_params.{split}.json"] = params
    out["gains.json"] = gains_all
    return out


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def renumber_voices(root: Path) -> int:
    """Number the doubled voices of a render made before voices went by register (session 39)
    as :func:`~training.corpus.name_voices` now does, voice 1 the higher: each such excerpt's
    folder is rebuilt under the new names (hard links, then swapped in) and the music metadata
    follows. Scenes give gains per source, not per name, so every reference signal stays as it
    was; only the names a request uses move. Returns how many excerpts changed; safe to
    interrupt and run again."""
    audio = root / "audio"
    if not (audio.is_dir() and (root / "metadata").is_dir()):
        raise FileNotFoundError(f"{root}: no audio/ and metadata/ folders: not a render")
    changed = 0
    for folder in sorted(p for p in audio.iterdir() if p.name.startswith(".")):
        music_id = folder.name[1:].removesuffix(".renumber").removesuffix(".old")
        if folder.name.endswith(".renumber") and not (audio / music_id).exists():
            os.replace(folder, audio / music_id)  # interrupted between the two swaps
        elif folder.name.endswith((".renumber", ".old")):
            shutil.rmtree(folder)
    for info_path in sorted(audio.glob("[!.]*/tutti.json")):
        info = json.loads(info_path.read_text(encoding="utf-8"))
        old = info["instruments"]  # registers as the renderer gives them
        new = C.name_voices([name.split("_")[0] for name in old],
                            [sum(stem["pitch_range"]) / 2 for stem in info["stems"]])
        if new == old:
            continue
        folder = info_path.parent
        renamed = {f"{o}{ext}": f"{n}{ext}" for o, n in zip(old, new, strict=True)
                   for ext in (".flac", ".txt")}
        staging = audio / f".{folder.name}.renumber"
        staging.mkdir()
        for item in folder.iterdir():
            if item.name != "tutti.json":
                os.link(item, staging / renamed.get(item.name, item.name))
        (staging / "tutti.json").write_text(json.dumps({**info, "instruments": new}, indent=1),
                                            encoding="utf-8")
        retired = audio / f".{folder.name}.old"
        os.replace(folder, retired)
        os.replace(staging, folder)
        shutil.rmtree(retired)
        changed += 1
    for music_path in sorted((root / "metadata").glob("music.*.json")):
        music = json.loads(music_path.read_text(encoding="utf-8"))
        for music_id in music:
            info = json.loads((audio / music_id / "tutti.json").read_text(encoding="utf-8"))
            for k, name in enumerate(info["instruments"], 1):
                music[music_id][f"source_{k}"].update(instrument=name,
                                                      track=f"{music_id}/{name}.flac")
        _write_json(music_path, music)
    return changed


# --------------------------------------------------------------------------------------------
# The whole dataset


def _init_worker() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    warnings.filterwarnings("ignore")


def _task(args: tuple[dict, dict, str, str | None]) -> dict:
    spec_d, cfg_d, root, cache = args
    spec = ExcerptSpec(**spec_d)
    cfg = OmegaConf.create(cfg_d)
    C.use_score_pack(cfg.corpus.get("score_pack"))  # a worker process: once
    try:
        return render_excerpt(spec, cfg, Path(root), Path(cache) if cache else None)
    except Exception as err:  # never let one excerpt kill the render
        logger.exception("%s failed", spec.music_id)
        return {"status": "failed", "music_id": spec.music_id, "split": spec.split,
                "skipped": [["*", f"{type(err).__name__}: {err}"]]}


def used_sources(cfg: DictConfig) -> list[str]:
    """The timbre sources a render draws from: those with a share, and the held-out one when
    ``splits.valid_timbre`` renders it (a source nothing draws from need not be installed)."""
    used = [s for s in SOURCES if float(cfg.timbre.shares.get(s, 0.0)) > 0]
    if cfg.splits.valid_timbre and cfg.timbre.heldout not in used:
        used.append(str(cfg.timbre.heldout))
    return used


def source_presets(source: str) -> list[tuple[int, int]]:
    """Every ``(bank, program)`` :func:`_preset` can pick from the SoundFont ``source``."""
    out = {(0, p) for p in GM_PROGRAMS.values()} | {(0, p) for p in SAX_PROGRAMS}
    for instrument, alts in ALT_PRESETS.get(source, {}).items():
        for bank, program in alts:
            out |= {(bank, p) for p in SAX_PROGRAMS} if instrument == "Sax" else {(bank, program)}
    return sorted(out)


def make_render_kit(out: Path, jobs: int = 1, overrides: list[str] | None = None,
                    works: dict[str, list[str]] | None = None) -> list[str]:
    """What a machine without music21 or the SoundFont packages needs to render training data
    (e.g. a GPU machine that only takes a small upload): ``out/scores`` (the corpus's note
    lists, :func:`training.corpus.make_score_pack`) and, per SoundFont source with a training
    share, ``out/<name>.sf2`` holding only the presets the renderer uses
    (:func:`training.soundfont.subset_soundfont`). Returns the data-config overrides that
    render from it (paths under ``out`` as given; ``splits.valid_timbre=false``: the held-out
    source stays behind). ``works``: pack only these (``{group: [work id]}``)."""
    from training.soundfont import subset_soundfont

    cfg = load_config(overrides)
    out = Path(out)
    C.make_score_pack(out / "scores", jobs=jobs, works=works)
    kit = [f"corpus.score_pack={out / 'scores'}", "splits.valid_timbre=false"]
    for name in used_sources(OmegaConf.merge(cfg, {"splits": {"valid_timbre": False}})):
        if name == "procedural":
            continue
        target = out / f"{name}.sf2"
        subset_soundfont(cfg.timbre.sources[name], target, source_presets(name))
        kit.append(f"timbre.sources.{name}={target}")
    return kit


def _fingerprint(cfg: DictConfig, seed: int) -> str:
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hours", None)
    text = json.dumps({"cfg": data, "seed": int(seed)}, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def render_dataset(out: Path, hours: float | None = None, seed: int = 0, jobs: int = 1,
                   overrides: list[str] | None = None, progress: bool = True) -> Path:
    """Render (or resume rendering) a CAD2-layout root at ``out`` and return its path.

    Args:
        out: dataset root to create or complete.
        hours: hours of train + valid music (``None``: the config's ``hours``).
        seed: render seed; the same seed, config and hours give the same files.
        jobs: worker processes.
        overrides: OmegaConf dotlist overrides of ``conf/data.yaml``.
        progress: show a tqdm bar.

    Raises:
        ValueError: bad configuration, or ``out`` was rendered with another config or seed.
    """
    t0 = time.time()
    cfg = load_config(overrides)
    hours = float(cfg.hours if hours is None else hours)
    if hours <= 0:
        raise ValueError("hours must be positive")
    root = Path(out)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(cfg, seed)
    conf_file = root / "render_config.yaml"
    if conf_file.is_file():
        previous = OmegaConf.load(conf_file)
        if previous.get("fingerprint") != fingerprint:
            raise ValueError(f"{root} was rendered with another configuration or seed; "
                             "render into a new folder")
    saved = OmegaConf.create({"fingerprint": fingerprint, "seed": int(seed), "hours": hours,
                              "config": cfg})
    conf_file.write_text(OmegaConf.to_yaml(saved), encoding="utf-8")
    C.use_score_pack(cfg.corpus.get("score_pack"))
    cache = Path(cfg.cache_dir) if cfg.cache_dir else root / ".cache" / "scores"
    for name in used_sources(cfg):
        if name != "procedural":
            C.check_soundfont(cfg.timbre.sources[name])

    specs = plan(cfg, hours, seed)
    cfg_d = OmegaConf.to_container(cfg, resolve=True)
    tasks = [(asdict(s), cfg_d, str(root), str(cache)) for s in specs]
    infos: dict[str, dict] = {}
    counts = {"rendered": 0, "cached": 0, "failed": 0}
    skipped: dict[str, str] = {}
    failed: dict[str, list] = {}
    bar = None

    def collect(result: dict) -> None:
        counts[result["status"]] += 1
        for work_id, reason in result.get("skipped", []):
            skipped.setdefault(work_id, reason)
        if result["status"] == "failed":
            failed[result["music_id"]] = result.get("skipped", [])
            logger.warning("%s: no usable work among its candidates; left out",
                           result["music_id"])
        else:
            infos[result["music_id"]] = result
        bar.update(1)

    def make_bar() -> tqdm:
        return tqdm(total=len(tasks), desc="render", unit="excerpt", disable=not progress,
                    file=sys.stderr)

    if jobs <= 1:
        bar = make_bar()
        for task in tasks:
            collect(_task(task))
    else:
        with ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker) as pool:
            futures = [pool.submit(_task, task) for task in tasks]
            bar = make_bar()  # after the workers fork: no monitor thread gets copied
            for fut in as_completed(futures):
                collect(fut.result())
    bar.close()

    for name, content in build_metadata(cfg, seed, specs, infos).items():
        _write_json(root / "metadata" / name, content)
    seconds = {s: 0.0 for s in ("train", "valid", "valid_timbre")}
    for info in infos.values():
        seconds[info["split"]] += float(info["duration"])
    disk = sum(p.stat().st_size for p in (root / "audio").rglob("*") if p.is_file())
    report = {
        "seed": int(seed), "hours_requested": hours,
        "hours_rendered": {k: round(v / 3600.0, 4) for k, v in seconds.items()},
        "excerpts": counts, "planned": len(specs), "wall_s": round(time.time() - t0, 1),
        "audio_bytes": disk, "skipped_works": skipped, "failed_excerpts": failed,
    }
    _write_json(root / "render_report.json", report)
    logger.info("rendered %d, cached %d, failed %d excerpts in %.1f s", counts["rendered"],
                counts["cached"], counts["failed"], report["wall_s"])
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m training.render --out ROOT --hours H --seed S [--jobs N] [key=value ...]``."""
    parser = argparse.ArgumentParser(description="Render Tutti training data (CAD2 layout).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hours", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="conf/data.yaml overrides, key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = render_dataset(args.out, args.hours, args.seed, args.jobs, args.overrides)
    report = json.loads((root / "render_report.json").read_text(encoding="utf-8"))
    print(json.dumps({k: report[k] for k in ("hours_rendered", "excerpts", "wall_s",
                                             "audio_bytes")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
