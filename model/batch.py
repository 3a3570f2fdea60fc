"""Challenge batch jobs: run a system over every scene x listener of a CAD2 split.

A *system* maps one pair to the hearing-aid output at 44.1 kHz; this module loads the inputs,
writes ``OUT/<split folder>/<scene>_<listener>_remix.flac`` (32 kHz, 16-bit, clipped) atomically,
skips files already written (resumable) and shows progress.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.audio import write_submission
from model.cad2 import CAD2Split, Music, split_folder
from model.hearing_aid import HearingAid, adjust_level, remix


@dataclass
class Pair:
    """Everything a system may use for one scene x listener (signals ``(2, samples)``)."""

    scene_id: str
    listener_id: str
    music: Music
    mixture: np.ndarray
    gains_db: dict[str, float]
    ratio: np.ndarray
    makeup_db: np.ndarray
    split: CAD2Split

    def stems(self) -> dict[str, np.ndarray]:
        """The true stems (only reference systems may use them)."""
        return self.split.stems(self.music.music_id)


System = Callable[[Pair], np.ndarray]


def output_path(out_dir: str | Path, scene_id: str, listener_id: str) -> Path:
    """``OUT/<split folder>/<scene>_<listener>_remix.flac``."""
    return Path(out_dir) / split_folder(scene_id) / f"{scene_id}_{listener_id}_remix.flac"


_HEARING_AID = HearingAid()


def hearing_aid(signal: np.ndarray, ratio: np.ndarray, makeup_db: np.ndarray) -> np.ndarray:
    """The listener's CAD2 hearing aid on ``(2, samples)`` (ratio, makeup ``(2, 6)``)."""
    x = torch.from_numpy(np.asarray(signal, dtype=np.float64))[None]
    with torch.no_grad():
        y = _HEARING_AID(x, torch.from_numpy(ratio)[None], torch.from_numpy(makeup_db)[None])
    return y[0].numpy()


def noop_system(pair: Pair) -> np.ndarray:
    """Unbalanced mixture, level-adjusted as if rebalanced, through the hearing aid."""
    gains = torch.tensor(list(pair.gains_db.values()), dtype=torch.float64)
    level = adjust_level(torch.from_numpy(pair.mixture.astype(np.float64)), gains).numpy()
    return hearing_aid(level, pair.ratio, pair.makeup_db)


def oracle_system(pair: Pair) -> np.ndarray:
    """The true remix (true stems x gains, ``adjust_level``) through the hearing aid."""
    stems = pair.stems()
    ids = list(pair.gains_db)
    stack = torch.from_numpy(np.stack([stems[k] for k in ids]).astype(np.float64))
    gains = torch.tensor([pair.gains_db[k] for k in ids], dtype=torch.float64)
    mixed = adjust_level(remix(stack, gains), gains).numpy()
    return hearing_aid(mixed, pair.ratio, pair.makeup_db)


def model_system(model) -> System:
    """A Tutti model as a system: the scene's gains and listener, the mixture in."""
    from model.apply import Request

    def system(pair: Pair) -> np.ndarray:
        slots = pair.music.slots()
        gains = {slots[k]: g for k, g in pair.gains_db.items() if k in slots}
        listener = pair.split.listeners[pair.listener_id]
        audiogram = np.array([listener.levels_l, listener.levels_r])
        from model.apply import rebalance

        request = Request.from_gains(gains, audiogram, pair.ratio, pair.makeup_db)
        return rebalance(model, pair.mixture, request)

    return system


BASELINES: dict[str, System] = {"noop": noop_system, "oracle": oracle_system}


def run_batch(
    root: str | Path,
    split: str,
    out_dir: str | Path,
    system: System,
    limit: int | None = None,
    desc: str = "enhance",
) -> list[Path]:
    """Run ``system`` on every pair of ``split`` (the first ``limit``); returns written paths."""
    data = CAD2Split(root, split)
    pairs = data.pairs()[:limit]
    written = []
    for scene_id, listener_id in tqdm(pairs, desc=desc, unit="pair"):
        path = output_path(out_dir, scene_id, listener_id)
        written.append(path)
        if path.is_file():
            continue
        scene = data.scenes[scene_id]
        ratio, makeup = data.compressor[listener_id].as_arrays()
        pair = Pair(
            scene_id=scene_id,
            listener_id=listener_id,
            music=data.music[scene.music_id],
            mixture=data.mixture(scene.music_id),
            gains_db=data.scene_gains(scene_id),
            ratio=ratio,
            makeup_db=makeup,
            split=data,
        )
        write_submission(path, system(pair))
    return written
