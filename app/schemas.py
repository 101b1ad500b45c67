"""Request parameters and response bodies. Every bound lives here once; the
query parameters (app/routes.py), the JSON body and the 422 messages all use
these definitions."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.schedulers import SCHEDULERS

SEED_MAX = 2**32 - 1
Scheduler = Literal[tuple(SCHEDULERS)]  # the registry's names; which ones a model takes, it says
Format = Literal["png", "json"]
Model = Literal["base", "fast"]
Frames = Literal["xt", "x0"]

# field -> (pydantic constraints, words for the 422 message)
BOUNDS: dict[str, tuple[dict, str]] = {
    "label": (dict(ge=0, le=9), "an integer 0-9"),
    "steps": (dict(ge=1, le=1000), "an integer 1-1000"),
    "guidance_scale": (dict(ge=0.0, le=10.0, allow_inf_nan=False), "a number 0-10"),
    "seed": (dict(ge=0, le=SEED_MAX), f"an integer 0-{SEED_MAX}"),
    "n": (dict(ge=1, le=64), "an integer 1-64"),
    "size": (dict(ge=28, le=512), "an integer 28-512 (pixels)"),
    "every": (dict(ge=1, le=1000), "an integer 1-1000"),
}
ALLOWED = {k: words for k, (_, words) in BOUNDS.items()} | {
    "scheduler": "one of " + ", ".join(SCHEDULERS) + " (/info lists the ones the model takes)",
    "format": "one of png, json",
    "model": "one of base, fast (/info lists the loaded ones)",
    "frames": "one of xt, x0",
}

DOCS = {
    "model": "base: the diffusion model (20 DPM-Solver++ steps with guidance); fast: its consistency-distilled "
             "student (a few TCD steps, guidance built in). Default: the server's (see /info).",
    "label": "The digit to draw.",
    "steps": "Denoising steps. Default: the weights' sampling default (20 for the shipped weights). "
             "dpm accepts at most 999.",
    "scheduler": "Sampler: ddpm (stochastic), ddim (deterministic), dpm (DPM-Solver++, the usual default); "
                 "tcd (TCD's strategic stochastic sampling, the usual default) or lcm for a consistency-"
                 "distilled model.",
    "guidance_scale": "Classifier-free guidance: 0 = unconditional, 1 = conditional only, higher = more "
                      "digit-like. Default: the weights' default.",
    "seed": "Random seed. The same seed and parameters give byte-identical images, alone or under load, on the "
            "same kind of CPU (another CPU's BLAS kernels may move a few pixels by one grey level). "
            "Omitted: a random one, returned in the X-Seed header. With n > 1, image i uses (seed + i) mod 2^32.",
    "n": "How many images (n > 1: one grid PNG, or a list with format=json).",
    "size": "Output width in pixels (nearest-neighbour upscale of the 28x28 sample).",
    "format": "png: the image (a grid for n > 1); json: each image as base64 with its own seed.",
    "every": "Send a frame every k-th step (the last step always comes).",
    "frames": "GIF frames: x0 (default) = the model's running estimate of the final image, the digit forming; "
              "xt = the noisy sample x_t from pure noise to the digit.",
    "gif_every": "Keep every k-th step as a GIF frame (the last always). Default: about 50 frames at most.",
}

EXAMPLES = {"model": "base", "label": 5, "steps": 20, "scheduler": "dpm", "guidance_scale": 1.5, "seed": 42, "n": 1, "size": 112,
            "format": "png", "every": 1, "frames": "x0"}


def _field(name: str, doc: str | None = None):
    return Field(None, description=doc or DOCS.get(name), examples=[EXAMPLES[name]], **BOUNDS.get(name, ({}, ""))[0])


# Numbers in a query string are read as strictly as JSON reads them: plain
# decimal digits, no sign, no leading zeros, no "_" or exponent (pydantic's
# lax mode would take "+5", "05", "5.0" or "1_000" for 5 or 1000).
_PLAIN_INT = re.compile(r"0|[1-9][0-9]*")
_PLAIN_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")


class SampleParams(BaseModel):
    """The parameters every generation endpoint shares, declared once. The
    query string (all endpoints) and the JSON body (POST /generate) are both
    this model; `label` is required, in one place or the other. Defaults are
    not filled in here: they come from the loaded model (app/request.py)."""

    @field_validator("label", "steps", "seed", "size", "n", "every", mode="before", check_fields=False)
    @classmethod
    def _plain_integer(cls, value):
        if isinstance(value, str) and not _PLAIN_INT.fullmatch(value):
            raise ValueError(f"write a whole number in plain decimal digits (like 5), got {value[:40]!r}")
        return value

    @field_validator("guidance_scale", mode="before")
    @classmethod
    def _plain_number(cls, value):
        if isinstance(value, str) and not _PLAIN_DECIMAL.fullmatch(value):
            raise ValueError(f"write a number in plain decimal form (like 1.5), got {value[:40]!r}")
        return value

    model: Model | None = _field("model")
    label: int | None = _field("label")
    steps: int | None = _field("steps")
    scheduler: Scheduler | None = _field("scheduler")
    guidance_scale: float | None = _field("guidance_scale")
    seed: int | None = _field("seed")
    size: int | None = _field("size")


class GenerateParams(SampleParams):
    n: int | None = _field("n")
    format: Format | None = _field("format")


class GenerateBody(GenerateParams):
    """The same parameters as a JSON object. A field may come from either
    place; given in both with different values, it is a 422."""
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON: no true-as-1, no "5"-as-5


def _required(name: str):
    return Field(description=DOCS[name], examples=[EXAMPLES[name]], **BOUNDS[name][0])


class StreamParams(SampleParams):
    label: int = _required("label")  # no body here: the query string must carry it
    every: int | None = _field("every")


class GifParams(SampleParams):
    label: int = _required("label")
    frames: Frames | None = _field("frames")
    every: int | None = _field("every", DOCS["gif_every"])


BODY_EXAMPLES = {
    "one digit": {"summary": "A 7, reproducible", "value": {"label": 7, "seed": 1234, "size": 112}},
    "grid": {"summary": "Sixteen 3s as one grid PNG", "value": {"label": 3, "n": 16, "size": 56}},
    "json": {"summary": "Four 8s as JSON, each with its own seed",
             "value": {"label": 8, "n": 4, "format": "json", "scheduler": "ddim", "steps": 30}},
}


class GeneratedImage(BaseModel):
    index: int
    seed: int = Field(description="Its own seed: POST with this seed and n=1 gives the same image.")
    png_base64: str


class GenerateResult(BaseModel):
    model: Model
    label: int
    seed: int = Field(description="The base seed; image i used (seed + i) mod 2^32.")
    n: int
    steps: int
    scheduler: Scheduler
    guidance_scale: float
    size: int
    images: list[GeneratedImage]
    queue_ms: float
    generate_ms: float


class Problem(BaseModel):
    """Every error but a 422: what went wrong, in words."""
    detail: str
    message: str | None = Field(None, description="The same, where the service adds it.")


class ValidationIssue(BaseModel):
    type: str
    loc: list[str | int] = Field(description="Where: (query | body | header, field).")
    msg: str
    input: Any = None
    ctx: dict | None = None
    url: str | None = None


class ValidationProblem(BaseModel):
    """A 422: every parameter that was wrong, and one line a person can read."""
    detail: list[ValidationIssue]
    message: str = Field(description="The field, what was wrong and the allowed range.")


class ModelInfo(BaseModel):
    model: dict = Field(description="What the weights are: parameters, sample shape, classes.")
    defaults: dict = Field(description="Its sampling defaults (from its model_index.json).")
    limits: dict = Field(description="Allowed values; max_steps per scheduler is this model's own limit.")
    schedulers: list[str] = Field(description="The samplers this model takes.")


class Info(ModelInfo):
    """The default model's description at the top level; every loaded model under `models`."""
    default_model: Model
    models: dict[str, ModelInfo]
