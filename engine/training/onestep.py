"""One-step distillation: a student that draws in ONE UNet evaluation the
digit its teacher draws from the same noise in many steps:
`python -m engine.training.onestep --out runs/onestep` (also `digitgen distill-onestep`).

Method: trajectory regression (Luhman & Luhman 2021's knowledge distillation,
on the lines DDIM's deterministic sampler walks). The teacher (the base
model, its default sampler: 20 DPM-Solver++ steps with guidance 1.5, an ODE
solver with no fresh noise) maps each seed's starting noise z to a digit
x0(z). Those pairs are made once (`--pairs`, in resumable chunks under
OUT/pairs/) from seeds no evaluation uses. The student, a UNet of the same
config parameterised to predict v (so its estimate of x0 at t = T-1 is its
output, not its output times 1/sqrt(abar) ~ 150 as an epsilon model's is),
learns

    f(z, T-1) = x0(z)                                   (one step, from pure noise)
    f(sqrt(abar_t) x0(z) + sqrt(1 - abar_t) z, t) = x0(z)  (any point of the grid)

with f = c_skip x_t + c_out x0_hat, the consistency boundary condition of
LCM/TCD. The second line is where a deterministic multistep sampler (TCD
with eta 0, whose x_s keeps the model's own noise estimate, here ~z) lands
after its first jump, so two steps refine one instead of leaving the
distribution the student was trained on. No teacher runs while training:
a step is one forward and backward of the student.

Exported for diffusers' LCMScheduler (prediction_type v_prediction): one
step is the student's x0 estimate from z, clipped; TCD samples the same
weights in more steps. Like the distiller: seeded per step, resumable from
safetensors checkpoints, JSONL log, sample grids.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import WeightsError, load_safetensors, save_safetensors
from ..nn import runtime
from ..pipeline import DigitPipeline
from . import runs
from .distill import DistillConfig, Distiller
from .optim import clip_grad_norm, lr_at

CHUNK = 64                 # pairs per file under OUT/pairs/: one teacher batch, written atomically
PAIR_SEEDS = 1 << 30       # pair i's seed: far from the seed sets the evaluation draws (0, 1000, ...)


@dataclass
class OneStepConfig(DistillConfig):
    data: str = field(default="", metadata={"help": "not used: the teacher's own samples are the data"})
    out: str = "runs/onestep"
    prediction_type: str = "v_prediction"
    sampler: str = "lcm"
    sample_steps: int = 1
    pairs: int = field(default=20000, metadata={"help": "teacher samples to learn from (default: 20000)"})
    top_fraction: float = field(default=0.5, metadata={"help": "of each batch, at t = T-1 from pure noise; "
                                                                "the rest at a random grid point (default: 0.5)"})
    steps: int = 4000


def chunk_path(out: Path, k: int) -> Path:
    return out / "pairs" / f"chunk_{k:05d}.safetensors"


def make_pairs(teacher: DigitPipeline, out: Path, n: int, log=print) -> None:
    """The teacher's digit for each of n seeds (labels 0..9 in turn), in
    chunks; chunks already written are kept, so an interrupted run resumes."""
    chunks = -(-n // CHUNK)
    for k in range(chunks):
        path = chunk_path(out, k)
        if path.exists():
            continue
        ids = np.arange(k * CHUNK, min(n, (k + 1) * CHUNK))
        labels, seeds = ids % teacher.num_labels, PAIR_SEEDS + ids
        x0 = teacher.generate(labels, seeds)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors({"seeds": seeds.astype(np.int64), "labels": labels.astype(np.int64),
                          "x0": x0.astype(np.float32)}, path)
        log(f"teacher pairs: chunk {k + 1}/{chunks} ({min(n, (k + 1) * CHUNK):,} of {n:,})")


def load_pairs(out: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seeds, labels, x0) of the first n pairs."""
    parts = [load_safetensors(chunk_path(out, k), "teacher pairs") for k in range(-(-n // CHUNK))]
    seeds, labels, x0 = (np.concatenate([p[key] for p in parts])[:n] for key in ("seeds", "labels", "x0"))
    return seeds, labels, x0


def start_noise(seeds: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """x_T for each seed, exactly as DigitPipeline.start draws it."""
    return np.concatenate([np.random.default_rng(int(s)).standard_normal((1, *shape), dtype=np.float32)
                           for s in seeds])


class OneStepDistiller(Distiller):
    """The distiller's student, optimiser, EMA, checkpoints and export; the
    trajectory-regression step instead of the consistency one."""

    def __init__(self, cfg: OneStepConfig, resuming: bool = False):
        if cfg.prediction_type == "epsilon":
            raise WeightsError("a one-step student needs prediction_type v_prediction or sample")
        super().__init__(cfg, resuming)
        self.teacher_pipe = DigitPipeline.from_pretrained(cfg.teacher)
        self.T = self.scheduler.config["num_train_timesteps"]
        self.pairs = None

    def prepare(self, log=print) -> None:
        make_pairs(self.teacher_pipe, self.out, self.cfg.pairs, log)
        self.pairs = load_pairs(self.out, self.cfg.pairs)

    def train_step(self, images=None, labels=None) -> dict:
        cfg = self.cfg
        rng = np.random.default_rng((cfg.seed, 1, self.step))
        seeds, all_labels, all_x0 = self.pairs
        idx = self.batch_indices(len(seeds))
        x0, y = all_x0[idx], all_labels[idx]
        z = start_noise(seeds[idx], x0.shape[1:])
        top = rng.random(len(y)) < cfg.top_fraction
        t = np.where(top, self.T - 1, self.grid[rng.integers(0, len(self.grid), len(y))])
        a, sig, _, _ = self._coefficients(t)
        x_t = np.where(top.reshape(-1, 1, 1, 1), z, a * x0 + sig * z)   # from pure noise, or on z's line

        self.model.zero_grad()
        out = self.model(x_t, t, y)
        loss, d_out = self.consistency_loss(out, x_t, t, x0)
        self.model.backward(d_out)
        grad_norm = clip_grad_norm(self.params, cfg.grad_clip)
        self.opt.lr = lr_at(self.step, cfg.lr, cfg.warmup, cfg.steps)
        self.opt.step()
        self.ema.update(self.model)
        self.step += 1
        return {"loss": loss, "lr": self.opt.lr, "grad_norm": grad_norm, "top_share": float(top.mean())}


def build_parser() -> argparse.ArgumentParser:
    return runs.build_parser("digitgen distill-onestep", __doc__.split("\n\n")[0], OneStepConfig)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    runtime.configure()
    if not args.resume and args.data is None:
        args.data = ""  # no data set: the teacher's samples are made here
    try:
        cfg, meta, ckpt = runs.run_config(args, OneStepConfig, "distill", require_data=False)
        distiller = OneStepDistiller(cfg, resuming=meta is not None)
    except (runs.RunError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if meta is not None:
        distiller.load_checkpoint(ckpt)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    distiller.prepare(say)
    say(f"one-step student of {cfg.teacher} on {cfg.pairs:,} teacher samples, step {distiller.step} -> {cfg.steps}, "
        f"batch {cfg.batch_size}; run folder {cfg.out}")
    distiller.fit(None, None, stop_after=args.stop_after, progress=not args.no_progress, tensorboard=args.tensorboard)
    return 0


if __name__ == "__main__":
    sys.exit(main())
