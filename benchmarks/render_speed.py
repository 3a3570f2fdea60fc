"""Render speed and disk use of the training-data renderer, extrapolated to the full render.

Renders ``--hours`` (default 0.05 h) twice into temporary roots with the same seed: once with an
empty score cache (cold: music21 parses every score it meets) and once with the cache filled
(warm: the steady state of a long render, where every work has been parsed once). Prints hours
rendered, wall time, real-time factor (wall seconds per second of audio), disk per hour of music,
and the extrapolation to the configured full size (``hours`` in conf/data.yaml).

    .venv/bin/python benchmarks/render_speed.py [--hours 0.05] [--jobs 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.render import load_config, render_dataset  # noqa: E402


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _run(root: Path, hours: float, seed: int, jobs: int, overrides: list[str]) -> dict:
    t0, c0 = time.time(), _cpu_s()
    render_dataset(root, hours, seed=seed, jobs=jobs, overrides=overrides, progress=False)
    wall, cpu = time.time() - t0, _cpu_s() - c0
    report = json.loads((root / "render_report.json").read_text())
    audio_s = sum(report["hours_rendered"].values()) * 3600.0
    disk = sum(p.stat().st_size for p in (root / "audio").rglob("*") if p.is_file())
    return {"wall_s": wall, "cpu_s": cpu, "audio_s": audio_s, "disk_bytes": disk,
            "excerpts": report["excerpts"], "rtf": wall / max(audio_s, 1e-9),
            "gb_per_hour": disk / 1e9 / max(audio_s / 3600.0, 1e-9)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=0.05)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="keep the warm render here")
    parser.add_argument("--no-sidecar-run", action="store_true",
                        help="skip the extra run that measures disk use without scale sidecars")
    args = parser.parse_args()
    cfg = load_config()
    full_hours = float(cfg.hours)
    tmp = Path(tempfile.mkdtemp(prefix="tutti-bench-"))
    cache = tmp / "cache"
    try:
        rows = {}
        rows["cold"] = _run(tmp / "cold", args.hours, args.seed, args.jobs,
                            [f"cache_dir={cache}"])
        rows["warm"] = _run(tmp / "warm", args.hours, args.seed, args.jobs,
                            [f"cache_dir={cache}"])
        if not args.no_sidecar_run:
            rows["warm, no sidecar"] = _run(tmp / "nosc", args.hours, args.seed, args.jobs,
                                            [f"cache_dir={cache}", "scale_sidecar=false"])
        print(f"jobs={args.jobs}  cores={os.cpu_count()}  excerpt={cfg.excerpt_seconds:g} s")
        print(f"{'run':18s} {'audio h':>8s} {'wall s':>8s} {'RTF':>7s} {'x real time':>11s} "
              f"{'CPU s/s':>8s} {'MB':>8s} {'GB/hour':>8s}")
        for name, r in rows.items():
            print(f"{name:18s} {r['audio_s'] / 3600:8.4f} {r['wall_s']:8.1f} {r['rtf']:7.4f} "
                  f"{1 / r['rtf']:11.1f} {r['cpu_s'] / r['audio_s']:8.4f} "
                  f"{r['disk_bytes'] / 1e6:8.1f} {r['gb_per_hour']:8.2f}")
        print("(RTF: wall seconds per second of audio; CPU s/s: CPU seconds per second of audio, "
              "all processes: independent of other load on the machine)")
        warm = rows["warm"]
        parse_once = max(rows["cold"]["wall_s"] - warm["wall_s"], 0.0)
        # audio of a full render: train + valid, plus the valid share again for valid_timbre
        total_h = full_hours * (1 + float(cfg.splits.valid_fraction) * bool(
            cfg.splits.valid_timbre))
        est_s = total_h * 3600 * min(warm["rtf"], warm["cpu_s"] / warm["audio_s"] / args.jobs
                                     * 1.05)
        print(f"\nfull render ({full_hours:g} h of train+valid music, {total_h:.2f} h of audio "
              f"with valid_timbre), {args.jobs} jobs:")
        print(f"  time  ~ {est_s / 3600:.2f} h at the warm rate (idle cores), plus parsing "
              f"each corpus score once (this run's cold extra: {parse_once:.0f} s; all ~1900 "
              "scores: ~6 min of wall time on 2 cores)")
        print(f"  disk  ~ {warm['gb_per_hour'] * total_h:.1f} GB with scale sidecars"
              + (f", ~ {rows['warm, no sidecar']['gb_per_hour'] * total_h:.1f} GB without"
                 if "warm, no sidecar" in rows else ""))
        if args.keep:
            shutil.copytree(tmp / "warm", args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
