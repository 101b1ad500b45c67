"""The HTTP syntax of requests, and the response bodies.

Each generation parameter is declared once here, its bounds taken from
engine.generation.LIMITS (the bounds that depend on the model, such as the
label range or a sampler's step limit, are the loaded model's and come from
the resolver). The query string of every generation endpoint and the JSON
body of POST /generate are these models; the resolver (app/dependencies.py)
turns them into one Generation.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.generation import DEFAULTS, FORMATS, FRAMES, LIMITS
from engine.paths import MODEL_FOLDERS
from engine.schedulers import SCHEDULERS

Scheduler = Literal[tuple(SCHEDULERS)]  # the registry's names; which ones a model takes, it says
Model = Literal[tuple(MODEL_FOLDERS)]
Format = Literal[FORMATS]
Frames = Literal[FRAMES]


def _range(field: str) -> dict:
    low, high = LIMITS[field]
    return dict(ge=low, le=high) | ({} if isinstance(low, int) else dict(allow_inf_nan=False))


def _words(field: str) -> str:
    low, high = LIMITS[field]
    return f"{'an integer' if isinstance(low, int) else 'a number'} {low:g}-{high:g}"


# field -> its allowed values in words, for the 422 messages
ALLOWED = {f: _words(f) for f in LIMITS} | {
    "label": "an integer from 0 (the model says how many labels it has: /info)",
    "steps": "an integer from 1 (each sampler's limit: /info)",
    "scheduler": "one of " + ", ".join(SCHEDULERS) + " (/info lists the ones each model takes)",
    "format": "one of " + ", ".join(FORMATS),
    "frames": "one of " + ", ".join(FRAMES),
    "model": "one of " + ", ".join(MODEL_FOLDERS) + " (/info lists the loaded ones)",
}

DOCS = {
    "model": "base: the diffusion model (20 DPM-Solver++ steps with guidance); fast: its consistency-distilled "
             "student (a few TCD steps, guidance built in). Default: the server's (see /info).",
    "label": "The digit to draw.",
    "steps": "Denoising steps. Default: the model's (see /info); each sampler's limit is there too.",
    "scheduler": "Sampler: ddpm (stochastic), ddim (deterministic unless eta > 0), dpm (DPM-Solver++, the usual "
                 "default); tcd (TCD's strategic stochastic sampling, the usual default) or lcm for a "
                 "consistency-distilled model.",
    "guidance_scale": "Classifier-free guidance: 0 = unconditional, 1 = conditional only, higher = more "
                      "digit-like. Default: the model's.",
    "eta": "Fresh noise in a step, for the samplers that take it: ddim (0 = deterministic, the default; 1 = as "
           "much as DDPM) and tcd (0 = deterministic, 1 = LCM's full re-noising; default: the model's).",
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

EXAMPLES = {"model": "base", "label": 5, "steps": 20, "scheduler": "dpm", "guidance_scale": 1.5, "eta": 0.3,
            "seed": 42, "n": 1, "size": 112, "format": "png", "every": 1, "frames": "x0"}


def _field(name: str, doc: str | None = None, **bounds):
    default = DEFAULTS.get(name)
    return Field(default, description=doc or DOCS[name], examples=[EXAMPLES[name]],
                 **(_range(name) if name in LIMITS else {}), **bounds)


# Numbers in a query string are read as strictly as JSON reads them: plain
# decimal digits, no sign, no leading zeros, no "_" or exponent (pydantic's
# lax mode would take "+5", "05", "5.0" or "1_000" for 5 or 1000).
_PLAIN_INT = re.compile(r"0|[1-9][0-9]*")
_PLAIN_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")


class SampleFields(BaseModel):
    """The parameters every generation endpoint shares. Unknown parameters
    are refused (a misspelt one would otherwise be silently ignored)."""
    model_config = ConfigDict(extra="forbid")

    @field_validator("label", "steps", "seed", "size", "n", "every", mode="before", check_fields=False)
    @classmethod
    def _plain_integer(cls, value):
        if isinstance(value, str) and not _PLAIN_INT.fullmatch(value):
            raise ValueError(f"write a whole number in plain decimal digits (like 5), got {value[:40]!r}")
        return value

    @field_validator("guidance_scale", "eta", mode="before")
    @classmethod
    def _plain_number(cls, value):
        if isinstance(value, str) and not _PLAIN_DECIMAL.fullmatch(value):
            raise ValueError(f"write a number in plain decimal form (like 1.5), got {value[:40]!r}")
        return value

    model: Model | None = _field("model")
    label: int | None = _field("label", ge=0)
    steps: int | None = _field("steps", ge=1)
    scheduler: Scheduler | None = _field("scheduler")
    guidance_scale: float | None = _field("guidance_scale")
    eta: float | None = _field("eta")
    seed: int | None = _field("seed")
    size: int = _field("size")


class GenerateQuery(SampleFields):
    """POST /generate's query string (the JSON body may carry the same fields)."""
    n: int = _field("n")
    format: Format = _field("format")


class GenerateBody(GenerateQuery):
    """The same parameters as a JSON object. A field may come from either
    place; given in both with different values, it is a 422."""
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON: no true-as-1, no "5"-as-5


def _required(name: str):
    return Field(description=DOCS[name], examples=[EXAMPLES[name]], ge=0)


class StreamQuery(SampleFields):
    label: int = _required("label")  # no body here: the query string must carry it
    every: int = Field(1, description=DOCS["every"], examples=[1], **_range("every"))


class GifQuery(SampleFields):
    label: int = _required("label")
    frames: Frames = _field("frames")
    every: int | None = Field(None, description=DOCS["gif_every"], examples=[1], **_range("every"))


# the parameter names each place takes, for "did you mean" on an unknown one
# (and the names other tools use for them: diffusers, AUTOMATIC1111, OpenAI)
ALIASES = {"sampler": "scheduler", "sampler_name": "scheduler", "num_inference_steps": "steps",
           "guidance": "guidance_scale", "cfg_scale": "guidance_scale", "digit": "label", "class_label": "label",
           "batch_size": "n", "num_images": "n", "width": "size", "height": "size", "generator": "seed"}
KNOWN = {"query": sorted(set(GenerateQuery.model_fields) | set(StreamQuery.model_fields) | set(GifQuery.model_fields)),
         "body": sorted(GenerateBody.model_fields)}

BODY_EXAMPLES = {  # the first is what /docs' "Try it out" fills in: nothing that could clash with the query
    "none": {"summary": "No body: every parameter in the query string", "value": {}},
    "one digit": {"summary": "A 7, reproducible", "value": {"label": 7, "seed": 1234, "size": 112}},
    "grid": {"summary": "Sixteen 3s as one grid PNG", "value": {"label": 3, "n": 16, "size": 56}},
    "json": {"summary": "Four 8s as JSON, each with its own seed",
             "value": {"label": 8, "n": 4, "format": "json", "model": "base", "scheduler": "ddim", "steps": 30}},
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
    eta: float | None = Field(description="The sampler's eta (ddim, tcd); null for the others.")
    size: int
    images: list[GeneratedImage]
    queue_ms: float
    generate_ms: float


class ProblemIssue(BaseModel):
    loc: list[str | int] = Field(description="Where: (query | body | header, field).")
    type: str
    msg: str
    input: Any = None


class ProblemBody(BaseModel):
    """Every error, whatever its status (RFC 9457 problem details): `detail`
    is one line a person can read, `code` what a program tests, `errors`
    each wrong parameter (empty unless the request was malformed)."""
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    errors: list[ProblemIssue]


class ModelInfo(BaseModel):
    model: dict = Field(description="What the weights are: parameters, sample shape, classes.")
    defaults: dict = Field(description="Its sampling defaults (from its model_index.json).")
    limits: dict = Field(description="Allowed values; max_steps per scheduler is this model's own limit.")
    schedulers: list[str] = Field(description="The samplers this model takes.")


class Info(ModelInfo):
    """The default model's description at the top level; every loaded model under `models`."""
    default_model: Model
    models: dict[str, ModelInfo]
