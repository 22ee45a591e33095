"""The guard against mass removals (``sync.max_removed``): the setting's forms, its exact arithmetic, the reason a
refused run gives, and the pass over the query's keys, against plain reference models."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.extractor.removal_guard import removals_over_limit
from shared.cli.parser import build_parser
from shared.cli.variables import parse_assignments
from shared.domain.change_index import ChangeIndex, MemberState
from shared.domain.checkpoints import RunSync
from shared.domain.member_hashes import key_hash
from shared.domain.removal_limit import RemovalLimit, refusal_reason
from shared.domain.sync_mode import Sync, SyncMode, sync_problems

PERCENTS = st.decimals(min_value=0, max_value=100, places=2).map(lambda d: f"{d}%")
COUNTS = st.integers(min_value=0, max_value=10**9)


@pytest.mark.parametrize(
    ("written", "saved"),
    [
        ("10%", "10%"),
        (" 12.5 % ", "12.5%"),
        ("0%", "0%"),
        ("100%", "100%"),
        (5000, 5000),
        (5000.0, 5000),
        (0, 0),
        (None, None),
    ],
)
def test_a_share_or_a_count_is_saved(written, saved):
    assert Sync.model_validate({"mode": "changes", "max_removed": written}).max_removed == saved


@pytest.mark.parametrize(
    "written", ["10", "ten", "101%", "100.5%", "-1%", "1e1%", "٣%", "10%\n", -1, 2.5, True, [], {}]
)
def test_anything_else_is_refused_naming_the_field(written):
    with pytest.raises(ValidationError) as refused:
        Sync.model_validate({"mode": "changes", "max_removed": written})
    assert [error["loc"] for error in refused.value.errors()] == [("max_removed",)]


@pytest.mark.parametrize("written", ["10%", "12.5%", "0%", 5000, 0, None])
def test_a_change_runs_bound_is_kept_in_its_checkpoint_as_written(written):
    """A run's bound as at its first start, in its checkpoint's sync JSON (null: the default, 50%)."""
    limit = Sync.model_validate({"mode": "changes", "max_removed": written}).removal_limit
    stored = json.loads(json.dumps(RunSync(SyncMode.CHANGES, full_scope=True, removal_limit=limit).as_json()))
    assert stored["max_removed"] == written
    kept = RunSync.of_json(stored)
    assert kept is not None
    assert kept.removal_limit == limit
    assert kept.removal_limit.allowed(1000) == limit.allowed(1000)
    # A run recorded before its bound was: none (its definition's, fixed at its next handling).
    assert RunSync.of_json({k: v for k, v in stored.items() if k != "max_removed"}) == replace(kept, removal_limit=None)


def test_the_setting_is_refused_outside_change_mode():
    problems = sync_problems(Sync.model_validate({"max_removed": "10%"}), incremental=False)
    assert problems == [
        "field 'sync.max_removed': the bound on removals applies to sync mode 'changes' only "
        "(set 'sync.mode: changes', or remove it)"
    ]


@given(percent=PERCENTS, delivered=st.integers(min_value=0, max_value=10**12), removed=st.integers(min_value=0))
def test_a_share_is_exceeded_exactly_when_removed_over_it_as_a_fraction(percent, delivered, removed):
    limit = RemovalLimit.of(percent)
    share = Fraction(percent[:-1])
    assert limit.exceeded(removed, delivered) == (Fraction(removed) > delivered * share / 100)
    assert 0 <= limit.allowed(delivered) <= delivered
    assert limit.exceeded(limit.allowed(delivered) + 1, delivered)
    assert not limit.exceeded(limit.allowed(delivered), delivered)


@given(count=COUNTS, delivered=st.integers(min_value=0, max_value=10**12), removed=st.integers(min_value=0))
def test_a_count_is_exceeded_when_more_are_removed(count, delivered, removed):
    assert RemovalLimit.of(count).exceeded(removed, delivered) == (removed > count)


@given(delivered=st.integers(min_value=0, max_value=10**9))
def test_nothing_removed_is_never_over_and_100_percent_never_refuses(delivered):
    assert not RemovalLimit.of("0%").exceeded(0, delivered)
    assert RemovalLimit.of("100%").never_exceeded(delivered)
    assert not RemovalLimit.of("100%").exceeded(delivered, delivered)


def test_the_default_is_half_of_the_partners_members():
    limit = Sync().removal_limit
    assert (limit.default, limit.allowed(1000), limit.allowed(1001), limit.allowed(1)) == (True, 500, 500, 0)
    assert (limit.exceeded(500, 1000), limit.exceeded(501, 1000)) == (False, True)
    assert limit.allowed(1000) == RemovalLimit.of("50%").allowed(1000)
    assert Fraction(1000) * Fraction("0.1") / 100 == RemovalLimit.of("0.1%").allowed(1000) == 1  # not 1.0000000002


def test_the_reason_names_the_counts_the_setting_what_was_sent_and_the_ways_through():
    reason = refusal_reason(Sync().removal_limit, removed=918, delivered=1020, definition="sync-members")
    assert reason == (
        "mass removal refused: the run would remove 918 of the 1020 members the partner has (90.0%), over "
        "sync.max_removed 50% (the default), at most 510: nothing was sent and the snapshot is unchanged. Check the "
        "query and its parameters; if the removals are right, run it once with 'exportctl run sync-members "
        '--allow-mass-removal\' (API: "allow_mass_removal": true), or raise sync.max_removed'
    )
    late = refusal_reason(RemovalLimit.of(100), removed=101, delivered=200, definition="d", sent=7)
    assert "over sync.max_removed 100, at most 100: its removals were not sent (its 7 added and changed " in late


PARAMETER_VALUES = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12),
    st.integers(),
    st.booleans(),
    st.sampled_from(["it's", 'say "hi"', "$HOME", "`id`", "a\\b", "50%", "2026-01-01T00:00:00+00:00"]),
)


@settings(max_examples=100, deadline=None)  # a shell a case: its start-up time varies on a busy machine
@given(parameters=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), PARAMETER_VALUES, max_size=4))
def test_the_way_through_is_the_refused_run_again_its_parameters_included(parameters):
    reason = refusal_reason(RemovalLimit.of(10), removed=11, delivered=20, definition="d-1", parameters=parameters)
    command = reason.split("run it once with '")[1].split("' (API: ")[0]
    args = build_parser().parse_args(_words(command)[1:])
    given_back = parse_assignments(args.param, "--param")
    assert (args.definition, args.allow_mass_removal) == ("d-1", True)
    assert given_back == {name: v if isinstance(v, str) else json.dumps(v) for name, v in parameters.items()}
    api = json.loads(reason.split("(API: ")[1].rsplit("), or raise", 1)[0] if parameters else "{}")
    assert api == ({"parameters": parameters, "allow_mass_removal": True} if parameters else {})


def _words(command: str) -> list[str]:
    """The words a POSIX shell makes of ``command`` (as an operator pasting it would run it)."""
    script = f"set -- {command}; printf '%s\\0' \"$@\""
    done = subprocess.run(["sh", "-c", script], capture_output=True, check=True)
    return done.stdout.decode().split("\0")[:-1]


# --- the pass over the query's keys ---------------------------------------------------------------------------

SNAPSHOT_STATES = st.sampled_from([MemberState.DELIVERED, MemberState.UNDELIVERED])


@settings(max_examples=200, deadline=None)
@given(
    snapshot=st.dictionaries(st.integers(0, 300), SNAPSHOT_STATES, max_size=80),
    selected=st.lists(st.integers(0, 400), max_size=120),
    page_size=st.integers(1, 30),
    limit=st.one_of(PERCENTS, st.integers(0, 90)).map(RemovalLimit.of),
)
# A key the query selects twice (a key column that is not unique) keeps one member, not two.
@example(dict.fromkeys(range(4), MemberState.DELIVERED), [1, 1, 1], 3, RemovalLimit.of("50%"))
def test_the_pass_refuses_exactly_the_runs_that_would_remove_too_many(snapshot, selected, page_size, limit):
    keys = sorted(snapshot)
    index = ChangeIndex.build(
        np.array([key_hash(str(k)) for k in keys], dtype=np.int64),
        np.zeros(len(keys), dtype=np.int64),
        np.array([int(snapshot[k]) for k in keys], dtype=np.int8),
    )
    pages = [selected[i : i + page_size] for i in range(0, len(selected), page_size)]
    read: list[list[int]] = []

    def reading():
        for page in pages:
            read.append(page)
            yield page

    # The reference: the partner's members (delivered ones) the selection leaves out.
    delivered = {k for k, state in snapshot.items() if state is MemberState.DELIVERED}
    removed = len(delivered - set(selected))
    expected = removed if limit.exceeded(removed, len(delivered)) else None
    assert removals_over_limit(index, limit, reading()) == expected
    assert not index.seen.any(), "the run's pages mark what they see, not the guard"
    if expected is not None:
        assert read == pages, "a refusal counts every key"
    else:
        # Read only until the limit cannot be reached: the pages before the last one read still could.
        for stop in range(len(read) - 1):
            seen = delivered & {k for page in read[: stop + 1] for k in page}
            assert len(delivered) - len(seen) > limit.allowed(len(delivered))
