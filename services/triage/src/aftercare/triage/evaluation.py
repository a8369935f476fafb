"""How well triage reads people's words: accuracy on the held-out part of the shipped labelled
reports (``data/labelled_reports.tsv``), for the phrase rules and for a small statistical
classifier (multinomial naive Bayes over words and word pairs) trained on the other part.

``python -m aftercare.triage.evaluation`` prints both. Every fourth report is held out; neither
the phrase lists nor the classifier may be tuned by looking at those.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from aftercare.events.tenants import SupportedSystem
from aftercare.triage.domain.categories import Category
from aftercare.triage.domain.words import read_category, read_system, words_of

LABELLED = Path(__file__).parent / "data" / "labelled_reports.tsv"

EXAMPLE_SYSTEMS = [
    SupportedSystem(name="billing-db", aliases=["billing", "invoicing"]),
    SupportedSystem(name="shop-web", aliases=["web shop", "webshop", "shop", "online shop", "boutique en ligne"]),
    SupportedSystem(name="crm"),
    SupportedSystem(name="mail-server", aliases=["email", "mail", "mailbox", "outlook", "webmail"]),
    SupportedSystem(name="vpn-gateway", aliases=["vpn", "remote access"]),
    SupportedSystem(name="wiki", aliases=["confluence"]),
    SupportedSystem(name="payroll-app", aliases=["payroll", "salaries"]),
]


@dataclass(frozen=True)
class Example:
    category: str
    system: str | None
    text: str


def load(path: Path = LABELLED) -> list[Example]:
    examples = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        category, system, text = line.split("\t", 2)
        examples.append(Example(category, None if system == "-" else system, text))
    return examples


def split(examples: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """(training, held out): every fourth example is held out."""
    training = [example for index, example in enumerate(examples) if index % 4 != 3]
    held_out = [example for index, example in enumerate(examples) if index % 4 == 3]
    return training, held_out


def features(text: str) -> list[str]:
    words = words_of(text)
    return words + [f"{a}_{b}" for a, b in itertools.pairwise(words)]


class NaiveBayes:
    """Multinomial naive Bayes with add-one smoothing; small enough to train at start-up."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.priors: dict[str, float] = {}
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.totals: dict[str, int] = {}
        labels = Counter(example.category for example in examples)
        for example in examples:
            self.counts[example.category].update(features(example.text))
        self.vocabulary = {feature for counter in self.counts.values() for feature in counter}
        for label, count in labels.items():
            self.priors[label] = math.log(count / len(examples))
            self.totals[label] = sum(self.counts[label].values())

    def predict(self, text: str) -> str:
        seen = [feature for feature in features(text) if feature in self.vocabulary]
        size = len(self.vocabulary)

        def score(label: str) -> float:
            counts, total = self.counts[label], self.totals[label]
            return self.priors[label] + sum(math.log((counts[f] + 1) / (total + size)) for f in seen)

        return max(self.priors, key=score)


@dataclass(frozen=True)
class Accuracy:
    rules_category: float
    classifier_category: float
    rules_then_classifier_category: float
    rules_system: float
    held_out: int
    training: int


def evaluate(examples: Sequence[Example] | None = None) -> Accuracy:
    examples = list(examples or load())
    training, held_out = split(examples)
    model = NaiveBayes(training)
    rules_right = model_right = combined_right = system_right = 0
    for example in held_out:
        reading = read_category(example.text).value or Category.OTHER.value
        predicted = model.predict(example.text)
        rules_right += reading == example.category
        model_right += predicted == example.category
        combined = reading if reading != Category.OTHER.value else predicted
        combined_right += combined == example.category
        system_right += read_system(example.text, EXAMPLE_SYSTEMS).value == example.system
    count = len(held_out)
    return Accuracy(
        rules_category=rules_right / count,
        classifier_category=model_right / count,
        rules_then_classifier_category=combined_right / count,
        rules_system=system_right / count,
        held_out=count,
        training=len(training),
    )


@lru_cache(maxsize=1)
def shipped_classifier() -> NaiveBayes:
    """The classifier trained on every shipped labelled report (at start-up; no downloads)."""
    return NaiveBayes(load())


def main() -> None:
    result = evaluate()
    print(f"labelled reports: {result.training} for training, {result.held_out} held out")
    print(f"category, phrase rules:                  {result.rules_category:.1%}")
    print(f"category, naive Bayes (trained here):    {result.classifier_category:.1%}")
    print(f"category, rules then Bayes when unsure:  {result.rules_then_classifier_category:.1%}")
    print(f"system, names and aliases:               {result.rules_system:.1%}")


if __name__ == "__main__":
    main()
