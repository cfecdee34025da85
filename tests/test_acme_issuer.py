"""The ACME issuer against a real ACME server (Debian's pebble): a certificate is issued over
HTTP-01 and chains to pebble's root; each kind of failure is classified with a diagnosis."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest
import requests
from acme import messages
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from shipway.certificates import issuer
from shipway.certificates.issuer import (
    CertificateIssueError,
    IssuedCertificate,
    issue_certificate,
    new_account_key,
)
from tests.support import pebble
from tests.support.services import free_port

pytestmark = pytest.mark.skipif(pebble.available() is not None, reason=str(pebble.available()))


class Board:
    """HTTP-01 answers served on a loopback port, as the router will serve them."""

    def __init__(self, *, serve: bool = True) -> None:
        self.answers: dict[str, str] = {}
        self.withdrawn: list[str] = []
        self.serve = serve

    def publish(self, token: str, key_authorization: str) -> None:
        if self.serve:
            self.answers[token] = key_authorization

    def withdraw(self, token: str) -> None:
        self.answers.pop(token, None)
        self.withdrawn.append(token)


@pytest.fixture
def board_server() -> Iterator[tuple[Board, int]]:
    board = Board()
    port = free_port()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            token = self.path.rsplit("/", 1)[-1]
            challenge = self.path.startswith("/.well-known/acme-challenge/")
            answer = board.answers.get(token) if challenge else None
            self.send_response(200 if answer else 404)
            self.end_headers()
            self.wfile.write((answer or "").encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield board, port
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ca(board_server: tuple[Board, int]) -> Iterator[pebble.Pebble]:
    with pebble.Pebble(http_port=board_server[1]) as running:
        yield running


def _issue(ca: pebble.Pebble, board: Board, domains: list[str]) -> IssuedCertificate:
    return issue_certificate(
        directory_url=ca.directory_url,
        account_key_pem=new_account_key(),
        domains=domains,
        board=board,
        ca_bundle=str(ca.listener_ca),
    )


def test_a_certificate_is_issued_over_http01_and_chains_to_the_ca_root(
    ca: pebble.Pebble, board_server: tuple[Board, int]
) -> None:
    board, _ = board_server
    issued = _issue(ca, board, ["app.shipway.test", "www.app.shipway.test"])
    chain = x509.load_pem_x509_certificates(issued.fullchain_pem.encode())
    root = x509.load_pem_x509_certificate(ca.root_pem())
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .build_server_verifier(x509.DNSName("www.app.shipway.test"))
    )
    verifier.verify(chain[0], chain[1:])
    assert "PRIVATE KEY" in issued.key_pem
    assert "PRIVATE KEY" not in repr(issued)
    assert board.answers == {} and len(board.withdrawn) == 2  # every answer withdrawn


def test_an_account_key_is_reused_for_a_second_order(
    ca: pebble.Pebble, board_server: tuple[Board, int]
) -> None:
    board, _ = board_server
    key = new_account_key()
    for name in ("one.shipway.test", "two.shipway.test"):
        issued = issue_certificate(
            directory_url=ca.directory_url,
            account_key_pem=key,
            domains=[name],
            board=board,
            ca_bundle=str(ca.listener_ca),
        )
        assert issued.domains == (name,)


def test_an_unreachable_challenge_is_classified(
    ca: pebble.Pebble, board_server: tuple[Board, int]
) -> None:
    board, _ = board_server
    board.serve = False  # the router does not answer the challenge
    with pytest.raises(CertificateIssueError) as failure:
        _issue(ca, board, ["unreachable.shipway.test"])
    assert failure.value.reason == "acme_challenge_failed"
    assert failure.value.retryable
    assert set(failure.value.diagnostics) == {"title", "description", "action"}
    assert "unreachable.shipway.test" in failure.value.description


def test_a_domain_the_ca_refuses_is_classified(
    ca: pebble.Pebble, board_server: tuple[Board, int]
) -> None:
    with pytest.raises(CertificateIssueError) as failure:
        _issue(ca, board_server[0], ["127.0.0.1"])
    assert failure.value.reason == "acme_domain_rejected"
    assert not failure.value.retryable


def test_a_ca_that_is_down_is_classified() -> None:
    with pytest.raises(CertificateIssueError) as failure:
        issue_certificate(
            directory_url=f"https://127.0.0.1:{free_port()}/dir",
            account_key_pem=new_account_key(),
            domains=["down.shipway.test"],
            board=Board(),
        )
    assert failure.value.reason == "acme_unreachable"
    assert failure.value.retryable


def test_a_rate_limit_keeps_the_cas_retry_after() -> None:
    """RFC 8555 §6.6: a rateLimited problem comes with Retry-After; shipway waits that long
    (renewal.py turns it into the next attempt). The library drops the response, so the
    network client keeps it on the problem."""
    response = requests.Response()
    response.status_code = 429
    response.headers["Content-Type"] = "application/problem+json"
    response.headers["Retry-After"] = "120"
    response._content = json.dumps(
        {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many orders"}
    ).encode()
    with pytest.raises(messages.Error) as raised:
        issuer._Network._check_response(response)

    error = issuer.classify(raised.value, directory_url="https://ca.test/dir", domains=["a.test"])

    assert error.reason == "acme_rate_limited" and error.retryable
    assert error.retry_after_seconds is not None and 115 <= error.retry_after_seconds <= 120
    assert "too many orders" in error.description
