"""The ID inspector page (``GET /``) in a real headless browser: Debian's ``chromium``, driven by Selenium through
Debian's ``chromedriver``, against a real ``idgen serve`` process. No browser is downloaded."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from serverproc import ServerProcess as Server

from idgen import PRESETS, decode

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,1000",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium and chromium-driver packages (/usr/bin/chromium)"
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server("--state-dir", str(tmp_path_factory.mktemp("state"))) as running:
        yield running


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def text_of(browser: webdriver.Chrome, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).text


def wait_for_text(browser: webdriver.Chrome, element_id: str, predicate: Any, timeout: float = 20) -> str:
    """Poll the element's text until ``predicate(text)`` holds; that text."""

    def probe(driver: webdriver.Chrome) -> str | None:
        try:
            text = driver.find_element(By.ID, element_id).text
        except StaleElementReferenceException:
            return None
        return text if predicate(text) else None

    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(probe, f"#{element_id} never matched")


def decode_in_page(browser: webdriver.Chrome, text: str, form: str = "", layout: str = "") -> None:
    Select(browser.find_element(By.ID, "format-input")).select_by_value(form)
    Select(browser.find_element(By.ID, "layout-input")).select_by_value(layout)
    field = browser.find_element(By.ID, "id-input")
    field.clear()
    field.send_keys(text)
    browser.find_element(By.ID, "decode-button").click()


def result_fields(browser: webdriver.Chrome) -> dict[str, str]:
    cells = browser.find_elements(By.CSS_SELECTOR, "#decode-result td[data-field]")
    return {cell.get_attribute("data-field"): cell.text for cell in cells}


def test_the_page_shows_this_workers_state(browser: webdriver.Chrome, server: Server) -> None:
    reply = server.get("/")
    assert reply.status == 200 and reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in reply.headers["Content-Security-Policy"]
    info = server.get("/info").json()
    browser.get(base(server) + "/")
    assert browser.title == "idgen inspector"
    wait_for_text(browser, "worker-id", lambda t: t == str(info["worker_id"]))
    assert text_of(browser, "ready") == "ready"
    assert text_of(browser, "process") == f"pid {server.pid} on {info['lease']['host']} (127.0.0.1:{server.port})"
    assert text_of(browser, "lease") == f"local, held, lease {info['lease']['lease_id']}"
    fence = text_of(browser, "fence")
    assert fence.startswith(info["fence"][:16]) and fence.endswith(" s ahead)"), fence
    headroom = float(fence.rsplit("(", 1)[1].split()[0])
    assert 0 < headroom <= 7.5  # the local lease keeps the fence 5 to 7.5 s ahead
    assert text_of(browser, "clock-skew").startswith("n/a (local lease")
    assert text_of(browser, "layout").startswith("idgen: 41 time | 10 worker_id | 12 sequence")
    # The rate comes from /metrics, as the difference between two refreshes: mint between them and it shows.
    wait_for_text(browser, "rate", lambda t: t.endswith("IDs/s (whole server)"))
    assert server.get("/id?count=4096").status == 200
    rate = wait_for_text(browser, "rate", lambda t: float(t.split()[0]) > 0)
    assert rate.endswith("IDs/s (whole server)")


def test_the_form_decodes_an_id_in_any_form_and_names_the_node(browser: webdriver.Chrome, server: Server) -> None:
    browser.get(base(server) + "/")
    for form in ("base32", "hex", "base58"):
        pasted = server.get(f"/id?format={form}").json()["id"]
        expected = decode(pasted, form=form)
        decode_in_page(browser, f"  {pasted} ")  # pasted with spaces around it
        wait_for_text(browser, "decode-result", lambda t, e=expected: e["id"] in t)
        fields = result_fields(browser)
        assert fields["id"] == expected["id"]
        assert fields["time"] == expected["time"]
        assert fields["timestamp_ms"] == str(expected["timestamp_ms"])
        assert fields["worker_id"] == str(expected["worker_id"])  # the layout's node field
        assert fields["sequence"] == str(expected["sequence"])
        assert fields["node.pid"] == str(server.pid)
        assert fields["node"] == f"pid {server.pid} on {server.get('/info').json()['lease']['host']}"
        assert fields["node.address"] == f"127.0.0.1:{server.port}"
        assert fields["node.ended"] == "still held"
        assert not browser.find_element(By.ID, "decode-error").is_displayed()


def test_the_form_says_why_no_node_minted_an_id(browser: webdriver.Chrome, server: Server) -> None:
    layout = PRESETS["idgen"]
    worker = server.get("/info").json()["worker_id"]
    future = str(layout.compose(layout.tick_of(3_881_000_000_000), worker, 0))  # this worker ID, in 2093
    reason = server.get(f"/decode/{future}").json()["node_reason"]
    browser.get(base(server) + "/")
    decode_in_page(browser, future)
    wait_for_text(browser, "decode-result", lambda t: future in t)
    fields = result_fields(browser)
    assert fields["node"] == f"none: {reason['message']}"
    assert "node_reason" not in fields  # shown once, in words, not as an object


def test_the_form_shows_the_servers_error_for_a_bad_id(browser: webdriver.Chrome, server: Server) -> None:
    browser.get(base(server) + "/")
    message = server.get("/decode/not-an-id").json()["error"]["message"]
    decode_in_page(browser, "not-an-id")
    error = wait_for_text(browser, "decode-error", bool)
    assert error == f"invalid_id: {message}"
    assert not browser.find_element(By.ID, "decode-result").is_displayed()
    decode_in_page(browser, "")
    wait_for_text(browser, "decode-error", lambda t: t == "paste an ID first")


def test_a_worker_that_cannot_mint_is_shown_as_such(browser: webdriver.Chrome, tmp_path: Path) -> None:
    fence_ms = int(time.time() * 1000) + 3_600_000  # the only worker ID's fence is an hour ahead
    (tmp_path / "worker-00000.json").write_text(json.dumps({"worker_id": 0, "fence_ms": fence_ms, "holders": []}))
    with Server("--state-dir", str(tmp_path), "--worker-ids", "0-0") as unready:
        browser.get(base(unready) + "/")
        state = wait_for_text(browser, "ready", lambda t: t.startswith("not ready"))
        assert "behind the last timestamp used or reserved, more than the 15000 ms" in state
        assert browser.find_element(By.ID, "ready").get_attribute("class") == "bad"
        assert text_of(browser, "worker-id") == "0"


def test_the_page_loads_nothing_from_elsewhere_and_logs_no_errors(browser: webdriver.Chrome, server: Server) -> None:
    browser.get_log("browser")  # drop what earlier tests logged
    browser.get(base(server) + "/")
    wait_for_text(browser, "worker-id", lambda t: t.isdigit())
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(name.startswith(base(server) + "/") for name in resources), resources
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe  # a blocked inline script or style (CSP hash mismatch) would be logged here


def test_the_form_refuses_an_ambiguous_id_and_decodes_it_in_the_chosen_format(
    browser: webdriver.Chrome, server: Server
) -> None:
    """0737185780000 is base32 for 255826949459410944 and decimal for 737185780000: refused until a format is
    chosen (the page sent none, and showed the decimal reading)."""
    browser.get(base(server) + "/")
    message = server.get("/decode/0737185780000").json()["error"]["message"]
    decode_in_page(browser, "0737185780000")
    assert wait_for_text(browser, "decode-error", bool) == f"ambiguous_id: {message}"
    assert "decimal 737185780000 and base32 255826949459410944" in message
    decode_in_page(browser, "0737185780000", form="base32")
    wait_for_text(browser, "decode-result", lambda t: "255826949459410944" in t)
    assert result_fields(browser)["id"] == "255826949459410944"
    decode_in_page(browser, "175928847299117063", layout="discord")  # Discord's documented example
    wait_for_text(browser, "decode-result", lambda t: "2016-04-30T11:18:25.796Z" in t)
    fields = result_fields(browser)
    assert (fields["layout"], fields["worker_id"], fields["process_id"]) == ("discord", "1", "0")
    assert fields["node"].startswith("none: decoded in layout discord")
