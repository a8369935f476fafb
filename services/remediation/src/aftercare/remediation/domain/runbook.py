"""Runbooks: what a known problem's fix is, declared rather than scripted.

A runbook is data (YAML or JSON) validated here before it is stored: an allow-listed set of
actions, each with its own allowed parameters; parameter values are literals or placeholders
``{incident.<field>}`` filled only from an allow-list of incident fields, and the filled values
are checked again (no slashes, spaces or control characters) before anything runs. Nothing in a
runbook is ever a shell command, and no URL in it is absolute: HTTP calls go to the admin endpoint
the tenant registered for the affected system, which the run looks up — never the runbook.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Action = Literal["http_admin", "wait", "rerun_diagnosis", "add_note", "page_oncall"]

# What each action accepts; anything else is refused when the runbook is saved.
ACTION_PARAMETERS: dict[str, frozenset[str]] = {
    "http_admin": frozenset({"path", "method", "query"}),
    "wait": frozenset({"seconds"}),
    "rerun_diagnosis": frozenset(),
    "add_note": frozenset({"text"}),
    "page_oncall": frozenset({"reason"}),
}
REQUIRED_PARAMETERS: dict[str, frozenset[str]] = {
    "http_admin": frozenset({"path"}),
    "wait": frozenset({"seconds"}),
    "add_note": frozenset({"text"}),
}

# Incident fields a parameter may be filled from. The title and description are the customer's
# free text and stay out: they are never put into a request to a customer's system.
INCIDENT_FIELDS = frozenset({"incident_id", "number", "system", "category", "priority", "severity", "source"})

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
ADMIN_PATH = re.compile(r"^/[A-Za-z0-9._~/-]{0,200}$")
# A filled value that goes into a request: one plain token, nothing that could change its meaning.
SAFE_VALUE = re.compile(r"^[A-Za-z0-9._:@+-]{1,128}$")
RUNBOOK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class RunbookInvalid(ValueError):
    """The runbook cannot be stored: ``errors`` says what is wrong where."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AppliesTo(_Part):
    """Which incidents the runbook is for; an empty list matches anything."""

    categories: list[str] = Field(default_factory=list)
    systems: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict, description="All must be on the incident.")


class Step(_Part):
    name: str = Field(min_length=1, max_length=80)
    action: Action
    params: dict[str, str | int | float] = Field(default_factory=dict)
    timeout_seconds: float = Field(gt=0, le=3600, description="Required: how long the action may take.")
    retries: int = Field(default=0, ge=0, le=5)
    safe_to_repeat: bool = Field(
        default=False,
        description="May run twice without harm. A step that is not is never run again after a crash "
        "or a timeout left it unclear whether it ran.",
    )

    @model_validator(mode="after")
    def _parameters_fit_the_action(self) -> Step:
        allowed = ACTION_PARAMETERS[self.action]
        unknown = sorted(set(self.params) - allowed)
        if unknown:
            raise ValueError(
                f"action {self.action} does not take {', '.join(unknown)} "
                f"(it takes: {', '.join(sorted(allowed)) or 'nothing'})"
            )
        missing = sorted(REQUIRED_PARAMETERS.get(self.action, frozenset()) - set(self.params))
        if missing:
            raise ValueError(f"action {self.action} needs {', '.join(missing)}")
        for key, value in self.params.items():
            if isinstance(value, str):
                for field in PLACEHOLDER.findall(value):
                    name = field.removeprefix("incident.")
                    if not field.startswith("incident.") or name not in INCIDENT_FIELDS:
                        raise ValueError(
                            f"parameter {key} uses {{{field}}}; only {{incident.<field>}} with a field from "
                            f"{', '.join(sorted(INCIDENT_FIELDS))} may be used"
                        )
        if self.action == "http_admin":
            path = str(self.params["path"])
            if PLACEHOLDER.search(path) or not ADMIN_PATH.match(path) or ".." in path:
                raise ValueError(
                    "http_admin path must be a literal path on the system's admin endpoint, like "
                    "/admin/restart-service (no host, no placeholders, no '..')"
                )
            method = str(self.params.get("method", "POST")).upper()
            if method not in {"POST", "PUT"}:
                raise ValueError("http_admin method must be POST or PUT")
            query = self.params.get("query")
            if query is not None and not isinstance(query, str):
                raise ValueError("http_admin query must be text like 'service={incident.source}'")
        if self.action == "wait":
            seconds = self.params["seconds"]
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 < seconds <= 86400:
                raise ValueError("wait seconds must be a number between 0 and 86400")
        return self


class Verification(_Part):
    """How the run proves the fix: the system's diagnostic probe, rerun, against these criteria."""

    expect_status: list[int] = Field(default_factory=lambda: [200], min_length=1)
    max_latency_ms: float | None = Field(default=None, gt=0)
    body_contains: str | None = Field(default=None, max_length=200)
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    attempts: int = Field(default=1, ge=1, le=10, description="Probes before giving up.")
    interval_seconds: float = Field(default=2.0, ge=0, le=600, description="Between probes (a stored due time).")


class Approval(_Part):
    required: bool = False
    approvers: list[str] = Field(
        default_factory=list, description="Operator ids or emails who may decide; empty = any responder."
    )
    timeout_seconds: float = Field(default=900.0, gt=0, le=7 * 86400)


class BlastRadius(_Part):
    max_concurrent_per_system: int = Field(default=1, ge=1, le=100)
    max_runs_per_system_per_hour: int = Field(default=10, ge=1, le=10000)
    queue_timeout_seconds: float = Field(
        default=900.0, gt=0, description="A run waiting for a free slot longer than this is escalated."
    )


class Runbook(_Part):
    name: str = Field(description="lower-case-with-dashes; triage names runbooks by it")
    description: str = ""
    applies_to: AppliesTo = Field(default_factory=AppliesTo)
    steps: list[Step] = Field(min_length=1, max_length=50)
    verification: Verification
    rollback: list[Step] = Field(default_factory=list, max_length=50)
    approval: Approval = Field(default_factory=Approval)
    blast_radius: BlastRadius = Field(default_factory=BlastRadius)

    @field_validator("name")
    @classmethod
    def _name_is_a_slug(cls, value: str) -> str:
        if not RUNBOOK_NAME.match(value):
            raise ValueError("name must be lower-case letters, digits and dashes, like 'restart-web-service'")
        return value

    @model_validator(mode="after")
    def _rollback_never_waits_for_people(self) -> Runbook:
        if any(step.action == "page_oncall" for step in self.rollback):
            raise ValueError("rollback steps cannot page: the run escalates after its rollback anyway")
        return self


def _readable(error: ValidationError) -> list[dict[str, str]]:
    readable = []
    for item in error.errors():
        location = ".".join(str(part) for part in item.get("loc", ()))
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if item.get("type") == "missing" and location.endswith("timeout_seconds"):
            message = "every step needs a timeout_seconds"
        elif item.get("type") == "literal_error" and location.endswith("action"):
            message = f"unknown action {item.get('input')!r}; allowed: {', '.join(sorted(ACTION_PARAMETERS))}"
        elif item.get("type") == "extra_forbidden":
            message = "not a runbook field"
        readable.append({"field": location or "(runbook)", "message": message})
    return readable


def parse_runbook(source: str | Mapping[str, Any]) -> Runbook:
    """A validated runbook from YAML/JSON text or an already parsed document.

    Raises :class:`RunbookInvalid` listing every problem found.
    """
    document: Any = source
    if isinstance(source, str):
        try:
            document = yaml.safe_load(source)
        except yaml.YAMLError as error:
            raise RunbookInvalid([{"field": "(runbook)", "message": f"not valid YAML or JSON: {error}"}]) from None
    if not isinstance(document, Mapping):
        raise RunbookInvalid([{"field": "(runbook)", "message": "a runbook is a mapping with name, steps, ..."}])
    try:
        return Runbook.model_validate(dict(document))
    except ValidationError as error:
        raise RunbookInvalid(_readable(error)) from None


class IncidentFacts(_Part):
    """What remediation knows about the incident: the only source of parameter values."""

    incident_id: str
    tenant_id: str
    number: str = ""
    system: str | None = None
    category: str | None = None
    priority: str | None = None
    severity: str | None = None
    source: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    def field(self, name: str) -> str | None:
        value = getattr(self, name) if name in INCIDENT_FIELDS else None
        return None if value is None else str(value)


def applies(runbook: Runbook, incident: IncidentFacts) -> str | None:
    """None when the runbook fits the incident; otherwise why not."""
    rule = runbook.applies_to
    if rule.categories and incident.category not in rule.categories:
        return f"category {incident.category!r} is not one of {rule.categories}"
    if rule.systems and incident.system not in rule.systems:
        return f"system {incident.system!r} is not one of {rule.systems}"
    for key, value in rule.labels.items():
        if incident.labels.get(key) != value:
            return f"label {key}={value} is not on the incident"
    return None


class ParameterRefused(ValueError):
    """A placeholder's value from the incident is missing or unsafe to send."""


def fill(value: str | int | float, incident: IncidentFacts, *, free_text: bool = False) -> str | int | float:
    """Fill ``{incident.<field>}`` placeholders from the incident's allowed fields.

    Values that go into a request must be one plain token (``SAFE_VALUE``); text for a person
    (``free_text``: notes, page reasons) may be anything printable.
    """
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1).removeprefix("incident.")
        filled = incident.field(name)
        if filled is None:
            raise ParameterRefused(f"the incident has no {name}")
        if not free_text and not SAFE_VALUE.match(filled):
            raise ParameterRefused(f"the incident's {name} {filled!r} is not a plain value; refusing to send it")
        return filled

    return PLACEHOLDER.sub(substitute, value)


def filled_params(step: Step, incident: IncidentFacts) -> dict[str, str | int | float]:
    """The step's parameters with placeholders filled (raises :class:`ParameterRefused`)."""
    free_text = step.action in {"add_note", "page_oncall"}
    return {key: fill(value, incident, free_text=free_text) for key, value in step.params.items()}


class PlannedStep(_Part):
    phase: Literal["fix", "verification", "rollback"]
    index: int
    name: str
    action: str
    params: dict[str, str | int | float] = Field(default_factory=dict)
    target: str | None = None
    timeout_seconds: float
    retries: int = 0
    safe_to_repeat: bool = False
    refused: str | None = None


def dry_run(
    runbook: Runbook, incident: IncidentFacts, admin_endpoint: str | None, probe_url: str | None
) -> dict[str, Any]:
    """What a run would do for ``incident``, with parameters filled, without doing anything."""
    plan: list[PlannedStep] = []
    for phase, steps in (("fix", runbook.steps), ("rollback", runbook.rollback)):
        for index, step in enumerate(steps):
            refused = None
            params: dict[str, str | int | float] = {}
            try:
                params = filled_params(step, incident)
            except ParameterRefused as error:
                refused = str(error)
            target = None
            if step.action == "http_admin":
                target = admin_url(admin_endpoint, str(step.params["path"])) if admin_endpoint else None
                if target is None:
                    refused = refused or "the system has no registered admin endpoint"
            elif step.action == "rerun_diagnosis":
                target = probe_url
            plan.append(
                PlannedStep(
                    phase=phase,
                    index=index,
                    name=step.name,
                    action=step.action,
                    params=params,
                    target=target,
                    timeout_seconds=step.timeout_seconds,
                    retries=step.retries,
                    safe_to_repeat=step.safe_to_repeat,
                    refused=refused,
                )
            )
    return {
        "runbook": runbook.name,
        "applies": applies(runbook, incident) is None,
        "does_not_apply_because": applies(runbook, incident),
        "approval_required": runbook.approval.required,
        "steps": [step.model_dump() for step in plan if step.phase == "fix"],
        "verification": {"probe": probe_url, **runbook.verification.model_dump()},
        "rollback": [step.model_dump() for step in plan if step.phase == "rollback"],
    }


def admin_url(admin_endpoint: str, path: str) -> str:
    """The URL of ``path`` on the system's registered admin endpoint (never anywhere else)."""
    return admin_endpoint.rstrip("/") + path
