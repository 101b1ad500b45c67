"""One vocabulary for every error the service answers.

`Problem` is the one refusal type: an HTTP status, a stable `code` a program
can test, one line a person can read (`detail`), and for a bad request each
parameter that was wrong (`errors`, as `Issue`s). `problem_from` is the one
table from what the libraries and the engine raise to a Problem. Each output
has one renderer: JSON (RFC 9457 problem details, the same members for every
status), the event stream's `event: error`, and the OpenAI API's
{"error": {...}}.

Everything echoed back is made safe to send first (`echo`): cut short,
non-finite numbers as text, and JSON written with ASCII escapes, so an input
that cannot be encoded (a lone UTF-16 surrogate, say) is escaped, never a 500.
"""
from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

PROBLEM_JSON = b"application/problem+json"
ECHO_CHARS = 80  # of a rejected input, echoed: enough to see it, never the whole of a large one


def echo(value: Any) -> Any:
    """A rejected input as it may be echoed in JSON."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10 ** 18 else _cut(str(value), "digits")
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value if len(value) <= ECHO_CHARS else _cut(value, "characters")
    if isinstance(value, (bytes, bytearray)):
        return _cut(repr(bytes(value)), "bytes") if len(value) > ECHO_CHARS else repr(bytes(value))
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=repr)  # NaN written as NaN: cut below, never parsed back
        return value if len(text) <= ECHO_CHARS and "NaN" not in text and "Infinity" not in text \
            else _cut(text, "characters")
    return echo(repr(value))


def _cut(text: str, unit: str) -> str:
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]!r}... ({len(text)} {unit})"


@dataclass(frozen=True)
class Issue:
    """One wrong parameter: where it was (source, name), what was wrong, what was given."""
    loc: tuple[str | int, ...]
    msg: str
    type: str = "value_error"
    input: Any = None

    @property
    def field(self) -> str:
        return str(self.loc[-1]) if self.loc else "request"

    def line(self) -> str:
        return f"{echo(self.field)}: {self.msg}"

    def as_json(self) -> dict:
        return {"loc": [echo(p) for p in self.loc], "type": self.type, "msg": self.msg, "input": echo(self.input)}


class Problem(Exception):
    """An error answer: raised anywhere, rendered once, at the edge or by the
    app's exception handler."""

    def __init__(self, status: int, code: str, detail: str, *, errors: Iterable[Issue] = (),
                 retry_after: int | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.errors = tuple(errors)
        self.retry_after = retry_after
        self.headers = dict(headers or {})

    # -- the kinds, each with its status and code written once ---------------------
    @classmethod
    def invalid(cls, issues: Iterable[Issue]) -> "Problem":
        issues = tuple(issues)
        return cls(422, "invalid_parameter", "; ".join(i.line() for i in issues), errors=issues)

    @classmethod
    def invalid_field(cls, source: str, field: str, msg: str, value: Any = None, kind: str = "value_error"):
        return cls.invalid([Issue((source, field), msg, kind, value)])

    @classmethod
    def busy(cls, why: str, retry_after: int) -> "Problem":
        return cls(503, "busy", f"the server is busy ({why}); retry in {retry_after} s", retry_after=retry_after)

    @classmethod
    def shutting_down(cls) -> "Problem":
        return cls(503, "shutting_down", "the server is shutting down", retry_after=5)

    @classmethod
    def not_ready(cls) -> "Problem":
        return cls(503, "not_ready", "not ready: the model is not loaded", retry_after=5)

    @classmethod
    def deadline(cls, detail: str) -> "Problem":
        return cls(504, "deadline_exceeded", detail)

    @classmethod
    def engine_failure(cls, detail: str) -> "Problem":
        return cls(500, "engine_failure", detail)

    # -- what goes on the wire -----------------------------------------------------
    @property
    def title(self) -> str:
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return "Error"

    def body(self) -> dict:
        return {"type": "about:blank", "title": self.title, "status": self.status, "detail": self.detail,
                "code": self.code, "errors": [i.as_json() for i in self.errors]}

    def header_list(self) -> list[tuple[bytes, bytes]]:
        extra = dict(self.headers)
        if self.retry_after is not None:
            extra["retry-after"] = str(self.retry_after)
        return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]


# -- the one table: what the libraries and the engine raise -> Problem ---------------
CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         408: "request_timeout", 413: "body_too_large", 415: "unsupported_media_type", 429: "rate_limited",
         431: "head_too_large", 500: "internal_error", 503: "unavailable"}


def problem_from(exc: BaseException, hints: Mapping[str, str] | None = None,
                 known: Mapping[str, Iterable[str]] | None = None, aliases: Mapping[str, str] | None = None) -> Problem:
    """Any exception as the Problem to answer. `hints` (field -> its allowed
    values in words), `known` (source -> the parameter names it takes) and
    `aliases` (a name other tools use -> ours) make pydantic's issues readable."""
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException

    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, (RequestValidationError, ValidationError)):
        return Problem.invalid(issues_from_pydantic(exc.errors(), hints or {}, known or {}, aliases or {}))
    if isinstance(exc, HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return Problem(exc.status_code, CODES.get(exc.status_code, "error"), detail.lower().rstrip("."),
                       headers=exc.headers)
    return Problem(500, "internal_error", "the server failed to answer this request")


def issues_from_pydantic(errors: Iterable[Mapping], hints: Mapping[str, str],
                         known: Mapping[str, Iterable[str]], aliases: Mapping[str, str]) -> list[Issue]:
    """pydantic's error dicts as Issues whose messages say the allowed values
    (and, for an unknown parameter, the known name it is closest to)."""
    out = []
    for e in errors:
        loc = tuple(e.get("loc", ()))
        kind, msg, given = e.get("type", "value_error"), e.get("msg", ""), e.get("input")
        field = str(loc[-1]) if loc else "request"
        if kind == "json_invalid":
            msg = f"malformed JSON ({(e.get('ctx') or {}).get('error', msg)})"
        elif kind == "extra_forbidden":
            names = list(known.get(str(loc[0]) if loc else "", ()))
            close = [aliases[field]] if aliases.get(field) in names else \
                difflib.get_close_matches(field, names, n=1, cutoff=0.6)
            msg = f"unknown parameter {echo(field)!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                          f"; the parameters are {', '.join(names)}" if names else "")
        elif kind == "missing":
            msg = f"required: give {field}" + (f" ({hints[field]})" if field in hints else "")
        elif kind not in ("value_error",) and field in hints:
            msg = f"{msg} (allowed: {hints[field]})" + (f", got {echo(given)!r}" if given is not None else "")
        out.append(Issue(loc, msg.replace("Value error, ", ""), kind, given))
    return out


# -- renderers: one per output ---------------------------------------------------------
def json_bytes(value: Any) -> bytes:
    """JSON as the service writes it: ASCII escapes (every string encodable), no NaN."""
    return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


OPENAI_PREFIX = "/v1/"


def openai_body(p: Problem) -> dict:
    """The OpenAI API's error shape: {"error": {message, type, param, code}}."""
    kind = "invalid_request_error" if p.status < 500 else "server_error"
    param = p.errors[0].field if p.errors else None
    return {"error": {"message": p.detail, "type": kind, "param": param, "code": p.code}}


def encode(p: Problem, path: str = "") -> tuple[bytes, bytes]:
    """(media type, body) of the Problem in the shape of the API `path`
    belongs to: the OpenAI routes answer in theirs, every other route in
    problem+json."""
    if path.startswith(OPENAI_PREFIX):
        return b"application/json", json_bytes(openai_body(p))
    return PROBLEM_JSON, json_bytes(p.body())


def problem_response(p: Problem, path: str = ""):
    """The Problem as a Starlette response (routes and exception handlers)."""
    from starlette.responses import Response

    media, body = encode(p, path)
    return Response(body, status_code=p.status, media_type=media.decode(),
                    headers={k.decode(): v.decode() for k, v in p.header_list()})


async def send_problem(send, p: Problem, path: str = "", extra_headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """The Problem straight from pure-ASGI middleware."""
    media, body = encode(p, path)
    await send({"type": "http.response.start", "status": p.status,
                "headers": [(b"content-type", media), (b"content-length", str(len(body)).encode()),
                            *p.header_list(), *extra_headers]})
    await send({"type": "http.response.body", "body": body})


def sse_error(p: Problem):
    """The Problem as the event stream's last event."""
    from fastapi.sse import ServerSentEvent

    return ServerSentEvent(event="error", raw_data=json_bytes(p.body()).decode("ascii"))
