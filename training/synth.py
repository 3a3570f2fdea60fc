"""Procedural synthesiser, one model per instrument family, for timbre diversity in training data.

Families: ``bowed`` (violin, viola, cello), ``single_reed`` (clarinet), ``double_reed`` (oboe,
bassoon), ``flute`` and ``sax``. Each note is read from two band-limited wavetables (soft and
bright spectra of the family's source model) cross-faded by its loudness, shaped by an attack /
sustain / release envelope and driven by a shared pitch curve (vibrato, detune, intonation). The
part then passes through the instrument's resonances (body modes or formants) and gets its playing
noise (bow hair, breath) and onset transients (bow scratch, flute chiff). All parameters are
drawn at random per part by :func:`random_params`, within ranges that keep the instrument
recognisable.

Input notes are ``(n, 4)`` arrays: onset (s), duration (s), MIDI pitch, velocity (1-127).
Output is mono float64 ``(samples,)`` at ``sr`` Hz, unnormalised (the renderer sets levels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import signal as sps

from training.corpus import FAMILY
from training.timbre import apply_sos, peaking, playing_noise

TABLE_SIZE = 4096
"""Samples per wavetable cycle (up to 2047 harmonics)."""

# Body modes / formants per instrument: (Hz, dB, Q). Randomised per part by ±15 % in frequency.
_RESONANCES: dict[str, list[tuple[float, float, float]]] = {
    "Violin": [(275, 7, 4), (460, 6, 4), (540, 4, 5), (1500, -4, 1.5), (2600, 7, 1.2),
               (4500, -3, 1.0)],
    "Viola": [(225, 7, 4), (370, 6, 4), (440, 4, 5), (1300, -3, 1.5), (2200, 5, 1.2)],
    "Cello": [(105, 6, 4), (175, 6, 4), (205, 4, 5), (600, 3, 2), (1600, 4, 1.2),
              (3500, -4, 1.0)],
    "Clarinet": [(1500, 3, 1.2), (3000, -5, 0.9)],
    "Oboe": [(1100, 9, 1.8), (2800, 5, 2.0), (4800, -6, 1.0)],
    "Bassoon": [(470, 9, 2.0), (1150, 6, 2.0), (2000, 3, 2.5), (3500, -6, 1.0)],
    "Flute": [(2000, 2, 1.0), (6000, -4, 0.8)],
    "Sax": [(600, 6, 2.0), (1600, 5, 2.0), (2700, 4, 2.5), (5000, -5, 1.0)],
}

_CUTOFF_HZ: dict[str, tuple[float, float]] = {
    "Violin": (4000, 7000), "Viola": (3000, 5500), "Cello": (2000, 4000),
    "Clarinet": (3000, 5000), "Oboe": (2800, 4500), "Bassoon": (1200, 2200),
    "Flute": (3000, 6000), "Sax": (2800, 5000),
}
"""Range of the frequency (Hz) above which each instrument's harmonics fall at 12 dB/octave."""

_ATTACK_S: dict[str, tuple[float, float]] = {
    "bowed": (0.05, 0.16), "single_reed": (0.02, 0.06), "double_reed": (0.02, 0.05),
    "flute": (0.04, 0.10), "sax": (0.02, 0.06),
}
_RELEASE_S: dict[str, tuple[float, float]] = {
    "bowed": (0.10, 0.35), "single_reed": (0.05, 0.15), "double_reed": (0.05, 0.12),
    "flute": (0.06, 0.18), "sax": (0.06, 0.16),
}


_TRANSIENT_BANDS: dict[str, tuple[float, float]] = {
    "bowed": (800.0, 6000.0), "single_reed": (1000.0, 5000.0), "double_reed": (1200.0, 6000.0),
    "flute": (1500.0, 7000.0), "sax": (800.0, 5000.0),
}
"""Pass band (Hz) of the onset noise burst (bow scratch, tonguing, chiff) per family."""


def _transient_sos(band: tuple[float, float]):
    cache: dict[int, np.ndarray] = {}

    def get(sr: int) -> np.ndarray:
        if sr not in cache:
            cache[sr] = sps.butter(2, band, "bandpass", fs=sr, output="sos")
        return cache[sr]

    return get


_TRANSIENT_SOS = {fam: _transient_sos(band) for fam, band in _TRANSIENT_BANDS.items()}


@dataclass
class SynthParams:
    """Randomised parameters of one part's synthesiser (see :func:`random_params`)."""

    instrument: str
    family: str
    slope: float  # spectral roll-off exponent of the bright spectrum (amplitude ~ k^-slope)
    soft_extra: float  # extra roll-off exponent of the soft spectrum
    odd_even_db: float  # attenuation of even harmonics (clarinet)
    bow_point: float  # bowing point as a fraction of the string (comb notches)
    fundamental_db: float  # fundamental boost/cut (double reeds are weak on it)
    cutoff_hz: float  # harmonics above fall at 12 dB/octave
    attack_s: float
    release_s: float
    swell_db: float  # mid-note swell (+) or sag (-)
    decay_db_s: float  # sustain decay (dB per second)
    transient_db: float  # onset noise burst level relative to the note
    scoop_cents: float  # pitch scoop at the onset (winds)
    am_per_cent: float  # amplitude modulation that follows the pitch (vibrato) per cent
    noise_strength: float  # playing-noise strength (0..1)
    resonances: list[tuple[float, float, float]] = field(default_factory=list)
    phase_seed: int = 0

    def describe(self) -> dict:
        """JSON-able parameters, rounded."""
        out = asdict(self)
        out["resonances"] = [[round(f, 1), round(g, 2), round(q, 2)] for f, g, q in
                             self.resonances]
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def random_params(instrument: str, rng: np.random.Generator) -> SynthParams:
    """Draw a recognisable-but-varied synthesiser for ``instrument`` (a CAD2 instrument name)."""
    family = FAMILY[instrument]
    slope = {"bowed": (0.85, 1.25), "single_reed": (0.6, 1.0), "double_reed": (0.35, 0.75),
             "flute": (2.2, 3.2), "sax": (0.55, 0.95)}[family]
    soft = {"bowed": (0.3, 0.7), "single_reed": (0.5, 1.0), "double_reed": (0.4, 0.9),
            "flute": (0.5, 1.2), "sax": (0.7, 1.3)}[family]
    scale = float(rng.uniform(0.87, 1.15))
    resonances = [(f * scale * float(rng.uniform(0.95, 1.05)),
                   g * float(rng.uniform(0.6, 1.3)), q * float(rng.uniform(0.7, 1.4)))
                  for f, g, q in _RESONANCES[instrument]]
    for _ in range(int(rng.integers(2, 6))):  # irregular extra modes
        resonances.append((float(np.exp(rng.uniform(np.log(400), np.log(6000)))),
                           float(rng.uniform(-4, 4)), float(rng.uniform(3, 10))))
    return SynthParams(
        instrument=instrument,
        family=family,
        slope=float(rng.uniform(*slope)),
        soft_extra=float(rng.uniform(*soft)),
        odd_even_db=float(rng.uniform(12, 30)) if family == "single_reed" else 0.0,
        bow_point=float(rng.uniform(0.07, 0.2)) if family == "bowed" else 0.0,
        fundamental_db=float(rng.uniform(-15, -6)) if instrument == "Bassoon" else
        float(rng.uniform(-9, -2)) if family == "double_reed" else
        float(rng.uniform(-2, 2)),
        cutoff_hz=float(np.exp(rng.uniform(*np.log(_CUTOFF_HZ[instrument])))),
        attack_s=float(rng.uniform(*_ATTACK_S[family])),
        release_s=float(rng.uniform(*_RELEASE_S[family])),
        swell_db=float(rng.uniform(-1.5, 3.0)) if family == "bowed" else float(rng.uniform(-1, 1)),
        decay_db_s=float(rng.uniform(-1.5, 0.0)),
        transient_db=float(rng.uniform(-38, -22)),
        scoop_cents=float(rng.uniform(-40, 0)) if family in ("sax", "flute") else
        float(rng.uniform(-12, 0)),
        am_per_cent=float(rng.uniform(0.004, 0.01)) if family == "flute" else
        float(rng.uniform(0.0, 0.004)),
        noise_strength=float(rng.uniform(0.5, 1.0)),
        resonances=resonances,
        phase_seed=int(rng.integers(0, 2**31 - 1)),
    )


def harmonic_amplitudes(params: SynthParams, f0: float, n_harm: int, bright: bool) -> np.ndarray:
    """Amplitudes ``(n_harm,)`` of harmonics 1..n_harm of the family's source spectrum."""
    k = np.arange(1, n_harm + 1, dtype=float)
    slope = params.slope + (0.0 if bright else params.soft_extra)
    amp = k ** -slope
    fam = params.family
    if fam == "bowed":
        comb = np.abs(np.sin(np.pi * k * params.bow_point)) / max(
            np.sin(np.pi * params.bow_point), 1e-3)
        amp *= 0.15 + 0.85 * np.minimum(comb, 1.0)
    elif fam == "single_reed":
        cutoff = 1800.0 if bright else 1300.0
        even = (k % 2 == 0) & (k * f0 < cutoff)
        amp[even] *= 10 ** (-params.odd_even_db / 20)
        above = k * f0 > cutoff
        amp[above] *= (k[above] * f0 / cutoff) ** -0.8
    elif fam == "flute":
        amp = np.zeros(n_harm)
        amp[0] = 1.0
        if n_harm > 1:
            amp[1] = 0.55 if bright else 0.25
        if n_harm > 2:
            amp[2] = 0.3 if bright else 0.08
        if n_harm > 3:
            amp[3:] = amp[2] * (k[3:] / 3.0) ** -slope
    elif fam == "sax":
        amp *= 1.0 + 0.3 * (k % 2)
    amp[0] *= 10 ** (params.fundamental_db / 20)
    cutoff = params.cutoff_hz * (1.0 if bright else 0.7)
    return amp / np.sqrt(1.0 + (k * f0 / cutoff) ** 4)


def _table(amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    spec = np.zeros(TABLE_SIZE // 2 + 1, dtype=complex)
    n = len(amps)
    spec[1 : n + 1] = amps * np.exp(1j * phases[:n])
    table = np.fft.irfft(spec, TABLE_SIZE)
    rms = np.sqrt(np.mean(table**2)) + 1e-12
    return np.append(table / rms, table[0] / rms)  # wrap sample for interpolation


def _note_envelope(params: SynthParams, n_sus: int, n_rel: int, sr: int) -> np.ndarray:
    """Attack-sustain-release envelope of one note, ``(n_sus + n_rel,)`` in [0, ~1.4]."""
    t = np.arange(n_sus) / sr
    n_att = max(1, int(params.attack_s * sr))
    attack = np.ones(n_sus)
    m = min(n_att, n_sus)
    attack[:m] = 0.5 - 0.5 * np.cos(np.pi * np.arange(m) / n_att)
    dur = max(n_sus / sr, 1e-3)
    level_db = params.swell_db * np.sin(np.pi * np.clip(t / dur, 0, 1)) + params.decay_db_s * t
    sustain = attack * 10 ** (level_db / 20)
    end = sustain[-1] if n_sus else 0.0
    release = end * np.exp(-6.9 * np.arange(n_rel) / max(params.release_s * sr, 1.0))
    return np.concatenate([sustain, release])


def render_part(
    notes: np.ndarray,
    params: SynthParams,
    n_samples: int,
    sr: int,
    rng: np.random.Generator,
    cents: np.ndarray | None = None,
    gain_db: np.ndarray | None = None,
    hop: int = 256,
) -> np.ndarray:
    """Synthesise a part: ``notes`` ``(n, 4)`` -> mono ``(n_samples,)``.

    ``cents`` and ``gain_db`` are control curves on a grid of ``hop`` samples (pitch deviation in
    cents, expression gain in dB); missing curves mean 0.
    """
    out = np.zeros(n_samples)
    phases = np.random.default_rng(params.phase_seed).uniform(0, 2 * np.pi, TABLE_SIZE // 2)
    frame_pos = None
    if cents is not None or gain_db is not None:
        n_frames = len(cents) if cents is not None else len(gain_db)
        frame_pos = np.arange(n_frames) * hop
    n_rel = int(params.release_s * sr * 1.2)
    for onset, dur, midi, vel in notes:
        start = int(round(onset * sr))
        if start >= n_samples:
            continue
        n_sus = max(int(round(dur * sr)), int(0.02 * sr))
        length = min(n_sus + n_rel, n_samples - start)
        if length <= 0:
            continue
        idx = np.arange(start, start + length)
        dev = np.interp(idx, frame_pos, cents) if cents is not None else np.zeros(length)
        scoop = params.scoop_cents * np.exp(-np.arange(length) / (0.04 * sr))
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        freq = f0 * 2 ** ((dev + scoop) / 1200)
        n_harm = int(min(TABLE_SIZE // 2 - 1, 0.45 * sr / (freq.max() + 1e-9)))
        n_harm = max(n_harm, 1)
        soft = _table(harmonic_amplitudes(params, f0, n_harm, bright=False), phases)
        bright = _table(harmonic_amplitudes(params, f0, n_harm, bright=True), phases)
        cycles = rng.uniform() + np.cumsum(freq) / sr
        pos = (cycles % 1.0) * TABLE_SIZE
        i0 = pos.astype(np.int64)
        frac = pos - i0
        wave_soft = soft[i0] + frac * (soft[i0 + 1] - soft[i0])
        wave_bright = bright[i0] + frac * (bright[i0 + 1] - bright[i0])
        env = _note_envelope(params, n_sus, n_rel, sr)[:length]
        level = (vel / 127.0) ** 1.5
        if gain_db is not None:
            level = level * 10 ** (np.interp(idx, frame_pos, gain_db) / 20)
        mix = np.clip((vel / 127.0) ** 0.8 * np.minimum(env, 1.0), 0.0, 1.0)
        tone = (1 - mix) * wave_soft + mix * wave_bright
        tone *= 1 + params.am_per_cent * (dev - np.mean(dev))
        note = tone * env * level
        n_tr = min(length, int(rng.uniform(0.015, 0.06) * sr))
        if n_tr > 16:
            burst = sps.sosfilt(_TRANSIENT_SOS[params.family](sr), rng.standard_normal(n_tr))
            burst *= np.exp(-np.arange(n_tr) / (0.3 * n_tr)) * np.minimum(
                np.arange(n_tr) / (0.002 * sr), 1.0)
            burst /= np.sqrt(np.mean(burst**2)) + 1e-12
            note[:n_tr] += burst * np.mean(level) * 10 ** (params.transient_db / 20)
        out[start : start + length] += note
    sos = np.stack([peaking(f, g, q, sr) for f, g, q in params.resonances])
    out = apply_sos(out[None], sos)
    noise, _ = playing_noise(out, rng, params.family, sr, strength=params.noise_strength)
    return (out + noise)[0]
