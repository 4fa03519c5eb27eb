"""/docs in a real headless browser (Debian's chromium through Selenium and
chromium-driver, as tests/acceptance/test_ops_page.py): ``/`` leads there, Swagger
UI renders every operation of /openapi.json, every request goes to the server's
own origin, and the Content-Security-Policy refuses nothing (a refusal shows in
the console). Skipped without the browser, unless SLA_REQUIRE_BROWSER=1."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator

import pytest

from tests.support.common import wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        if os.environ.get("SLA_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SLA_REQUIRE_BROWSER=1 but missing: {', '.join(missing)}")
        pytest.skip(f"no browser: {', '.join(missing)}")
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
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def server(engine) -> Iterator[str]:
    from werkzeug.serving import make_server

    from web import create_app

    httpd = make_server("127.0.0.1", 0, create_app(), threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def test_the_docs_render_every_operation_from_the_servers_own_files(browser, server):
    import urllib.request

    with urllib.request.urlopen(server + "/openapi.json") as response:
        document = json.load(response)
    operations = sum(len(item) for item in document["paths"].values())

    browser.get(server + "/")
    assert browser.current_url == server + "/docs"
    count = "return document.querySelectorAll('.opblock').length"
    wait_until(lambda: browser.execute_script(count) == operations, 20, "every operation")
    title = browser.execute_script("return document.querySelector('.info .title').textContent")
    assert title.startswith(document["info"]["title"])

    requested = [
        json.loads(entry["message"])["message"]["params"]["request"]["url"]
        for entry in browser.get_log("performance")
        if json.loads(entry["message"])["message"]["method"] == "Network.requestWillBeSent"
    ]
    assert server + "/openapi.json" in requested
    elsewhere = [url for url in requested if not url.startswith((server + "/", "data:"))]
    assert not elsewhere, elsewhere
    console = browser.get_log("browser")
    refused = [e["message"] for e in console if "Content Security Policy" in e["message"]]
    assert not refused, refused
    assert not [e for e in console if e["level"] == "SEVERE"], console
