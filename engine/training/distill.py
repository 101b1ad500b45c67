"""Consistency distillation of the shipped model into a few-step student:
`python -m engine.training.distill --data mnist.npz --out runs/fast` (also
`digitgen distill`).

Method: latent-consistency distillation (Luo et al. 2023, LCM), done in pixel
space. The teacher is the diffusion model with classifier-free guidance at
its sampling default (two UNet rows per evaluation); the student starts from
the teacher's weights and learns, for one label and no guidance row, the
consistency function f(x_t, t) -> x_0 of the teacher's guided probability-
flow ODE. One training step, for a batch of real digits x_0 and labels y:

    t ~ grid {k-1, 2k-1, ..., T-1} (k = T / 50), s = max(t - k, 0)
    x_t  = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise
    x_s  = one DDIM step t -> s of the teacher, eps = uncond + w (cond - uncond)
    loss = lambda(t) * pseudo-Huber( f_student(x_t, t), f_target(x_s, s) )

with f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t) (exactly x at t = 0, so
the chain is anchored at the data end), the target network an EMA of the
student (decay 0.95, no gradient), and lambda(t) = min(1, sqrt(SNR(t))): the
student predicts epsilon like its teacher, so its x0_hat error at high noise
is the epsilon error times 1/sqrt(SNR) (x150 at t = 999 on the linear
schedule); the weight keeps every timestep's gradient on the epsilon scale.

Why this method (and not progressive distillation): one run gives a student
for 1, 2, 4 or 8 steps (the sampler picks any of them from the grid), each
training step costs one guided teacher evaluation rather than two (plus one
row for the target), and guidance distillation comes for free, since the
teacher's guided ODE is what the student learns. The student is a plain
epsilon-prediction UNet2DModel. It is saved to sample with diffusers'
TCDScheduler (its default eta, 0.3), which keeps part of the student's own
noise estimate at each jump instead of LCMScheduler's fresh noise only: on the
shipped student, at the same steps, its digits are closer to real ones
(weights/fast/README.md). LCMScheduler works on the same grid and config
(`scheduler="lcm"`).

Like `engine.training.train`: seeded per step, resumable exactly from safetensors
checkpoints (weights, EMA, target, Adam moments, step), tqdm bar, JSONL log,
sample grids, SIGINT/SIGTERM checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import paths
from ..io import WeightsError
from ..io.data import to_model_range
from ..models.runner import InferenceRunner
from ..models.unet_2d import UNet2DModel
from ..nn import runtime
from ..pipeline import DigitPipeline, SamplingDefaults
from ..schedulers import CONSISTENCY_CLASSES, NOISE_SCHEDULE_KEYS, SAMPLERS_FOR, DDPMScheduler
from ..schedulers.config import PREDICTION_TYPES
from ..schedulers.lcm import boundary_scalings, lcm_origin_timesteps
from . import runs
from .optim import EMA, AdamW, clip_grad_norm, lr_at
from .train import Trainer



@dataclass
class DistillConfig:
    data: str
    teacher: str = str(paths.WEIGHTS)
    init: str = field(default="", metadata={"help": "start from this student (a pipeline folder, e.g. "
                                                    "weights/fast) instead of the teacher's weights"})
    out: str = "runs/fast"
    batch_size: int = 64
    steps: int = 6000
    lr: float = 1e-4
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999          # the shipped student
    target_decay: float = 0.95        # the consistency target network
    guidance_scale: float = -1.0      # the teacher's guidance (< 0: its sampling default)
    original_inference_steps: int = 50
    timestep_scaling: float = 10.0
    huber_c: float = field(default=1e-3, metadata={"help": "pseudo-Huber constant of the loss, in RMS pixel "
                                                           "units (default: 1e-3)"})
    prediction_type: str = field(default="epsilon", metadata={
        "help": "what the student's UNet outputs: epsilon (like its teacher; default, the shipped 3-step "
                "student), v_prediction or sample. One step needs v_prediction or sample: an epsilon student's "
                "x0 estimate at t = T-1 multiplies its output error by 1/sqrt(abar) (~150)"})
    sampler: str = field(default="tcd", metadata={"help": "the exported student's default sampler: tcd "
                                                          "(default) or lcm"})
    seed: int = 0
    checkpoint_minutes: float = 10.0
    sample_seeds: int = 4
    sample_steps: int = 4
    sample_every: int = 0             # live grids are the trainer's (Trainer.live_sample samples a diffusion model)
    log_every: int = 10
    limit: int = 0


def student_scheduler_config(teacher_config: dict, cfg: DistillConfig) -> dict:
    """diffusers' TCDScheduler config (LCMScheduler's keys; saved as the
    class of the student's default sampler) on the teacher's noise schedule,
    with the student's own prediction type."""
    cls = "LCMScheduler" if cfg.sampler == "lcm" else "TCDScheduler"
    return {"_class_name": cls, **{k: teacher_config[k] for k in NOISE_SCHEDULE_KEYS if k in teacher_config},
            "prediction_type": cfg.prediction_type,
            "original_inference_steps": cfg.original_inference_steps, "timestep_scaling": cfg.timestep_scaling,
            "clip_sample": True, "clip_sample_range": 1.0, "set_alpha_to_one": True, "steps_offset": 0,
            "timestep_spacing": "leading"}


class Distiller(Trainer):
    """The trainer's loop, checkpoints and export, with a teacher, a target
    network and the consistency loss."""

    def __init__(self, cfg: DistillConfig, resuming: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.out)
        teacher = DigitPipeline.from_pretrained(cfg.teacher)
        if teacher.scheduler_class in CONSISTENCY_CLASSES:
            raise WeightsError(f"{cfg.teacher} holds a consistency model; the teacher must be a diffusion model")
        self.teacher = teacher.run_unet                   # eval, weights precomputed, sharded
        self.null_label = teacher.defaults.null_class_label
        self.guidance = teacher.defaults.guidance_scale if cfg.guidance_scale < 0 else cfg.guidance_scale
        self.scheduler = DDPMScheduler(teacher.sampler_configs["ddpm"])   # on the teacher's noise schedule
        if self.scheduler.config["prediction_type"] != "epsilon":
            raise WeightsError("the distiller needs an epsilon-prediction teacher")
        self.student_scheduler_config = student_scheduler_config(self.scheduler.config, cfg)
        if cfg.prediction_type not in PREDICTION_TYPES:
            raise WeightsError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                               f"got {cfg.prediction_type!r}")
        if cfg.sampler not in SAMPLERS_FOR["TCDScheduler"]:
            raise WeightsError(f"sampler must be one of {', '.join(SAMPLERS_FOR['TCDScheduler'])}, "
                               f"got {cfg.sampler!r}")
        self.student_defaults = SamplingDefaults(scheduler=cfg.sampler, num_inference_steps=cfg.sample_steps,
                                                 guidance_scale=1.0, null_class_label=self.null_label,
                                                 distilled_guidance_scale=self.guidance)
        # a resumed run's weights come from its checkpoint: --init's folder may be gone by then
        state = teacher.unet.state_dict() if resuming else self._initial_state(teacher.unet)
        self.model = UNet2DModel(teacher.unet.config)
        self.model.load_state_dict(state)
        self.model.train()
        self.target = UNet2DModel(teacher.unet.config)
        self.target.load_state_dict(state)
        self.run_target = InferenceRunner(self.target.eval())
        self.params = self.model.parameters()
        self.opt = AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.target_ema = EMA(self.model, cfg.target_decay)
        # the distillation grid and, per grid point, everything a step needs
        T = self.scheduler.config["num_train_timesteps"]
        self.grid = lcm_origin_timesteps(T, cfg.original_inference_steps)         # (N,) ascending
        self.grid_prev = np.maximum(self.grid - T // cfg.original_inference_steps, 0)
        self.step = 0
        self._perm_epoch, self._perm = -1, None
        self._stop_signal = None

    def _initial_state(self, teacher_unet: UNet2DModel) -> dict[str, np.ndarray]:
        """Where the student, its EMA and its target start: the teacher, or
        with `init` an earlier student of the same teacher (a second run
        continues the first with a fresh learning-rate schedule)."""
        if not self.cfg.init:
            return teacher_unet.state_dict()
        start = DigitPipeline.from_pretrained(self.cfg.init)
        if start.scheduler_class not in CONSISTENCY_CLASSES or start.unet.config != teacher_unet.config:
            raise WeightsError(f"--init {self.cfg.init}: not a consistency student with the teacher's UNet config")
        return start.unet.state_dict()

    # -- the loss -----------------------------------------------------------
    def _coefficients(self, t: np.ndarray):
        """sqrt(abar), sqrt(1 - abar), c_skip, c_out per sample, (B, 1, 1, 1) float32."""
        abar = self.scheduler.alphas_cumprod[t]
        c_skip, c_out = boundary_scalings(t, self.cfg.timestep_scaling)
        shape = (-1, 1, 1, 1)
        return (np.sqrt(abar).reshape(shape), np.sqrt(np.float32(1) - abar).reshape(shape),
                c_skip.reshape(shape), c_out.reshape(shape))

    def teacher_step(self, x_t: np.ndarray, t: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
        """x_s: one DDIM step t -> s (no clipping, no noise) of the guided teacher."""
        a_t, sig_t, _, _ = self._coefficients(t)
        a_s, sig_s, _, _ = self._coefficients(s)
        B = len(y)
        eps = self.teacher(np.concatenate([x_t, x_t]), np.concatenate([t, t]),
                           np.concatenate([y, np.full(B, self.null_label)]))
        cond, uncond = eps[:B], eps[B:]
        eps_w = uncond + np.float32(self.guidance) * (cond - uncond)
        x0_w = (x_t - sig_t * eps_w) / a_t
        return a_s * x0_w + sig_s * eps_w

    def x0_hat(self, out: np.ndarray, x_t: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x0 estimate, d x0 / d out) from a UNet output of the student's
        prediction type: the chain rule's factor is -sigma/alpha for
        epsilon (x150 at t = T-1), -sigma for v, 1 for sample."""
        a, sig, _, _ = self._coefficients(t)
        kind = self.cfg.prediction_type
        if kind == "epsilon":
            return (x_t - sig * out) / a, -sig / a
        if kind == "v_prediction":
            return a * x_t - sig * out, -sig
        return out, np.ones_like(a)

    def targets(self, x_t: np.ndarray, t: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
        """f_target(x_s, s) for x_s = teacher_step(x_t, t -> s); no gradient."""
        x_s = self.teacher_step(x_t, t, s, y)
        _, _, skip_s, out_s = self._coefficients(s)
        x0_s, _ = self.x0_hat(self.run_target(x_s, s, y), x_s, s)
        return skip_s * x_s + out_s * x0_s

    def consistency_loss(self, out: np.ndarray, x_t: np.ndarray, t: np.ndarray, target: np.ndarray):
        """(loss, d loss / d out) for the student's UNet output. An epsilon
        student's loss is weighted by min(1, sqrt(SNR(t))), which keeps every
        timestep's gradient on the epsilon scale; a v or sample student's
        x0 error needs no weight (its d x0 / d out is at most 1)."""
        a_t, sig_t, skip_t, out_t = self._coefficients(t)
        x0, d_x0 = self.x0_hat(out, x_t, t)
        pred = skip_t * x_t + out_t * x0
        diff = pred - target                                         # (B, C, H, W)
        B, D = len(diff), diff[0].size
        rms2 = np.mean(diff.reshape(B, -1).astype(np.float64) ** 2, axis=1)
        root = np.sqrt(rms2 + self.cfg.huber_c ** 2)
        weight = (np.minimum(1.0, (a_t / sig_t).reshape(-1).astype(np.float64))
                  if self.cfg.prediction_type == "epsilon" else np.ones(B))
        loss = float(np.mean(weight * (root - self.cfg.huber_c)))
        d_pred = diff * (weight / (B * D * root)).astype(np.float32).reshape(-1, 1, 1, 1)
        d_out = d_pred * (out_t * d_x0)
        return loss, d_out.astype(out.dtype, copy=False)

    def train_step(self, images: np.ndarray, labels: np.ndarray) -> dict:
        cfg = self.cfg
        rng = np.random.default_rng((cfg.seed, 1, self.step))
        idx = self.batch_indices(len(images))
        x0 = to_model_range(images[idx])
        y = labels[idx].astype(np.int64)
        n = rng.integers(0, len(self.grid), len(y))
        t, s = self.grid[n], self.grid_prev[n]
        noise = rng.standard_normal(x0.shape, dtype=np.float32)
        x_t = self.scheduler.add_noise(x0, noise, t)
        target = self.targets(x_t, t, s, y)

        self.model.zero_grad()
        out = self.model(x_t, t, y)
        loss, d_out = self.consistency_loss(out, x_t, t, target)
        self.model.backward(d_out)
        grad_norm = clip_grad_norm(self.params, cfg.grad_clip)
        self.opt.lr = lr_at(self.step, cfg.lr, cfg.warmup, cfg.steps)
        self.opt.step()
        self.ema.update(self.model)
        self.target_ema.update(self.model)
        self.target.load_state_dict(self.target_ema.state_dict())
        self.step += 1
        return {"loss": loss, "lr": self.opt.lr, "grad_norm": grad_norm}

    # -- checkpoints and export ------------------------------------------------
    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        arrays = super().checkpoint_arrays()
        arrays.update({"target/" + k: v for k, v in self.target_ema.state_dict().items()})
        return arrays

    def checkpoint_meta(self) -> dict[str, str]:
        meta = super().checkpoint_meta()
        meta.update({"kind": "distill", "target_updates": str(self.target_ema.updates)})
        return meta

    def load_checkpoint(self, path: Path) -> tuple[dict, dict]:
        arrays, meta = super().load_checkpoint(path)
        if meta.get("kind") != "distill":
            raise ValueError(f"{path} is a training checkpoint, not a distillation one")
        for k, v in arrays.items():
            if k.startswith("target/"):
                self.target_ema.shadow[k[7:]][...] = v
        self.target_ema.updates = int(meta["target_updates"])
        self.target.load_state_dict(self.target_ema.state_dict())
        return arrays, meta

    def sampling_setup(self) -> tuple[dict, SamplingDefaults]:
        return self.student_scheduler_config, self.student_defaults


# -- command line ---------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    return runs.build_parser("digitgen distill", __doc__.split("\n\n")[0], DistillConfig)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    runtime.configure()  # the engine's threads; nothing starts at import
    try:
        cfg, meta, ckpt = runs.run_config(args, DistillConfig, "distill")
        images, labels = runs.training_images(cfg)
        distiller = Distiller(cfg, resuming=meta is not None)
    except (runs.RunError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if meta is not None:
        distiller.load_checkpoint(ckpt)
    print(f"distilling {cfg.teacher} (guidance {distiller.guidance:g}) into a {cfg.sample_steps}-step student on "
          f"{len(images):,} images, step {distiller.step} -> {cfg.steps}, batch {cfg.batch_size}; "
          f"run folder {cfg.out}", file=sys.stderr)
    distiller.fit(images, labels, stop_after=args.stop_after, progress=not args.no_progress,
                  tensorboard=args.tensorboard)
    return 0


if __name__ == "__main__":
    sys.exit(main())
