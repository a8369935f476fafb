"""A phone call as Twilio's voice webhooks describe it, and what each part of it tells the incident.

A call arrives in up to three parts (the call, its recording, its transcription), each applied
to the incident once, keyed by ``piece()``. The first part opens the incident (or joins the
caller's open one, see ``callers.py``); later parts add the caller's words and the recording.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aftercare.events.incidents import Channel, Reporter
from aftercare.intake.domain import field_limits as limits
from aftercare.intake.domain.callers import call_title, caller_key
from aftercare.intake.domain.incident import IncidentReport


class TwilioCallback(BaseModel):
    """The parameters of Twilio's voice, <Record> action and transcription callbacks we use."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, str_strip_whitespace=True)

    call_sid: str = Field(alias="CallSid", min_length=2, max_length=64, pattern=r"^[A-Za-z0-9]+$")
    caller: str = Field(alias="From", min_length=1, max_length=64)
    called: str = Field(alias="To", min_length=1, max_length=64)
    account_sid: str | None = Field(default=None, alias="AccountSid", max_length=64)
    call_status: str | None = Field(default=None, alias="CallStatus", max_length=32)
    caller_name: str | None = Field(default=None, alias="CallerName", max_length=limits.NAME_CHARS)
    transcription_text: str | None = Field(default=None, alias="TranscriptionText", max_length=limits.DESCRIPTION_CHARS)
    transcription_status: str | None = Field(default=None, alias="TranscriptionStatus", max_length=32)
    transcription_sid: str | None = Field(default=None, alias="TranscriptionSid", max_length=64)
    recording_url: str | None = Field(
        default=None, alias="RecordingUrl", max_length=limits.URL_CHARS, pattern=r"^https?://\S+$"
    )
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


def reporter_of(call: TwilioCallback) -> Reporter:
    return Reporter(phone=call.caller, name=call.caller_name or None)


def report_for(call: TwilioCallback) -> IncidentReport:
    """The incident a call opens: titled with the caller's first words once they are known."""
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
        title=call_title(call.words, call.caller),
        description="\n\n".join(lines),
        channel=Channel.PHONE,
        reporter=reporter_of(call),
        dedup_key=caller_key(call.caller),
        details=details,
    )


def update_for(call: TwilioCallback) -> tuple[str, str]:
    """(timeline kind, message) for a later part of a call, or a new call about an open incident."""
    if call.words or call.transcription_status:
        said = f"{call.caller} said: {call.words}" if call.words else f"Voice message from {call.caller}."
        return "comment", "\n".join([said, *_message_lines(call)[1 if call.words else 0 :]])
    if call.recording_url:
        return "details", f"Voice message from {call.caller} recorded. " + " ".join(_message_lines(call))
    return "comment", f"{call.caller} called again about this incident (call {call.call_sid})."
