"""The per-profile rate limiter: never faster than its rate, slower while throttled, recovering after."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from services.dispatcher.rate_limit import AdaptiveRateLimiter


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
