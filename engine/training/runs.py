"""What the trainer and the distiller share on the command line: options
from a config dataclass, starting a run or resuming one from its
checkpoint, and loading the training images."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from ..io.data import DataError, load_mnist

CHECKPOINT = "checkpoint.safetensors"
# a resumed run keeps its settings; only these may change
RESUMABLE = ("steps", "checkpoint_minutes", "data", "sample_seeds", "sample_every", "log_every")
RUN_OPTIONS = ("resume", "stop_after", "no_progress", "preset", "watch", "tensorboard")
# what an option means, for the fields whose config does not say (a field's
# own metadata["help"] wins); the default is added from the dataclass
FIELD_HELP = {
    "out": "run folder: checkpoint, log.jsonl, samples/, the exported pipeline/",
    "model_config": "UNet config JSON (diffusers' UNet2DModel keys)",
    "teacher": "the diffusion model to distill (a pipeline folder)",
    "batch_size": "images a step", "steps": "total optimiser steps of the run", "lr": "peak learning rate (AdamW)",
    "warmup": "steps of linear learning-rate warm-up, then cosine decay", "weight_decay": "AdamW weight decay",
    "grad_clip": "clip the gradient's global norm to this", "ema_decay": "decay of the EMA weights that are exported",
    "target_decay": "decay of the consistency target network (an EMA of the student)",
    "label_dropout": "share of labels replaced by the null class (for classifier-free guidance)",
    "seed": "seeds every random draw (the run is reproducible from it)",
    "num_train_timesteps": "diffusion steps T of the noise schedule",
    "beta_schedule": "noise schedule: linear, scaled_linear or squaredcos_cap_v2",
    "checkpoint_minutes": "minutes between checkpoints (and a SIGINT/SIGTERM checkpoints too)",
    "sample_seeds": "checkpoint sample grid: each digit x this many seeds (0: none)",
    "sample_every": "a cheap live sample grid (one seed a digit, 10 steps) every N steps (0: none)",
    "sample_steps": "sampling steps of the student's sample grid",
    "log_every": "write a log.jsonl line every N steps",
    "limit": "train on the first N images only (0: all of them)",
    "guidance_scale": "the exported model's default guidance (distill: the teacher's guidance, < 0: its default)",
    "original_inference_steps": "the distillation grid: T / this many evenly spaced timesteps",
    "init": "start from this pipeline folder's UNet (e.g. weights: the shipped model), its config and weights, "
            "instead of random ones; the EMA starts there too",
    "snr_gamma": "min-SNR-gamma loss weighting (Hang et al. 2023): a sample's error times min(SNR_t, gamma) / SNR_t; "
                 "0: plain MSE (5 is the paper's choice)",
    "timestep_scaling": "LCM's boundary-condition scaling of t (c_skip, c_out)",
}


class RunError(Exception):
    """The command cannot start; the message says why (exit status 2)."""


def build_parser(prog: str, description: str, config_cls, presets: dict | None = None) -> argparse.ArgumentParser:
    """--field for every field of the config dataclass, the run options and,
    when there are presets, --preset (a new run's defaults; options win)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    for f in dataclasses.fields(config_cls):
        kind = str if f.default is dataclasses.MISSING else type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                       help="MNIST .npz (x_train/y_train) or folder of IDX files" if f.name == "data"
                       else f.metadata.get("help", _help(f)))
    if presets:
        p.add_argument("--preset", choices=sorted(presets), default=None,
                       help="; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
                                      for name, values in presets.items()))
        p.set_defaults(_presets=presets)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--stop-after", type=int, default=0, help="stop (with a checkpoint) after N steps in this run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the logged scalars for TensorBoard to OUT/tensorboard/ "
                        "(tensorboard --logdir OUT/tensorboard)")
    return p


def _help(f) -> str:
    text = FIELD_HELP.get(f.name)
    return f"{text} (default: {f.default})" if text else f"default: {f.default}"


def run_config(args: argparse.Namespace, config_cls, kind: str, require_data: bool = True):
    """(config, checkpoint metadata or None, checkpoint path): a new run from
    the options, or with --resume the saved run's config with the RESUMABLE
    options applied. `kind` ("train" or "distill") must match the checkpoint's."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in RUN_OPTIONS and not k.startswith("_")}
    ckpt = Path(given.get("out", config_cls.out)) / CHECKPOINT
    preset = getattr(args, "preset", None)
    if preset is not None:
        if args.resume:
            raise RunError("--preset starts a new run; a resumed run keeps its own settings")
        given = {**args._presets[preset], **given}
    if not args.resume:
        if ckpt.exists():
            raise RunError(f"{ckpt} exists; pass --resume to continue it or choose another --out")
        if require_data and not given.get("data"):
            raise RunError("--data is required")
        return config_cls(**given), None, ckpt
    if not ckpt.is_file():
        raise RunError(f"--resume: no checkpoint at {ckpt}")
    from safetensors import safe_open

    with safe_open(str(ckpt), "np") as f:
        meta = f.metadata() or {}
    if meta.get("kind", "train") != kind:
        raise RunError(f"{ckpt} is not a {'distillation' if kind == 'distill' else 'training'} checkpoint "
                       f"(resume it with digitgen {meta.get('kind', 'train')})")
    saved = json.loads(meta["train_config"])
    saved.update({k: given[k] for k in RESUMABLE if k in given})
    return config_cls(**saved), meta, ckpt


def training_images(cfg) -> tuple[np.ndarray, np.ndarray]:
    """The training split (its first cfg.limit images when set)."""
    try:
        images, labels = load_mnist(cfg.data, "train")
    except DataError as e:
        raise RunError(str(e)) from None
    return (images[:cfg.limit], labels[:cfg.limit]) if cfg.limit else (images, labels)
