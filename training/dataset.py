"""On-the-fly training examples from any CAD2-layout root (rendered or real).

Each example: a random segment of a random music item, a random subset (>= 2) of its stems, random
gains (the CAD2 steps or continuous), a random listener of the split. The mixture is the sum of the
chosen stems at about -40 LUFS; the target is the recipe's reference remix before the hearing aid
(``adjust_level(sum(gain * stem))``). Hearing-aid parameters come along so the model's last layer
(and a loss after it) can use them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import IterableDataset, get_worker_info

from model.audio import SAMPLE_RATE, atomic_write, sidecar_scale
from model.cad2 import DOUBLED, GAIN_STEPS_DB, SLOTS, CAD2Split
from model.hearing_aid import HearingAid, db_to_gain, level_adjustment_db

_HEARING_AID = HearingAid()


@dataclass
class ExampleConfig:
    """How examples are drawn (all from ``conf/train*.yaml``)."""

    seconds: float = 4.0
    lufs: float = -40.0
    lufs_jitter_db: float = 3.0
    p_cad2_gains: float = 0.6
    """Share of examples with the CAD2 gain rule; the rest draw each gain in +-``max_gain_db``."""
    max_gain_db: float = 12.0
    p_zero_gains: float = 0.1
    """Share of examples with all gains 0 dB (the output must then be the mixture)."""
    p_subset: float = 0.5
    """Probability of dropping some stems (keeping at least 2)."""
    p_swap_channels: float = 0.5
    hearing_aid_target: bool = False
    """Also yield ``target_hearing_aid``: the target through the listener's hearing aid."""
    slot_stems: bool = False
    """Also yield ``stems (12, 2, T)``: each slot's scaled stem (zeros where absent)."""
    balance_slots: float = 0.0
    """Draw a music item with probability proportional to the mean over its slots of
    ``count(slot) ** -balance_slots`` (counts of items per slot in the split): 0 draws items
    uniformly, 1 evens out how often each slot is heard (rare second voices come up more)."""
    p_doubled: float = 0.0
    """Share of examples drawn from items holding both voices of an instrument (uniformly among
    them), with both voices kept when stems are dropped: practice at telling the voices apart."""


def approx_lufs(signal: np.ndarray) -> float:
    """Loudness of ``(channels, samples)`` without K-weighting or gating (LUFS, about +-2 dB on
    music): cheap enough for every example; silent input counts as -70."""
    power = float(np.sum(np.mean(np.square(signal, dtype=np.float64), axis=-1)))
    return -0.691 + 10 * math.log10(power) if power > 1e-7 else -70.0


def cad2_gains(rng: np.random.Generator, n: int) -> np.ndarray:
    """CAD2 rule: 1..n-1 sources changed by one of the CAD2 steps, the rest 0 dB."""
    gains = np.zeros(n)
    changed = rng.choice(n, size=int(rng.integers(1, n)), replace=False) if n > 1 else []
    gains[changed] = rng.choice(GAIN_STEPS_DB, size=len(changed))
    return gains


def doubled_pairs(slots: dict[str, str]) -> list[list[str]]:
    """The source ids of each instrument whose two voices both play (``{source: slot}`` as
    :meth:`model.cad2.Music.slots`), as ``[[voice 1's source, voice 2's source], ...]``."""
    by_slot = {slot: source for source, slot in slots.items()}
    return [[by_slot[f"{inst}_1"], by_slot[f"{inst}_2"]] for inst in DOUBLED
            if f"{inst}_1" in by_slot and f"{inst}_2" in by_slot]


def item_probabilities(item_slots: list, balance: float) -> np.ndarray | None:
    """Sampling probability of each item from the slots it holds (``ExampleConfig.balance_slots``);
    None for uniform (``balance`` 0)."""
    if balance == 0:
        return None
    items = [list(slots) for slots in item_slots]
    counts: dict[str, int] = {}
    for slots in items:
        for slot in set(slots):
            counts[slot] = counts.get(slot, 0) + 1
    weights = np.array([np.mean([counts[slot] ** -balance for slot in slots]) for slots in items])
    return weights / weights.sum()


class RebalanceDataset(IterableDataset):
    """Infinite stream of example dicts (tensors, float32).

    Keys: ``mixture (2, T)``, ``gains_db (12,)``, ``presence (12,)``, ``audiogram (2, 8)`` dB HL,
    ``ratio (2, 6)``, ``makeup_db (2, 6)``, ``target (2, T)`` (remix before the hearing aid),
    with ``hearing_aid_target``, ``target_hearing_aid (2, T)`` (the CAD2 reference signal) and,
    with ``slot_stems``, ``stems (12, 2, T)``.
    """

    def __init__(self, roots: list[str | Path], split: str, config: ExampleConfig | None = None,
                 seed: int = 0, pcm_cache: str | Path | None = None) -> None:
        """``pcm_cache``: folder for decoded 16-bit copies of the tracks (memory-mapped, so
        segments cost no decoding); None reads the FLAC files directly."""
        self.pcm_cache = Path(pcm_cache).expanduser() if pcm_cache else None
        self.splits = [CAD2Split(root, split) for root in roots]
        self.config = config or ExampleConfig()
        self.seed = seed
        self.items = [(s, m) for s in self.splits for m in s.music]
        if not self.items:
            raise ValueError(f"no music in split {split!r} of {roots}")
        self.listeners = [(s, lid) for s in self.splits for lid in s.compressor
                          if lid in s.listeners]
        self._frames: dict[str, tuple[int, float]] = {}
        self._pcm: dict[str, np.ndarray] = {}
        self.item_p = item_probabilities([s.music[m].slots().values() for s, m in self.items],
                                         self.config.balance_slots)
        self.doubled = [i for i, (s, m) in enumerate(self.items)
                        if doubled_pairs(s.music[m].slots())]

    def _info(self, path: Path) -> tuple[int, float]:
        """(frames, sidecar scale) of a track, cached."""
        key = str(path)
        if key not in self._frames:
            self._frames[key] = (sf.info(key).frames, sidecar_scale(path))
        return self._frames[key]

    def _read(self, path: Path, start: int, length: int) -> np.ndarray:
        """``(2, <= length)`` float32 samples of a track from ``start`` (sidecar scale applied)."""
        scale = self._info(path)[1]
        if self.pcm_cache is None:
            data, _ = sf.read(str(path), start=start, frames=length, dtype="float32",
                              always_2d=True)
            return data.T * np.float32(scale)
        if str(path) not in self._pcm:
            stat = path.stat()  # a file replaced or renamed under the same path: a new copy
            key = f"{path.resolve()} {stat.st_ino} {stat.st_size} {stat.st_mtime_ns}"
            name = hashlib.sha1(key.encode()).hexdigest()[:16] + ".npy"
            cached = self.pcm_cache / name
            if not cached.is_file():
                pcm, _ = sf.read(str(path), dtype="int16", always_2d=True)
                self.pcm_cache.mkdir(parents=True, exist_ok=True)
                atomic_write(cached, lambda tmp: np.save(open(tmp, "wb"), pcm))
            self._pcm[str(path)] = np.load(cached, mmap_mode="r")
        pcm = self._pcm[str(path)][start : start + length]
        return pcm.T.astype(np.float32) * np.float32(scale / 32768.0)

    def example(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Draw one example."""
        cfg = self.config
        doubled = cfg.p_doubled > 0 and bool(self.doubled) and rng.random() < cfg.p_doubled
        if doubled:
            pick = self.doubled[rng.integers(len(self.doubled))]
        else:
            pick = (rng.integers(len(self.items)) if self.item_p is None
                    else rng.choice(len(self.items), p=self.item_p))
        split, music_id = self.items[pick]
        music = split.music[music_id]
        slots = music.slots()
        length = int(cfg.seconds * SAMPLE_RATE)
        source_ids = list(music.sources)
        pair: list[str] = []
        if doubled:
            pairs = doubled_pairs(slots)
            pair = pairs[rng.integers(len(pairs))]
        if len(source_ids) > 2 and rng.random() < cfg.p_subset:
            keep = int(rng.integers(max(2, len(pair)), len(source_ids) + 1))
            others = [k for k in source_ids if k not in pair]
            chosen = pair + rng.choice(others, size=keep - len(pair), replace=False).tolist()
            source_ids = sorted(chosen, key=source_ids.index)
        paths = [split.audio_dir / music.sources[k].track for k in source_ids]
        total = min(self._info(p)[0] for p in paths)
        start = int(rng.integers(0, max(1, total - length)))
        stems = np.zeros((len(paths), 2, length), dtype=np.float32)
        for i, path in enumerate(paths):
            data = self._read(path, start, length)
            stems[i, :, : data.shape[1]] = data
        if rng.random() < cfg.p_swap_channels:
            stems = np.ascontiguousarray(stems[:, ::-1])
        mixture = stems.sum(0)
        loudness = approx_lufs(mixture)
        target_lufs = cfg.lufs + rng.uniform(-cfg.lufs_jitter_db, cfg.lufs_jitter_db)
        scale = np.float32(10 ** ((target_lufs - loudness) / 20))
        stems *= scale
        mixture *= scale

        n = len(source_ids)
        u = rng.random()
        if u < cfg.p_zero_gains:
            gains = np.zeros(n)
        elif u < cfg.p_zero_gains + cfg.p_cad2_gains:
            gains = cad2_gains(rng, n)
        else:
            gains = rng.uniform(-cfg.max_gain_db, cfg.max_gain_db, size=n)
        gains_t = torch.from_numpy(gains)
        factors = (db_to_gain(gains_t) * db_to_gain(level_adjustment_db(gains_t))).numpy()
        target = np.einsum("s,sct->ct", factors.astype(np.float32), stems)

        slot_gains = torch.zeros(len(SLOTS))
        presence = torch.zeros(len(SLOTS))
        slot_index = [SLOTS.index(slots[k]) for k in source_ids]
        slot_gains[slot_index] = torch.from_numpy(gains).float()
        presence[slot_index] = 1.0

        lsplit, listener_id = self.listeners[rng.integers(len(self.listeners))]
        listener = lsplit.listeners[listener_id]
        ratio, makeup = lsplit.compressor[listener_id].as_arrays()
        out = {
            "mixture": torch.from_numpy(np.ascontiguousarray(mixture)),
            "gains_db": slot_gains,
            "presence": presence,
            "audiogram": torch.tensor([listener.levels_l, listener.levels_r], dtype=torch.float32),
            "ratio": torch.from_numpy(ratio).float(),
            "makeup_db": torch.from_numpy(makeup).float(),
            "target": torch.from_numpy(target),
        }
        if cfg.slot_stems:
            by_slot = np.zeros((len(SLOTS), *stems.shape[1:]), dtype=np.float32)
            by_slot[slot_index] = stems
            out["stems"] = torch.from_numpy(by_slot)
        if cfg.hearing_aid_target:
            with torch.no_grad():
                out["target_hearing_aid"] = _HEARING_AID(
                    out["target"][None], out["ratio"][None], out["makeup_db"][None])[0]
        return out

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        rng = np.random.default_rng([self.seed, rank, worker])
        while True:
            yield self.example(rng)


def fixed_examples(dataset: RebalanceDataset, count: int, seed: int) -> list[dict]:
    """A reproducible list of examples (validation)."""
    rng = np.random.default_rng(seed)
    return [dataset.example(rng) for _ in range(count)]
