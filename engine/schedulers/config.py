"""Scheduler configs: what they share, and how a scheduler holds one.

Each scheduler module defines a frozen dataclass (e.g. `DDPMConfig`) that,
with the keys it inherits, holds every key diffusers writes into that class's
scheduler_config.json, each default written once: here where schedulers
share it, in the subclass where it differs. `SchedulerConfig` holds the
noise schedule's keys (all RePaint adds its own to) and the machinery: it
makes values plain (JSON-friendly), rejects the keys accepted only at their
default (`UNSUPPORTED`, with the reason), checks, and loads from a dict;
`SamplerConfig` adds the keys the five samplers share. `ConfigMixin` binds
a scheduler class to its config class.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

import numpy as np

from .common import NOISE_SCHEDULE_KEYS, NoiseSchedule

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_choice(name: str, value: Any, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(allowed)}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum \
            or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")


# A schedule's tables hold one float32 per training timestep, per scheduler:
# diffusers models use 1000; a config asking for 1e9 would allocate gigabytes.
MAX_TRAIN_TIMESTEPS = 100_000


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


def _set_each(config, convert) -> None:
    for f in dataclasses.fields(config):
        object.__setattr__(config, f.name, convert(getattr(config, f.name)))  # frozen: only here


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """The keys every scheduler here has, its noise schedule, and the config
    machinery. RePaint's config adds its own keys to these alone (diffusers'
    RePaintScheduler has no prediction_type, spacing or thresholding keys);
    the samplers' configs build on `SamplerConfig`.

    Building one makes its values plain Python, rejects unsupported values,
    then runs `validate()`, which a subclass extends with its own checks.
    """

    _class_name: ClassVar[str] = "SchedulerConfig"  # a subclass: its scheduler, as diffusers names it
    # keys accepted only at their default, so diffusers configs load but
    # e.g. thresholding=True fails instead of being silently ignored
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {}

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _set_each(self, _plain)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self.UNSUPPORTED and value != f.default:
                raise ValueError(f"{f.name}={value!r} is not supported by digitgen's {self._class_name} "
                                 f"({self.UNSUPPORTED[f.name]}); only {f.default!r} is")
        self.validate()
        # once checked, lists (trained_betas) become tuples: frozen all the way down
        _set_each(self, lambda v: tuple(v) if isinstance(v, list) else v)

    def validate(self) -> None:
        """Checks of the noise schedule's keys."""
        check_int("num_train_timesteps", self.num_train_timesteps, 1, MAX_TRAIN_TIMESTEPS)
        check_float("beta_start", self.beta_start)
        check_float("beta_end", self.beta_end)
        check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        tb = self.trained_betas
        if tb is not None:
            if not isinstance(tb, (list, tuple)) or not all(
                    isinstance(b, (int, float)) and not isinstance(b, bool) for b in tb):
                raise ValueError("trained_betas must be a list of numbers or None")
            if len(tb) != self.num_train_timesteps:
                raise ValueError(f"trained_betas has {len(tb)} entries but "
                                 f"num_train_timesteps={self.num_train_timesteps}")

    @property
    def schedule(self) -> NoiseSchedule:
        """The noise schedule (its tables: `.schedule.tables`)."""
        return NoiseSchedule(**{k: getattr(self, k) for k in NOISE_SCHEDULE_KEYS})

    @classmethod
    def on_schedule(cls, schedule: NoiseSchedule, **values: Any):
        """This class's config on another config's noise schedule, with
        `values` and this class's defaults for the rest."""
        return cls(**schedule.config_keys(), **values)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        """Every key (the base classes' first), as JSON values (tuples as lists)."""
        return {f.name: _json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], ignore_siblings: bool = False):
        """The config with `values` over the defaults. Keys starting with "_"
        are ignored, and with ignore_siblings so are keys of the other
        schedulers' configs, as diffusers' from_config does (which is what
        makes `DDIMScheduler.from_config(ddpm.config)` work). Any other key
        this config lacks is an error."""
        own = cls.defaults()
        siblings = _keys_of_all_configs() if ignore_siblings else set()
        kwargs = {}
        for key in sorted(values):
            if key in own:
                kwargs[key] = values[key]
            elif not key.startswith("_") and key not in siblings:
                raise ValueError(f"unknown config key {key!r} for {cls._class_name}; allowed keys: {sorted(own)}")
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class SamplerConfig(SchedulerConfig):
    """The keys the five samplers' diffusers schedulers all have; a subclass
    adds its own and redeclares a key whose default differs (it keeps its place)."""

    _class_name: ClassVar[str] = "SamplerConfig"
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "thresholding": "dynamic thresholding is not implemented",
        "rescale_betas_zero_snr": "zero-terminal-SNR rescaling is not implemented",
    }

    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False

    def validate(self) -> None:
        """Checks of the keys every sampler has."""
        super().validate()
        check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_int("steps_offset", self.steps_offset, 0)
        check_float("dynamic_thresholding_ratio", self.dynamic_thresholding_ratio)
        check_float("sample_max_value", self.sample_max_value)


def _json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _keys_of_all_configs() -> set[str]:
    # the samplers' keys: RePaint's own (eta) stay unknown to them, so a stray
    # eta in a sampler's config is still an error
    return {f.name for c in SamplerConfig.__subclasses__() for f in dataclasses.fields(c)}


class ConfigMixin:
    """A scheduler's config handling. `class X(ConfigMixin, config=XConfig)`
    binds the config class; an instance holds its validated XConfig as
    `settings` and shows it diffusers' way as the `config` dict."""

    config_class: ClassVar[type[SchedulerConfig]]
    _class_name: ClassVar[str]
    _fields: ClassVar[dict[str, Any]]  # key -> default, for code that filters configs

    def __init_subclass__(cls, config: type[SchedulerConfig] | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if config is not None:
            cls.config_class, cls._class_name, cls._fields = config, config._class_name, config.defaults()

    def __init__(self, config: SchedulerConfig | None = None, **kwargs: Any):
        """X(XConfig(...)), or X(**keys) with the config's keys (keys
        starting with "_" are ignored; unknown keys are errors)."""
        if config is None:
            config = self.config_class.from_dict(kwargs)
        elif not isinstance(config, self.config_class):
            raise ValueError(f"{self._class_name} takes a {self.config_class.__name__}, "
                             f"got {type(config).__name__}")
        elif kwargs:
            raise ValueError(f"pass {self._class_name} a {self.config_class.__name__} or keywords, not both")
        self.settings = config

    @property
    def config(self) -> dict[str, Any]:
        """What diffusers writes to scheduler_config.json (less its version)."""
        return {"_class_name": self._class_name, **self.settings.to_dict()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any):
        """Build from a diffusers scheduler_config.json dict (see
        `SchedulerConfig.from_dict` for which keys are ignored)."""
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        return cls(cls.config_class.from_dict({**config, **overrides}, ignore_siblings=True))

    def __len__(self) -> int:
        return self.settings.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
