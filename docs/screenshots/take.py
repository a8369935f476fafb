"""Take the README's dashboard screenshots from a running `make run` (after `make demo-break`
has resolved):

    .venv/bin/python docs/screenshots/take.py

The dashboard needs a signed-in operator, so it is driven by Playwright on Debian's headless
chromium (no browser download; chromium's own `--headless --screenshot` cannot sign in).
Registers the README's operator Olga if she is not there yet.

The inbox screenshots (inbox-thread.png, inbox-resolved.png) were taken the same way from
Mailpit's web inbox (http://127.0.0.1:8025/, built by make run with npm; see
infra/localinfra.py setup-inbox), searching `subject:"INC-1001"` and opening the "Resolved" email.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
INTAKE, NOTIFIER = "http://127.0.0.1:8001", "http://127.0.0.1:8004"
ADMIN = {"Authorization": "Bearer demo-admin-token"}
EMAIL, PASSWORD = "olga@support.example", "a long demo password"
SIZE = (1400, 900)


def operator_token() -> str:
    httpx.put(
        f"{INTAKE}/admin/operators/olga",
        headers=ADMIN,
        json={"name": "Olga Admin", "email": EMAIL, "role": "admin", "password": PASSWORD},
    ).raise_for_status()
    issued = httpx.post(f"{INTAKE}/admin/operators/olga/tokens", headers=ADMIN, json={"name": "screenshots"})
    issued.raise_for_status()
    return str(issued.json()["token"])


async def dashboard(token: str, incident_id: str) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": SIZE[0], "height": SIZE[1]})
        try:
            for _ in range(60):  # the operator reaches the notifier as an event: retry until it has her
                await page.goto(f"{NOTIFIER}/dashboard/login")
                await page.fill("input[name=email]", EMAIL)
                await page.fill("input[name=password]", PASSWORD)
                await page.fill("input[name=api_token]", token)
                await page.click("button[type=submit]")
                if page.url.endswith("/dashboard"):
                    break
                await page.wait_for_timeout(500)
            else:
                raise SystemExit("could not sign in to the dashboard")
            await page.screenshot(path=str(HERE / "dashboard.png"))
            await page.goto(f"{NOTIFIER}/dashboard/incidents/{incident_id}")
            await page.screenshot(path=str(HERE / "dashboard-timeline.png"), full_page=True)
        finally:
            await browser.close()


def main() -> int:
    listed = httpx.get(
        f"{INTAKE}/v1/incidents",
        headers={"Authorization": "Bearer ak_demo_acme_0123456789abcdef"},
        params={"channel": "diagnostic", "status": "resolved"},
    ).json()["items"]
    if not listed:
        raise SystemExit("no resolved incident yet: run make demo-break and wait for it")
    asyncio.run(dashboard(operator_token(), listed[0]["incident_id"]))
    print(f"screenshots in {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
