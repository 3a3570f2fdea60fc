"""Reader for the CAD2 task-2 dataset layout (real CAD2, EnsembleSet-derived or rendered by Tutti).

``ROOT/metadata/{music,scenes,scene_listeners,listeners,compressor_params}.<split>.json`` and
``ROOT/metadata/gains.json`` describe scenes; ``ROOT/audio/<track>`` holds 44.1 kHz stereo FLAC.
Every malformed or missing piece raises :class:`MetadataError` naming the file and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.audio import SAMPLE_RATE, AudioError, check_signal, read_audio

INSTRUMENTS = ("Bassoon", "Cello", "Clarinet", "Flute", "Oboe", "Sax", "Viola", "Violin")
"""The CAD2 instrument vocabulary."""
DOUBLED = ("Flute", "Sax", "Viola", "Violin")
"""Instruments that may appear twice in an ensemble (``_1`` / ``_2``)."""
SLOTS = tuple(
    name
    for inst in INSTRUMENTS
    for name in ((f"{inst}_1", f"{inst}_2") if inst in DOUBLED else (inst,))
)
"""The model's fixed instrument slots (12): one per instrument, two for doubled ones."""
GAIN_STEPS_DB = (-10.0, -6.0, -3.0, 3.0, 6.0, 10.0)
"""Gains CAD2 applies to the changed sources (dB)."""
AUDIOGRAM_CFS = (250, 500, 1000, 2000, 3000, 4000, 6000, 8000)
"""Audiogram frequencies of CAD2 listeners (Hz)."""
COMPRESSOR_CFS = (250, 500, 1000, 2000, 4000, 8000)
"""Centre frequencies of the six hearing-aid bands (Hz)."""


class MetadataError(ValueError):
    """Missing or malformed CAD2 metadata; the message names the file and the key."""


def instrument_of(name: str) -> str:
    """``"Violin_2"`` -> ``"Violin"``; raises ValueError for names outside the vocabulary."""
    base = name.split("_")[0]
    if base not in INSTRUMENTS:
        raise ValueError(f"unknown instrument {name!r}; known: {', '.join(INSTRUMENTS)}")
    return base


def slot_of(name: str) -> str:
    """Map an instrument name (``Violin``, ``Violin_2``, ``violin 2``) to its model slot."""
    cleaned = name.strip().replace(" ", "_")
    parts = cleaned.split("_")
    base = instrument_of(parts[0].capitalize())
    voice = parts[1] if len(parts) > 1 else "1"
    if voice not in ("1", "2"):
        raise ValueError(f"instrument {name!r}: voice must be 1 or 2")
    if base not in DOUBLED:
        if voice != "1":
            raise ValueError(f"instrument {name!r}: {base} has no second voice")
        return base
    return f"{base}_{voice}"


def split_folder(scene_id: str) -> str:
    """The submission sub-folder of a scene, by the CAD2 recipe's rule on its number."""
    number = int(scene_id[1:])
    if 0 < number < 49999:
        return "train"
    if 50000 < number < 59999:
        return "valid"
    return "test"


def scenes_file(root: str | Path, split: str) -> Path:
    """``ROOT/metadata/scenes.<split>.json``: a root has ``split`` when this file exists."""
    return Path(root) / "metadata" / f"scenes.{split}.json"


@dataclass(frozen=True)
class Track:
    """One audio entry of a music item: a source stem or the mixture."""

    instrument: str
    track: str
    start: float
    duration: float
    source_dataset: str = ""


@dataclass(frozen=True)
class Music:
    """A music excerpt: its sources (``source_1`` ...) and mixture."""

    music_id: str
    sources: dict[str, Track]
    mixture: Track

    def slots(self) -> dict[str, str]:
        """``{source_id: model slot}``; second occurrences of an instrument take voice 2."""
        out: dict[str, str] = {}
        for source_id, track in self.sources.items():
            slot = slot_of(track.instrument)
            if slot in out.values() and slot.endswith("_1"):
                slot = slot[:-1] + "2"
            if slot in out.values():
                raise MetadataError(f"music {self.music_id}: instrument slot {slot} used twice")
            out[source_id] = slot
        return out


@dataclass(frozen=True)
class Listener:
    """A listener's audiograms (dB HL at ``cfs`` Hz) and hearing-aid settings."""

    listener_id: str
    cfs: tuple[float, ...]
    levels_l: tuple[float, ...]
    levels_r: tuple[float, ...]

    def to_clarity(self):
        """The equivalent ``clarity.utils.audiogram.Listener``."""
        from clarity.utils.audiogram import Audiogram
        from clarity.utils.audiogram import Listener as ClarityListener

        cfs = np.array(self.cfs)
        return ClarityListener(
            id=self.listener_id,
            audiogram_left=Audiogram(levels=np.array(self.levels_l), frequencies=cfs),
            audiogram_right=Audiogram(levels=np.array(self.levels_r), frequencies=cfs),
        )


@dataclass(frozen=True)
class CompressorParams:
    """Per-band compression ratios and makeup gains (dB) of the CAD2 hearing aid, per ear."""

    cr_l: tuple[float, ...]
    gain_l: tuple[float, ...]
    cr_r: tuple[float, ...]
    gain_r: tuple[float, ...]

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ratio, makeup_db)``, each ``(2 ears, 6 bands)``."""
        return np.array([self.cr_l, self.cr_r]), np.array([self.gain_l, self.gain_r])

    def to_json(self) -> dict[str, list[float]]:
        """The ``compressor_params.<split>.json`` entry."""
        return {
            "frequencies": list(COMPRESSOR_CFS),
            "cr_l": list(self.cr_l),
            "gain_l": list(self.gain_l),
            "cr_r": list(self.cr_r),
            "gain_r": list(self.gain_r),
        }


@dataclass(frozen=True)
class Scene:
    """A scene: which music and which gain setting."""

    scene_id: str
    music_id: str
    gain_id: str


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MetadataError(f"{path}: metadata file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MetadataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: expected a JSON object at top level")
    return data


def _field(path: Path, entry_id: str, entry: Any, key: str, kind: type | tuple[type, ...]):
    if not isinstance(entry, dict) or key not in entry:
        raise MetadataError(f"{path}: entry {entry_id!r} lacks key {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MetadataError(f"{path}: entry {entry_id!r} key {key!r} has a bad value {value!r}")
    return value


def _numbers(path: Path, entry_id: str, entry: Any, key: str, length: int) -> tuple[float, ...]:
    values = _field(path, entry_id, entry, key, list)
    if len(values) != length or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values
    ):
        raise MetadataError(
            f"{path}: entry {entry_id!r} key {key!r} must be {length} finite numbers, "
            f"got {values!r}"
        )
    return tuple(float(v) for v in values)


def parse_music(path: Path, data: dict[str, Any]) -> dict[str, Music]:
    """Parse a ``music.<split>.json`` mapping."""
    out = {}
    for music_id, entry in data.items():
        if not isinstance(entry, dict):
            raise MetadataError(f"{path}: entry {music_id!r} is not an object")
        tracks = {}
        for key, item in entry.items():
            if not (key.startswith("source_") or key == "mixture"):
                continue
            where = f"{music_id}.{key}"
            tracks[key] = Track(
                instrument=_field(path, where, item, "instrument", str),
                track=_field(path, where, item, "track", str),
                start=float(_field(path, where, item, "start", (int, float))),
                duration=float(_field(path, where, item, "duration", (int, float))),
                source_dataset=str(item.get("source_dataset", "")),
            )
        if "mixture" not in tracks:
            raise MetadataError(f"{path}: entry {music_id!r} lacks key 'mixture'")
        sources = {k: v for k, v in tracks.items() if k != "mixture"}
        if not sources:
            raise MetadataError(f"{path}: entry {music_id!r} has no 'source_N' keys")
        for key, track in sources.items():
            try:
                instrument_of(track.instrument)
            except ValueError as err:
                raise MetadataError(f"{path}: entry {music_id!r} key {key!r}: {err}") from None
        music = Music(music_id, dict(sorted(sources.items(), key=lambda kv: _source_index(kv[0]))),
                      tracks["mixture"])
        music.slots()
        out[music_id] = music
    return out


def _source_index(source_id: str) -> int:
    try:
        return int(source_id.split("_")[1])
    except (IndexError, ValueError):
        return 10**6


class CAD2Split:
    """All metadata of one split of a CAD2-layout root, validated on load.

    Args:
        root: dataset root holding ``metadata/`` and ``audio/``.
        split: ``train``, ``valid``, ``test`` or any split name the root provides.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        meta = self.root / "metadata"
        if not meta.is_dir():
            raise MetadataError(f"{meta}: metadata folder not found (is {self.root} a CAD2 root?)")
        self.audio_dir = self.root / "audio"

        path = meta / f"music.{split}.json"
        self.music = parse_music(path, _load_json(path))

        path = meta / "gains.json"
        self.gains: dict[str, dict[str, float]] = {}
        for gain_id, entry in _load_json(path).items():
            if not isinstance(entry, dict) or not entry:
                raise MetadataError(f"{path}: entry {gain_id!r} must map source ids to dB")
            for key, value in entry.items():
                if not isinstance(value, (int, float)) or not np.isfinite(value):
                    raise MetadataError(f"{path}: entry {gain_id!r} key {key!r} is not a number")
            self.gains[gain_id] = {k: float(v) for k, v in entry.items()}

        path = scenes_file(root, split)
        self.scenes: dict[str, Scene] = {}
        for scene_id, entry in _load_json(path).items():
            music_id = _field(path, scene_id, entry, "music", str)
            gain_id = _field(path, scene_id, entry, "gain", str)
            if music_id not in self.music:
                raise MetadataError(f"{path}: entry {scene_id!r} key 'music': unknown {music_id!r}")
            if gain_id not in self.gains:
                raise MetadataError(f"{path}: entry {scene_id!r} key 'gain': unknown {gain_id!r}")
            missing = set(self.music[music_id].sources) - set(self.gains[gain_id])
            if missing:
                raise MetadataError(
                    f"{meta / 'gains.json'}: entry {gain_id!r} lacks key(s) {sorted(missing)} "
                    f"needed by scene {scene_id!r}"
                )
            self.scenes[scene_id] = Scene(scene_id, music_id, gain_id)

        path = meta / f"listeners.{split}.json"
        self.listeners: dict[str, Listener] = {}
        for listener_id, entry in _load_json(path).items():
            cfs = _field(path, listener_id, entry, "audiogram_cfs", list)
            self.listeners[listener_id] = Listener(
                listener_id=str(entry.get("name", listener_id)),
                cfs=_numbers(path, listener_id, entry, "audiogram_cfs", len(cfs)),
                levels_l=_numbers(path, listener_id, entry, "audiogram_levels_l", len(cfs)),
                levels_r=_numbers(path, listener_id, entry, "audiogram_levels_r", len(cfs)),
            )

        path = meta / f"compressor_params.{split}.json"
        self.compressor: dict[str, CompressorParams] = {}
        for listener_id, entry in _load_json(path).items():
            self.compressor[listener_id] = CompressorParams(
                *(_numbers(path, listener_id, entry, k, 6)
                  for k in ("cr_l", "gain_l", "cr_r", "gain_r"))
            )

        path = meta / f"scene_listeners.{split}.json"
        self.scene_listeners: dict[str, list[str]] = {}
        for scene_id, entry in _load_json(path).items():
            if scene_id not in self.scenes:
                raise MetadataError(f"{path}: key {scene_id!r} is not a scene of {split!r}")
            if not isinstance(entry, list) or not all(isinstance(x, str) for x in entry):
                raise MetadataError(f"{path}: entry {scene_id!r} must be a list of listener ids")
            for listener_id in entry:
                if listener_id not in self.listeners:
                    raise MetadataError(
                        f"{path}: entry {scene_id!r}: listener {listener_id!r} is not in "
                        f"listeners.{split}.json"
                    )
                if listener_id not in self.compressor:
                    raise MetadataError(
                        f"{path}: entry {scene_id!r}: listener {listener_id!r} is not in "
                        f"compressor_params.{split}.json"
                    )
            self.scene_listeners[scene_id] = list(entry)

    def pairs(self) -> list[tuple[str, str]]:
        """``(scene_id, listener_id)`` pairs in the recipe's order."""
        return [(s, lst) for s, listeners in self.scene_listeners.items() for lst in listeners]

    def scene_gains(self, scene_id: str) -> dict[str, float]:
        """``{source_id: dB}`` for the scene's sources (the gain entry's order)."""
        scene = self.scenes[scene_id]
        return dict(self.gains[scene.gain_id])

    def read_track(self, track: Track) -> np.ndarray:
        """Load a track as float32 ``(2, samples)`` at 44.1 kHz, cropped to start/duration.

        A file that already is the segment (length about ``duration``) is used whole.
        """
        path = self.audio_dir / track.track
        try:
            signal, rate = read_audio(path)
            check_signal(signal, name=str(path), rate=rate, expected_rate=SAMPLE_RATE, channels=2)
        except AudioError as err:
            raise AudioError(f"{err} (track of {track.instrument})") from None
        n_total = signal.shape[1]
        start = int(round(track.start * SAMPLE_RATE))
        length = int(round(track.duration * SAMPLE_RATE))
        if start > 0 and start + length <= n_total:
            return signal[:, start : start + length]
        return signal[:, :length] if length > 0 else signal

    def stems(self, music_id: str) -> dict[str, np.ndarray]:
        """``{source_id: (2, samples)}`` for a music item."""
        return {k: self.read_track(t) for k, t in self.music[music_id].sources.items()}

    def mixture(self, music_id: str) -> np.ndarray:
        """The unprocessed mixture ``(2, samples)`` of a music item."""
        return self.read_track(self.music[music_id].mixture)


def write_metadata(
    root: str | Path,
    split: str,
    *,
    music: dict[str, dict],
    scenes: dict[str, dict],
    scene_listeners: dict[str, list[str]],
    listeners: dict[str, dict],
    compressor_params: dict[str, dict],
    gains: dict[str, dict[str, float]] | None = None,
) -> None:
    """Write one split's metadata files (JSON, atomically); ``gains`` merges into ``gains.json``.

    Entries use the CAD2 schemas of the ``*.json`` files this module reads.
    """
    from model.audio import atomic_write

    meta = Path(root) / "metadata"
    meta.mkdir(parents=True, exist_ok=True)

    def dump(name: str, obj: dict) -> None:
        text = json.dumps(obj, indent=2)
        atomic_write(meta / name, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    dump(f"music.{split}.json", music)
    dump(f"scenes.{split}.json", scenes)
    dump(f"scene_listeners.{split}.json", scene_listeners)
    dump(f"listeners.{split}.json", listeners)
    dump(f"compressor_params.{split}.json", compressor_params)
    if gains is not None:
        path = meta / "gains.json"
        merged = _load_json(path) if path.is_file() else {}
        merged.update(gains)
        dump("gains.json", merged)
