"""The dashboard in a real headless browser (Debian's chromium through its chromedriver)."""

from __future__ import annotations

import base64
import shutil
import threading
from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server

from tests.conftest import AUTH, drain, sim_admin, sim_submissions
from workers import accounts
from workers.settings import settings_from_env

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver: run `sudo make system-deps` once",
    ),
]


@pytest.fixture
def live(settings_env, runtime) -> Iterator[tuple[str, object]]:
    from gateway import create_app

    app = create_app(settings_from_env({**settings_env, "SMSGW_OPERATOR_PASSWORD": "op-pass"}))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}", app
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    token = base64.b64encode(b"operator:op-pass").decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    yield driver
    driver.quit()


def text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def test_dashboard_shows_live_numbers_and_resume_works(live, browser, runtime, simulator):
    from selenium.webdriver.common.by import By

    base, app = live
    api = app.test_client()
    api.post("/v1/messages", json={"to": ["13800138000", "13900139000"], "text": "x"}, headers=AUTH)
    drain(runtime)
    browser.get(f"{base}/dashboard/")
    assert text(browser, "submissions") == "1" and text(browser, "recipients") == "2"
    assert "smsgw-high" in browser.find_element(By.ID, "queues").text

    sim_admin(simulator, "config", frozen=True)
    api.post("/v1/messages", json={"to": ["13700137000"], "text": "y"}, headers=AUTH)
    drain(runtime)
    browser.get(f"{base}/dashboard/")
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-account="default"]').text
    assert "held" in row and "account frozen" in row
    sim_admin(simulator, "config", frozen=False)
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "resume-default").click()

    def resumed(driver) -> bool:
        try:
            return "active" in driver.find_element(By.CSS_SELECTOR, 'tr[data-account="default"]').text
        except (StaleElementReferenceException, WebDriverException):
            return False  # the page is being replaced by the redirect

    WebDriverWait(browser, 10).until(resumed)
    assert accounts.state(runtime.conn, "default").state == "active"
    drain(runtime)
    assert len(sim_submissions(simulator)) == 2

    browser.get(f"{base}/dashboard/rq/")  # fills its queue table by XHR, through the same auth
    WebDriverWait(browser, 10).until(lambda driver: "smsgw-normal" in driver.page_source)


def test_the_hour_is_drawn_as_charts_with_traffic_flowing(live, browser, runtime, simulator, tmp_path):
    """Issue 13 §5: the overview's last hour as server-drawn SVG; a screenshot is taken with
    traffic flowing and the charts are checked drawn (sized, with lines that move)."""
    from selenium.webdriver.common.by import By

    from tests.test_reports import pull_all
    from workers import maintenance

    base, app = live
    api = app.test_client()
    for i in range(5):
        api.post("/v1/messages", json={"to": [f"1380013800{i}"], "text": "x"}, headers=AUTH)
    drain(runtime)
    pull_all(runtime)
    maintenance.run_once(runtime)  # samples the queue depths into this minute
    browser.set_window_size(1400, 1600)
    browser.get(f"{base}/dashboard/")
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    for chart in ("chart-accepted", "chart-calls", "chart-depth", "chart-outcomes"):
        svg = browser.find_element(By.ID, chart)
        assert svg.size["width"] >= 300 and svg.size["height"] >= 100, chart
        assert svg.find_elements(By.CSS_SELECTOR, "polyline.series"), chart
    accepted = browser.find_element(By.CSS_SELECTOR, '#chart-accepted polyline[data-series="accepted"]')
    heights = {point.split(",")[1] for point in accepted.get_attribute("points").split()}
    assert len(heights) > 1  # the line rises at this minute: 5 accepted
    delivered = browser.find_element(By.CSS_SELECTOR, '#chart-outcomes polyline[data-series="delivered"]')
    assert len({p.split(",")[1] for p in delivered.get_attribute("points").split()}) > 1
    # Issue 23 §5: a time axis ending at "now", marked; good is green and bad is not; whether
    # traffic flows and since when, and how many workers are alive, in one look.
    for chart in ("chart-accepted", "chart-calls", "chart-depth", "chart-outcomes"):
        ticks = [t.text for t in browser.find_elements(By.CSS_SELECTOR, f"#{chart} text.tick")]
        assert len(ticks) == 3 and ticks[-1].endswith(" now") and all(":" in t for t in ticks), ticks
        assert browser.find_elements(By.CSS_SELECTOR, f"#{chart} line.now"), chart
    colour = {
        s: browser.find_element(By.CSS_SELECTOR, f'#chart-outcomes polyline[data-series="{s}"]').get_attribute("stroke")
        for s in ("delivered", "undelivered", "failed")
    }
    assert colour["delivered"] == "#2f855a" and colour["undelivered"] != colour["delivered"] != colour["failed"]
    assert text(browser, "last-accepted") == "this minute" and text(browser, "last-call") == "this minute"
    assert text(browser, "workers-alive").isdigit()
