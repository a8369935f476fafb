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

Retries: Twilio retries a webhook it got no answer to, with the same CallSid; the use case
(``service_layer/take_phone_call.py``) makes a retried request return the same incident and
read back the same number. What a call says is decided in ``domain/phone_call.py`` and
``domain/callers.py``; this module checks the signature, parses and renders TwiML.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape, quoteattr

import structlog
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from pydantic import ValidationError

from aftercare.events.web import Problem, validation_errors
from aftercare.intake.adapters.tenant_registry import Credential
from aftercare.intake.components import IntakeComponents
from aftercare.intake.domain import twilio_signature
from aftercare.intake.domain.incident import Incident
from aftercare.intake.domain.phone_call import TwilioCallback
from aftercare.intake.entrypoints.dependencies import Components, enforce_rate_limit
from aftercare.intake.service_layer.take_phone_call import take_call

log = structlog.stdlib.get_logger("aftercare.intake.phone")

router = APIRouter(prefix="/v1/phone/twilio", tags=["phone"])

VOICE_PATH = "/v1/phone/twilio/voice"
RECORDED_PATH = "/v1/phone/twilio/recorded"
TRANSCRIPTION_PATH = "/v1/phone/twilio/transcription"

TWIML = "text/xml"
MAX_FORM_FIELDS = 200
# Twilio transcribes recordings of up to 2 minutes only, so a message is kept to that length.
MAX_MESSAGE_SECONDS = 120

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


# --- what the caller hears ----------------------------------------------------------------


def spell_for_speech(number: str) -> str:
    """'INC-1042' -> 'I N C, 1 0 4 2': text-to-speech reads each character, not 'one thousand...'."""
    return ", ".join(" ".join(group.upper()) for group in re.findall(r"[A-Za-z]+|[0-9]+", number))


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


def _out_of_service(line: Credential) -> Response:
    # A phone line's own answer: the caller hears it and the call ends; no incident is opened.
    log.info("call to a deactivated tenant's line; told so", tenant_id=line.tenant_id)
    return _twiml_response(
        twiml(
            _say(
                "This support line is no longer in service. Please contact your support provider another way. Goodbye."
            ),
            "<Hangup/>",
        )
    )


@router.post("/voice", response_class=Response, responses=PROBLEMS, openapi_extra=_FORM_BODY)
async def incoming_call(request: Request, intake: Components, x_twilio_signature: Signature = None) -> Response:
    """A call to a tenant's support number (Twilio Voice URL): answers with TwiML.

    Opens an incident for the caller, or adds the call to the caller's open incident, reads the
    incident number back and records a voice message. If the webhook already carries
    ``TranscriptionText``, the incident is titled with its first sentence and the call ends.
    """
    line, call = await authenticated_call(request, intake, x_twilio_signature)
    if not line.active:
        return _out_of_service(line)
    outcome = await take_call(intake.incidents, intake.phone_calls, line.tenant_id, call)
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
    if not line.active:
        return _out_of_service(line)
    outcome = await take_call(intake.incidents, intake.phone_calls, line.tenant_id, call)
    return _twiml_response(answer_for_recording(outcome.incident))


@router.post("/transcription", response_class=Response, responses=PROBLEMS, openapi_extra=_FORM_BODY)
async def message_transcribed(request: Request, intake: Components, x_twilio_signature: Signature = None) -> Response:
    """Twilio's ``transcribeCallback``: what the caller said is added to the call's incident.

    A failed transcription still adds the recording link, so the message is never lost.
    """
    line, call = await authenticated_call(request, intake, x_twilio_signature)
    if not line.active:
        return _out_of_service(line)
    outcome = await take_call(intake.incidents, intake.phone_calls, line.tenant_id, call)
    log.info(
        "voice message transcribed",
        tenant_id=line.tenant_id,
        call_sid=call.call_sid,
        incident_id=outcome.incident.incident_id,
        status=call.transcription_status,
    )
    return _twiml_response(twiml())
