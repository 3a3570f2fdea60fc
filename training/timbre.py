"""Timbre randomisation for rendered stems: random EQ, playing noise, envelope and pitch shaping.

Everything draws from a ``numpy.random.Generator`` so a render is reproducible, and every amount
scales with ``strength`` (0 = off, 1 = the configured ranges). Signals are float arrays shaped
``(channels, samples)`` at ``sr`` Hz; filters are second-order sections (``(k, 6)`` arrays).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import signal as sps

# SoundFont 2 generator numbers used with fluid_synth_set_gen (offsets in generator units).
GEN_FILTERFC = 8  # cents
GEN_FILTERQ = 9  # centibels
GEN_VOLENVATTACK = 34  # timecents
GEN_VOLENVDECAY = 36  # timecents
GEN_VOLENVRELEASE = 38  # timecents

# --------------------------------------------------------------------------------------------
# Biquads (RBJ audio-EQ cookbook forms)


def _norm(b: tuple[float, float, float], a: tuple[float, float, float]) -> np.ndarray:
    return np.array([b[0] / a[0], b[1] / a[0], b[2] / a[0], 1.0, a[1] / a[0], a[2] / a[0]])


def peaking(freq: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    """Peaking EQ section: ``gain_db`` at ``freq`` Hz with quality ``q``; shape ``(6,)``."""
    amp = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * min(freq, 0.45 * sr) / sr
    alpha = np.sin(w0) / (2 * q)
    cos = np.cos(w0)
    return _norm((1 + alpha * amp, -2 * cos, 1 - alpha * amp),
                 (1 + alpha / amp, -2 * cos, 1 - alpha / amp))


def shelf(freq: float, gain_db: float, sr: int, high: bool) -> np.ndarray:
    """Low or high shelving section (slope 1), ``gain_db`` beyond ``freq`` Hz; shape ``(6,)``."""
    amp = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * min(freq, 0.45 * sr) / sr
    cos, alpha = np.cos(w0), np.sin(w0) / 2 * np.sqrt(2.0)
    root = 2 * np.sqrt(amp) * alpha
    if high:
        b = (amp * ((amp + 1) + (amp - 1) * cos + root), -2 * amp * ((amp - 1) + (amp + 1) * cos),
             amp * ((amp + 1) + (amp - 1) * cos - root))
        a = ((amp + 1) - (amp - 1) * cos + root, 2 * ((amp - 1) - (amp + 1) * cos),
             (amp + 1) - (amp - 1) * cos - root)
    else:
        b = (amp * ((amp + 1) - (amp - 1) * cos + root), 2 * amp * ((amp - 1) - (amp + 1) * cos),
             amp * ((amp + 1) - (amp - 1) * cos - root))
        a = ((amp + 1) + (amp - 1) * cos + root, -2 * ((amp - 1) + (amp + 1) * cos),
             (amp + 1) + (amp - 1) * cos - root)
    return _norm(b, a)


def apply_sos(x: np.ndarray, sos: np.ndarray) -> np.ndarray:
    """Filter ``(channels, samples)`` along time with sections ``sos`` (no-op when empty)."""
    if sos is None or len(sos) == 0:
        return x
    return sps.sosfilt(sos, x, axis=-1)


@dataclass
class EQ:
    """A random EQ: spectral tilt, resonant peaks, optional high-pass and low-pass."""

    tilt_db: float
    peaks: list[tuple[float, float, float]]  # (Hz, dB, Q)
    highpass_hz: float | None
    lowpass_hz: float | None

    def sos(self, sr: int) -> np.ndarray:
        """The EQ as second-order sections ``(k, 6)``."""
        rows = [shelf(350.0, -self.tilt_db / 2, sr, high=False),
                shelf(2500.0, self.tilt_db / 2, sr, high=True)]
        rows += [peaking(f, g, q, sr) for f, g, q in self.peaks]
        if self.highpass_hz:
            rows.append(sps.butter(2, self.highpass_hz, "highpass", fs=sr, output="sos")[0])
        if self.lowpass_hz and self.lowpass_hz < 0.45 * sr:
            rows.append(sps.butter(2, self.lowpass_hz, "lowpass", fs=sr, output="sos")[0])
        return np.stack(rows)

    def describe(self) -> dict:
        """JSON-able parameters."""
        return {k: (np.round(v, 2).tolist() if v is not None else None)
                for k, v in asdict(self).items()}


def random_eq(rng: np.random.Generator, strength: float = 1.0, *, tilt_db: float = 4.0,
              peak_db: float = 6.0, max_peaks: int = 3) -> EQ:
    """Draw an EQ: tilt in ±``tilt_db``·strength (dB between low and high shelf), 0..max_peaks
    resonances of ±``peak_db``·strength at 150-7000 Hz (Q 0.7-5), sometimes a high-/low-pass."""
    s = float(strength)
    peaks = []
    for _ in range(int(rng.integers(0, max_peaks + 1))):
        freq = float(np.exp(rng.uniform(np.log(150), np.log(7000))))
        peaks.append((freq, float(rng.uniform(-1, 1) * peak_db * s), float(rng.uniform(0.7, 5.0))))
    highpass = float(rng.uniform(30, 140)) if rng.random() < 0.3 * min(s, 1) else None
    lowpass = float(np.exp(rng.uniform(np.log(5000), np.log(16000)))) \
        if rng.random() < 0.35 * min(s, 1) else None
    return EQ(float(rng.uniform(-1, 1) * tilt_db * s), peaks, highpass, lowpass)


# --------------------------------------------------------------------------------------------
# Playing noise (bow / breath)

NOISE_BANDS: dict[str, tuple[float, float]] = {
    "bowed": (1500.0, 9000.0),
    "flute": (800.0, 12000.0),
    "single_reed": (1500.0, 8000.0),
    "double_reed": (1800.0, 8000.0),
    "sax": (1200.0, 9000.0),
}
"""Pass band (Hz) of the noise each family's playing adds."""
NOISE_LEVEL_DB: dict[str, tuple[float, float]] = {
    "bowed": (-42.0, -26.0),
    "flute": (-34.0, -18.0),
    "single_reed": (-44.0, -30.0),
    "double_reed": (-44.0, -30.0),
    "sax": (-40.0, -26.0),
}
"""Range of noise level relative to the stem (dB RMS)."""


def envelope(x: np.ndarray, sr: int, smooth_ms: float = 15.0) -> np.ndarray:
    """Amplitude envelope ``(samples,)`` of ``(channels, samples)``: rectified, one-pole smoothed
    forwards and backwards (zero phase)."""
    mono = np.abs(x).mean(axis=0)
    coef = np.exp(-1.0 / (smooth_ms * 1e-3 * sr))
    sos = np.array([[1 - coef, 0, 0, 1, -coef, 0]])
    return np.maximum(sps.sosfiltfilt(sos, mono), 0.0)


def playing_noise(x: np.ndarray, rng: np.random.Generator, family: str, sr: int,
                  strength: float = 1.0) -> tuple[np.ndarray, float]:
    """Noise that follows the stem's envelope, band-limited per family (bow hair, breath).

    Returns ``(noise (channels, samples), level dB relative to the stem RMS)``; the same noise
    goes to every channel (one source). ``strength`` 0 returns silence.
    """
    lo_db, hi_db = NOISE_LEVEL_DB[family]
    level_db = float(rng.uniform(lo_db, hi_db))
    if strength <= 0:
        return np.zeros_like(x), -np.inf
    lo, hi = NOISE_BANDS[family]
    lo *= float(rng.uniform(0.7, 1.3))
    hi = min(hi * float(rng.uniform(0.7, 1.3)), 0.45 * sr)
    sos = sps.butter(2, [lo, hi], "bandpass", fs=sr, output="sos")
    noise = sps.sosfilt(sos, rng.standard_normal(x.shape[-1]))
    env = envelope(x, sr)
    shaped = noise * env
    rms_x = np.sqrt(np.mean(x**2)) + 1e-12
    rms_n = np.sqrt(np.mean(shaped**2)) + 1e-12
    gain = rms_x / rms_n * 10 ** (level_db / 20) * min(strength, 2.0)
    return np.broadcast_to(shaped * gain, x.shape).copy(), level_db


# --------------------------------------------------------------------------------------------
# Envelope shaping (SoundFont generator offsets) and pitch (vibrato, detune)


def fluid_gen_offsets(rng: np.random.Generator, family: str,
                      strength: float = 1.0) -> dict[int, float]:
    """Random SoundFont generator offsets for a channel: attack and release time (timecents),
    sometimes a darker, more resonant filter (cents, centibels). Keys are generator numbers."""
    s = float(strength)
    attack_hi = 1500.0 if family == "bowed" else 900.0
    gens = {
        GEN_VOLENVATTACK: float(rng.uniform(-400.0, attack_hi) * s),
        GEN_VOLENVRELEASE: float(rng.uniform(-700.0, 900.0) * s),
    }
    if rng.random() < 0.4 * min(s, 1.0):
        gens[GEN_FILTERFC] = float(rng.uniform(-2400.0, -300.0) * s)
        gens[GEN_FILTERQ] = float(rng.uniform(0.0, 80.0) * s)
    return gens


def attack_gain(onsets_s: np.ndarray, n_samples: int, sr: int, attack_s: float,
                depth: float) -> np.ndarray:
    """Gain ``(n_samples,)`` that softens every note onset: after each onset it rises from
    ``1 - depth`` to 1 over ``attack_s`` (raised cosine). Applied to a rendered part it slows
    the attacks of sampled notes (SoundFont attack generators cannot lengthen them reliably)."""
    onsets = np.sort(np.asarray(onsets_s, dtype=float))
    t = np.arange(n_samples) / sr
    idx = np.searchsorted(onsets, t, side="right") - 1
    since = np.where(idx >= 0, t - onsets[np.maximum(idx, 0)], np.inf)
    rise = 0.5 - 0.5 * np.cos(np.pi * np.clip(since / max(attack_s, 1e-3), 0.0, 1.0))
    return 1.0 - depth * (1.0 - rise)


def random_attack(rng: np.random.Generator, family: str,
                  strength: float = 1.0) -> tuple[float, float]:
    """``(attack_s, depth)`` for :func:`attack_gain`: slower, deeper for bowed strings."""
    hi = 0.15 if family == "bowed" else 0.08
    return float(rng.uniform(0.015, hi)), float(rng.uniform(0.2, 0.85) * min(strength, 1.0))


VIBRATO_CENTS: dict[str, tuple[float, float, float]] = {
    # instrument: (probability of vibrato, min depth, max depth) in cents (peak)
    "Violin": (0.9, 8.0, 28.0),
    "Viola": (0.9, 8.0, 25.0),
    "Cello": (0.9, 8.0, 25.0),
    "Flute": (0.8, 5.0, 20.0),
    "Oboe": (0.7, 5.0, 16.0),
    "Sax": (0.7, 6.0, 22.0),
    "Bassoon": (0.5, 4.0, 12.0),
    "Clarinet": (0.15, 2.0, 6.0),
}
"""How likely and how deep each instrument's added vibrato is."""


@dataclass
class PitchStyle:
    """Per-part pitch behaviour: vibrato (cents peak, Hz, onset delay s), detune and intonation
    spread (cents), pitch jitter (cents, a slow random wander)."""

    vibrato_cents: float
    vibrato_hz: float
    vibrato_delay_s: float
    detune_cents: float
    intonation_cents: float
    wander_cents: float


def pitch_style(rng: np.random.Generator, instrument: str, strength: float = 1.0) -> PitchStyle:
    """Draw a part's pitch style; ``strength`` 0 gives plain, in-tune notes."""
    prob, lo, hi = VIBRATO_CENTS[instrument]
    has_vibrato = rng.random() < prob
    depth = float(rng.uniform(lo, hi)) if has_vibrato else 0.0
    return PitchStyle(
        vibrato_cents=depth * strength,
        vibrato_hz=float(rng.uniform(4.5, 6.8)),
        vibrato_delay_s=float(rng.uniform(0.08, 0.35)),
        detune_cents=float(rng.normal(0.0, 6.0) * strength),
        intonation_cents=float(rng.uniform(0.0, 6.0) * strength),
        wander_cents=float(rng.uniform(0.0, 4.0) * strength),
    )


def pitch_curve(style: PitchStyle, onsets_s: np.ndarray, n_frames: int, hop_s: float,
                rng: np.random.Generator) -> np.ndarray:
    """Pitch deviation in cents ``(n_frames,)`` on a control grid of ``hop_s`` seconds:
    detune + per-note intonation + slow wander + delayed vibrato restarting at each onset."""
    t = np.arange(n_frames) * hop_s
    curve = np.full(n_frames, style.detune_cents)
    onsets = np.sort(np.asarray(onsets_s, dtype=float))
    if len(onsets):
        idx = np.searchsorted(onsets, t, side="right") - 1
        since = np.where(idx >= 0, t - onsets[np.maximum(idx, 0)], 10.0)
        offsets = rng.normal(0.0, 1.0, len(onsets)) * style.intonation_cents
        curve += np.where(idx >= 0, offsets[np.maximum(idx, 0)], 0.0)
    else:
        since = np.full(n_frames, 10.0)
    if style.wander_cents > 0:
        steps = rng.standard_normal(n_frames)
        coef = np.exp(-hop_s / 0.4)
        wander = sps.lfilter([1 - coef], [1, -coef], steps)
        wander /= np.std(wander) + 1e-9
        curve += wander * style.wander_cents
    if style.vibrato_cents > 0:
        rate = style.vibrato_hz * (1 + 0.04 * np.sin(2 * np.pi * t / rng.uniform(1.5, 4.0)))
        phase = 2 * np.pi * np.cumsum(rate) * hop_s + rng.uniform(0, 2 * np.pi)
        ramp = np.clip((since - style.vibrato_delay_s) / 0.25, 0.0, 1.0)
        curve += style.vibrato_cents * ramp * np.sin(phase)
    return curve


def expression_curve(rng: np.random.Generator, n_frames: int, hop_s: float,
                     depth: float) -> np.ndarray:
    """MIDI expression (CC11, 1-127) ``(n_frames,)``: a base level with slow phrase swells of
    up to ``depth`` CC units (two sinusoids, periods 2-8 s)."""
    t = np.arange(n_frames) * hop_s
    base = rng.uniform(92.0, 118.0)
    swell = np.zeros(n_frames)
    for _ in range(2):
        swell += np.sin(2 * np.pi * t / rng.uniform(2.0, 8.0) + rng.uniform(0, 2 * np.pi))
    swell /= 2.0
    return np.clip(base + depth * rng.uniform(0.3, 1.0) * swell, 30.0, 127.0)
