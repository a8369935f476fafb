"""Phone: calls to a tenant's support number, as Twilio's voice webhooks deliver them.

Configure the tenant's number in Twilio with

* Voice URL (``A call comes in``, HTTP POST): ``<public base URL>/v1/phone/twilio/voice``.

Our TwiML then drives the rest of the call, so nothing else needs configuring:

1. ``POST /v1/phone/twilio/voice`` — a call comes in (CallSid, From, To, CallStatus, ...).
   The caller's open incident on this line gets the call as a comment; otherwise a new
   incident is opened. The answer reads the incident number back, then records a voice
   message (``<Record transcribe="true">``).
2. ``POST /v1/phone/twilio/recorded`` — Twilio's ``<Record action>``: the message is recorded
   (RecordingUrl, RecordingSid, RecordingDuration). Its link is added to the incident; the
   answer says goodbye.
3. ``POST /v1/phone/twilio/transcription`` — Twilio's ``transcribeCallback``, after the call:
   TranscriptionText/TranscriptionStatus are added to the incident as the caller's words.

A webhook that already carries ``TranscriptionText`` (a transcription service posting the
whole message at once) to the voice URL makes an incident titled with the first sentence.

Security: every request must carry ``X-Twilio-Signature`` made with the auth token of the
called number (``To``), over ``AFTERCARE_INTAKE_PUBLIC_BASE_URL`` + path + query, which must
therefore be the URL exactly as configured in Twilio (intake may sit behind a proxy). A missing
or wrong signature, and a ``To`` that is not a registered support line, all get the same 403,
so the endpoint does not reveal which numbers exist. Signed requests are then rate limited per
line (429) and checked for the fields a call needs (422).

Retries: Twilio retries a webhook it got no answer to, with the same CallSid. A ``phone_calls``
document per (tenant, CallSid), claimed before the incident is touched, makes a retried
request return the same incident and read back the same number: one call never opens two
incidents. Each piece of a call (the call, its recording, its transcription) is applied once,
keyed by its Twilio SID; a crash between adding a comment and recording that it was added
can repeat that comment on retry — a repeated comment is better than a lost voice message.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape, quoteattr

import structlog
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from aftercare.events.incidents import Channel, Reporter
from aftercare.events.web import Problem, validation_errors
from aftercare.intake.components import IntakeComponents
from aftercare.intake.domain import twilio_signature
from aftercare.intake.domain.incident import Incident, IncidentReport
from aftercare.intake.entrypoints.dependencies import Components, enforce_rate_limit
from aftercare.intake.incident_desk import IncidentNotFound
from aftercare.intake.tenant_registry import Credential

log = structlog.stdlib.get_logger("aftercare.intake.phone")

router = APIRouter(prefix="/v1/phone/twilio", tags=["phone"])

VOICE_PATH = "/v1/phone/twilio/voice"
RECORDED_PATH = "/v1/phone/twilio/recorded"
TRANSCRIPTION_PATH = "/v1/phone/twilio/transcription"

TWIML = "text/xml"
MAX_FORM_FIELDS = 200
TITLE_LENGTH = 120
# Twilio transcribes recordings of up to 2 minutes only, so a message is kept to that length.
MAX_MESSAGE_SECONDS = 120

# Twilio's stand-in caller IDs for withheld, unknown, restricted and blocked numbers: callers
# behind them are different people, so they must not share an open incident.
WITHHELD_CALLER_IDS = frozenset({"+266696687", "+86282452253", "+7378742833", "+2562533"})
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
# The auth token a signature is checked with when the called number is unknown: the check
# still runs (and fails), so an unknown number costs the same time as a wrong signature.
_NO_LINE_TOKEN = uuid.uuid4().hex

_FORM_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["CallSid", "From", "To"],
                    "properties": {
                        name: {"type": "string"}
                        for name in (
                            "CallSid",
                            "AccountSid",
                            "From",
                            "To",
                            "CallStatus",
                            "Direction",
                            "CallerName",
                            "TranscriptionText",
                            "TranscriptionStatus",
                            "TranscriptionSid",
                            "RecordingUrl",
                            "RecordingSid",
                            "RecordingDuration",
                        )
                    },
                }
            }
        },
    },
}
PROBLEMS: dict[int | str, dict[str, Any]] = {
    200: {"content": {TWIML: {}}, "description": "TwiML for the call"},
    400: {"description": "Body is not a readable form"},
    403: {"description": "Missing or invalid signature"},
    413: {"description": "Body too large"},
    415: {"description": "Not form-encoded"},
    422: {"description": "Fields a call needs are missing or wrong"},
    429: {"description": "Rate limit; Retry-After"},
}


class TwilioCallback(BaseModel):
    """The parameters of Twilio's voice, <Record> action and transcription callbacks we use."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, str_strip_whitespace=True)

    call_sid: str = Field(alias="CallSid", min_length=2, max_length=64, pattern=r"^[A-Za-z0-9]+$")
    caller: str = Field(alias="From", min_length=1, max_length=64)
    called: str = Field(alias="To", min_length=1, max_length=64)
    account_sid: str | None = Field(default=None, alias="AccountSid", max_length=64)
    call_status: str | None = Field(default=None, alias="CallStatus", max_length=32)
    caller_name: str | None = Field(default=None, alias="CallerName", max_length=200)
    transcription_text: str | None = Field(default=None, alias="TranscriptionText", max_length=20_000)
    transcription_status: str | None = Field(default=None, alias="TranscriptionStatus", max_length=32)
    transcription_sid: str | None = Field(default=None, alias="TranscriptionSid", max_length=64)
    recording_url: str | None = Field(default=None, alias="RecordingUrl", max_length=2000, pattern=r"^https?://\S+$")
    recording_sid: str | None = Field(default=None, alias="RecordingSid", max_length=64)
    recording_duration: str | None = Field(default=None, alias="RecordingDuration", max_length=16)

    @field_validator("*", mode="before")
    @classmethod
    def _printable(cls, value: Any) -> Any:
        # The store refuses NUL; other control characters carry nothing a caller said.
        if isinstance(value, str):
            return "".join(ch for ch in value if ch >= " " or ch in "\n\t")
        return value

    @property
    def words(self) -> str:
        return (self.transcription_text or "").strip()

    @property
    def transcription_failed(self) -> bool:
        return (self.transcription_status or "").lower() == "failed"

    @property
    def has_message(self) -> bool:
        """The request carries what the caller said (text or a recording), not just the call."""
        return bool(self.words or self.recording_url or self.transcription_status)

    def piece(self) -> str:
        """Which part of the call this request brings; each part is applied to the incident once."""
        if self.words or self.transcription_status:
            sid = self.transcription_sid or self.recording_sid
            return f"transcription:{sid or hashlib.sha256(self.words.encode()).hexdigest()[:16]}"
        if self.recording_url:
            return f"recording:{self.recording_sid or self.recording_url}"
        return "call"


# --- pure helpers: what the caller hears and what the incident says ---------------------


def spell_for_speech(number: str) -> str:
    """'INC-1042' -> 'I N C, 1 0 4 2': text-to-speech reads each character, not 'one thousand...'."""
    return ", ".join(" ".join(group.upper()) for group in re.findall(r"[A-Za-z]+|[0-9]+", number))


def caller_key(caller: str) -> str | None:
    """The dedup key of a caller's open incident; None for withheld or non-phone caller IDs."""
    if not _E164.match(caller) or caller in WITHHELD_CALLER_IDS:
        return None
    return f"phone:{caller}"


def first_sentence(text: str, limit: int = TITLE_LENGTH) -> str:
    sentence = re.split(r"(?<=[.!?])\s", " ".join(text.split()), maxsplit=1)[0]
    if len(sentence) <= limit:
        return sentence
    cut = sentence[: limit - 1].rsplit(" ", 1)[0] or sentence[: limit - 1]
    return cut + "…"


def _message_lines(call: TwilioCallback) -> list[str]:
    lines = []
    if call.words:
        lines.append(call.words)
    elif call.transcription_failed:
        lines.append("The voice message could not be transcribed; listen to the recording.")
    if call.recording_url:
        seconds = f" ({call.recording_duration} s)" if call.recording_duration else ""
        lines.append(f"Recording{seconds}: {call.recording_url}")
    return lines


def report_for(call: TwilioCallback) -> IncidentReport:
    title = first_sentence(call.words) if call.words else f"Voice message from {call.caller}"
    lines = [*_message_lines(call), f"Call {call.call_sid} from {call.caller} to {call.called}."]
    details = {
        key: value
        for key, value in {
            "call_sid": call.call_sid,
            "account_sid": call.account_sid,
            "called": call.called,
            "recording_url": call.recording_url,
            "recording_sid": call.recording_sid,
        }.items()
        if value
    }
    return IncidentReport(
        title=title,
        description="\n\n".join(lines),
        channel=Channel.PHONE,
        reporter=reporter_of(call),
        dedup_key=caller_key(call.caller),
        details=details,
    )


def reporter_of(call: TwilioCallback) -> Reporter:
    return Reporter(phone=call.caller, name=call.caller_name or None)


def update_for(call: TwilioCallback) -> tuple[str, str]:
    """(timeline kind, message) for a later part of a call, or a new call about an open incident."""
    if call.words or call.transcription_status:
        said = f"{call.caller} said: {call.words}" if call.words else f"Voice message from {call.caller}."
        return "comment", "\n".join([said, *_message_lines(call)[1 if call.words else 0 :]])
    if call.recording_url:
        return "details", f"Voice message from {call.caller} recorded. " + " ".join(_message_lines(call))
    return "comment", f"{call.caller} called again about this incident (call {call.call_sid})."


def _say(text: str) -> str:
    return f"<Say>{escape(text)}</Say>"


def twiml(*verbs: str) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?><Response>' + "".join(verbs) + "</Response>"


def answer_for_call(incident: Incident, *, opened: bool, has_message: bool, base_url: str) -> str:
    spelled = spell_for_speech(incident.number)
    if opened:
        heard = f"Thank you for calling support. Your incident number is {spelled}. Again: {spelled}."
    else:
        heard = (
            f"Thank you for calling support. We have added this call to your open incident, "
            f"number {spelled}. Again: {spelled}."
        )
    if has_message:
        return twiml(_say(heard + " We have your message and will be in touch. Goodbye."), "<Hangup/>")
    record = (
        "<Record"
        f' action={quoteattr(base_url + RECORDED_PATH)} method="POST"'
        f' maxLength="{MAX_MESSAGE_SECONDS}" finishOnKey="#" playBeep="true"'
        f' transcribe="true" transcribeCallback={quoteattr(base_url + TRANSCRIPTION_PATH)}/>'
    )
    prompt = (
        "After the tone, please describe the problem in up to two minutes, then press the pound key or "
        "hang up. Your message is recorded and transcribed for our engineers."
    )
    # Twilio goes on to the next verb only when nothing was recorded.
    return twiml(_say(heard), _say(prompt), record, _say("We did not hear a message. Goodbye."))


def answer_for_recording(incident: Incident) -> str:
    spelled = spell_for_speech(incident.number)
    return twiml(_say(f"Thank you. Your message is recorded for incident {spelled}. Goodbye."), "<Hangup/>")


# --- the calls we have seen, so a retried webhook does not act twice --------------------


@dataclass(frozen=True)
class CallRecord:
    incident_id: str
    opens: bool  # this call opens its own incident (else it updates the caller's open one)
    applied: frozenset[str]


class PhoneCalls:
    """``phone_calls``: one document per (tenant, CallSid), claimed before the incident is touched."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._calls = collection

    @staticmethod
    def _id(tenant_id: str, call_sid: str) -> str:
        return f"{tenant_id}|{call_sid}"

    @staticmethod
    def _record(document: dict[str, Any]) -> CallRecord:
        applied = set(document.get("applied", []))
        if document["opens"]:
            # The request that opened the incident put its content into the description.
            applied.add(document["first_piece"])
        return CallRecord(str(document["incident_id"]), bool(document["opens"]), frozenset(applied))

    async def find(self, tenant_id: str, call_sid: str) -> CallRecord | None:
        document = await self._calls.find_one({"_id": self._id(tenant_id, call_sid)})
        return self._record(document) if document else None

    async def claim(self, tenant_id: str, call: TwilioCallback, incident_id: str, *, opens: bool) -> CallRecord:
        """Record the call's incident unless a concurrent request (a retry) did; returns the winner."""
        document = {
            "_id": self._id(tenant_id, call.call_sid),
            "tenant_id": tenant_id,
            "call_sid": call.call_sid,
            "caller": call.caller,
            "incident_id": incident_id,
            "opens": opens,
            "first_piece": call.piece(),
            "applied": [],
            "at": datetime.now(UTC),
        }
        try:
            await self._calls.insert_one(document)
            return self._record(document)
        except DuplicateKeyError:
            existing = await self._calls.find_one({"_id": document["_id"]})
            if existing is None:
                return await self.claim(tenant_id, call, incident_id, opens=opens)
            return self._record(existing)

    async def point_to(self, tenant_id: str, call_sid: str, incident_id: str) -> None:
        # The call now updates someone else's incident: it no longer "opens" one.
        await self._calls.update_one(
            {"_id": self._id(tenant_id, call_sid)}, {"$set": {"incident_id": incident_id, "opens": False}}
        )

    async def mark_applied(self, tenant_id: str, call_sid: str, piece: str) -> None:
        await self._calls.update_one({"_id": self._id(tenant_id, call_sid)}, {"$addToSet": {"applied": piece}})


@dataclass(frozen=True)
class CallOutcome:
    incident: Incident
    opened: bool  # the call opened this incident (rather than updating the caller's open one)


async def take_call(intake: IntakeComponents, tenant_id: str, call: TwilioCallback) -> CallOutcome:
    """Open the call's incident or add this part of the call to it, exactly once per part."""
    desk = intake.desk
    calls = PhoneCalls(desk.incidents.database["phone_calls"])
    record = await calls.find(tenant_id, call.call_sid)
    if record is None:
        key = caller_key(call.caller)
        open_one = await desk.find_open(tenant_id, key) if key else None
        planned = open_one.incident_id if open_one else str(uuid.uuid4())
        record = await calls.claim(tenant_id, call, planned, opens=open_one is None)
    piece = call.piece()

    if record.opens:
        try:
            incident = await desk.get(tenant_id, record.incident_id)
        except IncidentNotFound:
            # First time here (or the first attempt died before opening): open it under the claimed id.
            # A racing retry of this same call lands on the same id, and the desk treats it as a
            # repeat of the report, not as a second occurrence.
            outcome = await desk.report(tenant_id, report_for(call), incident_id=record.incident_id)
            await calls.mark_applied(tenant_id, call.call_sid, piece)
            if outcome.incident.incident_id != record.incident_id:
                # The caller's other call opened an incident a moment ago; this one became its repeat.
                await calls.point_to(tenant_id, call.call_sid, outcome.incident.incident_id)
                return CallOutcome(outcome.incident, opened=False)
            return CallOutcome(outcome.incident, opened=True)
    else:
        incident = await desk.get(tenant_id, record.incident_id)

    if piece not in record.applied:
        kind, message = update_for(call)
        outcome = await desk.add_update(
            tenant_id, incident.incident_id, channel=Channel.PHONE, kind=kind, message=message, author=reporter_of(call)
        )
        await calls.mark_applied(tenant_id, call.call_sid, piece)
        incident = outcome.incident
    return CallOutcome(incident, opened=record.opens)


# --- the HTTP edge -----------------------------------------------------------------------


async def _form_pairs(request: Request) -> list[tuple[str, str]]:
    """The POST parameters exactly as sent, repeats and empty values included (all are signed)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise Problem(
            415,
            "Form body required",
            "Twilio webhooks are POSTed as application/x-www-form-urlencoded; send the call's "
            "parameters (CallSid, From, To, ...) that way.",
            kind="unsupported-media-type",
        )
    body = await request.body()
    try:
        return parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as error:
        raise Problem(
            400,
            "Unreadable form body",
            f"The body is not a valid form encoding ({error}); percent-encode UTF-8 values and send "
            f"at most {MAX_FORM_FIELDS} fields.",
            kind="invalid-form",
        ) from None


def signed_url(intake: IntakeComponents, request: Request) -> str:
    """The URL Twilio called, as configured in Twilio: our public base URL, not the proxy's view."""
    query = request.url.query
    return str(intake.settings.public_base_url).rstrip("/") + request.url.path + (f"?{query}" if query else "")


async def authenticated_call(
    request: Request, intake: IntakeComponents, signature: str | None
) -> tuple[Credential, TwilioCallback]:
    """The support line called and the call's parameters, only for a correctly signed request."""
    url = signed_url(intake, request)
    if not signature:
        raise Problem(
            403,
            "Signature required",
            f"Every request must carry {twilio_signature.SIGNATURE_HEADER}, signed by Twilio with the "
            "auth token of the called number.",
            kind="invalid-signature",
        )
    pairs = await _form_pairs(request)
    called = next((value for name, value in reversed(pairs) if name == "To"), "")
    line = await intake.tenants.by_phone_number(called.strip()) if called.strip() else None
    token = line.secret if line is not None and line.secret else _NO_LINE_TOKEN
    if line is None or not twilio_signature.is_valid(token, url, pairs, signature):
        # Same answer for an unknown number and a wrong signature: which numbers exist stays private.
        log.warning("phone webhook refused: signature does not match", path=request.url.path)
        raise Problem(
            403,
            "Signature not valid",
            f"{twilio_signature.SIGNATURE_HEADER} does not match this request. It must be Twilio's "
            f"HMAC-SHA1 signature of {url} followed by the sorted POST parameters, made with the "
            "auth token registered for the called number (To). Check that token, and that the "
            f"webhook URL configured in Twilio is exactly {url}.",
            kind="invalid-signature",
        )
    await enforce_rate_limit(intake, line)
    try:
        call = TwilioCallback.model_validate(dict(pairs))
    except ValidationError as error:
        raise Problem(
            422,
            "Invalid call parameters",
            "Some parameters a call needs are missing or wrong; see 'errors' for each one.",
            kind="invalid-request",
            errors=validation_errors(error.errors()),
        ) from None
    return line, call


Signature = Annotated[
    str | None, Header(alias=twilio_signature.SIGNATURE_HEADER, description="Twilio's request signature")
]


def _twiml_response(body: str) -> Response:
    return Response(body, media_type=TWIML)


@router.post("/voice", response_class=Response, responses=PROBLEMS, openapi_extra=_FORM_BODY)
async def incoming_call(request: Request, intake: Components, x_twilio_signature: Signature = None) -> Response:
    """A call to a tenant's support number (Twilio Voice URL): answers with TwiML.

    Opens an incident for the caller, or adds the call to the caller's open incident, reads the
    incident number back and records a voice message. If the webhook already carries
    ``TranscriptionText``, the incident is titled with its first sentence and the call ends.
    """
    line, call = await authenticated_call(request, intake, x_twilio_signature)
    outcome = await take_call(intake, line.tenant_id, call)
    log.info(
        "phone call taken",
        tenant_id=line.tenant_id,
        call_sid=call.call_sid,
        incident_id=outcome.incident.incident_id,
        number=outcome.incident.number,
        opened=outcome.opened,
    )
    return _twiml_response(
        answer_for_call(
            outcome.incident,
            opened=outcome.opened,
            has_message=call.has_message,
            base_url=intake.settings.public_base_url.rstrip("/"),
        )
    )


@router.post("/recorded", response_class=Response, responses=PROBLEMS, openapi_extra=_FORM_BODY)
async def message_recorded(request: Request, intake: Components, x_twilio_signature: Signature = None) -> Response:
    """Twilio's ``<Record action>``: the caller's voice message is recorded; its link joins the incident."""
    line, call = await authenticated_call(request, intake, x_twilio_signature)
    outcome = await take_call(intake, line.tenant_id, call)
    return _twiml_response(answer_for_recording(outcome.incident))


@router.post("/transcription", response_class=Response, responses=PROBLEMS, openapi_extra=_FORM_BODY)
async def message_transcribed(request: Request, intake: Components, x_twilio_signature: Signature = None) -> Response:
    """Twilio's ``transcribeCallback``: what the caller said is added to the call's incident.

    A failed transcription still adds the recording link, so the message is never lost.
    """
    line, call = await authenticated_call(request, intake, x_twilio_signature)
    outcome = await take_call(intake, line.tenant_id, call)
    log.info(
        "voice message transcribed",
        tenant_id=line.tenant_id,
        call_sid=call.call_sid,
        incident_id=outcome.incident.incident_id,
        status=call.transcription_status,
    )
    return _twiml_response(twiml())
