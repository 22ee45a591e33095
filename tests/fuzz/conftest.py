"""The fuzz suite: in-process (no broker, no server), part of ``make test``; ``pytest -m fuzz`` runs it alone."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: property-based fuzzing (hypothesis), in-process, 10,000 cases each")
