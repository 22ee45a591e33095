"""What the prepared renderer (``rendering.prepare_request``) must keep beyond byte-identical requests
(``test_prepared_rendering.py``): a fresh render budget a request, reset after failures; header order; the same
checks of constant header and query parts; requests rendered from threads and through the dispatcher's
``Renderer`` (inline or offloaded) equal to ``render_request``'s."""

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.dispatcher.render_offload import Renderer
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.domain.render_budget import _ACTIVE, RenderLimits
from shared.domain.rendering import TemplateRenderError, prepare_request, render_request
from shared.events import MemberBatch

PROFILE = ConnectionProfile(name="p", base_url="https://api.example.com/base/")


def batch_of(members):
    return MemberBatch(run_id=uuid.UUID(int=1), definition="d", template="t", batch_index=3, members=members)


def tmpl(**fields):
    try:
        return HttpTemplate(name="t", query="q", profile="p", batch_size=1, **fields)
    except Exception:  # noqa: BLE001 - an invalid template built without validation, on purpose
        return HttpTemplate.model_construct(name="t", query="q", profile="p", batch_size=1, **fields)


def test_the_render_budget_is_reset_after_a_failed_and_a_successful_request():
    t = tmpl(path="/{{ member.nope }}", json_body={"a": "{{ member.id }}"})
    p = prepare_request(t, PROFILE, batch_of([{"id": 1}]))
    with pytest.raises(TemplateRenderError):
        p.render([{"id": 1}])
    assert _ACTIVE.get() is None
    ok = prepare_request(tmpl(path="/m", json_body={"a": "{{ member.id }}"}), PROFILE, batch_of([{"id": 1}]))
    ok.render([{"id": 1}])
    assert _ACTIVE.get() is None


def test_headers_come_in_render_request_s_order():
    t = tmpl(
        path="/m",
        headers={"X-B": "b", "X-A": "{{ member.id }}", "Content-Type": "application/json", "X-C": "c"},
        json_body={"a": "1"},
    )
    b = batch_of([{"id": 1}])
    assert list(prepare_request(t, PROFILE, b).render(b.members).headers.items()) == list(
        render_request(t, PROFILE, b).headers.items()
    )


def test_each_request_has_a_budget_of_its_own():
    # ~450 bytes built per render, ceiling 8*100=800: a budget shared between requests fails the 2nd render.
    body = "{% for i in range(5) %}{% set s = 'x' * 90 %}{% endfor %}{\"n\": {{ member.id }}}"
    t = tmpl(path="/m", body=body)
    members = [{"id": i} for i in range(5)]
    b = batch_of(members)
    p = prepare_request(t, PROFILE, b, RenderLimits(max_bytes=100))
    for m in members:
        assert p.render([m]) == render_request(
            t, PROFILE, b.model_copy(update={"members": [m]}), RenderLimits(max_bytes=100)
        )


@pytest.mark.parametrize("value", ["a\tb", "a\x7fb", "a\x00b", " lead", "a\nb", "é"])
def test_a_constant_header_value_is_checked_as_render_request_checks_it(value):
    t = tmpl(path="/m", headers={"X-A": value}, json_body={"a": "1"})
    b = batch_of([{"id": 1}])

    def out(f, *a):
        try:
            return f(*a)
        except Exception as e:  # noqa: BLE001 - compared, not handled
            return (type(e).__name__, str(e))

    assert out(prepare_request(t, PROFILE, b).render, b.members) == out(render_request, t, PROFILE, b)


def test_one_prepared_request_rendered_from_threads_gives_render_request_s_requests():
    t = tmpl(
        path="/m/{{ member.id }}",
        query_string={"r": "{{ run.batch_index }}", "k": "1"},
        headers={"X-N": "{{ member.name }}", "X-K": "k"},
        json_body={"n": "{{ member.name }}"},
    )
    members = [{"id": i, "name": f"n{i}"} for i in range(200)]
    b = batch_of(members)
    p = prepare_request(t, PROFILE, b)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda m: p.render([m]), members))
    assert got == [render_request(t, PROFILE, b.model_copy(update={"members": [m]})) for m in members]


def test_the_dispatcher_s_renderer_renders_a_whole_batch_and_its_slices_as_render_request():
    t = tmpl(path="/m/{{ member.id }}", json_body={"n": "{{ members | length }}"})
    members = [{"id": i} for i in range(3)]
    b = batch_of(members)
    r = Renderer()
    p = r.prepare(t, PROFILE, b)

    async def go():
        return [await r.render(p, b.members), await r.render(p, b.members[1:2]), await r.render(p, b.members[1:2])]

    whole, part, part2 = asyncio.run(go())
    assert whole == render_request(t, PROFILE, b)
    assert part == part2 == render_request(t, PROFILE, b.model_copy(update={"members": members[1:2]}))


@pytest.mark.parametrize("path", ["/m", "/m/{{ member.id }}", "/a b/../c"])
@pytest.mark.parametrize("query", [{"a": "y" * 40}, {"a": "{{ member.id }}", "b": "y" * 40}, {"a": "a&b=c d"}])
def test_a_constant_query_over_the_cap_or_needing_encoding_fails_or_encodes_as_render_request(path, query):
    # Not in the hypothesis test's QUERIES: a constant query value over the byte cap, and one needing encoding.
    t = tmpl(path=path, query_string=query, json_body={"a": "1"})
    b = batch_of([{"id": 1}])
    lim = RenderLimits(max_bytes=30)

    def out(f, *a):
        try:
            return f(*a)
        except Exception as e:  # noqa: BLE001 - compared, not handled
            return (type(e).__name__, str(e))

    assert out(prepare_request(t, PROFILE, b, lim).render, b.members) == out(render_request, t, PROFILE, b, lim)
