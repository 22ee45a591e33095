from datetime import UTC, datetime
from email.utils import format_datetime
from unittest.mock import Mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.dispatcher.delivery import AttemptResult, RetryBudget
from shared.outbound.retry_decisions import is_retryable, is_success, parse_retry_after


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status):
    assert is_retryable(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 501, 505])
def test_other_failures_are_permanent(status):
    assert not is_retryable(status)


def test_success_is_2xx_unless_the_template_says_otherwise():
    assert is_success(204, None)
    assert not is_success(302, None)
    assert is_success(302, [302])
    assert not is_success(200, [201])


def test_retry_after_in_seconds_and_as_an_http_date():
    now = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(format_datetime(datetime(2026, 11, 27, 12, 0, 30, tzinfo=UTC), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(datetime(2026, 11, 27, 11, 0, 0, tzinfo=UTC), usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def _state(attempt: int, result: AttemptResult):
    state = Mock()
    state.attempt_number = attempt
    state.outcome.failed = False
    state.outcome.result.return_value = result
    return state


@given(attempt=st.integers(1, 30), initial=st.floats(0.01, 5), cap=st.floats(0.1, 60))
def test_backoff_is_full_jitter_below_the_exponential_ceiling(attempt, initial, cap):
    policy = RetryBudget(initial_backoff=initial, max_backoff=cap)
    wait = policy.wait(_state(attempt, AttemptResult(status=503, success=False)))
    assert 0 <= wait <= min(cap, initial * 2 ** (attempt - 1))


@given(retry_after=st.floats(0, 500), attempt=st.integers(1, 10))
def test_retry_after_is_honoured_within_the_time_budget(retry_after, attempt):
    policy = RetryBudget(max_seconds=120)
    wait = policy.wait(_state(attempt, AttemptResult(status=429, success=False, retry_after=retry_after)))
    assert wait >= min(retry_after, 120)


def test_transport_errors_and_retryable_statuses_are_retryable_results():
    assert AttemptResult(status=None, success=False, error="ConnectError").retryable
    assert AttemptResult(status=503, success=False).retryable
    assert not AttemptResult(status=400, success=False).retryable
    assert not AttemptResult(status=200, success=True).retryable


# Not HTTP delta-seconds (ASCII digits only); ``²`` made float() raise.
@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "\u00b9\u00b2", "\uff17", "Fri, 31 Dec 99999 23:59:59 GMT"])
def test_a_retry_after_of_non_ascii_digits_is_ignored(value):
    assert parse_retry_after(value, 1_800_000_000.0) is None


@given(st.text())
def test_parse_retry_after_never_raises(value):
    found = parse_retry_after(value, 1_800_000_000.0)
    assert found is None or found >= 0.0
