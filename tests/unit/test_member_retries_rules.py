"""The pure rules of next-run retries and of the delivery log: refusal kinds, retry states, key packing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.domain.catalog_objects import ExportDefinition
from shared.domain.key_packing import holds_key, pack_keys, pack_refused, refusal_of, unpack_keys
from shared.domain.member_retries import (
    RefusalKind,
    RetryRejected,
    RetryState,
    after_delivery,
    after_refusal,
    classify,
)

statuses = st.one_of(st.none(), st.integers(min_value=100, max_value=599))


@pytest.mark.parametrize("status", [None, 408, 425, 429, 500, 502, 503, 504, 599])
def test_no_answer_timeouts_throttling_and_server_errors_are_retryable_later(status):
    assert classify(status) is RefusalKind.RETRYABLE


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
def test_other_client_errors_are_invalid(status):
    assert classify(status) is RefusalKind.INVALID


@given(statuses)
def test_a_refusal_is_retryable_exactly_when_it_may_succeed_later(status):
    retryable = status is None or status >= 500 or status in (408, 425, 429)
    assert (classify(status) is RefusalKind.RETRYABLE) == retryable


def _refused_in_runs(runs: int, status: int | None, policy: RetryRejected):
    state = None
    for run in range(runs):
        state = after_refusal(state, key="k", status=status, reason="r", run_id=f"run-{run}", policy=policy)
    assert state is not None
    return state


@given(st.integers(0, 6), st.integers(0, 6), st.integers(1, 10), statuses)
def test_a_member_is_pending_until_its_kinds_budget_of_later_runs_is_spent(runs, invalid_runs, failures, status):
    policy = RetryRejected(runs=runs, invalid_runs=invalid_runs)
    budget = runs if classify(status) is RefusalKind.RETRYABLE else invalid_runs
    state = _refused_in_runs(failures, status, policy)
    assert state.failed_runs == failures
    # The first refusal, then one a later run: sent again by ``budget`` runs, then given up for good.
    assert state.state is (RetryState.PENDING if failures <= budget else RetryState.GIVEN_UP)
    assert state.last_run == f"run-{failures - 1}"


def test_a_member_refused_as_invalid_is_not_retried_by_default_and_after_its_limit():
    assert _refused_in_runs(1, 422, RetryRejected()).state is RetryState.GIVEN_UP
    limited = RetryRejected(invalid_runs=1)
    assert _refused_in_runs(1, 422, limited).state is RetryState.PENDING
    assert _refused_in_runs(2, 422, limited).state is RetryState.GIVEN_UP


def test_one_run_refusing_a_member_twice_counts_one_failed_run():
    policy = RetryRejected(runs=1)
    once = after_refusal(None, key="k", status=503, reason="r", run_id="a", policy=policy)
    twice = after_refusal(once, key="k", status=503, reason="r", run_id="a", policy=policy)
    assert twice.failed_runs == 1
    assert twice.state is RetryState.PENDING


@given(st.integers(1, 5))
def test_a_delivery_resolves_a_member_and_a_later_refusal_starts_again(failures):
    policy = RetryRejected(runs=10)
    delivered = after_delivery(_refused_in_runs(failures, 503, policy), "later")
    assert delivered.state is RetryState.DELIVERED
    assert delivered.last_run == "later"
    again = after_refusal(delivered, key="k", status=503, reason="r", run_id="next", policy=policy)
    assert again.failed_runs == 1
    assert again.state is RetryState.PENDING


def test_a_given_up_member_stays_given_up_when_refused_again_until_a_delivery():
    policy = RetryRejected(runs=0, invalid_runs=0)
    given_up = _refused_in_runs(1, 422, policy)
    again = after_refusal(given_up, key="k", status=503, reason="r", run_id="x", policy=RetryRejected(runs=5))
    assert again.state is RetryState.GIVEN_UP
    assert again.failed_runs == 2
    delivered = after_delivery(again, "y")
    fresh = after_refusal(delivered, key="k", status=503, reason="r", run_id="z", policy=RetryRejected(runs=5))
    assert fresh.state is RetryState.PENDING
    assert fresh.failed_runs == 1


def test_a_definitions_retry_budget_has_a_default_and_is_validated_naming_the_field():
    base = {"name": "d", "query": "q", "template": "t"}
    assert ExportDefinition.model_validate(base).retry_rejected == RetryRejected(runs=3, invalid_runs=0)
    with pytest.raises(ValidationError, match=r"retry_rejected\.runs"):
        ExportDefinition.model_validate(base | {"retry_rejected": {"runs": -1}})
    with pytest.raises(ValidationError, match=r"retry_rejected\.tries"):
        ExportDefinition.model_validate(base | {"retry_rejected": {"tries": 2}})


@given(st.lists(st.text(max_size=12), max_size=30), st.text(max_size=12))
def test_a_packed_batch_holds_exactly_its_keys(keys, probe):
    packed = pack_keys(keys)
    assert unpack_keys(packed) == keys
    assert holds_key(packed, probe) == (probe in keys)
    for key in keys:
        assert holds_key(packed, key)


@given(st.lists(st.sampled_from(["a", '"', "\\", ",", "[", "]", 'a"', '",', '","a']), min_size=1, max_size=8))
def test_keys_made_of_json_punctuation_are_told_apart(parts):
    keys = ["".join(parts), "".join(reversed(parts))]
    packed = pack_keys(keys[:1])
    assert holds_key(packed, keys[0])
    assert holds_key(packed, keys[1]) == (keys[1] == keys[0])
    for cut in range(1, len(keys[0])):
        assert holds_key(packed, keys[0][:cut]) is False
        assert holds_key(packed, keys[0][cut:]) is False


refusals = st.lists(
    st.tuples(
        st.text(max_size=8), st.one_of(st.none(), st.integers(100, 599)), st.text(max_size=20), st.integers(0, 9)
    ),
    max_size=10,
    unique_by=lambda member: member[0],
)


@given(refusals, st.text(max_size=8))
def test_a_batchs_packed_refusals_answer_for_exactly_its_refused_members(refused, probe):
    packed = pack_refused(refused)
    assert (packed is None) == (not refused)
    by_key = {key: (status, reason, attempts) for key, status, reason, attempts in refused}
    assert refusal_of(packed, probe) == by_key.get(probe)
    for key, status, reason, attempts in refused:
        assert refusal_of(packed, key) == (status, reason, attempts)
