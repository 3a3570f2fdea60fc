"""Quality of a Tutti model against the reference systems on a CAD2-layout validation split.

Writes noop, oracle and model outputs (skipping files that exist), scores them with the CAD2
recipe's HAAQI (`tutti evaluate`), and prints mean HAAQI per system overall and for strings-only,
winds-only and mixed ensembles, the fraction of the noop -> oracle gap the model closes, and the
SI-SDR of the model's remix before the hearing aid (vs the noop's) against the reference remix.

Usage: ``python benchmarks/quality.py ROOT --split valid --model models/noncausal --out DIR
[--limit 24] [--jobs 2]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.apply import Request, load_model, remix  # noqa: E402
from model.batch import BASELINES, ModelSystem, run_batch  # noqa: E402
from model.cad2 import CAD2Split, instrument_of  # noqa: E402
from model.hearing_aid import adjust_level  # noqa: E402
from training.corpus import ensemble_kind  # noqa: E402
from training.evaluate import evaluate, reference_mixture  # noqa: E402
from training.losses import si_sdr  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    split = CAD2Split(args.root, args.split)
    model = load_model(args.model)
    name = args.model.name
    systems = {"noop": BASELINES["noop"], "oracle": BASELINES["oracle"], name: ModelSystem(model)}
    scores = {}
    for system, fn in systems.items():
        out = args.out / args.split / system
        run_batch(args.root, args.split, out, fn, limit=args.limit, desc=system, jobs=args.jobs)
        _, rows = evaluate(args.root, args.split, out, jobs=args.jobs, limit=args.limit)
        scores[system] = {(r["scene"], r["listener"]): float(r["avg_haaqi"]) for r in rows}

    pairs = list(scores["noop"])
    kinds = {p: ensemble_kind(instrument_of(t.instrument) for t in
                              split.music[split.scenes[p[0]].music_id].sources.values())
             for p in pairs}
    print(f"\n{args.root} [{args.split}], {len(pairs)} scene x listener pairs, model {args.model}")
    print(f"{'subset':10s} {'pairs':>5s} " + " ".join(f"{s:>12s}" for s in systems)
          + f" {'gap closed':>10s}")
    for subset in ("all", "strings", "winds", "mixed"):
        chosen = [p for p in pairs if subset == "all" or kinds[p] == subset]
        if not chosen:
            continue
        means = {s: float(np.mean([scores[s][p] for p in chosen])) for s in systems}
        gap = (means[name] - means["noop"]) / max(means["oracle"] - means["noop"], 1e-9)
        print(f"{subset:10s} {len(chosen):5d} " + " ".join(f"{means[s]:12.4f}" for s in systems)
              + f" {gap:10.1%}")

    sdr_model, sdr_noop = [], []
    for scene_id in dict.fromkeys(p[0] for p in pairs):
        scene = split.scenes[scene_id]
        music = split.music[scene.music_id]
        slots = music.slots()
        gains = split.scene_gains(scene_id)
        ref = torch.from_numpy(reference_mixture(split, scene_id).T.astype(np.float32))[None]
        mixture = split.mixture(scene.music_id)
        request = Request.normal_hearing({slots[k]: g for k, g in gains.items()})
        est = torch.from_numpy(remix(model, mixture, request))[None]
        g = torch.tensor(list(gains.values()), dtype=torch.float64)
        noop = adjust_level(torch.from_numpy(mixture.astype(np.float64)), g).float()[None]
        sdr_model.append(si_sdr(est, ref).item())
        sdr_noop.append(si_sdr(noop, ref).item())
    print(f"SI-SDR of the remix before the hearing aid vs the reference remix ({len(sdr_model)} "
          f"scenes): noop {np.mean(sdr_noop):.2f} dB, {name} {np.mean(sdr_model):.2f} dB")


if __name__ == "__main__":
    main()
