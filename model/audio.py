"""Audio I/O: reading with CAD2 conventions, validation, resampling and atomic FLAC writing.

Signals are numpy arrays shaped ``(channels, samples)``, float, full scale = 1.0.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 44100
"""Rate of CAD2 music and of every model input and output (Hz)."""
SUBMISSION_RATE = 32000
"""Rate of CAD2 submission files (Hz)."""


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, wrong rate, wrong channels, NaN/Inf."""


def read_audio(path: str | Path, *, scale_sidecar: bool = True) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 ``(channels, samples)`` and its rate (Hz).

    Like pyclarity's ``read_flac_signal``, 16-bit files are divided by 32768 and, when
    ``scale_sidecar`` is set and ``<same name>.txt`` exists, multiplied by the number in it.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: not a readable audio file ({err})") from err
    signal = np.ascontiguousarray(data.T)
    if scale_sidecar:
        signal *= np.float32(sidecar_scale(path))
    return signal, int(rate)


def sidecar_scale(path: str | Path) -> float:
    """The CAD2 scale factor of an audio file: the number in ``<same name>.txt``, else 1."""
    sidecar = Path(path).with_suffix(".txt")
    if not sidecar.is_file():
        return 1.0
    try:
        return float(sidecar.read_text(encoding="utf-8").strip())
    except ValueError as err:
        raise AudioError(f"{sidecar}: scale sidecar does not hold a number") from err


def check_signal(
    signal: np.ndarray,
    *,
    name: str = "audio",
    rate: int | None = None,
    expected_rate: int | None = None,
    channels: int | tuple[int, ...] | None = None,
) -> np.ndarray:
    """Validate a ``(channels, samples)`` signal and return it; AudioError names the fault."""
    if signal.ndim != 2:
        raise AudioError(f"{name}: expected (channels, samples), got shape {signal.shape}")
    if expected_rate is not None and rate != expected_rate:
        raise AudioError(f"{name}: sample rate {rate} Hz, expected {expected_rate} Hz")
    if channels is not None:
        allowed = (channels,) if isinstance(channels, int) else channels
        if signal.shape[0] not in allowed:
            want = " or ".join(str(c) for c in allowed)
            raise AudioError(f"{name}: {signal.shape[0]} channel(s), expected {want}")
    if signal.shape[1] == 0:
        raise AudioError(f"{name}: no samples")
    if not np.isfinite(signal).all():
        bad = int(np.size(signal) - np.isfinite(signal).sum())
        raise AudioError(f"{name}: {bad} sample(s) are NaN or infinite")
    return signal


def resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample ``(channels, samples)`` with soxr HQ (pyclarity's default)."""
    if rate_in == rate_out:
        return signal
    out = soxr.resample(np.ascontiguousarray(signal.T), rate_in, rate_out, quality="HQ")
    return np.ascontiguousarray(out.T)


def to_int16(signal: np.ndarray) -> np.ndarray:
    """Hard clip to [-1, 1] and convert to int16 exactly as pyclarity's ``to_16bit``."""
    clipped = np.clip(signal, -1.0, 1.0) * 32768.0
    return np.clip(clipped, -32768.0, 32767.0).astype(np.int16)


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once at import: changing it later would race with other threads


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_audio(
    path: str | Path, signal: np.ndarray, rate: int, *, subtype: str = "PCM_16",
    fmt: str | None = None,
) -> Path:
    """Atomically write ``(channels, samples)`` float audio; 16-bit output is hard-clipped."""
    data = to_int16(signal) if subtype == "PCM_16" else np.clip(signal, -1.0, 1.0)
    fmt = fmt or Path(path).suffix.lstrip(".").upper() or "FLAC"
    return atomic_write(
        path, lambda tmp: sf.write(tmp, data.T, rate, subtype=subtype, format=fmt)
    )


def write_submission(path: str | Path, signal: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """Write a CAD2 submission file: resampled to 32 kHz, hard clip, 16-bit stereo FLAC."""
    check_signal(signal, name=str(path), channels=2)
    return write_audio(path, resample(signal, rate, SUBMISSION_RATE), SUBMISSION_RATE)
