"""Standard Webhooks signatures (checked with the reference library) and which URLs may be registered."""

from __future__ import annotations

import json

import pytest
from standardwebhooks.webhooks import Webhook

from aftercare.notifier.domain.webhooks import UnacceptableUrl, check_addresses, check_url_shape, new_secret, sign


def test_our_signature_verifies_with_the_reference_implementation() -> None:
    secret = new_secret()
    body = json.dumps({"type": "incident-resolved"}).encode()
    import time

    now = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, "msg_1", now, body),
    }
    assert Webhook(secret).verify(body, headers) == {"type": "incident-resolved"}


def test_a_tampered_body_does_not_verify() -> None:
    secret = new_secret()
    import time

    now = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, "msg_1", now, b"{}"),
    }
    with pytest.raises(Exception):  # noqa: B017 - the library raises its own verification error
        Webhook(secret).verify(b'{"x":1}', headers)


@pytest.mark.parametrize(
    "url", ["http://hooks.example/x", "ftp://hooks.example/x", "https:///x", "https://u:p@h.example/"]
)
def test_only_https_urls_without_credentials_are_accepted(url: str) -> None:
    with pytest.raises(UnacceptableUrl):
        check_url_shape(url, allow_http=False)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.10", "169.254.169.254", "::1"])
def test_private_and_internal_addresses_are_refused(address: str) -> None:
    with pytest.raises(UnacceptableUrl, match="private address"):
        check_addresses("hooks.example", [address], allow_private=False)


def test_a_public_address_is_accepted() -> None:
    check_addresses("hooks.example", ["93.184.216.34"], allow_private=False)
