"""Pieces shared by the schedulers: beta schedules, timestep spacing,
argument checks and noise drawing (config handling is in config.py).

Numbers follow diffusers' float32 torch code: the schedule tables are built
so that they equal diffusers' tensors bit for bit (see `_linspace_f32`), and
per-step scalar coefficients are computed in float64 from those float32
tables, then applied to float32 arrays as float32 scalars so outputs never
promote to float64.
"""
from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

class SchedulerOutput(NamedTuple):
    prev_sample: np.ndarray
    pred_original_sample: np.ndarray


# ---------------------------------------------------------------------------
# Beta schedules
# ---------------------------------------------------------------------------
def _linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n, dtype=float32), bit for bit.

    torch computes a float32 step and then fuses start + step*i (first half)
    and end - step*(n-1-i) (second half) with one rounding; np.linspace in
    float64 differs from it in ~1/3 of the entries by one ulp.
    """
    if n == 1:
        return np.array([start], dtype=np.float32)
    start32, end32 = np.float32(start), np.float32(end)
    step = float((end32 - start32) / np.float32(n - 1))
    i = np.arange(n, dtype=np.float64)
    half = n // 2
    out = np.empty(n, dtype=np.float64)
    out[:half] = float(start32) + step * i[:half]
    out[half:] = float(end32) - step * (n - 1 - i[half:])
    return out.astype(np.float32)


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    """GLIDE's squaredcos_cap_v2: betas from alpha_bar(t) = cos^2(...),
    computed in float64 and capped at max_beta, like diffusers."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.array(betas, dtype=np.float32)


@lru_cache(maxsize=32)
def _schedule_tables(num_train_timesteps: int, beta_start: float, beta_end: float,
                     beta_schedule: str, trained_betas: tuple | None):
    """(betas, alphas_cumprod), float32 and read-only: shared by every
    scheduler instance with the same schedule, so creating one is cheap."""
    if trained_betas is not None:
        betas = np.array(trained_betas, dtype=np.float32)
    elif beta_schedule == "linear":
        betas = _linspace_f32(beta_start, beta_end, num_train_timesteps)
    elif beta_schedule == "scaled_linear":
        betas = _linspace_f32(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps) ** 2
    else:  # squaredcos_cap_v2 (validated by the caller)
        betas = _cosine_betas(num_train_timesteps)
    if not (np.all(np.isfinite(betas)) and np.all(betas > 0) and np.all(betas < 1)):
        raise ValueError(
            f"beta schedule {beta_schedule!r} with beta_start={beta_start}, beta_end={beta_end} "
            "gives betas outside (0, 1); every beta must satisfy 0 < beta < 1")
    # torch's CPU cumprod accumulates float32 in float64; doing the same gives
    # diffusers' alphas_cumprod exactly (a float32 running product drifts).
    alphas_cumprod = np.cumprod((np.float32(1.0) - betas).astype(np.float64)).astype(np.float32)
    betas.setflags(write=False)
    alphas_cumprod.setflags(write=False)
    return betas, alphas_cumprod


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """The noise schedule a model was trained on: what every sampler of the
    model must share. Taken from a validated SchedulerConfig (its `schedule`),
    which holds the defaults and the checks; hashable, so it keys the tables."""
    num_train_timesteps: int
    beta_start: float
    beta_end: float
    beta_schedule: str
    trained_betas: tuple[float, ...] | None

    @property
    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(betas, alphas_cumprod), float32, read-only, shared by every user of this schedule."""
        return _schedule_tables(**self.config_keys())

    def config_keys(self) -> dict[str, Any]:
        """The schedule as SchedulerConfig keyword arguments."""
        return {k: getattr(self, k) for k in NOISE_SCHEDULE_KEYS}


# the config keys of the noise schedule, in diffusers' order
NOISE_SCHEDULE_KEYS = tuple(f.name for f in dataclasses.fields(NoiseSchedule))


# ---------------------------------------------------------------------------
# Timestep spacing (Table 2 of "Common Diffusion Noise Schedules and Sample
# Steps are Flawed"), exactly as DDPM/DDIM compute it in diffusers.
# ---------------------------------------------------------------------------
def spaced_timesteps(spacing: str, num_train_timesteps: int, n: int, steps_offset: int) -> np.ndarray:
    T = num_train_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        # diffusers applies steps_offset only here, not to linspace/trailing
        ts = (np.arange(n) * (T // n)).round()[::-1].astype(np.int64) + steps_offset
    else:  # trailing
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    if ts[0] >= T:  # diffusers would fail later with an IndexError
        raise ValueError(f"steps_offset={steps_offset} with num_inference_steps={n} gives timestep "
                         f"{int(ts[0])} >= num_train_timesteps={T}")
    return ts


def check_num_inference_steps(n: Any, num_train_timesteps: int) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"num_inference_steps must be an int, got {n!r}")
    n = int(n)
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must be between 1 and num_train_timesteps={num_train_timesteps}, got {n}")
    return n


# ---------------------------------------------------------------------------
# Argument coercion
# ---------------------------------------------------------------------------
def as_timestep(timestep: Any, num_train_timesteps: int) -> int:
    """A Python int from an int or a 0-d / 1-element array, range-checked
    (diffusers would silently index from the end with a negative t)."""
    arr = np.asarray(timestep)
    if arr.size != 1:
        raise ValueError(f"timestep must be a single value, got shape {arr.shape}")
    value = arr.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise ValueError(f"timestep must be an integer, got {timestep!r}")
    t = int(value)
    if not 0 <= t < num_train_timesteps:
        raise ValueError(f"timestep must be in [0, {num_train_timesteps - 1}], got {t}")
    return t


def as_timestep_array(timesteps: Any, num_train_timesteps: int) -> np.ndarray:
    """Per-sample timesteps (B,) (or one for all) as int64, range-checked."""
    arr = np.asarray(timesteps).reshape(-1)
    if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise ValueError(f"timesteps must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.all(arr == np.round(arr)):
            raise ValueError("timesteps must be integers")
    ts = arr.astype(np.int64)
    if ts.size == 0 or ts.min() < 0 or ts.max() >= num_train_timesteps:
        raise ValueError(f"timesteps must be in [0, {num_train_timesteps - 1}], got {ts.tolist()}")
    return ts


def as_f32(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != np.float32:
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    return arr


def x0_and_eps(prediction_type: str, model_output: np.ndarray, sample: np.ndarray,
               alpha_prod_t: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The model's estimates of x0 and of the noise, whatever it predicts
    (formula 12 of the DDIM paper), in diffusers' order of operations."""
    beta_prod_t = f32(1.0) - alpha_prod_t
    if prediction_type == "epsilon":
        return (sample - np.sqrt(beta_prod_t) * model_output) / np.sqrt(alpha_prod_t), model_output
    if prediction_type == "v_prediction":
        return (np.sqrt(alpha_prod_t) * sample - np.sqrt(beta_prod_t) * model_output,
                np.sqrt(alpha_prod_t) * model_output + np.sqrt(beta_prod_t) * sample)
    x0 = model_output.copy()  # "sample"
    return x0, (sample - np.sqrt(alpha_prod_t) * x0) / np.sqrt(beta_prod_t)


def per_sample(coef: np.ndarray, ndim: int) -> np.ndarray:
    """(B,) coefficients shaped to broadcast over (B, ...)."""
    return coef.reshape(coef.shape + (1,) * max(ndim - 1, 0))


def f32(x: float) -> np.float32:
    return np.float32(x)


# above 1 the noise variance exceeds what the step leaves room for: NaN or a negative timestep
ETA_RANGE = (0.0, 1.0)


def check_eta(eta: Any) -> float:
    """eta as a float, or ValueError: a number in ETA_RANGE."""
    low, high = ETA_RANGE
    if isinstance(eta, (bool, np.bool_)) or not isinstance(eta, (int, float, np.integer, np.floating)) \
            or not low <= eta <= high:
        raise ValueError(f"eta must be a number in [{low:g}, {high:g}], got {eta!r}")
    return float(eta)


def draw_noise(shape: tuple, generator: np.random.Generator | None,
               variance_noise: np.ndarray | None, name: str = "variance_noise") -> np.ndarray:
    """Noise for a stochastic step: variance_noise if given, else from the
    caller's generator, else from a fresh one (never the global RNG).
    `name` is the caller's name for the explicit array, for its errors."""
    if variance_noise is not None:
        if generator is not None:
            raise ValueError(f"pass either generator or {name}, not both")
        noise = as_f32(variance_noise, name)
        if noise.shape != tuple(shape):
            raise ValueError(f"{name} has shape {noise.shape}, expected {tuple(shape)}")
        return noise
    if generator is None:
        generator = np.random.default_rng()
    elif not isinstance(generator, np.random.Generator):
        raise ValueError(f"generator must be a numpy.random.Generator, got {type(generator).__name__}")
    return generator.standard_normal(shape, dtype=np.float32)


# ---------------------------------------------------------------------------
# Image-to-image strength: how much of the schedule a run from a noised image
# keeps (1 = all of it, from pure noise; 0 would keep none)
# ---------------------------------------------------------------------------
def check_strength(strength: Any) -> float:
    """strength as a float, or ValueError: a number in (0, 1]."""
    if isinstance(strength, (bool, np.bool_)) or not isinstance(strength, (int, float, np.integer, np.floating)) \
            or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    return float(strength)


def img2img_start(num_inference_steps: int, strength: float) -> int:
    """The index of the first of `num_inference_steps` timesteps an
    image-to-image run at `strength` steps through: diffusers'
    StableDiffusionImg2ImgPipeline.get_timesteps, t_start (times the
    scheduler's order, 1 for all here), with its Python float rounding
    (int(7 * 0.3) = 2 steps run). It runs the last int(n * strength) steps;
    `num_inference_steps` itself means none runs, which the caller refuses."""
    if isinstance(num_inference_steps, (bool, np.bool_)) or not isinstance(num_inference_steps, (int, np.integer)) \
            or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
    n = int(num_inference_steps)
    init_timestep = min(int(n * check_strength(strength)), n)
    return max(n - init_timestep, 0)
