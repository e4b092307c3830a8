"""PostgreSQL LISTEN: one connection per channel and process, that sleeps until a NOTIFY."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import psycopg

from sdapi.database.postgres import PostgresDatabase, reason

log = logging.getLogger(__name__)


class Listener:
    """Waits for notifications on `channel`; opened by the first wait (API replicas that never
    wait never hold one), opened again after it breaks.

    Never raises for a database problem: an idle wait is not where an outage should kill a
    worker or a request (their next query reports it). Without a connection, a wait degrades
    to a sleep of its timeout (polling).
    """

    def __init__(self, db: PostgresDatabase, channel: str) -> None:
        self.db = db
        self.channel = channel
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def wait(self, timeout: float) -> list[str] | None:
        """The payloads notified ([] when `timeout` passed first), or None when what happened
        meanwhile is unknown: LISTEN just started (whatever came before sent no notification,
        so the caller must look again), or the connection is down (the timeout was slept out).
        """
        timeout = max(0.0, timeout)
        deadline = time.monotonic() + timeout
        # One waiter at a time on the one connection; another thread waits its turn, which for
        # it is the same as sleeping out its timeout.
        if not self._lock.acquire(timeout=timeout):
            return []
        try:
            if self._conn is None:
                if self._start(timeout):
                    return None
            else:
                payloads = self._await(self._conn, deadline)
                if payloads is not None:
                    return payloads
            time.sleep(max(0.0, deadline - time.monotonic()))
            return None
        finally:
            self._lock.release()

    def _start(self, timeout: float) -> bool:
        try:
            self._conn = self.db.listen_connection(self.channel, timeout=timeout)
        except psycopg.Error as exc:
            log.warning("cannot LISTEN on %s (polling until it can): %s", self.channel, reason(exc))
            return False
        return True

    def _await(self, conn: psycopg.Connection[Any], deadline: float) -> list[str] | None:
        """Notifications until the deadline (the first, and those queued behind it: a burst is
        answered by one look); None if the connection broke."""
        try:
            remaining = max(0.0, deadline - time.monotonic())
            # list(): each notifies() generator must run to its end, as it holds the
            # connection's lock until then.
            first = list(conn.notifies(timeout=remaining, stop_after=1))
            rest = list(conn.notifies(timeout=0)) if first else []
        except psycopg.Error as exc:
            log.warning(
                "lost the LISTEN connection on %s (will reconnect): %s", self.channel, reason(exc)
            )
            self.drop()
            return None
        return [note.payload for note in first + rest]

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # already broken: closing is all we want
                conn.close()

    def close(self) -> None:
        with self._lock:  # waits out a wait in flight (bounded by its timeout)
            self.drop()
