"""How a phone caller is recognised, and what a call's incident is called.

A caller's open incident is found by the caller's number (the dedup key ``phone:+1555...``), so
a second call about the same problem joins the first one's incident. Withheld and non-phone
caller IDs recognise nobody: the people behind them are different callers.
"""

from __future__ import annotations

import re

TITLE_LENGTH = 120

# Twilio's stand-in caller IDs for withheld, unknown, restricted and blocked numbers.
WITHHELD_CALLER_IDS = frozenset({"+266696687", "+86282452253", "+7378742833", "+2562533"})
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def caller_key(caller: str) -> str | None:
    """The dedup key of a caller's open incident; None for withheld or non-phone caller IDs."""
    if not _E164.match(caller) or caller in WITHHELD_CALLER_IDS:
        return None
    return f"phone:{caller}"


def first_sentence(text: str, limit: int = TITLE_LENGTH) -> str:
    """The first sentence of ``text`` (whitespace folded), cut at a word to ``limit`` characters."""
    sentence = re.split(r"(?<=[.!?])\s", " ".join(text.split()), maxsplit=1)[0]
    if len(sentence) <= limit:
        return sentence
    cut = sentence[: limit - 1].rsplit(" ", 1)[0] or sentence[: limit - 1]
    return cut + "…"


def placeholder_title(caller: str) -> str:
    """A call's title until the caller's words are known."""
    return f"Voice message from {caller}"


def call_title(words: str, caller: str) -> str:
    """A call's incident title: the first words the caller said, else the placeholder."""
    return first_sentence(words) if words.strip() else placeholder_title(caller)


def title_after_transcript(current_title: str, caller: str, words: str) -> str | None:
    """The new title once a call's transcript arrives, or None to keep the current one.

    Only the placeholder is replaced: a title a person already changed is theirs to keep.
    """
    if not words.strip() or current_title != placeholder_title(caller):
        return None
    return first_sentence(words)
