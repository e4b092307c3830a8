"""The v3 routes: thin handlers that read, authenticate, call the service, and answer."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from sdapi.api.auth import authenticate
from sdapi.api.body import read_body
from sdapi.api.state import AppState, state_of
from sdapi.api.v3 import schemas, translate
from sdapi.api.v3.fields import Field, json_schema, read_fields
from sdapi.api.v3.protocol import (
    FETCH_FIELDS,
    JOBS_FIELDS,
    MAX_JOB_ID,
    generation_fields,
    read_generation,
)
from sdapi.auth.keys import ApiKey
from sdapi.errors import JobNotFound, RateLimited
from sdapi.eta import queue_time, wait_for
from sdapi.jobs import Job, Task
from sdapi.logs import job_context
from sdapi.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v3", tags=["v3"])


async def _caller(request: Request) -> tuple[AppState, dict[str, Any], ApiKey]:
    state = state_of(request)
    body = await read_body(request)
    key = await authenticate(request, body, state.backends.keys, state.throttle)
    return state, body, key


async def _generate(request: Request, task: Task) -> dict[str, Any]:
    state, body, key = await _caller(request)
    params = read_generation(body, state.settings, task)
    _within_rate(state, key)
    base_url = state.base_url(request)
    job = await run_in_threadpool(state.submissions.create, key, task, params, base_url)
    timeout = 0.0 if params.instant_response else state.settings.sync_timeout
    job = await state.submissions.wait(job, timeout)
    wait = await run_in_threadpool(wait_for, state.backends.queue, job)
    return translate.submitted(job, wait.eta, translate.Links(base_url, state.backends.images))


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


def _generation_doc(task: Task, settings: Settings | None = None) -> dict[str, Any]:
    # At import: the default limits (model_construct() reads no environment); a serving app
    # documents its own (served_limits).
    return _body_doc(generation_fields(settings or Settings.model_construct(), task))


GENERATION_PATHS = {
    "/api/v3/text2img": Task.TEXT2IMG,
    "/api/v3/img2img": Task.IMG2IMG,
    "/api/v3/inpaint": Task.INPAINT,
}
#: The other routes whose body has numbers (ids, a limit).
ID_BODIES = {
    "/api/v3/fetch": FETCH_FIELDS,
    "/api/v3/cancel": FETCH_FIELDS,
    "/api/v3/jobs": JOBS_FIELDS,
}


def served_limits(doc: dict[str, Any], settings: Settings) -> None:
    """Document the limits this server enforces (--max-width, ...) instead of the defaults, so
    clients and schema-driven tools see the ranges that will really be accepted.

    The bodies are set after FastAPI's own pass, which would turn integral bounds into floats
    (2**64 - 1 becomes 2**64)."""
    bodies = {path: _generation_doc(task, settings) for path, task in GENERATION_PATHS.items()}
    bodies |= {path: _body_doc(fields) for path, fields in ID_BODIES.items()}
    for path, body in bodies.items():
        doc["paths"][path]["post"]["requestBody"] = body["requestBody"]


@router.post(
    "/text2img",
    summary="Generate images from a prompt",
    openapi_extra=_generation_doc(Task.TEXT2IMG),
    responses=schemas.JOB,
)
async def text2img(request: Request) -> dict[str, Any]:
    return await _generate(request, Task.TEXT2IMG)


@router.post(
    "/img2img",
    summary="Generate images from an image and a prompt",
    openapi_extra=_generation_doc(Task.IMG2IMG),
    responses=schemas.JOB,
)
async def img2img(request: Request) -> dict[str, Any]:
    return await _generate(request, Task.IMG2IMG)


@router.post(
    "/inpaint",
    summary="Repaint the masked part of an image",
    openapi_extra=_generation_doc(Task.INPAINT),
    responses=schemas.JOB,
)
async def inpaint(request: Request) -> dict[str, Any]:
    return await _generate(request, Task.INPAINT)


async def _owned(request: Request, raw_id: Any) -> tuple[AppState, Job]:
    """The caller's job, by the id in the path or `request_id` in the body."""
    state, body, key = await _caller(request)
    if raw_id is None:
        raw_id = read_fields(body, FETCH_FIELDS)["request_id"]
    return state, await run_in_threadpool(_own_job, state, key, raw_id)


async def _fetch(request: Request, raw_id: Any) -> dict[str, Any]:
    state, job = await _owned(request, raw_id)
    wait = await run_in_threadpool(wait_for, state.backends.queue, job)
    links = translate.Links(state.base_url(request), state.backends.images)
    return translate.fetched(job, wait.eta, links, position=wait.position)


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


@router.post(
    "/fetch/{job_id}",
    summary="Result of a queued job",
    openapi_extra=_body_doc([]),
    responses=schemas.JOB,
)
async def fetch_by_path(request: Request, job_id: str) -> dict[str, Any]:
    return await _fetch(request, job_id)


@router.post(
    "/fetch",
    summary="Result of a queued job, id as request_id in the body",
    openapi_extra=_body_doc(FETCH_FIELDS),
    responses=schemas.JOB,
)
async def fetch_by_body(request: Request) -> dict[str, Any]:
    return await _fetch(request, None)


async def _cancel(request: Request, raw_id: Any) -> dict[str, Any]:
    state, job = await _owned(request, raw_id)
    job = await run_in_threadpool(state.backends.queue.cancel, job.id) or job
    with job_context([job.id]):
        log.info(
            "cancel asked: the job is %s", "cancelling" if job.cancel_requested else job.status
        )
    return translate.cancel_answer(job)


@router.post(
    "/cancel/{job_id}",
    summary="Cancel a queued or running job",
    openapi_extra=_body_doc([]),
    responses=schemas.CANCEL,
)
async def cancel_by_path(request: Request, job_id: str) -> dict[str, Any]:
    return await _cancel(request, job_id)


@router.post(
    "/cancel",
    summary="Cancel a job, id as request_id in the body",
    openapi_extra=_body_doc(FETCH_FIELDS),
    responses=schemas.CANCEL,
)
async def cancel_by_body(request: Request) -> dict[str, Any]:
    return await _cancel(request, None)


@router.post(
    "/jobs",
    summary="The key's newest jobs (sdapi)",
    openapi_extra=_body_doc(JOBS_FIELDS),
    responses=schemas.JOBS,
)
async def jobs(request: Request) -> dict[str, Any]:
    state, body, key = await _caller(request)
    limit = read_fields(body, JOBS_FIELDS)["limit"]
    found = await run_in_threadpool(state.backends.queue.recent, key.id, limit=limit)
    links = translate.Links(state.base_url(request), state.backends.images)
    return {"status": "success", "jobs": [translate.summary(job, links) for job in found]}


@router.post(
    "/system_load",
    summary="Queue depth and the time to drain it",
    openapi_extra=_body_doc([]),
    responses=schemas.LOAD,
)
async def system_load(request: Request) -> dict[str, Any]:
    state, _, _ = await _caller(request)
    queue = state.backends.queue
    stats = await run_in_threadpool(queue.stats)
    seconds = await run_in_threadpool(queue_time, queue)
    return {"queue_num": stats.queued + stats.processing, "queue_time": seconds, "status": "ok"}
