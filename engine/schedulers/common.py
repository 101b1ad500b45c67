"""Pieces shared by the schedulers: beta schedules, timestep spacing, config
handling, argument checks and noise drawing.

Numbers follow diffusers' float32 torch code: the schedule tables are built
so that they equal diffusers' tensors bit for bit (see `_linspace_f32`), and
per-step scalar coefficients are computed in float64 from those float32
tables, then applied to float32 arrays as float32 scalars so outputs never
promote to float64.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Mapping, NamedTuple

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


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


def schedule_key(config: Mapping[str, Any]) -> tuple:
    """The config entries the beta schedule depends on, hashable."""
    tb = config["trained_betas"]
    return (config["num_train_timesteps"], config["beta_start"], config["beta_end"],
            config["beta_schedule"], None if tb is None else tuple(tb))


def schedule_tables(config: Mapping[str, Any]):
    return _schedule_tables(*schedule_key(config))


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


def per_sample(coef: np.ndarray, ndim: int) -> np.ndarray:
    """(B,) coefficients shaped to broadcast over (B, ...)."""
    return coef.reshape(coef.shape + (1,) * max(ndim - 1, 0))


def f32(x: float) -> np.float32:
    return np.float32(x)


def draw_noise(shape: tuple, generator: np.random.Generator | None,
               variance_noise: np.ndarray | None) -> np.ndarray:
    """Noise for a stochastic step: variance_noise if given, else from the
    caller's generator, else from a fresh one (never the global RNG)."""
    if variance_noise is not None:
        if generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        noise = as_f32(variance_noise, "variance_noise")
        if noise.shape != tuple(shape):
            raise ValueError(f"variance_noise has shape {noise.shape}, expected {tuple(shape)}")
        return noise
    if generator is None:
        generator = np.random.default_rng()
    elif not isinstance(generator, np.random.Generator):
        raise ValueError(f"generator must be a numpy.random.Generator, got {type(generator).__name__}")
    return generator.standard_normal(shape, dtype=np.float32)


# ---------------------------------------------------------------------------
# Config handling
# ---------------------------------------------------------------------------
def check_choice(name: str, value: Any, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(allowed)}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_float(name: str, value: Any, positive: bool = False) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)) \
            or math.isnan(value) or (positive and not value > 0):
        raise ValueError(f"{name} must be a {'positive ' if positive else ''}number, got {value!r}")


def _plain(value: Any) -> Any:
    """JSON-friendly Python value (numpy scalars/arrays -> int/float/list)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


class ConfigMixin:
    """diffusers-style `config` dict and `from_config`.

    Subclasses list, in `_fields`, every key diffusers writes for that class
    with its default; `_unsupported` names keys we accept only at that
    default (so diffusers configs load, but e.g. thresholding=True fails).
    """

    _class_name: str
    _fields: dict[str, Any]
    _unsupported: dict[str, str] = {}

    def _register_config(self, given: dict[str, Any], extra: dict[str, Any]) -> None:
        cls = type(self)
        unknown = sorted(k for k in extra if not k.startswith("_"))
        for key in unknown:
            if key not in cls._fields:
                raise ValueError(
                    f"unknown config key {key!r} for {cls._class_name}; allowed keys: {sorted(cls._fields)}")
        config = {"_class_name": cls._class_name}
        for key, default in cls._fields.items():
            value = _plain(given[key] if key in given else extra.get(key, default))
            if key in cls._unsupported and value != default:
                raise ValueError(f"{key}={value!r} is not supported by digitgen's {cls._class_name} "
                                 f"({cls._unsupported[key]}); only {default!r} is")
            config[key] = value
        self.config = config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides):
        """Build from a diffusers scheduler_config.json dict.

        Keys starting with "_" are ignored; so are keys that belong to one of
        the sibling schedulers but not this one (diffusers' from_config does
        the same, which is what makes `DDIMScheduler.from_config(ddpm.config)`
        work). Any other key is an error.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        merged = {**config, **overrides}
        kwargs = {}
        for key, value in merged.items():
            if key.startswith("_"):
                continue
            if key in cls._fields:
                kwargs[key] = value
            elif key not in _ALL_KNOWN_KEYS:
                raise ValueError(
                    f"unknown config key {key!r} for {cls._class_name}; allowed keys: {sorted(cls._fields)}")
        return cls(**kwargs)

    def __len__(self) -> int:
        return self.config["num_train_timesteps"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


# Filled by each scheduler module when it defines its class.
_ALL_KNOWN_KEYS: set[str] = set()


def register_known_keys(fields: Mapping[str, Any]) -> None:
    _ALL_KNOWN_KEYS.update(fields)


# diffusers fields common to all three schedulers that we accept only at
# their default value.
COMMON_UNSUPPORTED = {
    "thresholding": "dynamic thresholding is not implemented",
    "rescale_betas_zero_snr": "zero-terminal-SNR rescaling is not implemented",
}


def validate_common(config: Mapping[str, Any]) -> None:
    """Checks shared by all schedulers, then builds (and caches) the tables."""
    check_int("num_train_timesteps", config["num_train_timesteps"], 1)
    check_float("beta_start", config["beta_start"])
    check_float("beta_end", config["beta_end"])
    check_choice("beta_schedule", config["beta_schedule"], BETA_SCHEDULES)
    check_choice("timestep_spacing", config["timestep_spacing"], TIMESTEP_SPACINGS)
    check_choice("prediction_type", config["prediction_type"], PREDICTION_TYPES)
    check_int("steps_offset", config["steps_offset"], 0)
    check_float("dynamic_thresholding_ratio", config["dynamic_thresholding_ratio"])
    check_float("sample_max_value", config["sample_max_value"])
    tb = config["trained_betas"]
    if tb is not None:
        if not isinstance(tb, list) or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) for b in tb):
            raise ValueError("trained_betas must be a list of numbers or None")
        if len(tb) != config["num_train_timesteps"]:
            raise ValueError(f"trained_betas has {len(tb)} entries but "
                             f"num_train_timesteps={config['num_train_timesteps']}")
