"""When an incremental definition's watermark moves after a successful run (pure rule)."""

from hypothesis import given
from hypothesis import strategies as st

from shared.domain.checkpoints import WatermarkMove, watermark_after_success

values = st.one_of(st.none(), st.integers(min_value=0, max_value=50))


def test_the_first_successful_run_sets_the_watermark():
    assert watermark_after_success(exists=False, current=None, since=None, until=10) == WatermarkMove(10)


def test_a_run_that_started_from_the_current_watermark_moves_it():
    assert watermark_after_success(exists=True, current=10, since=10, until=20) == WatermarkMove(20)


def test_a_run_that_started_before_another_succeeded_does_not_move_it_back():
    # Runs A (0, 10] and B (0, 15] start together; B succeeds first, then A must not set 10.
    assert watermark_after_success(exists=True, current=15, since=0, until=10) is None


def test_a_run_that_read_nothing_new_has_nothing_to_move():
    assert watermark_after_success(exists=True, current=10, since=10, until=None) is None


@given(exists=st.booleans(), current=values, since=values, until=values)
def test_deciding_twice_for_the_same_run_changes_nothing_the_second_time(exists, current, since, until):
    first = watermark_after_success(exists=exists, current=current, since=since, until=until)
    if first is None:
        return
    again = watermark_after_success(exists=True, current=first.value, since=since, until=until)
    assert again is None or again.value == first.value


@given(current=values, since=values, until=values)
def test_the_watermark_only_ever_takes_the_value_the_run_covered_up_to(current, since, until):
    move = watermark_after_success(exists=True, current=current, since=since, until=until)
    assert move is None or (move.value == until and current == since)
