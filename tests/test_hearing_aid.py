"""The torch hearing aid against pyclarity's MultibandCompressor, and the recipe's remix maths."""

from __future__ import annotations

import warnings

import numpy as np
import pyloudnorm as pyln
import pytest
import torch

from model.hearing_aid import (
    CROSSOVER_HZ,
    SAMPLE_RATE,
    THRESHOLD_DB,
    HearingAid,
    adjust_level,
    apply_gains,
    crossover_impulse_responses,
    reference_remix,
    remix,
)
from training.evaluate import recipe_hearing_aid

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from recipes.cad2.task2.baseline import evaluate as recipe

# Per-ear compressor settings (ratio, makeup dB), rows = left, right.
LISTENERS: dict[str, tuple[list[list[float]], list[list[float]]]] = {
    "normal": ([[1.0] * 6, [1.0] * 6], [[0.0] * 6, [0.0] * 6]),
    "L0001": (
        [[2.1, 1.5, 1.3, 1.5, 2.4, 3.7], [1.9, 1.6, 1.5, 1.5, 2.5, 4.0]],
        [[9.6, 11.9, 12.9, 16.4, 19.0, 28.0], [8.9, 11.0, 14.1, 16.5, 19.5, 31.0]],
    ),
    "severe": (
        [[2.0, 2.5, 3.5, 4.5, 6.0, 6.0], [2.2, 2.8, 4.0, 5.0, 6.0, 6.0]],
        [[18.0, 22.0, 27.0, 33.0, 39.0, 40.0], [20.0, 24.0, 29.0, 35.0, 40.0, 40.0]],
    ),
}


def music_like(seconds: float, seed: int, lufs: float) -> np.ndarray:
    """Stereo ``(2, samples)`` float64 at 44.1 kHz: five voices of harmonic notes with attack/decay
    envelopes, random pitches and pans, plus a little noise; normalised to ``lufs`` (LUFS)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros((2, n))
    for f0 in (98.0, 196.0, 330.0, 523.0, 784.0):
        voice = np.zeros(n)
        for onset in np.sort(rng.uniform(0, seconds, size=int(2 * seconds))):
            freq = f0 * 2 ** (rng.integers(-5, 6) / 12)
            i0 = int(onset * SAMPLE_RATE)
            tt = t[: min(n, i0 + int(rng.uniform(0.2, 1.0) * SAMPLE_RATE)) - i0]
            env = (1 - np.exp(-tt / rng.uniform(0.002, 0.03))) * np.exp(-tt / rng.uniform(0.1, 0.6))
            tilt = rng.uniform(0.8, 1.6)
            note = sum(
                np.sin(2 * np.pi * h * freq * tt + rng.uniform(0, 2 * np.pi)) / h**tilt
                for h in range(1, 20)
                if h * freq < 18000
            )
            voice[i0 : i0 + len(tt)] += rng.uniform(0.3, 1.0) * env * note
        pan = rng.uniform(0.2, 0.8)
        out += np.stack([voice * (1 - pan), voice * pan])
    out += 0.003 * np.abs(out).max() * rng.standard_normal((2, n))
    loudness = pyln.Meter(SAMPLE_RATE).integrated_loudness(out.T)
    return out * 10 ** ((lufs - loudness) / 20)


def pyclarity_hearing_aid(signal: np.ndarray, ratio, makeup) -> np.ndarray:
    """pyclarity's MultibandCompressor per ear, set up as the CAD2 recipe does: ``(2, T)``."""
    return recipe_hearing_aid(signal, ratio, makeup)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """``10 log10(|ref|^2 / |ref - test|^2)`` (dB)."""
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - test) ** 2)))


@pytest.fixture(scope="module")
def hearing_aid() -> HearingAid:
    return HearingAid()


@pytest.fixture(scope="module")
def signals() -> dict[float, np.ndarray]:
    """3 s music-like stereo at the CAD2 level (-40 LUFS) and 20 dB louder (compressor busy)."""
    return {lufs: music_like(3.0, seed=7, lufs=lufs) for lufs in (-40.0, -20.0)}


@pytest.fixture(scope="module")
def references(signals) -> dict[tuple[str, float], np.ndarray]:
    return {
        (name, lufs): pyclarity_hearing_aid(sig, *LISTENERS[name])
        for name in LISTENERS
        for lufs, sig in signals.items()
    }


def run_ha(ha: HearingAid, signal: np.ndarray, name: str, dtype=torch.float64) -> np.ndarray:
    ratio, makeup = (torch.tensor(v)[None] for v in LISTENERS[name])
    with torch.no_grad():
        y = ha(torch.from_numpy(signal).to(dtype)[None], ratio, makeup)
    assert y.dtype == dtype and y.shape == (1, *signal.shape)
    return y[0].double().numpy()


def test_crossover_matches_pyclarity(hearing_aid, signals) -> None:
    from clarity.enhancer.multiband_compressor.crossover import Crossover

    irs = crossover_impulse_responses()
    assert irs.shape[0] == 6 and 500 < irs.shape[1] < 4000
    sig = signals[-40.0]
    ours = hearing_aid.crossover(torch.from_numpy(sig)[None])[0].numpy()  # (E, K, T)
    theirs = Crossover(np.array(CROSSOVER_HZ), SAMPLE_RATE)(sig, axis=-1)  # (K, E, T)
    assert snr_db(theirs, ours.transpose(1, 0, 2)) > 100


@pytest.mark.parametrize("lufs", [-40.0, -20.0])
@pytest.mark.parametrize("name", list(LISTENERS))
def test_matches_pyclarity(hearing_aid, signals, references, name, lufs) -> None:
    sig, ref = signals[lufs], references[(name, lufs)]
    for dtype in (torch.float64, torch.float32):
        out = run_ha(hearing_aid, sig, name, dtype)
        for ear in range(2):
            snr = snr_db(ref[ear], out[ear])
            assert snr >= 60.0, f"{name} {lufs} LUFS {dtype} ear {ear}: {snr:.1f} dB"
    if name != "normal" and lufs == -20.0:
        # Non-trivial check: here compression changes the output by far more than 60 dB allows.
        bands = hearing_aid.crossover(torch.from_numpy(sig)[None])[0].numpy()
        makeup = 10 ** (np.array(LISTENERS[name][1]) / 20)
        linear = (bands * makeup[..., None]).sum(axis=1)
        assert all(snr_db(ref[ear], linear[ear]) < 30 for ear in range(2))


def test_batch_and_chunking_consistency(hearing_aid, signals) -> None:
    """A batch of 2 equals each item alone; one frame per chunk equals the default chunking."""
    sig = torch.from_numpy(np.stack([signals[-20.0], 0.5 * signals[-20.0][::-1]]))  # (2, 2, T)
    ratio = torch.tensor([LISTENERS["L0001"][0], LISTENERS["severe"][0]])
    makeup = torch.tensor([LISTENERS["L0001"][1], LISTENERS["severe"][1]])
    with torch.no_grad():
        both = hearing_aid(sig, ratio, makeup)
        alone = torch.cat(
            [hearing_aid(sig[i : i + 1], ratio[i : i + 1], makeup[i : i + 1]) for i in (0, 1)]
        )
        small_chunks = HearingAid(block_size=4096, chunk_bytes=1)(sig, ratio, makeup)
    scale = both.abs().max()
    assert torch.allclose(both, alone, rtol=0, atol=1e-12 * scale)
    assert torch.allclose(both, small_chunks, rtol=0, atol=1e-12 * scale)
    # the two batch items really differ (the comparisons above are not vacuous)
    assert (both[0] - both[1]).abs().max() > 0.1 * scale


def test_causal(hearing_aid, signals) -> None:
    x = torch.from_numpy(signals[-20.0][None]).clone()
    ratio, makeup = (torch.tensor(v)[None] for v in LISTENERS["severe"])
    y = hearing_aid(x, ratio, makeup)
    cut = 50_000
    x[..., cut:] = torch.randn_like(x[..., cut:])
    y2 = hearing_aid(x, ratio, makeup)
    # the FFT mixes a block's samples at round-off level only
    scale = y.abs().max()
    assert torch.allclose(y[..., :cut], y2[..., :cut], rtol=0, atol=1e-13 * scale)
    assert (y[..., cut:] - y2[..., cut:]).abs().max() > 0.1 * scale


@pytest.fixture
def one_thread():
    """Single-threaded torch (many tiny calls: thread wake-ups would dominate on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_gradcheck(one_thread) -> None:
    """Analytic gradient w.r.t. x (crossover FFT + compressor recursion) against finite
    differences, on a loud short float64 signal where the compressor attacks and releases."""
    ha = HearingAid(block_size=4096)
    gen = torch.Generator().manual_seed(3)
    length = 300
    envelope = 0.1 + torch.linspace(0.0, 1.0, length) * torch.linspace(1.0, 0.0, length) * 4
    x = 0.3 * envelope * torch.randn(1, 2, length, generator=gen, dtype=torch.float64)
    x.requires_grad_(True)
    ratio = torch.tensor([[[2.0, 3.0, 1.5, 4.0, 6.0, 2.5], [1.0, 2.0, 2.0, 3.0, 5.0, 6.0]]])
    makeup = torch.tensor([[[10.0, 5.0, 0.0, 20.0, 30.0, 15.0], [0.0, 1.0, 2.0, 3.0, 4.0, 40.0]]])
    # the compressor must be active somewhere, or the test only checks the crossover
    bands = ha.crossover(x.detach())
    assert (bands.abs() > 10 ** (THRESHOLD_DB / 20)).float().mean() > 0.05
    assert torch.autograd.gradcheck(lambda v: ha(v, ratio, makeup), (x,), eps=1e-7, atol=1e-6)


def test_gradient_across_frames_and_chunks(signals, one_thread) -> None:
    """Backward over many frames and chunks: a directional derivative matches finite differences,
    and the gradient does not depend on the chunking."""
    x = torch.from_numpy(signals[-20.0][None, :, 20_000:40_000]).clone()  # loud part, 7 frames
    ratio, makeup = torch.full((1, 2, 6), 4.0), torch.full((1, 2, 6), 10.0)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    grads = []
    for ha in (HearingAid(block_size=4096, chunk_bytes=1), HearingAid(block_size=4096)):
        xg = x.clone().requires_grad_(True)
        (ha(xg, ratio, makeup) * weights).sum().backward()
        grads.append(xg.grad)
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-10 * grads[1].abs().max())
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    eps = 1e-7
    with torch.no_grad():
        plus = (ha(x + eps * direction, ratio, makeup) * weights).sum()
        minus = (ha(x - eps * direction, ratio, makeup) * weights).sum()
    numeric = float((plus - minus) / (2 * eps))
    analytic = float((grads[1] * direction).sum())
    assert abs(numeric - analytic) < 1e-6 * abs(analytic)
    # compression shapes this gradient: it is far from the linear (makeup-only) one
    xg = x.clone().requires_grad_(True)
    (ha(xg, torch.ones_like(ratio), makeup) * weights).sum().backward()
    assert (xg.grad - grads[1]).abs().max() > 0.02 * grads[1].abs().max()


def test_torch_fft_path_matches(signals) -> None:
    """The torch FFT path (what CUDA inputs use) equals the scipy CPU path, values and grads."""
    x = torch.from_numpy(signals[-20.0][None, :, :30_000]).clone()
    ratio, makeup = (torch.tensor(v)[None] for v in LISTENERS["L0001"])
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    outs, grads = [], []
    for cpu_fft in ("scipy", "torch"):
        ha = HearingAid(block_size=4096, chunk_bytes=1 << 18, cpu_fft=cpu_fft)
        xg = x.clone().requires_grad_(True)
        y = ha(xg, ratio, makeup)
        (y * weights).sum().backward()
        outs.append(y.detach())
        grads.append(xg.grad)
        with torch.no_grad():
            y32 = ha(x.float(), ratio, makeup)
        assert y32.dtype == torch.float32
        assert snr_db(y.detach().numpy(), y32.double().numpy()) > 100
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-12 * outs[0].abs().max())
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-10 * grads[0].abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(hearing_aid, signals) -> None:
    ratio, makeup = (torch.tensor(v)[None] for v in LISTENERS["L0001"])
    x = torch.from_numpy(signals[-20.0][None])
    ref = hearing_aid(x, ratio, makeup)
    ha_gpu = HearingAid().cuda()
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        y = ha_gpu(x.to("cuda", dtype), ratio.cuda(), makeup.cuda())
        assert y.device.type == "cuda" and y.dtype == dtype
        assert (y.double().cpu() - ref).abs().max() <= tol * ref.abs().max()
    xg = x[..., :20000].cuda().requires_grad_(True)
    ha_gpu(xg, ratio.cuda(), makeup.cuda()).square().sum().backward()
    xc = x[..., :20000].clone().requires_grad_(True)
    hearing_aid(xc, ratio, makeup).square().sum().backward()
    assert torch.allclose(xg.grad.cpu(), xc.grad, rtol=1e-8, atol=1e-10)


def test_input_validation(hearing_aid) -> None:
    x = torch.zeros(1, 2, 100)
    with pytest.raises(ValueError, match="batch, ears, samples"):
        hearing_aid(x[0], 1.0, 0.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        hearing_aid(x, torch.ones(3, 6), 0.0)
    with pytest.raises(ValueError, match="positive"):
        hearing_aid(x, 0.0, 0.0)
    with pytest.raises(TypeError):
        hearing_aid(x.half(), 1.0, 0.0)
    # exact zeros go through as pyclarity's eps (1e-12) times the makeup gain
    y = hearing_aid(x, 1.0, 20.0)
    assert torch.allclose(y, torch.full_like(y, 1e-12 * 6 * 10.0), rtol=1e-6, atol=0)


def test_module_holds_no_tensors(hearing_aid, signals) -> None:
    """No parameters or buffers: state dicts, meta-device construction (as transformers'
    loaders do) and casts of a parent model leave the hearing aid intact."""
    assert not list(hearing_aid.parameters()) and not list(hearing_aid.buffers())
    assert hearing_aid.state_dict() == {}
    with torch.device("meta"):
        meta_built = HearingAid()
    meta_built.to(torch.float16)
    x = torch.from_numpy(signals[-20.0][None, :, :20_000])
    ratio, makeup = (torch.tensor(v)[None] for v in LISTENERS["L0001"])
    assert torch.equal(meta_built(x, ratio, makeup), hearing_aid(x, ratio, makeup))


# ---------------------------------------------------------------------------------------------
# Remix maths against the recipe's own functions
# ---------------------------------------------------------------------------------------------


def _random_scene(rng: np.random.Generator, n_sources: int, seconds: float = 1.0):
    n = int(seconds * SAMPLE_RATE)
    stems = 0.1 * rng.standard_normal((n_sources, 2, n)) * rng.uniform(0.1, 1.0, (n_sources, 1, 1))
    stems[-1] = 0.0  # a silent stem: the recipe's loudness is -inf -> -80
    gains = rng.choice([-10.0, -6.0, -3.0, 0.0, 3.0, 6.0, 10.0], size=n_sources)
    return stems, gains


def test_remix_equals_recipe() -> None:
    rng = np.random.default_rng(0)
    stems, gains = _random_scene(rng, 4)
    ids = [f"source_{i + 1}" for i in range(len(gains))]
    gains_dict = dict(zip(ids, gains.tolist(), strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = recipe.apply_gains({k: s.T for k, s in zip(ids, stems, strict=True)},
                                    SAMPLE_RATE, gains_dict)  # fmt: skip
    ours = apply_gains(torch.from_numpy(stems), torch.from_numpy(gains)).numpy()
    for i, k in enumerate(ids):
        assert np.abs(theirs[k].T - ours[i]).max() < 1e-9
    assert np.abs(ours[0] - stems[0]).max() > 1e-3 or gains[0] == 0  # gains really applied
    mixed_theirs = recipe.adjust_level(recipe.remix_stems(theirs), gains_dict).T
    mixed_ours = reference_remix(torch.from_numpy(stems), torch.from_numpy(gains)).numpy()
    assert np.abs(mixed_theirs - mixed_ours).max() < 1e-9
    remixed = remix(torch.from_numpy(stems), torch.from_numpy(gains)).numpy()
    assert np.abs(recipe.remix_stems(theirs).T - remixed).max() < 1e-9
    level = adjust_level(torch.from_numpy(remixed), torch.from_numpy(gains)).numpy()
    assert np.abs(recipe.adjust_level(remixed, gains_dict) - level).max() < 1e-12
    assert not np.allclose(level, remixed)  # these gains do change the level


def test_masked_and_batched_remix() -> None:
    """Absent slots (mask False) hold garbage stems and gains that must not matter."""
    rng = np.random.default_rng(1)
    slots = 6
    masks = np.array([[1, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=bool)
    stems = 0.1 * rng.standard_normal((2, slots, 2, 4000))
    gains = rng.choice([-10.0, -6.0, -3.0, 0.0, 3.0, 6.0, 10.0], size=(2, slots))
    gains[~masks] = 40.0
    stems[~masks] = np.nan  # absent slots may hold anything
    out = reference_remix(torch.from_numpy(stems), torch.from_numpy(gains), torch.from_numpy(masks))
    assert out.shape == (2, 2, 4000)
    for b in range(2):
        present = masks[b]
        gains_dict = {f"source_{i}": g for i, g in enumerate(gains[b, present])}
        summed = (stems[b, present] * 10 ** (gains[b, present] / 20)[:, None, None]).sum(0)
        expected = recipe.adjust_level(summed, gains_dict)
        assert np.abs(out[b].numpy() - expected).max() < 1e-12
        unmasked = adjust_level(torch.from_numpy(summed), torch.from_numpy(gains[b])).numpy()
        assert np.abs(unmasked - expected).max() > 1e-3  # the mask really matters
    with pytest.raises(ValueError, match="at least one"):
        adjust_level(torch.zeros(2, 10), torch.zeros(3), torch.zeros(3, dtype=torch.bool))
