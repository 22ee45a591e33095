"""Each benchmark the suite can afford runs at its tiny size to its end and prints its figures
(``tests/benchmarks/smoke.py`` says which and how small; `make bench-smoke` runs them all). No timed assertion: a
benchmark renamed away from the code it measures (a function renamed, a constructor changed) fails here, not in the
next `make bench`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.benchmarks.smoke import SMOKES, Smoke, run

pytestmark = pytest.mark.integration

IN_SUITE = [smoke for smoke in SMOKES if smoke.in_suite]


@pytest.fixture(scope="module")
def servers(kafka_bootstrap: str, postgres_database_factory: Callable[[], str]) -> dict[str, str]:
    """The suite's broker and PostgreSQL server (a database of its own: the benchmarks create theirs beside it)."""
    return {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "EXPORT_TEST_POSTGRES_URL": postgres_database_factory()}


@pytest.mark.parametrize("smoke", IN_SUITE, ids=lambda s: s.name)
def test_benchmark_runs_and_prints_its_figures(smoke: Smoke, servers: dict[str, str], tmp_path: Path) -> None:
    output, _ = run(smoke, servers["KAFKA_BOOTSTRAP_SERVERS"], tmp_path, servers, timeout=120)
    assert "Traceback" not in output, output[-4000:]


def test_every_benchmark_has_a_smoke() -> None:
    """A new benchmark gets its tiny run: in the suite, or in `make bench-smoke` with the reason it is not here."""
    benchmarks = {path.stem for path in (Path(__file__).parents[1] / "benchmarks").glob("bench_*.py")}
    assert benchmarks == {smoke.name for smoke in SMOKES}
    assert all(smoke.why_not for smoke in SMOKES if not smoke.in_suite)
