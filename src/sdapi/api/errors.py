"""The one place errors become HTTP answers, in the v3 error shape.

By default every application error is HTTP 200 with `status: "error"` (what v3 clients branch
on); with `http_errors` on, the error's own 4xx status is used instead.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from sdapi.errors import INVALID_KEY_TIP, InvalidApiKey, RateLimited, SdapiError

log = logging.getLogger(__name__)


def error_body(exc: SdapiError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": exc.wire_status,
        "message": exc.message,
        "messege": exc.message,
    }
    if isinstance(exc, InvalidApiKey):
        body["tip"] = INVALID_KEY_TIP
    if isinstance(exc, RateLimited):
        body["retry_after"] = exc.retry_after  # the 2026 wire's field (spec 11.3)
    if exc.detail:
        body["detail"] = exc.detail
    return body


def install(app: FastAPI, *, http_errors: bool) -> None:
    async def on_sdapi_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SdapiError)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        status = exc.http_status if http_errors else 200
        return JSONResponse(error_body(exc), status_code=status, headers=headers)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        body = {"status": "error", "message": exc.detail, "messege": exc.detail}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        body = {
            "status": "error",
            "message": "The request is not valid",
            "messege": "The request is not valid",
        }
        return JSONResponse(body, status_code=422 if http_errors else 200)

    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {
            "status": "error",
            "message": "Internal server error",
            "messege": "Internal server error",
        }
        return JSONResponse(body, status_code=500)

    app.add_exception_handler(SdapiError, on_sdapi_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_crash)
