"""The broker jars fetched once when several processes start brokers at once (the workers of ``make test``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import devtools.kafka_broker as kafka_broker

#: How long the fake Maven waits for a second fetch to begin beside it (each fetch holds its own lock file
#: description, so two threads contend for the lock as two processes do).
OVERLAP_SECONDS = 2.0

FAKE_MVN = """#!/bin/sh
# Counts its runs, waits (up to a deadline) for another run to begin beside it, then writes the one jar.
echo run >> "$FETCH_COUNT"
end=$(( $(date +%s) + {seconds} ))
while [ "$(wc -l < "$FETCH_COUNT")" -lt 2 ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.05; done
for arg in "$@"; do case "$arg" in -DoutputDirectory=*) out="${{arg#-DoutputDirectory=}}";; esac; done
echo jar > "$out/kafka.jar"
"""


def test_brokers_started_at_once_fetch_the_jars_once_and_both_find_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mvn = tmp_path / "mvn"
    mvn.write_text(FAKE_MVN.format(seconds=int(OVERLAP_SECONDS)))
    mvn.chmod(0o755)
    count = tmp_path / "fetches"
    count.touch()
    monkeypatch.setenv("FETCH_COUNT", str(count))
    monkeypatch.setattr(kafka_broker, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(kafka_broker, "require_java_and_maven", lambda: ("java", str(mvn)))

    with ThreadPoolExecutor(2) as pool:
        fetches = [pool.submit(kafka_broker.fetch_kafka_jars) for _ in range(2)]
        found = [fetch.result(timeout=30) for fetch in fetches]  # a fetch's failure is raised here

    assert count.read_text().splitlines() == ["run"]  # one fetch from Maven Central, not one per broker
    assert [sorted(path.name for path in libs.glob("*.jar")) for libs in found] == [["kafka.jar"], ["kafka.jar"]]
