"""Uploaded audio in, encoded audio out: format sniffing, limits and clear client errors."""

from __future__ import annotations

import io
import struct
from typing import BinaryIO

import numpy as np
import soundfile as sf

from model.audio import AudioError, check_signal, resample, to_int16
from serving.params import ClientError

MEDIA_TYPES = {"flac": "audio/flac", "wav": "audio/wav", "ogg": "audio/ogg"}
"""Response content type per output format."""
_MAGIC = {b"RIFF": "WAV", b"RF64": "WAV", b"fLaC": "FLAC", b"OggS": "OGG", b"FORM": "AIFF",
          b"ID3": "MP3", b"\xff\xfb": "MP3", b"\xff\xf3": "MP3"}
_SUBTYPES = {"flac": "PCM_16", "wav": "PCM_16", "ogg": "VORBIS"}
MIN_RATE, MAX_RATE = 8000, 192000
"""Accepted input sample rates (Hz)."""


def sniff(head: bytes) -> str | None:
    """The container a file's first bytes announce (``WAV``, ``FLAC``, ``OGG``...), or None."""
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def decode(file: BinaryIO, *, formats: list[str], max_seconds: float) -> tuple[np.ndarray, int]:
    """Read an uploaded file as float32 ``(channels, samples)`` and its rate (Hz).

    Raises ClientError: 415 unknown or refused format, 400 corrupt file, 413 longer than
    ``max_seconds``, 422 more than 2 channels, odd rate, no samples or NaN/Inf samples.
    """
    head = file.read(16)
    file.seek(0)
    announced = sniff(head)
    allowed = ", ".join(formats)
    if not head:
        raise ClientError(400, "the uploaded file is empty")
    try:
        info = sf.info(file)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        if announced in formats:
            raise ClientError(400, f"corrupt {announced} file: {err}") from None
        what = f"{announced} is" if announced else "the upload is not audio in"
        raise ClientError(415, f"unsupported audio format: {what} not an accepted format "
                               f"(send {allowed})") from None
    file.seek(0)
    if info.format not in formats:
        raise ClientError(415, f"unsupported audio format {info.format} ({info.format_info}); "
                               f"send {allowed}")
    if info.channels > 2:
        raise ClientError(422, f"{info.channels} channels: send mono or stereo audio")
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise ClientError(422, f"sample rate {info.samplerate} Hz is outside "
                               f"[{MIN_RATE}, {MAX_RATE}] Hz")
    if info.frames > max_seconds * info.samplerate:
        raise ClientError(413, f"recording is {info.frames / info.samplerate:.1f} s long; the "
                               f"limit is {max_seconds:g} s")
    try:
        data, rate = sf.read(file, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise ClientError(400, f"corrupt {info.format} file: {err}") from None
    if data.shape[0] > max_seconds * rate:  # headers of streamed formats may under-report
        raise ClientError(413, f"recording is longer than the limit of {max_seconds:g} s")
    signal = np.ascontiguousarray(data.T)
    try:
        check_signal(signal, name="uploaded audio", channels=(1, 2))
    except AudioError as err:
        raise ClientError(422, str(err)) from None
    return signal, int(rate)


def encode(signal: np.ndarray, rate_in: int, rate_out: int, fmt: str) -> bytes:
    """``(2, samples)`` float at ``rate_in`` -> file bytes (16-bit FLAC/WAV or Ogg Vorbis),
    hard-clipped to [-1, 1] like the CAD2 submission files."""
    signal = resample(signal, rate_in, rate_out)
    if _SUBTYPES[fmt] == "PCM_16":
        data: np.ndarray = to_int16(signal).T
    else:
        data = np.clip(signal, -1.0, 1.0).T.astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, data, rate_out, subtype=_SUBTYPES[fmt], format=fmt.upper())
    return buf.getvalue()


def wav_header(frames: int, rate: int, channels: int = 2) -> bytes:
    """A 16-bit PCM WAV header for ``frames`` samples per channel (streamed responses)."""
    data_bytes = frames * channels * 2
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
            + b"data" + struct.pack("<I", data_bytes))


def pcm16(signal: np.ndarray) -> bytes:
    """``(channels, n)`` float -> interleaved little-endian 16-bit PCM (hard clip)."""
    return np.ascontiguousarray(to_int16(signal).T).astype("<i2").tobytes()
