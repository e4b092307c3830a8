"""The doorbell that wakes the processes sharing a SQLite file."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from sdapi.queue.doorbell import JOBS, WORK, Doorbell, folder_for


def test_every_listener_of_a_topic_hears_each_ring(tmp_path: Path) -> None:
    a, b, ringer = Doorbell(tmp_path), Doorbell(tmp_path), Doorbell(tmp_path)
    assert a.wait(JOBS, 0) == [] and b.wait(JOBS, 0) == [] and a.wait(WORK, 0) == []
    ringer.ring(JOBS, "1,2")
    ringer.ring(JOBS, "3")
    assert a.wait(JOBS, 5) == ["1,2", "3"]
    assert b.wait(JOBS, 5) == ["1,2", "3"]
    assert a.wait(WORK, 0) == [], "another topic's listener hears nothing"
    for bell in (a, b, ringer):
        bell.close()
    assert list(tmp_path.iterdir()) == [], "closing removes the sockets"


def test_a_ring_sent_before_the_wait_is_not_lost(tmp_path: Path) -> None:
    waiter, ringer = Doorbell(tmp_path), Doorbell(tmp_path)
    waiter.wait(WORK, 0)  # listening from now on
    ringer.ring(WORK, "sdapi-tiny")
    assert waiter.wait(WORK, 5) == ["sdapi-tiny"]


def test_a_dead_listeners_socket_is_removed_by_the_next_ring(tmp_path: Path) -> None:
    dead = tmp_path / f"{JOBS}.999999.abc"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(dead))
    sock.close()  # its process died without cleaning up
    Doorbell(tmp_path).ring(JOBS, "1")
    assert not dead.exists()


def test_ringing_a_folder_nobody_listens_in_does_nothing(tmp_path: Path) -> None:
    Doorbell(tmp_path / "missing").ring(JOBS, "1")  # no error


def test_without_a_folder_to_listen_in_a_wait_is_a_sleep(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert Doorbell(blocked).wait(JOBS, 0.01) is None


def test_the_folder_sits_beside_the_database_unless_its_path_is_too_long(tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="sd"))  # pytest's own tmp_path may already be too long
    try:
        assert folder_for(short / "sdapi.db") == short.resolve() / "sdapi.db.wake"
    finally:
        short.rmdir()
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "sdapi.db"
    moved = folder_for(deep)
    assert moved.parent == Path(tempfile.gettempdir()) and moved.name.startswith("sdapi-wake-")
    assert folder_for(deep) == moved, "every process finds the same folder"
    assert os.sep not in moved.name
