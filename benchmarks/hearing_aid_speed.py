"""Speed and accuracy of ``model.hearing_aid.HearingAid`` against pyclarity's MultibandCompressor.

Same 10 s stereo 44.1 kHz music-like clip for both (the CAD2 level, -40 LUFS, by default).
pyclarity runs per ear, as the CAD2 recipe calls it; the torch module takes both ears at once.
Prints: numba compile / cache-load time (excluded from the timings), seconds per stereo clip for
pyclarity and torch (float64 and float32, no autograd; forward+backward for information), the speed
ratio, and per-ear SNR against pyclarity for three listeners at -40 LUFS and at -20 LUFS (where
the compressor is busy; at -40 LUFS band peaks rarely pass the -30 dB threshold).

Usage: ``python benchmarks/hearing_aid_speed.py [--seconds 10] [--repeats 7]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from model import hearing_aid as ha_module  # noqa: E402
from model.hearing_aid import (  # noqa: E402
    SAMPLE_RATE,
    HearingAid,
)
from tests.test_hearing_aid import LISTENERS, music_like, snr_db  # noqa: E402
from training.evaluate import recipe_hearing_aid  # noqa: E402


def pyclarity(signal: np.ndarray, ratio, makeup) -> tuple[np.ndarray, list[float]]:
    """pyclarity's hearing aid per ear as the CAD2 recipe sets it up; output and seconds per ear."""
    out, seconds = [], []
    for ear in range(signal.shape[0]):
        start = time.perf_counter()
        e = slice(ear, ear + 1)
        out.append(recipe_hearing_aid(signal[e], np.asarray(ratio)[e], np.asarray(makeup)[e])[0])
        seconds.append(time.perf_counter() - start)
    return np.stack(out), seconds


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """Median and minimum wall-clock seconds of ``fn()`` over ``repeats`` calls, and the median
    process CPU seconds (all threads; includes OpenMP workers spinning after torch ops)."""
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, start = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return float(np.median(walls)), float(np.min(walls)), float(np.median(cpus))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (s)")
    parser.add_argument("--repeats", type=int, default=7, help="torch timing repeats")
    parser.add_argument("--lufs", type=float, default=-40.0, help="level of the timed clip")
    args = parser.parse_args()
    torch.set_num_threads(2)
    load = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average "
        f"{load:.2f} (other processes on this machine distort timings)"
    )

    ha = HearingAid()
    ratio, makeup = (torch.tensor(v)[None] for v in LISTENERS["L0001"])
    short = torch.zeros(1, 2, 1000)
    start = time.perf_counter()
    with torch.no_grad():
        for dtype in (torch.float64, torch.float32):
            ha(short.to(dtype) + 0.1, ratio, makeup)
    for dtype in (torch.float64, torch.float32):
        x = (short.to(dtype) + 0.1).requires_grad_(True)
        ha(x, ratio, makeup).sum().backward()
    compile_s = time.perf_counter() - start
    hits = sum(
        sum(f.stats.cache_hits.values())
        for f in (ha_module._compress_forward, ha_module._compress_backward)
    )
    print(
        f"numba compile / cache load: {compile_s:.2f} s ({hits} cache hits); "
        "excluded from the timings below"
    )

    signal = music_like(args.seconds, seed=1, lufs=args.lufs)
    print(
        f"\nclip: {args.seconds:g} s stereo at {SAMPLE_RATE} Hz, {args.lufs:g} LUFS, listener L0001"
    )
    runs = []
    for _ in range(2):
        cpu = time.process_time()
        per_ear = pyclarity(signal, *LISTENERS["L0001"])[1]
        runs.append((sum(per_ear), time.process_time() - cpu, per_ear))
    py_stereo, py_cpu, per_ear = min(runs)
    print(
        f"pyclarity MultibandCompressor: {py_stereo:.3f} s per stereo clip, CPU {py_cpu:.3f} s "
        f"(per ear {', '.join(f'{s:.3f}' for s in per_ear)} s; best of 2 runs)"
    )
    for dtype in (torch.float64, torch.float32):
        x = torch.from_numpy(signal).to(dtype)[None]
        with torch.no_grad():
            ha(x, ratio, makeup)
            median, best, cpu = timed(lambda x=x: ha(x, ratio, makeup), args.repeats)
        print(
            f"torch HearingAid {str(dtype)[6:]:8s}: {median * 1e3:6.1f} ms median, "
            f"{best * 1e3:.1f} ms min of {args.repeats}, CPU {cpu * 1e3:.1f} ms -> "
            f"{py_stereo / median:.0f}x faster (median), {py_stereo / best:.0f}x (min), "
            f"{py_cpu / cpu:.0f}x less CPU"
        )
    loud = music_like(args.seconds, seed=1, lufs=args.lufs + 20)
    for dtype in (torch.float64, torch.float32):
        x = torch.from_numpy(loud).to(dtype)[None]
        with torch.no_grad():
            ha(x, ratio, makeup)
            median, best, cpu = timed(lambda x=x: ha(x, ratio, makeup), args.repeats)
        print(
            f"  same clip 20 dB louder (compressor busy), {str(dtype)[6:]}: {median * 1e3:.1f} ms "
            f"median, {best * 1e3:.1f} ms min, CPU {cpu * 1e3:.1f} ms"
        )
    for dtype in (torch.float32, torch.float64):
        x = torch.from_numpy(signal).to(dtype)[None].requires_grad_(True)

        def step(x=x) -> None:
            ha(x, ratio, makeup).square().sum().backward()

        step()
        median, best, cpu = timed(step, max(3, args.repeats // 2))
        print(
            f"torch forward+backward {str(dtype)[6:]:8s}: {median * 1e3:6.1f} ms median, "
            f"{best * 1e3:.1f} ms min, CPU {cpu * 1e3:.1f} ms"
        )

    print("\nper-ear SNR vs pyclarity (dB), left / right:")
    for lufs in (-40.0, -20.0):
        sig = music_like(args.seconds, seed=1, lufs=lufs)
        for name, (r, m) in LISTENERS.items():
            reference, _ = pyclarity(sig, r, m)
            row = []
            for dtype in (torch.float64, torch.float32):
                with torch.no_grad():
                    y = (
                        ha(
                            torch.from_numpy(sig).to(dtype)[None],
                            torch.tensor(r)[None],
                            torch.tensor(m)[None],
                        )[0]
                        .double()
                        .numpy()
                    )
                row.append(" / ".join(f"{snr_db(reference[e], y[e]):6.1f}" for e in range(2)))
            print(f"  {lufs:5.0f} LUFS {name:7s} float64 {row[0]}   float32 {row[1]}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
