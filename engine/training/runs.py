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
RESUMABLE = ("steps", "checkpoint_minutes", "data", "sample_seeds", "log_every")
RUN_OPTIONS = ("resume", "stop_after", "no_progress")


class RunError(Exception):
    """The command cannot start; the message says why (exit status 2)."""


def build_parser(prog: str, description: str, config_cls) -> argparse.ArgumentParser:
    """--field for every field of the config dataclass, and the run options."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    for f in dataclasses.fields(config_cls):
        kind = str if f.default is dataclasses.MISSING else type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                       help="MNIST .npz (x_train/y_train) or folder of IDX files" if f.name == "data"
                       else f.metadata.get("help", f"default: {f.default}"))
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--stop-after", type=int, default=0, help="stop (with a checkpoint) after N steps in this run")
    p.add_argument("--no-progress", action="store_true")
    return p


def run_config(args: argparse.Namespace, config_cls, kind: str, require_data: bool = True):
    """(config, checkpoint metadata or None, checkpoint path): a new run from
    the options, or with --resume the saved run's config with the RESUMABLE
    options applied. `kind` ("train" or "distill") must match the checkpoint's."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in RUN_OPTIONS}
    ckpt = Path(given.get("out", config_cls.out)) / CHECKPOINT
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
