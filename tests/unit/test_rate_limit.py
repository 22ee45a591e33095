"""The per-profile rate limiter: never faster than its rate, slower while throttled, recovering after."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from services.dispatcher.rate_limit import AdaptiveRateLimiter, LearnedRateLimit


def _send_times(limiter: AdaptiveRateLimiter, arrivals: list[float]) -> list[float]:
    """When each request is sent if each caller waits what ``reserve`` says (callers queue in order)."""
    sent = []
    for arrival in arrivals:
        sent.append(arrival + limiter.reserve(arrival))
    return sent


@given(st.floats(0.5, 200), st.lists(st.floats(0, 5), min_size=2, max_size=200))
def test_requests_never_go_faster_than_the_rate(rate, gaps):
    arrivals, now = [], 0.0
    for gap in gaps:
        now += gap
        arrivals.append(now)
    sent = sorted(_send_times(AdaptiveRateLimiter(max_rate=rate), arrivals))
    for earlier, later in itertools.pairwise(sent):
        assert later - earlier >= 1 / rate - 1e-9


def test_a_burst_of_ten_at_5_per_second_takes_1_8_seconds():
    sent = _send_times(AdaptiveRateLimiter(max_rate=5), [0.0] * 10)
    assert sent[0] == 0.0
    assert abs(sent[-1] - 1.8) < 1e-9


def test_429s_halve_the_rate_down_to_a_floor_and_successes_bring_it_back():
    limiter = AdaptiveRateLimiter(max_rate=100)
    limiter.throttled()
    assert limiter.rate == 50
    for _ in range(20):
        limiter.throttled()
    assert limiter.rate == 5  # the floor: 5% of the configured rate
    for _ in range(9):
        limiter.succeeded()
    assert limiter.rate == 95
    limiter.succeeded()
    limiter.succeeded()
    assert limiter.rate == 100  # never above the configured rate


def _learned_after_traffic(requests_per_second: int, seconds: float = 2.0) -> tuple[LearnedRateLimit, float]:
    limit = LearnedRateLimit(window=2.0, release_after=5)
    now = 0.0
    for _ in range(int(requests_per_second * seconds)):
        assert limit.reserve(now) == 0.0  # no limit before the partner complains
        now += 1 / requests_per_second
    return limit, now


@given(st.integers(1, 1000))
def test_a_profile_without_a_rate_is_unlimited_until_a_429_then_half_the_rate_it_was_sent(observed):
    limit, now = _learned_after_traffic(observed)
    assert limit.rate is None
    limit.throttled()
    assert limit.rate is not None
    assert abs(limit.rate - max(10.0, observed) / 2) <= observed * 0.01 + 0.5
    sent = sorted(now + limit.reserve(now) for _ in range(20))
    for earlier, later in itertools.pairwise(sent):
        assert later - earlier >= 1 / limit.rate - 1e-9


def test_a_learned_limit_recovers_to_the_observed_rate_then_is_dropped():
    limit, _ = _learned_after_traffic(100)
    limit.throttled()
    limit.throttled()
    assert limit.rate == 25
    for _ in range(8):  # back up by a tenth of 100 per success: the 8th reaches 100
        limit.succeeded()
    assert limit.rate == 100
    for _ in range(3):
        limit.succeeded()
    assert limit.rate == 100  # at the observed rate: still limited, for release_after successes in a row
    limit.succeeded()
    assert limit.rate is None
    assert limit.reserve(10.0) == 0.0


def test_a_429_while_recovering_starts_the_clean_streak_again():
    limit, _ = _learned_after_traffic(100)  # release_after=5
    for _ in range(2):
        limit.throttled()
        assert limit.rate == 50
        for _ in range(8):  # back at 100 after 5, then 3 more: 4 in a row at the observed rate
            limit.succeeded()
        assert limit.rate == 100
    assert limit.rate == 100  # 8 at full rate in all, but never 5 in a row: still limited
