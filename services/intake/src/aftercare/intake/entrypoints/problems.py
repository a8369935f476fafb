"""RFC 9457 problem responses: every error a caller can meet says what to change.

Raise ``Problem`` anywhere in a request; validation errors and unexpected exceptions are turned
into problems too, so no endpoint answers with a bare 500 page or FastAPI's default format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aftercare.events.producer import EventTooLarge, PublishFailed

log = structlog.stdlib.get_logger("aftercare.intake.problems")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://aftercare.dev/problems/"


class Problem(Exception):
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
        body = {"type": TYPE_BASE + self.kind, "title": self.title, "status": self.status, "detail": self.detail}
        if instance:
            body["instance"] = instance
        return body | self.extra


def problem_response(problem: Problem, request: Request | None = None) -> JSONResponse:
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


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, problem: Problem) -> JSONResponse:
        return problem_response(problem, request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            message = next(e.get("ctx", {}).get("error", "") for e in errors if e.get("type") == "json_invalid")
            return problem_response(
                Problem(
                    400,
                    "Invalid JSON",
                    f"The request body is not valid JSON: {message}. "
                    "Send a JSON object with Content-Type: application/json.",
                    kind="invalid-json",
                ),
                request,
            )
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

    @app.exception_handler(PublishFailed)
    async def _kafka_unavailable(request: Request, error: PublishFailed) -> JSONResponse:
        # The report is stored with its event in the outbox; the sweep publishes it once Kafka is
        # back. The caller hears "not accepted yet" within the publish deadline, not after minutes.
        log.warning("publish deadline passed; answered 503", path=request.url.path, error=str(error))
        return problem_response(
            Problem(
                503,
                "Temporarily unavailable",
                "Kafka did not confirm the report in time. Retry after the Retry-After seconds with the "
                "same Idempotency-Key; the report is kept and will not open a second incident.",
                kind="unavailable",
                headers={"Retry-After": "5"},
            ),
            request,
        )

    @app.exception_handler(EventTooLarge)
    async def _too_large(request: Request, error: EventTooLarge) -> JSONResponse:
        field = error.largest_field or "(report)"
        return problem_response(
            Problem(
                413,
                "Report too large",
                f"This report would make an event of {error.size} bytes, over the {error.limit}-byte limit. "
                f"Shorten '{field}' (the largest field) and send it again.",
                kind="report-too-large",
                field=field,
            ),
            request,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # A bug or an outage, not the caller's fault: say so, and whether retrying makes sense.
        log.exception("unhandled error", path=request.url.path)
        return problem_response(
            Problem(
                503,
                "Temporarily unavailable",
                "Intake could not complete the request (the store or Kafka is unavailable). Retry later; "
                "send an Idempotency-Key so that a retry can never open a second incident.",
                kind="unavailable",
                headers={"Retry-After": "5"},
            ),
            request,
        )
