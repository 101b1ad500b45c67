"""The OpenAPI document, as the service really answers.

FastAPI files an endpoint's extra responses under the endpoint's own media
type, so the event stream's JSON errors would be documented as
text/event-stream; here every error is documented as what it is, one
problem+json body (app/errors.py) whatever the status, and the models only
referenced by hand (GenerateResult, the POST body) are in the components."""
from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

from .schemas import GenerateBody, GenerateResult, GifBody, GridBody, MorphBody, ProblemBody, StreamBody

WHY = {
    400: "The request names another server (Host), or is malformed.",
    401: "An API key is required (when the server has keys): Authorization: Bearer <key>.",
    403: "A cross-origin request from an origin the server does not allow.",
    408: "The request body did not arrive in time.",
    413: "The request body is larger than the server takes.",
    415: "The body is compressed (Content-Encoding): send it as it is.",
    422: "A parameter is wrong: `errors` lists each, `detail` names the field and its allowed values; a request "
         "that could not finish within the deadline even alone is one too (code too_slow).",
    429: "This client sends too many requests (its own rate limit); see Retry-After.",
    503: "Not ready, shutting down, or too much work admitted already (code busy); see Retry-After.",
    504: "The request did not finish within the server's deadline.",
}
PROBLEM_MEDIA = "application/problem+json"


def errors(*codes: int) -> dict:
    """`responses=` entries for these error codes, each as a problem body."""
    return {code: {"description": WHY[code], "content": {PROBLEM_MEDIA: {"schema": {
        "$ref": f"#/components/schemas/{ProblemBody.__name__}"}}}} for code in codes}


GENERATION_ERRORS = errors(400, 401, 403, 408, 413, 415, 422, 429, 503, 504)
SERVICE_ERRORS = errors(400, 401, 403, 429)


def query_parameters(model, header: dict | None = None) -> dict:
    """`openapi_extra` documenting a query model's fields (and a header) as
    parameters, as FastAPI would if it parsed them (app/dependencies.py
    reads them itself). A query value is never JSON null: the null branch of
    an optional field is left out."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema["properties"].items():
        branches = [b for b in prop.get("anyOf", ()) if b.get("type") != "null"]
        body = dict(branches[0]) if len(branches) == 1 else {k: v for k, v in prop.items() if k != "anyOf"} | (
            {"anyOf": branches} if branches else {})
        for key in ("description", "examples", "default", "title"):
            if key in prop:
                body.setdefault(key, prop[key])
        body.pop("title", None)
        params.append({"name": name, "in": "query", "required": name in required,
                       "description": prop.get("description", ""), "schema": body})
    if header:
        params.append(header)
    return {"parameters": params}


def build_openapi(app, declared: list) -> dict:
    """The document of the app's own routes (docs, probes) and of the
    routers' declarations, whichever way the app dispatches them."""
    if app.openapi_schema is None:
        routes = [r for r in app.routes if r.path not in {d.path for d in declared}] + declared
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (GenerateResult, GenerateBody, StreamBody, GifBody, MorphBody, GridBody, ProblemBody):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        components.pop("HTTPValidationError", None)  # FastAPI's own 422 shape: never sent here
        components.pop("ValidationError", None)
        for path in schema.get("paths", {}).values():  # FastAPI adds its 422 to each operation: ours is above
            for op in path.values():
                if isinstance(op, dict) and "422" in op.get("responses", {}):
                    content = op["responses"]["422"].get("content", {})
                    if "application/json" in content and PROBLEM_MEDIA not in content:
                        op["responses"]["422"] = errors(422)[422]
        app.openapi_schema = schema
    return app.openapi_schema


DOC_ASSETS = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI's files, as packaged


def add_docs(app) -> None:
    """/docs (Swagger UI) from files the service serves itself: it works with
    no internet, where FastAPI's default loads from a CDN. (No ReDoc: its
    bundle fetches a logo from its own CDN whatever it is told.)"""
    app.mount("/docs-assets", StaticFiles(directory=DOC_ASSETS), name="docs-assets")

    @app.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    async def swagger_ui():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API docs",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")
