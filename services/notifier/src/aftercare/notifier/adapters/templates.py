"""Message templates (Jinja2, in the repo under ``templates/messages/<language>/``): per message
kind and language a subject, a plain-text and an HTML body and a short SMS text.

Checked when loaded: every kind must exist in the default language in all four parts, and every
template of every language must render with a complete sample context under ``StrictUndefined``,
so a typo in a variable name stops the service at start-up instead of failing a customer's
message at 3 a.m.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound, select_autoescape

from aftercare.notifier.domain.notices import NoticeKind

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "messages"
DEFAULT_LANGUAGE = "en"
PARTS = ("subject", "txt", "html", "sms")

# Every variable a template may use; the use case fills all of them (empty when unknown).
CONTEXT_KEYS = (
    "number",
    "title",
    "priority",
    "category",
    "response_due_at",
    "conclusion",
    "cause",
    "runbook",
    "resolution",
    "by",
    "reason",
    "escalated_to",
    "status",
    "status_url",
    "status_page_url",
    "tenant_name",
    "contact_name",
    "advisory_title",
    "product",
    "affected_versions",
    "severity",
    "cve",
    "text",
    "system",
    "subject",
    "level",
    "acknowledge_url",
    "acknowledge_by",
    "known_number",
    "your_number",
    "your_incident_id",
)


class TemplateError(RuntimeError):
    pass


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    text: str
    html: str
    sms: str


def full_context(values: dict[str, Any]) -> dict[str, Any]:
    return {key: "" for key in CONTEXT_KEYS} | values


class MessageTemplates:
    def __init__(self, directory: Path = TEMPLATE_DIR) -> None:
        self._directory = directory
        self._env = Environment(
            loader=FileSystemLoader(str(directory)),
            undefined=StrictUndefined,
            autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
            keep_trailing_newline=False,
        )
        self.languages = sorted(p.name for p in directory.iterdir() if p.is_dir())

    def check(self) -> None:
        """Fail loudly if a template is missing or does not render (see module doc)."""
        sample = full_context({key: f"<{key}>" for key in CONTEXT_KEYS})
        sample_digest = sample | {"count": "2", "items": [{"subject": "s", "status_url": "u"}]}
        problems: list[str] = []
        for kind in NoticeKind:
            for part in PARTS:
                name = f"{DEFAULT_LANGUAGE}/{kind.value}.{part}.j2"
                if not (self._directory / name).is_file():
                    problems.append(f"missing {name}")
        for language in self.languages:
            for path in sorted((self._directory / language).glob("*.j2")):
                name = f"{language}/{path.name}"
                try:
                    context = sample_digest if path.name.startswith("digest.") else sample
                    self._env.get_template(name).render(context)
                except Exception as error:
                    problems.append(f"{name}: {error}")
        if problems:
            raise TemplateError("message templates are broken: " + "; ".join(problems))

    def _pick(self, language: str, kind: str, part: str) -> str:
        for candidate in (language, language.split("-")[0], DEFAULT_LANGUAGE):
            name = f"{candidate}/{kind}.{part}.j2"
            if (self._directory / name).is_file():
                return name
        raise TemplateNotFound(f"{kind}.{part}")

    def render(self, kind: str, language: str, context: dict[str, Any], subject: str | None = None) -> RenderedMessage:
        values = full_context(context)
        rendered_subject = subject or self._env.get_template(self._pick(language, kind, "subject")).render(values)
        rendered_subject = " ".join(rendered_subject.split())
        values["subject"] = rendered_subject
        return RenderedMessage(
            subject=rendered_subject,
            text=self._env.get_template(self._pick(language, kind, "txt")).render(values),
            html=self._env.get_template(self._pick(language, kind, "html")).render(values),
            sms=" ".join(self._env.get_template(self._pick(language, kind, "sms")).render(values).split()),
        )
