"""DDPM ancestral sampler (Ho et al. 2020), mirroring diffusers' DDPMScheduler."""
from __future__ import annotations

from typing import Any

import numpy as np

from .common import (
    COMMON_UNSUPPORTED, ConfigMixin, SchedulerOutput, as_f32, as_timestep, as_timestep_array,
    check_bool, check_float, check_num_inference_steps, draw_noise, f32, per_sample,
    register_known_keys, schedule_tables, spaced_timesteps, validate_common,
)

# None is what a DPM-Solver config carries; diffusers' DDPM then behaves as fixed_small.
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", None)


class NoiseTableMixin:
    """The discrete noise table and what follows from it, shared by DDPM and
    DDIM: schedule set-up, timestep spacing, add_noise / get_velocity.
    Float32 throughout, as diffusers does for float32 samples."""

    def _init_schedule(self, cfg) -> None:
        self.betas, self.alphas_cumprod = schedule_tables(cfg)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(cfg["num_train_timesteps"] - 1, -1, -1, dtype=np.int64)

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        n = check_num_inference_steps(num_inference_steps, cfg["num_train_timesteps"])
        self.num_inference_steps = n
        self.timesteps = spaced_timesteps(cfg["timestep_spacing"], cfg["num_train_timesteps"], n,
                                          cfg["steps_offset"])

    def _noise_coefficients(self, timesteps, ndim: int):
        ts = as_timestep_array(timesteps, self.config["num_train_timesteps"])
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


class DDPMScheduler(NoiseTableMixin, ConfigMixin):
    _class_name = "DDPMScheduler"
    order = 1
    _fields = {
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "trained_betas": None, "variance_type": "fixed_small", "clip_sample": True,
        "prediction_type": "epsilon", "thresholding": False, "dynamic_thresholding_ratio": 0.995,
        "clip_sample_range": 1.0, "sample_max_value": 1.0, "timestep_spacing": "leading",
        "steps_offset": 0, "rescale_betas_zero_snr": False,
    }
    _unsupported = COMMON_UNSUPPORTED

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", variance_type: str | None = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", clip_sample_range: float = 1.0,
                 timestep_spacing: str = "leading", steps_offset: int = 0, trained_betas=None,
                 **ignored_underscore_keys: Any):
        given = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                     beta_schedule=beta_schedule, variance_type=variance_type, clip_sample=clip_sample,
                     prediction_type=prediction_type, clip_sample_range=clip_sample_range,
                     timestep_spacing=timestep_spacing, steps_offset=steps_offset, trained_betas=trained_betas)
        self._register_config(given, ignored_underscore_keys)
        cfg = self.config
        validate_common(cfg)
        if cfg["variance_type"] not in VARIANCE_TYPES:
            # fixed_large_log gives NaN in diffusers' step (sqrt of a log); learned* need a 2x-channel model.
            raise ValueError(f"variance_type={cfg['variance_type']!r} is not supported; "
                             f"choose one of {list(VARIANCE_TYPES)}")
        check_bool("clip_sample", cfg["clip_sample"])
        check_float("clip_sample_range", cfg["clip_sample_range"], positive=True)
        self._init_schedule(cfg)

    def previous_timestep(self, timestep) -> int:
        """The next entry of the timestep list once set_timesteps ran (-1
        after the last), else t - 1. Using t - 1 for a short schedule was the
        bug diffusers fixed in PR #2076: every step only denoised by one
        training step and short runs returned noise."""
        t = as_timestep(timestep, self.config["num_train_timesteps"])
        if self.num_inference_steps is None:
            return t - 1
        (where,) = np.nonzero(self.timesteps == t)
        if where.size == 0:
            raise ValueError(f"timestep {t} is not in this scheduler's timesteps; "
                             "pass a value from scheduler.timesteps")
        i = int(where[0])
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def step(self, model_output, timestep, sample, generator: np.random.Generator | None = None,
             variance_noise: np.ndarray | None = None) -> SchedulerOutput:
        cfg = self.config
        model_output = as_f32(model_output, "model_output")
        sample = as_f32(sample, "sample")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} != sample shape {sample.shape}")
        t = as_timestep(timestep, cfg["num_train_timesteps"])
        prev_t = self.previous_timestep(t)

        # Scalar coefficients in float32, in diffusers' order of operations:
        # at many steps 1 - abar_t/abar_prev is tiny and its float32 rounding
        # is part of what diffusers computes.
        one = f32(1.0)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else one
        beta_prod_t = one - alpha_prod_t
        beta_prod_prev = one - alpha_prod_prev
        current_alpha = alpha_prod_t / alpha_prod_prev
        current_beta = one - current_alpha

        # x0 from the model output (formula 15 of the DDPM paper)
        pt = cfg["prediction_type"]
        if pt == "epsilon":
            x0 = (sample - np.sqrt(beta_prod_t) * model_output) / np.sqrt(alpha_prod_t)
        elif pt == "v_prediction":
            x0 = np.sqrt(alpha_prod_t) * sample - np.sqrt(beta_prod_t) * model_output
        else:  # sample
            x0 = model_output.copy()
        if cfg["clip_sample"]:
            r = f32(cfg["clip_sample_range"])
            x0 = np.clip(x0, -r, r)

        # posterior mean mu(x_t, x0) (formula 7)
        x0_coeff = np.sqrt(alpha_prod_prev) * current_beta / beta_prod_t
        xt_coeff = np.sqrt(current_alpha) * beta_prod_prev / beta_prod_t
        prev_sample = x0_coeff * x0 + xt_coeff * sample

        # diffusers tests the timestep, not the position: with steps_offset the
        # last step (t=1) still adds (tiny, or for fixed_large real) noise.
        if t > 0:
            noise = draw_noise(model_output.shape, generator, variance_noise)
            prev_sample = prev_sample + self._std(alpha_prod_t, alpha_prod_prev, current_beta) * noise
        return SchedulerOutput(prev_sample.astype(np.float32, copy=False), x0.astype(np.float32, copy=False))

    def _std(self, alpha_prod_t, alpha_prod_prev, current_beta) -> np.float32:
        one = f32(1.0)
        variance = (one - alpha_prod_prev) / (one - alpha_prod_t) * current_beta
        variance = max(variance, f32(1e-20))  # diffusers clamps before its log
        vt = self.config["variance_type"]
        if vt == "fixed_large":
            return np.sqrt(current_beta)
        if vt == "fixed_small_log":
            return np.exp(f32(0.5) * np.log(variance))
        return np.sqrt(variance)  # fixed_small (and None)


register_known_keys(DDPMScheduler._fields)
