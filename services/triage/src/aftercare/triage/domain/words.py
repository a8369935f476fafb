"""People's words: a free-text report read for its category and the tenant's system it is about.

Phrase rules (per category, in the languages tenants write in) and the tenant's own system
names and aliases. Typos and casing are tolerated: every word of a phrase must match a word of
the text exactly, or (for words of five letters or more) with a similarity of at least 85%
(rapidfuzz's ratio), so "databse" still reads as "database" but "bill" is not "billing".
The confidence says how clearly one reading won.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from rapidfuzz import fuzz

from aftercare.events.tenants import SupportedSystem
from aftercare.triage.domain.categories import Category

FUZZY_MIN_LENGTH = 5
FUZZY_SCORE = 85.0

# (phrase, weight). Several words in a phrase must appear next to each other.
PHRASES: dict[Category, tuple[tuple[str, float], ...]] = {
    Category.DATABASE: (
        ("database", 2),
        ("db", 1.5),
        ("sql", 2),
        ("postgres", 2),
        ("postgresql", 2),
        ("mysql", 2),
        ("oracle", 1.5),
        ("mongodb", 2),
        ("query", 1.5),
        ("queries", 1.5),
        ("deadlock", 2.5),
        ("replication", 2),
        ("replica", 1.5),
        ("table", 1),
        ("too many connections", 2.5),
        ("connection pool", 2),
        ("transaction", 1.5),
        ("datenbank", 2),
        ("base de données", 2),
        ("tablespace", 2.5),
        ("schema", 1),
        ("index", 1),
        ("ora", 1.5),
    ),
    Category.NETWORK: (
        ("network", 2),
        ("dns", 2.5),
        ("vpn", 2.5),
        ("firewall", 2),
        ("packet loss", 3),
        ("ping", 1.5),
        ("router", 2),
        ("switch", 1.5),
        ("wifi", 2),
        ("wlan", 2),
        ("internet", 2),
        ("unreachable", 1.5),
        ("connection refused", 1.5),
        ("timed out", 1),
        ("timeout", 1),
        ("latency", 1),
        ("bgp", 2.5),
        ("load balancer", 2),
        ("netzwerk", 2),
        ("réseau", 2),
        ("cable", 1.5),
        ("ethernet", 2),
        ("proxy", 1.5),
        ("gateway", 1.5),
        ("nxdomain", 2.5),
    ),
    Category.APPLICATION: (
        ("error 500", 2.5),
        ("500", 1),
        ("502", 1.5),
        ("503", 1.5),
        ("internal server error", 2.5),
        ("bad gateway", 1.5),
        ("exception", 2),
        ("crash", 2),
        ("crashed", 2),
        ("crashes", 2),
        ("stack trace", 2),
        ("bug", 2),
        ("page", 1),
        ("website", 1.5),
        ("app", 1),
        ("application", 1.5),
        ("button", 1.5),
        ("checkout", 1.5),
        ("shop", 1),
        ("service", 0.5),
        ("down", 0.5),
        ("deploy", 1.5),
        ("release", 1),
        ("fehler", 1.5),
        ("erreur", 1.5),
        ("blank screen", 2),
        ("api", 1),
        ("health check", 1.5),
        ("invoice", 0.5),
        ("form", 1),
    ),
    Category.HARDWARE: (
        ("disk", 2.5),
        ("disk failure", 3),
        ("raid", 3),
        ("power supply", 3),
        ("psu", 3),
        ("fan", 2),
        ("overheating", 2.5),
        ("temperature", 2),
        ("server room", 2),
        ("printer", 2.5),
        ("hardware", 3),
        ("memory module", 3),
        ("ram", 1.5),
        ("smart", 1),
        ("battery", 2),
        ("ups", 2),
        ("festplatte", 3),
        ("disque", 2.5),
        ("laptop", 2),
        ("monitor", 1),
        ("keyboard", 2),
        ("beeping", 2),
        ("broken", 1),
        ("ssd", 2.5),
    ),
    Category.SECURITY: (
        ("security", 3),
        ("breach", 3),
        ("hacked", 3),
        ("phishing", 3),
        ("malware", 3),
        ("virus", 2.5),
        ("ransomware", 3),
        ("suspicious", 2.5),
        ("unauthorized", 2),
        ("brute force", 3),
        ("vulnerability", 3),
        ("cve", 3),
        ("certificate expired", 2),
        ("intrusion", 3),
        ("leak", 2),
        ("ddos", 3),
        ("spam", 2),
        ("sicherheit", 3),
        ("sécurité", 3),
        ("virus", 2),
        ("exploit", 3),
    ),
    Category.PERFORMANCE: (
        ("slow", 2.5),
        ("slowly", 2.5),
        ("sluggish", 2.5),
        ("takes forever", 3),
        ("latency", 1.5),
        ("high cpu", 3),
        ("cpu", 2),
        ("load", 1),
        ("memory usage", 2.5),
        ("response time", 2.5),
        ("lag", 2),
        ("laggy", 2.5),
        ("performance", 3),
        ("degraded", 2),
        ("langsam", 2.5),
        ("lent", 2.5),
        ("seconds to load", 3),
        ("minutes to load", 3),
        ("hangs", 1.5),
        ("freezes", 1.5),
        ("throughput", 2),
        ("queue backlog", 2),
    ),
    Category.ACCESS: (
        ("password", 3),
        ("login", 2.5),
        ("log in", 2.5),
        ("sign in", 2.5),
        ("locked out", 3),
        ("account", 2),
        ("permission", 2.5),
        ("permissions", 2.5),
        ("access denied", 3),
        ("forbidden", 2),
        ("403", 1.5),
        ("401", 1.5),
        ("2fa", 3),
        ("mfa", 3),
        ("reset", 1.5),
        ("new user", 2.5),
        ("onboarding", 2),
        ("rights", 1.5),
        ("passwort", 3),
        ("anmelden", 2.5),
        ("mot de passe", 3),
        ("authentication", 2),
        ("sso", 2.5),
        ("token", 1),
        ("credentials", 2),
    ),
}

_WORD = re.compile(r"[\w']+", re.UNICODE)


def fold(text: str) -> str:
    """Lower case without accents, so 'Réseau' and 'reseau' are one word."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def words_of(text: str) -> list[str]:
    return _WORD.findall(fold(text))


@lru_cache(maxsize=4096)
def phrase_words(phrase: str) -> tuple[str, ...]:
    """The words ``find_phrase`` looks for, in order."""
    return tuple(words_of(phrase))


_phrase_words = phrase_words


@lru_cache(maxsize=65536)
def _word_matches(expected: str, seen: str) -> bool:
    if expected == seen:
        return True
    if len(expected) < FUZZY_MIN_LENGTH or abs(len(expected) - len(seen)) > 2:
        return False
    return fuzz.ratio(expected, seen) >= FUZZY_SCORE


class Words:
    """A text's words, with where each expected word matches remembered: hundreds of rules ask
    about the same text, and most of their words appear nowhere in it. A word is looked up
    exactly, and only the text's words of a near length are compared fuzzily (the others
    cannot reach the fuzzy score)."""

    __slots__ = ("_at", "_by_length", "_positions", "words")

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self._positions: dict[str, frozenset[int]] = {}
        self._at: dict[str, list[int]] = {}
        for index, word in enumerate(self.words):
            self._at.setdefault(word, []).append(index)
        self._by_length: dict[int, list[str]] = {}
        for word in self._at:
            self._by_length.setdefault(len(word), []).append(word)

    def positions(self, expected: str) -> frozenset[int]:
        found = self._positions.get(expected)
        if found is None:
            exact = self._at.get(expected)
            size = len(expected)
            if size < FUZZY_MIN_LENGTH:
                found = frozenset(exact) if exact else _NOWHERE
            else:
                hits = list(exact) if exact else []
                for length in range(size - 2, size + 3):
                    near = self._by_length.get(length)
                    if near:
                        for seen in near:
                            if seen != expected and _word_matches(expected, seen):
                                hits.extend(self._at[seen])
                found = frozenset(hits) if hits else _NOWHERE
            self._positions[expected] = found
        return found


_NOWHERE: frozenset[int] = frozenset()


def find_phrase(phrase: str, words: Sequence[str] | Words) -> str | None:
    """The text's words that match ``phrase`` (typo-tolerant), or None."""
    return _find_words(_phrase_words(phrase), words if isinstance(words, Words) else Words(words))


def _find_words(wanted: tuple[str, ...], text: Words) -> str | None:
    if not wanted:
        return None
    starts = text.positions(wanted[0])
    if not starts:
        return None
    for start in sorted(starts):
        if all(start + offset in text.positions(expected) for offset, expected in enumerate(wanted[1:], 1)):
            return " ".join(text.words[start : start + len(wanted)])
    return None


@dataclass(frozen=True)
class Reading:
    """What the words say: a value, how sure, and the phrases that said it."""

    value: str | None
    confidence: float
    evidence: tuple[str, ...]


@lru_cache(maxsize=1)
def _phrase_table() -> tuple[tuple[Category, str, float, tuple[str, ...]], ...]:
    """PHRASES with each phrase's words, in PHRASES' order (worked out once, not per report)."""
    return tuple(
        (category, phrase, weight, phrase_words(phrase))
        for category, phrases in PHRASES.items()
        for phrase, weight in phrases
    )


def read_category(text: str, words: Words | None = None) -> Reading:
    """``words`` are ``text``'s if the caller has them (where they match is remembered)."""
    words = words if words is not None else Words(words_of(text))
    scores: dict[Category, float] = {}
    evidence: dict[Category, list[str]] = {}
    vocabulary = set(words.words)
    for category, phrase, weight, wanted in _phrase_table():
        # Fast path: a one-word phrase seen exactly needs no scan.
        if len(wanted) == 1 and wanted[0] in vocabulary:
            found: str | None = wanted[0]
        else:
            found = _find_words(wanted, words)
        if found is not None:
            scores[category] = scores.get(category, 0.0) + weight
            evidence.setdefault(category, []).append(found if found == phrase else f"{found}≈{phrase}")
    if not scores:
        return Reading(None, 0.0, ())
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    best, best_score = ranked[0]
    runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
    # Clear winners with strong evidence are sure; close races are not.
    margin = (best_score - runner_up) / best_score
    strength = min(1.0, best_score / 4.0)
    confidence = round(0.5 * margin + 0.5 * strength, 2)
    return Reading(best.value, confidence, tuple(evidence[best]))


@dataclass(frozen=True)
class SystemName:
    system: str
    phrase: str
    kind: str  # "name", "alias" or "name part"


def system_names(systems: Sequence[SupportedSystem]) -> list[SystemName]:
    """Every way a tenant's people may name each system."""
    names: list[SystemName] = []
    for system in systems:
        names.append(SystemName(system.name, system.name, "name"))
        for alias in system.aliases:
            names.append(SystemName(system.name, alias, "alias"))
        # 'billing-db' is also called 'billing'; only parts that are no generic word count.
        for part in words_of(system.name.replace("-", " ").replace("_", " ")):
            if len(part) >= 3 and part not in GENERIC_PARTS:
                names.append(SystemName(system.name, part, "name part"))
    return names


GENERIC_PARTS = {"db", "web", "api", "app", "prod", "server", "service", "the", "and", "new", "old", "main", "srv"}
KIND_CONFIDENCE = {"name": 1.0, "alias": 0.95, "name part": 0.75}


def read_system(text: str, systems: Sequence[SupportedSystem]) -> Reading:
    # One index of the text's words for every name asked about.
    words = Words(words_of(text.replace("-", " ").replace("_", " ")))
    hits: dict[str, tuple[float, str]] = {}
    for name in system_names(systems):
        phrase = name.phrase.replace("-", " ").replace("_", " ")
        found = find_phrase(phrase, words)
        if found is None:
            continue
        exact = found == " ".join(_phrase_words(phrase))
        confidence = KIND_CONFIDENCE[name.kind] * (1.0 if exact else 0.9)
        note = f"{name.kind} '{name.phrase}'" + ("" if exact else f" (read '{found}')")
        if confidence > hits.get(name.system, (0.0, ""))[0]:
            hits[name.system] = (confidence, note)
    if not hits:
        return Reading(None, 0.0, ())
    ranked = sorted(hits.items(), key=lambda item: item[1][0], reverse=True)
    best, (confidence, note) = ranked[0]
    if len(ranked) > 1 and ranked[1][1][0] == confidence:
        # Two systems named equally clearly: the report is about both or unclear; do not guess.
        return Reading(None, 0.0, (f"names both {best} and {ranked[1][0]}",))
    return Reading(best, round(confidence, 2), (note,))
