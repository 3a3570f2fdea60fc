"""CAD2 task-2 evaluation: HAAQI per scene x listener, exactly as pyclarity's recipe scores it.

For each pair the reference is: stems x gains -> sum -> ``adjust_level`` -> pyclarity's
multiband compressor (listener's parameters) -> 24 kHz. The enhanced file
``DIR/<split folder>/<scene>_<listener>_remix.flac`` (32 kHz) is resampled to 24 kHz and both go to
``compute_haaqi`` with the recipe's level and seed. The recipe's own helper functions are called,
so the numbers are the recipe's.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.audio import SAMPLE_RATE, SUBMISSION_RATE, atomic_write, check_signal, read_audio
from model.cad2 import CAD2Split, split_folder
from model.hearing_aid import ATTACK_MS, CROSSOVER_HZ, NUM_BANDS, RELEASE_MS, THRESHOLD_DB

HAAQI_RATE = 24000
"""Rate at which HAAQI compares signals (Hz)."""
COLUMNS = ("scene", "song", "listener", "left_haaqi", "right_haaqi", "avg_haaqi")
"""The recipe's ``scores.csv`` columns."""


def enhanced_path(out_dir: str | Path, scene_id: str, listener_id: str) -> Path:
    """Where a system writes (and the evaluator reads) a scene x listener output."""
    return Path(out_dir) / split_folder(scene_id) / f"{scene_id}_{listener_id}_remix.flac"


def reference_mixture(split: CAD2Split, scene_id: str) -> np.ndarray:
    """The recipe's reference remix before the hearing aid, ``(samples, 2)`` float64."""
    from recipes.cad2.task2.baseline.evaluate import adjust_level, apply_gains, remix_stems

    scene = split.scenes[scene_id]
    gains = split.gains[scene.gain_id]
    stems = {k: v.T for k, v in split.stems(scene.music_id).items()}
    mixed = remix_stems(apply_gains(stems, SAMPLE_RATE, gains))
    return adjust_level(mixed, gains)


def recipe_hearing_aid(signal: np.ndarray, ratio, makeup_db) -> np.ndarray:
    """pyclarity's ``MultibandCompressor`` per ear, set up as the CAD2 recipe does.

    ``signal (ears, samples)``, ``ratio``/``makeup_db (ears, 6)`` -> ``(ears, samples)``.
    """
    from clarity.enhancer.multiband_compressor import MultibandCompressor

    enhancer = MultibandCompressor(list(CROSSOVER_HZ), sample_rate=SAMPLE_RATE)
    out = []
    for ear in range(signal.shape[0]):
        enhancer.set_compressors(
            attack=list(ATTACK_MS), release=list(RELEASE_MS),
            threshold=[THRESHOLD_DB] * NUM_BANDS, ratio=list(ratio[ear]),
            makeup_gain=list(makeup_db[ear]),
        )
        out.append(enhancer(signal=signal[ear].copy())[0])
    return np.stack(out)


def score_pair(split: CAD2Split, enhanced_dir: str | Path, scene_id: str, listener_id: str) -> dict:
    """HAAQI of one pair: a ``scores.csv`` row."""
    from clarity.evaluator.haaqi import compute_haaqi
    from clarity.utils.signal_processing import compute_rms, resample
    from recipes.cad2.task2.baseline.evaluate import set_song_seed

    path = enhanced_path(enhanced_dir, scene_id, listener_id)
    enhanced, rate = read_audio(path, scale_sidecar=False)
    check_signal(enhanced, name=str(path), rate=rate, expected_rate=SUBMISSION_RATE, channels=2)
    # The recipe reads submissions with read_flac_signal: int16 / 32768 as float32, (samples, 2).
    enhanced = enhanced.T

    reference = reference_mixture(split, scene_id)
    set_song_seed(scene_id)
    listener = split.listeners[listener_id].to_clarity()
    ratio, makeup = split.compressor[listener_id].as_arrays()
    ear_references = recipe_hearing_aid(reference.T, ratio, makeup)
    scores = []
    for ear, audiogram in enumerate([listener.audiogram_left, listener.audiogram_right]):
        scores.append(
            compute_haaqi(
                processed_signal=resample(enhanced[:, ear], SUBMISSION_RATE, HAAQI_RATE),
                reference_signal=resample(ear_references[ear], SAMPLE_RATE, HAAQI_RATE),
                processed_sample_rate=HAAQI_RATE,
                reference_sample_rate=HAAQI_RATE,
                audiogram=audiogram,
                equalisation=2,
                level1=65 - 20 * np.log10(compute_rms(reference[:, ear])),
            )
        )
    return {
        "scene": scene_id,
        "song": split.scenes[scene_id].music_id,
        "listener": listener_id,
        "left_haaqi": float(scores[0]),
        "right_haaqi": float(scores[1]),
        "avg_haaqi": float(np.mean(scores)),
    }


_WORKER: dict = {}


def _init_worker(root: str, split: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER["split"] = CAD2Split(root, split)


def _score_in_worker(args: tuple[str, str, str]) -> dict:
    enhanced_dir, scene_id, listener_id = args
    return score_pair(_WORKER["split"], enhanced_dir, scene_id, listener_id)


def _read_scores(path: Path) -> dict[tuple[str, str], dict]:
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and set(COLUMNS) - set(rows[0]):
        return {}
    return {(r["scene"], r["listener"]): r for r in rows}


def write_scores(path: Path, rows: Iterable[dict]) -> None:
    """Atomically write ``scores.csv`` with the recipe's columns."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in COLUMNS})
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))


def evaluate(
    root: str | Path,
    split: str,
    enhanced_dir: str | Path,
    scores_csv: str | Path | None = None,
    jobs: int = 1,
    limit: int | None = None,
) -> tuple[float, list[dict]]:
    """Score every pair of ``split`` (the first ``limit``); returns (mean HAAQI, rows).

    Rows already in ``scores_csv`` are kept, those beyond ``limit`` included (the job is
    resumable); the file is rewritten atomically after each pair, in the split's pair order.
    """
    data = CAD2Split(root, split)
    all_pairs = data.pairs()
    order = {pair: i for i, pair in enumerate(all_pairs)}
    pairs = all_pairs[:limit]
    missing = [enhanced_path(enhanced_dir, s, lst) for s, lst in pairs
               if not enhanced_path(enhanced_dir, s, lst).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(pairs)} enhanced file(s) missing, e.g. {missing[0]}"
        )
    scores_path = Path(scores_csv) if scores_csv else Path(enhanced_dir) / "scores.csv"
    done = _read_scores(scores_path)
    todo = [(str(enhanced_dir), s, lst) for s, lst in pairs if (s, lst) not in done]

    def save() -> None:
        rows = sorted((r for k, r in done.items() if k in order), key=lambda r: order[
            (r["scene"], r["listener"])])
        write_scores(scores_path, rows)

    progress = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="HAAQI", unit="pair")
    if jobs <= 1:
        for _, scene_id, listener_id in todo:
            row = score_pair(data, enhanced_dir, scene_id, listener_id)
            done[(scene_id, listener_id)] = row
            save()
            progress.update()
    else:
        with ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(str(root), split)) as ex:
            for row in ex.map(_score_in_worker, todo):
                done[(row["scene"], row["listener"])] = row
                save()
                progress.update()
    progress.close()
    save()
    rows = [done[p] for p in pairs]
    return float(np.mean([float(r["avg_haaqi"]) for r in rows])), rows
