"""DDIM sampler (Song et al. 2020), mirroring diffusers' DDIMScheduler."""
from __future__ import annotations

from typing import Any

import numpy as np

from .common import (
    COMMON_UNSUPPORTED, ConfigMixin, SchedulerOutput, as_f32, as_timestep, check_bool, check_float, draw_noise,
    f32, register_known_keys, validate_common,
)
from .ddpm import NoiseTableMixin


class DDIMScheduler(NoiseTableMixin, ConfigMixin):
    _class_name = "DDIMScheduler"
    order = 1
    _fields = {
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "trained_betas": None, "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0,
        "prediction_type": "epsilon", "thresholding": False, "dynamic_thresholding_ratio": 0.995,
        "clip_sample_range": 1.0, "sample_max_value": 1.0, "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    }
    _unsupported = COMMON_UNSUPPORTED

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", clip_sample: bool = True, prediction_type: str = "epsilon",
                 clip_sample_range: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 set_alpha_to_one: bool = True, trained_betas=None, **ignored_underscore_keys: Any):
        given = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                     beta_schedule=beta_schedule, clip_sample=clip_sample, prediction_type=prediction_type,
                     clip_sample_range=clip_sample_range, timestep_spacing=timestep_spacing,
                     steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one, trained_betas=trained_betas)
        self._register_config(given, ignored_underscore_keys)
        cfg = self.config
        validate_common(cfg)
        check_bool("clip_sample", cfg["clip_sample"])
        check_float("clip_sample_range", cfg["clip_sample_range"], positive=True)
        check_bool("set_alpha_to_one", cfg["set_alpha_to_one"])
        self._init_schedule(cfg)
        # abar used for the "previous" step of the last step, where there is none
        self.final_alpha_cumprod = f32(1.0) if cfg["set_alpha_to_one"] else self.alphas_cumprod[0]

    def previous_timestep(self, timestep) -> int:
        """t - T // n, whatever the spacing: that is what diffusers' DDIM
        uses, so with "linspace"/"trailing" and n not dividing T the step
        does not land exactly on the next listed timestep."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step()")
        t = as_timestep(timestep, self.config["num_train_timesteps"])
        return t - self.config["num_train_timesteps"] // self.num_inference_steps

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator: np.random.Generator | None = None,
             variance_noise: np.ndarray | None = None) -> SchedulerOutput:
        cfg = self.config
        model_output = as_f32(model_output, "model_output")
        sample = as_f32(sample, "sample")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} != sample shape {sample.shape}")
        eta = float(eta)
        if not 0.0 <= eta <= 1.0:
            # eta > 1 can make 1 - abar_prev - sigma^2 negative (NaN in diffusers)
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        t = as_timestep(timestep, cfg["num_train_timesteps"])
        prev_t = self.previous_timestep(t)

        # float32 scalars in diffusers' order of operations (see ddpm.py)
        one = f32(1.0)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = one - alpha_prod_t

        # x0 and epsilon from the model output (formula 12 of the DDIM paper)
        pt = cfg["prediction_type"]
        if pt == "epsilon":
            x0 = (sample - np.sqrt(beta_prod_t) * model_output) / np.sqrt(alpha_prod_t)
            eps = model_output
        elif pt == "v_prediction":
            x0 = np.sqrt(alpha_prod_t) * sample - np.sqrt(beta_prod_t) * model_output
            eps = np.sqrt(alpha_prod_t) * model_output + np.sqrt(beta_prod_t) * sample
        else:  # sample
            x0 = model_output.copy()
            eps = (sample - np.sqrt(alpha_prod_t) * x0) / np.sqrt(beta_prod_t)
        if cfg["clip_sample"]:
            r = f32(cfg["clip_sample_range"])
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


register_known_keys(DDIMScheduler._fields)
