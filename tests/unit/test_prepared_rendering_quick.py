"""The prepared renderer's quick path (issue 18, session 54): a request of a ``json_body`` template whose URL is
constant, rendered with its headers given (the dispatcher's one-member requests), renders its body alone, with the
budget handed over. It must make byte for byte the request of the full path, and of :func:`render_request`, and
refuse what they refuse with the same reason: whatever the members (missing columns, values orjson refuses, text a
header cannot carry), whatever the leaves (plain reads, filters run by the sandbox, ``$each``), within the byte cap or
over it.
"""

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain.render_budget import _ACTIVE, RenderBudget, RenderLimits
from shared.domain.rendering import prepare_request, render_request
from tests.unit.test_prepared_rendering import PROFILE, batch_of, outcome, template

COLUMNS = ["id", "name", "tier"]
LEAVES = st.one_of(
    st.sampled_from([f"{{{{ member.{column} }}}}" for column in COLUMNS]),
    st.sampled_from(["id-{{ member.id }}", "{{ member.name }}/{{ member.tier }}", "{{ run.id }}"]),
    st.sampled_from(["{{ run.batch_index }}", "{{ member.name | upper }}", "{{ member.id + 1 }}"]),
    st.sampled_from(["{{ members | length }}", "{{ member.nope }}"]),
    st.sampled_from(["constant", 7, None, True, [1, "two"], {"k": "v"}]),
)
STRUCTURES = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), LEAVES, min_size=1, max_size=4),
    st.builds(lambda leaf: {"outer": {"inner": leaf, "list": [leaf, "x"]}}, LEAVES),
    st.just({"members": {"$each": "members", "columns": COLUMNS}}),
    st.just({"all": {"$each": "members", "as": "m", "item": {"n": "{{ m.name }}", "i": "{{ m.id }}"}}}),
)
VALUES = st.one_of(
    st.integers(-5, 10**20),  # beyond 64 bits: orjson refuses, json writes it
    st.text(max_size=12),
    st.sampled_from(["Ann", "a\r\nb", 'Zoé "Z" <&>', "\ud800", "x" * 60]),
    st.none(),
    st.lists(st.integers(0, 3), max_size=2),
)
MEMBERS = st.dictionaries(st.sampled_from(COLUMNS), VALUES, max_size=3)  # a column may be missing
HEADERS = {"Content-Type": "application/json", "Idempotency-Key": "run:0-1", "X-Api-Key": "k"}


def full_path(prepared: Any, members: list[dict[str, Any]], headers: dict[str, str]) -> Any:
    """The same prepared request, its quick path turned off: the full path's outcome."""
    quick = prepared._quick
    prepared._quick = None
    try:
        return outcome(prepared.render, members, None, headers)
    finally:
        prepared._quick = quick


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structure=STRUCTURES, members=st.lists(MEMBERS, min_size=1, max_size=3), max_bytes=st.sampled_from([10**6, 40]))
def test_the_quick_path_makes_the_full_path_s_and_render_request_s_requests(structure, members, max_bytes):
    tmpl = template({"path": "/members", "batch_size": 1, "json_body": structure})
    limits = RenderLimits(max_bytes=max_bytes)
    batch = batch_of(members)
    prepared = prepare_request(tmpl, PROFILE, batch, limits)
    assert prepared._quick is not None  # the path under test is the one taken
    for member in members:
        part = [member]
        quick = outcome(prepared.render, part, None, HEADERS)
        assert quick == full_path(prepared, part, HEADERS)
        expected = outcome(render_request, tmpl, PROFILE, batch.model_copy(update={"members": part}), limits)
        if isinstance(expected, tuple):
            assert quick == expected  # the same refusal, with the same reason
        else:
            assert quick.method == expected.method
            assert quick.url == expected.url
            assert quick.content == expected.content
            assert quick.headers is HEADERS  # the headers given, carried as they are
        assert _ACTIVE.get() is None  # the budget is left, failed or not


def test_the_quick_path_renders_within_the_budget_it_is_given():
    # A filter runs in the sandbox: its steps are counted on the caller's budget, whose clock they start.
    tmpl = template({"path": "/members", "batch_size": 1, "json_body": {"n": "{{ member.name | upper }}"}})
    prepared = prepare_request(tmpl, PROFILE, batch_of([{"name": "ann"}]))
    budget = RenderBudget(RenderLimits())
    assert prepared.render([{"name": "ann"}], budget, HEADERS).content == b'{"n":"ANN"}'
    assert budget.started is not None


def test_a_template_with_an_expression_in_its_path_or_a_text_body_takes_the_full_path():
    member_path = template({"path": "/m/{{ member.id }}", "batch_size": 1, "json_body": {"a": "{{ member.id }}"}})
    text_body = template({"path": "/m", "batch_size": 1, "body": '{"a": {{ member.id }}}'})
    for tmpl in (member_path, text_body):
        prepared = prepare_request(tmpl, PROFILE, batch_of([{"id": 1}]))
        assert prepared._quick is None
        assert (
            prepared.render([{"id": 1}], None, HEADERS).content
            == render_request(tmpl, PROFILE, batch_of([{"id": 1}])).content
        )
