"""Listening examples and stem spectra of the training-data renderer.

Renders the same small plan (same works, tempi, performances, rooms) with four timbre settings:

* ``fluidr3``: FluidR3 samples, no timbre randomisation;
* ``randomised``: FluidR3 with every stem randomised (EQ, vibrato, detune, attacks, noise, ...);
* ``procedural``: the procedural synthesiser only;
* ``musescore``: MuseScore General, unrandomised: the held-out-timbre validation source (as
  ``valid_timbre`` renders it);

plus the default training mix (``training_mix``), then writes to ``examples/listening/``:

* ``<kind>_<excerpt>_<setting>.ogg``: 4 s of a string, a wind and a mixed excerpt per setting, at
  -20 LUFS for listening (the data itself sits at -40 LUFS);
* ``stem_spectra.png``: the average spectrum of the stems of each instrument per setting.

    .venv/bin/python scripts/render_examples.py [--out examples/listening] [--hours 0.08]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pyloudnorm as pyln
import soundfile as sf
from scipy import signal as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.audio import read_audio  # noqa: E402
from training.corpus import INSTRUMENTS  # noqa: E402
from training.render import render_dataset  # noqa: E402

SR = 44100
SETTINGS: dict[str, list[str]] = {
    "fluidr3": ["timbre.shares.fluidr3=1", "timbre.shares.procedural=0",
                "timbre.randomise_prob=0"],
    "randomised": ["timbre.shares.fluidr3=1", "timbre.shares.procedural=0",
                   "timbre.randomise_prob=1", "timbre.noise_prob=1", "timbre.attack_prob=1"],
    "procedural": ["timbre.shares.fluidr3=0", "timbre.shares.procedural=1"],
    "musescore": ["timbre.heldout=procedural", "timbre.shares.musescore=1",
                  "timbre.shares.fluidr3=0", "timbre.shares.procedural=0",
                  "timbre.randomise_prob=0", "splits.valid_timbre=false"],
    "training_mix": [],
}
COLOURS = {"fluidr3": "tab:blue", "randomised": "tab:cyan", "procedural": "tab:red",
           "musescore": "tab:green"}
BASE = ["excerpt_seconds=6", "splits.valid_fraction=0.3", "listeners.count.train=2",
        "listeners.count.valid=2", "corpus.weights.quartets=0.5", "corpus.weights.chorales=0.3",
        "corpus.weights.palestrina=0.1", "corpus.weights.madrigals=0.1",
        "corpus.weights.early=0"]


def _stems(root: Path, splits: tuple[str, ...]) -> list[tuple[str, str, str, str]]:
    """``(music_id, instrument, source, path)`` of every stem in the splits."""
    out = []
    for split in splits:
        music = json.loads((root / "metadata" / f"music.{split}.json").read_text())
        for music_id, entry in music.items():
            for key, item in entry.items():
                if key != "mixture":
                    out.append((music_id, item["instrument"].split("_")[0],
                                item["tutti"]["timbre"], str(root / "audio" / item["track"])))
    return out


def _spectrum(path: str) -> tuple[np.ndarray, np.ndarray]:
    x, _ = read_audio(path)
    freqs, psd = sps.welch(x.mean(axis=0), SR, nperseg=4096)
    return freqs, psd / (psd.sum() + 1e-20)


def _smooth(freqs: np.ndarray, psd: np.ndarray, centres: np.ndarray) -> np.ndarray:
    out = np.empty(len(centres))
    for i, c in enumerate(centres):
        band = (freqs >= c * 2 ** (-1 / 12)) & (freqs < c * 2 ** (1 / 12))
        out[i] = psd[band].mean() if band.any() else np.nan
    return 10 * np.log10(out + 1e-20)


def _excerpt(root: Path, split: str, want: str) -> str | None:
    music = json.loads((root / "metadata" / f"music.{split}.json").read_text())
    for music_id, entry in music.items():
        if entry["mixture"]["tutti"]["kind"] == want and len(entry) >= 4:
            return music_id
    return next(iter(music), None)


def _listen(root: Path, music_id: str, path: Path, seconds: float = 4.0) -> None:
    x, _ = read_audio(root / "audio" / music_id / "mixture.flac")
    x = x[:, : int(seconds * SR)].astype(np.float64)
    meter = pyln.Meter(SR)
    x = x * 10 ** ((-20.0 - meter.integrated_loudness(x.T)) / 20)
    fade = int(0.05 * SR)
    x[:, -fade:] *= np.linspace(1, 0, fade)
    sf.write(str(path), np.clip(x.T, -1, 1), SR, format="OGG", subtype="VORBIS")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/listening"))
    parser.add_argument("--hours", type=float, default=0.08)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tutti-examples-"))
    cache = tmp / "cache"
    try:
        roots = {}
        for name, extra in SETTINGS.items():
            roots[name] = render_dataset(tmp / name, args.hours, seed=args.seed, jobs=args.jobs,
                                         overrides=[*BASE, f"cache_dir={cache}", *extra],
                                         progress=False)
        # "musescore" renders the held-out source (as valid_timbre does) on every excerpt
        stems = {name: _stems(roots[name], ("train", "valid")) for name in COLOURS}
        for old in args.out.glob("*.ogg"):
            old.unlink()
        for kind in ("strings", "winds", "mixed"):
            music_id = _excerpt(roots["fluidr3"], "valid", kind)
            if music_id is None:
                continue
            tag = f"{kind}_{music_id.split('-')[-1]}"
            for name, root in roots.items():
                _listen(root, music_id, args.out / f"{tag}_{name}.ogg")

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        centres = 2 ** np.arange(np.log2(50), np.log2(18000), 1 / 6)
        fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharex=True, sharey=True)
        counts: dict[str, dict[str, int]] = {}
        for ax, inst in zip(axes.flat, INSTRUMENTS, strict=True):
            for setting, rows in stems.items():
                paths = [p for _, i, _, p in rows if i == inst]
                counts.setdefault(inst, {})[setting] = len(paths)
                if not paths:
                    continue
                curves = [_smooth(*_spectrum(p), centres) for p in paths]
                with warnings.catch_warnings():  # bands without bins are NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean = np.nanmean(curves, axis=0)
                    lo, hi = np.nanpercentile(curves, [25, 75], axis=0)
                ax.semilogx(centres, mean, color=COLOURS[setting],
                            label=f"{setting} ({len(paths)})")
                if len(curves) > 2:
                    ax.fill_between(centres, lo, hi, color=COLOURS[setting], alpha=0.12)
            ax.set_title(inst)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
            ax.set_ylim(-90, -5)
        for ax in axes[1]:
            ax.set_xlabel("frequency (Hz)")
        for ax in axes[:, 0]:
            ax.set_ylabel("relative power (dB, 1/6 octave)")
        fig.suptitle("Average stem spectra per timbre source (line: mean, band: 25-75 %); "
                     "musescore = held-out validation timbre")
        fig.tight_layout()
        fig.savefig(args.out / "stem_spectra.png", dpi=90)
        (args.out / "stem_counts.json").write_text(json.dumps(counts, indent=1))
        total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
        print(f"wrote {len(list(args.out.iterdir()))} files, {total / 1e6:.2f} MB, to {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
