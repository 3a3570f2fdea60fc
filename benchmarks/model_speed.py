"""Speed of the shipped Tutti models next to the CAD2 baseline separator (CPU).

One run prints, on the same machine and load:

1. Whole recordings (``--threads`` threads): seconds and real-time factor of the non-causal and
   causal models on a ``--seconds`` stereo clip, the network alone (remix before the hearing aid)
   and with the hearing aid: the median of ``--repeats`` passes after a first one (printed too),
   which also pays for mapping the memory the passes use.
2. Live: the causal :class:`model.streaming.Streamer` fed 5 ms hops (220 samples) on one thread,
   eager, with the untuned compiled block step and with the tuned one
   (:class:`model.streaming.CompiledStep`, what the server uses), in turns of 1 s each: mean /
   p99 compute time per hop and its share of the hop.
3. The CAD2 task-2 baseline separator, pyclarity's ``ConvTasNetStereo`` with the recipe's
   ``conf.yml`` (random weights: only the architecture matters for time), run as the recipe runs
   it (6 s segments + 10 % overlap, one model per instrument of the scene): time per second of
   audio for one instrument and for a scene of three, and the ratio to Tutti's time (network +
   hearing aid) per second of audio.

Usage: ``python benchmarks/model_speed.py [--seconds 60] [--repeats 3] [--baseline-seconds 12]
[--noncausal DIR] [--causal DIR] [--compiled-cache DIR]`` (model folders; default: the shipped
``models/*``).
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
from model.streaming import CompiledStep, Streamer  # noqa: E402

HOP = 220
"""Live hop: 5 ms at 44.1 kHz."""
TURN = 200
"""Live hops each streamer runs in a row (1 s of audio) before the next one's turn."""


def _request() -> Request:
    return Request.from_gains(
        {"Violin_1": 6, "Cello": -3}, np.zeros((2, 8)),
        [[2.1, 1.5, 1.3, 1.5, 2.4, 3.7]] * 2, [[9.6, 11.9, 12.9, 16.4, 19.0, 28.0]] * 2,
        present=["Violin_1", "Violin_2", "Viola", "Cello"],
    )


def whole(x: np.ndarray, repeats: int, seconds: float,
          folders: dict[str, Path]) -> dict[str, float]:
    """Real-time factors of both models; returns seconds per audio second (with HA)."""
    request = _request()
    per_second = {}
    for name, folder in folders.items():
        model = load_model(folder)
        params = sum(p.numel() for p in model.parameters())
        # A first whole pass maps the memory a pass uses (the page faults of a cold
        # process: what a batch job's first file or a server's first request pays once).
        t0 = time.perf_counter()
        hearing_aid(model, remix(model, x, request), request)
        cold = time.perf_counter() - t0
        net, full = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            mixed = remix(model, x, request)
            t1 = time.perf_counter()
            hearing_aid(model, mixed, request)
            t2 = time.perf_counter()
            net.append(t1 - t0)
            full.append(t2 - t0)
        n, f = float(np.median(net)), float(np.median(full))
        per_second[name] = f / seconds
        print(f"{name:10s} ({params / 1e6:.2f} M params): network {n:.2f} s "
              f"({seconds / n:.0f}x real time), with hearing aid {f:.2f} s "
              f"({seconds / f:.0f}x real time); first pass of the process {cold:.2f} s "
              f"({seconds / cold:.0f}x)")
    return per_second


def live(x: np.ndarray, folder: Path, cache: Path | None) -> None:
    """Per-hop compute of the causal Streamer on one thread, eager and with the compiled block
    step (untuned and tuned), on the same input in turns of ``TURN`` hops (the machine's drift
    hits all alike; a turn as long as this keeps each one's memory in the caches, as a server
    running one stream does, where hop-by-hop turns had each evict the others' data)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = load_model(folder)
    streamers = {"eager": Streamer(model, _request())}
    for tuned in (False, True):
        t0 = time.perf_counter()
        step = CompiledStep.build(model, cache, tuned=tuned)
        name = "compiled" if tuned else "compiled untuned"
        print(f"{name} live step: ready in {time.perf_counter() - t0:.1f} s "
              f"({'cache ' + str(cache) if cache else 'no cache'})")
        streamers[name] = Streamer(model, _request(), step)
    times: dict[str, list[float]] = {name: [] for name in streamers}
    starts = range(0, x.shape[1] - HOP, HOP)
    for turn in range(0, len(starts), TURN):
        for name, streamer in streamers.items():
            for start in starts[turn : turn + TURN]:
                t0 = time.perf_counter()
                streamer.process(x[:, start : start + HOP])
                times[name].append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    hop_ms = 1000 * HOP / 44100
    means = {}
    for name, values in times.items():
        t = np.array(values[100:]) * 1000  # skip warm-up hops (and the eager settling ones)
        means[name] = t.mean()
        print(f"live causal {name}, 1 thread, {HOP}-sample hops ({hop_ms:.2f} ms): mean "
              f"{t.mean():.2f} ms ({100 * t.mean() / hop_ms:.0f} % of the hop), p99 "
              f"{np.percentile(t, 99):.2f} ms, {len(t)} hops")
    print(f"compiled / eager per hop: {means['compiled'] / means['eager']:.2f}; compiled / "
          f"compiled untuned: {means['compiled'] / means['compiled untuned']:.2f}")


def baseline(seconds: float, tutti_per_second: dict[str, float]) -> None:
    """The recipe's ConvTasNet separator, timed as the recipe applies it."""
    from omegaconf import OmegaConf
    from recipes.cad2.task2.ConvTasNet.local import tasnet

    conf = OmegaConf.load(Path(tasnet.__file__).with_name("conf.yml"))
    segment = int(44100 * 6.0 * 1.1)  # the recipe's segment (6 s) plus overlap (10 %)
    x = torch.from_numpy(0.01 * np.random.default_rng(1).standard_normal(
        (1, 2, int(seconds * 44100))).astype(np.float32))
    for causal in (False, True):
        net = tasnet.ConvTasNetStereo(**{**OmegaConf.to_container(conf.convtasnet),
                                         "causal": causal}).eval()
        params = sum(p.numel() for p in net.parameters())
        with torch.no_grad():
            net(x[..., :44100])  # warm-up
            t0 = time.perf_counter()
            for start in range(0, x.shape[-1], segment):
                net(x[..., start : start + segment])
            elapsed = time.perf_counter() - t0
        one = elapsed / seconds
        ours = tutti_per_second["causal" if causal else "noncausal"]
        kind = "causal" if causal else "non-causal"
        print(f"CAD2 baseline ConvTasNet, {kind} ({params / 1e6:.2f} M params): "
              f"{one:.3f} s per audio second per instrument, {3 * one:.3f} s for a 3-instrument "
              f"scene; Tutti {kind} with hearing aid {ours:.4f} s -> {3 * one / ours:.0f}x "
              f"faster than the baseline's separation alone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline-seconds", type=float, default=12.0)
    parser.add_argument("--noncausal", type=Path, default=ROOT / "models" / "noncausal")
    parser.add_argument("--causal", type=Path, default=ROOT / "models" / "causal")
    parser.add_argument("--compiled-cache", type=Path,
                        default=Path("~/.cache/tutti/compiled").expanduser(),
                        help="where compiled live steps are kept (the serving default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = (0.01 * rng.standard_normal((2, int(args.seconds * 44100)))).astype(np.float32)
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.2f}; clip {args.seconds:.0f} s stereo 44.1 kHz")
    folders = {"noncausal": args.noncausal, "causal": args.causal}
    print("models: " + ", ".join(f"{k} {v}" for k, v in folders.items()))
    per_second = whole(x, args.repeats, args.seconds, folders)
    live(x[:, : 20 * 44100], args.causal, args.compiled_cache)
    baseline(args.baseline_seconds, per_second)


if __name__ == "__main__":
    main()
