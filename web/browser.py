"""Headless Chromium for the browser tests and the screenshot command.

Always Debian's /usr/bin/chromium (never a browser downloaded by Playwright), launched with
flags that keep it off the network.
"""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = os.environ.get("RIS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_available() -> bool:
    return Path(CHROMIUM).exists()


def launch(playwright):
    # A generous launch timeout: CI machines are small and busy.
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=120_000)


def log_in(page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)
