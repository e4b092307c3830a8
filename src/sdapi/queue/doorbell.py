"""Waking the processes that share one SQLite file, the moment something they wait for changes.

SQLite cannot notify another process, so without this a worker would poll for new jobs and a
request waiting in its sync window would poll for its job: each poll a delay that a lone
request pays in full. Every process that waits binds a Unix datagram socket in one folder
beside the database, named for what it waits on (`work.<pid>.<token>`, `jobs.<pid>.<token>`);
a process that changes something sends a datagram to each socket of that topic after its
transaction commits. A socket left by a dead process refuses the datagram and is removed.

Datagrams queue in the socket while nobody reads, so a change between a waiter's look at the
database and its wait is never missed. Everything here is best effort: a full or missing
folder degrades waiting to a sleep of the caller's timeout (the caller looks at the database
again after it), never to an error.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import select
import socket
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

#: Unix socket paths hold at most 107 bytes on Linux (103 on macOS); longer folders move to the
#: temp directory, under a name derived from the database's path.
MAX_SOCKET_PATH = 100
#: The most one wait reads at once; later datagrams wait for the next read.
MAX_DATAGRAMS = 256
DATAGRAM_BYTES = 4096

#: Topics: "a job may be waiting" (workers) and "these jobs changed" (waiting requests).
WORK = "work"
JOBS = "jobs"


def folder_for(database: Path) -> Path:
    """The folder of the doorbell of the SQLite file at `database`."""
    beside = database.resolve().with_name(database.name + ".wake")
    if len(str(beside / f"{JOBS}.{2**22}.{'0' * 12}")) <= MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(str(database.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"sdapi-wake-{digest}"


class Doorbell:
    """Rings and listens in one folder; one per queue object, shared by its threads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._listeners: dict[str, Listener] = {}
        self._lock = threading.Lock()

    def ring(self, topic: str, message: str = "") -> None:
        """Tell every listener of `topic`; never blocks, never raises."""
        data = message.encode()[:DATAGRAM_BYTES]
        try:
            entries = [e for e in os.scandir(self.folder) if e.name.startswith(topic + ".")]
        except OSError:
            return  # nobody has listened yet
        for entry in entries:
            try:
                self._sender.sendto(data, entry.path)
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):  # its process is gone
                    os.unlink(entry.path)
            except OSError as exc:
                # EAGAIN: its queue is full of wake-ups it has not read yet; one more adds nothing.
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                    log.debug("doorbell: cannot ring %s: %s", entry.path, exc)

    def wait(self, topic: str, timeout: float) -> list[str] | None:
        """Block until `topic` rings or `timeout` passes: the messages received ([] on time
        out), or None when this process cannot listen (the caller has slept out `timeout`)."""
        listener = self._listener(topic)
        if listener is None:
            threading.Event().wait(max(timeout, 0.0))
            return None
        return listener.wait(timeout)

    def _listener(self, topic: str) -> Listener | None:
        with self._lock:
            if topic not in self._listeners:
                listener = Listener.bind(self.folder, topic)
                if listener is None:
                    return None
                self._listeners[topic] = listener
            return self._listeners[topic]

    def close(self) -> None:
        with self._lock:
            for listener in self._listeners.values():
                listener.close()
            self._listeners.clear()
        self._sender.close()


class Listener:
    """One bound socket; its datagrams are the rings of its topic since it was bound."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self.sock = sock
        self.path = path

    @classmethod
    def bind(cls, folder: Path, topic: str) -> Listener | None:
        path = folder / f"{topic}.{os.getpid()}.{secrets.token_hex(6)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            log.warning("cannot listen for changes in %s (polling instead): %s", folder, exc)
            return None
        sock.setblocking(False)
        return cls(sock, path)

    def wait(self, timeout: float) -> list[str]:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        ready = poller.poll(max(timeout, 0.0) * 1000)
        messages: list[str] = []
        while ready and len(messages) < MAX_DATAGRAMS:
            try:
                messages.append(self.sock.recv(DATAGRAM_BYTES).decode(errors="replace"))
            except BlockingIOError:
                break
        return messages

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.sock.close()
