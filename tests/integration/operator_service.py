"""A small service of its own (not intake) that checks operators against its own copy, for tests
that prove operators registered at intake reach every service through Kafka.

    python operator_service.py --bootstrap HOST:PORT --mongo-url URL --database DB \\
        --group-prefix PREFIX --port N

A real ``ServiceRuntime`` with ``keep_operator_directory()`` (its one line of wiring), served
by uvicorn, with one endpoint per kind:

* ``GET /incidents`` (viewer), ``POST /approvals/{id}/grant`` (responder),
  ``PUT /rules/{id}`` (admin): answer ``{"operator_id": ...}``;
* ``POST /login`` with ``{"email", "password"}``: the browser sign-in check (200 with the
  operator, 401 problem otherwise).
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from aftercare.events.operators import Operator, require_role
from aftercare.events.runtime import ServiceRuntime, serve
from aftercare.events.settings import ServiceSettings
from aftercare.events.web import Problem, install_problem_handlers


class Login(BaseModel):
    email: str
    password: str


def build_app(settings: ServiceSettings) -> FastAPI:
    app = FastAPI()
    runtime = ServiceRuntime(settings)
    runtime.keep_operator_directory()
    app.router.lifespan_context = runtime.lifespan
    install_problem_handlers(app, service="The operator test service")
    app.include_router(runtime.operations_router())

    @app.get("/incidents")
    async def watch(operator: Annotated[Operator, Depends(require_role("viewer"))]) -> dict[str, Any]:
        return {"operator_id": operator.operator_id}

    @app.post("/approvals/{approval_id}/grant")
    async def approve(operator: Annotated[Operator, Depends(require_role("responder"))]) -> dict[str, Any]:
        return {"operator_id": operator.operator_id}

    @app.put("/rules/{rule_id}")
    async def configure(operator: Annotated[Operator, Depends(require_role("admin"))]) -> dict[str, Any]:
        return {"operator_id": operator.operator_id}

    @app.post("/login")
    async def login(body: Login, request: Request) -> dict[str, Any]:
        operator = await runtime.require_operators().verify_login(body.email, body.password)
        if operator is None or not operator.active:
            raise Problem(401, "Sign-in failed", "Email or password is wrong.", kind="unauthenticated")
        return {"operator_id": operator.operator_id, "role": operator.role.value}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--mongo-url", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--group-prefix", required=True)
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    service_settings = ServiceSettings(
        service_name="operator-test-service",
        http_port=arguments.port,
        database=arguments.database,
        consumer_group_prefix=arguments.group_prefix,
        kafka_bootstrap_servers=arguments.bootstrap,
        mongo_url=arguments.mongo_url,
        startup_timeout_seconds=60,
    )
    serve(build_app(service_settings), service_settings)
