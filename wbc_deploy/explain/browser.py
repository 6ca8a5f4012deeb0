"""The system's headless Chromium, as the review-page tests and benchmark drive it through Playwright.

Playwright's own browser download (``playwright install``) is not used: the browser comes from the system
package manager (Debian: ``apt-get install chromium`` -> ``/usr/bin/chromium``), which ``.ci/run`` installs.
``WBC_DEPLOY_CHROMIUM`` names another executable.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

#: Flags for a quiet, offline, sandbox-free headless run (CI containers run as root without user namespaces).
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_executable() -> str | None:
    """Path of the Chromium to drive: ``$WBC_DEPLOY_CHROMIUM``, else the first found of the usual names; None if none."""
    env = os.environ.get("WBC_DEPLOY_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in _CANDIDATES:
        found = name if Path(name).is_file() and os.access(name, os.X_OK) else shutil.which(name)
        if found:
            return found
    return None


def launch_chromium(playwright, executable: str | None = None):
    """A headless Chromium ``Browser`` from a started ``sync_playwright()`` (raises RuntimeError if none is installed)."""
    exe = executable or chromium_executable()
    if exe is None:
        raise RuntimeError("no Chromium found (install it: apt-get install chromium, or set WBC_DEPLOY_CHROMIUM)")
    return playwright.chromium.launch(executable_path=exe, args=list(CHROMIUM_ARGS))
