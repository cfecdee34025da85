"""Certificates from an ACME server (RFC 8555) with HTTP-01 challenges, through certbot's
``acme`` library: one call issues a certificate for some hostnames.

The caller says where challenge answers go (``ChallengeBoard``: the router serves
``/.well-known/acme-challenge/<token>`` from it) and keeps the account key. Every
failure is a ``CertificateIssueError`` with a classified reason and a diagnosis; none
of them carries a private key.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Protocol, cast

import josepy as jose
import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

USER_AGENT = "shipway"
RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"
DOMAIN_REJECTED = frozenset(
    {
        "urn:ietf:params:acme:error:rejectedIdentifier",
        "urn:ietf:params:acme:error:unsupportedIdentifier",
        "urn:ietf:params:acme:error:malformed",
        "urn:ietf:params:acme:error:caa",
    }
)


class ChallengeBoard(Protocol):
    """Where HTTP-01 answers are published while the CA validates them."""

    def publish(self, token: str, key_authorization: str) -> None: ...

    def withdraw(self, token: str) -> None: ...


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate chain (leaf first) and its private key, both PEM."""

    fullchain_pem: str
    key_pem: str
    domains: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime

    def __repr__(self) -> str:  # never the key
        return f"IssuedCertificate(domains={self.domains}, not_after={self.not_after:%Y-%m-%d})"


class CertificateIssueError(Exception):
    """An issuance that failed, classified (``reason``) with a diagnosis."""

    def __init__(
        self,
        reason: str,
        *,
        title: str,
        description: str,
        action: str,
        retryable: bool,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(f"{reason}: {description}")
        self.reason, self.title, self.description, self.action = reason, title, description, action
        self.retryable, self.retry_after_seconds = retryable, retry_after_seconds

    @property
    def diagnostics(self) -> dict[str, str]:
        return {"title": self.title, "description": self.description, "action": self.action}


def new_account_key() -> str:
    """A fresh ACME account key (EC P-256), PEM."""
    return _pem(ec.generate_private_key(ec.SECP256R1()))


def issue_certificate(
    *,
    directory_url: str,
    account_key_pem: str,
    domains: list[str],
    board: ChallengeBoard,
    email: str | None = None,
    ca_bundle: str | None = None,
    timeout_seconds: float = 90.0,
) -> IssuedCertificate:
    """Order, prove (HTTP-01) and download a certificate for ``domains`` (first is the CN)."""
    if not domains:
        raise ValueError("no domains to certify")
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_seconds)
    published: list[str] = []
    try:
        acme, account_key = _client(directory_url, account_key_pem, email, ca_bundle)
        certificate_key = _pem(ec.generate_private_key(ec.SECP256R1()))
        order = acme.new_order(crypto_util.make_csr(certificate_key.encode(), domains))
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue  # the CA reuses a recent proof
            challenge = _http01(authorization, domains)
            response, key_authorization = challenge.response_and_validation(account_key)
            token = challenge.chall.encode("token")
            board.publish(token, key_authorization)
            published.append(token)
            acme.answer_challenge(challenge, response)
        finished = acme.poll_and_finalize(order, deadline=deadline)
    except CertificateIssueError:
        raise
    except Exception as error:  # classified below; anything unknown stays an acme_error
        raise classify(error, directory_url=directory_url, domains=domains) from error
    finally:
        for token in published:
            board.withdraw(token)
    leaf = x509.load_pem_x509_certificate(finished.fullchain_pem.encode())
    return IssuedCertificate(
        fullchain_pem=finished.fullchain_pem,
        key_pem=certificate_key,
        domains=tuple(domains),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )


def _client(
    directory_url: str, account_key_pem: str, email: str | None, ca_bundle: str | None
) -> tuple[client.ClientV2, jose.JWK]:
    private = serialization.load_pem_private_key(account_key_pem.encode(), password=None)
    key: jose.JWK
    if isinstance(private, ec.EllipticCurvePrivateKey):
        key, alg = jose.JWKEC(key=private), jose.ES256
    elif isinstance(private, rsa.RSAPrivateKey):
        key, alg = jose.JWKRSA(key=private), jose.RS256
    else:
        raise ValueError("the ACME account key must be EC P-256 or RSA")
    # requests takes a CA bundle path where acme's signature says bool.
    verify = cast(bool, ca_bundle) if ca_bundle else True
    network = _Network(key, alg=alg, verify_ssl=verify, user_agent=USER_AGENT)
    directory = client.ClientV2.get_directory(directory_url, network)
    acme = client.ClientV2(directory, net=network)
    registration = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as existing:  # this key has an account already
        acme.net.account = messages.RegistrationResource(
            uri=existing.location, body=messages.Registration()
        )
    return acme, key


def _http01(authorization: messages.AuthorizationResource, domains: list[str]) -> Any:
    for challenge in authorization.body.challenges:
        if isinstance(challenge.chall, challenges.HTTP01):
            return challenge
    name = authorization.body.identifier.value
    raise CertificateIssueError(
        "acme_challenge_unsupported",
        title="The CA offers no HTTP-01 challenge",
        description=f"The ACME server offered no http-01 challenge for {name} "
        f"(domains {', '.join(domains)}).",
        action="Use a CA that validates over HTTP-01, or supply a certificate and key.",
        retryable=False,
    )


def classify(
    error: BaseException, *, directory_url: str, domains: list[str]
) -> CertificateIssueError:
    """The classified, user-facing form of an issuance failure."""
    names = ", ".join(domains)
    if isinstance(error, requests.exceptions.RequestException):
        return CertificateIssueError(
            "acme_unreachable",
            title="The ACME server cannot be reached",
            description=f"No answer from {directory_url}: {type(error).__name__}.",
            action="Check SHIPWAY_ACME_DIRECTORY_URL and the network; "
            "shipway retries with backoff.",
            retryable=True,
        )
    problem = _problem(error)
    if problem is not None and problem.typ == RATE_LIMITED:
        return CertificateIssueError(
            "acme_rate_limited",
            title="The CA rate-limited this certificate",
            description=f"The ACME server refused an order for {names}: {problem.detail}",
            action="Wait; shipway retries after the CA's Retry-After. Avoid re-adding the "
            "same domains repeatedly.",
            retryable=True,
            retry_after_seconds=getattr(problem, "retry_after_seconds", None),
        )
    if problem is not None and problem.typ in DOMAIN_REJECTED:
        return CertificateIssueError(
            "acme_domain_rejected",
            title="The CA will not certify this domain",
            description=f"The ACME server rejected {names}: {problem.detail}",
            action="Use a public DNS name the CA may certify (no IP, no reserved suffix), "
            "or supply a certificate and key.",
            retryable=False,
        )
    if isinstance(error, errors.ValidationError):
        details = "; ".join(
            f"{authz.body.identifier.value}: {challenge.error.detail if challenge.error else '?'}"
            for authz in error.failed_authzrs
            for challenge in authz.body.challenges
            if challenge.error is not None
        )
        return CertificateIssueError(
            "acme_challenge_failed",
            title="The CA could not validate the domain over HTTP",
            description=f"HTTP-01 validation of {names} failed: {details or error}",
            action="Point the domain's DNS at shipway's router and let port 80 (the HTTP "
            "listener) reach it from the internet; shipway retries with backoff.",
            retryable=True,
        )
    if isinstance(error, errors.TimeoutError):
        return CertificateIssueError(
            "acme_timeout",
            title="The CA did not finish in time",
            description=f"The order for {names} was not ready before the deadline.",
            action="shipway retries with backoff; check the CA's status page if it persists.",
            retryable=True,
        )
    return CertificateIssueError(
        "acme_error",
        title="The ACME server refused the order",
        description=f"{type(error).__name__}: {problem.detail if problem else error}",
        action="Check the domain and the CA's terms; shipway retries with backoff.",
        retryable=True,
    )


class _Network(client.ClientNetwork):
    """certbot's network client, keeping the CA's Retry-After (RFC 8555 §6.6, sent with
    rate limits) on the problem it raises: the library drops the response."""

    @classmethod
    def _check_response(
        cls, response: requests.Response, content_type: str | None = None
    ) -> requests.Response:
        try:
            return super()._check_response(response, content_type)
        except messages.Error as problem:
            if "Retry-After" in response.headers:
                when = client.ClientV2.retry_after(response, default=0)
                wait = when - datetime.datetime.now()  # naive, as retry_after's answer
                seconds = max(0.0, wait.total_seconds())
                object.__setattr__(problem, "retry_after_seconds", seconds)
            raise


def _problem(error: BaseException) -> messages.Error | None:
    if isinstance(error, messages.Error):
        return error
    cause = error.__cause__ or error.__context__
    return cause if isinstance(cause, messages.Error) else None


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
