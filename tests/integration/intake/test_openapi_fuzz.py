"""Fuzz every operation of intake's OpenAPI spec over real HTTP: no input may cause a 5xx.

Schemathesis sends generated requests, valid and invalid, to every operation of a running intake
process (its own, with a rate limit high enough that the fuzzing is not simply answered with
429). The spec is built from the app at import time, because the tests are generated while
pytest collects, before any fixture runs (and schemathesis' fixture-based loader does not work
with this pytest); a first test proves it is exactly what the process serves at /openapi.json.

Requests carry real credentials (tenant-a's API key, or the admin token on /admin), so generated
bodies get past authentication into validation and the store. A 5xx means intake failed on some
input instead of saying what to change: that is a bug (an unexpected error is answered 500,
so it is caught here too).

Bounded to a couple of minutes: a few dozen examples per operation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from aftercare.intake.bootstrap import build_app
from aftercare.intake.settings import IntakeSettings

from .conftest import IntakeUnderTest, start_intake, stop_intake
from kafka_helpers import Infrastructure

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def fuzzed_intake(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IntakeUnderTest]:
    service = start_intake(
        infrastructure,
        tmp_path_factory.mktemp("fuzzed-intake"),
        extra_env={"AFTERCARE_INTAKE_RATE_LIMIT_PER_MINUTE": "1000000"},
    )
    try:
        yield service
    finally:
        stop_intake(service)


OPENAPI = json.loads(json.dumps(build_app(IntakeSettings()).openapi()))
spec = schemathesis.openapi.from_dict(OPENAPI)


def test_the_fuzzed_spec_is_the_one_intake_serves(fuzzed_intake: IntakeUnderTest) -> None:
    served = httpx.get(f"{fuzzed_intake.base_url}/openapi.json", timeout=30.0)
    assert served.status_code == 200
    assert served.json() == OPENAPI


def credentials_for(path: str, intake: IntakeUnderTest) -> dict[str, str]:
    return intake.admin() if path.startswith("/admin") else intake.auth("tenant-a")


@spec.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_no_input_makes_intake_fail_with_a_server_error(case: Any, fuzzed_intake: IntakeUnderTest) -> None:
    case.call_and_validate(
        base_url=fuzzed_intake.base_url,
        headers=credentials_for(case.path, fuzzed_intake),
        checks=[not_a_server_error],
        timeout=30,
    )
