"""PostgreSQL: the Measurements port (/metrics counters and the calls' costs)."""

from __future__ import annotations

from collections.abc import Sequence

from sdapi.costs import OBSERVATIONS, Call, Cost
from sdapi.metrics import Sample
from sdapi.queue.base import (
    ANY_KEY,
    Learned,
    relearn,
)
from sdapi.queue.postgres.common import PostgresBase, bump
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


class PostgresMeasurements(PostgresBase):
    def record_call(
        self, batch_key: str, model_key: str, call: Call, *, cap: int, prior: Cost
    ) -> None:
        now = self.clock()
        with self.db.transaction() as conn:
            # One worker at a time relearns a model: two fits from the same history would race.
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 2))", (model_key,))
            for key in (batch_key, model_key, ANY_KEY):
                conn.execute(
                    RECORD_TIMING.format(p="%s"), (key, call.units, call.steps, call.seconds, now)
                )
                conn.execute(TRIM_TIMINGS.format(p="%s"), (key, key, OBSERVATIONS))

            def history(key: str) -> list[Call]:
                rows = conn.execute(TIMINGS.format(p="%s"), (key,)).fetchall()
                return [Call(row["units"], row["steps"], row["seconds"]) for row in rows]

            learned = relearn(history, batch_key, model_key, prior)
            with conn.cursor() as cur:
                cur.executemany(
                    UPSERT_COST.format(p="%s"), sorted(cost_rows(learned, batch_key, cap, now))
                )

    def costs(self, keys: Sequence[str]) -> dict[str, Learned]:
        if not keys:
            return {}
        with self.db.connection() as conn:
            rows = conn.execute(f"{COSTS} WHERE rate_key = ANY(%s)", (list(keys),)).fetchall()
        return {row["rate_key"]: learned_from_row(row) for row in rows}

    def record_metrics(self, samples: Sequence[Sample]) -> None:
        with self.db.transaction() as conn:
            bump(conn, samples)

    def metrics(self) -> list[Sample]:
        with self.db.connection() as conn:
            rows = conn.execute(READ_METRICS).fetchall()
        return [(row["name"], row["labels"], row["value"]) for row in rows]
