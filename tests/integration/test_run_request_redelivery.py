"""A run request without ``run_id`` on a real broker is one run however often the extractor's loop reads its record:
redelivered to a consumer started again before the first committed it, or handed back by a store outage (session 55's
contract hunt: each reading was a new run, its members sent to the partner again under other Idempotency-Keys)."""

from __future__ import annotations

import contextlib
import time
import uuid

import pytest

from services.extractor.run_request_decoding import decode_run_request
from shared.events import RunRequested
from shared.kafka import Outgoing, ensure_topics
from shared.kafka.loop import RoundInterrupted
from shared.outages import DependencyUnavailable
from shared.settings import CommonSettings
from tests.integration.test_consumer_loop import _close, _loop, _run_until
from tests.kafka_helpers import produce, read_to_end

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
