"""A batch's prepared renderer (``rendering.PreparedRequest``) makes the requests :func:`render_request` makes.

The dispatcher renders each slice of a batch (one member a request when the batch size is 1) with the batch's
prepared renderer: same URL, headers and bytes, and the same refusal with the same reason, whatever the members
and whether the path, query string and headers are constant, read the run or read the members.
"""

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.domain.body_types import BodyType
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.domain.rendering import (
    RenderedRequest,
    RenderLimits,
    TemplateRenderError,
    prepare_request,
    render_request,
)
from shared.events import MemberBatch

PROFILE = ConnectionProfile(name="p", base_url="https://api.example.com/base/")
PATHS = [
    "/members",
    "/members/{{ member.id }}",
    "/runs/{{ run.id }}/{{ run.batch_index }}",
    "/{{ member.name }}",
    "/{% if member.id is defined %}m/{{ member.id }}{% endif %}",
    "/a b/../c",  # constant, refused by the path check
    "/{{ member.nope }}",  # undefined for every member
    "/{{ member.name",  # does not parse
    "/" + "x" * 40,  # constant, over a small byte cap
]
QUERIES: list[dict[str, str]] = [{}, {"a": "1"}, {"q": "{{ member.name }}", "b": "2"}, {"run": "{{ run.definition }}"}]
HEADER_VALUES = [
    "application/json",
    "{{ run.id }}",
    "{{ member.name }}",  # refused for a member whose name holds a line break
    "a\r\nX-Injected: 1",  # constant and refused (a template saved before the rule)
    "v" * 40,
]
HEADER_NAMES = ["X-A", "X-B", "Content-Type", "content-type"]
BODIES: list[dict[str, Any]] = [
    {},
    {"json_body": {"id": "{{ member.id }}", "name": "{{ member.name }}", "run": "{{ run.id }}"}},
    {"json_body": {"all": {"$each": "members", "as": "m", "value": {"n": "{{ m.name }}"}}}},
    {"body": '{"name": "{{ member.name }}", "n": {{ members | length }}}'},
    {"body": "{{ member.name }}"},  # invalid JSON unless the name is a number
    {"content_type": BodyType.FORM, "form": {"id": "{{ member.id }}", "name": "{{ member.name }}"}},
    {"content_type": BodyType.XML, "body": "<m>{{ member.name }}</m>\n"},
    {"content_type": BodyType.TEXT, "body": "{{ member.name }}\n"},
]
NAMES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["Ann", "a\r\nb", 'Zoé "Z" <&>', "../x", "\ud800", "12", "x" * 50]),
)
MEMBER = st.fixed_dictionaries({"id": st.integers(-5, 10**20), "name": NAMES})


def template(fields: dict[str, Any]) -> HttpTemplate:
    """The template; one the rules refuse today as a template saved before them (as the catalog may hold)."""
    try:
        return HttpTemplate(name="t", query="q", profile="p", **fields)
    except ValidationError:
        return HttpTemplate.model_construct(name="t", query="q", profile="p", **fields)


def outcome(make: Any, *args: Any) -> RenderedRequest | tuple[str, str]:
    """The request, or the exception's type and message (any exception: both paths must raise the same)."""
    try:
        return make(*args)
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return (type(exc).__name__, str(exc))


def batch_of(members: list[dict[str, Any]]) -> MemberBatch:
    run = uuid.UUID("11111111-1111-1111-1111-111111111111")
    return MemberBatch(run_id=run, definition="d", template="t", batch_index=3, members=members)


def assert_same_requests(fields: dict[str, Any], members: list[dict[str, Any]], limits: RenderLimits) -> None:
    """Each member alone, then the whole batch: the prepared renderer's outcome is render_request's."""
    tmpl = template(fields)
    batch = batch_of(members)
    prepared = prepare_request(tmpl, PROFILE, batch, limits)
    slices = [members[index : index + 1] for index in range(len(members))] + [batch.members]
    for part in slices:
        expected = outcome(render_request, tmpl, PROFILE, batch.model_copy(update={"members": part}), limits)
        assert outcome(prepared.render, part) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(PATHS),
    query=st.sampled_from(QUERIES),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES), max_size=3),
    body=st.sampled_from(BODIES),
    members=st.lists(MEMBER, max_size=3),
    max_bytes=st.sampled_from([5_000_000, 30]),
)
def test_the_prepared_renderer_makes_the_requests_render_request_makes(path, query, headers, body, members, max_bytes):
    fields = {"path": path, "query_string": query, "headers": headers, "batch_size": 1, **body}
    assert_same_requests(fields, members, RenderLimits(max_bytes=max_bytes))


@pytest.mark.parametrize(
    "fields",
    [
        {"path": "/members", "headers": {"X-Tenant": "acme"}},
        {"path": "/members/{{ member.id }}", "query_string": {"v": "2"}, "headers": {"X-Run": "{{ run.id }}"}},
        {"path": "/a b/../c"},
        {"path": "/members", "headers": {"X-Bad": "a\r\nX-Injected: 1"}},
        {"path": "/members", "headers": {"X-Name": "{{ member.name }}"}},
    ],
)
def test_constant_and_member_parts_render_alike_for_hostile_members(fields):
    members = [{"id": 1, "name": "Ann"}, {"id": 2, "name": "a\r\nX-Injected: 1"}, {"id": 3, "name": "../../admin"}]
    assert_same_requests({**fields, "json_body": {"id": "{{ member.id }}"}}, members, RenderLimits())


def test_a_constant_header_with_a_line_break_is_refused_for_each_request_with_render_requests_reason():
    tmpl = template({"path": "/members", "headers": {"X-Bad": "a\r\nX-Injected: 1"}})
    prepared = prepare_request(tmpl, PROFILE, batch_of([{"id": 1}]))  # nothing refused while preparing
    with pytest.raises(TemplateRenderError, match="template header X-Bad: the rendered value"):
        prepared.render([{"id": 1}])


def test_a_member_value_in_the_path_is_one_url_encoded_segment():
    prepared = prepare_request(template({"path": "/m/{{ member.name }}"}), PROFILE, batch_of([{"name": "a/../b?c"}]))
    assert prepared.render([{"name": "a/../b?c"}]).url == "https://api.example.com/base/m/a%2F..%2Fb%3Fc"


def test_a_batchs_json_body_is_compiled_once_for_all_its_one_member_requests(monkeypatch: pytest.MonkeyPatch):
    from shared.domain import json_structure, rendering

    template = HttpTemplate(name="t", query="q", profile="p", batch_size=1, json_body={"id": "{{ member.id }}"})
    members = [{"id": n} for n in range(64)]
    batch = MemberBatch(run_id=uuid.uuid4(), definition="d", template="t", batch_index=0, members=members)
    calls: list[object] = []
    real = json_structure.compiled

    def counting(structure: Any) -> json_structure.Program:
        calls.append(structure)
        return real(structure)

    monkeypatch.setattr(json_structure, "compiled", counting)
    monkeypatch.setattr(rendering, "compiled", counting, raising=False)  # not imported there before
    prepared = prepare_request(template, PROFILE, batch)
    bodies = [prepared.render([member]).content for member in batch.members]
    assert bodies == [b'{"id":%d}' % n for n in range(64)]
    assert len(calls) == 1  # once a batch, not once a request


def test_a_json_body_that_does_not_compile_is_refused_for_each_request_with_render_requests_reason():
    template = HttpTemplate.model_construct(
        **{**HttpTemplate(name="t", query="q", profile="p", batch_size=1).model_dump(), "json_body": {"$each": 1}}
    )
    members = [{"id": 1}, {"id": 2}]
    batch = MemberBatch(run_id=uuid.uuid4(), definition="d", template="t", batch_index=0, members=members)
    prepared = prepare_request(template, PROFILE, batch)
    for member in batch.members:
        part = batch.model_copy(update={"members": [member]})
        with pytest.raises(TemplateRenderError) as expected:
            render_request(template, PROFILE, part)
        with pytest.raises(TemplateRenderError) as got:
            prepared.render([member])
        assert str(got.value) == str(expected.value)
