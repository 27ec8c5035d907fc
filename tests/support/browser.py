"""Headless Chromium driven by Selenium, for the landing page: Debian's ``chromium`` and ``chromium-driver``."""

import shutil
from typing import Optional

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _binary() -> Optional[str]:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_problem() -> Optional[str]:
    """Why headless Chromium cannot run here; None when it can."""
    try:
        import selenium  # noqa: F401 - only whether it is installed
    except ImportError:
        return "selenium is not installed (the test extra has it on Python >= 3.8)"
    if _binary() is None:
        return "chromium is not installed (make system-deps installs Debian's chromium)"
    if shutil.which("chromedriver") is None:
        return "chromedriver is not installed (make system-deps installs Debian's chromium-driver)"
    return None


def chromium(width: int = 1100, height: int = 1300):
    """A headless Chromium WebDriver whose console log (CSP violations, script errors) can be read."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _binary()
    # --no-sandbox: the suite runs as root, where Chromium's sandbox refuses to start
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=%d,%d" % (width, height)):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
