"""The routes of every family (v3, dreambooth v3/v4, v6 images/realtime): thin handlers that
read, authenticate, call the service, and answer in the family's spelling (see wires.py)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from sdapi.api.auth import authenticate
from sdapi.api.body import read_body
from sdapi.api.state import AppState, state_of
from sdapi.api.v3 import schemas, translate
from sdapi.api.v3.fields import json_schema, read_fields
from sdapi.api.v3.protocol import (
    FETCH_FIELDS,
    JOBS_FIELDS,
    MAX_JOB_ID,
    MODEL_FIELDS,
    generation_fields,
    read_generation,
    read_upscale,
    upscale_fields,
    with_model_defaults,
)
from sdapi.api.v3.wires import V3, WIRES, Wire
from sdapi.auth.keys import ApiKey
from sdapi.errors import JobNotFound, ModelNotFound, RateLimited
from sdapi.eta import queue_time, wait_for
from sdapi.fields import Field
from sdapi.jobs import Job, Task
from sdapi.logs import job_context
from sdapi.settings import Settings

log = logging.getLogger(__name__)


async def _caller(request: Request) -> tuple[AppState, dict[str, Any], ApiKey]:
    state = state_of(request)
    body = await read_body(request)
    key = await authenticate(request, body, state.backends.keys, state.throttle)
    return state, body, key


async def _generate(request: Request, task: Task, wire: Wire) -> dict[str, Any]:
    state, body, key = await _caller(request)
    body = with_model_defaults(body, state.registry, state.settings)
    params = read_generation(body, state.settings, task, model_required=wire.model_required)
    _within_rate(state, key)
    base_url = state.base_url(request)
    job = await run_in_threadpool(state.submissions.create, key, task, params, base_url)
    return await _answer(state, request, job, params.instant_response, wire)


async def _upscale(request: Request) -> dict[str, Any]:
    """super_resolution (spec section 8): queued like any job, polled at the v3 fetch route."""
    state, body, key = await _caller(request)
    params = read_upscale(body, state.settings)
    _within_rate(state, key)
    base_url = state.base_url(request)
    job = await run_in_threadpool(state.submissions.create_upscale, key, params, base_url)
    return await _answer(state, request, job, params.instant_response, V3)


async def _answer(
    state: AppState, request: Request, job: Job, instant: bool, wire: Wire
) -> dict[str, Any]:
    """The job once it ended within the sync window, or as it stands then."""
    job = await state.submissions.wait(job, 0.0 if instant else state.settings.sync_timeout)
    eta = 0.0
    if not job.status.is_terminal:  # an ended job is answered without reading the queue again
        eta = (await run_in_threadpool(wait_for, state.backends.queue, job)).eta
    return translate.submitted(job, eta, _links(state, request, wire), wire)


def _links(state: AppState, request: Request, wire: Wire) -> translate.Links:
    return translate.Links(state.base_url(request), state.backends.images, wire.fetch_result)


def _within_rate(state: AppState, key: ApiKey) -> None:
    """Generation requests per minute: the key's own limit, else the server's (0: none)."""
    limit = key.limits.rate_per_minute
    per_minute = state.settings.rate_limit if limit is None else limit
    if per_minute and (wait := state.limiter.take(key.id, per_minute)) is not None:
        detail = f"this key may make {per_minute:g} generation requests per minute"
        raise RateLimited(retry_after=wait, detail=detail)


def _body_doc(fields: list[Field]) -> dict[str, Any]:
    """The request body of a route, from the same Field table that reads it."""
    schema = json_schema(fields)
    schema["properties"]["key"] = {"type": "string", "description": "Your API key."}
    content = {"schema": schema}
    return {
        "requestBody": {
            "content": {"application/json": content, "application/x-www-form-urlencoded": content}
        }
    }


def _generation_doc(
    task: Task, settings: Settings | None = None, wire: Wire = V3
) -> dict[str, Any]:
    # At import: the default limits (model_construct() reads no environment); a serving app
    # documents its own (served_limits).
    doc = _body_doc(generation_fields(settings or Settings.model_construct(), task))
    if wire.model_required:  # one schema object serves both content types
        schema = doc["requestBody"]["content"]["application/json"]["schema"]
        schema["required"] = [*schema["required"], "model_id"]
    return doc


#: The other routes whose body has numbers (ids, a limit), by path below a family's prefix.
ID_BODIES = {"/fetch": FETCH_FIELDS, "/cancel": FETCH_FIELDS, "/jobs": JOBS_FIELDS}


def served_limits(doc: dict[str, Any], settings: Settings) -> None:
    """Document the limits this server enforces (--max-width, ...) instead of the defaults, so
    clients and schema-driven tools see the ranges that will really be accepted.

    The bodies are set after FastAPI's own pass, which would turn integral bounds into floats
    (2**64 - 1 becomes 2**64)."""
    bodies: dict[str, dict[str, Any]] = {}
    for wire in WIRES:
        for task, path in wire.tasks.items():
            bodies[wire.prefix + path] = _generation_doc(task, settings, wire)
        for path, fields in ID_BODIES.items():
            bodies[wire.prefix + path] = _body_doc(fields)
    for path in UPSCALE_PATHS:
        bodies[path] = _body_doc(upscale_fields(settings))
    for path, body in bodies.items():
        if path in doc["paths"]:
            doc["paths"][path]["post"]["requestBody"] = body["requestBody"]


async def _owned(request: Request, raw_id: Any) -> tuple[AppState, Job]:
    """The caller's job, by the id in the path or `request_id` in the body."""
    state, body, key = await _caller(request)
    if raw_id is None:
        raw_id = read_fields(body, FETCH_FIELDS)["request_id"]
    return state, await run_in_threadpool(_own_job, state, key, raw_id)


async def _fetch(request: Request, raw_id: Any, wire: Wire) -> dict[str, Any]:
    state, job = await _owned(request, raw_id)
    wait = await run_in_threadpool(wait_for, state.backends.queue, job)
    links = _links(state, request, wire)
    return translate.fetched(job, wait.eta, links, position=wait.position, wire=wire)


def _own_job(state: AppState, key: ApiKey, raw_id: Any) -> Job:
    """The caller's job; another key's job is as unknown as a missing one."""
    try:
        job_id = int(str(raw_id).strip())
    except ValueError:
        raise JobNotFound from None
    if not 0 <= job_id <= MAX_JOB_ID:  # no such job, and beyond what a database can look up
        raise JobNotFound
    job = state.backends.queue.get(job_id)
    if job is None or job.owner != key.id:
        raise JobNotFound
    return job


async def _cancel(request: Request, raw_id: Any) -> dict[str, Any]:
    state, job = await _owned(request, raw_id)
    cancelled = await run_in_threadpool(state.backends.queue.cancel, job.id)
    job = cancelled or job
    state_now = "cancelling" if job.cancel_requested else job.status
    with job_context([job.id]):
        log.info("cancel asked: the job is %s", state_now)
    return translate.cancel_answer(job)


async def _jobs(request: Request) -> dict[str, Any]:
    state, body, key = await _caller(request)
    limit = read_fields(body, JOBS_FIELDS)["limit"]
    found = await run_in_threadpool(state.backends.queue.recent, key.id, limit=limit)
    links = _links(state, request, V3)
    return {"status": "success", "jobs": [translate.summary(job, links) for job in found]}


async def _system_load(request: Request) -> dict[str, Any]:
    state, _, _ = await _caller(request)
    queue = state.backends.queue
    stats = await run_in_threadpool(queue.stats)
    seconds = await run_in_threadpool(queue_time, queue)
    return {"queue_num": stats.queued + stats.processing, "queue_time": seconds, "status": "ok"}


async def _model_list(request: Request) -> list[dict[str, Any]]:
    state, _, _ = await _caller(request)
    return state.registry.model_list(state.settings.model)


async def _model_reload(request: Request) -> dict[str, Any]:
    state, body, _ = await _caller(request)
    model_id = read_fields(body, MODEL_FIELDS)["model_id"]
    if model_id not in state.settings.model:
        raise ModelNotFound
    # Workers load a served model when a job needs it and keep it while memory allows: there
    # is nothing idle to bring back, so the model is ready as it stands.
    return {"status": "success", "message": "Model is ready", "model_id": model_id}


TASK_SUMMARIES = {
    Task.TEXT2IMG: "Generate images from a prompt",
    Task.IMG2IMG: "Generate images from an image and a prompt",
    Task.INPAINT: "Repaint the masked part of an image",
}


def family_router(wire: Wire) -> APIRouter:
    """Every route of one family, on the shared handlers."""
    router = APIRouter(prefix=wire.prefix, tags=[wire.name])
    post = functools.partial(router.add_api_route, methods=["POST"], response_model=None)
    for task, path in wire.tasks.items():
        post(
            path,
            _bind(_generate, task, wire),
            summary=TASK_SUMMARIES[task],
            openapi_extra=_generation_doc(task, None, wire),
            responses=schemas.JOB,
        )
    post("/fetch/{job_id}", _with_id(_fetch, wire), summary="Result of a job",
         openapi_extra=_body_doc([]), responses=schemas.FETCH)  # fmt: skip
    post("/fetch", _bind(_fetch, None, wire), summary="Result of a job, id as request_id",
         openapi_extra=_body_doc(FETCH_FIELDS), responses=schemas.FETCH)  # fmt: skip
    post("/cancel/{job_id}", _with_id(_cancel), summary="Cancel a queued or running job",
         openapi_extra=_body_doc([]), responses=schemas.CANCEL)  # fmt: skip
    post("/cancel", _bind(_cancel, None), summary="Cancel a job, id as request_id",
         openapi_extra=_body_doc(FETCH_FIELDS), responses=schemas.CANCEL)  # fmt: skip
    _extras(wire, post)
    return router


def _extras(wire: Wire, post: Callable[..., Any]) -> None:
    if "jobs" in wire.extras:
        post("/jobs", _jobs, summary="The key's newest jobs (sdapi)",
             openapi_extra=_body_doc(JOBS_FIELDS), responses=schemas.JOBS)  # fmt: skip
    if "system_load" in wire.extras:
        post("/system_load", _system_load, summary="Queue depth and the time to drain it",
             openapi_extra=_body_doc([]), responses=schemas.LOAD)  # fmt: skip
    if "model_list" in wire.extras:
        post("/model_list", _model_list, summary="The models this server serves",
             openapi_extra=_body_doc([]), responses=schemas.MODELS)  # fmt: skip
        post("/model_reload", _model_reload, summary="Make sure a model is ready",
             openapi_extra=_body_doc(MODEL_FIELDS), responses=schemas.RELOAD)  # fmt: skip


def _bind(handler: Callable[..., Any], *args: Any) -> Callable[[Request], Any]:
    """A route endpoint calling `handler(request, *args)`."""

    async def endpoint(request: Request) -> Any:
        return await handler(request, *args)

    return endpoint


def _with_id(handler: Callable[..., Any], *args: Any) -> Callable[[Request, str], Any]:
    """A route endpoint taking the job id from the path."""

    async def endpoint(request: Request, job_id: str) -> Any:
        return await handler(request, job_id, *args)

    return endpoint


#: super_resolution lived under v3, and under v5 in later docs: one handler for both.
UPSCALE_PATHS = ("/api/v3/super_resolution", "/api/v5/super_resolution")


def upscale_router() -> APIRouter:
    router = APIRouter(tags=["super resolution"])
    for path in UPSCALE_PATHS:
        router.add_api_route(
            path,
            _upscale,
            methods=["POST"],
            response_model=None,
            summary="Upscale an image 2, 3 or 4 times",
            # At import: the default limits (as _generation_doc); served_limits sets the app's.
            openapi_extra=_body_doc(upscale_fields(Settings.model_construct())),
            responses=schemas.UPSCALE,
        )
    return router


routers = [*(family_router(wire) for wire in WIRES), upscale_router()]
