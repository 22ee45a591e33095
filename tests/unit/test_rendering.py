import json
import uuid
from urllib.parse import urlencode

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.domain.rendering import RenderLimits, TemplateRenderError, render_request
from shared.events import MemberBatch

PROFILE = ConnectionProfile(name="p", base_url="https://api.example.com/base/")
RUN_ID = uuid.UUID("11111111-1111-1111-1111-111111111111")
BATCH = MemberBatch(
    run_id=RUN_ID,
    definition="d",
    template="t",
    batch_index=2,
    members=[{"id": 1, "email": "a@example.com", "name": 'Zoé "Z"'}, {"id": 2, "email": "b@x.io"}],
)


def template(**fields) -> HttpTemplate:
    return HttpTemplate(name="t", query="q", profile="p", **fields)


def test_without_a_body_the_batch_is_sent_as_a_json_array():
    request = render_request(template(path="/members"), PROFILE, BATCH)
    assert request.method == "POST"
    assert request.url == "https://api.example.com/base/members"
    assert json.loads(request.content) == BATCH.members
    assert request.headers["Content-Type"] == "application/json"


def test_body_path_and_headers_see_members_and_run_metadata():
    request = render_request(
        template(
            method="PUT",
            path="/members/{{ member.id }}",
            headers={"X-Run": "{{ run.id }}"},
            body='{"batch": {{ run.batch_index }}, "emails": {{ members | map(attribute="email") | list | tojson }}}',
        ),
        PROFILE,
        BATCH,
    )
    assert request.url.endswith("/members/1")
    assert request.headers["X-Run"] == str(RUN_ID)
    assert json.loads(request.content) == {"batch": 2, "emails": ["a@example.com", "b@x.io"]}


def test_tojson_escapes_quotes_in_member_values():
    request = render_request(template(body="{{ member | tojson }}"), PROFILE, BATCH)
    assert json.loads(request.content)["name"] == 'Zoé "Z"'


def test_a_body_that_is_not_json_names_the_line_and_the_reason():
    with pytest.raises(TemplateRenderError, match="invalid JSON at line 2"):
        render_request(template(body='{\n"id": {{ member.email }}\n}'), PROFILE, BATCH)


def test_an_unknown_variable_is_an_error_not_an_empty_string():
    with pytest.raises(TemplateRenderError, match="undefined"):
        render_request(template(body="{{ nothing.here }}"), PROFILE, BATCH)


def test_the_sandbox_refuses_python_internals():
    with pytest.raises(TemplateRenderError):
        render_request(template(body="{{ members.__class__.__mro__ }}"), PROFILE, BATCH)


def test_an_unknown_column_piped_into_a_filter_is_a_clear_error_not_a_crash():
    template = HttpTemplate(name="t", query="q", profile="p", body='{"nick": {{ member.nickname | tojson }}}')
    profile = ConnectionProfile(name="p", base_url="https://api.example.com")
    batch = MemberBatch(run_id=uuid.uuid4(), definition="d", template="t", batch_index=0, members=[{"id": 1}])
    with pytest.raises(TemplateRenderError, match="is the column in the query"):
        render_request(template, profile, batch)


def test_query_string_values_are_rendered_and_url_encoded():
    request = render_request(
        template(
            path="/members?source=export",
            query_string={"email": "{{ member.email }}", "name": "{{ member.name }}", "run": "{{ run.id }}"},
        ),
        PROFILE,
        BATCH,
    )
    assert request.url == (
        f"https://api.example.com/base/members?source=export&email=a%40example.com&name=Zo%C3%A9+%22Z%22&run={RUN_ID}"
    )


def test_a_query_string_value_that_does_not_render_names_the_parameter():
    with pytest.raises(TemplateRenderError, match="query_string tier"):
        render_request(template(query_string={"tier": "{{ member.tier }}"}), PROFILE, BATCH)


@pytest.mark.parametrize(
    "source",
    [
        "/members",
        "/members\n",
        "/a\r\nb",
        "/a\rb\n\n",
        "{# a comment #}/members",
        "{% raw %}/{{ member.id }}{% endraw %}",
    ],
)
def test_a_part_without_values_is_sent_as_jinja_renders_it(source):
    # Parts that hold text only are not rendered again for every request: what is sent must stay what Jinja
    # writes for them (its newline handling, comments dropped, raw blocks kept as text).
    expected = ImmutableSandboxedEnvironment().from_string(source).render()
    request = render_request(template(path="/x", query_string={"q": source}), PROFILE, BATCH)
    assert request.url == "https://api.example.com/base/x?" + urlencode({"q": expected})


def test_a_header_without_values_is_sent_as_written():
    request = render_request(template(path="/x", headers={"Accept": "application/json"}), PROFILE, BATCH)
    assert request.headers["Accept"] == "application/json"


def test_a_part_without_values_is_held_to_the_byte_cap_like_any_other():
    limits = RenderLimits(max_bytes=20)
    with pytest.raises(TemplateRenderError, match="query_string q: rendered more than 20 bytes"):
        render_request(template(path="/x", query_string={"q": "é" * 11}), PROFILE, BATCH, limits)
    request = render_request(template(path="/x", query_string={"q": "é" * 10}), PROFILE, BATCH, limits)
    assert request.url == "https://api.example.com/base/x?" + urlencode({"q": "é" * 10})


@pytest.mark.parametrize(
    ("path", "query_string", "expected"),
    [
        # constant path and query: the prepared request's URL, built once
        ("/members", {}, "https://api.example.com/v1/members?region=eu"),
        ("/members", {"source": "export"}, "https://api.example.com/v1/members?region=eu&source=export"),
        # a value in the path: rendered a request
        ("/members/{{ member.id }}", {}, "https://api.example.com/v1/members/1?region=eu"),
        # a value in the query string: rendered a request
        ("/members", {"id": "{{ member.id }}"}, "https://api.example.com/v1/members?region=eu&id=1"),
        ("/", {}, "https://api.example.com/v1/?region=eu"),
    ],
)
def test_a_base_url_holding_a_query_gets_the_path_before_its_query(path, query_string, expected):
    """Before, the path went after the base URL's query (``…/v1?region=eu/members``): a URL no partner reads."""
    from shared.domain.rendering import prepare_request

    profile = ConnectionProfile(name="p", base_url="https://api.example.com/v1/?region=eu")
    one = MemberBatch(run_id=RUN_ID, definition="d", template="t", batch_index=0, members=[{"id": 1}])
    made = template(path=path, query_string=query_string)
    assert render_request(made, profile, one).url == expected
    assert prepare_request(made, profile, one).render([{"id": 1}]).url == expected
    assert prepare_request(made, profile, one).render([{"id": 1}], headers={}).url == expected
