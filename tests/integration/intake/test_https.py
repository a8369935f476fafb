"""HTTPS: intake serves TLS with a certificate from the dev CA (infra/devcert.py), so a client
that insists on ``https://`` (the official PagerDuty library does) needs only the base URL changed
and the dev CA trusted."""

from __future__ import annotations

import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from .conftest import start_intake, stop_intake
from kafka_helpers import Infrastructure

pytestmark = pytest.mark.integration

DEVCERT = Path(__file__).resolve().parents[3] / "infra" / "devcert.py"


def test_a_report_over_https_is_accepted_by_a_client_that_trusts_the_dev_ca(
    infrastructure: Infrastructure, tmp_path: Path
) -> None:
    made = subprocess.run(
        [sys.executable, str(DEVCERT), "--dir", str(tmp_path / "certs"), "--quiet"], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    certs = tmp_path / "certs"
    service = start_intake(
        infrastructure,
        tmp_path / "intake",
        tls=(certs / "intake.pem", certs / "intake.key", certs / "ca.pem"),
        extra_env={"AFTERCARE_INTAKE_SMTP_ENABLED": "false"},
    )
    try:
        assert service.base_url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        title = f"Certificate test {uuid.uuid4().hex[:8]}"
        with httpx.Client(base_url=service.base_url, verify=trusted, timeout=30.0) as http:
            answer = http.post("/v1/incidents", headers=service.auth("tenant-a"), json={"title": title})
            assert answer.status_code == 202, answer.text
            read = http.get(f"/v1/incidents/{answer.json()['incident_id']}", headers=service.auth("tenant-a"))
            assert read.status_code == 200 and read.json()["title"] == title
            # The same name by IP address (the certificate lists 127.0.0.1 too).
            by_ip = service.base_url.replace("localhost", "127.0.0.1")
            assert http.get(by_ip + "/healthz").status_code == 200

        # A client that does not trust the dev CA refuses the connection: it is real TLS.
        with (
            httpx.Client(base_url=service.base_url, timeout=30.0) as untrusting,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            untrusting.get("/healthz")
    finally:
        stop_intake(service)
