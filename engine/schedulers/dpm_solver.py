"""DPM-Solver++ multistep sampler (Lu et al. 2022), mirroring diffusers'
DPMSolverMultistepScheduler with algorithm_type="dpmsolver++".

Stateful: it keeps the last `solver_order` x0 predictions and a step
counter, so use one instance per sampling run; set_timesteps() resets it.
A run may start mid-schedule (image-to-image): set_begin_index(t_start), as
diffusers' img2img pipelines call it, or a first step() at that timestep.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .common import (
    NoiseSchedule, SchedulerOutput, as_f32, as_timestep, as_timestep_array, check_num_inference_steps, f32,
    per_sample,
)
from .config import ConfigMixin, SamplerConfig, check_bool, check_choice, check_float, check_int

# A DDPM config carries a fixed_* variance_type; diffusers' DPM ignores it.
_IGNORED_VARIANCE_TYPES = (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")


@lru_cache(maxsize=32)
def _vp_tables(schedule: NoiseSchedule):
    """sigma_t / alpha_t for every training step and lambda_t = log(alpha_t / sigma_t),
    float32 as diffusers builds them in __init__."""
    _, alphas_cumprod = schedule.tables
    one = np.float32(1.0)
    sigmas = np.sqrt((one - alphas_cumprod) / alphas_cumprod)
    lambdas = np.log(np.sqrt(alphas_cumprod)) - np.log(np.sqrt(one - alphas_cumprod))
    sigmas.setflags(write=False)
    lambdas.setflags(write=False)
    return sigmas, lambdas


def _alpha_sigma(sigma):
    """VP alpha_t, sigma_t from the VE-style sigma = sigma_t / alpha_t."""
    alpha_t = np.float32(1.0) / np.sqrt(sigma * sigma + np.float32(1.0))
    return alpha_t, sigma * alpha_t


def _lambda(alpha_t, sigma_t):
    with np.errstate(divide="ignore"):  # sigma_t == 0 at the final "zero" sigma: lambda = +inf
        return np.log(alpha_t) - np.log(sigma_t)


@dataclass(frozen=True)
class DPMSolverConfig(SamplerConfig):
    """diffusers' DPMSolverMultistepScheduler config: SamplerConfig's keys and these, in
    diffusers' relative order, with diffusers' defaults."""
    _class_name = "DPMSolverMultistepScheduler"
    UNSUPPORTED = {
        **SamplerConfig.UNSUPPORTED,
        "use_karras_sigmas": "only the plain sigma schedule is implemented",
        "use_exponential_sigmas": "only the plain sigma schedule is implemented",
        "use_beta_sigmas": "only the plain sigma schedule is implemented",
        "use_lu_lambdas": "only the plain sigma schedule is implemented",
        "use_flow_sigmas": "flow-matching models are not supported",
        "use_dynamic_shifting": "flow-matching models are not supported",
    }
    timestep_spacing: str = "linspace"  # differs from SamplerConfig's
    solver_order: int = 2
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_lu_lambdas: bool = False
    use_flow_sigmas: bool = False
    flow_shift: float = 1.0
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -float("inf")
    variance_type: str | None = None
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"

    def validate(self) -> None:
        super().validate()
        check_int("solver_order", self.solver_order, 1)
        if self.solver_order > 3:
            raise ValueError(f"solver_order must be 1, 2 or 3, got {self.solver_order}")
        # the SDE variants need noise per step and "dpmsolver" is deprecated upstream
        check_choice("algorithm_type", self.algorithm_type, ("dpmsolver++",))
        check_choice("solver_type", self.solver_type, ("midpoint", "heun"))
        check_choice("final_sigmas_type", self.final_sigmas_type, ("zero", "sigma_min"))
        check_bool("lower_order_final", self.lower_order_final)
        check_bool("euler_at_final", self.euler_at_final)
        check_float("lambda_min_clipped", self.lambda_min_clipped)
        check_float("flow_shift", self.flow_shift)
        if not isinstance(self.time_shift_type, str):
            raise ValueError(f"time_shift_type must be a string, got {self.time_shift_type!r}")
        if self.variance_type not in _IGNORED_VARIANCE_TYPES:
            raise ValueError(f"variance_type={self.variance_type!r} is not supported (learned variances "
                             "need a model with twice the channels); use None")


class DPMSolverMultistepScheduler(ConfigMixin, config=DPMSolverConfig):
    order = 1

    def __init__(self, config: DPMSolverConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        schedule = self.settings.schedule
        self.betas, self.alphas_cumprod = schedule.tables
        self._train_sigmas, self._train_lambdas = _vp_tables(schedule)

        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(self.settings.num_train_timesteps - 1, -1, -1, dtype=np.int64)
        self.sigmas: np.ndarray | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.model_outputs: list[np.ndarray | None] = [None] * self.settings.solver_order
        self.lower_order_nums = 0
        self.step_index: int | None = None
        self.begin_index: int | None = None  # set_begin_index's; set_timesteps clears it, as in diffusers

    def _timesteps(self, n: int) -> np.ndarray:
        """The timestep list for n steps, as diffusers spaces it; ValueError
        where that list would leave [0, T) or repeat a timestep."""
        cfg = self.settings
        T = cfg.num_train_timesteps
        # lambda_min_clipped trims the noisiest steps (useful for the cosine schedule)
        clipped = int(np.searchsorted(self._train_lambdas[::-1], cfg.lambda_min_clipped))
        last = T - clipped
        spacing = cfg.timestep_spacing
        if spacing == "linspace":
            ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif spacing == "leading":
            ts = (np.arange(n + 1) * (last // (n + 1))).round()[::-1][:-1].astype(np.int64)
            ts = ts + cfg.steps_offset
        else:  # trailing; the ratio uses T, not `last`, as in diffusers
            ts = np.arange(last, 0, -T / n).round().astype(np.int64) - 1
        if ts.size == 0 or ts.max() >= T or ts.min() < 0:
            raise ValueError(f"num_inference_steps={n} with timestep_spacing={spacing!r}, "
                             f"steps_offset={cfg.steps_offset} gives timesteps outside [0, {T - 1}]")
        if np.unique(ts).size != ts.size:
            # diffusers returns NaN (linspace) or raises IndexError (leading) here
            raise ValueError(f"num_inference_steps={n} with timestep_spacing={spacing!r} repeats timesteps")
        return ts

    @property
    def max_inference_steps(self) -> int:
        """The most steps this config can take without repeating a timestep
        (999 of 1000 for linspace or leading spacing): once a count repeats
        one, every larger count does, so a binary search finds it."""
        if getattr(self, "_max_steps", None) is None:
            lo, hi = 0, self.settings.num_train_timesteps
            while lo < hi:
                mid = (lo + hi + 1) // 2
                try:
                    self._timesteps(mid)
                    lo = mid
                except ValueError:
                    hi = mid - 1
            self._max_steps = lo
        return self._max_steps

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.settings
        n = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        try:
            ts = self._timesteps(n)
        except ValueError as e:
            raise ValueError(f"{e}; this config takes at most {self.max_inference_steps} steps") from None
        final = self._train_sigmas[0] if cfg.final_sigmas_type == "sigma_min" else np.float32(0.0)
        self.sigmas = np.append(self._train_sigmas[ts], final).astype(np.float32)
        self.timesteps = ts
        self.num_inference_steps = len(ts)
        self._reset_state()

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the run at timesteps[begin_index] (diffusers' set_begin_index,
        which its img2img pipelines call with img2img_start's t_start): the
        first step() is taken there, first order, with no earlier outputs.
        After set_timesteps(), which clears it; diffusers ignores the first
        step's timestep then, here it must be timesteps[begin_index]."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before set_begin_index()")
        if self.step_index is not None:
            raise ValueError("set_begin_index() must come before the first step()")
        check_int("begin_index", begin_index, 0, len(self.timesteps) - 1)
        self.begin_index = int(begin_index)

    def scale_model_input(self, sample, timestep=None) -> np.ndarray:
        return as_f32(sample, "sample")

    def _first_index(self, t: int) -> int:
        if self.begin_index is None:
            return self._index_of(t)
        if t != self.timesteps[self.begin_index]:
            # diffusers would step from begin_index whatever t says
            raise ValueError(f"timestep {t} is not timesteps[begin_index={self.begin_index}] = "
                             f"{int(self.timesteps[self.begin_index])}, where set_begin_index() starts the run")
        return self.begin_index

    def _index_of(self, t: int) -> int:
        (where,) = np.nonzero(self.timesteps == t)
        if where.size == 0:
            # diffusers silently falls back to the last step here
            raise ValueError(f"timestep {t} is not in this scheduler's timesteps; "
                             "pass a value from scheduler.timesteps")
        return int(where[0])

    def _to_x0(self, model_output, sample):
        """DPM-Solver++ integrates the data prediction: turn the model output into x0."""
        alpha_t, sigma_t = _alpha_sigma(self.sigmas[self.step_index])
        pt = self.settings.prediction_type
        if pt == "epsilon":
            return (sample - sigma_t * model_output) / alpha_t
        if pt == "v_prediction":
            return alpha_t * sample - sigma_t * model_output
        return model_output.copy()  # sample

    def step(self, model_output, timestep, sample, generator: np.random.Generator | None = None,
             variance_noise: np.ndarray | None = None) -> SchedulerOutput:
        """One solver step. `generator`/`variance_noise` are accepted for a
        uniform API; the deterministic dpmsolver++ never uses noise. As in
        diffusers, only the first call's timestep matters (it sets the
        position, so a run may start mid-schedule); later calls advance an
        internal counter. After set_begin_index() the first timestep must
        be the one it names."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step()")
        cfg = self.settings
        model_output = as_f32(model_output, "model_output")
        sample = as_f32(sample, "sample")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} != sample shape {sample.shape}")
        if self.step_index is None:
            self.step_index = self._first_index(as_timestep(timestep, cfg.num_train_timesteps))
        n, i = len(self.timesteps), self.step_index
        if i >= n:
            raise ValueError("all timesteps have been stepped; call set_timesteps() to start a new run")

        # Lower orders at the end improve stability for short schedules; with a
        # zero final sigma the last step is always first order.
        final_first_order = i == n - 1 and (
            cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero")
        final_second_order = i == n - 2 and cfg.lower_order_final and n < 15

        x0 = self._to_x0(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [x0]

        order = cfg.solver_order
        if order == 1 or self.lower_order_nums < 1 or final_first_order:
            prev_sample = self._first_order(x0, sample)
        elif order == 2 or self.lower_order_nums < 2 or final_second_order:
            prev_sample = self._second_order(sample)
        else:
            prev_sample = self._third_order(sample)
        self.lower_order_nums = min(self.lower_order_nums + 1, order)
        self.step_index += 1
        return SchedulerOutput(prev_sample.astype(np.float32, copy=False), x0.astype(np.float32, copy=False))

    # The updates below are formulas from the DPM-Solver++ paper
    # (arXiv:2211.01095); scalars stay float32 like diffusers' tensors.
    def _points(self, k: int):
        """(alpha, sigma, lambda) at the target and the k previous points."""
        i = self.step_index
        pts = [_alpha_sigma(self.sigmas[j]) for j in [i + 1] + [i - m for m in range(k)]]
        return [(a, s, _lambda(a, s)) for a, s in pts]

    def _first_order(self, x0, sample):
        (alpha_t, sigma_t, lam_t), (_, sigma_s, lam_s) = self._points(1)
        h = lam_t - lam_s
        return (sigma_t / sigma_s) * sample - (alpha_t * (np.exp(-h) - f32(1.0))) * x0

    def _second_order(self, sample):
        (alpha_t, sigma_t, lam_t), (_, sigma_s0, lam_s0), (_, _, lam_s1) = self._points(2)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lam_t - lam_s0, lam_s0 - lam_s1
        r0 = h_0 / h
        d0, d1 = m0, (f32(1.0) / r0) * (m0 - m1)
        phi = alpha_t * (np.exp(-h) - f32(1.0))
        out = (sigma_t / sigma_s0) * sample - phi * d0
        if self.settings.solver_type == "midpoint":
            return out - (f32(0.5) * phi) * d1
        return out + (alpha_t * ((np.exp(-h) - f32(1.0)) / h + f32(1.0))) * d1  # heun

    def _third_order(self, sample):
        (alpha_t, sigma_t, lam_t), (_, sigma_s0, lam_s0), (_, _, lam_s1), (_, _, lam_s2) = self._points(3)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lam_t - lam_s0, lam_s0 - lam_s1, lam_s1 - lam_s2
        r0, r1 = h_0 / h, h_1 / h
        one = f32(1.0)
        d1_0, d1_1 = (one / r0) * (m0 - m1), (one / r1) * (m1 - m2)
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (one / (r0 + r1)) * (d1_0 - d1_1)
        em1 = np.exp(-h) - one
        return ((sigma_t / sigma_s0) * sample - (alpha_t * em1) * m0
                + (alpha_t * (em1 / h + one)) * d1
                - (alpha_t * ((em1 + h) / (h * h) - f32(0.5))) * d2)

    def add_noise(self, original_samples, noise, timesteps) -> np.ndarray:
        """Noise to the level of listed timesteps, using this schedule's sigmas
        (diffusers' DPM add_noise). Requires set_timesteps(); a timestep not in
        the list is an error (diffusers silently uses the last step's sigma,
        and before set_timesteps it reads the sigma table backwards). Each
        sample takes its own timestep's sigma: once set_begin_index() ran,
        diffusers takes begin_index's (or, after a step, step_index's) for
        all, the same sigma for the timestep its img2img and inpainting
        pipelines pass."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before add_noise()")
        x0 = as_f32(original_samples, "original_samples")
        noise = as_f32(noise, "noise")
        ts = as_timestep_array(timesteps, self.settings.num_train_timesteps)
        sigma = self.sigmas[[self._index_of(int(t)) for t in ts]]
        alpha_t, sigma_t = _alpha_sigma(sigma)
        return per_sample(alpha_t, x0.ndim) * x0 + per_sample(sigma_t, x0.ndim) * noise

