"""SQLite: the Measurements port (/metrics counters and the calls' costs)."""

from __future__ import annotations

from collections.abc import Sequence

from sdapi.costs import OBSERVATIONS, Call, Cost
from sdapi.metrics import Sample
from sdapi.queue.base import (
    ANY_KEY,
    Learned,
    relearn,
)
from sdapi.queue.rows import (
    COSTS,
    READ_METRICS,
    RECORD_TIMING,
    TIMINGS,
    TRIM_TIMINGS,
    UPSERT_COST,
    cost_rows,
    learned_from_row,
)
from sdapi.queue.sqlite.common import SQLiteBase, bump


class SQLiteMeasurements(SQLiteBase):
    def record_call(
        self, batch_key: str, model_key: str, call: Call, *, cap: int, prior: Cost
    ) -> None:
        now = self.clock()
        with self.db.write() as conn:
            for key in (batch_key, model_key, ANY_KEY):
                conn.execute(
                    RECORD_TIMING.format(p="?"), (key, call.units, call.steps, call.seconds, now)
                )
                conn.execute(TRIM_TIMINGS.format(p="?"), (key, key, OBSERVATIONS))

            def history(key: str) -> list[Call]:
                return [Call(*row) for row in conn.execute(TIMINGS.format(p="?"), (key,))]

            learned = relearn(history, batch_key, model_key, prior)
            conn.executemany(UPSERT_COST.format(p="?"), cost_rows(learned, batch_key, cap, now))

    def costs(self, keys: Sequence[str]) -> dict[str, Learned]:
        if not keys:
            return {}
        rows = (
            self.db.connection()
            .execute(f"{COSTS} WHERE rate_key IN ({','.join('?' * len(keys))})", tuple(keys))
            .fetchall()
        )
        return {row["rate_key"]: learned_from_row(row) for row in rows}

    def record_metrics(self, samples: Sequence[Sample]) -> None:
        with self.db.write() as conn:
            bump(conn, samples)

    def metrics(self) -> list[Sample]:
        rows = self.db.connection().execute(READ_METRICS).fetchall()
        return [(row[0], row[1], row[2]) for row in rows]
