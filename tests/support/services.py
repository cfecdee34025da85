"""Start real Redis and PostgreSQL servers on free ports in a scratch folder, for tests.

They listen on 127.0.0.1; ``listen=`` adds addresses (the multi-node suite adds the
cluster's root address, 10.87.0.254, so processes in the nodes' network namespaces reach
them as other hosts would), and a PostgreSQL server then trusts clients of ``trust=``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """Block until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for folder in PG_BIN_CANDIDATES:
        if (folder / name).exists():
            return str(folder / name)
    raise FileNotFoundError(f"{name} not found; run `make provision` (installs postgresql)")


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


@dataclass
class Redis:
    """A redis-server child process."""

    port: int
    process: subprocess.Popen[bytes]
    folder: Path
    listen: tuple[str, ...] = ("127.0.0.1",)

    @property
    def url(self) -> str:
        return self.url_at("127.0.0.1")

    def url_at(self, address: str) -> str:
        """The URL of database 0 through ``address`` (one of ``listen``)."""
        return f"redis://{address}:{self.port}/0"

    def stop(self) -> None:
        """Stop the server (it can be started again with ``start``)."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def start(self) -> None:
        """(Re)start the server on the same port."""
        if self.process.poll() is None:
            return
        self.process = _spawn_redis(self.port, self.folder, self.listen)
        wait_for_port(self.port)


def _spawn_redis(
    port: int, folder: Path, listen: tuple[str, ...] = ("127.0.0.1",)
) -> subprocess.Popen[bytes]:
    redis_server = shutil.which("redis-server")
    if not redis_server:
        raise FileNotFoundError("redis-server not found; run `make provision`")
    return subprocess.Popen(
        [
            redis_server,
            "--port",
            str(port),
            "--bind",
            *listen,
            # Protected mode refuses clients not on loopback when there is no password:
            # another address is only given for the test lab's other "hosts".
            "--protected-mode",
            "no" if set(listen) - {"127.0.0.1"} else "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_redis(folder: Path, *, listen: tuple[str, ...] = ()) -> Redis:
    """A fresh Redis on a free port, on 127.0.0.1 and the ``listen`` addresses."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    addresses = ("127.0.0.1", *listen)
    redis = Redis(
        port=port, process=_spawn_redis(port, folder, addresses), folder=folder, listen=addresses
    )
    wait_for_port(port)
    return redis


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster."""

    port: int
    datadir: Path
    listen: tuple[str, ...] = ("127.0.0.1",)

    def url(self, database: str = "postgres", *, host: str = "127.0.0.1") -> str:
        """The URL of ``database`` through ``host`` (one of ``listen``)."""
        return f"postgresql+psycopg://postgres@{host}:{self.port}/{database}"

    def ctl(self, *args: str) -> None:
        """Run pg_ctl against this cluster."""
        subprocess.run(
            _as_postgres([_pg_tool("pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60", *args]),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.datadir} -c listen_addresses={','.join(self.listen)}"
            " -c fsync=off -c max_connections=300"
        )
        self.ctl("-o", options, "-l", str(self.datadir / "server.log"), "start")
        wait_for_port(self.port)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server."""
        self.ctl("-m", mode, "stop")


def start_postgres(
    folder: Path, *, listen: tuple[str, ...] = (), trust: tuple[str, ...] = ()
) -> Postgres:
    """A fresh PostgreSQL cluster (trust auth, fsync off) on a free port, on 127.0.0.1 and
    the ``listen`` addresses, trusting clients of the ``trust`` networks (CIDR) too."""
    datadir = folder / "pgdata"
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    subprocess.run(
        _as_postgres(
            [_pg_tool("initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if trust:
        with (datadir / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {network} trust\n" for network in trust)
    pg = Postgres(port=free_port(), datadir=datadir, listen=("127.0.0.1", *listen))
    pg.start()
    return pg
