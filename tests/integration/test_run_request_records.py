"""Run-request records on a real broker (session 55's contract hunt). A request without ``run_id`` is one run however
often the extractor's loop reads its record: redelivered to a consumer started again before the first committed it, or
handed back by a store outage (each reading was a new run, its members sent to the partner again under other
Idempotency-Keys). A refused record's dead letter tells its headers (a binary-mode CloudEvent's attributes), with no
credential."""

from __future__ import annotations

import contextlib
import time
import uuid

import pytest

from services.extractor.run_request_decoding import decode_run_request
from shared.events import DeadLetter, RunRequested
from shared.kafka import Outgoing, ensure_topics
from shared.kafka.loop import RoundInterrupted
from shared.outages import DependencyUnavailable
from shared.settings import CommonSettings
from tests.integration.test_consumer_loop import _close, _loop, _run_until
from tests.kafka_helpers import produce, produce_with_headers, read_to_end

pytestmark = pytest.mark.integration

REQUEST = b'{"definition": "gold", "requested_by": "crm-sync"}'


class _Stopped(BaseException):
    """The extractor stopping mid-run (its pod deleted): the loop ends without committing the record."""


@pytest.mark.parametrize("rounds", [False, True], ids=["one-by-one", "rounds"])
def test_a_request_without_run_id_redelivered_after_a_restart_is_the_same_run(settings: CommonSettings, rounds: bool):
    ensure_topics(settings)
    produce(settings.kafka_bootstrap_servers, settings.topics.run_requests, [("crm-1", REQUEST)])
    runs: list[uuid.UUID] = []

    def stopped_mid_run(request: RunRequested) -> list[Outgoing]:
        runs.append(request.run_id)
        raise _Stopped

    first = _loop(settings, stopped_mid_run, rounds=rounds, decode=decode_run_request)
    with pytest.raises(_Stopped):
        _run_until(first, lambda: False)
    _close(first)  # nothing committed: the group's next consumer is given the record again

    def finishes(request: RunRequested) -> list[Outgoing]:
        runs.append(request.run_id)
        return []

    second = _loop(settings, finishes, rounds=rounds, decode=decode_run_request)
    _run_until(second, lambda: len(runs) == 2)
    _close(second)
    assert runs[0] == runs[1]


def test_a_request_without_run_id_handed_back_by_an_outage_is_the_same_run(settings: CommonSettings):
    # The extractor handles rounds: a run meeting a store outage hands its record back, to be decoded again.
    ensure_topics(settings)
    produce(settings.kafka_bootstrap_servers, settings.topics.run_requests, [("crm-1", REQUEST)])
    runs: list[uuid.UUID] = []

    def store_away_at_first(request: RunRequested) -> list[Outgoing]:
        runs.append(request.run_id)
        if len(runs) < 3:
            raise DependencyUnavailable("the member store does not answer")
        return []

    loop = _loop(settings, store_away_at_first, rounds=True, decode=decode_run_request, service="handed-back")
    deadline = time.monotonic() + 60
    while len(runs) < 3:
        assert time.monotonic() < deadline, "the request was not handled three times"
        with contextlib.suppress(RoundInterrupted):
            loop.poll_once()
    _close(loop)
    assert len(set(runs)) == 1, runs
    assert read_to_end(settings.kafka_bootstrap_servers, settings.topics.dead_letters) == []


def test_a_refused_binary_mode_cloudevent_is_dead_lettered_with_its_attributes_and_no_credential(
    settings: CommonSettings,
):
    ensure_topics(settings)
    token = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.s1gnatur3"
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_type", b"com.example.unknown"),
        ("ce_source", b"/crm/segments"),
        ("ce_id", b"evt-42"),
        ("content-type", b"application/json"),
        ("Authorization", f"Bearer {token}".encode()),
    ]
    produce_with_headers(
        settings.kafka_bootstrap_servers, settings.topics.run_requests, [("crm-1", b'{"definition": "gold"}', headers)]
    )
    loop = _loop(settings, lambda _request: [], decode=decode_run_request)
    letters: list[DeadLetter] = []

    def dead_lettered() -> bool:
        letters[:] = [
            DeadLetter.model_validate_json(raw)
            for raw in read_to_end(settings.kafka_bootstrap_servers, settings.topics.dead_letters)
        ]
        return bool(letters)

    _run_until(loop, dead_lettered)
    _close(loop)
    [letter] = letters
    assert "unsupported CloudEvent type 'com.example.unknown'" in letter.reason
    assert letter.headers is not None
    told = [(header.name, header.value) for header in letter.headers]
    assert told == [
        ("ce_specversion", "1.0"),
        ("ce_type", "com.example.unknown"),
        ("ce_source", "/crm/segments"),
        ("ce_id", "evt-42"),
        ("content-type", "application/json"),
        ("Authorization", "***"),
    ]
    assert not letter.headers_truncated
    assert token not in letter.model_dump_json()
