"""Throughput of the on-the-fly training dataset on one core (4 s examples, from disk).

Usage: ``python benchmarks/dataset_speed.py ROOT [--split train] [--seconds 4] [--count 200]``
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

from training.dataset import ExampleConfig, RebalanceDataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--pcm-cache", type=Path, default=None,
                        help="decoded-track cache folder (as conf data.pcm_cache)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = RebalanceDataset([args.root], args.split, ExampleConfig(seconds=args.seconds),
                               pcm_cache=args.pcm_cache)
    rng = np.random.default_rng(0)
    for _ in range(args.count):  # first pass fills the caches (decoded copies, file info)
        dataset.example(rng)
    rng = np.random.default_rng(1)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.count):
        dataset.example(rng)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    cache = f"decoded cache {args.pcm_cache}" if args.pcm_cache else "FLAC"
    print(f"[{cache}] {args.count} examples of {args.seconds:g} s from {args.root} "
          f"({args.split}), one thread, load average {os.getloadavg()[0]:.2f}: "
          f"{args.count / wall:.1f} examples/s wall, "
          f"{args.count / cpu:.1f} examples/s per CPU-second")


if __name__ == "__main__":
    main()
