"""End to end: start the app with `streamlit run`, open it in headless Chromium, check it rendered.

Chromium is driven through Selenium and Debian's chromedriver (both installed by .ci/run), so the test waits
for the page's real content instead of guessing how long the websocket takes. Skips cleanly when either is
absent.
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


def _wait(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
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


def test_app_renders_in_chromium(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    env = {**os.environ, "MEDTL_APP_WORK": str(tmp_path / "work")}
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "apps" / "medtl_app.py"),
        "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.maxUploadSize", "500", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    log_path = tmp_path / "streamlit.log"
    log_fh = open(log_path, "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    driver = None
    try:
        _wait(url + "/_stcore/health", proc)
        driver = _driver(tmp_path)
        driver.get(url)
        WebDriverWait(driver, 90).until(lambda d: TITLE in d.find_element(By.TAG_NAME, "body").text)
        # let the rest of the first run finish (the status widget disappears when the script is done)
        WebDriverWait(driver, 60).until(
            lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        )
        time.sleep(1)
        shot = tmp_path / "app.png"
        driver.save_screenshot(str(shot))
        with contextlib.suppress(OSError):
            shutil.copyfile(shot, "/tmp/medtl_app_screenshot.png")
        body = driver.find_element(By.TAG_NAME, "body").text
        assert TITLE in body
        assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), body[
            -2000:
        ]
        assert "Traceback" not in body
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_fh.close()
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    # nothing written outside the work folder (the cwd is tmp_path itself)
    outside = [
        p.name
        for p in tmp_path.iterdir()
        if p.name not in {"work", "app.png", "chrome-profile", "streamlit.log"}
    ]
    assert outside == []
