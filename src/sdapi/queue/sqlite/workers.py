"""SQLite: the Workers port (the live workers)."""

from __future__ import annotations

from sdapi.queue.base import WorkerInfo
from sdapi.queue.rows import REGISTER_WORKER, REMOVE_WORKER, WORKER_SEEN, worker_args
from sdapi.queue.sqlite.common import SQLiteBase


class SQLiteWorkers(SQLiteBase):
    def register_worker(self, info: WorkerInfo) -> None:
        with self.db.write() as conn:
            conn.execute(REGISTER_WORKER.format(p="?"), worker_args(info, self.clock()))

    def worker_seen(self, worker_id: str, state: str) -> None:
        with self.db.write() as conn:
            conn.execute(WORKER_SEEN.format(p="?"), (self.clock(), state, worker_id))

    def remove_worker(self, worker_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(REMOVE_WORKER.format(p="?"), (worker_id,))
