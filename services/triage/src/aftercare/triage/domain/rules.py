"""Triage rules: conditions on an incident's fields, and what a matching rule decides.

A rule is data (stored in triage's database, seeded from YAML, changed through the API):

    name: db-connection-refused
    order: 10                      # rules are tried in this order; the first to set a field wins
    when:                          # every condition given must hold; a list means "any of"
      channel: [pagerduty, alertmanager]
      severity: [critical, error]
      source: "db-*"               # glob patterns, case-insensitive
      system: [billing-db]
      tenant: [acme]
      labels: {env: prod}
      text: {any: [connection refused, too many connections], regex: "ORA-\\d{5}"}
    then: {category: database, runbook: restart-db, urgency: high}

Regular expressions run with a time limit (the ``regex`` package's timeout) and patterns that
could backtrack without end (a repeated group that itself repeats) are refused when the rule
is saved, so one bad rule cannot stall triage.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aftercare.events.incidents import Channel, Severity
from aftercare.events.tenants import Priority
from aftercare.triage.domain.categories import Category
from aftercare.triage.domain.words import Words, find_phrase, phrase_words, words_of

# The standard library's regex parser, only read (see required_literal); it has no public name.
_STANDARD_PARSER: Any = importlib.import_module("re._parser")
_LITERAL: Any = importlib.import_module("re._constants").LITERAL
_COUNT = re.compile(r"\{\d*,?\d*\}")

REGEX_TIMEOUT_S = 0.05
MAX_PATTERN_LENGTH = 300

# A group that repeats and holds a repeat ((a+)+, (\w*)*, (a|aa)+ ...): the classic runaway.
_NESTED_REPEAT = regex.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)\s*(?:[+*]|\{\d*,\d*\})")
_ALTERNATION_REPEAT = regex.compile(r"\((?:[^()\\]|\\.)*\|(?:[^()\\]|\\.)*\)\s*(?:[+*]|\{\d*,\d*\})")


class RuleError(ValueError):
    """A rule that cannot be used, with what to change."""


def check_pattern(pattern: str) -> regex.Pattern[str]:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise RuleError(f"regex is {len(pattern)} characters; at most {MAX_PATTERN_LENGTH} are allowed")
    if _NESTED_REPEAT.search(pattern) or _ALTERNATION_REPEAT.search(pattern):
        raise RuleError(
            f"regex {pattern!r} repeats a group that itself repeats or alternates (like (a+)+ or (a|aa)*), "
            "which can run away on some texts; write it without the nested repetition"
        )
    try:
        return regex.compile(pattern, regex.IGNORECASE | regex.VERSION0)
    except regex.error as error:
        raise RuleError(f"regex {pattern!r} does not compile: {error}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextCondition(_Strict):
    any: list[str] = Field(default_factory=list, description="Keywords or phrases; one must appear (typo-tolerant).")
    all: list[str] = Field(default_factory=list, description="Keywords or phrases that must all appear.")
    none: list[str] = Field(default_factory=list, description="Keywords or phrases that must not appear.")
    regex: str | None = Field(default=None, description="Case-insensitive; searched in title and description.")

    @field_validator("regex")
    @classmethod
    def _safe_regex(cls, value: str | None) -> str | None:
        if value is not None:
            check_pattern(value)
        return value

    @model_validator(mode="after")
    def _something(self) -> TextCondition:
        if not (self.any or self.all or self.none or self.regex):
            raise ValueError("text needs at least one of any, all, none or regex")
        return self


class Conditions(_Strict):
    channel: list[Channel] | None = None
    severity: list[Severity] | None = None
    tenant: list[str] | None = None
    system: list[str] | None = Field(default=None, description="Glob patterns on the affected system's name.")
    source: list[str] | None = Field(default=None, description="Glob patterns on the reported source/host.")
    labels: dict[str, str] | None = Field(default=None, description="Label values (glob patterns) that must match.")
    text: TextCondition | None = None

    @field_validator("channel", "severity", "tenant", "system", "source", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Outcome(_Strict):
    category: Category | None = None
    system: str | None = None
    runbook: str | None = Field(default=None, min_length=1, max_length=200)
    impact: Literal["high", "medium", "low"] | None = None
    urgency: Literal["high", "medium", "low"] | None = None
    priority: Priority | None = Field(default=None, description="Force this priority (skips the matrix).")

    @model_validator(mode="after")
    def _something(self) -> Outcome:
        if not self.model_dump(exclude_none=True):
            raise ValueError("then must set at least one of category, system, runbook, impact, urgency, priority")
        return self


class RuleSpec(_Strict):
    """A rule as people write it."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = Field(default="", max_length=1000)
    order: int = Field(default=100, ge=0, le=1_000_000)
    enabled: bool = True
    when: Conditions = Field(default_factory=Conditions)
    then: Outcome


@dataclass(frozen=True)
class Rule:
    """A stored rule: its spec and version."""

    spec: RuleSpec
    version: int = 1

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Facts:
    """The incident fields rules look at."""

    tenant_id: str
    channel: str
    severity: str
    title: str
    description: str
    source: str | None
    system: str | None
    labels: dict[str, str]

    @property
    def text(self) -> str:
        return f"{self.title}\n{self.description}"


@dataclass
class Match:
    rule: Rule
    matched: list[str] = field(default_factory=list)


def _glob(patterns: Sequence[str], value: str | None) -> str | None:
    if value is None:
        return None
    lowered = value.lower()
    for pattern in patterns:
        if fnmatch.fnmatchcase(lowered, pattern.lower()):
            return pattern
    return None


def required_literal(pattern: str) -> str | None:
    """Lower-case ASCII letters that every text the pattern matches contains, or None.

    A rule book has many regex rules and most texts match none of them; a substring test rules
    out most searches at a fraction of a search's cost. Taken from the pattern's top-level
    sequence only (what is in a group, an alternation or a repeat is not certain to appear).
    Read with the standard library's parser; a pattern it does not read the same way (the
    ``regex`` package's own syntax) gets no shortcut, nor does one with a brace that is not a
    ``{m,n}`` count: ``regex`` reads ``{e<=1}`` as fuzzy matching where the standard parser sees
    literal characters."""
    if "{" in _COUNT.sub("", pattern) or "}" in _COUNT.sub("", pattern):
        return None  # a brace that is no {m,n} count: the two parsers may disagree
    try:
        parsed = _STANDARD_PARSER.parse(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return None
    runs: list[str] = []
    run: list[str] = []
    for op, value in parsed:
        if op is _LITERAL and 32 <= value < 127:
            run.append(chr(value))
            continue
        if run:
            runs.append("".join(run))
            run = []
    if run:
        runs.append("".join(run))
    longest = max(runs, key=len, default="")
    return longest.lower() if len(longest) >= 2 else None


@dataclass
class CompiledRule:
    """A rule ready to match: regex compiled, phrases split into words, once per rule set."""

    rule: Rule
    pattern: regex.Pattern[str] | None
    required: str | None = None  # in every text the pattern matches (lower case), see required_literal

    @classmethod
    def of(cls, rule: Rule) -> CompiledRule:
        text = rule.spec.when.text
        pattern = check_pattern(text.regex) if text is not None and text.regex else None
        return cls(rule, pattern, required_literal(pattern.pattern) if pattern is not None else None)

    def match(self, facts: Facts, words: Words | None = None) -> Match | None:
        """The conditions that matched, or None if one did not (or the regex ran out of time)."""
        when = self.rule.spec.when
        matched: list[str] = []
        if when.channel is not None:
            if facts.channel not in when.channel:
                return None
            matched.append(f"channel={facts.channel}")
        if when.severity is not None:
            if facts.severity not in when.severity:
                return None
            matched.append(f"severity={facts.severity}")
        if when.tenant is not None:
            if facts.tenant_id not in when.tenant:
                return None
            matched.append(f"tenant={facts.tenant_id}")
        if when.system is not None:
            if _glob(when.system, facts.system) is None:
                return None
            matched.append(f"system={facts.system}")
        if when.source is not None:
            if _glob(when.source, facts.source) is None:
                return None
            matched.append(f"source={facts.source}")
        if when.labels is not None:
            for key, pattern in when.labels.items():
                if _glob([pattern], facts.labels.get(key)) is None:
                    return None
                matched.append(f"labels.{key}={facts.labels[key]}")
        if when.text is not None:
            words = words if words is not None else Words(words_of(facts.text))
            condition = when.text
            if condition.any:
                hits = [found for phrase in condition.any if (found := find_phrase(phrase, words))]
                if not hits:
                    return None
                matched.append(f"text has {hits[0]!r}")
            for phrase in condition.all:
                found = find_phrase(phrase, words)
                if found is None:
                    return None
                matched.append(f"text has {found!r}")
            for phrase in condition.none:
                if find_phrase(phrase, words) is not None:
                    return None
            if self.pattern is not None:
                text = facts.text
                # Case-insensitive ASCII matches ASCII letters only through their lower case;
                # other texts (Unicode case folding has surprises) are always searched.
                if self.required is not None and text.isascii() and self.required not in text.lower():
                    return None
                try:
                    hit = self.pattern.search(text, timeout=REGEX_TIMEOUT_S)
                except TimeoutError:
                    return None
                if hit is None:
                    return None
                matched.append(f"text matches /{self.pattern.pattern}/ at {hit.group(0)[:60]!r}")
        return Match(self.rule, matched)


def gate_words(condition: TextCondition | None) -> frozenset[str] | None:
    """Words of which the text must contain at least one (exactly or typo-tolerantly) for
    ``condition`` to hold, or None when no such words can be named (no text condition, or only
    ``none``/``regex``).

    A phrase is found only where its first word is (``find_phrase`` starts there), so: every
    phrase of ``all`` must be found, the first one's first word will do; one phrase of ``any``
    must be found, so one of their first words. A phrase without words is never found: a rule
    whose ``all`` starts with one never matches, and one in ``any`` adds no way to match; such
    rules are left ungated all the same (checked the long way), as a rule of no words is rare."""
    if condition is None:
        return None
    phrases = condition.all[:1] or condition.any
    if not phrases:
        return None
    firsts = [phrase_words(phrase)[:1] for phrase in phrases]
    if not all(firsts):
        return None
    return frozenset(first[0] for first in firsts)


class RuleIndex:
    """Which rules can match a report, found without matching every rule's conditions.

    With a few hundred rules most of them name words that appear in no given report, or ask
    for another channel or severity. A rule is looked at only if

    * its channel and severity conditions accept the report's (worked out once per pair);
    * and its text can be there: one of its gate words (see ``gate_words``) is among the text's
      words (an exact lookup, a fuzzy comparison only with words of a near length), or, for a
      regex rule without words, the text holds the pattern's required letters
      (``required_literal``; a text that is not ASCII is always looked at, as in ``match``).

    Rules that none of this can rule out are always looked at. Every condition here is one that
    ``CompiledRule.match`` checks too, so the rules it leaves out are exactly rules that would
    not have matched; the candidates are then matched in full, in order."""

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self.rules = list(rules)
        self.ungated: list[int] = []
        self.by_word: dict[str, list[int]] = {}
        self.by_literal: dict[str, list[int]] = {}
        for position, compiled in enumerate(self.rules):
            text = compiled.rule.spec.when.text
            gates = gate_words(text)
            if gates is not None:
                for word in gates:
                    self.by_word.setdefault(word, []).append(position)
            elif text is not None and compiled.required is not None and not text.any and not text.all:
                self.by_literal.setdefault(compiled.required, []).append(position)
            else:
                self.ungated.append(position)
        self._accepting: dict[tuple[str, str], frozenset[int]] = {}

    def _accepted(self, channel: str, severity: str) -> frozenset[int]:
        """Positions of the rules whose channel and severity conditions accept this pair."""
        accepted = self._accepting.get((channel, severity))
        if accepted is None:
            accepted = frozenset(
                position
                for position, compiled in enumerate(self.rules)
                if (compiled.rule.spec.when.channel is None or channel in compiled.rule.spec.when.channel)
                and (compiled.rule.spec.when.severity is None or severity in compiled.rule.spec.when.severity)
            )
            if len(self._accepting) < 1024:  # a handful of pairs in practice; bounded all the same
                self._accepting[(channel, severity)] = accepted
        return accepted

    def candidates(self, facts: Facts, words: Words) -> list[int]:
        """Positions (in rule order) of every rule that may match ``facts``; ``words`` are its text's."""
        found = set(self.ungated)
        for word, positions in self.by_word.items():
            if words.positions(word):
                found.update(positions)
        if self.by_literal:
            text = facts.text
            lowered = text.lower() if text.isascii() else None
            for literal, positions in self.by_literal.items():
                if lowered is None or literal in lowered:
                    found.update(positions)
        return sorted(found.intersection(self._accepted(facts.channel, facts.severity)))


class RuleSet:
    """The enabled rules, in order."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        enabled = sorted((rule for rule in rules if rule.spec.enabled), key=lambda rule: (rule.spec.order, rule.name))
        self.rules = [CompiledRule.of(rule) for rule in enabled]
        self.index = RuleIndex(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def matches(self, facts: Facts, words: Words | None = None) -> list[Match]:
        """The rules that match, in order; ``words`` are ``facts.text``'s if the caller has them."""
        words = words if words is not None else Words(words_of(facts.text))
        rules = self.rules
        return [
            found
            for position in self.index.candidates(facts, words)
            if (found := rules[position].match(facts, words)) is not None
        ]


def parse_rule(document: dict[str, Any]) -> RuleSpec:
    """A rule from its YAML/JSON form; pydantic's ValidationError says what is wrong."""
    return RuleSpec.model_validate(document)
