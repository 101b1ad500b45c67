"""DDIM sampler (Song et al. 2020), mirroring diffusers' DDIMScheduler."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import SchedulerOutput, as_f32, as_timestep, check_eta, draw_noise, f32, x0_and_eps
from .config import ConfigMixin, SamplerConfig, check_bool, check_float
from .noise_table import NoiseTableMixin


@dataclass(frozen=True)
class DDIMConfig(SamplerConfig):
    """diffusers' DDIMScheduler config: SamplerConfig's keys and these, in
    diffusers' relative order, with diffusers' defaults."""
    _class_name = "DDIMScheduler"
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    clip_sample_range: float = 1.0

    def validate(self) -> None:
        super().validate()
        check_bool("clip_sample", self.clip_sample)
        check_float("clip_sample_range", self.clip_sample_range, positive=True)
        check_bool("set_alpha_to_one", self.set_alpha_to_one)


class DDIMScheduler(NoiseTableMixin, ConfigMixin, config=DDIMConfig):
    order = 1
    DEFAULT_ETA = 0.0  # diffusers' default for step(eta=...): deterministic DDIM

    def __init__(self, config: DDIMConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self._init_schedule()
        # abar used for the "previous" step of the last step, where there is none
        self.final_alpha_cumprod = f32(1.0) if self.settings.set_alpha_to_one else self.alphas_cumprod[0]

    def previous_timestep(self, timestep) -> int:
        """t - T // n, whatever the spacing: that is what diffusers' DDIM
        uses, so with "linspace"/"trailing" and n not dividing T the step
        does not land exactly on the next listed timestep."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step()")
        t = as_timestep(timestep, self.settings.num_train_timesteps)
        return t - self.settings.num_train_timesteps // self.num_inference_steps

    def step(self, model_output, timestep, sample, eta: float = DEFAULT_ETA, use_clipped_model_output: bool = False,
             generator: np.random.Generator | None = None,
             variance_noise: np.ndarray | None = None) -> SchedulerOutput:
        cfg = self.settings
        model_output = as_f32(model_output, "model_output")
        sample = as_f32(sample, "sample")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} != sample shape {sample.shape}")
        eta = check_eta(eta)  # eta > 1 can make 1 - abar_prev - sigma^2 negative (NaN in diffusers)
        t = as_timestep(timestep, cfg.num_train_timesteps)
        prev_t = self.previous_timestep(t)

        # float32 scalars in diffusers' order of operations (see ddpm.py)
        one = f32(1.0)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = one - alpha_prod_t

        x0, eps = x0_and_eps(cfg.prediction_type, model_output, sample, alpha_prod_t)
        if cfg.clip_sample:
            r = f32(cfg.clip_sample_range)
            x0 = np.clip(x0, -r, r)

        # sigma_t(eta), formula 16
        beta_prod_prev = one - alpha_prod_prev
        variance = (beta_prod_prev / beta_prod_t) * (one - alpha_prod_t / alpha_prod_prev)
        std_dev = f32(eta) * np.sqrt(variance)
        if use_clipped_model_output:
            # GLIDE: re-derive epsilon from the clipped x0
            eps = (sample - np.sqrt(alpha_prod_t) * x0) / np.sqrt(beta_prod_t)

        direction = np.sqrt(one - alpha_prod_prev - std_dev ** 2) * eps
        prev_sample = np.sqrt(alpha_prod_prev) * x0 + direction
        if eta > 0:
            noise = draw_noise(model_output.shape, generator, variance_noise)
            prev_sample = prev_sample + std_dev * noise
        return SchedulerOutput(prev_sample.astype(np.float32, copy=False), x0.astype(np.float32, copy=False))

