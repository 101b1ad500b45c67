"""A generation request on its way from HTTP to the engine.

The routes declare their parameters once, as models (app/schemas.py); here
the query string and the JSON body are merged, and the result is resolved
once against the loaded model (DigitPipeline.resolve: defaults, labels,
samplers, step limits). Whatever is wrong comes back as a 422 naming the
field and where it came from, never by reading an engine message.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from fastapi.exceptions import RequestValidationError

from engine.pipeline import DigitPipeline, InvalidParameter, Sampling

from .schemas import SEED_MAX, SampleParams


@dataclass(frozen=True)
class Generation:
    """What the engine will run for one request: n images sampled alike,
    image i from seed (seed + i) mod 2^32."""
    model: str
    sampling: Sampling
    seed: int
    n: int = 1

    @property
    def seeds(self) -> list[int]:
        # wrapped so every image's seed is itself a valid seed that reproduces it with n=1
        return [(self.seed + i) % (SEED_MAX + 1) for i in range(self.n)]


class Given:
    """Parameter values as the client gave them, with where each came from."""

    def __init__(self, query: SampleParams, body: SampleParams | None = None):
        q = query.model_dump(exclude_none=True)
        b = body.model_dump(exclude_none=True) if body is not None else {}
        conflicts = [{"type": "value_error", "loc": ("body", k), "input": b[k],
                      "msg": f"{k} is given in both the query string ({q[k]!r}) and the JSON body ({b[k]!r}) "
                             f"with different values; give it once"}
                     for k in sorted(q.keys() & b.keys()) if q[k] != b[k]]
        if conflicts:
            raise RequestValidationError(conflicts)
        self.values = q | b
        self.source = {k: "body" if k in b else "query" for k in self.values}

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    def error(self, field: str, message: str) -> RequestValidationError:
        return RequestValidationError([{"type": "value_error", "loc": (self.source.get(field, "query"), field),
                                        "msg": message, "input": self.values.get(field)}])


def resolve(pipes: dict[str, DigitPipeline], default_model: str, given: Given, n: int = 1,
            max_rows: int | None = None) -> Generation:
    """The model, then its defaults and limits, then the request's cost
    (UNet rows: images x steps x rows a step) against `max_rows`; a random
    seed if none."""
    model = given.get("model", default_model)
    if model not in pipes:
        raise given.error("model", f"model {model!r} is not loaded by this server; it serves "
                                   f"{', '.join(sorted(pipes))}")
    pipe = pipes[model]
    if given.get("label") is None:
        raise RequestValidationError([{"type": "missing", "loc": ("query", "label"), "input": None,
                                       "msg": "Field required: give label (0-9) in the query string or the JSON body"}])
    try:
        sampling = pipe.resolve(given.get("label"), given.get("steps"), given.get("scheduler"),
                                given.get("guidance_scale"))
    except InvalidParameter as e:
        raise given.error(e.field, str(e)) from None
    rows = n * sampling.steps * sampling.unet_rows
    if max_rows is not None and rows > max_rows:
        raise given.error("n" if n > 1 else "steps",
                          f"this request costs {rows:,} UNet rows ({n} image(s) x {sampling.steps} steps x "
                          f"{sampling.unet_rows} row(s) a step); this server takes at most {max_rows:,} a request")
    seed = given.get("seed")
    return Generation(model, sampling, secrets.randbelow(SEED_MAX + 1) if seed is None else seed, n)
