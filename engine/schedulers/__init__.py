"""Diffusion schedulers (samplers) mirroring Hugging Face diffusers.

A step here computes what the diffusers class of the same name computes for
the same config, model output and noise (float32, within ~1e-5; see
tests/test_schedulers.py). Noise comes from an explicit `variance_noise`
array or a caller-owned `numpy.random.Generator`, never a global RNG.
"""
from __future__ import annotations

from typing import Any

from .common import SchedulerOutput
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .lcm import LCMScheduler

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "lcm": LCMScheduler,
}
# The samplers a model can use, by the scheduler class its folder was saved
# with: a diffusion model any of the three, a consistency model only its own.
SAMPLERS_FOR = {"DDPMScheduler": ("ddpm", "ddim", "dpm"), "DDIMScheduler": ("ddpm", "ddim", "dpm"),
                "DPMSolverMultistepScheduler": ("ddpm", "ddim", "dpm"), "LCMScheduler": ("lcm",)}


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
    "SAMPLERS_FOR", "SCHEDULERS", "make_scheduler",
]
