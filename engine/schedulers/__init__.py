"""Diffusion schedulers (samplers) mirroring Hugging Face diffusers.

A step here computes what the diffusers class of the same name computes for
the same config, model output and noise (float32, within ~1e-5; see
tests/test_schedulers.py). Noise comes from an explicit `variance_noise`
array or a caller-owned `numpy.random.Generator`, never a global RNG.

Each scheduler takes its frozen config dataclass (`DDPMConfig`, ...; see
config.py) or that config's keys as keyword arguments. A config's noise
schedule (`config.schedule`, a `NoiseSchedule`) is what a model's samplers
must share; its keys are NOISE_SCHEDULE_KEYS.

Image-to-image at `strength` (diffusers' img2img pipelines): a diffusion
sampler sets its timesteps as usual and steps through them from index
`img2img_start(n, strength)` (DPM-Solver told so by `set_begin_index`), the
image noised there with `add_noise`; LCM and TCD take `set_timesteps(n,
strength=...)` and step through all of theirs. `RePaintScheduler`
(inpainting on a diffusion model's schedule) is no sampler of SCHEDULERS:
its step takes the original image and the mask.
"""
from __future__ import annotations

from typing import Any

from .common import (ETA_RANGE, NOISE_SCHEDULE_KEYS, NoiseSchedule, SchedulerOutput, check_eta, check_strength,
                     img2img_start)
from .config import SamplerConfig, SchedulerConfig
from .ddim import DDIMConfig, DDIMScheduler
from .ddpm import DDPMConfig, DDPMScheduler
from .dpm_solver import DPMSolverConfig, DPMSolverMultistepScheduler
from .lcm import LCMConfig, LCMScheduler
from .repaint import RePaintConfig, RePaintScheduler
from .tcd import TCDConfig, TCDScheduler

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "lcm": LCMScheduler,
    "tcd": TCDScheduler,
}
# The samplers a model can use, by the scheduler class its folder was saved
# with (its own first): a diffusion model any of the three, a consistency
# model the two that step on its distillation grid.
DIFFUSION = ("ddpm", "ddim", "dpm")
SAMPLERS_FOR = {"DDPMScheduler": DIFFUSION, "DDIMScheduler": DIFFUSION, "DPMSolverMultistepScheduler": DIFFUSION,
                "LCMScheduler": ("lcm", "tcd"), "TCDScheduler": ("tcd", "lcm")}
CONSISTENCY_CLASSES = frozenset({"LCMScheduler", "TCDScheduler"})  # a folder saved with these holds a student
# step() arguments every sampling run passes, by sampler. DDIM clips x̂0 to
# [-1, 1] (clip_sample, diffusers' default) but by default keeps stepping
# with the unclipped noise estimate; at high noise levels an epsilon model's
# x̂0 lies far outside [-1, 1], and the mismatch bends the deterministic
# trajectory (measured on the shipped weights at 20 steps: 72% of digits
# classified as asked, 100% with this option). Use the noise implied by the
# clipped x̂0, as diffusers' use_clipped_model_output does.
STEP_OPTIONS = {"ddim": {"use_clipped_model_output": True}}
# The samplers whose step() takes an eta (each class's DEFAULT_ETA when none is
# given): how much fresh noise a step adds, 0 deterministic; in [0, 1] (check_eta).
ETA_SAMPLERS = ("ddim", "tcd")


def make_scheduler(name: str, **config: Any):
    """A fresh scheduler by short name, configured like `from_config(config)`
    (so a diffusers scheduler_config.json dict of any of the three kinds can
    be passed as **config; keys starting with "_" are ignored)."""
    cls = SCHEDULERS.get(name)
    if cls is None:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    return cls.from_config(config)


__all__ = [
    "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "LCMScheduler", "SchedulerOutput",
    "TCDScheduler", "DDIMConfig", "DDPMConfig", "DPMSolverConfig", "LCMConfig", "SchedulerConfig", "TCDConfig",
    "CONSISTENCY_CLASSES", "ETA_SAMPLERS", "NOISE_SCHEDULE_KEYS", "NoiseSchedule", "SAMPLERS_FOR", "SCHEDULERS",
    "STEP_OPTIONS", "ETA_RANGE", "check_eta", "make_scheduler", "img2img_start", "check_strength", "RePaintConfig",
    "RePaintScheduler", "SamplerConfig",
]
