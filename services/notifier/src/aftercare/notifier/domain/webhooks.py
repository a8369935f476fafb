"""Standard Webhooks (https://www.standardwebhooks.com): the signature, the secret format and
what a registered URL may point at. Pure; the address resolution is done by the adapter."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes it: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,`` + base64 HMAC-SHA256 of
    ``{id}.{timestamp}.{body}`` keyed with the secret's decoded bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class UnacceptableUrl(ValueError):
    pass


def check_url_shape(url: str, *, allow_http: bool) -> str:
    """Scheme and host of a webhook URL; returns the host to resolve. Raises ``UnacceptableUrl``
    with what to change."""
    parts = urlsplit(url)
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed:
        raise UnacceptableUrl(f"the webhook URL must use {' or '.join(allowed)}, not {parts.scheme or 'nothing'!r}")
    if not parts.hostname:
        raise UnacceptableUrl("the webhook URL has no host")
    if parts.username or parts.password:
        raise UnacceptableUrl("put no credentials in the webhook URL; the payload is signed instead")
    return parts.hostname


def check_addresses(host: str, addresses: list[str], *, allow_private: bool) -> None:
    """Every address ``host`` resolves to must be public (unless private targets are allowed):
    a webhook must not become a way into our own network."""
    if not addresses:
        raise UnacceptableUrl(f"the webhook host {host!r} does not resolve")
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if ip.is_unspecified or ip.is_multicast:
            raise UnacceptableUrl(f"the webhook host {host!r} resolves to {address}, which cannot receive requests")
        if not allow_private and (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved):
            raise UnacceptableUrl(
                f"the webhook host {host!r} resolves to {address}, a private address; use a public endpoint"
            )
