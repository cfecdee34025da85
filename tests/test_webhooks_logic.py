"""Webhooks' pure logic: Standard Webhooks signatures, backoff, destination checks."""

from __future__ import annotations

import base64
import itertools
import time
import typing

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shipway.webhooks import signing
from shipway.webhooks.addresses import DestinationRefused, check_destination
from shipway.webhooks.catalog import EVENT_TYPES, TRANSITIONS, EventType
from shipway.webhooks.delivery import MAX_DELAY_SECONDS, retry_delay
from tests.support.webhook_receiver import verify


def test_secret_is_whsec_base64_of_32_bytes() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert signing.new_secret() != secret


def test_signature_verifies_with_the_reference_library_and_the_spec() -> None:
    secret, body, now = signing.new_secret(), b'{"type":"version.ready"}', int(time.time())
    headers = signing.headers([secret], msg_id="msg_1", timestamp=now, body=body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == {"type": "version.ready"}
    assert verify(secret, headers, body)
    # Any change of id, timestamp or body breaks it.
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    assert not verify(secret, {**headers, "webhook-id": "msg_2"}, body)
    assert not verify(signing.new_secret(), headers, body)


def test_known_vector() -> None:
    """The example of the specification's reference libraries."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = signing.sign(
        secret,
        msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        timestamp=1614265330,
        body=b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_two_secrets_give_two_signatures_each_verifying() -> None:
    old, new, body = signing.new_secret(), signing.new_secret(), b"{}"
    headers = signing.headers([new, old], msg_id="msg_x", timestamp=int(time.time()), body=body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(body, headers)
        assert verify(secret, headers, body)


def test_backoff_doubles_up_to_an_hour() -> None:
    delays = [retry_delay(n, base=5.0) for n in range(1, 15)]
    assert delays[:4] == [5.0, 10.0, 20.0, 40.0]
    assert max(delays) == MAX_DELAY_SECONDS == delays[-1]
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert retry_delay(2, base=5.0, jitter=1.1) == pytest.approx(11.0)


def test_event_types_of_the_schema_are_the_catalogs() -> None:
    assert set(typing.get_args(EventType)) == set(EVENT_TYPES) - {"webhook.test"}
    # every subscribable type but job.stuck comes from a transition
    assert set(TRANSITIONS.values()) == set(typing.get_args(EventType)) - {"job.stuck"}


REFUSED = [
    "http://127.0.0.1/hook",
    "http://127.8.9.10:8080/hook",
    "http://[::1]/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://[fe80::1]/hook",
    "http://[fd12:3456::1]/hook",
    "http://[fc00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:10.0.0.1]/hook",
    "http://224.0.0.1/hook",
]


@pytest.mark.parametrize("url", REFUSED)
def test_non_public_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(DestinationRefused) as refused:
        check_destination(url, allow_private=False)
    assert "SHIPWAY_WEBHOOK_ALLOW_PRIVATE" in refused.value.message
    check_destination(url, allow_private=True)


def test_names_are_resolved_and_every_address_must_be_public() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return {
            "public.test": ["93.184.216.34", "2606:2800:220:1::1"],
            "mixed.test": ["93.184.216.34", "10.0.0.7"],
            "v6private.test": ["fd00::7"],
        }[host]

    check_destination("https://public.test/x", allow_private=False, resolver=resolver)
    for host in ("mixed.test", "v6private.test"):
        with pytest.raises(DestinationRefused) as refused:
            check_destination(f"https://{host}/x", allow_private=False, resolver=resolver)
        assert refused.value.details["host"] == host
    with pytest.raises(DestinationRefused):  # the real resolver: localhost is loopback
        check_destination("http://localhost:9/x", allow_private=False)


def test_unresolvable_hosts_and_other_schemes_are_refused() -> None:
    def nowhere(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(DestinationRefused, match="does not resolve"):
        check_destination("https://typo.invalid/x", allow_private=False, resolver=nowhere)
    for url in ("ftp://93.184.216.34/x", "93.184.216.34/x", "https:///x", "http://1.2.3.4:99999/"):
        with pytest.raises(DestinationRefused):
            check_destination(url, allow_private=True)
    check_destination("https://93.184.216.34:8443/hook", allow_private=False)


def test_the_receiver_snippet_of_the_docs_verifies() -> None:
    """docs/webhooks.md's standard-library verifier accepts shipway's signatures (both during
    a rotation) and refuses a changed body, a wrong secret and an old timestamp."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "webhooks.md").read_text()
    block = re.search(r"<!-- verify-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert block, "docs/webhooks.md lost its verify snippet"
    scope: dict[str, object] = {}
    exec(compile(block.group(1), "docs/webhooks.md", "exec"), scope)
    verify_doc = scope["verify"]
    assert callable(verify_doc)
    old, new, body, now = signing.new_secret(), signing.new_secret(), b'{"a":1}', int(time.time())
    headers = signing.headers([new, old], msg_id="msg_d", timestamp=now, body=body)
    upper = {name.title(): value for name, value in headers.items()}  # as http.server gives
    assert verify_doc(new, upper, body) and verify_doc(old, headers, body)
    assert not verify_doc(new, headers, body + b" ")
    assert not verify_doc(signing.new_secret(), headers, body)
    stale = signing.headers([new], msg_id="msg_d", timestamp=now - 3600, body=body)
    assert not verify_doc(new, stale, body)
