"""JSON logging with structlog; context (tenant, incident, event, trace) bound per message.

Standard-library loggers (uvicorn, aiokafka, pymongo) go through the same JSON renderer, so a
service prints one JSON object per line whatever logged it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from aftercare.events.tracing import incident_trace_id


def add_incident_trace_id(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A line about an incident carries the incident's trace id (one trace per incident, see
    ``aftercare.events.tracing``), also where no span is current (a request, a timer)."""
    incident_id = event_dict.get("incident_id")
    if not event_dict.get("trace_id") and isinstance(incident_id, str) and incident_id:
        event_dict["trace_id"] = incident_trace_id(incident_id)
    return event_dict


_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    add_incident_trace_id,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
    structlog.processors.format_exc_info,
]


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every log line to stdout as JSON with ``service`` and any bound context."""
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _add_service(service),
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every connection retry at ERROR; our own start-up log says it better.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One line per HTTP request (health probes every few seconds) drowns what matters; request
    # counts and latencies are in /metrics.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _add_service(service: str) -> Any:
    def processor(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    return processor


def get_logger(name: str | None = None) -> Any:
    return structlog.stdlib.get_logger(name)
