# Two commands on a fresh machine:
#   make run    install what is missing, start Kafka, the store and the four services (Ctrl-C stops all)
#   make test   the same set-up, then every test against the real Kafka and store
#
# Only python3 (3.11), java (17+), mvn and go are expected on the machine; everything else is
# fetched into .local/ (ignored by git) on the first run and reused after.

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .local/tools
UV := $(TOOLS)/bin/uv

# Use the machine's Python 3.11; never let uv download an interpreter.
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)

.PHONY: demo-break demo-break-hard demo-heal run test setup devcert python-env infra-setup infra-up infra-down infra-status bench schemas lint check help

help:
	@echo "make run     start Kafka, the store and all four services in the foreground (Ctrl-C stops all)"
	@echo "make test    run every test against a real Kafka broker and store"
	@echo "make check   ruff, the formatter's check and mypy --strict (what CI runs beside the tests)"
	@echo "make bench   run the benchmarks under bench/ (by hand; prints ratios)"

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Aftercare needs Python 3.11 as python3 (or set PYTHON=/path/to/python3.11)")'
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

python-env: $(UV)
	$(UV) sync --all-packages --locked --quiet
	@# Bytecode once, here: the tests start dozens of service processes, and where the environment
	@# sets PYTHONDONTWRITEBYTECODE (this machine's does) each start compiled every module again
	@# (importing two services: 5.6 s CPU without cached bytecode, 2.8 s with it).
	@$(UV) run --no-sync python -m compileall -q -j 0 .venv/lib/python3.11/site-packages libs services infra tests > /dev/null

infra-setup:
	$(PYTHON) infra/localinfra.py setup

setup: python-env infra-setup

# A development CA and a certificate for localhost (kept in .local/devcert/, remade near expiry).
devcert:
	$(PYTHON) infra/devcert.py

# The demo tenant (infra/seed/demo-tenants.json) and admin token for a first look; override both
# in the environment for anything real.
run: export AFTERCARE_INTAKE_SEED_FILE ?= infra/seed/demo-tenants.json
run: export AFTERCARE_INTAKE_ADMIN_TOKEN ?= demo-admin-token
# Remediation's demo: runbooks from infra/seed/runbooks and a demo key
# for the tenants' system credentials (make your own for anything real: see the remediation notes).
run: export AFTERCARE_REMEDIATION_RUNBOOK_SEED_DIR ?= infra/seed/runbooks
# ... acme's escalation policy (make demo-break-hard pages its first line) and the demo system's
# admin credential (the Procfile starts the demo customer system with the same token).
run: export AFTERCARE_REMEDIATION_ESCALATION_POLICY_SEED_DIR ?= infra/seed/escalation-policies
run: export AFTERCARE_REMEDIATION_CREDENTIAL_SEED_FILE ?= infra/seed/system-credentials.json
# The demo shows every step of one incident within a minute ("we noticed", "we are fixing",
# "resolved"); a real deployment keeps the default spacing of progress updates (15 minutes).
run: export AFTERCARE_NOTIFIER_THROTTLE_MINUTES ?= 0
# The dashboard's "break the demo system" button (admins only; demo mode only).
run: export AFTERCARE_NOTIFIER_DEMO_SYSTEM_URL ?= http://127.0.0.1:8100
run: export AFTERCARE_REMEDIATION_CREDENTIAL_KEY ?= rD9YK3UKD2-CSHogFW4uFLaALKsD1NIY_QGEsbHVoUs=
# make run HTTPS=1: intake on https://localhost:8001 with a dev CA's certificate (README, "HTTPS on a laptop").
ifeq ($(HTTPS),1)
run: export AFTERCARE_INTAKE_TLS_CERTFILE ?= .local/devcert/intake.pem
run: export AFTERCARE_INTAKE_TLS_KEYFILE ?= .local/devcert/intake.key
run: export AFTERCARE_INTAKE_PUBLIC_BASE_URL ?= https://localhost:8001
run: devcert
endif
run: setup
	@# Mailpit's web inbox needs an npm build (once, a few minutes); without npm the inbox is API-only.
	@$(PYTHON) infra/localinfra.py setup-inbox
	@echo ""
	@echo "Aftercare is starting. Where to look:"
	@echo "  intake       http://127.0.0.1:8001  (API docs /docs, readiness /readyz; SMTP on 127.0.0.1:2525)"
	@echo "  triage       http://127.0.0.1:8002/readyz"
	@echo "  remediation  http://127.0.0.1:8003/readyz"
	@echo "  notifier     http://127.0.0.1:8004/dashboard  (operators' dashboard; readiness /readyz)"
	@echo "  inbox        http://127.0.0.1:8025/  (Mailpit: the demo customer's mail; API /api/v1/messages; SMTP 127.0.0.1:1025)"
	@echo "  demo system  http://127.0.0.1:8100/health  (break it: make demo-break, make demo-break-hard)"
	@echo "  Kafka        127.0.0.1:9092    store (MongoDB wire protocol) mongodb://127.0.0.1:27017/"
	@echo "  demo tenant 'acme': API key ak_demo_acme_0123456789abcdef, admin token $$AFTERCARE_INTAKE_ADMIN_TOKEN"
	@echo "  logs and data under .local/run/   Ctrl-C stops everything"
	@echo ""
	$(UV) run --no-sync honcho start -f Procfile

test: setup
	@bash infra/browser.sh
	@# pytest exits 5 when it collected no test: that must never pass as green.
	@$(UV) run --no-sync pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests; failing on purpose"; exit 1; fi; \
	exit $$status

bench: setup
	$(UV) run --no-sync python bench/events_throughput.py
	$(UV) run --no-sync python bench/intake_accept_rate.py
	$(UV) run --no-sync python bench/remediation_runs.py

# The demo customer system that `make run` starts (port 8100) and regular diagnostics watch.
DEMO_SYSTEM ?= http://127.0.0.1:8100

# A fault its runbook repairs (a restart): diagnostics notice, remediation fixes, the customer hears.
demo-break:
	@curl -fsS -X POST '$(DEMO_SYSTEM)/admin/break?mode=soft' && echo "" && echo "billing-api is down; watch the dashboard at http://127.0.0.1:8004/dashboard and the inbox at http://127.0.0.1:8025/"

# A fault nothing in the runbook repairs: the fix is tried, verified as failed, rolled back, escalated.
demo-break-hard:
	@curl -fsS -X POST '$(DEMO_SYSTEM)/admin/break?mode=hard' && echo "" && echo "billing-api is down for good; the on-call contact gets paged (inbox at http://127.0.0.1:8025/)"

# Healthy again by hand (after the hard break, a person 'repairs' it).
demo-heal:
	@curl -fsS -X POST '$(DEMO_SYSTEM)/admin/heal' && echo ""

infra-up: infra-setup
	$(PYTHON) infra/localinfra.py up

infra-down:
	$(PYTHON) infra/localinfra.py down

infra-status:
	$(PYTHON) infra/localinfra.py status

schemas: python-env
	$(UV) run --no-sync python -m aftercare.events.schema_export

PY_PATHS := libs services tests bench infra
MYPY_PACKAGES := -p aftercare.events -p aftercare.intake -p aftercare.triage -p aftercare.remediation -p aftercare.notifier -p aftercare.customer_system

lint: python-env
	$(UV) run --no-sync ruff check $(PY_PATHS)

# The quality gates CI runs beside the tests: lint, formatting, strict types on every package.
check: python-env
	$(UV) run --no-sync ruff check $(PY_PATHS)
	$(UV) run --no-sync ruff format --check $(PY_PATHS)
	$(UV) run --no-sync mypy $(MYPY_PACKAGES)
