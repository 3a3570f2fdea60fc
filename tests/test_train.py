"""Training loop: a tiny run, checkpoint/resume, and DDP with two processes (gloo)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.train import build_model, load_config, train, trainable_parameters, transferable

CONF = Path(__file__).resolve().parents[1] / "conf" / "train_tiny.yaml"


def _overrides(root: Path, run: Path, steps: int) -> list[str]:
    return [f"data.roots=[{root}]", f"run_dir={run}", f"optim.max_steps={steps}"]


def _fine_tune(root: Path, tmp_path: Path, first_steps: int, *extra: str) -> tuple[Path, Path]:
    """A first tiny run of ``first_steps``, then 3 steps fine-tuned from its best model with the
    ``extra`` overrides; returns both run folders."""
    first, tuned = tmp_path / "first", tmp_path / "tuned"
    train(load_config(CONF, _overrides(root, first, first_steps)), progress=False)
    train(load_config(CONF, [*_overrides(root, tuned, 3), f"train.init_from={first}/best",
                             *extra]), progress=False)
    return first, tuned


def test_train_checkpoint_and_resume(cad2_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(load_config(CONF, [*_overrides(cad2_root, run, 4), "train.valid_haaqi_pairs=1"]),
          progress=False)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "state.json"]
    assert (run / "best" / "model.safetensors").is_file()
    train(load_config(CONF, _overrides(cad2_root, run, 6)), progress=False)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 6
    with (run / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows if r["total"]] == [2, 4, 6]
    # Finite losses; the negative SI-SDR term may take the total below zero.
    assert all(math.isfinite(float(r["total"])) and float(r["l1"]) > 0 for r in rows
               if r["total"])
    assert any(r["valid_sisdr"] for r in rows)
    # The first run scored one validation pair with the recipe's HAAQI at each validation.
    haaqi = [float(r["valid_haaqi"]) for r in rows if r["valid_haaqi"]]
    assert len(haaqi) == 1 and 0.0 < haaqi[0] <= 1.0


def test_ddp_two_processes(cad2_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "tutti.cli", "train", "--config", str(CONF),
         *_overrides(cad2_root, run, 4), "train.threads=2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 4


def test_dataset_examples(cad2_root: Path) -> None:
    import numpy as np
    import torch

    from model.cad2 import SLOTS
    from model.hearing_aid import HearingAid
    from training.dataset import ExampleConfig, RebalanceDataset, fixed_examples

    config = ExampleConfig(seconds=0.5, hearing_aid_target=True, p_zero_gains=0.0,
                           slot_stems=True)
    examples = fixed_examples(RebalanceDataset([cad2_root], "valid", config), 6, seed=1)
    again = fixed_examples(RebalanceDataset([cad2_root], "valid", config), 6, seed=1)
    for ex, ex2 in zip(examples, again, strict=True):
        assert torch.equal(ex["target"], ex2["target"])  # deterministic for a seed
        assert ex["mixture"].shape == ex["target"].shape == (2, 22050)
        assert 2 <= ex["presence"].sum() <= 3 and ex["gains_db"].shape == (len(SLOTS),)
        assert bool((ex["gains_db"][ex["presence"] == 0] == 0).all())
        assert bool((ex["gains_db"] != 0).any())
        ha = HearingAid()(ex["target"][None], ex["ratio"][None], ex["makeup_db"][None])[0]
        assert torch.allclose(ex["target_hearing_aid"], ha)
        assert np.isfinite(ex["mixture"].numpy()).all()
        # Each present slot's stem, and nothing where a slot is absent; they sum to the mixture.
        assert ex["stems"].shape == (len(SLOTS), 2, 22050)
        heard = ex["stems"].abs().amax(dim=(1, 2)) > 0
        assert bool((heard <= (ex["presence"] > 0)).all()) and heard.sum() >= 2
        assert torch.allclose(ex["stems"].sum(0), ex["mixture"], atol=1e-6)


def test_pcm_cache_follows_a_replaced_track(cad2_root: Path, tmp_path: Path) -> None:
    """The decoded-track cache is keyed by the file, not its path alone: a track replaced
    under the same name (a re-render, renumbered voices) is decoded again."""
    import shutil

    import numpy as np
    import soundfile as sf

    from training.dataset import RebalanceDataset

    root = tmp_path / "root"
    shutil.copytree(cad2_root, root)
    track = next((root / "audio").rglob("*.flac"))
    first = RebalanceDataset([root], "valid", pcm_cache=tmp_path / "pcm")._read(track, 0, 4000)
    data, rate = sf.read(str(track), dtype="int16", always_2d=True)
    replacement = track.with_name("replacement.flac")
    sf.write(str(replacement), (data // 2).astype(np.int16), rate, subtype="PCM_16")
    replacement.replace(track)
    again = RebalanceDataset([root], "valid", pcm_cache=tmp_path / "pcm")._read(track, 0, 4000)
    assert np.abs(first).max() > 0
    np.testing.assert_allclose(again, first / 2, atol=1.5 / 32768 * np.abs(first).max() + 1e-4)


def test_init_from_another_layout() -> None:
    """Fine-tuning a new layout keeps the weights it shares with the saved model."""
    source = build_model(load_config(CONF))
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    wider = build_model(load_config(CONF, ["model.channels=[8,24]"]))
    weights = transferable(wider, source.state_dict(), "source")
    assert "encoder.0.down.conv.weight" in weights and "transformer.0.attn.qkv.weight" in weights
    assert not any(k.startswith("encoder.1.") for k in weights)  # 24 channels now
    wider.load_state_dict(weights, strict=False)
    assert torch.equal(wider.encoder[0].down.conv.weight, source.encoder[0].down.conv.weight)
    assert not torch.equal(wider.to_dim.weight[:, :16], source.to_dim.weight)
    # A longer analysis window: the synthesis window (same length, other values) stays the
    # model's own, so the filterbank still reconstructs exactly.
    longer = build_model(load_config(CONF, [f"model.fb_window={2 * source.config.fb_window}"]))
    window = longer.filterbank.synthesis_window.clone()
    assert not torch.equal(window, source.filterbank.synthesis_window)
    longer.load_state_dict(transferable(longer, source.state_dict(), "source"), strict=False)
    assert torch.equal(longer.filterbank.synthesis_window, window)
    with pytest.raises(ValueError, match="no place for"):
        transferable(wider, {"decoder.9.weight": torch.zeros(1)}, "source")
    with pytest.raises(ValueError, match="no weight has this model's shape"):
        transferable(wider, {"encoder.1.mix.weight": torch.zeros(1)}, "source")


def test_init_a_per_bin_slot_head_from_a_per_band_one() -> None:
    """A per-band slot head initialises a per-bin one: every slot's per-bin logits are its
    band logits interpolated by the source's band matrix, the rest is copied."""
    layout = ["model.slot_gains=true", "model.slot_spectral=16"]
    source = build_model(load_config(CONF, [*layout, "model.slot_bands=8"]))
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    per_bin = build_model(load_config(CONF, [*layout, "model.slot_bands=0"]))
    weights = transferable(per_bin, source.state_dict(), "source")
    assert "slot_band_to_bin" not in weights and "slot_head.weight" in weights
    per_bin.load_state_dict(weights, strict=False)
    assert torch.equal(per_bin.slot_mid.weight, source.slot_mid.weight)
    features = torch.randn(1, 16, 5)
    slots, bins = len(source.config.slots), source.slot_band_to_bin.shape[1]
    band_logits = source.slot_head(features).reshape(slots, 2, 8, 5)
    expected = torch.einsum("sefT,fk->sekT", band_logits, source.slot_band_to_bin)
    got = per_bin.slot_head(features).reshape(slots, 2, bins, 5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_train_only_the_named_parameters(cad2_root: Path, tmp_path: Path) -> None:
    """``train.trainable`` fine-tunes the named parts (here a new context EQ head and the
    transformer) and leaves every other weight exactly as it started."""
    from safetensors.torch import load_file

    first, tuned = _fine_tune(cad2_root, tmp_path, 2, "model.context_eq=true", "optim.lr=0.01",
                              "train.trainable=[context_head,transformer]")
    start = load_file(str(first / "best" / "model.safetensors"))
    end = load_file(str(tuned / "checkpoint" / "model.safetensors"))
    moved = {k for k in end if k not in start or not torch.equal(start[k], end[k])}
    assert moved and all(k.startswith(("context_head", "transformer")) for k in moved), moved
    assert any(k.startswith("context_head") for k in moved)
    with pytest.raises(ValueError, match=r"no parameter of this model starts with \['decoder9'\]"):
        trainable_parameters(build_model(load_config(CONF)), ["transformer", "decoder9"])


def test_frozen_parameters_stay_fixed(cad2_root: Path, tmp_path: Path) -> None:
    """``train.frozen`` keeps the named parts (here the slot gate's scale) exactly as they
    started while everything else trains."""
    from safetensors.torch import load_file

    first, tuned = _fine_tune(cad2_root, tmp_path, 2, "model.slot_gains=true",
                              "model.slot_gate=true", "loss.w_slot_weights=1.0", "optim.lr=0.01",
                              "train.frozen=[slot_scale,encoder.0.]")
    start = load_file(str(first / "best" / "model.safetensors"))
    end = load_file(str(tuned / "checkpoint" / "model.safetensors"))
    moved = {k for k in start if not torch.equal(start[k], end[k])}
    assert "transformer.0.attn.qkv.weight" in moved
    assert not any(k.startswith("encoder.0.") for k in moved), moved
    assert not end["slot_scale"].any()  # the new gate starts at 0 and stays there
    assert end["slot_head.weight"].abs().max() > 0  # its head trained on the slot KL
    with pytest.raises(ValueError, match=r"train.frozen: no parameter .* \['gate'\]"):
        trainable_parameters(build_model(load_config(CONF)), None, ["gate"])


def test_weight_average_update_and_swap() -> None:
    """The average moves by ``1 - decay`` towards the weights; ``applied`` lends it to the
    model and gives the model its own weights back."""
    from training.ema import WeightAverage

    layer = torch.nn.Linear(3, 2)
    start = layer.weight.detach().clone()
    average = WeightAverage(layer, 0.75)
    with torch.no_grad():
        layer.weight.add_(1.0)
    average.update(layer)
    expected = 0.75 * start + 0.25 * (start + 1.0)
    assert torch.allclose(average.state["weight"], expected)
    with average.applied(layer):
        assert torch.equal(layer.weight, average.state["weight"])
    assert torch.equal(layer.weight, start + 1.0)
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\), not 1.0"):
        WeightAverage(layer, 1.0)


def test_training_validates_saves_and_resumes_the_average(cad2_root: Path,
                                                          tmp_path: Path) -> None:
    """With ``train.ema_decay`` the validated and saved ``best`` is the weight average, the
    raw weights' loss is logged beside it, and a resumed run continues the average."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    extra = ["train.ema_decay=0.99", "optim.lr=0.01"]
    train(load_config(CONF, [*_overrides(cad2_root, run, 3), *extra]), progress=False)
    ckpt = run / "checkpoint"
    average3 = load_file(str(ckpt / "ema.safetensors"))
    weights3 = load_file(str(ckpt / "model.safetensors"))
    best = load_file(str(run / "best" / "model.safetensors"))
    assert all(torch.equal(best[k], v) for k, v in average3.items())
    assert not all(torch.equal(weights3[k], v) for k, v in average3.items())
    with (run / "log.csv").open() as fh:
        row = [r for r in csv.DictReader(fh) if r["valid_loss"]][-1]
    assert float(row["valid_loss"]) != float(row["valid_loss_raw"])
    train(load_config(CONF, [*_overrides(cad2_root, run, 6), *extra]), progress=False)
    average6 = load_file(str(ckpt / "ema.safetensors"))

    def distance(a: dict, b: dict) -> float:
        return sum(float((a[k] - b[k]).norm()) for k in average3)

    # At decay 0.99 three more steps move the average by about 3 % of its distance from the
    # weights: restarted from the step-3 weights it would sit near them instead.
    assert distance(average6, average3) < 0.2 * distance(average6, weights3)


def test_slot_gain_head_fine_tune(cad2_root: Path, tmp_path: Path) -> None:
    """A slot-gain head fine-tuned on its KL term from a plain model: ``init_skip`` keeps the
    old per-bin head at its (zero) init, and the new term is logged."""
    from safetensors.torch import load_file

    first, tuned = _fine_tune(cad2_root, tmp_path, 2, "model.slot_gains=true",
                              "loss.w_slot_weights=1.0", "train.init_skip=[head.]",
                              "train.trainable=[slot_head]", "optim.lr=0.01")
    start = load_file(str(first / "best" / "model.safetensors"))
    end = load_file(str(tuned / "checkpoint" / "model.safetensors"))
    assert start["head.weight"].abs().max() > 0 and not end["head.weight"].any()
    assert end["slot_head.weight"].abs().max() > 0
    assert all(torch.equal(start[k], end[k]) for k in start if not k.startswith("head."))
    with (tuned / "log.csv").open() as fh:
        kl = [float(r["slot_weights"]) for r in csv.DictReader(fh) if r["total"]]
    assert kl and all(0 < v < 3 for v in kl)


@pytest.mark.parametrize("term", ["slot_weights", "slot_gain"])
def test_validation_loss_includes_the_slot_term(cad2_root: Path, tmp_path: Path,
                                                term: str) -> None:
    """Trained on a slot term alone (the KL, or the request's log-gain error), the validation
    loss is that term, so the best model is the one whose slot weights fit best."""
    _, tuned = _fine_tune(cad2_root, tmp_path, 2, "model.slot_gains=true",
                          f"loss.w_{term}=1.0", "loss.w_mrstft=0", "loss.w_sum_diff=0",
                          "loss.w_l1=0", "loss.w_sisdr=0", "train.init_skip=[head.]",
                          "train.trainable=[slot_head]", "optim.lr=0.01")
    with (tuned / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    valid = [float(r["valid_loss"]) for r in rows if r["valid_loss"]]
    assert len(valid) == 2 and all(0 < v < 3 for v in valid) and valid[0] != valid[1]
    logged = [float(r[term]) for r in rows if r["total"]]
    assert logged and all(float(r[term]) == float(r["total"]) for r in rows if r["total"])


def test_fine_tune_logs_its_starting_point(cad2_root: Path, tmp_path: Path) -> None:
    """A run started with ``init_from`` validates the start as step 0; ``best`` is never worse."""
    from safetensors.torch import load_file

    first, tuned = _fine_tune(cad2_root, tmp_path, 3, "optim.lr=1.0")  # worse than the start
    with (tuned / "log.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["valid_loss"]]
    assert [int(r["step"]) for r in rows] == [0, 3]
    start, after = (float(r["valid_loss"]) for r in rows)
    best = json.loads((tuned / "checkpoint" / "state.json").read_text())["best_valid_loss"]
    assert best == pytest.approx(min(start, after))
    start_weights = load_file(str(first / "best" / "model.safetensors"))
    best_weights = load_file(str(tuned / "best" / "model.safetensors"))
    kept = all(torch.equal(start_weights[k], best_weights[k]) for k in start_weights)
    assert kept == (start <= after)


def test_select_best_by_haaqi(cad2_root: Path, tmp_path: Path) -> None:
    """With ``train.select_by=haaqi`` the run keeps the weights of its highest validation HAAQI."""
    from safetensors.torch import load_file

    first, tuned = _fine_tune(cad2_root, tmp_path, 2, "optim.lr=0.5", "train.valid_haaqi_pairs=1",
                              "train.select_by=haaqi")
    with (tuned / "log.csv").open() as fh:
        start, after = (float(r["valid_haaqi"]) for r in csv.DictReader(fh) if r["valid_haaqi"])
    assert start != after  # the big step changed the output
    state = json.loads((tuned / "checkpoint" / "state.json").read_text())
    assert state["best_valid_haaqi"] == pytest.approx(max(start, after))
    start_weights = load_file(str(first / "best" / "model.safetensors"))
    best_weights = load_file(str(tuned / "best" / "model.safetensors"))
    kept = all(torch.equal(start_weights[k], best_weights[k]) for k in start_weights)
    assert kept == (start >= after)


def test_select_by_needs_haaqi(cad2_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid_haaqi_pairs > 0"):
        train(load_config(CONF, [*_overrides(cad2_root, tmp_path / "run", 2),
                                 "train.select_by=haaqi"]), progress=False)
    with pytest.raises(ValueError, match="'loss' or 'haaqi'"):
        train(load_config(CONF, [*_overrides(cad2_root, tmp_path / "run", 2),
                                 "train.select_by=sisdr"]), progress=False)


def test_slot_balanced_sampling(cad2_root: Path) -> None:
    """``balance_slots`` 1 evens out how often each slot is drawn; 0 keeps uniform draws."""
    import numpy as np

    from training.dataset import ExampleConfig, RebalanceDataset, item_probabilities

    items = [["Violin_1", "Viola_1"]] * 6 + [["Sax_1", "Oboe"]] * 2
    assert item_probabilities(items, 0.0) is None
    p = item_probabilities(items, 1.0)
    assert p.sum() == pytest.approx(1.0)
    # Violin_1 (6 items) and Sax_1 (2 items) each come up with the same total probability.
    assert p[:6].sum() == pytest.approx(p[6:].sum())
    half = item_probabilities(items, 0.5)
    assert p[6] > half[6] > 1 / 8
    dataset = RebalanceDataset([cad2_root], "valid", ExampleConfig(seconds=0.25, balance_slots=1))
    assert dataset.item_p is not None and np.all(dataset.item_p > 0)
    ex = dataset.example(np.random.default_rng(0))
    assert ex["presence"].sum() >= 2


def test_doubled_voice_practice(tmp_path: Path) -> None:
    """``p_doubled`` 1 draws only items holding both voices of an instrument and keeps both
    voices when stems are dropped; 0 leaves draws as they were."""
    import numpy as np

    from model.cad2 import SLOTS
    from tests.conftest import make_root
    from training.dataset import ExampleConfig, RebalanceDataset, doubled_pairs

    assert doubled_pairs({"source_1": "Violin_1", "source_2": "Cello",
                          "source_3": "Violin_2"}) == [["source_1", "source_3"]]
    assert doubled_pairs({"source_1": "Violin_1", "source_2": "Viola_1"}) == []
    root = make_root(tmp_path / "root", seconds=0.5, ensembles={
        "violins": [("Violin", 440.0), ("Violin", 330.0), ("Cello", 131.0)],
        "winds": [("Flute", 587.0), ("Clarinet", 233.0)]})
    voices = [SLOTS.index("Violin_1"), SLOTS.index("Violin_2")]

    def presences(p_doubled: float) -> np.ndarray:
        config = ExampleConfig(seconds=0.25, p_subset=1.0, p_doubled=p_doubled)
        dataset = RebalanceDataset([root], "valid", config)
        rng = np.random.default_rng(0)
        return np.stack([dataset.example(rng)["presence"].numpy() for _ in range(40)])

    practice, plain = presences(1.0), presences(0.0)
    assert np.all(practice[:, voices] == 1)
    assert np.all(practice[:, SLOTS.index("Flute_1")] == 0)
    assert np.any(plain[:, voices].sum(1) == 1)  # a voice dropped ...
    assert np.any(plain[:, SLOTS.index("Flute_1")] == 1)  # ... or the other item drawn


def test_distillation_trains_towards_the_teacher(cad2_root: Path, tmp_path: Path) -> None:
    """With ``train.teacher`` the training target is the teacher's remix: a student that starts
    as the teacher and does not move (lr 0) has zero training error, while its validation,
    which stays on the true remix, does not."""
    _, tuned = _fine_tune(cad2_root, tmp_path, 2, f"train.teacher={tmp_path}/first/best",
                          "optim.lr=0")
    with (tuned / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    trained = [r for r in rows if r["total"]]
    assert trained and all(float(r["l1"]) == 0.0 and float(r["mrstft"]) < 1e-6 for r in trained)
    assert all(float(r["valid_loss"]) > 0.1 for r in rows if r["valid_loss"])
    # without the teacher the same run's training error is the model's error on the true remix
    _, plain = _fine_tune(cad2_root, tmp_path / "plain", 2, "optim.lr=0")
    with (plain / "log.csv").open() as fh:
        assert all(float(r["l1"]) > 0 for r in csv.DictReader(fh) if r["total"])


def test_distillation_target_mixes_teacher_and_truth(tmp_path: Path) -> None:
    from training.train import distillation_target, load_teacher

    cfg = load_config(CONF, ["train.teacher=" + str(tmp_path / "missing")])
    student = build_model(cfg)
    with pytest.raises(ValueError, match="not a model folder"):
        load_teacher(cfg, student)
    torch.manual_seed(0)
    for p in student.parameters():  # away from the identity start, so the output differs
        p.data.add_(0.05 * torch.randn_like(p))
    student.save_pretrained(tmp_path / "teacher", safe_serialization=True)
    cfg.train.teacher = str(tmp_path / "teacher")
    teacher = load_teacher(cfg, build_model(cfg))
    assert teacher is not None and not any(p.requires_grad for p in teacher.parameters())
    b = {"mixture": 0.01 * torch.randn(2, 2, 8192), "target": 0.01 * torch.randn(2, 2, 8192),
         "gains_db": torch.zeros(2, 12), "presence": torch.zeros(2, 12),
         "audiogram": torch.full((2, 2, 8), 30.0), "ratio": torch.full((2, 2, 6), 1.5),
         "makeup_db": torch.zeros(2, 2, 6)}
    b["gains_db"][:, 0], b["presence"][:, :2] = 6.0, 1.0
    inputs = [b[k] for k in ("mixture", "gains_db", "presence", "audiogram", "ratio",
                             "makeup_db")]
    out = student(*inputs, hearing_aid=False).detach()
    fresh = build_model(cfg)(*inputs, hearing_aid=False).detach()
    assert (out - fresh).abs().max() > 1e-4 * fresh.abs().max()  # not a fresh model's output
    assert torch.allclose(distillation_target(teacher, b, 1.0), out, atol=1e-6)
    assert torch.allclose(distillation_target(teacher, b, 0.25),
                          0.25 * out + 0.75 * b["target"], atol=1e-6)
    assert torch.equal(distillation_target(teacher, b, 0.0), b["target"])
    with pytest.raises(ValueError, match="teacher_mix"):
        distillation_target(teacher, b, 1.5)
