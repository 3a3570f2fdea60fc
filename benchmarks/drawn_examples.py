"""Examples drawn as in training (``training/dataset.py``, fixed seed), for the benchmarks that
need no HAAQI (``balance_error.py``, ``path_use.py``): their shared arguments and draw loop."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.hearing_aid import adjust_level
from model.tutti import Listener
from training.dataset import ExampleConfig, RebalanceDataset


def add_arguments(parser: argparse.ArgumentParser, examples: int) -> None:
    """``ROOT --split --model (repeatable) --examples --seconds --seed``."""
    parser.add_argument("root", type=Path)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--examples", type=int, default=examples)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)


def draw(args: argparse.Namespace) -> Iterator[tuple[dict, tuple, torch.Tensor]]:
    """``args.examples`` examples of ``args.seconds`` from ``args.split`` of ``args.root``, each
    as ``(example, model inputs, noop)``: the inputs of :meth:`TuttiModel.remix_offline` for a
    batch of one, and the level-adjusted mixture ``(2, samples)``."""
    dataset = RebalanceDataset([args.root], args.split, ExampleConfig(seconds=args.seconds))
    rng = np.random.default_rng(args.seed)
    for _ in tqdm(range(args.examples), desc="examples"):
        ex = dataset.example(rng)
        present = ex["presence"] > 0
        listener = Listener(ex["audiogram"][None], ex["ratio"][None], ex["makeup_db"][None])
        inputs = (ex["mixture"][None], ex["gains_db"][None], ex["presence"][None], listener)
        yield ex, inputs, adjust_level(ex["mixture"], ex["gains_db"], present)
