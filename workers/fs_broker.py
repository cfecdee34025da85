"""The embedded broker: kombu's filesystem transport, made safe and prompt.

``shipway up`` (and any setup without ``SHIPWAY_BROKER_URL``) queues task messages as files
in ``<data dir>/broker/out``. kombu's own filesystem transport has three faults this module
mends, without changing the folder layout or the message format:

- **A worker sleeps a whole polling interval (1 s) before it sees a new message.** Each
  consuming process binds a Unix datagram socket in ``broker/wake/``; a producer that adds
  a message sends one byte to every socket there, and an idle consumer waits on its socket
  instead of sleeping, so it picks the message up at once. The polling interval stays as the
  safety net (a lost wake-up costs at most one interval).
- **A message is written in place**, so a full disk leaves a 0-byte ``.msg`` file and a
  consumer may read a message still being written. A message is now written to a hidden
  temporary file, then renamed into place: it is whole or absent. A failed write (ENOSPC)
  removes the temporary file and raises, and the job stays queued in the database for the
  relay to send again. No fsync: the database is the durable record, and a message a power
  cut truncates is quarantined like any unreadable one, its job sent again.
- **An unreadable message killed the worker** (a JSONDecodeError from the consumer loop, the
  same on every restart). A message that is empty, not JSON, or not a kombu message is
  moved to ``broker/quarantine/``, logged and counted (``quarantined_count``), and the
  consumer goes on with the next one. The job it stood for is still queued in the
  database, which stays the source of truth: the relay sends it again
  (``SHIPWAY_REDISPATCH_AFTER_SECONDS``).

A signal with a Python handler (SIGTERM: Celery's warm shutdown) wakes an idle consumer in
the main thread too (``signal.set_wakeup_fd`` on its wake socket), and ``drain_events``
returns after any wake-up (kombu allows an early return), so the worker's loop sees the stop
at once rather than after its 2 s ``drain_events`` timeout.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import threading
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem, virtual
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

WAKE_FOLDER = "wake"
QUARANTINE_FOLDER = "quarantine"
BUSY_POLL_SECONDS = 0.05
"""How often a consumer that may not take a message yet (its prefetch is full: a job runs)
looks again; it costs no file system access, and a finished job's next message is then
taken within this time rather than a whole polling interval."""


def broker_root(data_folder: str | os.PathLike[str]) -> Path:
    """The broker folder (parent of ``out``, ``wake`` and ``quarantine``)."""
    return Path(data_folder).parent


def quarantined_count(broker_folder: Path) -> int:
    """How many messages were moved aside as unreadable."""
    try:
        return sum(1 for entry in os.scandir(broker_folder / QUARANTINE_FOLDER) if entry.is_file())
    except FileNotFoundError:
        return 0


def wake_consumers(broker_folder: Path) -> None:
    """Send one byte to every consumer's wake socket; forget sockets nobody listens on."""
    folder = broker_folder / WAKE_FOLDER
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for name in names:
            path = folder / name
            try:
                sender.sendto(b"!", str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    path.unlink()  # its consumer is gone
            except OSError:
                continue  # its buffer is full: it has wake-ups pending already


class Channel(filesystem.Channel):
    """Atomic writes, wake-ups and a quarantine for unreadable messages."""

    def _put(self, queue: Any, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temporary = os.path.join(self.data_folder_out, f".{name}.tmp")  # no '.msg' suffix
        try:
            with open(temporary, "wb") as file:
                file.write(str_to_bytes(dumps(message)))
            os.rename(temporary, final)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise ChannelError(
                f"cannot queue a message in {self.data_folder_out}: {error}"
            ) from error
        wake_consumers(broker_root(self.data_folder_out))

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        suffix = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.startswith(".") or name.partition(".")[2] != suffix:
                continue
            path = os.path.join(self.data_folder_in, name)
            try:
                with open(path, "rb") as file:
                    raw = file.read()
                os.unlink(path)  # ours now: a concurrent consumer gets FileNotFoundError
            except FileNotFoundError:
                continue
            except OSError as error:
                self._quarantine(path, name, f"unreadable: {error}")
                continue
            try:
                payload = loads(bytes_to_str(raw))
            except ValueError as error:
                self._quarantine_bytes(raw, name, f"not JSON ({len(raw)} bytes): {error}")
                continue
            why = self._not_a_message(payload)
            if why:
                self._quarantine_bytes(raw, name, why)
                continue
            return payload
        raise Empty()

    def _not_a_message(self, payload: Any) -> str:
        """Why kombu could not deliver ``payload`` ('' if it can): it is built here as the
        consumer will build it, so a bad one never reaches (and stops) the worker's loop."""
        if not isinstance(payload, dict) or not isinstance(payload.get("properties"), dict):
            return "not a kombu message"
        if not isinstance(payload["properties"].get("delivery_info", {}), dict):
            return "not a kombu message: delivery_info"
        try:
            self.Message(payload, channel=self)
        except Exception as error:
            return f"not a kombu message: {type(error).__name__}: {error}"
        return ""

    def _quarantine_folder(self) -> Path:
        folder = broker_root(self.data_folder_in) / QUARANTINE_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _quarantine(self, path: str, name: str, why: str) -> None:
        with contextlib.suppress(OSError):
            os.replace(path, self._quarantine_folder() / name)
        log.error(
            "broker message %s quarantined (%s); its job is sent again from the database", name, why
        )

    def _quarantine_bytes(self, raw: bytes, name: str, why: str) -> None:
        with contextlib.suppress(OSError):
            (self._quarantine_folder() / name).write_bytes(raw)
        log.error(
            "broker message %s quarantined (%s); its job is sent again from the database", name, why
        )


class Transport(filesystem.Transport):
    """kombu's filesystem transport whose idle consumers wait for a wake-up, not a timer."""

    Channel = Channel

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        # Bindings known per connection, not per process (kombu's filesystem transport
        # shares them process-wide): a process that uses two broker folders (tests, a
        # changed data dir) declares its bindings in each folder's control files.
        self.state = virtual.BrokerState()
        self._wake: socket.socket | None = None
        self._wake_path: Path | None = None
        self._signals: socket.socket | None = None  # what Python writes a signal's number to

    def _wake_socket(self) -> socket.socket:
        if self._wake is None:
            assert self.client is not None
            folder = broker_root(self.client.transport_options["data_folder_in"]) / WAKE_FOLDER
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.sock"
            wake = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            wake.bind(str(path))
            wake.setblocking(False)
            self._wake, self._wake_path = wake, path
            self._signals = _wake_on_signals(path)
        return self._wake

    def _wait(self, seconds: float) -> bool:
        """Until a producer (or a signal) wakes us or ``seconds`` pass; then empty the
        socket. Whether something woke us."""
        wake = self._wake_socket()
        busy = any(not channel.qos.can_consume() for channel in self.channels)
        ready, _, _ = select.select(
            [wake], [], [], min(seconds, BUSY_POLL_SECONDS) if busy else seconds
        )
        while ready:
            try:
                wake.recv(64)
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                raise
        return bool(ready)

    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> None:
        started = monotonic()
        interval = self.polling_interval or 1.0
        assert self.cycle is not None
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                waited = monotonic() - started
                if timeout is not None and waited >= timeout:
                    raise TimeoutError() from None
                if self._wait(interval if timeout is None else min(interval, timeout - waited)):
                    # a message, or a signal (or a message for another queue): back to the
                    # caller's loop, which looks at its state (a stop) and calls again
                    with contextlib.suppress(Empty):
                        self.cycle.get(self._deliver, timeout=timeout)
                    return

    def close_connection(self, connection: Any) -> None:
        super().close_connection(connection)
        if self._signals is not None:
            with contextlib.suppress(ValueError):  # not the main thread
                current = signal.set_wakeup_fd(-1)
                if current != self._signals.fileno():  # not ours any more: theirs stays
                    signal.set_wakeup_fd(current)
            self._signals.close()
            self._signals = None
        if self._wake is not None:
            self._wake.close()
            with contextlib.suppress(OSError):
                if self._wake_path is not None:
                    self._wake_path.unlink()
            self._wake = self._wake_path = None


def _wake_on_signals(path: Path) -> socket.socket | None:
    """Have Python write each signal's number to the wake socket at ``path`` (the main thread
    only, and only if nothing else uses the wake-up fd); the sending socket, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sender.connect(str(path))
        sender.setblocking(False)
        previous = signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
    except (OSError, ValueError):
        sender.close()
        return None
    if previous != -1:  # someone else's (an event loop): theirs stays
        signal.set_wakeup_fd(previous)
        sender.close()
        return None
    return sender
