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
             "student (a few TCD steps, guidance built in); onestep: a student trained to draw in one UNet "
             "evaluation. Default: the server's (see /info).",
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
    "image": "Image-to-image or inpainting: a PNG to start from (any size, grey or colour; read as a light digit "
             "on a dark background: transparency is black, a light background is inverted, padded square and "
             "area-resized to 28 x 28). Base64 in JSON; a file part in multipart/form-data.",
    "mask_image": "Inpainting: a PNG of the image's size, white where the model draws, black where the image is "
                  "kept (thresholded at half grey). Base64 in JSON; a file part in multipart/form-data.",
    "strength": "Image-to-image: how much of the schedule runs from the image, 0 (exclusive) to 1. A diffusion "
                "model noises it to the step int(steps x strength) from the end and runs those steps; a "
                "consistency model starts on the same share of its distillation grid and runs all its steps. "
                "Default 0.75 when an image is given without a mask.",
    "jump_length": "Inpainting on the base model (RePaint): after every jump_length steps, noise the image "
                   "back up that many steps and run them again, so the drawn part agrees with the kept part. "
                   "Default: the service's (see /info).",
    "jump_n_sample": "Inpainting on the base model (RePaint): how many times each stretch of jump_length steps "
                     "is run (1: no resampling). Each extra pass costs its steps again.",
    "seed_b": "A morph's frame: the second seed; the noise is slerped from seed's toward seed_b's by alpha.",
    "label_b": "A morph's frame: the second label; the class embedding is mixed from label's toward label_b's.",
    "alpha": "A morph's frame: 0 is the generation of (seed, label), 1 that of (seed_b, label_b).",
    "frames_count": "How many frames the morph has, its ends included (frame k has alpha = k / (n - 1)).",
    "morph_format": "png: the frames in a row; gif: the frames as an animation (there and back); json: each "
                    "frame as base64 PNG with its alpha and the parameters that make it alone.",
    "probs": "Also send p(digit | x0) at every sent step: the shipped classifier's ten probabilities for the "
             "model's current estimate of the digit (costs about 1/20 of a UNet row a frame).",
}

EXAMPLES = {"model": "base", "label": 5, "steps": 20, "scheduler": "dpm", "guidance_scale": 1.5, "eta": 0.3,
            "seed": 42, "n": 1, "size": 112, "format": "png", "every": 1, "frames": "x0", "strength": 0.6,
            "jump_length": 5, "jump_n_sample": 3, "probs": True, "image": "iVBORw0KGgo...",
            "mask_image": "iVBORw0KGgo...", "seed_b": 43, "label_b": 8, "alpha": 0.5}


def _field(name: str, doc: str | None = None, **bounds):
    default = DEFAULTS.get(name)
    return Field(default, description=doc or DOCS[name], examples=[EXAMPLES[name]],
                 **(_range(name) if name in LIMITS else {}), **bounds)


# Numbers in a query string are read as strictly as JSON reads them: plain
# decimal digits, no sign, no leading zeros, no "_" or exponent (pydantic's
# lax mode would take "+5", "05", "5.0" or "1_000" for 5 or 1000).
_PLAIN_INT = re.compile(r"0|[1-9][0-9]*")
_PLAIN_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")


class PlainFields(BaseModel):
    """Parameters read strictly from text (the query string, form fields).
    Unknown parameters are refused (a misspelt one would otherwise be
    silently ignored)."""
    model_config = ConfigDict(extra="forbid")

    @field_validator("label", "steps", "seed", "size", "n", "every", "jump_length", "jump_n_sample", "seed_b",
                     "label_b", mode="before", check_fields=False)
    @classmethod
    def _plain_integer(cls, value):
        if isinstance(value, str) and not _PLAIN_INT.fullmatch(value):
            raise ValueError(f"write a whole number in plain decimal digits (like 5), got {value[:40]!r}")
        return value

    @field_validator("guidance_scale", "eta", "strength", "alpha", mode="before", check_fields=False)
    @classmethod
    def _plain_number(cls, value):
        if isinstance(value, str) and not _PLAIN_DECIMAL.fullmatch(value):
            raise ValueError(f"write a number in plain decimal form (like 1.5), got {value[:40]!r}")
        return value

    @field_validator("probs", mode="before", check_fields=False)
    @classmethod
    def _plain_bool(cls, value):
        if isinstance(value, str):
            if value not in ("true", "false"):
                raise ValueError(f"write true or false, got {value[:40]!r}")
            return value == "true"
        return value


class SampleFields(PlainFields):
    """The parameters every generation endpoint shares."""
    model: Model | None = _field("model")
    label: int | None = _field("label", ge=0)
    steps: int | None = _field("steps", ge=1)
    scheduler: Scheduler | None = _field("scheduler")
    guidance_scale: float | None = _field("guidance_scale")
    eta: float | None = _field("eta")
    seed: int | None = _field("seed")
    size: int = _field("size")
    strength: float | None = Field(None, description=DOCS["strength"], examples=[EXAMPLES["strength"]], gt=0, le=1,
                                   allow_inf_nan=False)
    jump_length: int | None = _field("jump_length")
    jump_n_sample: int | None = _field("jump_n_sample")
    seed_b: int | None = Field(None, description=DOCS["seed_b"], examples=[EXAMPLES["seed_b"]], **_range("seed"))
    label_b: int | None = Field(None, description=DOCS["label_b"], examples=[EXAMPLES["label_b"]], ge=0)
    alpha: float | None = _field("alpha")


class GenerateQuery(SampleFields):
    """POST /generate's query string (the JSON body may carry the same fields)."""
    n: int = _field("n")
    format: Format = _field("format")


class Images(BaseModel):
    """What only a body carries: the images of image-to-image and inpainting (base64 PNG)."""
    image: str | None = Field(None, description=DOCS["image"], examples=[EXAMPLES["image"]])
    mask_image: str | None = Field(None, description=DOCS["mask_image"], examples=[EXAMPLES["mask_image"]])


class GenerateBody(GenerateQuery, Images):
    """The same parameters as a JSON object, and the images. A field may come
    from either place; given in both with different values, it is a 422."""
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON: no true-as-1, no "5"-as-5


class StreamQuery(SampleFields):
    label: int | None = _field("label", ge=0)  # required, in the query or (POST) the body
    every: int = Field(1, description=DOCS["every"], examples=[1], **_range("every"))
    probs: bool = Field(False, description=DOCS["probs"], examples=[True])


class StreamBody(StreamQuery, Images):
    model_config = ConfigDict(extra="forbid", strict=True)


class GifQuery(SampleFields):
    label: int | None = _field("label", ge=0)
    frames: Frames = _field("frames")
    every: int | None = Field(None, description=DOCS["gif_every"], examples=[1], **_range("every"))


class GifBody(GifQuery, Images):
    model_config = ConfigDict(extra="forbid", strict=True)


MorphFormat = Literal["png", "gif", "json"]
MORPH_FRAMES = (2, 64)


class MorphQuery(PlainFields):
    """A walk from (seed, label) to (seed_b, label_b) in n frames."""

    model: Model | None = _field("model")
    label: int | None = _field("label", ge=0)
    label_b: int | None = Field(None, description=DOCS["label_b"] + " Default: label.", examples=[8], ge=0)
    seed: int | None = _field("seed")
    seed_b: int | None = Field(None, description=DOCS["seed_b"] + " Default: a random one.", examples=[43],
                               **_range("seed"))
    n: int = Field(16, description=DOCS["frames_count"], examples=[16], ge=MORPH_FRAMES[0], le=MORPH_FRAMES[1])
    steps: int | None = _field("steps", ge=1)
    scheduler: Scheduler | None = _field("scheduler")
    guidance_scale: float | None = _field("guidance_scale")
    eta: float | None = _field("eta")
    size: int = _field("size")
    format: MorphFormat = Field("png", description=DOCS["morph_format"], examples=["png"])


class MorphBody(MorphQuery):
    model_config = ConfigDict(extra="forbid", strict=True)


SWEEPABLE = ("seed", "steps", "scheduler", "guidance_scale", "strength", "eta", "model", "label")
GRID_CELLS = 64


class Axis(BaseModel):
    """One swept parameter: its name and the values the grid's columns (x) or rows (y) take."""
    model_config = ConfigDict(extra="forbid", strict=True)
    param: Literal[SWEEPABLE] = Field(description="The parameter that changes along this axis.")
    values: list[int | float | str] = Field(min_length=1, max_length=16, description="Its values, in order.")


class GridBody(GenerateBody):
    """The base request (every generation parameter, the images included) and one or two axes."""
    model_config = ConfigDict(extra="forbid", strict=True)
    x: Axis = Field(description="The parameter the columns sweep.")
    y: Axis | None = Field(None, description="The parameter the rows sweep (optional).")


# the parameter names each place takes, for "did you mean" on an unknown one
# (and the names other tools use for them: diffusers, AUTOMATIC1111, OpenAI)
ALIASES = {"sampler": "scheduler", "sampler_name": "scheduler", "num_inference_steps": "steps",
           "guidance": "guidance_scale", "cfg_scale": "guidance_scale", "digit": "label", "class_label": "label",
           "batch_size": "n", "num_images": "n", "width": "size", "height": "size", "generator": "seed"}
KNOWN = {"query": sorted(set(GenerateQuery.model_fields) | set(StreamQuery.model_fields) | set(GifQuery.model_fields)
                         | set(MorphQuery.model_fields)),
         "body": sorted(set(GenerateBody.model_fields) | set(StreamBody.model_fields) | set(GifBody.model_fields)
                        | set(GridBody.model_fields))}
KNOWN["form"] = KNOWN["body"]

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
    strength: float | None = Field(None, description="Image-to-image's strength; null without an image.")
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
    noise_schedule: dict = Field(description="Its training noise schedule: num_train_timesteps and alphas_cumprod "
                                             "(alpha-bar_t, the share of the clean image's signal left at step t).")


class Info(ModelInfo):
    """The default model's description at the top level; every loaded model under `models`."""
    default_model: Model
    models: dict[str, ModelInfo]
    classifier: bool = Field(description="Whether p(digit | x0) can be asked for (probs=true): a classifier is loaded.")
