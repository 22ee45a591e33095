"""Where a timed end-to-end run spends its wall time (bench_e2e): one timeline, in seconds after ``exportctl run``
was launched, from what the run left behind.

- the Kafka records' own timestamps (CreateTime: when the producer was handed the record): the extractor's
  ``run.started``, its first and last member-batch record, its ``run.extraction_completed``, and the dispatcher's
  first and last ``run.batch_outcome``;
- the lean receiver's first and last request (its monotonic clock, this machine's);
- when ``exportctl run`` printed the run's id (through the admin API: when the API answered) and when it exited;
  through the API also when the request reached it: its answer less its own handling of the request (the admin's
  ``/metrics`` request histogram, read before and after the run);
- the notifier's ``run finished`` log line (written once the fold that made the run final is committed);
- when the benchmark saw the run final in the catalog (it polls every 0.1 s).

All clocks are this machine's, so the times compare to a few milliseconds. The gaps between the marks are where
the wall time goes: the start latency (launch to the first batch out, to the first request), the dispatcher's
lag behind the extractor (last batch record to last request), and the tail (last request to the run recorded).
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from shared.topics import Topics

#: Marks in the order a run passes them.
MARKS = (
    ("run request received by the admin API (its answer less its handling)", "api_received"),
    ("run requested (the run request's record produced)", "run_requested"),
    ("run id printed by exportctl (API mode: the API answered)", "run_printed"),
    ("exportctl returned", "exportctl_returned"),
    ("run.started produced (extractor)", "run_started"),
    ("first batch record produced (extractor)", "first_batch"),
    ("first request at the receiver (dispatcher)", "first_request"),
    ("first batch outcome produced (dispatcher)", "first_outcome"),
    ("last batch record produced (extractor)", "last_batch"),
    ("run.extraction_completed produced (extractor)", "extraction_completed"),
    ("last request at the receiver (dispatcher)", "last_request"),
    ("last batch outcome produced (dispatcher)", "last_outcome"),
    ("run final, fold committed (notifier log)", "run_finished"),
    ("run seen final in the catalog (0.1 s polls)", "recorded"),
)


@dataclass(frozen=True)
class RunClock:
    """When ``exportctl run`` was launched, on the wall clock and the monotonic clock (read together)."""

    wall: float
    monotonic: float

    def from_wall(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds - self.wall

    def from_monotonic(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds - self.monotonic


def _topic_times(
    bootstrap: str, topics: list[str], key_prefix: bytes, timeout: float = 60.0
) -> list[tuple[float, Any]]:
    """(CreateTime in seconds, record) of every record of ``topics`` whose key starts with ``key_prefix``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    found: list[tuple[float, Any]] = []
    try:
        partitions = [
            TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        if not partitions:
            return found
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        while any(consumer.position(p) < ends[p] for p in partitions) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=250).values():
                found += [(r.timestamp / 1000, r) for r in records if r.key and r.key.startswith(key_prefix)]
    finally:
        consumer.close()
    return found


def _logged(log: Path, run_id: uuid.UUID, event: str) -> float | None:
    """The wall time of the service log's line ``event`` about the run (its last one), or None."""
    when = None
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if str(run_id) not in line or event not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            when = datetime.fromisoformat(entry["timestamp"]).timestamp()
    return when


def timeline(
    *,
    bootstrap: str,
    topic_prefix: str,
    run_id: uuid.UUID,
    clock: RunClock,
    log_dir: Path,
    receiver: dict[str, Any],
    exportctl_returned: float,
    recorded: float,
    run_printed: float | None = None,
    api_seconds: float | None = None,
) -> dict[str, float | None]:
    """The run's marks (see :data:`MARKS`), in seconds after ``exportctl run`` was launched; ``api_seconds``, the
    admin API's own time on the request (API mode), is kept too (``api_seconds``)."""
    topics = Topics(topic_prefix)
    key = str(run_id).encode()
    batches = sorted(t for t, _ in _topic_times(bootstrap, topics.member_batch_topics(), key))
    events: dict[str, list[float]] = {}
    for at, record in _topic_times(bootstrap, [topics.run_events], key):
        kind = orjson.loads(record.value).get("type", "")
        events.setdefault(kind, []).append(at)
    outcomes = sorted(events.get("run.batch_outcome", []))
    requested = [t for t, _ in _topic_times(bootstrap, [topics.run_requests], key)]

    def first(times: list[float]) -> float | None:
        return clock.from_wall(min(times)) if times else None

    def last(times: list[float]) -> float | None:
        return clock.from_wall(max(times)) if times else None

    # Through the API, exportctl prints the run's id as soon as the answer is read: the answer less the API's own
    # handling is when the request reached it.
    received = None if run_printed is None or api_seconds is None else run_printed - api_seconds
    return {
        "api_received": received,
        "api_seconds": api_seconds,
        "run_requested": first(requested),
        "run_printed": run_printed,
        "exportctl_returned": exportctl_returned,
        "run_started": first(events.get("run.started", [])),
        "first_batch": first(batches),
        "last_batch": last(batches),
        "extraction_completed": last(events.get("run.extraction_completed", [])),
        "first_request": clock.from_monotonic(receiver.get("first")),
        "last_request": clock.from_monotonic(receiver.get("last")),
        "first_outcome": first(outcomes),
        "last_outcome": last(outcomes),
        "run_finished": clock.from_wall(_logged(log_dir / "notifier.log", run_id, "run finished")),
        "recorded": recorded,
    }


#: A pause between two requests at the receiver this long or longer counts as idle (with 8 requests in flight
#: and about 2 ms a request on loopback, the usual gap is well under a millisecond).
IDLE_GAP_SECONDS = 0.02


def idle_gaps(times: list[float]) -> dict[str, float]:
    """The receiver's pauses (its request times, sorted): total idle seconds, their count, the longest."""
    gaps = [b - a for a, b in itertools.pairwise(times) if b - a >= IDLE_GAP_SECONDS]
    return {"idle": sum(gaps), "idle_gaps": float(len(gaps)), "longest_gap": max(gaps, default=0.0)}


def describe(marks: dict[str, float | None]) -> list[str]:
    """The marks as lines (``+seconds  what``), then the gaps that matter."""
    known = [(marks[name], label) for label, name in MARKS if marks.get(name) is not None]
    lines = [f"{at:+7.2f} s  {label}" for at, label in sorted(known, key=lambda mark: mark[0] or 0.0)]

    def gap(later: str, earlier: str) -> str:
        a, b = marks.get(later), marks.get(earlier)
        return "?" if a is None or b is None else f"{a - b:.2f} s"

    lines.append(
        f"gaps: run requested → run.started {gap('run_started', 'run_requested')}; "
        f"first batch record → first request {gap('first_request', 'first_batch')}; "
        f"extractor first → last batch record {gap('last_batch', 'first_batch')}; "
        f"receiver first → last request {gap('last_request', 'first_request')}; "
        f"last batch record → last request {gap('last_request', 'last_batch')}; "
        f"last request → last outcome produced {gap('last_outcome', 'last_request')}; "
        f"last outcome → run final (notifier) {gap('run_finished', 'last_outcome')}; "
        f"run final → seen in the catalog {gap('recorded', 'run_finished')}"
    )
    if marks.get("api_seconds") is not None:

        def ms(later: str, earlier: str | None = None) -> str:
            a, b = marks.get(later), marks.get(earlier) if earlier else 0.0
            return "?" if a is None or b is None else f"{(a - b) * 1000:.0f} ms"

        lines.append(
            f"the admin API: launch → request received {ms('api_received')}; handled in {ms('api_seconds')} (its "
            f"/metrics), of which request received → run request produced {ms('run_requested', 'api_received')} "
            f"and run request produced → answered (run id printed) {ms('run_printed', 'run_requested')}; answered → "
            f"exportctl returned {ms('exportctl_returned', 'run_printed')}"
        )
    if marks.get("idle") is not None:
        lines.append(
            f"the receiver saw no request for {marks['idle']:.2f} s of its first → last span, in "
            f"{marks['idle_gaps']:.0f} pauses of {IDLE_GAP_SECONDS * 1000:.0f} ms or more (the longest "
            f"{marks['longest_gap']:.3f} s)"
        )
    return lines
