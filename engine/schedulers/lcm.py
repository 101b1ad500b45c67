"""Multistep consistency sampler (Luo et al. 2023, "Latent Consistency
Models"), mirroring diffusers' LCMScheduler.

A consistency model maps any x_t straight to its estimate of x_0 (the
`denoised` sample below). Sampling with n steps picks n timesteps from the
`original_inference_steps`-point grid the model was distilled on, and between
them re-noises the estimate to the next timestep with fresh noise: a few
large jumps instead of many small ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import SchedulerOutput, as_f32, as_timestep, check_strength, draw_noise, f32, img2img_start
from .config import ConfigMixin, SamplerConfig, check_bool, check_float, check_int
from .noise_table import NoiseTableMixin

SIGMA_DATA = 0.5  # diffusers' fixed value for the boundary-condition scalings


def lcm_origin_timesteps(num_train_timesteps: int, original_inference_steps: int,
                         strength: float = 1.0) -> np.ndarray:
    """The distillation grid, ascending: k-1, 2k-1, ..., with k = T // original steps;
    at strength < 1 (image-to-image) only its int(original steps * strength)
    least noisy points, as diffusers truncates it (Python float rounding)."""
    k = num_train_timesteps // original_inference_steps
    return np.arange(1, int(original_inference_steps * strength) + 1, dtype=np.int64) * k - 1


def boundary_scalings(timesteps, timestep_scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """(c_skip, c_out) per timestep, float32: the consistency function is
    c_skip * x_t + c_out * x0_hat, so that it is exactly x_t at t = 0."""
    scaled = np.asarray(timesteps, dtype=np.float32) * f32(timestep_scaling)
    denom = scaled * scaled + f32(SIGMA_DATA ** 2)
    return f32(SIGMA_DATA ** 2) / denom, scaled / np.sqrt(denom)


def check_custom_timesteps(timesteps, grid: np.ndarray) -> np.ndarray:
    """A hand-picked schedule as int64, or ValueError: a non-empty, strictly
    descending list of points of `grid` (the distillation grid)."""
    ts = list(timesteps)
    if not ts or any(isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) for t in ts):
        raise ValueError(f"timesteps must be a non-empty list of ints, got {ts!r}")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly descending, got {ts}")
    off = [int(t) for t in ts if t not in grid]
    if off:
        raise ValueError(f"timesteps {off} are not on the distillation grid {int(grid[-1])}, {int(grid[-2])}, "
                         f"..., {int(grid[0])} (the model was distilled there only)")
    return np.asarray(ts, dtype=np.int64)


@dataclass(frozen=True)
class LCMConfig(SamplerConfig):
    """diffusers' LCMScheduler config: SamplerConfig's keys and these, in
    diffusers' relative order, with diffusers' defaults."""
    _class_name = "LCMScheduler"
    # the schedule of Stable Diffusion, which LCM was made for; differs from SamplerConfig's
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    original_inference_steps: int = 50
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    timestep_scaling: float = 10.0

    def validate(self) -> None:
        super().validate()
        check_int("original_inference_steps", self.original_inference_steps, 1)
        if self.original_inference_steps > self.num_train_timesteps:
            raise ValueError(f"original_inference_steps={self.original_inference_steps} is larger than "
                             f"num_train_timesteps={self.num_train_timesteps}")
        check_bool("clip_sample", self.clip_sample)
        check_float("clip_sample_range", self.clip_sample_range, positive=True)
        check_bool("set_alpha_to_one", self.set_alpha_to_one)
        check_float("timestep_scaling", self.timestep_scaling, positive=True)


class LCMScheduler(NoiseTableMixin, ConfigMixin, config=LCMConfig):
    order = 1

    def __init__(self, config: LCMConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self._init_schedule()
        self.final_alpha_cumprod = f32(1.0) if self.settings.set_alpha_to_one else self.alphas_cumprod[0]
        self._step_index: int | None = None

    @property
    def max_inference_steps(self) -> int:
        return self.settings.original_inference_steps

    def set_timesteps(self, num_inference_steps: int | None = None, timesteps=None, strength: float = 1.0) -> None:
        """n timesteps evenly spaced, by index, on the distillation grid
        (descending from its last point, T - 1 for the usual grid); or, like
        diffusers' `set_timesteps(timesteps=[...])`, a list chosen by hand:
        strictly descending points of the grid (diffusers only warns about a
        point off the grid; here it is an error, the model never saw it).

        `strength` in (0, 1] is diffusers' image-to-image strength: the n
        timesteps are spaced over the grid's int(original_inference_steps *
        strength) least noisy points instead (fewer points than n is an
        error, as in diffusers), so the run starts that far down. A
        hand-picked list keeps its last int(len * strength) timesteps, as
        img2img_start does (diffusers then still counts the whole list in
        num_inference_steps, so its last step re-noises; here
        num_inference_steps is the count kept)."""
        cfg = self.settings
        strength = check_strength(strength)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps and timesteps")
        if timesteps is not None:
            grid = lcm_origin_timesteps(cfg.num_train_timesteps, cfg.original_inference_steps)[::-1]
            ts = check_custom_timesteps(timesteps, grid)
            start = img2img_start(len(ts), strength) * self.order
            if start == len(ts):
                raise ValueError(f"strength={strength:g} keeps int({len(ts)} x {strength:g}) = 0 of the "
                                 f"{len(ts)} hand-picked timesteps")
            self._set(ts[start:].copy())
            return
        origin = lcm_origin_timesteps(cfg.num_train_timesteps, cfg.original_inference_steps, strength)[::-1]
        n = num_inference_steps
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"num_inference_steps must be an int, got {n!r}")
        n = int(n)
        if not 1 <= n <= len(origin):
            points = f"original_inference_steps={cfg.original_inference_steps}"
            if strength < 1:
                points = f"int({points} x strength {strength:g}) = {len(origin)}"
            raise ValueError(f"num_inference_steps must be between 1 and {points} (the points of the grid this "
                             f"model was distilled on{' that the strength keeps' if strength < 1 else ''}), got {n}")
        indices = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        self._set(origin[indices].copy())

    def _set(self, timesteps: np.ndarray) -> None:
        self.timesteps = timesteps
        self.num_inference_steps = len(timesteps)
        self._step_index = None

    def _step_inputs(self, model_output, timestep, sample) -> tuple[np.ndarray, np.ndarray, int, int]:
        """step()'s arguments checked: (model_output, sample) as float32, the
        timestep, and this step's index (like diffusers, the first step finds
        itself in the schedule, later steps follow on)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step()")
        model_output = as_f32(model_output, "model_output")
        sample = as_f32(sample, "sample")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} != sample shape {sample.shape}")
        t = as_timestep(timestep, self.settings.num_train_timesteps)
        if self._step_index is None:
            (where,) = np.nonzero(self.timesteps == t)
            if where.size == 0:
                raise ValueError(f"timestep {t} is not in this scheduler's timesteps {self.timesteps.tolist()}")
            self._step_index = int(where[0])
        return model_output, sample, t, self._step_index

    def step(self, model_output, timestep, sample, generator: np.random.Generator | None = None,
             variance_noise: np.ndarray | None = None) -> SchedulerOutput:
        """One jump: x0_hat from the model output, the consistency estimate
        `denoised`, then (except after the last step) re-noised to the next
        timestep. Returns (prev_sample, denoised)."""
        cfg = self.settings
        model_output, sample, t, i = self._step_inputs(model_output, timestep, sample)
        last = i == self.num_inference_steps - 1
        prev_t = t if last else int(self.timesteps[i + 1])

        one = f32(1.0)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = one - alpha_prod_t
        beta_prod_prev = one - alpha_prod_prev
        c_skip, c_out = boundary_scalings(t, cfg.timestep_scaling)

        pt = cfg.prediction_type
        if pt == "epsilon":
            x0 = (sample - np.sqrt(beta_prod_t) * model_output) / np.sqrt(alpha_prod_t)
        elif pt == "sample":
            x0 = model_output.copy()
        else:  # v_prediction
            x0 = np.sqrt(alpha_prod_t) * sample - np.sqrt(beta_prod_t) * model_output
        if cfg.clip_sample:
            r = f32(cfg.clip_sample_range)
            x0 = np.clip(x0, -r, r)
        denoised = c_out * x0 + c_skip * sample
        if last:
            prev_sample = denoised
        else:
            noise = draw_noise(model_output.shape, generator, variance_noise)
            prev_sample = np.sqrt(alpha_prod_prev) * denoised + np.sqrt(beta_prod_prev) * noise
        self._step_index = i + 1
        return SchedulerOutput(prev_sample.astype(np.float32, copy=False), denoised.astype(np.float32, copy=False))

