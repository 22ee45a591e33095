"""Every topic's real decode path, fuzzed in-process: no exception escapes decode + dead letter, every bad
record becomes one bounded dead letter with a reason, and each decoder raises nothing but ``ValueError``.

The decoders are the ones the services' composition roots give their consumer loops; each record goes
through the loop's own functions (:func:`decode_record`, then :func:`dead_letter_record` for a rejected
one), as ``ConsumerLoop`` runs them for every polled record.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from kafka.consumer.fetcher import ConsumerRecord

from services.dispatcher.dispatching import decode_batch
from services.extractor.run_request_decoding import decode_run_request
from shared.events import (
    RUN_EVENT_ADAPTER,
    BatchOutcome,
    DeadLetter,
    ExtractionCompleted,
    MemberBatch,
    RunCancelled,
    RunFailed,
    RunMissed,
    RunRequested,
    RunSkipped,
    RunStarted,
)
from shared.kafka import value_decoder
from shared.kafka.loop import (
    DEAD_LETTER_PAYLOAD_BYTES,
    KEY_MAX_BYTES,
    Decoder,
    Rejection,
    dead_letter_record,
    decode_record,
)
from shared.kafka.records import Headers
from tests.fuzz.records import (
    DEAD_LETTER_PATHS,
    DEAD_LETTER_SEEDS,
    MEMBER_BATCH_PATHS,
    MEMBER_BATCH_SEEDS,
    NESTED_CLOUDEVENT,
    RUN_EVENT_PATHS,
    RUN_EVENT_SEEDS,
    record_key,
    run_request_record,
)
from tests.fuzz.strategies import CASES, FUZZ, KINDS, build, random_seeds

pytestmark = pytest.mark.fuzz

#: A dead letter's largest size: the payload's bound, plus the reason, key and fields.
DEAD_LETTER_MAX_BYTES = DEAD_LETTER_PAYLOAD_BYTES + 32 * 1024


@dataclass
class Tally:
    """What a fuzz run saw: cases, and how many decoded or became dead letters."""

    cases: int = 0
    decoded: int = 0
    dead_lettered: int = 0
    started: float = field(default_factory=time.monotonic)

    def report(self, topic: str) -> str:
        seconds = time.monotonic() - self.started
        return (
            f"{topic}: {self.cases} cases in {seconds:.1f} s "
            f"({self.decoded} decoded, {self.dead_lettered} dead letters)"
        )


def check_record(
    decode: Decoder[Any],
    expected: type | tuple[type, ...],
    value: bytes | None,
    headers: Headers,
    key: bytes | None,
    tally: Tally,
) -> None:
    """The properties, for one record of ``value`` and ``headers`` through the loop's decode path."""
    tally.cases += 1
    if value is not None:
        # The decoders' contract: ValueError (pydantic's ValidationError is one) and nothing else.
        with contextlib.suppress(ValueError):
            decode(value, headers, None)
    record = ConsumerRecord(
        "exports.fuzzed", 2, None, 41, 0, 0, key, value, list(headers), None, len(key or b""), len(value or b""), 0
    )
    result = decode_record(decode, value, headers, record)
    if not isinstance(result, Rejection):
        assert isinstance(result, expected)
        tally.decoded += 1
        return
    tally.dead_lettered += 1
    assert result.reason.startswith("invalid event: ")
    out = dead_letter_record(record, result.reason, service="fuzz", dead_letter_topic="exports.dead-letters")
    assert out.topic == "exports.dead-letters"
    assert len(out.value) <= DEAD_LETTER_MAX_BYTES
    assert len(out.key.encode()) <= 3 * KEY_MAX_BYTES  # up to 1 KiB of the key, invalid bytes as U+FFFD
    letter = DeadLetter.model_validate_json(out.value)
    assert letter.reason == result.reason
    assert (letter.source_topic, letter.source_partition, letter.source_offset, letter.service) == (
        "exports.fuzzed",
        2,
        41,
        "fuzz",
    )
    if value is None:
        assert (letter.payload, letter.payload_size, letter.payload_sha256) == (None, None, None)
        return
    assert (letter.payload_size, letter.payload_sha256) == (len(value), hashlib.sha256(value).hexdigest())
    assert letter.payload is not None
    assert len(orjson.dumps(letter.payload)) <= DEAD_LETTER_PAYLOAD_BYTES
    if len(value) <= DEAD_LETTER_PAYLOAD_BYTES:
        whole = value.decode("utf-8", errors="replace")
        assert whole.startswith(letter.payload)
        assert letter.payload_truncated == (letter.payload != whole)
    else:  # the payload is the beginning of the value (a character cut in two is left out)
        assert letter.payload_truncated
        assert value[:DEAD_LETTER_PAYLOAD_BYTES].decode("utf-8", errors="replace").startswith(letter.payload)


def _run(test: Callable[[], None], tally: Tally, topic: str, cases: int) -> None:
    test()
    print(tally.report(topic))
    assert tally.cases >= cases
    assert tally.decoded > 0  # the fuzz reaches both sides
    assert tally.dead_lettered > 0


# Each case is one drawn seed, from which the record is built: one draw is what keeps Hypothesis's own
# cost per case low enough for 10,000 cases a topic (2,000 in CI); a failure prints the seed, which rebuilds the record.


@pytest.mark.parametrize("cases", CASES)
def test_run_requests_fuzzed_through_the_extractor_decoder(cases: int):
    tally = Tally()

    @settings(FUZZ, max_examples=cases)
    @given(seed=random_seeds)
    def fuzz(seed: int) -> None:
        value, headers, key = run_request_record(seed)
        check_record(decode_run_request, RunRequested, value, headers, key, tally)

    _run(fuzz, tally, "run-requests", cases)


# --- member batches (the dispatcher), run events (the notifier), dead letters (exportctl) --------------

#: topic → (its consumer's decoder, the events it decodes to, valid documents, where hostile values go)
JSON_TOPICS: dict[str, tuple[Decoder[Any], type | tuple[type, ...], list[dict[str, Any]], list[list[str | int]]]] = {
    "member-batches": (
        value_decoder(decode_batch),
        MemberBatch,
        MEMBER_BATCH_SEEDS,
        MEMBER_BATCH_PATHS,
    ),
    "run-events": (
        value_decoder(RUN_EVENT_ADAPTER.validate_json),
        (RunStarted, ExtractionCompleted, BatchOutcome, RunFailed, RunSkipped, RunMissed, RunCancelled),
        RUN_EVENT_SEEDS,
        RUN_EVENT_PATHS,
    ),
    "dead-letters": (value_decoder(DeadLetter.model_validate_json), DeadLetter, DEAD_LETTER_SEEDS, DEAD_LETTER_PATHS),
}


@pytest.mark.parametrize("cases", CASES)
@pytest.mark.parametrize("topic", list(JSON_TOPICS))
def test_json_topics_fuzzed_through_their_decoders(topic: str, cases: int):
    decode, expected, seeds, paths = JSON_TOPICS[topic]
    tally = Tally()

    @settings(FUZZ, max_examples=cases)
    @given(seed=random_seeds)
    def fuzz(seed: int) -> None:
        rng = random.Random(seed)
        kind, key = rng.choice([*KINDS, "tombstone"]), record_key(rng)
        value = None if kind == "tombstone" else build(kind, rng, seeds, paths)
        check_record(decode, expected, value, [], key, tally)

    _run(fuzz, tally, topic, cases)


# --- the records of the issue, every topic ------------------------------------------------------------

ISSUE_RECORDS = {
    "nested CloudEvent": NESTED_CLOUDEVENT,
    "JSON 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, []),
    "900 KB of random bytes": (random.Random(12).randbytes(900_000), []),
    "900 KB of NULs": (b"\x00" * 900_000, []),
}


@pytest.mark.parametrize("record", list(ISSUE_RECORDS))
@pytest.mark.parametrize("topic", ["run-requests", *JSON_TOPICS])
def test_the_records_of_the_issue_become_bounded_dead_letters(topic: str, record: str):
    decode, expected = (decode_run_request, RunRequested) if topic == "run-requests" else JSON_TOPICS[topic][:2]
    value, headers = ISSUE_RECORDS[record]
    tally = Tally()
    check_record(decode, expected, value, headers, b"k", tally)
    assert tally.dead_lettered == 1
