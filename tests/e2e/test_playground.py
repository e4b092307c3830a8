"""The web playground in a real browser: Debian's headless Chromium against a real server.

Selenium drives the system browser through the system chromedriver, both named by path, so
selenium-manager never runs and nothing is downloaded. The latest screenshot is kept in
test-artifacts/playground.png.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from tests.e2e.conftest import Served

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
INSTALL_HINT = "make browser (apt-get install chromium chromium-driver)"

#: No sandbox (tests run as root in containers), no GPU, and nothing that talks to the network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1100",
)

#: Generation on the tiny CPU model takes seconds, but the first job also loads the model.
WAIT_S = 180


def _browser_unavailable(why: str) -> NoReturn:
    """Skip, or fail under CI=true, where the browser tests must run (as with PostgreSQL)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(f"{why}: {INSTALL_HINT}")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """A fresh headless Chromium with a profile of its own, logging the page's console."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        _browser_unavailable(f"browser tests need {' and '.join(missing)}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError:
        _browser_unavailable("selenium is not installed (pip install -e '.[dev]')")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(browser: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S, poll_frequency=0.2).until(check, f"timed out: {what}")


def fill(browser: WebDriver, testid: str, text: str) -> None:
    field = by_testid(browser, testid)
    field.clear()
    field.send_keys(text)


def by_testid(browser: WebDriver, testid: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def loaded_images(browser: WebDriver, testid: str) -> list[str]:
    """The sources of the images with this test id that have loaded and have pixels."""
    script = """
        return [...document.querySelectorAll(`[data-testid="${arguments[0]}"]`)]
            .filter((img) => img.complete && img.naturalWidth > 0)
            .map((img) => img.src);
    """
    sources: list[str] = browser.execute_script(script, testid)
    return sources


def console_errors(browser: WebDriver) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def open_with_key(browser: WebDriver, served: Served) -> None:
    browser.get(f"{served.server.url}/")
    fill(browser, "key", served.key)


def test_a_prompt_becomes_an_image_in_the_page_and_the_gallery(
    browser: WebDriver, served: Served
) -> None:
    open_with_key(browser, served)
    fill(browser, "prompt", "a red bicycle, playground test")
    for testid, value in (("width", "64"), ("height", "64"), ("num_inference_steps", "2")):
        fill(browser, testid, value)
    by_testid(browser, "generate").click()

    results = wait_until(browser, lambda b: loaded_images(b, "result-image"), "the result image")
    assert results[0].startswith(f"{served.server.url}/generations/")
    assert by_testid(browser, "job-status").get_attribute("data-status") == "success"
    wait_until(browser, lambda b: set(results) <= set(loaded_images(b, "gallery-image")), "gallery")
    wait_until(browser, lambda b: by_testid(b, "queue-num").text.isdigit(), "the queue's load")

    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "playground.png"))
    assert console_errors(browser) == []


def test_a_validation_error_is_shown_beside_its_field(browser: WebDriver, served: Served) -> None:
    open_with_key(browser, served)
    fill(browser, "prompt", "too wide")
    fill(browser, "width", "70")
    by_testid(browser, "generate").click()

    width_error = wait_until(browser, lambda b: by_testid(b, "error-width").text, "width error")
    assert "multiple of 8" in width_error
    assert "multiple of 8" in by_testid(browser, "error").text
    assert by_testid(browser, "width").get_attribute("aria-invalid") == "true"
    assert by_testid(browser, "job-status").get_attribute("data-status") == "idle"
    # The key stays in this browser across a reload, and only there.
    browser.refresh()
    assert by_testid(browser, "key").get_attribute("value") == served.key
    assert console_errors(browser) == []
