"""The ops page (/ui/) in a real headless browser: Debian's chromium, driven by
Selenium through chromium-driver, against a real server (werkzeug, in a thread)
on the test database, a real Dramatiq worker process and a real local webhook
receiver that fails (tests/support/receiver.py).

It signs in with the tenant's key, watches a timer count down and turn
ESCALATED, retries a dead-lettered timer and a failed delivery with the page's
buttons, reads the admin's view of every tenant, and checks that no page
needed the network: every request the pages made (Chrome's DevTools log) went
to the test server's origin, the CSP refused nothing, and the key was never in
a URL, a cookie or a log line.

Without /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium
chromium-driver; .ci/run installs them) the test is skipped, unless
SLA_REQUIRE_BROWSER=1 (set by .ci/run) makes that a failure.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.processes import Service
from tests.integration.test_delivery import subscribe
from tests.support.actions import POISON_SQL
from tests.support.common import wait_until
from tests.support.receiver import Receiver, Reply

BIN = Path(sys.executable).parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TOKEN = "ops-page-admin-token"

pytestmark = pytest.mark.timeout(90)


def _browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    return ", ".join(missing) or None


@pytest.fixture(scope="module")
def browser_present() -> None:
    missing = _browser_missing()
    if missing and os.environ.get("SLA_REQUIRE_BROWSER") != "1":
        pytest.skip(f"no browser: {missing} (apt-get install chromium chromium-driver)")
    assert not missing, f"SLA_REQUIRE_BROWSER=1 but missing: {missing}"


@pytest.fixture
def server(engine, settings) -> Iterator[str]:
    """The API and the ops page on a free port, served by werkzeug in threads."""
    from werkzeug.serving import make_server

    from web import create_app

    app = create_app(
        dataclasses.replace(settings, admin_token=TOKEN, webhook_allow_private_networks=True)
    )
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def worker(engine, tmp_path) -> Iterator[Service]:
    """One attempt per timer and per delivery: a failure dead-letters at once."""
    env = {
        **os.environ,
        "SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "1",
        "SLA_MAX_ATTEMPTS": "1",
        "SLA_WEBHOOK_RETRY_SCHEDULE": "0",
    }
    proc = Service(
        [str(BIN / "dramatiq"), "tasks", "--processes", "1", "--threads", "4"],
        env,
        tmp_path / "worker.log",
        ready="is ready for action",
    )
    yield proc
    proc.stop()


@pytest.fixture
def poison(engine):
    """poison(timer_id) makes writing that timer's step rows fail, cure(timer_id) ends it."""
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")  # triggers are the owner's
        conn.exec_driver_sql(POISON_SQL)

    def run(sql: str, timer_id: str) -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL ROLE NONE")
            conn.exec_driver_sql(sql, (timer_id,))

    yield (
        lambda timer_id: run("INSERT INTO test_poison VALUES (%s, 'P0001', NULL)", timer_id),
        lambda timer_id: run("DELETE FROM test_poison WHERE timer_id = %s", timer_id),
    )
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")
        conn.exec_driver_sql("DROP TRIGGER IF EXISTS test_poison ON sla_escalation_events")


@pytest.fixture
def browser(browser_present):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--window-size=1280,1600",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


class Page:
    """The browser, with the waits and reads this test needs."""

    def __init__(self, driver, origin: str) -> None:
        self.driver = driver
        self.origin = origin
        self.requests: list[str] = []
        self.console: list[dict] = []

    def open(self, path: str) -> None:
        self.driver.get(self.origin + path)

    def sign_in(self, secret: str) -> None:
        from selenium.webdriver.common.by import By

        wait_until(lambda: self.visible("#sign-in"), 10, "the sign-in form")
        field = self.driver.find_element(By.ID, "secret")
        field.send_keys(secret)
        self.driver.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()
        wait_until(lambda: self.visible("#app"), 10, "the signed-in view")

    def visible(self, selector: str) -> bool:
        return self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return !!e && !e.closest('[hidden]')",
            selector,
        )

    def text(self, selector: str) -> str | None:
        return self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e && e.textContent.trim()",
            selector,
        )

    def click(self, selector: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, selector).click()

    def drain_logs(self) -> None:
        """Keep every request the page made and every console line (the driver
        hands each log entry out once)."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])
        self.console.extend(self.driver.get_log("browser"))


def _timer(server: str, key: str, lead: str, window_seconds: int) -> dict:
    import urllib.request

    request = urllib.request.Request(
        server + "/v1/timers",
        data=json.dumps({"lead_id": lead, "window_seconds": window_seconds}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        return json.loads(response.read())


def test_the_ops_page_in_a_real_browser(
    engine, tenant, other_tenant, server, worker, poison, browser, caplog
):
    caplog.set_level(logging.INFO)
    tenant_id, key = tenant
    poison, cure = poison
    page = Page(browser, server)
    with Receiver(default=Reply(status=500)) as receiver:
        hook = subscribe(engine, tenant_id, receiver.url + "/sla")

        # A timer whose first firing fails: one attempt (SLA_MAX_ATTEMPTS=1) dead-letters it.
        dead = _timer(server, key, "lead-dead", 1)
        poison(dead["id"])

        # Signs in with the API key; the key stays in this tab's sessionStorage.
        page.open("/ui/")
        page.sign_in(key)
        assert browser.execute_script("return document.cookie") == ""
        stored = browser.execute_script("return sessionStorage.getItem('sla-ops:tenant')")
        assert stored == key
        assert key not in browser.current_url

        # A timer due in 6 s counts down, then fires through its wake-up and is ESCALATED.
        timer = _timer(server, key, "lead-esc", 6)
        row = f"#timers tr[data-timer-id='{timer['id']}']"
        first = wait_until(lambda: page.text(f"{row} .countdown"), 10, "the countdown")
        assert re.fullmatch(r"in \d+s", first), first
        seconds = int(first[3:-1])
        wait_until(
            lambda: (t := page.text(f"{row} .countdown")) and t != first and t.startswith("in "),
            5,
            "the countdown to move",
        )
        later = int(page.text(f"{row} .countdown")[3:-1])
        assert later < seconds
        wait_until(lambda: page.text(f"{row} .badge") == "ESCALATED", 20, "ESCALATED in the table")
        assert int(page.text("#count-active")) >= 1

        # Its timeline, from the row's button.
        page.click(f"{row} button.timeline")
        wait_until(lambda: page.visible("#timeline-card"), 5, "the timeline")
        kinds = wait_until(
            lambda: browser.execute_script(
                "return [...document.querySelectorAll('#timeline li strong')]"
                ".map(e => e.textContent)"
            ),
            5,
            "the timeline's entries",
        )
        assert kinds[0] == "started" and "due" in kinds and "step" in kinds, kinds

        # The dead-lettered timer is listed; Retry re-arms it and it fires.
        dead_row = f"#dead tr[data-timer-id='{dead['id']}']"
        wait_until(lambda: page.visible(dead_row), 15, "the dead letter in its table")
        assert "poisoned row" in page.text(f"{dead_row} .error-text")
        cure(dead["id"])
        page.click(f"{dead_row} button.retry")
        wait_until(lambda: not page.visible(dead_row), 10, "the dead letter to leave its table")
        dead_in_timers = f"#timers tr[data-timer-id='{dead['id']}'] .badge"
        wait_until(
            lambda: page.text(dead_in_timers) == "ESCALATED", 15, "the retried timer to fire"
        )

        # Deliveries to the failing receiver end FAILED (one attempt each); the receiver
        # recovers, and Retry sends one again.
        failed = "#deliveries tr[data-status='FAILED']"
        wait_until(lambda: page.visible(failed), 15, "a FAILED delivery")
        delivery_id = browser.execute_script(
            "return document.querySelector(arguments[0]).dataset.deliveryId", failed
        )
        assert page.text(f"{failed} td:nth-child(5)").startswith("500")
        sent_before = len(receiver.received())
        receiver.default = Reply(status=200)
        page.click(f"{failed} button.retry")
        delivered = f"#deliveries tr[data-delivery-id='{delivery_id}'][data-status='DELIVERED']"
        wait_until(lambda: page.visible(delivered), 15, "the retried delivery DELIVERED")
        assert len(receiver.received()) > sent_before
        assert receiver.received()[-1].status == 200
        assert str(hook["id"]) == browser.execute_script(
            "return document.getElementById('webhook').value"
        )

        # The compliance chart, drawn at sign-in and each minute: a reload (still signed in,
        # from sessionStorage) draws it now, with a bar for today (two timers, both breached).
        browser.refresh()
        wait_until(lambda: page.visible("#app"), 10, "the signed-in view after a reload")
        bars = wait_until(
            lambda: browser.execute_script(
                "return [...document.querySelectorAll('#chart rect.bar')]"
                ".map(b => b.dataset.percent)"
            ),
            10,
            "the compliance chart",
        )
        assert bars[-1] == "0", bars
        page.drain_logs()

        # The admin sees every tenant's counts.
        page.open("/ui/admin")
        page.sign_in(TOKEN)
        acme = f"#tenants tr[data-tenant-id='{tenant_id}']"
        wait_until(lambda: page.visible(acme), 10, "the tenants table")
        assert page.visible(f"#tenants tr[data-tenant-id='{other_tenant[0]}']")
        assert page.text(f"{acme} td:first-child") == "acme"
        assert page.text(f"{acme} td.started") == "2"
        assert page.text(f"{acme} td.breached") == "2"
        page.drain_logs()

    # No page needed the network: every request went to the test server, none named the key.
    assert page.requests, "the DevTools log recorded no request"
    foreign = [u for u in page.requests if not u.startswith(server + "/")]
    assert foreign == []
    assert not [u for u in page.requests if key in u or TOKEN in u]
    assert any(u.endswith("/ui/static/tenant.js") for u in page.requests)
    refused = [e for e in page.console if "Content Security Policy" in e["message"]]
    assert refused == []
    errors = [e for e in page.console if e["level"] == "SEVERE"]
    assert errors == []
    # Nor any log line of the server (werkzeug's access lines included).
    lines = [r.getMessage() for r in caplog.records]
    assert lines and not [line for line in lines if key in line or TOKEN in line]
