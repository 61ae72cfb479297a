"""End to end: start the app with `streamlit run`, drive it in headless Chromium through every page,
take a full-page screenshot of each, and fail on any Streamlit exception box or deprecation warning.

Chromium is driven through Selenium and Debian's chromedriver (both installed by .ci/run), so the test
waits for the page's real content instead of guessing how long the websocket takes. Skips cleanly when
either is absent. The screenshots are kept in ``/tmp/medtl_app_screens/`` for a person to look at.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TITLE = "medtl — transfer learning for medical images"
SHOTS = Path("/tmp/medtl_app_screens")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason=f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"streamlit did not answer on {url} within {timeout} s")


def _driver(tmp_path: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome-profile'}",
        "--window-size=1400,1000",
    ):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


class Page:
    """Small helpers over the Selenium driver for Streamlit's widgets."""

    def __init__(self, driver, shots: Path) -> None:
        from selenium.webdriver.common.by import By

        self.d, self.By, self.shots = driver, By, shots

    def body(self) -> str:
        return self.d.find_element(self.By.TAG_NAME, "body").text

    def idle(self, timeout: float = 120) -> None:
        """Wait until the script run is over (Streamlit's 'running' widget has gone)."""
        from selenium.webdriver.support.ui import WebDriverWait

        time.sleep(0.6)
        WebDriverWait(self.d, timeout, poll_frequency=0.3).until(
            lambda d: not d.find_elements(self.By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        )
        time.sleep(0.4)

    def until_text(self, text: str, timeout: float = 120) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.d, timeout, poll_frequency=0.3).until(lambda d: text in self.body())

    def click_text(self, text: str, css: str = "button, label") -> None:
        for el in self.d.find_elements(self.By.CSS_SELECTOR, css):
            if el.text.strip() == text and el.is_displayed():
                el.click()
                return
        raise AssertionError(f"no clickable {text!r}")

    def section(self, name: str) -> None:
        side = self.d.find_element(self.By.CSS_SELECTOR, '[data-testid="stSidebar"]')
        for el in side.find_elements(self.By.CSS_SELECTOR, "label"):
            if el.text.strip() == name:
                el.click()
                break
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.d, 60, poll_frequency=0.3).until(
            lambda d: any(h.text.strip() == name for h in d.find_elements(self.By.TAG_NAME, "h2"))
        )
        self.idle()

    def widget(self, testid: str, label: str):
        for el in self.d.find_elements(self.By.CSS_SELECTOR, f'[data-testid="{testid}"]'):
            if el.text.startswith(label):
                return el
        raise AssertionError(f"no {testid} labelled {label!r}")

    def select(self, label: str, option: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.widget("stSelectbox", label).find_element(self.By.TAG_NAME, "input")
        box.click()
        box.send_keys(option, Keys.ENTER)
        self.idle()

    def number(self, label: str, value: int) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.widget("stNumberInput", label).find_element(self.By.TAG_NAME, "input")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value), Keys.ENTER)
        self.idle()

    def check(self, name: str) -> Path:
        """Full-page screenshot, and no exception box on the page."""
        h = self.d.execute_script(
            "return Math.max(...Array.from(document.querySelectorAll('*'))"
            ".map(e => e.scrollHeight));"
        )
        self.d.set_window_size(1400, min(int(h) + 150, 9000))
        time.sleep(0.8)
        path = self.shots / f"{name}.png"
        self.d.save_screenshot(str(path))
        self.d.set_window_size(1400, 1000)
        boxes = self.d.find_elements(self.By.CSS_SELECTOR, '[data-testid="stException"]')
        assert not boxes, f"{name}: {boxes[0].text[:2000]}"
        assert "Traceback" not in self.body(), name
        assert path.stat().st_size > 20_000, f"{name}: blank page"
        return path


def test_app_pages_in_chromium(tmp_path):
    """Data -> Compare (a real tiny run) -> Advice -> Operating point -> Single image."""
    port = _free_port()
    work = tmp_path / "work"
    env = {**os.environ, "MEDTL_APP_WORK": str(work)}
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "apps" / "medtl_app.py"),
        "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.maxUploadSize", "500", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    log_path = tmp_path / "streamlit.log"
    log_fh = open(log_path, "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    shots = tmp_path / "shots"
    shots.mkdir()
    driver = None
    try:
        _wait_http(url + "/_stcore/health", proc)
        driver = _driver(tmp_path)
        driver.get(url)
        page = Page(driver, shots)
        page.until_text(TITLE, 90)
        page.idle()

        page.click_text("Use the demo data")
        page.until_text("Data card")
        page.idle()
        assert "Split per patient" in page.body()
        page.check("1_data")

        page.section("Compare")
        page.select("Backbone", "tiny_test")
        page.number("Epochs", 1)  # a one-epoch run: whole-epoch axis, not 0.945-1.05
        page.number("Image size", 64)
        page.click_text("Run the comparison")
        page.until_text("Run shown (newest first)", 150)
        page.idle(150)
        page.check("2_compare")
        body = page.body()
        assert "Results on the held-out test images" in body and "Fine-tuning" in body
        side = driver.find_element(page.By.CSS_SELECTOR, '[data-testid="stSidebar"]').text
        assert "tiny_test · complete" in side, side

        page.section("Advice")
        page.click_text("Get advice")
        page.until_text("Recommended", 150)
        page.idle(150)
        assert "partial_fine_tuning" not in page.body()
        page.check("3_advice")

        page.section("Operating point")
        page.until_text("Sensitivity (cases caught)")
        page.check("4_operating_point")

        page.section("Single image")
        dicom = next((work / "data").rglob("*.dcm"))
        driver.find_element(page.By.CSS_SELECTOR, 'input[type="file"]').send_keys(str(dicom))
        page.until_text("call", 90)
        page.idle()
        page.check("5_single_image")
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_fh.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(SHOTS, ignore_errors=True)
            shutil.copytree(shots, SHOTS)
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert "deprecat" not in log.lower(), log[-3000:]
    # nothing written outside the work folder (the cwd is tmp_path itself)
    outside = [
        p.name
        for p in tmp_path.iterdir()
        if p.name not in {"work", "shots", "chrome-profile", "streamlit.log"}
    ]
    assert outside == []
