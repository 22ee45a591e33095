"""The prerequisites step asks for what its command uses: ``make demo`` and ``make up`` only Java and Maven (their
Kafka), ``make test`` everything the suite starts (Kafka, PostgreSQL, Chromium, Prometheus), installed on Debian as
root. Before, ``make demo`` went through the tests' step: on a machine without Chromium it stopped with "the
console's browser tests need Chromium", and on Debian as root it installed Chromium and Prometheus unasked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import devtools.browser
import devtools.prometheus
from devtools import prerequisites

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which prerequisites were looked for (each found), in order."""
    looked_for: list[str] = []

    def finder(name: str, found: object):
        def find(*args: object) -> object:
            looked_for.append(name)
            return found

        return find

    monkeypatch.setattr(prerequisites, "require_java_and_maven", finder("java+maven", ("/usr/bin/java", "/bin/mvn")))
    monkeypatch.setattr(prerequisites, "java_major_version", lambda java: 17)
    monkeypatch.setattr(prerequisites, "postgres_bin_dir", finder("postgresql", Path("/usr/lib/postgresql/16/bin")))
    monkeypatch.setattr(devtools.browser, "chromium_path", finder("chromium", Path("/usr/bin/chromium")))
    monkeypatch.setattr(devtools.prometheus, "require_prometheus", finder("prometheus", None))
    monkeypatch.delenv("EXPORT_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    return looked_for


def test_the_demo_step_asks_only_for_java_and_maven(asked: list[str], capsys: pytest.CaptureFixture[str]):
    assert prerequisites.main(["demo"]) == 0
    assert asked == ["java+maven"]
    assert "Chromium" not in capsys.readouterr().out


def test_the_demo_step_on_an_existing_cluster_asks_for_nothing(
    asked: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("EXPORT_KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    assert prerequisites.main(["demo"]) == 0
    assert asked == []
    assert "kafka.example:9092" in capsys.readouterr().out


def test_the_tests_step_still_asks_for_everything_the_suite_starts(asked: list[str]):
    assert prerequisites.main([]) == 0
    assert asked == ["java+maven", "postgresql", "chromium", "prometheus"]


def test_a_missing_java_stops_the_demo_step_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, asked: list[str], capsys: pytest.CaptureFixture[str]
):
    def missing() -> tuple[str, str]:
        raise prerequisites.MissingPrerequisite("Kafka needs Java 17 or newer: install it")

    monkeypatch.setattr(prerequisites, "require_java_and_maven", missing)
    assert prerequisites.main(["demo"]) == 1
    assert capsys.readouterr().out == "missing prerequisite: Kafka needs Java 17 or newer: install it\n"


def test_an_unknown_step_is_refused(asked: list[str]):
    assert prerequisites.main(["everything"]) == 2
    assert asked == []


def _dependencies(target: str) -> list[str]:
    rule = re.search(rf"^{re.escape(target)}:(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert rule, f"no rule for {target} in the Makefile"
    return rule.group(1).split()


def test_make_demo_and_up_take_the_demo_step_and_make_test_the_tests_step():
    assert "demo-prerequisites" in _dependencies("demo")
    assert "demo-prerequisites" in _dependencies("up")
    assert "prerequisites" not in _dependencies("demo") + _dependencies("up")
    assert "prerequisites" in _dependencies("test")  # .ci/run is `make test`: a fresh machine gets everything
    assert _dependencies("demo-prerequisites") == ["$(STAMP)"]
