"""The job queue: the `JobQueue` port and its backends (memory for tests, SQLite by default)."""

from __future__ import annotations

from sdapi.queue.base import JobQueue, NewJob, WorkerInfo

__all__ = ["JobQueue", "NewJob", "WorkerInfo"]
