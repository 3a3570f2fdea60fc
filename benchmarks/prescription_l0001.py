"""Compare model.prescription with the published CAD2 compressor parameters of listener L0001.

Run: ``.venv/bin/python benchmarks/prescription_l0001.py`` (from the repository root).
Prints gains and ratios per band (published, ours, difference) and the max abs differences, and
the unrounded values for context.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.prescription import COMPRESSOR_CFS, EVALUATION_CFS, prescribe  # noqa: E402

L0001_L = [45, 45, 35, 45, 60, 65, 70, 65]
L0001_R = [40, 40, 45, 45, 60, 65, 80, 80]
PUBLISHED = {
    "gain_l": [9.6, 11.9, 12.9, 16.4, 19.0, 28.0],
    "cr_l": [2.1, 1.5, 1.3, 1.5, 2.4, 3.7],
}


def table(key: str, unit: str, ours: list[float], raw: list[float]) -> float:
    """Print one comparison table; return the max abs difference."""
    print(f"\n{key} ({unit})")
    head = ("band Hz", "read at", "published", "ours", "diff", "unrounded")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (8, 8, 10, 7, 6, 10), strict=True)))
    worst = 0.0
    for band, at, pub, our, unr in zip(
        COMPRESSOR_CFS, EVALUATION_CFS, PUBLISHED[key], ours, raw, strict=True
    ):
        diff = our - pub
        worst = max(worst, abs(diff))
        print(f"{band:>8} {at:>8} {pub:>10.1f} {our:>7.1f} {diff:>+6.1f} {unr:>10.3f}")
    print(f"max |diff| {key}: {worst:.1f} {unit}")
    return worst


def main() -> None:
    """Print the L0001 comparison."""
    ours = prescribe(L0001_L, L0001_R)
    raw = prescribe(L0001_L, L0001_R, decimals=None)
    worst_gain = table("gain_l", "dB", ours["gain_l"], raw["gain_l"])
    worst_cr = table("cr_l", "ratio", ours["cr_l"], raw["cr_l"])
    print(f"\nmax |diff|: gain {worst_gain:.1f} dB, ratio {worst_cr:.1f}")
    top8k = prescribe(L0001_L, L0001_R, evaluation_cfs=COMPRESSOR_CFS)
    print(
        "variant, top band read at 8000 Hz (as labelled): "
        f"gain_l[-1] {top8k['gain_l'][-1]} (published {PUBLISHED['gain_l'][-1]}), "
        f"cr_l[-1] {top8k['cr_l'][-1]} (published {PUBLISHED['cr_l'][-1]})"
    )
    print(f"right ear (no published values): cr_r {ours['cr_r']}, gain_r {ours['gain_r']}")


if __name__ == "__main__":
    main()
