"""The OpenAPI document, trimmed to what the server really answers.

FastAPI adds a 422 "validation error" answer to every route with parameters; sdapi never sends
that shape (bad input is a v3 `status: "error"` answer, HTTP 200 unless `--http-errors`), so
those entries go, and with `--http-errors` the 4xx answers are documented with the v3 error body.
Generation bodies carry the serving app's own limits (`--max-width`, `--max-steps`, ...).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from sdapi.api.v3 import routes as v3

_FASTAPI_ONLY = ("HTTPValidationError", "ValidationError")


def install(app: FastAPI, *, http_errors: bool) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = _document(app, http_errors)
            state = getattr(app.state, "sdapi", None)
            if state is None:  # not serving yet: the default limits, not worth keeping
                return doc
            v3.served_limits(doc, state.settings)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document(app: FastAPI, http_errors: bool) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            operation["responses"].pop("422", None)
            if http_errors and path.startswith("/api/"):
                operation["responses"]["4XX"] = {
                    "description": "The v3 error body, with the error's own HTTP status",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
    schemas = doc.get("components", {}).get("schemas", {})
    for name in _FASTAPI_ONLY:
        schemas.pop(name, None)
    return doc
