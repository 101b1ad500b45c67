"""Class-conditional sampling with classifier-free guidance.

A `Trajectory` is one image's denoising run: its own label, scheduler state,
seeded generator and x_t. `DigitPipeline.step(trajectories)` advances any set
of trajectories by one step with ONE batched UNet forward (conditional and
unconditional rows together), whatever their timesteps, schedulers or
lengths. The CLI's generator below, the evaluation and the service's
continuous-batching worker are all loops around that one method, so a seeded
image is the same alone or batched with others.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .io import WeightsError, read_json
from .models.runner import InferenceRunner
from .models.unet_2d import UNet2DModel
from .blend import BlendedNoise, class_weights, slerp
from .schedulers import (CONSISTENCY_CLASSES, ETA_SAMPLERS, SAMPLERS_FOR, STEP_OPTIONS, RePaintScheduler,
                         SchedulerConfig, SchedulerOutput, check_eta, img2img_start)
from .schedulers import SCHEDULERS as SCHEDULER_CLASSES

SCHEDULERS = SAMPLERS_FOR["DDPMScheduler"]  # the samplers of a diffusion model
# repaint's resampling by default: every JUMP_LENGTH steps, go back up and redo them JUMP_N_SAMPLE times
# in all (diffusers' defaults are 10 and 10 at 250 steps; chosen for the service by the inpainting eval)
JUMP_LENGTH, JUMP_N_SAMPLE = 5, 3
MAX_JUMPS = 50
SEED_MAX = 2**32 - 1  # seeds are unsigned 32-bit: the service's bound, and where image_seeds wraps


def image_seeds(seed: int, n: int) -> list[int]:
    """The seeds of a request's n images: image i uses (seed + i) mod 2^32, so
    each is itself a valid seed that gives that image alone (n=1)."""
    return [(seed + i) % (SEED_MAX + 1) for i in range(n)]


class InvalidParameter(ValueError):
    """A sampling parameter the loaded model cannot take; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class SamplingDefaults:
    """The model's sampling defaults, from model_index.json's "digitgen" section."""
    scheduler: str = "dpm"
    num_inference_steps: int = 20
    guidance_scale: float = 2.0
    null_class_label: int | None = None   # None: the model's (UNet2DConfig.null_class_label)
    distilled_guidance_scale: float | None = None  # a student with its teacher's guidance built in
    # hand-picked timesteps of the default scheduler by step count, e.g. {"4": [999, 539, 259, 79]}
    # (a student's tuned schedule; other step counts are evenly spaced)
    timesteps: dict[str, list[int]] | None = None
    # the tcd sampler's eta (diffusers' TCDScheduler.step(eta=...)); None: diffusers' default
    eta: float | None = None


@dataclass(frozen=True)
class Sampling:
    """How one image is sampled, resolved against a model: defaults filled
    in and every limit checked (DigitPipeline.resolve)."""
    label: int
    steps: int
    scheduler: str
    guidance_scale: float
    timesteps: tuple[int, ...] | None = None  # the scheduler's own spacing when None
    eta: float | None = None  # the fresh noise a step adds, for ETA_SAMPLERS; None for the others
    # image-to-image: the share of the schedule run from the given image (None: from pure noise)
    strength: float | None = None
    inpaint: bool = False     # keep the given image's pixels where the mask says (repaint on a diffusion model)
    jumps: tuple[int, int] | None = None  # repaint's (jump_length, jump_n_sample)
    evaluations: int = 0      # UNet evaluations a trajectory takes (0: steps); what it costs and how many frames

    @property
    def step_arguments(self) -> dict:
        """The scheduler's step() keyword arguments: its sampler's fixed
        STEP_OPTIONS and this request's eta."""
        options = dict(STEP_OPTIONS.get(self.scheduler, {}))
        if self.eta is not None:
            options["eta"] = self.eta
        return options

    @property
    def model_steps(self) -> int:
        """The steps that evaluate the UNet: its frames and its cost."""
        return self.evaluations or self.steps

    @property
    def unet_rows(self) -> int:
        """UNet rows per step: 2 with classifier-free guidance (conditional and
        unconditional), 1 for the conditional model alone (guidance 1)."""
        return 1 if self.guidance_scale == 1.0 else 2


@dataclass
class StepResult:
    step: int              # 1-based index of the step just taken
    total: int
    timestep: int          # the timestep the model saw on this step
    sample: np.ndarray     # x_{t-1}: (C, H, W), the new noisy image
    pred_original: np.ndarray  # the model's current estimate of x_0, (C, H, W)

    @property
    def done(self) -> bool:
        return self.step == self.total


@dataclass
class Trajectory:
    """One image's denoising run: what was asked, and where it has got to."""
    sampling: Sampling
    seed: int
    scheduler: object                        # its own scheduler instance (state, timesteps)
    generator: np.random.Generator           # its own noise
    sample: np.ndarray                       # current x_t, (1, C, H, W)
    index: int = 0                           # UNet steps taken so far
    cursor: int = 0                          # where it is in scheduler.timesteps (repaint's jumps, img2img's start)
    source: np.ndarray | None = field(default=None, repr=False)  # image-to-image / inpainting: (1, C, H, W)
    keep: np.ndarray | None = field(default=None, repr=False)    # inpainting: 1 where the source is kept
    class_weights: np.ndarray | None = field(default=None, repr=False)  # a morph's mix of two labels
    latest: StepResult | None = field(default=None, repr=False)  # the last step's result

    @property
    def steps(self) -> int:
        return self.sampling.model_steps

    @property
    def done(self) -> bool:
        return self.index >= self.steps

    @property
    def timestep(self) -> int:
        return int(self.scheduler.timesteps[self.cursor])


class DigitPipeline:
    def __init__(self, unet: UNet2DModel, scheduler_config: dict, defaults: SamplingDefaults | None = None):
        self.unet = unet.eval().precompute_for_inference()  # inference only: derived weights computed once
        self.run_unet = InferenceRunner(self.unet)           # large batches in per-thread shards
        self.scheduler_config = dict(scheduler_config)
        self.scheduler_class = self.scheduler_config.get("_class_name", "DDPMScheduler")
        if self.scheduler_class not in SAMPLERS_FOR:
            raise WeightsError(f"scheduler class {self.scheduler_class!r} is not supported; "
                               f"choose one of {sorted(SAMPLERS_FOR)}")
        self.samplers = SAMPLERS_FOR[self.scheduler_class]
        # validated once, here: every trajectory's scheduler is made from these
        self.sampler_configs = _sampler_configs(self.scheduler_config, self.scheduler_class, self.samplers)
        self.defaults = defaults or SamplingDefaults()
        if self.defaults.null_class_label is None:
            self.defaults = dataclasses.replace(self.defaults, null_class_label=unet.config.null_class_label)
        n_classes = unet.config.num_class_embeds
        if not n_classes or self.defaults.null_class_label is None or \
                not 0 <= self.defaults.null_class_label < n_classes:
            raise WeightsError(f"null_class_label {self.defaults.null_class_label} is not a class of the model "
                               f"(num_class_embeds={n_classes})")
        self.num_labels = self.defaults.null_class_label  # labels 0..null-1 are digits
        c = unet.config
        size = c.sample_size if isinstance(c.sample_size, int) else 28
        self.sample_shape = (c.in_channels, size, size)
        self.max_steps = {name: _max_steps(self._scheduler(name)) for name in self.samplers}
        self.default_etas = self._default_etas()
        if not isinstance(self.defaults.timesteps, (dict, type(None))):
            raise WeightsError(f"model_index.json's timesteps must map step counts to lists, "
                               f"got {self.defaults.timesteps!r}")
        try:  # the defaults must themselves be a valid request, or every request fails later
            self.resolve(0)
        except InvalidParameter as e:
            raise WeightsError(f"model_index.json's sampling default is invalid: {e}") from None
        self._check_timesteps()

    def _default_etas(self) -> dict[str, float]:
        """The eta of a request that gives none, by sampler of this model that
        takes one: model_index.json's `eta` for tcd, else the class's DEFAULT_ETA."""
        etas = {name: SCHEDULER_CLASSES[name].DEFAULT_ETA for name in ETA_SAMPLERS if name in self.samplers}
        if self.defaults.eta is not None:
            try:
                tuned = check_eta(self.defaults.eta)
            except ValueError as e:
                raise WeightsError(f"model_index.json's {e}") from None
            if "tcd" in etas:
                etas["tcd"] = tuned
        return etas

    def _check_timesteps(self) -> None:
        """Each tuned schedule must be one the default scheduler takes, of its key's length."""
        for key, ts in (self.defaults.timesteps or {}).items():
            where = f"model_index.json's timesteps[{key!r}]"
            if not isinstance(ts, list) or not key.isdigit() or int(key) != len(ts):
                raise WeightsError(f"{where} must be a list of {key} timesteps, got {ts!r}")
            if int(key) > self.max_steps[self.defaults.scheduler]:
                raise WeightsError(f"{where}: more steps than scheduler {self.defaults.scheduler} takes")
            try:  # resolve checks a hand-picked schedule against the scheduler
                self.resolve(0, int(key), timesteps=ts)
            except InvalidParameter as e:
                raise WeightsError(f"{where}: {e}") from None

    # -- loading -----------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "DigitPipeline":
        """folder/unet (diffusers layout), folder/scheduler/scheduler_config.json
        and folder/model_index.json (with our sampling defaults)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise WeightsError(f"weights folder not found: {folder}")
        unet = UNet2DModel.from_pretrained(folder / "unet")
        sched = read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config")
        index = read_json(folder / "model_index.json", "model index")
        try:
            defaults = SamplingDefaults(**index.get("digitgen", {}))
        except TypeError as e:
            raise WeightsError(f"{folder / 'model_index.json'}: bad 'digitgen' section: {e}") from None
        try:
            return cls(unet, sched, defaults)
        except ValueError as e:  # the scheduler config (the defaults raise WeightsError themselves)
            raise WeightsError(f"scheduler config {folder / 'scheduler'} is invalid: {e}") from None

    def save_pretrained(self, folder: str | Path, unet_state: dict | None = None) -> None:
        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet", state=unet_state)
        (folder / "scheduler").mkdir(parents=True, exist_ok=True)
        sched = {"_class_name": self.scheduler_class, **{k: v for k, v in self.scheduler_config.items()
                                                         if not k.startswith("_")}}
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2) + "\n")
        index = {"_class_name": "DigitPipeline", "unet": ["diffusers", "UNet2DModel"],
                 "scheduler": ["diffusers", self.scheduler_class], "digitgen": vars(self.defaults)}
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    # -- trajectories --------------------------------------------------------
    def _scheduler(self, name: str):
        """A fresh scheduler for sampler `name` (or "repaint", a diffusion
        model's inpainting), from its config checked at load."""
        return (RePaintScheduler if name == "repaint" else SCHEDULER_CLASSES[name])(self.sampler_configs[name])

    def resolve(self, label: int, steps: int | None = None, scheduler: str | None = None,
                guidance_scale: float | None = None, timesteps=None, eta: float | None = None,
                strength: float | None = None, inpaint: bool = False, jump_length: int | None = None,
                jump_n_sample: int | None = None) -> Sampling:
        """The one place sampling parameters meet the model: defaults filled
        in, then label, sampler, step count, guidance and eta checked against it.
        `timesteps`, a hand-picked schedule (lcm and tcd only), sets the step count.
        `strength` (image-to-image) and `inpaint` (with its resampling jumps on
        a diffusion model) say how the run starts and what it costs.
        Raises InvalidParameter naming the field."""
        d = self.defaults
        name = d.scheduler if scheduler is None else scheduler
        if timesteps is not None and strength is not None:
            raise InvalidParameter("strength", "strength picks the timesteps itself: give no hand-picked ones")
        if timesteps is not None:
            if steps is not None and steps != len(timesteps):
                raise InvalidParameter("timesteps", f"{len(timesteps)} timesteps given for {steps} steps")
            steps = len(timesteps)
        steps = d.num_inference_steps if steps is None else steps
        g = d.guidance_scale if guidance_scale is None else guidance_scale
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < self.num_labels:
            raise InvalidParameter("label", f"label must be an integer 0-{self.num_labels - 1}, got {label!r}")
        if name not in self.samplers:
            raise InvalidParameter("scheduler", f"scheduler must be one of {', '.join(self.samplers)} for this "
                                                f"model, got {name!r}")
        top = self.max_steps[name]
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= top:
            raise InvalidParameter("steps", f"steps must be an integer 1-{top} with scheduler {name}, got {steps!r}")
        if isinstance(g, bool) or not isinstance(g, (int, float, np.floating)) or not np.isfinite(g) or g < 0:
            raise InvalidParameter("guidance_scale", f"guidance_scale must be a finite number >= 0, got {g!r}")
        if d.distilled_guidance_scale is not None and g != 1.0:
            # the student learned the guided teacher; it has no unconditional row to guide with
            raise InvalidParameter("guidance_scale", f"this model has guidance {d.distilled_guidance_scale:g} "
                                                     f"built in: guidance_scale must be 1 (or left out), got {g!r}")
        eta = self._resolve_eta(name, eta)
        if timesteps is not None:
            try:
                self._scheduler(name).set_timesteps(timesteps=list(timesteps))
            except TypeError:
                raise InvalidParameter("timesteps", f"scheduler {name} takes no hand-picked timesteps") from None
            except ValueError as e:
                raise InvalidParameter("timesteps", str(e)) from None
        else:
            timesteps = (d.timesteps or {}).get(str(int(steps))) if name == d.scheduler else None
        plain = Sampling(int(label), int(steps), name, float(g),
                         None if timesteps is None else tuple(int(t) for t in timesteps), eta)
        return self._resolve_edit(plain, scheduler, strength, inpaint, jump_length, jump_n_sample)

    def _resolve_edit(self, sampling: Sampling, scheduler: str | None, strength, inpaint: bool, jump_length,
                      jump_n_sample) -> Sampling:
        """Image-to-image and inpainting on top of a resolved sampling."""
        consistency = self.scheduler_class in CONSISTENCY_CLASSES
        if (jump_length is not None or jump_n_sample is not None) and (not inpaint or consistency):
            field = "jump_length" if jump_length is not None else "jump_n_sample"
            raise InvalidParameter(field, f"{field} is repaint's, for inpainting (a mask) with a diffusion model")
        if strength is not None:
            if inpaint:
                raise InvalidParameter("strength", "strength is for image-to-image without a mask; inpainting "
                                                   "starts from noise and keeps the unmasked pixels")
            return self._resolve_strength(sampling, strength, consistency)
        if not inpaint:
            return sampling
        if consistency:
            return dataclasses.replace(sampling, inpaint=True)
        if scheduler is not None:
            raise InvalidParameter("scheduler", "inpainting on this model samples with repaint (RePaint's "
                                                "resampling of the known region): leave scheduler out")
        jumps = (JUMP_LENGTH if jump_length is None else jump_length,
                 JUMP_N_SAMPLE if jump_n_sample is None else jump_n_sample)
        for field, value in zip(("jump_length", "jump_n_sample"), jumps):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_JUMPS:
                raise InvalidParameter(field, f"{field} must be an integer 1-{MAX_JUMPS}, got {value!r}")
        if sampling.eta is not None:
            raise InvalidParameter("eta", "inpainting on this model samples with repaint, which takes no eta")
        evaluations = RePaintScheduler.model_steps(sampling.steps, *jumps)
        return dataclasses.replace(sampling, scheduler="repaint", inpaint=True, jumps=tuple(int(j) for j in jumps),
                                   evaluations=evaluations)

    def _resolve_strength(self, sampling: Sampling, strength, consistency: bool) -> Sampling:
        if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)) \
                or not 0 < strength <= 1:
            raise InvalidParameter("strength", f"strength must be a number in (0, 1], got {strength!r}")
        strength = float(strength)
        if not consistency:
            runs = sampling.steps - img2img_start(sampling.steps, strength)
            if runs < 1:
                raise InvalidParameter("strength", f"strength {strength:g} of {sampling.steps} steps runs no step "
                                                   f"(image-to-image runs int(steps x strength)): raise either")
            return dataclasses.replace(sampling, strength=strength, evaluations=runs)
        try:  # the shortened distillation grid must still hold `steps` points
            self._scheduler(sampling.scheduler).set_timesteps(sampling.steps, strength=strength)
        except ValueError as e:
            raise InvalidParameter("strength", str(e)) from None
        return dataclasses.replace(sampling, strength=strength, timesteps=None)

    def _resolve_eta(self, name: str, eta) -> float | None:
        """Sampler `name`'s eta: the one given, checked, else its default;
        None for a sampler that takes none."""
        if name not in ETA_SAMPLERS:
            if eta is not None:
                raise InvalidParameter("eta", f"eta is taken only by the {' and '.join(ETA_SAMPLERS)} samplers; "
                                              f"scheduler {name} has none, got eta={eta!r}")
            return None
        if eta is None:
            return self.default_etas[name]
        try:
            return check_eta(eta)
        except ValueError as e:
            raise InvalidParameter("eta", str(e)) from None

    def start(self, sampling: Sampling, seed: int, source: np.ndarray | None = None, mask: np.ndarray | None = None,
              blend: tuple[int, int, float] | None = None) -> Trajectory:
        """A trajectory at its first timestep, drawn from its own generator
        seeded with `seed` (the same first draw whatever else is asked):
        pure noise; or, image-to-image (sampling.strength), `source` (1, C, H,
        W) in [-1, 1] noised to where the shortened schedule starts; or,
        inpainting (sampling.inpaint), pure noise and `mask` (1, H, W) with 1
        where the model draws; or, a morph's frame, `blend` = (seed_b, label_b,
        alpha): the noise slerped toward seed_b's and the class embedding mixed
        toward label_b's (engine/blend.py)."""
        sched = self._scheduler("repaint" if sampling.jumps else sampling.scheduler)
        gen = np.random.default_rng(seed)
        shape = (1, *self.sample_shape)
        noise = gen.standard_normal(shape, dtype=np.float32)
        weights = None
        if blend is not None:
            seed_b, label_b, alpha = blend
            gen_b = np.random.default_rng(seed_b)
            noise = slerp(noise, gen_b.standard_normal(shape, dtype=np.float32), alpha)
            gen = BlendedNoise(gen, gen_b, alpha)
            weights = class_weights(sampling.label, label_b, alpha, self.unet.config.num_class_embeds)
        cursor = self._set_timesteps(sched, sampling)
        if sampling.strength is not None:
            x = sched.add_noise(source, noise, np.array([int(sched.timesteps[cursor])]))
        else:
            x = noise * np.float32(sched.init_noise_sigma)
        keep = None if mask is None else (np.float32(1) - mask.astype(np.float32))[None]
        return Trajectory(sampling, seed, sched, gen, x.astype(np.float32, copy=False), cursor=cursor,
                          source=None if source is None else source.astype(np.float32).reshape(shape), keep=keep,
                          class_weights=weights)

    def _set_timesteps(self, sched, sampling: Sampling) -> int:
        """The scheduler's timesteps for this sampling; returns where the run starts in them."""
        if sampling.jumps:
            sched.set_timesteps(sampling.steps, *sampling.jumps)
            return 0
        consistency = sampling.scheduler in SAMPLERS_FOR["LCMScheduler"]
        kwargs = {"strength": sampling.strength} if consistency and sampling.strength is not None else {}
        if sampling.timesteps is None:
            sched.set_timesteps(sampling.steps, **kwargs)
        else:
            sched.set_timesteps(timesteps=list(sampling.timesteps))
        if consistency or sampling.strength is None:
            return 0
        start = img2img_start(sampling.steps, sampling.strength)  # diffusers' img2img: skip the noisiest steps
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start)
        return start

    def trajectory(self, label: int, seed: int, steps: int | None = None, scheduler: str | None = None,
                   guidance_scale: float | None = None, timesteps=None, eta: float | None = None) -> Trajectory:
        return self.start(self.resolve(label, steps, scheduler, guidance_scale, timesteps, eta), seed)

    def step(self, trajectories: list[Trajectory]) -> list[StepResult]:
        """Advance every unfinished trajectory by one UNet step, with one UNet
        forward over all of them (repaint's jumps back up, which take none,
        are made first)."""
        active = [t for t in trajectories if not t.done]
        if not active:
            return []
        for tr in active:
            if tr.sampling.jumps:
                self._jump_back(tr)
        mixed = any(tr.class_weights is not None for tr in active)
        xs, ts, labels = [], [], []
        for tr in active:
            rows = tr.sampling.unet_rows
            x_in = tr.scheduler.scale_model_input(tr.sample, tr.timestep)
            xs += [x_in] * rows
            ts += [tr.timestep] * rows
            cond = tr.class_weights if tr.class_weights is not None else tr.sampling.label
            labels += [cond] if rows == 1 else [cond, self.defaults.null_class_label]
        out = self.run_unet(np.concatenate(xs), np.array(ts), self._class_input(labels, mixed))
        results, row = [], 0
        for tr in active:
            if tr.sampling.unet_rows == 1:
                eps = out[row:row + 1]
            else:  # classifier-free guidance: uncond + s * (cond - uncond)
                cond, uncond = out[row:row + 1], out[row + 1:row + 2]
                eps = uncond + np.float32(tr.sampling.guidance_scale) * (cond - uncond)
            row += tr.sampling.unet_rows
            t = tr.timestep
            res = self._scheduler_step(tr, eps, t)
            tr.sample = res.prev_sample.astype(np.float32, copy=False)
            tr.index += 1
            tr.cursor += 1
            tr.latest = StepResult(tr.index, tr.steps, t, tr.sample[0], res.pred_original_sample[0])
            results.append(tr.latest)
        return results

    def _class_input(self, labels: list, mixed: bool) -> np.ndarray:
        """The UNet's class input: the labels, or with a morph in the batch
        every row as class weights (one-hot for a plain label: the same
        embedding, bit for bit)."""
        if not mixed:
            return np.array(labels)
        eye = np.eye(self.unet.config.num_class_embeds, dtype=np.float32)
        return np.stack([eye[label] if np.ndim(label) == 0 else label for label in labels])

    def _scheduler_step(self, tr: Trajectory, eps: np.ndarray, t: int):
        if tr.sampling.jumps:  # repaint: the kept region from the source, noised to the step's level
            return tr.scheduler.step(eps, t, tr.sample, tr.source, tr.keep, generator=tr.generator)
        res = tr.scheduler.step(eps, t, tr.sample, generator=tr.generator, **tr.sampling.step_arguments)
        if tr.keep is None:
            return res
        # a consistency model's inpainting: the kept pixels are the source, noised to where the step
        # landed (exactly the source after the last step)
        last = tr.cursor == len(tr.scheduler.timesteps) - 1
        known = tr.source if last else tr.scheduler.add_noise(
            tr.source, tr.generator.standard_normal(tr.source.shape, dtype=np.float32),
            np.array([int(tr.scheduler.timesteps[tr.cursor + 1])]))
        return SchedulerOutput(tr.keep * known + (np.float32(1) - tr.keep) * res.prev_sample, res.pred_original_sample)

    @staticmethod
    def _jump_back(tr: Trajectory) -> None:
        """Repaint's resampling: where its timesteps go back up, noise the
        sample forward again (no UNet), as diffusers' RePaintPipeline does."""
        ts = tr.scheduler.timesteps
        while 0 < tr.cursor < len(ts) and ts[tr.cursor] >= ts[tr.cursor - 1]:
            tr.sample = tr.scheduler.undo_step(tr.sample, int(ts[tr.cursor - 1]), generator=tr.generator)
            tr.cursor += 1

    def run(self, labels, seeds, **kwargs) -> Iterator[list[StepResult]]:
        """Sample a batch: yields, per step, one StepResult per image."""
        trs = [self.trajectory(int(l), int(s), **kwargs) for l, s in zip(labels, seeds, strict=True)]
        while not all(t.done for t in trs):
            self.step(trs)
            yield [t.latest for t in trs]

    def generate(self, labels, seeds, **kwargs) -> np.ndarray:
        """Final images, (N, C, H, W) float32 in [-1, 1]."""
        last = None
        for last in self.run(labels, seeds, **kwargs):
            pass
        return np.clip(np.stack([r.sample for r in last]), -1, 1)


def _max_steps(sched) -> int:
    return getattr(sched, "max_inference_steps", None) or sched.config["num_train_timesteps"]


def _sampler_configs(saved: dict, class_name: str, samplers) -> dict[str, SchedulerConfig]:
    """Each sampler's validated config. The class the model was saved with,
    and a sibling with its keys (LCM and TCD), take the whole saved config;
    any other sibling the model's noise schedule and prediction type, and
    its own defaults for the rest (a DDPM config's spacing is no DPM's)."""
    own_class = next(c.config_class for c in SCHEDULER_CLASSES.values() if c._class_name == class_name)
    own = own_class.from_dict(saved, ignore_siblings=True)
    configs = {}
    for name in samplers:
        cls = SCHEDULER_CLASSES[name].config_class
        if cls is own_class:
            configs[name] = own
        elif cls.defaults().keys() == own_class.defaults().keys():
            configs[name] = cls.from_dict(saved, ignore_siblings=True)
        else:
            configs[name] = cls.on_schedule(own.schedule, prediction_type=own.prediction_type)
    if class_name not in CONSISTENCY_CLASSES:  # a diffusion model also inpaints, with repaint on its schedule
        configs["repaint"] = RePaintScheduler.config_class.on_schedule(own.schedule)
    return configs
