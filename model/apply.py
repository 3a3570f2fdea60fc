"""Apply a Tutti model to whole recordings of any length.

Non-causal: overlapping chunks cross-faded (overlap-add) before the hearing aid. Causal: the
stateful stream over chunks, which equals one offline causal pass. The hearing aid then runs
over the whole remix. Signals are numpy ``(2, samples)`` at 44.1 kHz.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.cad2 import SLOTS, slot_of
from model.tutti import Listener, TuttiModel


@dataclass
class Request:
    """What to do: gains per slot (dB), which slots are present, and the listener.

    ``gains_db``/``presence``: ``(12,)`` over :data:`model.cad2.SLOTS`; ``audiogram (2, 8)`` dB
    HL; ``ratio``/``makeup_db (2, 6)``.
    """

    gains_db: np.ndarray
    presence: np.ndarray
    audiogram: np.ndarray
    ratio: np.ndarray
    makeup_db: np.ndarray

    @classmethod
    def from_gains(cls, gains: dict[str, float], audiogram, ratio, makeup_db,
                   present: list[str] | None = None) -> Request:
        """Build from ``{instrument name: dB}`` (names like ``Violin_1``, ``cello``).

        ``present`` lists the ensemble's instruments; by default those named in ``gains``.
        """
        gains_db = np.zeros(len(SLOTS))
        presence = np.zeros(len(SLOTS))
        for name in present or list(gains):
            presence[SLOTS.index(slot_of(name))] = 1.0
        for name, value in gains.items():
            idx = SLOTS.index(slot_of(name))
            gains_db[idx] = float(value)
            presence[idx] = 1.0
        return cls(gains_db, presence, np.asarray(audiogram, float), np.asarray(ratio, float),
                   np.asarray(makeup_db, float))

    @classmethod
    def normal_hearing(cls, gains: dict[str, float], present: list[str] | None = None
                       ) -> Request:
        """:meth:`from_gains` for a listener with normal hearing: audiogram 0 dB HL, hearing
        aid flat (compression ratio 1, make-up 0 dB)."""
        return cls.from_gains(gains, np.zeros((2, 8)), np.ones((2, 6)), np.zeros((2, 6)),
                              present=present)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, Listener]:
        """Batched (B=1) tensors for the model."""
        def t(a):
            return torch.as_tensor(np.asarray(a), dtype=torch.float32)[None]
        return t(self.gains_db), t(self.presence), Listener(t(self.audiogram), t(self.ratio),
                                                              t(self.makeup_db))


_MALLOC_TUNED = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed buffers of up to 32 MiB for reuse (once per process).

    Inference allocates and frees many such tensors per chunk (spectra and gains of
    ``(1, 2, frames, bins)``). By default glibc maps buffers over 128 kiB afresh and returns
    freed memory to the system, so each of them page-faults on first touch; on this project's
    2-core VM that is 15-25 % of a whole-recording pass. True if the settings took (glibc only).
    """
    global _MALLOC_TUNED
    if not _MALLOC_TUNED:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
            _MALLOC_TUNED = bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                                 and libc.mallopt(m_trim_threshold, 1 << 30))
        except (OSError, AttributeError):  # not glibc: keep the allocator's defaults
            pass
    return _MALLOC_TUNED


def is_device_name(name: str) -> bool:
    """Whether ``name`` is a device :func:`pick_device` understands: ``auto``, ``cpu``,
    ``cuda`` or ``cuda:N`` (whether this machine has it is not checked)."""
    return name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())


def pick_device(name: str = "auto") -> str:
    """A torch device for ``name``: ``cpu``, ``cuda`` / ``cuda:N``, or ``auto`` (``cuda`` when
    available, else ``cpu``). Raises ValueError for other names and for CUDA where there is none.
    """
    if not is_device_name(name):
        raise ValueError(f"device {name!r}: expected cpu, cuda, cuda:N or auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: torch sees no CUDA device on this machine "
                             "(use cpu or auto)")
        count = torch.cuda.device_count()
        if name != "cuda" and int(name[5:]) >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    return name


def load_model(path: str | Path, device: str = "cpu") -> TuttiModel:
    """Load a saved model folder (``config.json`` + ``model.safetensors``), offline (and
    :func:`keep_freed_memory`)."""
    keep_freed_memory()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (not a Tutti model folder)")
    model = TuttiModel.from_pretrained(str(path), local_files_only=True)
    return model.to(device).eval()


@torch.no_grad()
def remix(model: TuttiModel, mixture: np.ndarray, request: Request, chunk_seconds: float = 20.0,
          overlap_seconds: float = 1.0, progress: bool = False) -> np.ndarray:
    """The rebalanced remix before the hearing aid, ``(2, samples)`` float32."""
    pieces = list(iter_remix(model, mixture, request, chunk_seconds, overlap_seconds, progress))
    return np.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]


@torch.no_grad()
def iter_remix(model: TuttiModel, mixture: np.ndarray, request: Request,
               chunk_seconds: float = 20.0, overlap_seconds: float = 1.0,
               progress: bool = False) -> Iterator[np.ndarray]:
    """:func:`remix` piece by piece: yields consecutive ``(2, n)`` float32 segments as soon as
    they are final (after each chunk; non-causal: up to the next chunk's overlap)."""
    cfg = model.config
    block = cfg.block
    device = next(model.parameters()).device
    gains, presence, listener = request.tensors()
    gains, presence = gains.to(device), presence.to(device)
    listener = Listener(*(x.to(device) for x in (listener.audiogram, listener.ratio,
                                                  listener.makeup_db)))
    length = mixture.shape[-1]
    chunk = max(block, int(chunk_seconds * cfg.sample_rate) // block * block)
    x = torch.from_numpy(np.ascontiguousarray(mixture, dtype=np.float32))[None].to(device)
    x = torch.nn.functional.pad(x, (0, (-length) % block))
    total = x.shape[-1]
    if cfg.causal:
        # Stream the chunks, then blocks of zeros: the remix lags by ``delay`` samples.
        x = torch.nn.functional.pad(x, (0, cfg.drain))
        state, done = None, 0
        for start in tqdm(range(0, total + cfg.drain, chunk), disable=not progress,
                          desc="rebalance"):
            y, state = model.remix_aligned(x[..., start : start + chunk], gains, presence,
                                           listener, state)
            y = y[0, :, : length - done]
            done += y.shape[-1]
            if y.shape[-1]:
                yield y.cpu().numpy()
        return

    overlap = min(chunk // 2, int(overlap_seconds * cfg.sample_rate) // block * block)
    hop = chunk - overlap
    out = torch.zeros_like(x)
    weight = torch.zeros(total, device=device)
    fade = torch.ones(chunk, device=device)
    if overlap:
        ramp = torch.linspace(0, 1, overlap + 2, device=device)[1:-1]
        fade[:overlap], fade[-overlap:] = ramp, ramp.flip(0)
    starts = list(range(0, max(total - overlap, 1), hop))
    done = 0
    for i, start in enumerate(tqdm(starts, disable=not progress, desc="rebalance")):
        piece = x[..., start : start + chunk]
        y = model.remix_offline(piece, gains, presence, listener)
        n = piece.shape[-1]
        w = fade[:n]  # un-overlapped edges are restored by the division below
        out[..., start : start + n] += y * w
        weight[start : start + n] += w
        final = length if i == len(starts) - 1 else min(starts[i + 1], length)
        if final > done:
            seg = out[0, :, done:final] / weight[done:final].clamp(min=1e-8)
            yield seg.cpu().numpy()
            done = final


def rebalance(model: TuttiModel, mixture: np.ndarray, request: Request,
              progress: bool = False) -> np.ndarray:
    """Hearing-aid output ``(2, samples)`` for a 44.1 kHz stereo mixture ``(2, samples)``."""
    mixed = remix(model, mixture, request, progress=progress)
    return hearing_aid(model, mixed, request)


@torch.no_grad()
def hearing_aid(model: TuttiModel, signal: np.ndarray, request: Request) -> np.ndarray:
    """The model's hearing-aid layer on ``(2, samples)`` with the request's listener."""
    x = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float64))[None]
    ratio = torch.as_tensor(request.ratio, dtype=torch.float64)[None]
    makeup = torch.as_tensor(request.makeup_db, dtype=torch.float64)[None]
    return model.hearing_aid(x, ratio, makeup)[0].numpy()


LOUDNESS_BLOCK_SECONDS = 0.4
"""pyloudnorm's gating block (s): shorter signals have no integrated loudness."""


def prepare_input(signal: np.ndarray, rate: int, lufs: float | None = -40.0) -> np.ndarray:
    """A recording as the model takes it: ``(1 or 2, n)`` at ``rate`` Hz -> ``(2, m)`` float32 at
    44.1 kHz, loudness-normalised to ``lufs`` LUFS (CAD2 mixtures sit at -40; None: keep level).

    Mono is copied to both ears. Silence and signals shorter than 0.4 s (pyloudnorm's gating
    block) keep their level. Raises :class:`model.audio.AudioError` for other channel counts,
    empty signals and NaN/Inf samples.
    """
    import pyloudnorm as pyln

    from model.audio import SAMPLE_RATE, check_signal, resample

    check_signal(signal, name="input", channels=(1, 2))
    if signal.shape[0] == 1:
        signal = np.repeat(signal, 2, axis=0)
    signal = resample(np.asarray(signal, dtype=np.float32), rate, SAMPLE_RATE)
    if lufs is not None and signal.shape[1] >= LOUDNESS_BLOCK_SECONDS * SAMPLE_RATE:
        loudness = pyln.Meter(SAMPLE_RATE).integrated_loudness(signal.T.astype(np.float64))
        if np.isfinite(loudness):
            signal = signal * np.float32(10 ** ((lufs - loudness) / 20))
    return np.ascontiguousarray(signal, dtype=np.float32)
