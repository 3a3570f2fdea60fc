"""Speed of the shipped Tutti models on a 60 s stereo clip (CPU, 2 threads).

Prints seconds and the real-time factor for the non-causal and causal models, the network alone
(remix before the hearing aid) and with the hearing aid.

Usage: ``python benchmarks/model_speed.py [--seconds 60] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.apply import Request, hearing_aid, load_model, remix  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = (0.01 * rng.standard_normal((2, int(args.seconds * 44100)))).astype(np.float32)
    request = Request.from_gains(
        {"Violin_1": 6, "Cello": -3}, np.zeros((2, 8)),
        [[2.1, 1.5, 1.3, 1.5, 2.4, 3.7]] * 2, [[9.6, 11.9, 12.9, 16.4, 19.0, 28.0]] * 2,
        present=["Violin_1", "Violin_2", "Viola", "Cello"],
    )
    print(f"torch {torch.__version__}, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.2f}; clip {args.seconds:.0f} s stereo 44.1 kHz")
    for name in ("noncausal", "causal"):
        model = load_model(ROOT / "models" / name)
        params = sum(p.numel() for p in model.parameters())
        remix(model, x[:, :44100], request)  # warm-up
        net, full = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            mixed = remix(model, x, request)
            t1 = time.perf_counter()
            hearing_aid(model, mixed, request)
            t2 = time.perf_counter()
            net.append(t1 - t0)
            full.append(t2 - t0)
        n, f = float(np.median(net)), float(np.median(full))
        print(f"{name:10s} ({params / 1e6:.2f} M params): network {n:.2f} s "
              f"({args.seconds / n:.0f}x real time), with hearing aid {f:.2f} s "
              f"({args.seconds / f:.0f}x real time)")


if __name__ == "__main__":
    main()
