"""A member batch of no members (``members: []``, which the model accepts): the dispatcher sends nothing to the
partner (no request of an empty list, no empty body) and records the batch's outcome, 0 members delivered and none
failed, so that the run's accounting, which waits for every batch's outcome, completes."""

from __future__ import annotations

import asyncio
import uuid

from shared.events import RUN_EVENT_ADAPTER, BatchOutcome, ChangeKind, MemberBatch
from tests.unit.test_round_admission import Clock, Partner, round_dispatcher


def test_an_empty_batch_sends_nothing_and_is_recorded_delivered_with_no_member():
    for batch_size in (1, 500):  # the one-member path and the batch path
        partner = Partner(lambda: None)
        dispatcher = round_dispatcher(partner, Clock(), batch_size)
        empty = MemberBatch(
            run_id=uuid.uuid4(),
            definition="d",
            template="t",
            batch_index=3,
            members=[],
            key_column="id",
            change=ChangeKind.ADDED,
        )
        [result] = asyncio.run(dispatcher.handle_all([empty]))
        assert partner.keys == []  # nothing sent
        assert isinstance(result, list)
        assert len(result) == 1  # the outcome alone: no dead letter
        outcome = RUN_EVENT_ADAPTER.validate_json(result[0].value)
        assert isinstance(outcome, BatchOutcome)
        assert (outcome.run_id, outcome.batch_index) == (empty.run_id, 3)
        assert (outcome.delivered, outcome.failed, outcome.attempts, outcome.error) == (0, 0, 0, None)
        assert outcome.member_keys == []
        assert outcome.refused == []
        assert outcome.change is ChangeKind.ADDED
