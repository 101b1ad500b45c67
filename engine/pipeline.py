"""Class-conditional sampling with classifier-free guidance.

A `Trajectory` is one image's denoising run: its own label, scheduler state,
seeded generator and x_t. `DigitPipeline.step(trajectories)` advances any set
of trajectories by one step with ONE batched UNet forward (conditional and
unconditional rows together), whatever their timesteps, schedulers or
lengths. The CLI's generator below, the evaluation and the service's
continuous-batching worker are all loops around that one method, so a seeded
image is the same alone or batched with others.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .io import WeightsError, read_json
from .models.runner import InferenceRunner
from .models.unet_2d import UNet2DModel
from .schedulers import SAMPLERS_FOR, make_scheduler
from .schedulers import SCHEDULERS as SCHEDULER_CLASSES

SCHEDULERS = ("ddpm", "ddim", "dpm")  # the samplers of a diffusion model
# Keys every scheduler shares with the training DDPM config: the noise
# schedule the model was trained on.
_SHARED_SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")


# DDIM clips x̂0 to [-1, 1] (clip_sample, diffusers' default) but by default
# keeps stepping with the unclipped noise estimate; at high noise levels an
# epsilon model's x̂0 lies far outside [-1, 1], and the mismatch bends the
# deterministic trajectory (measured on the shipped weights at 20 steps: 72%
# of digits classified as asked, 100% with this option). Use the noise
# implied by the clipped x̂0, as diffusers' use_clipped_model_output does.
_STEP_OPTIONS = {"ddim": {"use_clipped_model_output": True}}


@dataclass
class SamplingDefaults:
    scheduler: str = "dpm"
    num_inference_steps: int = 20
    guidance_scale: float = 2.0
    null_class_label: int = 10


@dataclass
class StepResult:
    step: int              # 1-based index of the step just taken
    total: int
    timestep: int          # the timestep the model saw on this step
    sample: np.ndarray     # x_{t-1}: (C, H, W), the new noisy image
    pred_original: np.ndarray  # the model's current estimate of x_0, (C, H, W)

    @property
    def done(self) -> bool:
        return self.step == self.total


@dataclass
class Trajectory:
    label: int
    seed: int
    steps: int
    scheduler_name: str
    guidance_scale: float
    scheduler: object
    generator: np.random.Generator
    sample: np.ndarray                       # current x_t, (1, C, H, W)
    index: int = 0                           # steps taken so far
    last: StepResult | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.index >= self.steps

    @property
    def timestep(self) -> int:
        return int(self.scheduler.timesteps[self.index])

    @property
    def rows(self) -> int:
        """UNet rows this trajectory needs per step (2 with guidance)."""
        return 1 if self.guidance_scale == 1.0 else 2


class DigitPipeline:
    def __init__(self, unet: UNet2DModel, scheduler_config: dict, defaults: SamplingDefaults | None = None):
        self.unet = unet.eval().precompute_for_inference()  # inference only: derived weights computed once
        self.run_unet = InferenceRunner(self.unet)           # large batches in per-thread shards
        self.scheduler_config = dict(scheduler_config)
        self.scheduler_class = self.scheduler_config.get("_class_name", "DDPMScheduler")
        if self.scheduler_class not in SAMPLERS_FOR:
            raise WeightsError(f"scheduler class {self.scheduler_class!r} is not supported; "
                               f"choose one of {sorted(SAMPLERS_FOR)}")
        self.samplers = SAMPLERS_FOR[self.scheduler_class]
        self.defaults = defaults or SamplingDefaults()
        n_classes = unet.config.num_class_embeds
        if not n_classes or not 0 <= self.defaults.null_class_label < n_classes:
            raise WeightsError(f"null_class_label {self.defaults.null_class_label} is not a class of the model "
                               f"(num_class_embeds={n_classes})")
        self.num_labels = self.defaults.null_class_label  # labels 0..null-1 are digits
        c = unet.config
        size = c.sample_size if isinstance(c.sample_size, int) else 28
        self.sample_shape = (c.in_channels, size, size)

    # -- loading -----------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "DigitPipeline":
        """folder/unet (diffusers layout), folder/scheduler/scheduler_config.json
        and folder/model_index.json (with our sampling defaults)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise WeightsError(f"weights folder not found: {folder}")
        unet = UNet2DModel.from_pretrained(folder / "unet")
        sched = read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config")
        index = read_json(folder / "model_index.json", "model index")
        try:
            defaults = SamplingDefaults(**index.get("digitgen", {}))
        except TypeError as e:
            raise WeightsError(f"{folder / 'model_index.json'}: bad 'digitgen' section: {e}") from None
        try:
            own = SAMPLERS_FOR.get(sched.get("_class_name", "DDPMScheduler"), SCHEDULERS)[0]
            make_scheduler(own, **_shared(sched) if own in SCHEDULERS else sched)
        except ValueError as e:
            raise WeightsError(f"scheduler config {folder / 'scheduler'} is invalid: {e}") from None
        return cls(unet, sched, defaults)

    def save_pretrained(self, folder: str | Path, unet_state: dict | None = None) -> None:
        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet", state=unet_state)
        (folder / "scheduler").mkdir(parents=True, exist_ok=True)
        sched = {"_class_name": self.scheduler_class, **{k: v for k, v in self.scheduler_config.items()
                                                         if not k.startswith("_")}}
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2) + "\n")
        index = {"_class_name": "DigitPipeline", "unet": ["diffusers", "UNet2DModel"],
                 "scheduler": ["diffusers", self.scheduler_class], "digitgen": vars(self.defaults)}
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    # -- trajectories --------------------------------------------------------
    def trajectory(self, label: int, seed: int, steps: int | None = None, scheduler: str | None = None,
                   guidance_scale: float | None = None) -> Trajectory:
        steps = self.defaults.num_inference_steps if steps is None else int(steps)
        name = scheduler or self.defaults.scheduler
        g = self.defaults.guidance_scale if guidance_scale is None else float(guidance_scale)
        if not 0 <= label < self.num_labels:
            raise ValueError(f"label must be in 0..{self.num_labels - 1}, got {label}")
        if name not in self.samplers:
            raise ValueError(f"scheduler must be one of {self.samplers}, got {name!r}")
        # the model's own sampler takes its whole saved config; a sibling only the noise schedule
        own = SCHEDULER_CLASSES[name]._class_name == self.scheduler_class
        sched = make_scheduler(name, **(self.scheduler_config if own else _shared(self.scheduler_config)))
        sched.set_timesteps(steps)
        gen = np.random.default_rng(seed)
        x = gen.standard_normal((1, *self.sample_shape), dtype=np.float32) * np.float32(sched.init_noise_sigma)
        return Trajectory(label, seed, steps, name, g, sched, gen, x)

    def step(self, trajectories: list[Trajectory]) -> list[StepResult]:
        """Advance every unfinished trajectory by one step, with one UNet
        forward over all of them."""
        active = [t for t in trajectories if not t.done]
        if not active:
            return []
        xs, ts, labels = [], [], []
        for tr in active:
            x_in = tr.scheduler.scale_model_input(tr.sample, tr.timestep)
            xs += [x_in] * tr.rows
            ts += [tr.timestep] * tr.rows
            labels += [tr.label] if tr.rows == 1 else [tr.label, self.defaults.null_class_label]
        out = self.run_unet(np.concatenate(xs), np.array(ts), np.array(labels))
        results, row = [], 0
        for tr in active:
            if tr.rows == 1:
                eps = out[row:row + 1]
            else:  # classifier-free guidance: uncond + s * (cond - uncond)
                cond, uncond = out[row:row + 1], out[row + 1:row + 2]
                eps = uncond + np.float32(tr.guidance_scale) * (cond - uncond)
            row += tr.rows
            t = tr.timestep
            res = tr.scheduler.step(eps, t, tr.sample, generator=tr.generator,
                                    **_STEP_OPTIONS.get(tr.scheduler_name, {}))
            tr.sample = res.prev_sample.astype(np.float32, copy=False)
            tr.index += 1
            tr.last = StepResult(tr.index, tr.steps, t, tr.sample[0], res.pred_original_sample[0])
            results.append(tr.last)
        return results

    def run(self, labels, seeds, **kwargs) -> Iterator[list[StepResult]]:
        """Sample a batch: yields, per step, one StepResult per image."""
        trs = [self.trajectory(int(l), int(s), **kwargs) for l, s in zip(labels, seeds, strict=True)]
        while not all(t.done for t in trs):
            self.step(trs)
            yield [t.last for t in trs]

    def generate(self, labels, seeds, **kwargs) -> np.ndarray:
        """Final images, (N, C, H, W) float32 in [-1, 1]."""
        last = None
        for last in self.run(labels, seeds, **kwargs):
            pass
        return np.clip(np.stack([r.sample for r in last]), -1, 1)


def _shared(config: dict) -> dict:
    return {k: config[k] for k in _SHARED_SCHEDULER_KEYS if k in config}
