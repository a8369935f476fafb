"""Twilio's request signature (``X-Twilio-Signature``), exactly as Twilio documents it.

Twilio signs each webhook with the auth token of the account that owns the called number:

1. take the full URL Twilio requested, with its query string, as it was configured in Twilio;
2. for a form-encoded POST, append every POST parameter sorted by name (a name that occurs
   more than once contributes each of its values, in sorted order), name immediately followed
   by value, no separators; empty values count too;
3. HMAC-SHA1 that string (UTF-8) with the auth token as key, and base64 the digest.

Twilio is inconsistent about the port in the signed URL (``https://host/x`` vs
``https://host:443/x``), so a request is valid if the signature matches the URL with or
without its port, as twilio-python's ``RequestValidator`` accepts. Comparisons are constant
time. No I/O here: the HTTP edge builds the URL and passes the parsed parameters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import SplitResult, urlsplit

SIGNATURE_HEADER = "X-Twilio-Signature"

Params = Mapping[str, str] | Iterable[tuple[str, str]]


def _pairs(params: Params) -> list[tuple[str, str]]:
    if isinstance(params, Mapping):
        return [(str(name), str(value)) for name, value in params.items()]
    return [(str(name), str(value)) for name, value in params]


def signed_string(url: str, params: Params) -> str:
    """The string Twilio feeds to HMAC-SHA1: the URL, then each sorted name+value."""
    # Sorting the (name, value) pairs sorts by name, then a repeated name's values by value.
    return url + "".join(name + value for name, value in sorted(_pairs(params)))


def compute_signature(auth_token: str, url: str, params: Params) -> str:
    """The ``X-Twilio-Signature`` Twilio sends for a POST of ``params`` to ``url``."""
    mac = hmac.new(auth_token.encode("utf-8"), signed_string(url, params).encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def _with_netloc(parts: SplitResult, host_and_port: str) -> str:
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host_and_port}" if userinfo else host_and_port
    return parts._replace(netloc=netloc).geturl()


def url_variants(url: str) -> list[str]:
    """The URLs a signature is checked against: ``url`` as given, without any port, and, when
    it has none, with its scheme's default port (443 or 80) — the same two forms
    twilio-python's validator tries."""
    parts = urlsplit(url)
    host_port = parts.netloc.rpartition("@")[2]
    host = parts.hostname or ""
    if host_port.startswith("["):  # IPv6 literal: keep the brackets
        host = host_port[: host_port.index("]") + 1]
    elif ":" in host_port:
        host = host_port.rsplit(":", 1)[0]
    variants = [url]
    without_port = _with_netloc(parts, host)
    if without_port not in variants:
        variants.append(without_port)
    if parts.port is None:
        default_port = 443 if parts.scheme == "https" else 80
        with_port = _with_netloc(parts, f"{host}:{default_port}")
        if with_port not in variants:
            variants.append(with_port)
    return variants


def is_valid(auth_token: str, url: str, params: Params, signature: str | None) -> bool:
    """True if ``signature`` is Twilio's signature of ``params`` posted to ``url``."""
    if not signature or not auth_token:
        return False
    pairs = _pairs(params)
    presented = signature.strip().encode("ascii", errors="replace")
    matched = False
    for candidate in url_variants(url):
        expected = compute_signature(auth_token, candidate, pairs).encode("ascii")
        # Check every variant (no early exit) so the time taken does not depend on which matched.
        matched |= hmac.compare_digest(expected, presented)
    return matched
