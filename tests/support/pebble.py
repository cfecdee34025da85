"""A real ACME server for tests: Debian's pebble and its mock DNS, pebble-challtestsrv.

``Pebble(http_port=N)`` starts both on free loopback ports in a scratch folder:
pebble's ACME directory at ``directory_url`` (HTTPS, with a certificate from a throwaway
CA made here, ``listener_ca``), and the mock DNS answering every name with 127.0.0.1, so
pebble validates HTTP-01 challenges at ``http://127.0.0.1:<http_port>/.well-known/…`` —
the port of whatever serves the challenges (shipway's router in the HTTPS tests). The
root that signs the certificates pebble issues is ``root_pem()`` (new on every start).

Both stop (and the folder goes) with ``stop()`` or the context manager, even on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.support.certs import ThrowawayCA
from tests.support.processes import wait_until
from tests.support.services import free_port, wait_for_port


def available() -> str | None:
    """Why pebble cannot run here (None if it can)."""
    for tool in ("pebble", "pebble-challtestsrv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make provision installs Debian's pebble)"
    return None


def _listener_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1/localhost signed by it: (ca, cert, key) files."""
    ca = ThrowawayCA("shipway test pebble CA")
    chain, key = ca.issue(["localhost", "127.0.0.1"])
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    for path, text in zip(paths, (ca.pem, chain, key), strict=True):
        path.write_text(text)
    return paths


@dataclass
class Pebble:
    """pebble + pebble-challtestsrv on free loopback ports (see the module)."""

    http_port: int
    validity_seconds: int = 0  # of the certificates it issues (0: pebble's default, 5 years)
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="shipway-pebble-")))
    env: dict[str, str] = field(default_factory=dict)
    acme_port: int = 0
    management_port: int = 0
    dns_port: int = 0
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def listener_ca(self) -> Path:
        """The CA of pebble's own HTTPS listener (what an ACME client must trust)."""
        return self.folder / "ca.pem"

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Pebble:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _, cert, key = _listener_certificate(self.folder)
        self.acme_port, self.management_port, self.dns_port = (free_port() for _ in range(3))
        dns_management = free_port()
        self._spawn(
            "challtestsrv",
            [
                "pebble-challtestsrv",
                "-dns01", f"127.0.0.1:{self.dns_port}",
                "-http01", "",
                "-https01", "",
                "-tlsalpn01", "",
                "-management", f"127.0.0.1:{dns_management}",
                "-defaultIPv4", "127.0.0.1",
                "-defaultIPv6", "",
            ],
        )  # fmt: skip
        wait_for_port(dns_management)
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.acme_port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": self.http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        if self.validity_seconds:
            config["pebble"]["certificateValidityPeriod"] = self.validity_seconds
        (self.folder / "pebble.json").write_text(json.dumps(config, indent=2))
        env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", **self.env}
        self._spawn(
            "pebble",
            [
                "pebble",
                "-config", str(self.folder / "pebble.json"),
                "-dnsserver", f"127.0.0.1:{self.dns_port}",
            ],
            env=env,
        )  # fmt: skip
        wait_until(self._answers, timeout=30, interval=0.1, message="pebble's directory")

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        with (self.folder / f"{name}.log").open("ab") as log:
            self._processes.append(
                subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.folder,
                    env={**os.environ, **(env or {})},
                    start_new_session=True,
                )
            )

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.listener_ca))

    def _answers(self) -> bool:
        for process in self._processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited: {self.log_tail()}")
        try:
            with urllib.request.urlopen(self.directory_url, context=self._context(), timeout=2):
                return True
        except OSError:
            return False

    def root_pem(self) -> bytes:
        """The root certificate that signs what pebble issues (random per start)."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=self._context(), timeout=10) as answer:
            return bytes(answer.read())

    def log_tail(self, lines: int = 30) -> str:
        tails = []
        for name in ("pebble", "challtestsrv"):
            path = self.folder / f"{name}.log"
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                tails.append(f"--- {name}.log\n" + "\n".join(text))
        return "\n".join(tails)

    def stop(self, *, keep_files: bool = False) -> None:
        """Stop both servers (``keep_files``: "the CA is down", its CA file stays trusted)."""
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self._processes.clear()
        if not keep_files:
            shutil.rmtree(self.folder, ignore_errors=True)
