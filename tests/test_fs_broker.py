"""The embedded broker's transport (workers/fs_broker.py) on real files and sockets."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from kombu.exceptions import ChannelError

from workers.fs_broker import QUARANTINE_FOLDER, WAKE_FOLDER, Transport, quarantined_count


def _options(root: Path, polling_interval: float = 1.0) -> dict[str, Any]:
    for sub in ("out", "control"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(root / "out"),
        "data_folder_out": str(root / "out"),
        "control_folder": str(root / "control"),
        "polling_interval": polling_interval,
    }


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "broker"


def _connection(root: Path, polling_interval: float = 1.0) -> Connection:
    return Connection(
        "filesystem://",
        transport=Transport,
        transport_options=_options(root, polling_interval),
    )


def test_messages_round_trip_and_leave_no_temporary_file(broker: Path) -> None:
    with _connection(broker) as conn:
        queue = conn.SimpleQueue("rollouts")
        queue.put({"job": "job_1"})
        assert [p.name for p in (broker / "out").iterdir() if not p.name.endswith(".msg")] == []
        message = queue.get(timeout=5)
        assert message.payload == {"job": "job_1"}
        message.ack()
        queue.close()
    assert list((broker / "out").iterdir()) == []


def test_unreadable_messages_are_quarantined_and_the_next_one_delivered(broker: Path) -> None:
    with _connection(broker) as conn:
        queue = conn.SimpleQueue("rollouts")
        # what a full disk and a careless hand leave in the folder, oldest first
        (broker / "out" / "0001_empty.rollouts.msg").write_bytes(b"")
        (broker / "out" / "0002_garbage.rollouts.msg").write_bytes(b"{not json")
        (broker / "out" / "0003_list.rollouts.msg").write_bytes(b"[1, 2]")
        (broker / "out" / "0004_nodelivery.rollouts.msg").write_bytes(
            b'{"body": "", "properties": {}}'
        )
        queue.put({"job": "job_2"})
        message = queue.get(timeout=5)
        assert message.payload == {"job": "job_2"}
        message.ack()
        queue.close()
    assert quarantined_count(broker) == 4
    quarantined = sorted(p.name for p in (broker / QUARANTINE_FOLDER).iterdir())
    assert quarantined == [
        "0001_empty.rollouts.msg",
        "0002_garbage.rollouts.msg",
        "0003_list.rollouts.msg",
        "0004_nodelivery.rollouts.msg",
    ]
    assert (broker / QUARANTINE_FOLDER / "0002_garbage.rollouts.msg").read_bytes() == b"{not json"


def test_an_idle_consumer_is_woken_by_a_new_message_not_by_its_timer(broker: Path) -> None:
    """With a 60 s polling interval, only the wake-up can deliver within the 20 s timeout."""
    received: list[Any] = []
    consumer = _connection(broker, polling_interval=60.0)
    queue = consumer.SimpleQueue("builds")
    listening = threading.Event()

    def consume() -> None:
        listening.set()
        message = queue.get(timeout=20)
        received.append(message.payload)
        message.ack()

    thread = threading.Thread(target=consume)
    try:
        thread.start()
        listening.wait(5)
        _wait_for_socket(broker)
        with _connection(broker) as producer:
            producer.SimpleQueue("builds").put({"job": "job_3"})
        thread.join(30)
        assert received == [{"job": "job_3"}]
    finally:
        queue.close()
        consumer.release()
    assert list((broker / WAKE_FOLDER).iterdir()) == []  # the consumer removed its socket


def test_a_signal_hands_an_idle_consumer_back_to_its_loop(broker: Path) -> None:
    """In the main thread (a worker's consumer), a signal with a Python handler (SIGTERM:
    Celery's warm shutdown) ends the wait: ``drain_events`` returns with nothing received,
    so the worker's loop sees the stop. Without it this waits for its 60 s interval."""
    import signal

    handled: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _frame: handled.append(signum))
    consumer = _connection(broker, polling_interval=60.0)
    queue = consumer.SimpleQueue("builds")
    queue.consumer.consume()  # what Celery's consumer does, without a message buffer
    returned = threading.Event()
    timer = threading.Thread(
        target=_signal_until, args=(broker, signal.SIGUSR1, returned), daemon=True
    )
    try:
        timer.start()
        consumer.drain_events(timeout=None)  # returns only when something woke it
        returned.set()
        assert handled and set(handled) == {signal.SIGUSR1}
        assert queue.qsize() == 0
    finally:
        returned.set()
        timer.join(30)
        queue.close()
        consumer.release()
        signal.signal(signal.SIGUSR1, previous)
    assert signal.set_wakeup_fd(-1) == -1  # the consumer gave the wake-up fd back


def _signal_until(broker: Path, signum: int, returned: threading.Event) -> None:
    """Signal this process once the consumer listens, again until it returned (a signal
    between binding the socket and handing it to Python would not wake it)."""
    _wait_for_socket(broker)
    while not returned.is_set():
        os.kill(os.getpid(), signum)
        returned.wait(0.2)


def _wait_for_socket(broker: Path) -> None:
    from tests.support.processes import wait_until

    wait_until(
        lambda: (
            any((broker / WAKE_FOLDER).glob("*.sock")) if (broker / WAKE_FOLDER).is_dir() else False
        ),
        timeout=10,
        interval=0.01,
        message="the consumer never bound its wake socket",
    )


def test_a_stale_wake_socket_is_forgotten(broker: Path) -> None:
    import socket

    (broker / WAKE_FOLDER).mkdir(parents=True)
    stale = broker / WAKE_FOLDER / "999999-dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()  # the file stays, nobody listens: what a killed worker leaves
    with _connection(broker) as producer:
        producer.SimpleQueue("builds").put({"job": "job_4"})
    assert not stale.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (needs root)")
def test_a_full_disk_leaves_no_message_file(tmp_path: Path) -> None:
    root = tmp_path / "broker"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root)], check=True)
    try:
        with _connection(root) as conn:
            queue = conn.SimpleQueue("rollouts")
            _fill(root / "filler")
            with pytest.raises(ChannelError, match="No space left"):
                queue.put({"job": "job_5", "pad": "y" * 8192})
            assert [p.name for p in (root / "out").iterdir()] == []
            (root / "filler").unlink()  # space freed: the next put works
            queue.put({"job": "job_5"})
            message = queue.get(timeout=5)
            assert message.payload == {"job": "job_5"}
            message.ack()
            queue.close()
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)


def _fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"x" * 4096)
        except OSError:
            pass
