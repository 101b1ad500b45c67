"""DDPM ancestral sampler (Ho et al. 2020), mirroring diffusers' DDPMScheduler."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import SchedulerOutput, as_f32, as_timestep, draw_noise, f32
from .config import ConfigMixin, SamplerConfig, check_bool, check_float
from .noise_table import NoiseTableMixin

# None is what a DPM-Solver config carries; diffusers' DDPM then behaves as fixed_small.
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", None)


@dataclass(frozen=True)
class DDPMConfig(SamplerConfig):
    """diffusers' DDPMScheduler config: SamplerConfig's keys and these, in
    diffusers' relative order, with diffusers' defaults."""
    _class_name = "DDPMScheduler"
    variance_type: str | None = "fixed_small"
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.variance_type not in VARIANCE_TYPES:
            # fixed_large_log gives NaN in diffusers' step (sqrt of a log); learned* need a 2x-channel model.
            raise ValueError(f"variance_type={self.variance_type!r} is not supported; "
                             f"choose one of {list(VARIANCE_TYPES)}")
        check_bool("clip_sample", self.clip_sample)
        check_float("clip_sample_range", self.clip_sample_range, positive=True)


class DDPMScheduler(NoiseTableMixin, ConfigMixin, config=DDPMConfig):
    order = 1

    def __init__(self, config: DDPMConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self._init_schedule()

    def previous_timestep(self, timestep) -> int:
        """The next entry of the timestep list once set_timesteps ran (-1
        after the last), else t - 1. Using t - 1 for a short schedule was the
        bug diffusers fixed in PR #2076: every step only denoised by one
        training step and short runs returned noise."""
        t = as_timestep(timestep, self.settings.num_train_timesteps)
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
        cfg = self.settings
        model_output = as_f32(model_output, "model_output")
        sample = as_f32(sample, "sample")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} != sample shape {sample.shape}")
        t = as_timestep(timestep, cfg.num_train_timesteps)
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
        pt = cfg.prediction_type
        if pt == "epsilon":
            x0 = (sample - np.sqrt(beta_prod_t) * model_output) / np.sqrt(alpha_prod_t)
        elif pt == "v_prediction":
            x0 = np.sqrt(alpha_prod_t) * sample - np.sqrt(beta_prod_t) * model_output
        else:  # sample
            x0 = model_output.copy()
        if cfg.clip_sample:
            r = f32(cfg.clip_sample_range)
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
        vt = self.settings.variance_type
        if vt == "fixed_large":
            return np.sqrt(current_beta)
        if vt == "fixed_small_log":
            return np.exp(f32(0.5) * np.log(variance))
        return np.sqrt(variance)  # fixed_small (and None)

