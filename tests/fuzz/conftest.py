"""The fuzz suite: in-process (no broker, no server). ``make test`` runs its bounded forms (2,000 cases a
property, 200 polls of the consumer loop, Schemathesis with the admin token on 10 examples); ``make fuzz``
(``pytest tests/fuzz``) runs them and their long forms (marked ``long``: 10,000 cases, 1,000 polls, every token
on 40 examples)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fuzz: property-based fuzzing (hypothesis, schemathesis), in-process; `make fuzz` runs them all"
    )
