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

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass

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
}
FORMATS = ("png", "json")
FRAMES = ("x0", "xt")
# what a request that leaves them out gets
DEFAULTS = {"n": 1, "size": 28, "format": "png", "frames": "x0"}
_seeds = random.Random(os.urandom(32))


@dataclass(frozen=True)
class Generation:
    """What the engine will run for one request and what comes out: n images
    sampled alike, image i from seed (seed + i) mod 2^32, frames kept every
    `every`-th step (0: the last step only)."""
    model: str
    sampling: Sampling
    seed: int
    n: int = DEFAULTS["n"]
    size: int = DEFAULTS["size"]
    format: str = DEFAULTS["format"]
    frames: str = DEFAULTS["frames"]
    every: int = 0

    @property
    def seeds(self) -> list[int]:
        return image_seeds(self.seed, self.n)

    @property
    def rows(self) -> int:
        """Its cost: UNet rows over the whole run (images x steps x rows a step)."""
        return self.n * self.sampling.steps * self.sampling.unet_rows

    @property
    def frame_count(self) -> int:
        """Frames a GIF of it holds: the start, then every kept step (the last always)."""
        steps, k = self.sampling.steps, self.every or self.sampling.steps
        return -(-steps // k) + 1


def default_model(names) -> str:
    """The model a request that names none gets: the distilled student when
    it is there (a digit in a few UNet rows), else the base model."""
    return "fast" if "fast" in names else "base"


def sample(pipe: DigitPipeline, gens: list[Generation]) -> np.ndarray:
    """Every image of these generations (all of one model), stepped together:
    (N, C, H, W) float32 in [-1, 1], generation by generation."""
    trajectories = [pipe.start(g.sampling, s) for g in gens for s in g.seeds]
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
            frames: str | None = None, every: int = 0, max_rows: int | None = None) -> Generation:
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
    asked = dict(label=label, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale, eta=eta,
                 timesteps=timesteps)
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
    if seed is None:  # a seed is to reproduce, not a secret: no system call (and GIL release) a request
        seed = _seeds.randrange(SEED_MAX + 1)
    check_limit("seed", seed)
    gen = Generation(name, sampling, seed, out["n"], out["size"], out["format"], out["frames"], every)
    if max_rows is not None and gen.rows > max_rows:
        raise InvalidParameter("n" if gen.n > 1 else "steps", (
            f"this request costs {gen.rows:,} UNet rows ({gen.n} image(s) x {sampling.steps} steps x "
            f"{sampling.unet_rows} row(s) a step); this server takes at most {max_rows:,} a request"))
    return gen


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
