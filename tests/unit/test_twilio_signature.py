"""X-Twilio-Signature: our validator agrees with Twilio's documented algorithm and examples.

The vectors are Twilio's worked example (auth token 12345, https://mycompany.com/myapp.php?foo=1&bar=2,
a <Gather> POST) from its webhook security docs, and the port and repeated-parameter cases of
twilio-python's own validator tests. ``reference_signature`` is written here from the docs'
description, independently of the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from aftercare.intake.domain import twilio_signature

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
DOCUMENTED_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def reference_signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    """The docs, step by step: URL, then each POST variable sorted by name as name+value,
    HMAC-SHA1 keyed with the auth token, base64."""
    data = url
    for name in sorted({name for name, _ in params}):
        for value in sorted(value for n, value in params if n == name):
            data += name + value
    digest = hmac.new(token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def test_the_documented_example_has_the_documented_signature() -> None:
    assert reference_signature(TOKEN, URL, list(PARAMS.items())) == DOCUMENTED_SIGNATURE
    assert twilio_signature.compute_signature(TOKEN, URL, PARAMS) == DOCUMENTED_SIGNATURE
    assert twilio_signature.is_valid(TOKEN, URL, PARAMS, DOCUMENTED_SIGNATURE)


def test_parameter_order_as_sent_does_not_matter() -> None:
    shuffled = list(reversed(PARAMS.items()))
    assert twilio_signature.is_valid(TOKEN, URL, shuffled, DOCUMENTED_SIGNATURE)


def test_a_repeated_parameter_signs_each_value_in_sorted_order() -> None:
    params = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    expected = "IK+Dwps556ElfBT0I3Rgjkr1wJU="  # twilio-python's test vector
    assert reference_signature(TOKEN, URL, params) == expected
    assert twilio_signature.compute_signature(TOKEN, URL, params) == expected
    assert twilio_signature.is_valid(TOKEN, URL, params, expected)


@pytest.mark.parametrize(
    ("url", "signature"),
    [
        # Twilio signed without the port, we see it with one: the port is dropped and it matches.
        ("https://mycompany.com:1234/myapp.php?foo=1&bar=2", DOCUMENTED_SIGNATURE),
        # Twilio signed with the port it connected to.
        ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
        # Twilio signed with the scheme's default port made explicit.
        ("https://mycompany.com/myapp.php?foo=1&bar=2", "kvajT1Ptam85bY51eRf/AJRuM3w="),
        ("http://mycompany.com/myapp.php?foo=1&bar=2", "0ZXoZLH/DfblKGATFgpif+LLRf4="),
    ],
)
def test_the_url_matches_with_and_without_its_port(url: str, signature: str) -> None:
    assert twilio_signature.is_valid(TOKEN, url, PARAMS, signature)


def test_empty_values_are_part_of_the_signature() -> None:
    with_blank = [*PARAMS.items(), ("ForwardedFrom", "")]
    signature = reference_signature(TOKEN, URL, with_blank)
    assert twilio_signature.is_valid(TOKEN, URL, with_blank, signature)
    assert signature != DOCUMENTED_SIGNATURE  # "ForwardedFrom" is in the signed string


@pytest.mark.parametrize("change", ["token", "url", "query", "value", "extra parameter", "missing parameter"])
def test_any_change_breaks_the_signature(change: str) -> None:
    token, url, params = TOKEN, URL, dict(PARAMS)
    if change == "token":
        token = "54321"
    elif change == "url":
        url = URL.replace("myapp.php", "other.php")
    elif change == "query":
        url = URL.replace("foo=1", "foo=2")
    elif change == "value":
        params["Digits"] = "9999"
    elif change == "extra parameter":
        params["TranscriptionText"] = "hello"
    else:
        del params["Caller"]
    assert not twilio_signature.is_valid(token, url, params, DOCUMENTED_SIGNATURE)


@pytest.mark.parametrize("signature", [None, "", "not base64 at all", DOCUMENTED_SIGNATURE[:-2], "é"])
def test_missing_or_malformed_signatures_are_refused(signature: str | None) -> None:
    assert not twilio_signature.is_valid(TOKEN, URL, PARAMS, signature)


def test_unicode_values_are_signed_as_utf8() -> None:
    params = [*PARAMS.items(), ("TranscriptionText", "Der Drucker im Büro streikt \u2013 schon wieder.")]
    signature = reference_signature(TOKEN, URL, params)
    assert twilio_signature.is_valid(TOKEN, URL, params, signature)
