"""Issue 12 (3, 4, 5, 6, 12c): member data cannot reshape a request, nor a template exhaust the renderer.

Each test renders as the dispatcher does (``render_request``), or validates as every save does
(``HttpTemplate``), and asserts what a partner or an operator would see.
"""

import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import yaml
from pydantic import ValidationError

from services.dispatcher.settings import DispatcherSettings
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.domain.rendering import RenderLimits, TemplateRenderError, render_request
from shared.events import MemberBatch

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ConnectionProfile(name="p", base_url="https://api.example.com/base")
#: Small bounds, so that a runaway template is stopped within a test's patience.
TIGHT = RenderLimits(timeout_seconds=0.2, max_bytes=100_000)


def template(**fields) -> HttpTemplate:
    return HttpTemplate(name="t", query="q", profile="p", **fields)


def batch(*members: dict[str, Any]) -> MemberBatch:
    return MemberBatch(run_id=uuid.uuid4(), definition="d", template="t", batch_index=0, members=list(members))


# --- 4. Rendered values cannot rewrite the request target --------------------------------------------


@pytest.mark.parametrize("value", ["../../admin/delete?all=1#", "%2e%2e/", "1?admin=true&x=", "a/b", "x\r\nHost: evil"])
def test_a_path_value_is_one_segment_of_the_templates_path(value):
    request = render_request(template(path="/v1/members/{{ member.ref }}"), PROFILE, batch({"ref": value}))
    target = urlsplit(request.url)
    assert target.path == "/base/v1/members/" + quote(value, safe="")
    assert (target.query, target.fragment) == ("", "")


@pytest.mark.parametrize("value", ["..", "."])
def test_a_path_value_that_is_a_dot_segment_is_refused(value):
    with pytest.raises(TemplateRenderError, match=f"template path: the rendered path has a '{value}' segment"):
        render_request(template(path="/v1/members/{{ member.ref }}/orders"), PROFILE, batch({"ref": value}))


def test_a_path_value_after_the_templates_question_mark_stays_one_query_value():
    request = render_request(
        template(path="/members?email={{ member.email }}&source=loyalty"),
        PROFILE,
        batch({"email": "a@x.io&admin=true#"}),
    )
    assert parse_qs(urlsplit(request.url).query) == {"email": ["a@x.io&admin=true#"], "source": ["loyalty"]}


def test_query_string_values_cannot_add_parameters():
    request = render_request(
        template(path="/members", query_string={"email": "{{ member.email }}"}),
        PROFILE,
        batch({"email": "a&admin=1#x"}),
    )
    assert parse_qs(urlsplit(request.url).query) == {"email": ["a&admin=1#x"]}


def test_a_path_with_a_control_character_is_refused_when_saved():
    with pytest.raises(ValidationError, match=r"(?s)path.*control character"):
        template(path="/members\r\nX-Evil: 1")


# --- 3. Header values HTTP cannot carry are refused with the reason, when rendered --------------------


def test_a_non_ascii_header_value_is_refused_naming_the_header_and_the_way_out():
    with pytest.raises(TemplateRenderError) as refused:
        render_request(
            template(headers={"X-First-Name": "{{ member.first_name }}"}), PROFILE, batch({"first_name": "Amélie"})
        )
    assert str(refused.value) == (
        "template header X-First-Name: the rendered value has a non-ASCII character ('é') at position 2: header "
        "values are ASCII (RFC 9110, section 5.5); encode it in the template, e.g. with | urlencode"
    )


def test_a_header_value_encoded_in_the_template_is_sent():
    request = render_request(
        template(headers={"X-First-Name": "{{ member.first_name | urlencode }}"}),
        PROFILE,
        batch({"first_name": "Amélie"}),
    )
    assert request.headers["X-First-Name"] == "Am%C3%A9lie"


def test_a_line_break_in_a_header_value_is_refused():
    with pytest.raises(TemplateRenderError, match=r"template header X-Ref: the rendered value has a line break"):
        render_request(template(headers={"X-Ref": "{{ member.ref }}"}), PROFILE, batch({"ref": "1\r\nHost: evil"}))


def test_a_templates_own_content_type_is_the_only_one_sent_whatever_its_case():
    request = render_request(template(headers={"content-type": "application/vnd.api+json"}), PROFILE, batch({"id": 1}))
    assert [name for name in request.headers if name.lower() == "content-type"] == ["content-type"]


# --- 5. Templates may not set framing or identity headers ---------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Host", "transfer-encoding", "CONTENT-LENGTH", "Connection", "authorization", "Proxy-Authorization",
        "cookie", "Idempotency-Key", "webhook-id", "Webhook-Timestamp", "webhook-signature", "Upgrade", "te",
        "Trailer", "Keep-Alive", "Expect",
    ],
)  # fmt: skip
def test_framing_and_identity_headers_are_refused_when_saved(name):
    with pytest.raises(ValidationError, match=f"header '{name}' "):
        template(headers={name: "x"})


@pytest.mark.parametrize("name", ["X Bad", "X-Bad:", "Ünicode", ""])
def test_a_header_name_that_is_not_a_token_is_refused(name):
    with pytest.raises(ValidationError, match="is not a header name"):
        template(headers={name: "x"})


def test_a_header_given_twice_in_different_cases_is_refused():
    with pytest.raises(ValidationError, match="header 'x-run' is given twice"):
        template(headers={"X-Run": "{{ run.id }}", "x-run": "other"})


def test_ordinary_headers_are_kept():
    kept = template(headers={"X-Export-Run": "{{ run.id }}", "Accept": "application/json", "Content-Type": "text/x"})
    assert set(kept.headers) == {"X-Export-Run", "Accept", "Content-Type"}


# --- 12(c). A member value cannot add JSON keys to a body --------------------------------------------


INJECTION = 'x", "admin": true, "y": "'


def test_a_quoted_value_in_a_json_body_stays_one_string():
    request = render_request(template(body='{"name": "{{ member.name }}"}'), PROFILE, batch({"name": INJECTION}))
    assert json.loads(request.content) == {"name": INJECTION}


def test_a_bare_value_cannot_become_json_of_the_members_choosing():
    with pytest.raises(TemplateRenderError, match="renders invalid JSON"):
        render_request(template(body='{"points": {{ member.points }}}'), PROFILE, batch({"points": '1, "admin": true'}))


def test_backslashes_and_line_breaks_in_a_quoted_value_stay_in_the_string():
    name = 'a\\", "admin": true}\n'
    request = render_request(template(body='{"name": "{{ member.name }}"}'), PROFILE, batch({"name": name}))
    assert json.loads(request.content) == {"name": name}


def test_tojson_macros_and_captured_blocks_are_written_as_the_template_made_them():
    body = (
        '{% macro one(m) %}{"name": "{{ m.name }}"}{% endmacro %}'
        '{% set extra %}{"n": {{ members | length }}}{% endset %}'
        '{"first": {{ member.name | tojson }}, "all": [{% for m in members %}{{ one(m) }}{{ "," if not loop.last }}'
        '{% endfor %}], "extra": {{ extra }}}'
    )
    request = render_request(template(body=body), PROFILE, batch({"name": INJECTION}, {"name": "Zoé"}))
    assert json.loads(request.content) == {
        "first": INJECTION,
        "all": [{"name": INJECTION}, {"name": "Zoé"}],
        "extra": {"n": 2},
    }


def _manifest_templates() -> dict[str, dict[str, Any]]:
    demo = yaml.safe_load_all((ROOT / "deploy/local/demo/demo-export.yaml").read_text())
    return {
        "demo": next(doc for doc in demo if doc["kind"] == "HttpTemplate")["spec"],
        "readme": {
            "path": "/v1/members/bulk",
            "headers": {"X-Export-Run": "{{ run.id }}"},
            "body": '{"members": [{% for m in members %}{"id": {{ m.id }}, "email": {{ m.email | tojson }}}'
            '{{ "," if not loop.last }}{% endfor %}]}\n',
        },
    }


@pytest.mark.parametrize("name", ["demo", "readme"])
def test_existing_templates_render_the_json_they_always_did(name):
    spec = {key: value for key, value in _manifest_templates()[name].items() if key not in ("query", "profile")}
    members = [
        {"id": 1, "email": "a@x.io", "first_name": "Amélie", "last_name": 'O"Brien', "tier": "gold", "points": 7},
        {"id": 2, "email": "b@x.io", "first_name": "Zoé", "last_name": "Durand", "tier": "silver", "points": 0},
    ]
    sent = batch(*members)
    request = render_request(template(**spec), PROFILE, sent)
    expected: dict[str, Any] = {"members": [{"id": m["id"], "email": m["email"]} for m in members]}
    if name == "demo":
        expected = {
            "run": str(sent.run_id),
            "members": [
                {k: m[k] for k in ("id", "email", "tier", "points")} | {"name": f"{m['first_name']} {m['last_name']}"}
                for m in members
            ],
        }
    assert json.loads(request.content) == expected


# --- 6. Rendering is bounded in CPU time and in bytes -------------------------------------------------


def test_nested_loops_are_stopped_at_the_cpu_deadline():
    body = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}1"
    started = time.process_time()
    with pytest.raises(TemplateRenderError, match=r"template body \(line 1\): took longer than 0.2 s of CPU time"):
        render_request(template(body=body), PROFILE, batch({"id": 1}), TIGHT)
    assert time.process_time() - started < 2  # stopped, not run to the end (hours)


def test_loops_over_members_are_stopped_at_the_cpu_deadline():
    body = "{% for a in members %}{% for b in members %}{% for c in members %}{% endfor %}{% endfor %}{% endfor %}1"
    with pytest.raises(TemplateRenderError, match=r"took longer than 0\.2 s of CPU time"):
        render_request(template(body=body), PROFILE, batch(*({"id": i} for i in range(2000))), TIGHT)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{{ 'a' * 10**8 }}", "'*' would build 100000000 bytes, more than 100000"),
        ("{{ [1] * 10**8 }}", "'*' would build 100000000 items"),
        ("{{ 7 ** 1000000 }}", "'**' would compute a number of more than 100000 bits"),
        ("{{ 'a'.center(10**9) }}", "padding would build 1000000000 bytes"),
        ("{{ '%0999999999d' % 1 }}", "'%' would build"),
        ("{{ '{:>999999999}'.format(1) }}", "format() would build"),
        ("{% set s = 'a' * 1000 %}{{ s | replace('', s) }}", "replace would build 1002000 bytes"),
        ("{{ lipsum(10**6) }}", "lipsum would build"),
        ("{% set n = namespace(s='a') %}{% for i in range(40) %}{% set n.s = n.s ~ n.s %}{% endfor %}", "'~'"),
        ("{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('a') }}", "'~' would build"),
    ],
)  # fmt: skip
def test_an_operation_that_would_build_too_much_is_refused_before_it_runs(body, reason):
    with pytest.raises(TemplateRenderError, match="template body") as refused:
        render_request(template(body=body), PROFILE, batch({"id": 1}), TIGHT)
    assert reason in str(refused.value)


def test_the_rendered_body_is_capped_while_it_streams():
    body = "[{% for i in range(100000) %}{% for j in range(100000) %}1,{% endfor %}{% endfor %}1]"
    with pytest.raises(TemplateRenderError, match=r"template body: rendered more than 100000 bytes"):
        render_request(template(body=body), PROFILE, batch({"id": 1}), TIGHT)


def test_text_captured_out_of_sight_of_the_output_is_bounded_too():
    body = "{% set x %}{% for i in range(100000) %}{% for j in range(10000) %}xxxx{% endfor %}{% endfor %}{% endset %}1"
    with pytest.raises(TemplateRenderError, match="built more than 800000 bytes of text while rendering"):
        render_request(template(body=body), PROFILE, batch({"id": 1}), TIGHT)


def test_a_recursive_macro_is_a_template_error():
    with pytest.raises(TemplateRenderError, match="RecursionError"):
        render_request(template(body="{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"), PROFILE, batch({"id": 1}))


def test_the_bounds_are_the_dispatchers_settings(monkeypatch):
    monkeypatch.setenv("EXPORT_RENDER_TIMEOUT_SECONDS", "0.25")
    monkeypatch.setenv("EXPORT_RENDER_MAX_BYTES", "200000")
    assert DispatcherSettings().render_limits == RenderLimits(timeout_seconds=0.25, max_bytes=200_000)
