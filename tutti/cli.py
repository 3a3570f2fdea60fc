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
                      desc=args.system, jobs=args.jobs)
    print(f"{args.system}: {len(paths)} file(s) in {args.out}")


DEFAULT_MODELS = Path(__file__).resolve().parent.parent / "models"
"""Shipped default models: ``models/noncausal`` and ``models/causal``."""


def _model_dir(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return args.model
    return DEFAULT_MODELS / ("causal" if args.causal else "noncausal")


def parse_audiogram(text: str) -> tuple[list[float], list[float]]:
    """``"L:45,45,35,45,60,65,70,65;R:40,40,45,45,60,65,80,80"`` -> (left, right) dB HL.

    A single list without ``L:``/``R:`` applies to both ears.
    """
    ears: dict[str, list[float]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        side, _, values = part.rpartition(":")
        side = side.strip().upper() or "LR"
        if side not in ("L", "R", "LR"):
            raise ValueError(f"audiogram: unknown ear {side!r} (use L: and R:)")
        try:
            levels = [float(v) for v in values.split(",")]
        except ValueError:
            raise ValueError(
                f"audiogram: {values!r} is not a comma-separated list of dB HL") from None
        for ear in side:
            ears[ear] = levels
    if set(ears) != {"L", "R"}:
        raise ValueError("audiogram: give both ears, e.g. 'L:45,45,...;R:40,40,...'")
    return ears["L"], ears["R"]


def parse_gains(text: str) -> dict[str, float]:
    """``"Violin_1=+6,Cello=-3"`` -> ``{"Violin_1": 6.0, "Cello": -3.0}``."""
    from model.cad2 import slot_of

    gains: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"gains: {part!r} is not NAME=DB")
        slot_of(name)
        try:
            gains[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"gains: {value!r} for {name!r} is not a number of dB") from None
    return gains


def _listener(args: argparse.Namespace):
    """(audiogram (2, 8), ratio (2, 6), makeup (2, 6)) from --audiogram or --listener files."""
    import json

    import numpy as np

    from model.cad2 import CompressorParams
    from model.prescription import prescribe

    if args.audiogram:
        left, right = parse_audiogram(args.audiogram)
        params = prescribe(left, right)
    elif args.listener:
        if not (args.listeners and args.compressor):
            raise ValueError("--listener needs --listeners FILE and --compressor FILE")
        listeners = json.loads(Path(args.listeners).read_text())
        compressor = json.loads(Path(args.compressor).read_text())
        if args.listener not in listeners or args.listener not in compressor:
            raise ValueError(f"listener {args.listener!r} is not in {args.listeners} and "
                             f"{args.compressor}")
        entry = listeners[args.listener]
        left, right = entry["audiogram_levels_l"], entry["audiogram_levels_r"]
        params = compressor[args.listener]
    else:
        raise ValueError(
            "give the listener: --audiogram, or --listener with --listeners and --compressor")
    comp = CompressorParams(*(tuple(params[k]) for k in ("cr_l", "gain_l", "cr_r", "gain_r")))
    ratio, makeup = comp.as_arrays()
    return np.array([left, right], dtype=float), ratio, makeup


def _rebalance(args: argparse.Namespace) -> None:
    from model.apply import Request, load_model, pick_device, prepare_input, rebalance
    from model.audio import SAMPLE_RATE, check_signal, read_audio, write_audio

    gains = parse_gains(args.gains)
    audiogram, ratio, makeup = _listener(args)
    present = [p.strip() for p in args.instruments.split(",")] if args.instruments else None
    request = Request.from_gains(gains, audiogram, ratio, makeup, present=present)
    signal, rate = read_audio(args.input, scale_sidecar=False)
    check_signal(signal, name=str(args.input), channels=(1, 2))
    signal = prepare_input(signal, rate, args.lufs)  # stereo, 44.1 kHz, -40 LUFS (as serving)
    model = load_model(_model_dir(args), device=pick_device(args.device))
    out = rebalance(model, signal, request, progress=True)
    write_audio(args.out, out, SAMPLE_RATE)
    print(f"wrote {args.out}")


def _enhance(args: argparse.Namespace) -> None:
    from model.apply import load_model, pick_device
    from model.batch import ModelSystem, run_batch

    device = pick_device(args.device)
    if device != "cpu" and args.jobs > 1:
        raise ValueError(f"--device {args.device} runs in one process: drop --jobs {args.jobs}")
    model = load_model(_model_dir(args), device=device)
    paths = run_batch(args.root, args.split, args.out, ModelSystem(model), limit=args.limit,
                      desc="enhance", jobs=args.jobs)
    print(f"enhance: {len(paths)} file(s) in {args.out}")


def _render(args: argparse.Namespace) -> None:
    from training.render import render_dataset

    root = render_dataset(args.out, hours=args.hours, seed=args.seed, jobs=args.jobs,
                          overrides=args.overrides)
    print(f"rendered CAD2 layout in {root}")


def _kit(args: argparse.Namespace) -> None:
    from training.render import make_render_kit

    overrides = make_render_kit(args.out, jobs=args.jobs, overrides=args.overrides)
    print("render from the kit with: tutti data render --out ROOT " + " ".join(overrides))


def _renumber(args: argparse.Namespace) -> None:
    from training.render import renumber_voices

    print(f"renumbered the doubled voices of {renumber_voices(args.root)} excerpts")


def _train(args: argparse.Namespace) -> None:
    from training.train import load_config, train

    run_dir = train(load_config(args.config, args.overrides))
    print(f"run folder: {run_dir}")


def _export(args: argparse.Namespace) -> None:
    from model.apply import load_model

    run, which = args.run, args.weights
    if which == "best":
        folder = run / "best" if (run / "best").is_dir() else run
    else:
        folder = run / "checkpoint"
        if not folder.is_dir():
            raise ValueError(f"--weights {which}: {run} has no checkpoint/ (not a training run)")
    model = load_model(folder)
    if which == "last-average":
        from safetensors.torch import load_file

        from training.ema import WeightAverage

        saved = folder / "ema.safetensors"
        if not saved.is_file():
            raise ValueError(f"--weights last-average: {saved} is missing (train.ema_decay "
                             "was 0)")
        average = WeightAverage(model, 0.0)
        average.load(load_file(str(saved)))  # raises unless it fits the model
        model.load_state_dict(average.state, strict=False)
    settings = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            settings[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--set {item!r}: expected KEY=NUMBER") from None
    model.set_inference(**settings)
    if args.slot_gate is not None:
        model = model.with_slot_gate(args.slot_gate)
    if args.fb_reach is not None or args.gain_lag is not None:
        reach = model.config.fb_reach if args.fb_reach is None else args.fb_reach
        model = model.with_fb_reach(reach, args.gain_lag)
    model.save_pretrained(args.out, safe_serialization=True)
    print(f"exported {args.out}")


def _serve(args: argparse.Namespace) -> None:
    """Replace this process with ``bentoml serve serving.service:Tutti`` (tracking off)."""
    import shlex

    from serving.config import ENV_CONFIG, ENV_OVERRIDES, load_config

    load_config(args.config, args.overrides)  # fail here, clearly, on a bad setting
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true")
    if args.config is not None:
        env[ENV_CONFIG] = str(args.config.resolve())
    env[ENV_OVERRIDES] = shlex.join(args.overrides)
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:Tutti",
           "--working-dir", str(root), "--host", args.host, "--port", str(args.port)]
    os.execve(sys.executable, cmd, env)


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
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.set_defaults(func=_baseline)

    p = sub.add_parser("rebalance", help="rebalance one recording for one listener")
    p.add_argument("input", type=Path, help="WAV/FLAC/OGG, any sample rate, mono or stereo")
    p.add_argument("--gains", required=True, help='e.g. "Violin_1=+6,Cello=-3" (dB)')
    p.add_argument("--instruments", default=None,
                   help="the ensemble, e.g. Violin_1,Violin_2,Viola,Cello (default: those in "
                        "--gains)")
    p.add_argument("--audiogram", default=None,
                   help='"L:45,45,35,45,60,65,70,65;R:40,40,45,45,60,65,80,80" (dB HL at 250, '
                        '500, 1k, 2k, 3k, 4k, 6k, 8k Hz)')
    p.add_argument("--listener", default=None, help="listener id in --listeners/--compressor")
    p.add_argument("--listeners", type=Path, default=None, help="CAD2 listeners JSON")
    p.add_argument("--compressor", type=Path, default=None, help="CAD2 compressor_params JSON")
    p.add_argument("--out", type=Path, required=True, help="output file (FLAC/WAV, 44.1 kHz)")
    p.add_argument("--causal", action="store_true", help="use the causal (live) model")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: shipped)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda if any)")
    p.add_argument("--lufs", type=float, default=-40.0, help="input level the model expects")
    p.set_defaults(func=_rebalance)

    p = sub.add_parser("enhance", help="the challenge batch job over a CAD2 split")
    p.add_argument("root", type=Path)
    p.add_argument("--split", default="valid")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:N or auto (cuda if any; one process)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.set_defaults(func=_enhance)

    p = sub.add_parser("data", help="training data")
    data = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = data.add_parser("render", help="render classical ensembles in the CAD2 layout")
    p.add_argument("--out", type=Path, required=True, help="dataset root to create or resume")
    p.add_argument("--hours", type=float, default=None, help="hours of music (conf/data.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("overrides", nargs="*", help="key=value overrides of conf/data.yaml")
    p.set_defaults(func=_render)
    p = data.add_parser("kit", help="score pack + SoundFont subsets: render without music21 "
                        "or the SoundFont packages (e.g. on a GPU machine)")
    p.add_argument("--out", type=Path, required=True, help="kit folder to create or resume")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("overrides", nargs="*", help="key=value overrides of conf/data.yaml")
    p.set_defaults(func=_kit)

    p = data.add_parser("renumber", help="number doubled voices by register (voice 1 the "
                        "higher) in a render made before session 39")
    p.add_argument("root", type=Path, help="dataset root made by `tutti data render`")
    p.set_defaults(func=_renumber)

    p = sub.add_parser("train", help="train a model from a conf/*.yaml config")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=_train)

    p = sub.add_parser("export", help="copy a run's model (best by default) to a model folder")
    p.add_argument("run", type=Path, help="run folder (or a model folder)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--slot-gate", type=float, default=None,
                   help="scale the slot log-gain by this (a slot_gate model's learned scale is "
                        "replaced; a model without a gate gets one)")
    p.add_argument("--fb-reach", type=int, default=None, metavar="SAMPLES",
                   help="end the filterbank's synthesis spans this many samples before their "
                        "frames' ends (a causal model's look-ahead grows by it, at most 220)")
    p.add_argument("--gain-lag", type=int, default=None, metavar="FRAMES",
                   help="apply the network's gains this many filterbank hops late (a causal "
                        "model's look-ahead shrinks by as many hops, room for more reach)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="inference-time settings: gain_smooth_ms, slot_mean_order, "
                        "min_phase (0 or 1)")
    p.add_argument("--weights", choices=("best", "last", "last-average"), default="best",
                   help="which weights of a run: best (lowest validation loss; the weight "
                        "average when kept), last (the checkpoint's own) or last-average (the "
                        "checkpoint's weight average)")
    p.set_defaults(func=_export)

    # --- serving -------------------------------------------------------------------------
    p = sub.add_parser("serve", help="start the REST/streaming/WebSocket service (BentoML)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--config", type=Path, default=None,
                   help="YAML merged over conf/serving.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides of conf/serving.yaml")
    p.set_defaults(func=_serve)
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
