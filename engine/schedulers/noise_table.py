"""The discrete noise table and what follows from it, shared by DDPM, DDIM
and LCM (and TCD, its subclass): schedule set-up, timestep spacing, add_noise / get_velocity."""
from __future__ import annotations

import numpy as np

from .common import as_f32, as_timestep_array, check_num_inference_steps, per_sample, spaced_timesteps


class NoiseTableMixin:
    """For a scheduler with a `settings` config (see config.ConfigMixin).
    Float32 throughout, as diffusers does for float32 samples."""

    def _init_schedule(self) -> None:
        cfg = self.settings
        self.betas, self.alphas_cumprod = cfg.schedule.tables
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(cfg.num_train_timesteps - 1, -1, -1, dtype=np.int64)

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.settings
        n = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        self.num_inference_steps = n
        self.timesteps = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, n, cfg.steps_offset)

    def _noise_coefficients(self, timesteps, ndim: int):
        ts = as_timestep_array(timesteps, self.settings.num_train_timesteps)
        ac = self.alphas_cumprod[ts]
        sqrt_a = per_sample(np.sqrt(ac), ndim)
        sqrt_1ma = per_sample(np.sqrt(np.float32(1.0) - ac), ndim)
        return sqrt_a, sqrt_1ma

    def add_noise(self, original_samples, noise, timesteps) -> np.ndarray:
        """q(x_t | x_0): sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise, per sample."""
        x0 = as_f32(original_samples, "original_samples")
        noise = as_f32(noise, "noise")
        sqrt_a, sqrt_1ma = self._noise_coefficients(timesteps, x0.ndim)
        return sqrt_a * x0 + sqrt_1ma * noise

    def get_velocity(self, sample, noise, timesteps) -> np.ndarray:
        """v-prediction training target: sqrt(abar_t) * noise - sqrt(1 - abar_t) * x0."""
        sample = as_f32(sample, "sample")
        noise = as_f32(noise, "noise")
        sqrt_a, sqrt_1ma = self._noise_coefficients(timesteps, sample.ndim)
        return sqrt_a * noise - sqrt_1ma * sample

    def scale_model_input(self, sample, timestep=None) -> np.ndarray:
        return as_f32(sample, "sample")
