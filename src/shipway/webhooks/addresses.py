"""Where a webhook may be sent: http(s) URLs whose host resolves only to public addresses.

Loopback, private (RFC 1918), carrier-grade NAT, link-local, unique-local (fc00::/7),
multicast, unspecified and reserved addresses (IPv4, IPv6 and IPv4-mapped IPv6) are
refused unless ``SHIPWAY_WEBHOOK_ALLOW_PRIVATE`` allows them: a webhook must not be a
way to reach the control plane's own network. The check runs when an endpoint is saved
and again before every request (the name may resolve elsewhere by then).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from shipway.errors import InvalidInput

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(InvalidInput):
    """The URL is malformed or its host is (or resolves to) a non-public address."""

    code = "webhook_destination_refused"


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_public(address: IPAddress) -> bool:
    """Whether an address is globally routable (an IPv4-mapped one judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def split_url(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; DestinationRefused if it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DestinationRefused("a webhook URL must be http:// or https:// with a host", url=url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise DestinationRefused("the webhook URL has a malformed port", url=url) from None
    return parts.hostname, port


def check_destination(url: str, *, allow_private: bool, resolver: Resolver = resolve) -> None:
    """Raise DestinationRefused unless ``url`` may receive webhooks.

    A host that does not resolve is refused too (a typo should not wait a day of retries).
    """
    host, port = split_url(url)
    if allow_private:
        return
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolver(host, port)]
        except OSError as error:
            raise DestinationRefused(
                f"the webhook host {host} does not resolve ({error})", url=url, host=host
            ) from None
    refused = [str(a) for a in addresses if not is_public(a)]
    if refused or not addresses:
        raise DestinationRefused(
            f"the webhook host {host} is or resolves to a loopback, private, link-local or "
            f"unique-local address ({', '.join(refused)}); set SHIPWAY_WEBHOOK_ALLOW_PRIVATE="
            "true to allow it",
            url=url,
            host=host,
            addresses=refused,
        )
