"""Score corpus for the training-data renderer: works, parts, instrument ranges, splits.

Works come from music21's bundled corpus (string quartets; Bach chorales, Palestrina, Monteverdi
and other polyphony that Tutti re-voices for strings and winds). A *work id* is the path of a
score file relative to music21's corpus folder, extension included (``bach/bwv10.7.mxl``); an
absolute path to a score file is accepted too (tests use that for broken scores). A *piece id*
groups works that must land in the same split (the movements of one quartet, the sections of one
mass movement), and the train/valid split is a deterministic hash of the piece id.

:data:`RESERVED_WORKS` and :data:`RESERVED_SOUNDFONTS` are the one list of material that must
never be used for training or tuning; every listing and loader here checks them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

RESERVED_WORKS: tuple[str, ...] = (
    "mozart/k458",
    "schumann_robert/opus41no1",
    "monteverdi/madrigal.3.*",
)
"""Corpus works reserved for final testing: never rendered, listed or tuned on (glob patterns on
the work id without extension; a pattern also covers everything below it, e.g. all movements)."""

RESERVED_SOUNDFONTS: tuple[str, ...] = ("timgm6mb.sf2", "sf_gmbank.sf2")
"""SoundFonts reserved for final testing (file names, lower case, after resolving links)."""

INSTRUMENTS: tuple[str, ...] = (
    "Bassoon", "Cello", "Clarinet", "Flute", "Oboe", "Sax", "Viola", "Violin",
)
"""The CAD2 instrument vocabulary."""
DOUBLED: tuple[str, ...] = ("Flute", "Sax", "Viola", "Violin")
"""Instruments that may appear twice in one ensemble (``_1`` / ``_2``)."""
STRINGS: tuple[str, ...] = ("Violin", "Viola", "Cello")
WINDS: tuple[str, ...] = ("Flute", "Oboe", "Clarinet", "Sax", "Bassoon")


def ensemble_kind(instruments: Iterable[str]) -> str:
    """``strings``, ``winds`` or ``mixed``: the kind of an ensemble of CAD2 instruments."""
    kinds = {instrument in STRINGS for instrument in instruments}
    return "mixed" if len(kinds) == 2 else ("strings" if True in kinds else "winds")


RANGES: dict[str, tuple[int, int]] = {
    "Violin": (55, 100),
    "Viola": (48, 88),
    "Cello": (36, 81),
    "Flute": (60, 96),
    "Oboe": (58, 91),
    "Clarinet": (50, 91),
    "Sax": (49, 80),
    "Bassoon": (34, 75),
}
"""Playable sounding range per instrument (MIDI note numbers; alto sax for ``Sax``)."""
CENTRES: dict[str, float] = {
    "Violin": 74.0, "Viola": 63.0, "Cello": 52.0, "Flute": 79.0, "Oboe": 73.0,
    "Clarinet": 67.0, "Sax": 64.0, "Bassoon": 50.0,
}
"""Comfortable tessitura centre per instrument (MIDI), used to match parts to instruments."""
FAMILY: dict[str, str] = {
    "Violin": "bowed", "Viola": "bowed", "Cello": "bowed", "Flute": "flute",
    "Oboe": "double_reed", "Bassoon": "double_reed", "Clarinet": "single_reed", "Sax": "sax",
}
"""Synthesis family per instrument (see :mod:`training.synth`)."""

CACHE_VERSION = 2
"""Bump when the note extraction changes: cached note lists of older versions are ignored."""

DYNAMIC_VELOCITY: dict[str, int] = {
    "pppp": 20, "ppp": 28, "pp": 38, "p": 50, "mp": 62, "mf": 74, "f": 88, "ff": 102,
    "fff": 114, "ffff": 122, "sf": 100, "sfz": 104, "fz": 100, "fp": 88, "sfp": 96, "rf": 96,
    "rfz": 100,
}
"""MIDI velocity for a dynamic marking (unknown markings keep the current velocity)."""


class BadScoreError(ValueError):
    """A score that cannot be used (unparsable, too few parts, no notes); the message says why."""


class ReservedWorkError(BadScoreError):
    """A reserved work was requested."""


# --------------------------------------------------------------------------------------------
# Reservations


def _strip_ext(work_id: str) -> str:
    path = work_id.replace("\\", "/")
    if "corpus/" in path and os.path.isabs(path):
        path = path.split("corpus/", 1)[1]
    stem, ext = os.path.splitext(path)
    return stem if ext.lower() in {".mxl", ".xml", ".musicxml", ".krn", ".abc", ".rntxt",
                                   ".mid", ".midi"} else path


def is_reserved_work(work_id: str) -> bool:
    """True if ``work_id`` (with or without extension, or an absolute corpus path) is reserved."""
    key = _strip_ext(work_id).strip("/").lower()
    for pattern in RESERVED_WORKS:
        pat = pattern.lower()
        if fnmatch.fnmatchcase(key, pat) or key.startswith(pat.rstrip("*").rstrip("/") + "/"):
            return True
        if fnmatch.fnmatchcase(key, pat + "/*"):
            return True
    return False


def is_reserved_soundfont(path: str | os.PathLike) -> bool:
    """True if the SoundFont (after resolving symbolic links) is one of the reserved ones."""
    names = {Path(path).name.lower()}
    try:
        names.add(Path(os.path.realpath(path)).name.lower())
    except OSError:
        pass
    return bool(names & set(RESERVED_SOUNDFONTS))


def check_soundfont(path: str | os.PathLike) -> Path:
    """Return ``path`` if it exists and is not reserved (else ValueError / FileNotFoundError)."""
    if is_reserved_soundfont(path):
        raise ValueError(f"{path}: reserved SoundFont, never used for training data")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: SoundFont not found (install it with scripts/setup.sh)")
    return Path(path)


# --------------------------------------------------------------------------------------------
# Work listing, pieces and splits


GROUPS: tuple[str, ...] = ("quartets", "chorales", "palestrina", "madrigals", "early")
"""Corpus groups, each with its own sampling weight in ``conf/data.yaml``."""

_NOT_ENSEMBLE = ("mozart/k545", "schumann_robert/dichterliebe", "schumann_robert/opus48no2")
_GROUP_COMPOSERS: dict[str, tuple[str, ...]] = {
    "quartets": ("haydn", "mozart", "beethoven", "schumann_robert", "corelli"),
    "chorales": ("bach",),
    "palestrina": ("palestrina",),
    "madrigals": ("monteverdi",),
    "early": ("trecento", "luca", "lusitano", "josquin"),
}
_SCORE_EXTS = (".mxl", ".xml", ".musicxml", ".krn", ".abc")


def corpus_root() -> Path:
    """music21's bundled corpus folder."""
    from music21 import common

    return Path(common.getCorpusFilePath())


def list_works() -> dict[str, tuple[str, ...]]:
    """``{group: (work id, ...)}`` of every usable, non-reserved corpus score (sorted).

    One file per movement: MusicXML is preferred where a Humdrum copy of the same movement exists;
    analyses (``.rntxt``), backups and known non-ensemble pieces are left out. With a score pack
    in use (:func:`use_score_pack`), the pack's listing.
    """
    if _PACK is not None:
        return {g: tuple(ws) for g, ws in _PACK["works"].items()}
    return _list_corpus_works()


@lru_cache(maxsize=1)
def _list_corpus_works() -> dict[str, tuple[str, ...]]:
    root = corpus_root()
    out: dict[str, tuple[str, ...]] = {}
    for group, composers in _GROUP_COMPOSERS.items():
        chosen: dict[str, str] = {}
        for composer in composers:
            folder = root / composer
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() not in _SCORE_EXTS or not path.is_file():
                    continue
                rel = path.relative_to(root).as_posix()
                stem = _strip_ext(rel)
                if is_reserved_work(rel) or stem.startswith(_NOT_ENSEMBLE):
                    continue
                if re.search(r"(_bak|_old)$", stem):
                    continue
                previous = chosen.get(stem)
                if previous is None or _ext_rank(rel) < _ext_rank(previous):
                    chosen[stem] = rel
        out[group] = tuple(sorted(chosen.values()))
    return out


def _ext_rank(rel: str) -> int:
    return _SCORE_EXTS.index(os.path.splitext(rel)[1].lower())


def piece_of(work_id: str) -> str:
    """The piece a work belongs to: all movements of a quartet, all sections of a mass movement.

    ``haydn/opus74no1/movement2.mxl`` -> ``haydn/opus74no1``;
    ``palestrina/Agnus_II_03_a.krn`` -> ``palestrina/Agnus_II_03``; otherwise the work id
    without extension.
    """
    stem = _strip_ext(work_id)
    if os.path.isabs(stem):
        return stem
    parts = stem.split("/")
    if len(parts) >= 3:
        return "/".join(parts[:-1])
    if parts[0] == "palestrina":
        return re.sub(r"_[a-z]$", "", stem)
    return stem


def piece_hash(piece_id: str) -> float:
    """A deterministic number in [0, 1) from a piece id (SHA-1)."""
    return int(hashlib.sha1(piece_id.encode("utf-8")).hexdigest()[:15], 16) / 16**15


def split_pieces(works: Sequence[str], valid_fraction: float) -> dict[str, str]:
    """``{piece id: "train" | "valid"}``: the ``valid_fraction`` of pieces with the lowest hash
    (at least one when there are two or more pieces) go to ``valid``. Independent of any seed."""
    pieces = sorted({piece_of(w) for w in works}, key=lambda p: (piece_hash(p), p))
    n_valid = 0
    if len(pieces) >= 2:
        n_valid = min(len(pieces) - 1, max(1, math.ceil(valid_fraction * len(pieces))))
    return {p: ("valid" if i < n_valid else "train") for i, p in enumerate(pieces)}


def works_by_split(
    valid_fraction: float, extra: dict[str, Sequence[str]] | None = None,
) -> dict[str, dict[str, dict[str, tuple[str, ...]]]]:
    """``{split: {group: {piece: (work, ...)}}}`` for ``train`` and ``valid``.

    ``extra`` adds work ids (e.g. absolute paths) to groups; reserved ids are dropped with a log.
    """
    listing = {g: list(ws) for g, ws in list_works().items()}
    for group, ids in (extra or {}).items():
        for work in ids:
            if is_reserved_work(work):
                logger.warning("not adding reserved work %s", work)
                continue
            listing.setdefault(group, []).append(str(work))
    out: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {"train": {}, "valid": {}}
    for group, works in listing.items():
        assignment = split_pieces(works, valid_fraction)
        for split in out:
            pieces: dict[str, list[str]] = {}
            for work in works:
                piece = piece_of(work)
                if assignment[piece] == split:
                    pieces.setdefault(piece, []).append(work)
            if pieces:
                out[split][group] = {p: tuple(sorted(ws)) for p, ws in sorted(pieces.items())}
    return out


# --------------------------------------------------------------------------------------------
# Loading scores as note lists


@dataclass
class Part:
    """One part of a work as a note list.

    ``notes`` is ``(n, 4)`` float: onset (quarter lengths), duration (quarter lengths), MIDI pitch,
    velocity (1-127, from the dynamic markings), sorted by onset then pitch.
    """

    name: str
    notes: np.ndarray

    def window(self, start_ql: float, end_ql: float) -> np.ndarray:
        """Notes sounding in ``[start_ql, end_ql)``, unclipped."""
        on, dur = self.notes[:, 0], self.notes[:, 1]
        keep = (on < end_ql) & (on + dur > start_ql)
        return self.notes[keep]

    def activity(self, start_ql: float, end_ql: float) -> float:
        """Fraction of ``[start_ql, end_ql)`` during which at least one note sounds."""
        notes = self.window(start_ql, end_ql)
        if len(notes) == 0:
            return 0.0
        spans = np.clip(np.stack([notes[:, 0], notes[:, 0] + notes[:, 1]], 1), start_ql, end_ql)
        spans = spans[np.argsort(spans[:, 0])]
        covered, cur_s, cur_e = 0.0, spans[0, 0], spans[0, 1]
        for s, e in spans[1:]:
            if s > cur_e:
                covered += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        covered += cur_e - cur_s
        return float(covered / max(end_ql - start_ql, 1e-9))


@dataclass
class Work:
    """A parsed work: parts as note lists, length and tempo marks (``(offset ql, quarter bpm)``)."""

    work_id: str
    piece_id: str
    parts: list[Part]
    length_ql: float
    tempos: list[tuple[float, float]]

    def tempo_at(self, offset_ql: float) -> float | None:
        """The marked tempo (quarter notes per minute) in force at ``offset_ql``, if any."""
        current = None
        for off, qpm in self.tempos:
            if off <= offset_ql + 1e-9:
                current = qpm
        return current


def _score_path(work_id: str) -> Path:
    path = Path(work_id)
    if path.is_absolute():
        return path
    return corpus_root() / work_id


def _extract(work_id: str) -> dict:
    """Parse a score with music21 and return its JSON-able note lists (raises BadScoreError)."""
    from music21 import converter, dynamics, stream, tempo

    path = _score_path(work_id)
    if not path.is_file():
        raise BadScoreError(f"score file not found: {path}")
    try:
        parsed = converter.parse(str(path))
    except Exception as err:  # music21 raises many exception types on bad input
        raise BadScoreError(f"music21 cannot parse it ({type(err).__name__}: {err})") from None
    if isinstance(parsed, stream.Opus):
        parts_src = [p for score in parsed.scores for p in score.parts]
    elif isinstance(parsed, stream.Score):
        parts_src = list(parsed.parts)
    else:
        parts_src = [parsed]

    parts = []
    tempos: list[tuple[float, float]] = []
    for index, part in enumerate(parts_src):
        try:
            flat = part.flatten()
        except Exception as err:
            raise BadScoreError(f"part {index}: cannot flatten ({type(err).__name__})") from None
        dyn_marks = sorted(
            (float(d.getOffsetBySite(flat)), str(d.value))
            for d in flat.getElementsByClass(dynamics.Dynamic)
        )
        if index == 0 or not tempos:
            for mark in flat.getElementsByClass(tempo.MetronomeMark):
                try:
                    qpm = mark.getQuarterBPM()
                except Exception:
                    qpm = None
                if qpm and 10 < qpm < 400:
                    tempos.append((float(mark.getOffsetBySite(flat)), float(qpm)))
        rows: list[list[float]] = []
        open_ties: dict[int, int] = {}  # MIDI key -> row of the note a tie continues
        d_index, velocity = 0, DYNAMIC_VELOCITY["mf"]
        for element in flat.notes:
            onset = float(element.getOffsetBySite(flat))
            dur = float(element.duration.quarterLength)
            while d_index < len(dyn_marks) and dyn_marks[d_index][0] <= onset + 1e-9:
                velocity = DYNAMIC_VELOCITY.get(dyn_marks[d_index][1], velocity)
                d_index += 1
            if dur <= 0:  # grace notes
                continue
            members = element.notes if hasattr(element, "notes") else [element]
            for member in members:
                pitch = getattr(member, "pitch", None)
                if pitch is None:
                    continue
                midi = int(round(pitch.ps))
                if not 12 <= midi <= 120:
                    continue
                tie = getattr(member, "tie", None) or getattr(element, "tie", None)
                kind = tie.type if tie is not None else None
                row = open_ties.get(midi)
                if kind in ("continue", "stop") and row is not None and \
                        abs(rows[row][0] + rows[row][1] - onset) < 1e-3:
                    rows[row][1] = onset + dur - rows[row][0]  # tied: lengthen, no new note
                    if kind == "stop":
                        del open_ties[midi]
                    continue
                rows.append([onset, dur, midi, velocity])
                if kind == "start":
                    open_ties[midi] = len(rows) - 1
                else:
                    open_ties.pop(midi, None)
        if rows:
            name = part.partName or f"part{index + 1}"
            rows.sort()
            parts.append({"name": str(name), "notes": rows})
    if len(parts) < 2:
        raise BadScoreError(f"needs at least 2 parts with notes, found {len(parts)}")
    length = max(max(on + dur for on, dur, *_ in p["notes"]) for p in parts)
    return {
        "version": CACHE_VERSION,
        "music21": _music21_version(),
        "work_id": work_id,
        "parts": parts,
        "length_ql": float(length),
        "tempos": sorted(set(tempos)),
    }


def _music21_version() -> str:
    if _PACK is not None:
        return str(_PACK["music21"])
    import music21

    return str(music21.__version__)


def _cache_file(cache_dir: Path, work_id: str) -> Path:
    digest = hashlib.sha1(work_id.encode("utf-8")).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", _strip_ext(work_id))[-80:]
    return cache_dir / f"{safe}.{digest}.json"


_MEMORY: dict[str, Work] = {}


def load_work(work_id: str, cache_dir: str | Path | None = None) -> Work:
    """Load a work's note lists, from the JSON cache in ``cache_dir`` when present.

    Raises:
        ReservedWorkError: the work is reserved.
        BadScoreError: the score cannot be used; the message says why.
    """
    if is_reserved_work(work_id):
        raise ReservedWorkError(f"{work_id} is reserved for testing and never rendered")
    if work_id in _MEMORY:
        return _MEMORY[work_id]
    if _PACK is not None:
        cache_dir = _PACK["folder"]
    data = None
    cache_path = _cache_file(Path(cache_dir), work_id) if cache_dir else None
    if cache_path is not None and cache_path.is_file():
        try:
            data = json.loads(cache_path.read_text(encoding="utf-8"))
            if (data.get("version"), data.get("music21"), data.get("work_id")) != (
                    CACHE_VERSION, _music21_version(), work_id):
                data = None
        except (OSError, json.JSONDecodeError):
            data = None
    if data is None and _PACK is not None:
        raise BadScoreError(f"{work_id}: not in the score pack {_PACK['folder']}")
    if data is None:
        data = _extract(work_id)
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_path.parent, suffix=".part")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
            os.replace(tmp, cache_path)
    work = Work(
        work_id=work_id,
        piece_id=piece_of(work_id),
        parts=[Part(p["name"], np.asarray(p["notes"], dtype=float)) for p in data["parts"]],
        length_ql=float(data["length_ql"]),
        tempos=[(float(a), float(b)) for a, b in data["tempos"]],
    )
    if len(_MEMORY) > 16:
        _MEMORY.pop(next(iter(_MEMORY)))
    _MEMORY[work_id] = work
    return work


# --------------------------------------------------------------------------------------------
# Score packs: the corpus's note lists without music21

PACK_LISTING = "listing.json"
"""A score pack's index: ``{"music21": version, "cache_version": n, "works": {group: [id]}}``."""
_PACK: dict | None = None


def use_score_pack(folder: str | os.PathLike | None) -> None:
    """List and read works from the score pack in ``folder`` (:func:`make_score_pack`) instead of
    music21's corpus, so that a machine without music21 can render; ``None``: music21 again (the
    same folder again: nothing to do). Raises FileNotFoundError / ValueError for a folder that
    is not a current score pack."""
    global _PACK
    if (None if _PACK is None else _PACK["folder"]) == (None if folder is None else Path(folder)):
        return  # already so (render workers call this per excerpt: keep their parsed works)
    _MEMORY.clear()
    if folder is None:
        _PACK = None
        return
    listing = Path(folder) / PACK_LISTING
    if not listing.is_file():
        raise FileNotFoundError(f"{folder}: no {PACK_LISTING} (make one with tutti data kit)")
    index = json.loads(listing.read_text(encoding="utf-8"))
    if index.get("cache_version") != CACHE_VERSION:
        raise ValueError(f"{folder}: score pack of note-list version "
                         f"{index.get('cache_version')}, this renderer reads {CACHE_VERSION}")
    _PACK = {**index, "folder": Path(folder)}


def _pack_one(args: tuple[str, str]) -> tuple[str, str | None]:
    work_id, folder = args
    _MEMORY.pop(work_id, None)  # loaded from elsewhere: it must land in the pack's folder
    try:
        load_work(work_id, folder)
        return work_id, None
    except BadScoreError as err:
        return work_id, str(err)


def make_score_pack(folder: str | os.PathLike, jobs: int = 1, progress: bool = True,
                    works: dict[str, Sequence[str]] | None = None) -> dict[str, int]:
    """Extract the note lists of every listed corpus work (``works``: only these, ``{group:
    [work id]}``; music21 needed) into ``folder`` in :func:`load_work`'s cache format and
    write the pack's listing of the works that loaded (atomically, last). Resumable: extracted
    works are read back, not parsed again. Returns ``{"works": n, "skipped": n}``."""
    from concurrent.futures import ProcessPoolExecutor
    from contextlib import nullcontext

    from tqdm import tqdm

    if _PACK is not None:
        raise ValueError("make_score_pack reads music21's corpus: use_score_pack(None) first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    works = list_works() if works is None else works
    reserved = [w for ws in works.values() for w in ws if is_reserved_work(w)]
    if reserved:
        raise ReservedWorkError(f"reserved works never go into a score pack: {reserved}")
    jobs_list = [(w, str(folder)) for ws in works.values() for w in ws]
    bar = tqdm(total=len(jobs_list), desc="scores", unit="work", disable=not progress)
    bad: dict[str, str] = {}
    with ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else nullcontext() as pool:
        results = pool.map(_pack_one, jobs_list, chunksize=8) if pool else map(_pack_one,
                                                                                 jobs_list)
        for work_id, error in results:
            if error is not None:
                bad[work_id] = error
            bar.update()
    bar.close()
    index = {"music21": _music21_version(), "cache_version": CACHE_VERSION,
             "works": {g: [w for w in ws if w not in bad] for g, ws in works.items()},
             "skipped": bad}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(index, fh, indent=1)
    os.replace(tmp, folder / PACK_LISTING)
    return {"works": sum(len(ws) for ws in index["works"].values()), "skipped": len(bad)}


# --------------------------------------------------------------------------------------------
# Instrument assignment


def best_octave_shift(pitches: np.ndarray, instrument: str) -> tuple[int, float]:
    """The octave shift (semitones, multiple of 12) that best fits ``pitches`` to the instrument.

    Returns ``(shift, fraction of notes out of range after the shift)``; among equal fits the
    shift closest to the instrument's tessitura centre wins.
    """
    lo, hi = RANGES[instrument]
    best: tuple[float, float, int] | None = None
    for octaves in range(-3, 4):
        shifted = pitches + 12 * octaves
        out = float(np.mean((shifted < lo) | (shifted > hi))) if len(pitches) else 0.0
        centre = abs(float(np.median(shifted)) - CENTRES[instrument]) if len(pitches) else 0.0
        key = (round(out, 3), centre / 12.0 + 0.25 * abs(octaves))
        if best is None or key < best[:2]:
            best = (key[0], key[1], 12 * octaves)
    assert best is not None
    return best[2], best[0]


def fold_into_range(pitches: np.ndarray, instrument: str) -> np.ndarray:
    """Move each out-of-range pitch by whole octaves into the instrument's range."""
    lo, hi = RANGES[instrument]
    out = pitches.copy()
    while np.any(out < lo):
        out[out < lo] += 12
    while np.any(out > hi):
        out[out > hi] -= 12
    return np.clip(out, lo, hi)


def sample_instruments(
    n: int, kind: str, rng: np.random.Generator, allowed: Iterable[str] = INSTRUMENTS,
) -> list[str]:
    """Draw ``n`` instruments of an ensemble kind (``strings``, ``winds``, ``mixed``).

    Doubled instruments (Flute, Sax, Viola, Violin) may appear twice, the others once. The list
    comes back sorted from high to low tessitura.
    """
    allowed = set(allowed)
    base = {"strings": STRINGS, "winds": WINDS, "mixed": INSTRUMENTS}[kind]
    pool = [i for i in base if i in allowed]
    pool += [i for i in pool if i in DOUBLED]
    if len(pool) < n:
        pool = [i for i in INSTRUMENTS if i in allowed]
        pool += [i for i in pool if i in DOUBLED]
    if len(pool) < n:
        raise ValueError(f"cannot draw {n} instruments for a {kind} ensemble")
    if kind == "mixed" and n >= 2:
        # Make sure a mixed ensemble really mixes families.
        for _ in range(20):
            pick = list(rng.choice(pool, size=n, replace=False))
            if any(p in STRINGS for p in pick) and any(p in WINDS for p in pick):
                break
    else:
        pick = list(rng.choice(pool, size=n, replace=False))
    return sorted((str(p) for p in pick), key=lambda i: -CENTRES[i])


def name_voices(instruments: Sequence[str], registers: Sequence[float]) -> list[str]:
    """``[Violin, Violin, Cello]`` -> ``[Violin_1, Violin_2, Cello]``: a doubled instrument's
    voices numbered from the highest ``registers`` (e.g. each part's pitch-range centre, MIDI)
    down, as ensembles number them (the first violin plays above the second); equal registers
    keep their order."""
    if len(registers) != len(instruments):
        raise ValueError(f"{len(instruments)} instruments but {len(registers)} registers")
    names = list(instruments)
    for inst in set(instruments):
        parts = [k for k, name in enumerate(instruments) if name == inst]
        if len(parts) > 1:
            ranked = sorted(parts, key=lambda k: (-registers[k], k))
            for voice, k in enumerate(ranked, 1):
                names[k] = f"{inst}_{voice}"
    return names
