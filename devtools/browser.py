"""The browser the console's tests drive: Debian's Chromium, installed with apt when absent (root only).

Playwright's own browser download cannot be reached from these machines (only package registries can), so
the tests launch the system's Chromium by path instead (``executable_path``); nothing here calls
``playwright install``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from devtools.prerequisites import MissingPrerequisite, _is_debian_root, apt_install

#: Where Debian's ``chromium`` package puts its launcher.
CHROMIUM = Path("/usr/bin/chromium")


def chromium_path() -> Path:
    """The Chromium binary; installed with ``apt-get install chromium`` on Debian as root, else explained."""
    found = CHROMIUM if CHROMIUM.exists() else _on_path()
    if found is None and _is_debian_root():
        apt_install("chromium")
        found = CHROMIUM if CHROMIUM.exists() else _on_path()
    if found is None:
        raise MissingPrerequisite(
            "the console's browser tests need Chromium: install it (Debian/Ubuntu: apt-get install chromium)"
        )
    return found


def _on_path() -> Path | None:
    on_path = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(on_path) if on_path else None
