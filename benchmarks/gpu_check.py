"""Tutti on a CUDA GPU: the same outputs as on the CPU, and how fast (needs a CUDA device).

One run prints:

1. Agreement with the CPU for both shipped models (SNR of the difference in dB, peak of the
   difference): the CLI's and batch jobs' path (:func:`model.apply.rebalance`), the serving
   engine's batched whole-file path and its streamed path (:class:`serving.engine.Engine`), and
   the live :class:`model.streaming.Streamer` (eager; the compiled step is CPU-only) against the
   CPU's offline causal output. Input: the bundled example mixtures, one after another.
2. Speed on the GPU: a ``--seconds`` clip through :func:`model.apply.rebalance` (network on the
   GPU, hearing aid on the CPU, as the CLI runs it) and the engine's stream (likewise),
   median of ``--repeats`` passes after a first one; a batch of ``--batch`` 10 s jobs through the
   engine (audio seconds per wall second); the live Streamer's compute per 5 ms hop.
3. A serving worker as ``conf/serving.yaml`` sets it up: the devices of its engine's and its
   live sessions' models, and a live session (eager) against the CPU's output.

Usage: ``python benchmarks/gpu_check.py [--seconds 60] [--repeats 3] [--batch 16]
[--device cuda]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from model_speed import HOP, _request  # noqa: E402

from model.apply import load_model, pick_device, prepare_input, rebalance  # noqa: E402
from model.audio import SAMPLE_RATE, read_audio  # noqa: E402
from model.streaming import Streamer  # noqa: E402
from serving.engine import Engine, Job  # noqa: E402


def difference(name: str, got: np.ndarray, ref: np.ndarray) -> None:
    """Print the SNR (dB) of ``got`` against ``ref`` and the peak of their difference."""
    n = min(got.shape[-1], ref.shape[-1])
    err = got[..., :n].astype(np.float64) - ref[..., :n]
    snr = 10 * np.log10(np.sum(ref[..., :n].astype(np.float64) ** 2) / max(np.sum(err**2), 1e-30))
    print(f"  {name:34s} SNR {snr:6.1f} dB, peak difference {np.abs(err).max():.2e} "
          f"(reference peak {np.abs(ref).max():.2e}, lengths {got.shape[-1]} / {ref.shape[-1]})")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first, median of the next ``repeats``) wall seconds of ``fn()``, GPU synchronised."""
    times = []
    for _ in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times[0], float(np.median(times[1:]))


def live(model, x: np.ndarray) -> np.ndarray:
    """The Streamer's output for ``x`` fed in 5 ms hops, then its mean / p99 ms per hop."""
    streamer = Streamer(model, _request())
    outs, times = [], []
    for start in range(0, x.shape[1], HOP):
        sync()
        t0 = time.perf_counter()
        outs.append(streamer.process(x[:, start : start + HOP]))
        sync()
        times.append(time.perf_counter() - t0)
    outs.append(streamer.flush())
    t = np.array(times[100:]) * 1000
    hop_ms = 1000 * HOP / SAMPLE_RATE
    print(f"  live Streamer on {next(model.parameters()).device}, {HOP}-sample hops: mean "
          f"{t.mean():.2f} ms ({100 * t.mean() / hop_ms:.0f} % of the hop), p99 "
          f"{np.percentile(t, 99):.2f} ms, {len(t)} hops")
    return np.concatenate(outs, axis=1)


def serving(x: np.ndarray, request, ref: np.ndarray) -> None:
    """A serving worker as configured (``conf/serving.yaml``, compiled live step off): where
    its engine's and its live sessions' models sit, and a live session's output."""
    from serving.config import load_config
    from serving.runtime import Runtime

    cfg = load_config(overrides=["streaming.compiled_live=false"])
    rt = Runtime.create(cfg)
    assert rt.live_model is not None
    print(f"3. Serving worker (models.device={cfg.models.device}, "
          f"streaming.device={cfg.streaming.device}): engine models on "
          f"{next(rt.engine.models[True].parameters()).device}, live sessions' model on "
          f"{next(rt.live_model.parameters()).device}, {torch.get_num_threads()} thread(s)")
    difference("live Streamer (worker) vs CPU rebalance", live(rt.live_model, x), ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--live-seconds", type=float, default=4.0)
    parser.add_argument("--device", default="cuda",
                        help="the device checked against the CPU (cpu: a dry run of the script)")
    args = parser.parse_args()
    gpu = pick_device(args.device)
    if gpu.startswith("cuda"):
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(gpu)}, "
              f"cuDNN TF32 {torch.backends.cudnn.allow_tf32}, "
              f"matmul TF32 {torch.backends.cuda.matmul.allow_tf32}")
    mixtures = sorted((ROOT / "examples" / "cad2" / "audio").glob("*/mixture.flac"))
    x = np.concatenate([prepare_input(*read_audio(p)) for p in mixtures], axis=1)
    request = _request()
    models = {(causal, dev): load_model(ROOT / "models" / ("causal" if causal else "noncausal"),
                                        device=gpu if dev == "cuda" else dev)
              for causal in (False, True) for dev in ("cpu", "cuda")}
    engines = {dev: Engine({c: models[c, dev] for c in (False, True)}) for dev in ("cpu", "cuda")}

    print(f"1. GPU against CPU, {x.shape[1] / SAMPLE_RATE:.0f} s of the bundled examples")
    short = [x[:, : 5 * SAMPLE_RATE], x[:, 5 * SAMPLE_RATE : 12 * SAMPLE_RATE]]
    for causal in (False, True):
        name = "causal" if causal else "non-causal"
        ref = rebalance(models[causal, "cpu"], x, request)
        difference(f"{name} rebalance (CLI, batch jobs)", rebalance(models[causal, "cuda"], x,
                                                                     request), ref)
        jobs = [Job(s, request, causal) for s in short]
        for i, (got, want) in enumerate(zip(engines["cuda"].run(jobs), engines["cpu"].run(jobs),
                                            strict=True)):
            difference(f"{name} engine batch, job {i}", got, want)
        got = np.concatenate(list(engines["cuda"].stream(x, request, causal)), axis=1)
        want = np.concatenate(list(engines["cpu"].stream(x, request, causal)), axis=1)
        difference(f"{name} engine stream", got, want)
        difference(f"{name} engine stream vs rebalance", got, ref)
    ref = rebalance(models[True, "cpu"], x[:, : int(args.live_seconds * SAMPLE_RATE)], request)
    got = live(models[True, "cuda"], x[:, : int(args.live_seconds * SAMPLE_RATE)])
    difference("live Streamer (GPU) vs CPU rebalance", got, ref)

    reps = -(-int(args.seconds * SAMPLE_RATE) // x.shape[1])
    clip = np.tile(x, reps)[:, : int(args.seconds * SAMPLE_RATE)]
    print(f"2. Speed on the GPU, {args.seconds:.0f} s clip")
    for causal in (False, True):
        name = "causal" if causal else "non-causal"
        model = models[causal, "cuda"]
        first, med = timed(lambda m=model: rebalance(m, clip, request), args.repeats)
        print(f"  {name:10s} rebalance (hearing aid on the CPU): {med:.2f} s "
              f"({args.seconds / med:.0f}x real time), first pass {first:.2f} s")
        first, med = timed(lambda c=causal: list(engines["cuda"].stream(clip, request, c)),
                           args.repeats)
        print(f"  {name:10s} engine stream (hearing aid on the CPU): {med:.2f} s "
              f"({args.seconds / med:.0f}x real time), first pass {first:.2f} s")
        batch = [Job(np.roll(clip, 9973 * i, axis=1)[:, : 10 * SAMPLE_RATE], request, causal)
                 for i in range(args.batch)]
        first, med = timed(lambda b=batch: engines["cuda"].run(b), args.repeats)
        print(f"  {name:10s} engine batch of {args.batch} x 10 s (hearing aid on the GPU): "
              f"{med:.2f} s "
              f"({10 * args.batch / med:.0f} audio seconds per second), first pass {first:.2f} s")
    serving(x[:, : int(args.live_seconds * SAMPLE_RATE)], request, ref)
    if gpu.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(gpu) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
