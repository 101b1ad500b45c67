"""A generation request, resolved once: which model, how each image is
sampled, which seeds, what comes out, and what it costs.

The service (app/), the command line and the evaluation build what they run
here, from the same parameters with the same defaults and bounds, so a
request means the same thing wherever it is made. The bounds that depend on
the model (labels, samplers, steps, guidance) are the loaded pipeline's
(`DigitPipeline.resolve`); the others are `LIMITS`, which the HTTP schema
declares its fields from.
"""
from __future__ import annotations

import functools
import hashlib
import os
import random
from collections.abc import Mapping
import math
from dataclasses import dataclass, field

import numpy as np

from .pipeline import SEED_MAX, DigitPipeline, InvalidParameter, Sampling, image_seeds
from .schedulers import ETA_RANGE

# (lowest, highest) of the parameters that do not depend on the model
LIMITS: dict[str, tuple[float, float]] = {
    "seed": (0, SEED_MAX),
    "n": (1, 64),
    "size": (28, 512),            # output pixels (nearest-neighbour upscale of the 28x28 sample)
    "every": (1, 100_000),        # past the step count it keeps the last step only
    "guidance_scale": (0.0, 10.0),
    "eta": ETA_RANGE,             # the samplers' own bound (checked by them)
    "strength": (0.0, 1.0),       # image-to-image: above 0, at most 1 (the whole schedule)
    "alpha": (0.0, 1.0),          # a morph's frame: 0 the first generation, 1 the second
    "jump_length": (1, 50),
    "jump_n_sample": (1, 50),
}
FORMATS = ("png", "json")
FRAMES = ("x0", "xt")
# what a request that leaves them out gets
DEFAULTS = {"n": 1, "size": 28, "format": "png", "frames": "x0"}
_seeds = random.Random(os.urandom(32))
DEFAULT_STRENGTH = 0.75  # image-to-image with no strength: keeps the drawing's shape, redraws its strokes
# p(digit | x0) costs one classifier forward a kept frame: ~1/20 of a UNet row (bench/service.py)
CLASSIFIER_ROWS = 0.05


@dataclass(frozen=True)
class Blend:
    """A morph's frame: the noise slerped from the generation's seed toward
    seed_b's, the class embedding from its label toward label_b's, by alpha."""
    seed_b: int
    label_b: int
    alpha: float


@dataclass(frozen=True)
class Generation:
    """What the engine will run for one request and what comes out: n images
    sampled alike, image i from seed (seed + i) mod 2^32, frames kept every
    `every`-th step (0: the last step only). With `image`: image-to-image
    (sampling.strength) or, with `mask` (1 = the model draws), inpainting;
    with `blend`: a morph's frame; with `probs`: p(digit | x0) every kept step."""
    model: str
    sampling: Sampling
    seed: int
    n: int = DEFAULTS["n"]
    size: int = DEFAULTS["size"]
    format: str = DEFAULTS["format"]
    frames: str = DEFAULTS["frames"]
    every: int = 0
    image: np.ndarray | None = field(default=None, repr=False, compare=False)   # (1, 28, 28) in [-1, 1]
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)    # (1, 28, 28) of {0, 1}
    blend: Blend | None = None
    probs: bool = False

    @property
    def seeds(self) -> list[int]:
        return image_seeds(self.seed, self.n)

    @property
    def rows(self) -> int:
        """Its cost: UNet rows over the whole run (images x UNet steps x rows
        a step), the classifier's included (CLASSIFIER_ROWS a kept frame)."""
        unet = self.n * self.sampling.model_steps * self.sampling.unet_rows
        if not self.probs:
            return unet
        return unet + math.ceil(self.n * self.kept_frames * CLASSIFIER_ROWS)

    @property
    def kept_frames(self) -> int:
        """Steps whose frames a client gets: every `every`-th and the last."""
        steps, k = self.sampling.model_steps, self.every or self.sampling.model_steps
        return -(-steps // k)

    @property
    def frame_count(self) -> int:
        """Frames a GIF of it holds: the start, then every kept step (the last always)."""
        return self.kept_frames + 1

    def trajectories(self, pipe: DigitPipeline) -> list:
        """Its seeded trajectories, at their first timestep."""
        if self.blend is None:
            return [pipe.start(self.sampling, s, self.image, self.mask) for s in self.seeds]
        b = self.blend  # image i blends seed + i with seed_b + i
        return [pipe.start(self.sampling, s, blend=(sb, b.label_b, b.alpha))
                for s, sb in zip(self.seeds, image_seeds(b.seed_b, self.n))]


def random_seed() -> int:
    """A seed for a request that gives none: to reproduce, not a secret, so
    no system call (and GIL release) a request."""
    return _seeds.randrange(SEED_MAX + 1)


def default_model(names) -> str:
    """The model a request that names none gets: the distilled student when
    it is there (a digit in a few UNet rows), else the base model."""
    return "fast" if "fast" in names else "base"


def sample(pipe: DigitPipeline, gens: list[Generation]) -> np.ndarray:
    """Every image of these generations (all of one model), stepped together:
    (N, C, H, W) float32 in [-1, 1], generation by generation."""
    trajectories = [t for g in gens for t in g.trajectories(pipe)]
    while not all(t.done for t in trajectories):
        pipe.step(trajectories)
    return np.clip(np.stack([t.sample[0] for t in trajectories]), -1, 1)


def check_limit(field: str, value) -> None:
    """InvalidParameter unless `value` is a number within LIMITS[field]."""
    low, high = LIMITS[field]
    integral = isinstance(low, int)
    ok = not isinstance(value, bool) and isinstance(value, int if integral else (int, float))
    if not ok or not low <= value <= high:
        kind = "an integer" if integral else "a number"
        raise InvalidParameter(field, f"{field} must be {kind} {low:g}-{high:g}, got {value!r}")


def resolve(pipes: Mapping[str, DigitPipeline], default_model: str, *, model: str | None = None,
            label=None, steps=None, scheduler=None, guidance_scale=None, eta=None, timesteps=None,
            seed: int | None = None, n: int | None = None, size: int | None = None, format: str | None = None,
            frames: str | None = None, every: int = 0, image: np.ndarray | None = None,
            mask: np.ndarray | None = None, strength: float | None = None, jump_length: int | None = None,
            jump_n_sample: int | None = None, seed_b: int | None = None, label_b: int | None = None,
            alpha: float | None = None, probs: bool = False, max_rows: int | None = None) -> Generation:
    """The one place a request's parameters become a Generation: the model,
    its defaults and limits, the output, the cost against `max_rows`, and a
    random seed if none. Raises InvalidParameter naming the field; where the
    model was left to the default and another loaded model would take the
    value, the message says so."""
    name = default_model if model is None else model
    if name not in pipes:
        raise InvalidParameter("model", f"model {name!r} is not loaded here; this server has "
                                        f"{', '.join(sorted(pipes))}")
    if label is None:
        raise InvalidParameter("label", f"label is required: the digit to draw (0-{pipes[name].num_labels - 1})")
    if mask is not None and image is None:
        raise InvalidParameter("mask_image", "a mask needs the image it applies to: give image too")
    if strength is not None and image is None:
        raise InvalidParameter("strength", "strength is image-to-image's: give the image to start from")
    if image is not None and mask is None and strength is None:
        strength = DEFAULT_STRENGTH
    blend = _blend(pipes[name], seed_b, label_b, alpha)
    if blend is not None and image is not None:
        raise InvalidParameter("seed_b", "a morph starts from noise: it takes no image")
    asked = dict(label=label, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale, eta=eta,
                 timesteps=timesteps, strength=strength, inpaint=mask is not None, jump_length=jump_length,
                 jump_n_sample=jump_n_sample)
    if guidance_scale is not None:
        check_limit("guidance_scale", guidance_scale)
    try:
        sampling = pipes[name].resolve(**asked)
    except InvalidParameter as e:
        raise _with_alternative(e, pipes, name, model is None, asked) from None
    out = {**DEFAULTS, **{k: v for k, v in dict(n=n, size=size, format=format, frames=frames).items()
                          if v is not None}}
    for field in ("n", "size"):
        check_limit(field, out[field])
    for field, allowed in (("format", FORMATS), ("frames", FRAMES)):
        if out[field] not in allowed:
            raise InvalidParameter(field, f"{field} must be one of {', '.join(allowed)}, got {out[field]!r}")
    if every:
        check_limit("every", every)
    if seed is None:
        seed = random_seed()
    check_limit("seed", seed)
    gen = Generation(name, sampling, seed, out["n"], out["size"], out["format"], out["frames"], every,
                     image, mask, blend, bool(probs))
    if max_rows is not None and gen.rows > max_rows:
        raise InvalidParameter("n" if gen.n > 1 else "steps", (
            f"this request costs {gen.rows:,} UNet rows ({gen.n} image(s) x {sampling.model_steps} UNet steps x "
            f"{sampling.unet_rows} row(s) a step{', and the classifier' if gen.probs else ''}); this server takes "
            f"at most {max_rows:,} a request"))
    return gen


def _blend(pipe: DigitPipeline, seed_b, label_b, alpha) -> Blend | None:
    """A morph's frame, when any of its three parameters is given (all must be)."""
    given = {"seed_b": seed_b, "label_b": label_b, "alpha": alpha}
    if all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise InvalidParameter(missing[0], f"a morph's frame needs seed_b, label_b and alpha; {missing[0]} is missing")
    low, high = LIMITS["seed"]
    if isinstance(seed_b, bool) or not isinstance(seed_b, int) or not low <= seed_b <= high:
        raise InvalidParameter("seed_b", f"seed_b must be an integer {low}-{high}, got {seed_b!r}")
    if isinstance(label_b, bool) or not isinstance(label_b, int) or not 0 <= label_b < pipe.num_labels:
        raise InvalidParameter("label_b", f"label_b must be an integer 0-{pipe.num_labels - 1}, got {label_b!r}")
    check_limit("alpha", alpha)
    return Blend(int(seed_b), int(label_b), float(alpha))


def _with_alternative(e: InvalidParameter, pipes, name: str, defaulted: bool, asked: dict) -> InvalidParameter:
    """e, plus which other loaded model takes the value, when the client did
    not choose the model (a sampler or guidance of the base model asked of
    the fast default, say)."""
    if not defaulted:
        return e
    takers = []
    for other, pipe in sorted(pipes.items()):
        if other == name:
            continue
        try:
            pipe.resolve(**asked)
        except InvalidParameter as again:
            if again.field == e.field:
                continue
        takers.append(other)
    if not takers:
        return e
    return InvalidParameter(e.field, f"{e} (the default model is {name}; "
                                     f"{' or '.join(f'model={t}' for t in takers)} takes it)")


@functools.cache
def engine_version() -> str:
    """The installed digitgen's version, as the PNGs record it. Looked up once:
    importlib.metadata scans sys.path each call (measured: a third of the
    event loop's time at 16 clients of the one-step model)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("digitgen")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def parameters(gen: Generation, seed: int | None = None, grid: bool = False) -> dict:
    """What a PNG of this generation carries (engine/io/images.py writes it
    into a text chunk): the request that makes it again, as POST /generate
    takes it, plus the engine's version and, for an edit, the SHA-256 of its
    image and mask (the bytes themselves are the client's to send again).
    `seed`: one image's own seed (n=1); `grid`: the whole request's grid."""
    sm = gen.sampling
    out = {"model": gen.model, "label": sm.label, "seed": gen.seed if seed is None else seed, "steps": sm.steps,
           "scheduler": sm.scheduler if not sm.jumps else None, "guidance_scale": sm.guidance_scale,
           "eta": sm.eta, "strength": sm.strength, "size": gen.size}
    if grid and gen.n > 1:
        out["n"] = gen.n
    if sm.jumps:
        out["jump_length"], out["jump_n_sample"] = sm.jumps
    if gen.blend is not None:
        out.update(seed_b=gen.blend.seed_b, label_b=gen.blend.label_b, alpha=gen.blend.alpha)
    for name, array in (("image", gen.image), ("mask_image", gen.mask)):
        if array is not None:
            out[f"{name}_sha256"] = hashlib.sha256(np.ascontiguousarray(array, np.float32).tobytes()).hexdigest()
    out["engine"] = f"digitgen {engine_version()}"
    return {k: v for k, v in out.items() if v is not None}
