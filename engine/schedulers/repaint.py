"""RePaint inpainting (Lugmayr et al. 2022, "RePaint: Inpainting using
Denoising Diffusion Probabilistic Models"), mirroring diffusers' RePaintScheduler.

At each step down the unknown region (mask 0) takes the model's DDIM-form
step (`eta` 0 deterministic, 1 DDPM-like) and the known region (mask 1, as in
diffusers) is the original image noised to the same level, with the same
draw of noise. So that the two regions agree, the schedule goes back up
`jump_length` steps (`undo_step`: noising the sample forward, no model) and
comes down again, `jump_n_sample` times in all at every jump point.

The model predicts noise (epsilon), as diffusers' RePaint assumes: its config
has no prediction_type. A run, as diffusers' RePaintPipeline makes it:

    for i, t in enumerate(scheduler.timesteps):
        if scheduler.is_up(i):
            x = scheduler.undo_step(x, scheduler.timesteps[i - 1], generator)
        else:
            x = scheduler.step(unet(x, t), t, x, original, mask, generator).prev_sample
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .common import SchedulerOutput, as_f32, as_timestep, check_eta, check_num_inference_steps, draw_noise, f32
from .config import ConfigMixin, SchedulerConfig, check_bool, check_int

JUMP_LENGTH = 10     # diffusers' set_timesteps defaults (and the paper's j = r = 10)
JUMP_N_SAMPLE = 10
# Each entry of the list is a model call or an undo: a million is 8 MB of
# timesteps and days of UNet calls; more is a typo, refused before building it.
MAX_TIMESTEPS = 1_000_000


@dataclass(frozen=True)
class RePaintConfig(SchedulerConfig):
    """diffusers' RePaintScheduler config: the noise schedule's keys and
    these, with diffusers' defaults (diffusers writes eta before trained_betas)."""
    _class_name = "RePaintScheduler"
    eta: float = 0.0
    clip_sample: bool = True

    def validate(self) -> None:
        super().validate()
        check_eta(self.eta)   # above 1 the step's variance exceeds what it leaves room for (NaN)
        check_bool("clip_sample", self.clip_sample)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], ignore_siblings: bool = False):
        """As SchedulerConfig.from_dict; a sibling's prediction_type other than
        epsilon is an error (diffusers would ignore it and misread the model)."""
        pt = values.get("prediction_type", "epsilon")
        if pt != "epsilon":
            raise ValueError(f"RePaint steps an epsilon-prediction model only, got prediction_type={pt!r}")
        return super().from_dict(values, ignore_siblings)


def _jump_counts(num_inference_steps: Any, jump_length: Any, jump_n_sample: Any) -> tuple[int, int]:
    """(model steps, undo steps) of diffusers' schedule, or ValueError for
    bad arguments or a list longer than MAX_TIMESTEPS. Every jump point (each
    multiple of jump_length below n - jump_length) sends the run jump_length
    steps up, and so as many down again, jump_n_sample - 1 times."""
    check_int("num_inference_steps", num_inference_steps, 1)
    check_int("jump_length", jump_length, 1)
    check_int("jump_n_sample", jump_n_sample, 1)
    n, jl, jn = int(num_inference_steps), int(jump_length), int(jump_n_sample)
    undos = len(range(0, n - jl, jl)) * (jn - 1) * jl
    if n + 2 * undos > MAX_TIMESTEPS:
        raise ValueError(f"num_inference_steps={n}, jump_length={jl}, jump_n_sample={jn} make "
                         f"{n + 2 * undos} timesteps, more than {MAX_TIMESTEPS}")
    return n + undos, undos


def _jump_schedule(n: int, jump_length: int, jump_n_sample: int) -> np.ndarray:
    """diffusers' set_timesteps loop, in inference-step units: down one at a
    time, and at each jump point back up jump_length, jump_n_sample - 1 times."""
    jumps = {j: jump_n_sample - 1 for j in range(0, n - jump_length, jump_length)}
    out, t = [], n
    while t >= 1:
        t -= 1
        out.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                out.append(t)
    return np.array(out, dtype=np.int64)


class RePaintScheduler(ConfigMixin, config=RePaintConfig):
    order = 1

    def __init__(self, config: RePaintConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        cfg = self.settings
        self.betas, self.alphas_cumprod = cfg.schedule.tables
        self.final_alpha_cumprod = f32(1.0)   # abar "before" timestep 0
        self.init_noise_sigma = 1.0
        self.eta = cfg.eta
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(cfg.num_train_timesteps - 1, -1, -1, dtype=np.int64)
        self._up = np.zeros(len(self.timesteps), dtype=bool)

    @staticmethod
    def model_steps(num_inference_steps: int, jump_length: int = JUMP_LENGTH,
                    jump_n_sample: int = JUMP_N_SAMPLE) -> int:
        """The UNet evaluations a run costs: its steps down (set_timesteps'
        list less its undo entries), n + jumps * (jump_n_sample - 1) * jump_length."""
        return _jump_counts(num_inference_steps, jump_length, jump_n_sample)[0]

    def set_timesteps(self, num_inference_steps: int, jump_length: int = JUMP_LENGTH,
                      jump_n_sample: int = JUMP_N_SAMPLE) -> None:
        """diffusers' list: n steps down by T // n, going back up jump_length
        steps at each jump point. n above num_train_timesteps is an error
        (diffusers lowers it to T)."""
        cfg = self.settings
        n = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        _jump_counts(n, jump_length, jump_n_sample)
        steps = _jump_schedule(n, int(jump_length), int(jump_n_sample))
        self.num_inference_steps = n
        self.timesteps = steps * (cfg.num_train_timesteps // n)
        self._up = np.concatenate([[False], steps[1:] > steps[:-1]])

    def is_up(self, i: int) -> bool:
        """Whether entry i of `timesteps` goes back up: an undo_step from
        timesteps[i - 1] (no UNet), not a step(). diffusers' pipeline tells
        the same by the entry not being below the one before."""
        check_int("i", i, 0, len(self.timesteps) - 1)
        return bool(self._up[i])

    def scale_model_input(self, sample, timestep=None) -> np.ndarray:
        return as_f32(sample, "sample")

    def _step_size(self) -> int:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step() or undo_step()")
        return self.settings.num_train_timesteps // self.num_inference_steps

    def step(self, model_output, timestep, sample, original_image, mask,
             generator: np.random.Generator | None = None,
             variance_noise: np.ndarray | None = None) -> SchedulerOutput:
        """One step down from `timestep` (T // n training steps). One draw of
        noise of the sample's shape, every step (as diffusers, even where it
        is not used): the known part's, and the unknown part's variance with
        eta > 0. `mask` (1 keep, 0 inpaint, in [0, 1]) may broadcast over
        the sample, as a (B, 1, H, W) mask does over channels. At timestep 0
        the known region is `original_image` exactly. Returns (prev_sample,
        pred_original_sample)."""
        cfg = self.settings
        k = self._step_size()
        model_output, sample, original_image, mask = self._step_inputs(model_output, sample, original_image, mask)
        t = as_timestep(timestep, cfg.num_train_timesteps)
        prev_t = t - k

        # float32 scalars in diffusers' order of operations (see ddpm.py)
        one = f32(1.0)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = one - alpha_prod_t

        x0 = (sample - np.sqrt(beta_prod_t) * model_output) / np.sqrt(alpha_prod_t)
        if cfg.clip_sample:
            x0 = np.clip(x0, f32(-1.0), f32(1.0))
        noise = draw_noise(model_output.shape, generator, variance_noise)

        # the unknown region: DDIM's formula 12 with sigma_t(eta) of formula 16
        variance = ((one - alpha_prod_prev) / beta_prod_t) * (one - alpha_prod_t / alpha_prod_prev)
        std_dev = f32(self.eta) * np.sqrt(variance)
        direction = np.sqrt(one - alpha_prod_prev - std_dev ** 2) * model_output
        unknown = np.sqrt(alpha_prod_prev) * x0 + direction
        if t > 0 and self.eta > 0:
            unknown = unknown + std_dev * noise
        # the known region: q(x_prev | x0) of the original (Algorithm 1, line 5)
        known = np.sqrt(alpha_prod_prev) * original_image + np.sqrt(one - alpha_prod_prev) * noise
        prev_sample = mask * known + (one - mask) * unknown
        return SchedulerOutput(prev_sample.astype(np.float32, copy=False), x0.astype(np.float32, copy=False))

    @staticmethod
    def _step_inputs(model_output, sample, original_image, mask):
        model_output = as_f32(model_output, "model_output")
        sample = as_f32(sample, "sample")
        original_image = as_f32(original_image, "original_image")
        mask = as_f32(mask, "mask")
        for name, a in (("model_output", model_output), ("original_image", original_image)):
            if a.shape != sample.shape:
                raise ValueError(f"{name} shape {a.shape} != sample shape {sample.shape}")
        try:
            fits = np.broadcast_shapes(mask.shape, sample.shape) == sample.shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"mask shape {mask.shape} does not broadcast to sample shape {sample.shape}")
        if not np.all(np.isfinite(original_image)):
            raise ValueError("original_image has non-finite values")
        if not np.all((mask >= 0) & (mask <= 1)):   # NaN fails too
            raise ValueError("mask values must be in [0, 1] (1 keeps the original pixel, 0 inpaints)")
        return model_output, sample, original_image, mask

    def undo_step(self, sample, timestep, generator: np.random.Generator | None = None,
                  noise: np.ndarray | None = None) -> np.ndarray:
        """The jump back up: noise `sample`, at level `timestep` (the entry
        before an is_up one, as diffusers' pipeline passes it), forward by
        T // n training steps, x <- sqrt(1 - beta) x + sqrt(beta) z, one
        draw of the sample's shape per training step (as diffusers).
        `noise`, instead of the generator: all of them, (T // n, *shape)."""
        cfg = self.settings
        k = self._step_size()
        sample = as_f32(sample, "sample")
        t = as_timestep(timestep, cfg.num_train_timesteps)
        if t + k >= cfg.num_train_timesteps:
            raise ValueError(f"undo_step from timestep {t} would go {k} steps up to {t + k}, "
                             f"past num_train_timesteps - 1 = {cfg.num_train_timesteps - 1}")
        z = draw_noise((k, *sample.shape), generator, noise, name="noise")
        one = f32(1.0)
        for i in range(k):
            beta = self.betas[t + i]
            sample = np.sqrt(one - beta) * sample + np.sqrt(beta) * z[i]
        return sample.astype(np.float32, copy=False)
