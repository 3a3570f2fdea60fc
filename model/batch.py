"""Challenge batch jobs: run a system over every scene x listener of a CAD2 split.

A *system* maps one pair to the hearing-aid output at 44.1 kHz; this module loads the inputs,
writes ``OUT/<split folder>/<scene>_<listener>_remix.flac`` (32 kHz, 16-bit, clipped) atomically,
skips files already written (resumable), shows progress and can spread the pairs over worker
processes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from model.audio import write_submission
from model.cad2 import CAD2Split, Music, split_folder
from model.hearing_aid import HearingAid, adjust_level, remix

if TYPE_CHECKING:
    from model.apply import Request


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

    def request(self) -> Request:
        """The scene's gains on the ensemble's slots and the listener, as a model request."""
        from model.apply import Request  # here: model.apply loads the network's modules

        slots = self.music.slots()
        gains = {slots[k]: g for k, g in self.gains_db.items() if k in slots}
        listener = self.split.listeners[self.listener_id]
        audiogram = np.array([listener.levels_l, listener.levels_r])
        return Request.from_gains(gains, audiogram, self.ratio, self.makeup_db)

    def stem_stack(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The true stems ``(K, 2, samples)`` and their gains ``(K,)`` dB, both float64, in
        the order of ``gains_db`` (only reference systems may use them)."""
        stems = self.stems()
        ids = list(self.gains_db)
        stack = torch.from_numpy(np.stack([stems[k] for k in ids]).astype(np.float64))
        return stack, torch.tensor([self.gains_db[k] for k in ids], dtype=torch.float64)


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
    stack, gains = pair.stem_stack()
    mixed = adjust_level(remix(stack, gains), gains).numpy()
    return hearing_aid(mixed, pair.ratio, pair.makeup_db)


@dataclass
class ModelSystem:
    """A Tutti model as a system: the scene's gains and listener, the mixture in. An object
    rather than a closure so that batch jobs can hand it to worker processes."""

    model: torch.nn.Module

    def __call__(self, pair: Pair) -> np.ndarray:
        from model.apply import rebalance

        return rebalance(self.model, pair.mixture, pair.request())


BASELINES: dict[str, System] = {"noop": noop_system, "oracle": oracle_system}


def _write_pair(data: CAD2Split, system: System, path: Path, scene_id: str,
                listener_id: str) -> Path:
    """Run ``system`` on one pair and write its submission file atomically."""
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
    return write_submission(path, system(pair))


_WORKER: dict = {}


def _init_worker(root: str, split: str, system: System, threads: int) -> None:
    from model.apply import keep_freed_memory

    keep_freed_memory()  # the system's model arrives pickled, not through ``load_model``
    torch.set_num_threads(threads)
    _WORKER.update(data=CAD2Split(root, split), system=system)


def _write_in_worker(job: tuple[Path, str, str]) -> Path:
    return _write_pair(_WORKER["data"], _WORKER["system"], *job)


def run_batch(
    root: str | Path,
    split: str,
    out_dir: str | Path,
    system: System,
    limit: int | None = None,
    desc: str = "enhance",
    jobs: int = 1,
) -> list[Path]:
    """Run ``system`` on every pair of ``split`` (the first ``limit``); returns written paths.

    With ``jobs`` > 1 the pairs run in that many worker processes (``system`` must pickle, as
    functions and :class:`ModelSystem` do), each with ``cpu_count // jobs`` torch threads.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    data = CAD2Split(root, split)
    pairs = data.pairs()[:limit]
    written = [output_path(out_dir, s, lst) for s, lst in pairs]
    todo = [(p, s, lst) for p, (s, lst) in zip(written, pairs, strict=True) if not p.is_file()]
    progress = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc=desc, unit="pair")
    if jobs == 1 or len(todo) <= 1:
        for job in todo:
            _write_pair(data, system, *job)
            progress.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=context,
                                 initializer=_init_worker,
                                 initargs=(str(root), split, system, threads)) as ex:
            for _ in ex.map(_write_in_worker, todo):
                progress.update()
    progress.close()
    return written
