"""The ``tutti`` command: the one place that wires ``model``, ``training`` and ``serving``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


def _evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate

    mean, rows = evaluate(
        args.root, args.split, args.enhanced, scores_csv=args.scores, jobs=args.jobs,
        limit=args.limit,
    )
    scores = args.scores or Path(args.enhanced) / "scores.csv"
    print(f"mean HAAQI over {len(rows)} scene x listener pairs: {mean:.4f}  ({scores})")


def _baseline(args: argparse.Namespace) -> None:
    from model.batch import BASELINES, run_batch

    paths = run_batch(args.root, args.split, args.out, BASELINES[args.system], limit=args.limit,
                      desc=args.system)
    print(f"{args.system}: {len(paths)} file(s) in {args.out}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tutti",
        description="Rebalance classical ensembles for listeners with hearing loss (CAD2 task 2).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("evaluate", help="score enhanced files with HAAQI as the CAD2 recipe does")
    p.add_argument("root", type=Path, help="CAD2-layout dataset root")
    p.add_argument("--split", default="valid")
    p.add_argument("--enhanced", type=Path, required=True,
                   help="folder holding <split folder>/<scene>_<listener>_remix.flac")
    p.add_argument("--scores", type=Path, default=None, help="CSV to write (DIR/scores.csv)")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes")
    p.add_argument("--limit", type=int, default=None, help="score only the first N pairs")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("baseline", help="write a reference system's outputs (noop, oracle)")
    p.add_argument("system", choices=["noop", "oracle"])
    p.add_argument("root", type=Path, help="CAD2-layout dataset root")
    p.add_argument("--split", default="valid")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--limit", type=int, default=None, help="process only the first N pairs")
    p.set_defaults(func=_baseline)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from model.audio import AudioError
    from model.cad2 import MetadataError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (AudioError, MetadataError, FileNotFoundError, ValueError) as err:
        print(f"tutti {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
