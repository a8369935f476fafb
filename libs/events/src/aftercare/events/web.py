"""The HTTP edge every Aftercare service shares: RFC 9457 problem responses and a body-size limit.

Every service answers errors the same way: ``application/problem+json`` with a ``type`` URI, a
``title``, the ``status`` and a ``detail`` that says what to change. Raise :class:`Problem`
anywhere in a request; :func:`install_problem_handlers` turns validation errors, Starlette's own
HTTP errors and unexpected exceptions into problems too, so no endpoint answers with a bare 500
page or FastAPI's default ``{"detail": ...}`` format. :class:`BodySizeLimit` refuses an oversized
body with a 413 problem before it is read into memory.

Typical wiring (see ``aftercare.intake.bootstrap``)::

    app = FastAPI(...)
    install_problem_handlers(app, service="Triage")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
)
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import ConnectionFailure
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "OUTAGE_ERRORS",
    "PROBLEM_JSON",
    "TYPE_BASE",
    "BodySizeLimit",
    "Problem",
    "Unavailable",
    "install_problem_handlers",
    "problem_response",
    "validation_errors",
]

log = structlog.stdlib.get_logger("aftercare.events.web")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://aftercare.dev/problems/"


class Problem(Exception):
    """An error a caller can meet, answered as an RFC 9457 problem.

    ``kind`` becomes the last part of the ``type`` URI (default: the title in kebab case);
    ``headers`` are sent with the answer (``Retry-After``, ``WWW-Authenticate``, ...); any other
    keyword becomes an extension member of the body (``errors=[...]``, ``incident_id=...``).
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind or title.lower().replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        """The problem document; ``instance`` is the request path it answers."""
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        return body | self.extra


def problem_response(problem: Problem, request: Request | None = None) -> JSONResponse:
    """The HTTP answer for ``problem`` (``instance`` set to the request's path when given)."""
    return JSONResponse(
        problem.body(request.url.path if request else None),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


def validation_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """Pydantic errors as {field, message} pairs a person can act on."""
    readable = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
        readable.append({"field": ".".join(location) or "(body)", "message": error.get("msg", "invalid")})
    return readable


def install_problem_handlers(
    app: FastAPI,
    *,
    service: str = "The service",
    retry_advice: str = "Retry later.",
) -> None:
    """Answer every error of ``app`` as a problem: raised :class:`Problem`, validation errors
    (malformed JSON, too deeply nested or not UTF-8 → 400 ``invalid-json``; wrong fields → 422
    ``invalid-request`` with one entry per field), Starlette's 404/405/413; an outage of the
    store or Kafka (``OUTAGE_ERRORS``, :class:`Unavailable`) → 503 ``unavailable`` with
    Retry-After; any other exception (a bug) → 500 ``internal-error``. Both of the last two carry
    a ``correlation_id`` (body, ``X-Correlation-Id`` header, log line), and the connection stays
    usable for the client's next request.

    ``service`` names the service in the answer to an unexpected error; ``retry_advice`` tells
    the caller how to retry safely (intake: "send an Idempotency-Key ...").
    """

    @app.exception_handler(Problem)
    async def _problem(request: Request, problem: Problem) -> JSONResponse:
        return problem_response(problem, request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            message = next(e.get("ctx", {}).get("error", "") for e in errors if e.get("type") == "json_invalid")
            return problem_response(_invalid_json(message), request)
        return problem_response(
            Problem(
                422,
                "Invalid request",
                "Some fields are missing or wrong; see 'errors' for each one.",
                kind="invalid-request",
                errors=validation_errors(errors),
            ),
            request,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 400 and error.detail == _FASTAPI_UNPARSABLE_BODY:
            # FastAPI's answer when json.loads fails with anything but JSONDecodeError.
            cause = error.__cause__
            if isinstance(cause, RecursionError):
                return problem_response(_invalid_json("it is nested too deeply"), request)
            if isinstance(cause, UnicodeDecodeError):
                return problem_response(_invalid_json(f"it is not UTF-8 (byte {cause.start})"), request)
        titles = {404: "Not found", 405: "Method not allowed", 413: "Request too large"}
        detail = str(error.detail)
        if error.status_code == 404 and detail == "Not Found":
            detail = f"There is nothing at {request.url.path}; see /docs for the endpoints."
        elif error.status_code == 405:
            detail = f"{request.method} is not supported on {request.url.path}; see /docs."
        return problem_response(
            Problem(
                error.status_code, titles.get(error.status_code, "Error"), detail, headers=dict(error.headers or {})
            ),
            request,
        )

    # Here, not at the top: the catalog imports operators, which import this module, and the
    # producer imports the catalog.
    from aftercare.events.producer import EventTooLarge, PublishFailed

    @app.exception_handler(PublishFailed)
    async def _kafka_unavailable(request: Request, error: PublishFailed) -> JSONResponse:
        # What was decided is stored with its event in the outbox; the sweep publishes it once
        # Kafka is back. The caller hears "not done yet, retry" within the publish deadline.
        correlation_id = new_correlation_id()
        log.warning(
            "publish deadline passed; answered 503",
            path=request.url.path,
            error=str(error),
            correlation_id=correlation_id,
        )
        return problem_response(
            Problem(
                503,
                "Temporarily unavailable",
                f"Kafka did not confirm the request in time; nothing is lost. {retry_advice}",
                kind="unavailable",
                headers={"Retry-After": str(RETRY_AFTER_S), CORRELATION_HEADER: correlation_id},
                correlation_id=correlation_id,
            ),
            request,
        )

    @app.exception_handler(EventTooLarge)
    async def _event_too_large(request: Request, error: EventTooLarge) -> JSONResponse:
        # Each channel bounds its fields first; this is the last guard, before anything is stored.
        field = error.largest_field or "(request)"
        return problem_response(
            Problem(
                413,
                "Request too large",
                f"This request would make an event of {error.size} bytes, over the {error.limit}-byte limit. "
                f"Shorten '{field}' (the largest field) and send it again.",
                kind="event-too-large",
                field=field,
            ),
            request,
        )

    async def _outage(request: Request, error: Exception) -> JSONResponse:
        # Registered per class (not for Exception), so Starlette answers it and goes on: the
        # connection stays usable for the client's next request.
        correlation_id = new_correlation_id()
        log.warning(
            "store or Kafka unavailable; answered 503",
            path=request.url.path,
            correlation_id=correlation_id,
            error=f"{type(error).__name__}: {error}",
        )
        return problem_response(
            Problem(
                503,
                "Temporarily unavailable",
                f"{service} could not complete the request: the store or Kafka is unavailable. {retry_advice}",
                kind="unavailable",
                headers={"Retry-After": str(RETRY_AFTER_S), CORRELATION_HEADER: correlation_id},
                correlation_id=correlation_id,
            ),
            request,
        )

    for outage in OUTAGE_ERRORS:
        app.add_exception_handler(outage, _outage)
    app.add_exception_handler(Unavailable, _outage)
    app.add_middleware(_UnexpectedErrors, service=service)


class Unavailable(Exception):
    """Raise when a dependency the request needs is down: answered 503 with Retry-After."""


# Failures of the infrastructure rather than of the request: the caller may retry.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    ConnectionFailure,  # pymongo: includes server selection and network timeouts
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    NotLeaderForPartitionError,
    TimeoutError,
)
RETRY_AFTER_S = 5
CORRELATION_HEADER = "X-Correlation-Id"


def new_correlation_id() -> str:
    """An id quoted in an error answer and logged with it, so a report of the error finds the log."""
    return uuid.uuid4().hex


class _UnexpectedErrors:
    """ASGI middleware: an exception nobody handled (a bug) becomes a 500 problem with a
    correlation id in the body, a header and the log, and the request ends normally.

    Not Starlette's ``exception_handler(Exception)``: that one answers, then re-raises, and the
    server then drops the kept-alive connection without ``Connection: close``, so a client's
    next request on it fails.
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except _BodyTooLarge:
            raise  # not a bug: BodySizeLimit (outside) answers 413
        except Exception as error:
            correlation_id = new_correlation_id()
            log.error(
                "unexpected error; answered 500",
                path=scope.get("path"),
                correlation_id=correlation_id,
                exc_info=error,
            )
            if response_started:
                raise  # too late to answer: the server ends the connection
            problem = Problem(
                500,
                "Internal error",
                f"{self.service} failed on this request because of an error on our side, not in the request. "
                f"It is logged under correlation id {correlation_id}: quote it when you report the problem. "
                "Retrying is safe but may fail the same way.",
                kind="internal-error",
                headers={CORRELATION_HEADER: correlation_id},
                correlation_id=correlation_id,
            )
            body = json.dumps(problem.body(scope.get("path"))).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", PROBLEM_JSON.encode()),
                        (b"content-length", str(len(body)).encode()),
                        (CORRELATION_HEADER.lower().encode(), correlation_id.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


_FASTAPI_UNPARSABLE_BODY = "There was an error parsing the body"


def _invalid_json(message: str) -> Problem:
    return Problem(
        400,
        "Invalid JSON",
        f"The request body is not valid JSON: {message}. Send a JSON object with Content-Type: application/json.",
        kind="invalid-json",
    )


class _BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Refusal:
    """How a path answers a body over its limit, when not with the 413 problem (a foreign
    protocol's own error format): status, media type and body."""

    status: int
    media_type: str
    body: bytes


@dataclass(frozen=True)
class PathLimit:
    """A body limit for the paths under ``prefix`` instead of the service's ``max_bytes``
    (a webhook whose sender sends big batches), and optionally its own ``refusal(max_bytes)``."""

    prefix: str
    max_bytes: int
    refusal: Callable[[int], Refusal] | None = None


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with a 413 problem, before they
    are read into memory (by the declared Content-Length, or while a chunked body streams in).

    ``advice`` ends the problem's detail: what the caller (or operator) can do instead.
    ``paths``: other limits (and answers) for some path prefixes; the longest matching prefix wins.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, advice: str = "Send less.", paths: Sequence[PathLimit] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.advice = advice
        self.paths = sorted(paths, key=lambda limit: len(limit.prefix), reverse=True)

    def _limit_for(self, path: str) -> PathLimit:
        for limit in self.paths:
            if path.startswith(limit.prefix):
                return limit
        return PathLimit("", self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope.get("path", ""))
        max_bytes = limit.max_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._refuse(scope, send, limit)
            return
        received = 0
        response_started = False
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    too_large = True
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if too_large:
                # FastAPI turns any error while reading the body into its own 400 ("error parsing
                # the body"), so _BodyTooLarge may never reach us for a chunked upload without a
                # Content-Length: whatever the app answers then, the caller gets the 413.
                if not response_started:
                    response_started = True
                    await self._refuse(scope, send, limit)
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await self._refuse(scope, send, limit)

    async def _refuse(self, scope: Scope, send: Send, limit: PathLimit) -> None:
        if limit.refusal is not None:
            refusal = limit.refusal(limit.max_bytes)
        else:
            refusal = Refusal(
                413,
                PROBLEM_JSON,
                json.dumps(
                    {
                        "type": TYPE_BASE + "request-too-large",
                        "title": "Request too large",
                        "status": 413,
                        "detail": f"The request body is over {limit.max_bytes} bytes. {self.advice}",
                        "instance": scope.get("path"),
                    }
                ).encode(),
            )
        await send(
            {
                "type": "http.response.start",
                "status": refusal.status,
                "headers": [
                    (b"content-type", refusal.media_type.encode()),
                    (b"content-length", str(len(refusal.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": refusal.body})
