"""Training loop: on-the-fly examples, AdamW with warm-up + cosine decay, gradient clipping,
checkpoint/resume (safetensors + JSON), CSV log, periodic validation (loss, SI-SDR, and the
recipe's HAAQI on a few fixed validation pairs).

Single process, or several with ``torchrun`` (DDP, gloo on CPU, NCCL on GPU). Configs are YAML
files in ``conf/`` read with OmegaConf; a ``base:`` key names a file the config extends.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers.utils import logging as hf_logging

from model.cad2 import scenes_file
from model.tutti import TuttiConfig, TuttiModel, present_slots, requested_log_amplitudes
from training.dataset import ExampleConfig, RebalanceDataset, fixed_examples
from training.ema import WeightAverage
from training.losses import RemixLoss, si_sdr

hf_logging.disable_progress_bar()


def load_config(path: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """Read a YAML config (following ``base:`` chains) and apply ``key=value`` overrides."""
    path = Path(path)
    cfg = OmegaConf.load(path)
    if "base" in cfg:
        base = load_config(path.parent / str(cfg.pop("base")))
        cfg = OmegaConf.merge(base, cfg)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return cfg


def build_model(cfg: DictConfig) -> TuttiModel:
    """A fresh model from the config's ``model`` section."""
    return TuttiModel(TuttiConfig(**OmegaConf.to_container(cfg.model, resolve=True)))


def trainable_parameters(model: TuttiModel, prefixes: list[str] | None,
                         frozen: list[str] | None = None) -> list[nn.Parameter]:
    """The parameters to optimise: those whose name starts with one of ``prefixes`` (None: all)
    and with none of ``frozen`` (e.g. ``slot_scale``: a gate fixed at export stays fixed).

    The rest are frozen (``requires_grad`` off), so a fine-tune of a new head keeps the network
    it starts from. Raises when a prefix names no parameter.
    """
    named = dict(model.named_parameters())
    for option, given in (("trainable", prefixes), ("frozen", frozen)):
        unused = [p for p in given or () if not any(n.startswith(p) for n in named)]
        if unused:
            raise ValueError(f"train.{option}: no parameter of this model starts with {unused}")
    chosen = []
    for name, param in named.items():
        param.requires_grad_((not prefixes or name.startswith(tuple(prefixes)))
                             and not name.startswith(tuple(frozen or ())))
        if param.requires_grad:
            chosen.append(param)
    return chosen


def example_config(cfg: DictConfig) -> ExampleConfig:
    """The dataset's example settings from the config's ``data`` section."""
    fields = ExampleConfig.__dataclass_fields__
    chosen = {k: v for k, v in cfg.data.items() if k in fields}
    chosen["slot_stems"] = any(float(cfg.loss.get(k, 0.0)) > 0
                               for k in ("w_slot_weights", "w_slot_gain"))
    return ExampleConfig(**chosen)


def slot_weight_targets(model: TuttiModel, batch: dict[str, torch.Tensor],
                        internals: dict | None) -> tuple | None:
    """The ``slot_gains`` head's log-weights and the batch's stem powers on the same present
    slots, frames and bins (:func:`training.losses.slot_weight_loss`), with the present
    slots' requested log-amplitudes (nepers) and the model's ``slot_mean_order``
    (:func:`training.losses.slot_gain_loss`); None without them."""
    if internals is None or "slot_log_weights" not in internals or "stems" not in batch:
        return None
    index, _ = present_slots(batch["presence"])
    rows = torch.arange(index.shape[0], device=index.device)[:, None]
    stems = batch["stems"][rows, index]  # (B, K, 2, T)
    with torch.no_grad():
        power = model.slot_power(stems)
    log_amp = requested_log_amplitudes(batch["gains_db"], batch["presence"], index)
    return internals["slot_log_weights"], power, log_amp, model.config.slot_mean_order


def load_teacher(cfg: DictConfig, student: TuttiModel) -> TuttiModel | None:
    """The frozen model named by ``train.teacher`` (a model folder), or None.

    Raises when it does not exist or does not share the student's sample rate and slots."""
    folder = cfg.train.get("teacher")
    if not folder:
        return None
    folder = Path(os.path.expanduser(str(folder)))
    if not (folder / "config.json").is_file():
        raise ValueError(f"train.teacher: {folder} is not a model folder (no config.json)")
    teacher = TuttiModel.from_pretrained(folder).eval()
    for field in ("sample_rate", "slots"):
        theirs, ours = getattr(teacher.config, field), getattr(student.config, field)
        if theirs != ours:  # TuttiConfig keeps an int and a list
            raise ValueError(f"train.teacher: {folder} has {field} {theirs}, the model {ours}")
    teacher.requires_grad_(False)
    return teacher


def distillation_target(teacher: TuttiModel, batch: dict[str, torch.Tensor],
                        mix: float) -> torch.Tensor:
    """``mix`` × the teacher's remix + (1 − mix) × the true remix ``batch["target"]``,
    ``(B, 2, T)`` before the hearing aid (distillation: a causal student learns from the
    non-causal model's output, a target its time-frequency gains can reach)."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"train.teacher_mix must lie in [0, 1], got {mix}")
    with torch.no_grad():
        out = teacher(batch["mixture"], batch["gains_db"], batch["presence"], batch["audiogram"],
                      batch["ratio"], batch["makeup_db"], hearing_aid=False)
    return mix * out + (1.0 - mix) * batch["target"]


def lr_at(step: int, cfg: DictConfig) -> float:
    """Linear warm-up then cosine decay to 5% of the peak learning rate."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = min(1.0, (step - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps))
    return o.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _batch(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


def save_checkpoint(folder: Path, model: TuttiModel, optimizer: torch.optim.Optimizer,
                    state: dict, ema: WeightAverage | None = None) -> None:
    """Write model (safetensors + config.json), optimizer tensors, the weight average
    (``ema.safetensors``, when kept) and loop state; atomic swap."""
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.state.items()}, str(tmp / "ema.safetensors"))
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {"param_groups": opt["param_groups"], "scalars": scalars, **state}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def load_checkpoint(folder: Path, model: TuttiModel, optimizer: torch.optim.Optimizer,
                    ema: WeightAverage | None = None) -> dict:
    """Restore model, optimizer and weight average from :func:`save_checkpoint`; returns the
    loop state. A checkpoint written without an average starts it from the weights."""
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    if ema is not None:
        saved = folder / "ema.safetensors"
        ema.load(load_file(str(saved)) if saved.is_file()
                 else {k: v for k, v in model.state_dict().items() if k in ema.state})
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state: dict = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta.pop("scalars").items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


def spread_slot_bands(model: TuttiModel,
                      weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` of a saved model whose slot head is per band (it holds ``slot_band_to_bin``,
    ``(bands, bins)``) with that head spread to the bins, for a ``model`` with per-bin slot
    weights on as many bins: each slot's per-bin logits are its band logits interpolated by the
    band matrix, so the weights start where the bands were. Other weights pass unchanged."""
    bands = weights.get("slot_band_to_bin")
    cfg = model.config
    if bands is None or not cfg.slot_gains or cfg.slot_bands or "slot_head.weight" not in weights:
        return weights
    slots, (n_bands, bins) = len(cfg.slots), bands.shape
    weight, bias = weights["slot_head.weight"], weights["slot_head.bias"]
    if (model.slot_head.weight.shape[0], weight.shape[0]) != (slots * 2 * bins,
                                                              slots * 2 * n_bands):
        return weights  # another bin count: left to the shape check
    channels = weight.shape[1]
    spread = {k: v for k, v in weights.items() if k != "slot_band_to_bin"}
    spread["slot_head.weight"] = torch.einsum(
        "sefc,fk->sekc", weight[..., 0].reshape(slots, 2, n_bands, channels), bands
    ).reshape(-1, channels, 1)
    spread["slot_head.bias"] = torch.einsum(
        "sef,fk->sek", bias.reshape(slots, 2, n_bands), bands).reshape(-1)
    return spread


def transferable(model: TuttiModel, weights: dict[str, torch.Tensor],
                 source: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``weights`` (a saved model) that fit ``model``: same name and shape.

    Fine-tuning a different configuration keeps what it shares (e.g. the encoder's first levels
    and the transformer); the rest keeps its initialisation. Buffers (the filterbank's windows,
    band matrices) are computed from the model's own config and never taken: a window of the
    same length may differ (a 128-sample synthesis window depends on the analysis window).
    A per-band slot head (``slot_bands``) becomes a per-bin one for a model without slot bands
    (:func:`spread_slot_bands`). Raises on names the model lacks (a different network, not a
    different size) or when nothing fits.
    """
    weights = spread_slot_bands(model, weights)
    own = model.state_dict()
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise ValueError(f"{source}: weights this model has no place for: {unknown[:5]}")
    buffers = {name for name, _ in model.named_buffers()}
    fits = {k: v for k, v in weights.items() if k not in buffers and own[k].shape == v.shape}
    if not fits:
        raise ValueError(f"{source}: no weight has this model's shape")
    skipped = sorted(k for k in weights if k not in fits and k not in buffers)
    if skipped:
        print(f"init_from {source}: {len(fits)} tensors loaded, {len(skipped)} of another shape "
              f"keep their init ({', '.join(skipped[:4])}, ...)")
    return fits


def validate(model: TuttiModel, loss_fn: RemixLoss, examples: list[dict],
             batch_size: int) -> dict[str, float]:
    """Validation loss, median SI-SDR (dB) of model and noop (the unbalanced mixture), and the
    mean SI-SDR improvement over noop on examples the gains change (noop below 30 dB; zero
    gains, or gains on instruments silent in the excerpt, leave a near-infinite noop SI-SDR
    that would swamp a mean). With ``loss.w_slot_weights`` / ``loss.w_slot_gain`` the loss
    includes the slot KL / log-gain error (the examples then hold their stems)."""
    model.eval()
    device = next(model.parameters()).device
    losses, sdr, sdr_noop, changed = [], [], [], []
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            b = {k: v.to(device) for k, v in _batch(examples[i : i + batch_size]).items()}
            internals: dict | None = {} if loss_fn.wants_slots else None
            est = model(b["mixture"], b["gains_db"], b["presence"], b["audiogram"], b["ratio"],
                        b["makeup_db"], hearing_aid=False, internals=internals)
            slot = slot_weight_targets(model, b, internals)
            losses.append(loss_fn(est, b["target"], None, slot)["total"].item())
            sdr += si_sdr(est, b["target"]).tolist()
            sdr_noop += si_sdr(b["mixture"], b["target"]).tolist()
            changed += (b["gains_db"].abs().amax(dim=1) > 0).tolist()
    model.train()
    gain = [a - n for a, n, c in zip(sdr, sdr_noop, changed, strict=True) if c and n < 30.0]
    return {"valid_loss": float(np.mean(losses)), "valid_sisdr": float(np.median(sdr)),
            "valid_sisdr_noop": float(np.median(sdr_noop)),
            "valid_sisdri": float(np.mean(gain)) if gain else float("nan")}


def validate_haaqi(model: TuttiModel, root: str | Path, split: str, pairs: int) -> float:
    """Mean HAAQI (the recipe's) of ``model`` on the first ``pairs`` scene x listener pairs of
    ``split`` of the CAD2 root ``root``: whole excerpts, hearing aid included."""
    import tempfile

    from model.batch import ModelSystem, run_batch
    from training.evaluate import evaluate

    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="tutti-valid-") as tmp:
            run_batch(root, split, tmp, ModelSystem(model), limit=pairs, desc="valid remix")
            mean, _ = evaluate(root, split, tmp, limit=pairs)
    finally:
        model.train(was_training)
    return mean


def _haaqi_root(roots: list[str], split: str) -> str | None:
    """The first root that has ``split`` (validation HAAQI reads it)."""
    return next((r for r in roots if scenes_file(r, split).is_file()), None)


def validate_and_keep_best(model: TuttiModel, loss_fn: RemixLoss, valid: list, cfg: DictConfig,
                           roots: list[str], state: dict, run_dir: Path,
                           ema: WeightAverage | None = None) -> dict[str, float]:
    """Validate (loss, SI-SDR, optional HAAQI) and save ``run_dir/best`` when the score chosen by
    ``train.select_by`` improves: ``loss`` (lowest validation loss) or ``haaqi`` (highest
    validation HAAQI). With a weight average, the average is what is scored and saved, and
    ``valid_loss_raw`` is the last step's own weights' loss."""
    if ema is None:
        return _validate_and_keep_best(model, loss_fn, valid, cfg, roots, state, run_dir)
    raw = validate(model, loss_fn, valid, int(cfg.optim.batch_size))["valid_loss"]
    with ema.applied(model):
        row = _validate_and_keep_best(model, loss_fn, valid, cfg, roots, state, run_dir)
    return {**row, "valid_loss_raw": raw}


def _validate_and_keep_best(model: TuttiModel, loss_fn: RemixLoss, valid: list,
                            cfg: DictConfig, roots: list[str], state: dict,
                            run_dir: Path) -> dict[str, float]:
    row = validate(model, loss_fn, valid, int(cfg.optim.batch_size))
    haaqi_pairs = int(cfg.train.get("valid_haaqi_pairs", 0))
    haaqi_root = _haaqi_root(roots, cfg.data.valid_split) if haaqi_pairs else None
    if haaqi_root is not None:
        row["valid_haaqi"] = validate_haaqi(model, haaqi_root, cfg.data.valid_split, haaqi_pairs)
    by_haaqi = cfg.train.get("select_by", "loss") == "haaqi"  # checked by select_by at start
    better = (row["valid_haaqi"] > state.get("best_valid_haaqi", -math.inf) if by_haaqi
              else row["valid_loss"] < state["best_valid_loss"])
    state["best_valid_loss"] = min(row["valid_loss"], state["best_valid_loss"])
    if "valid_haaqi" in row:
        best_haaqi = state.get("best_valid_haaqi", -math.inf)
        state["best_valid_haaqi"] = max(row["valid_haaqi"], best_haaqi)
    if better:
        model.save_pretrained(run_dir / "best", safe_serialization=True)
    return row


def select_by(cfg: DictConfig, roots: list[str]) -> str:
    """``train.select_by`` checked: ``loss``, or ``haaqi`` when validation HAAQI can be scored."""
    choice = str(cfg.train.get("select_by", "loss"))
    if choice not in ("loss", "haaqi"):
        raise ValueError(f"train.select_by must be 'loss' or 'haaqi', not {choice!r}")
    if choice == "haaqi" and (int(cfg.train.get("valid_haaqi_pairs", 0)) <= 0
                              or _haaqi_root(roots, cfg.data.valid_split) is None):
        raise ValueError("train.select_by=haaqi needs train.valid_haaqi_pairs > 0 and a root in "
                         f"data.roots with a {cfg.data.valid_split!r} split")
    return choice


def train(cfg: DictConfig, progress: bool = True) -> Path:
    """Train (resuming from ``run_dir/checkpoint`` if present); returns the run folder."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                          if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, int(cfg.train.threads) // world))
    torch.manual_seed(int(cfg.train.seed))

    run_dir = Path(os.path.expanduser(str(cfg.run_dir)))
    ckpt = run_dir / "checkpoint"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))

    model = build_model(cfg).to(device)
    loss_fn = RemixLoss(**OmegaConf.to_container(cfg.loss, resolve=True)).to(device)
    params = trainable_parameters(model, cfg.train.get("trainable"), cfg.train.get("frozen"))
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    state = {"step": 0, "best_valid_loss": float("inf"), "examples": 0}
    decay = float(cfg.train.get("ema_decay", 0.0))
    # the weight average lives on rank 0, which validates and saves
    ema = WeightAverage(model, decay) if decay > 0 and rank == 0 else None
    if (ckpt / "state.json").is_file():
        state.update(load_checkpoint(ckpt, model, optimizer, ema))
    elif cfg.train.get("init_from"):  # fine-tune: start from a saved model's weights
        init = Path(os.path.expanduser(str(cfg.train.init_from)))
        weights = load_file(str(init / "model.safetensors"))
        skip = tuple(cfg.train.get("init_skip") or ())
        weights = {k: v for k, v in weights.items() if not (skip and k.startswith(skip))}
        model.load_state_dict(transferable(model, weights, init), strict=False)
        if ema is not None:
            ema.load({k: v for k, v in model.state_dict().items() if k in ema.state})
    net = DistributedDataParallel(model) if distributed else model
    teacher = load_teacher(cfg, model)
    if teacher is not None:
        teacher.to(device)

    roots = [os.path.expanduser(str(r)) for r in cfg.data.roots]
    select_by(cfg, roots)  # a bad choice fails before any training
    ex_cfg = example_config(cfg)
    cache = cfg.data.get("pcm_cache")
    train_set = RebalanceDataset(roots, cfg.data.train_split, ex_cfg,
                                 seed=int(cfg.train.seed) * 1000 + state["step"], pcm_cache=cache)
    loader = DataLoader(train_set, batch_size=int(cfg.optim.batch_size) // world,
                        num_workers=int(cfg.data.workers),
                        persistent_workers=int(cfg.data.workers) > 0)
    valid = None
    if rank == 0 and int(cfg.train.valid_examples) > 0:
        # validation draws items uniformly, whatever the training balance
        valid_set = RebalanceDataset(roots, cfg.data.valid_split,
                                     dataclasses.replace(ex_cfg, balance_slots=0.0, p_doubled=0.0),
                                     seed=12345,
                                     pcm_cache=cache)
        valid = fixed_examples(valid_set, int(cfg.train.valid_examples), seed=12345)

    log_path = run_dir / "log.csv"
    start_time = time.time()
    if valid is not None and state["step"] == 0 and cfg.train.get("init_from"):
        # the starting point of a fine-tune: logged as step 0, and "best" is never worse
        row = validate_and_keep_best(model, loss_fn, valid, cfg, roots, state, run_dir, ema)
        _log(log_path, {"step": 0, "lr": 0.0, "minutes": 0.0, **row})
    max_minutes = float(cfg.train.max_minutes)
    bar = tqdm(total=int(cfg.optim.max_steps), initial=state["step"], disable=rank != 0 or
               not progress, desc="train", unit="step")
    running: dict[str, float] = {}
    model.train()
    for batch in loader:
        step = state["step"]
        if step >= int(cfg.optim.max_steps):
            break
        if max_minutes and (time.time() - start_time) / 60 > max_minutes:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        b = {k: v.to(device) for k, v in batch.items()}
        internals: dict | None = {} if loss_fn.wants_slots else None
        est = net(b["mixture"], b["gains_db"], b["presence"], b["audiogram"], b["ratio"],
                  b["makeup_db"], hearing_aid=False, internals=internals)

        def hearing_aid(signal, b=b):
            return model.hearing_aid(signal, b["ratio"], b["makeup_db"])

        target = b["target"] if teacher is None else distillation_target(
            teacher, b, float(cfg.train.teacher_mix))
        terms = loss_fn(est, target, hearing_aid, slot_weight_targets(model, b, internals))
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        state["step"] = step = step + 1
        state["examples"] += int(cfg.optim.batch_size)
        for k, v in terms.items():
            running[k] = running.get(k, 0.0) + v.item()
        running["grad_norm"] = running.get("grad_norm", 0.0) + float(grad_norm)
        bar.update()
        if rank != 0:
            continue
        row: dict[str, float] = {}
        if step % int(cfg.train.log_every) == 0:
            row = {k: v / int(cfg.train.log_every) for k, v in running.items()}
            running = {}
            bar.set_postfix(loss=f"{row['total']:.3f}")
        if valid is not None and step % int(cfg.train.valid_every) == 0:
            row.update(validate_and_keep_best(model, loss_fn, valid, cfg, roots, state, run_dir,
                                              ema))
        if row:
            _log(log_path, {"step": step, "lr": lr_at(step - 1, cfg),
                            "minutes": (time.time() - start_time) / 60, **row})
        if step % int(cfg.train.checkpoint_every) == 0:
            save_checkpoint(ckpt, model, optimizer, state, ema)
    if rank == 0:
        save_checkpoint(ckpt, model, optimizer, state, ema)
        if valid is not None and not (run_dir / "best").exists():
            with ema.applied(model) if ema is not None else contextlib.nullcontext():
                model.save_pretrained(run_dir / "best", safe_serialization=True)
    bar.close()
    if distributed:
        dist.barrier()
    return run_dir


LOG_FIELDS = ("step", "lr", "minutes", "total", "mrstft", "sum_diff", "l1", "neg_sisdr",
              "compressed", "hearing_aid", "long_term", "slot_weights",
              "grad_norm", "valid_loss", "valid_sisdr", "valid_sisdr_noop", "valid_sisdri",
              "valid_haaqi", "envelope", "valid_loss_raw", "slot_gain")


def _log(path: Path, row: dict) -> None:
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
