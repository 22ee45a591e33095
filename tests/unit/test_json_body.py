"""Issue 18: a JSON body written as a structure (``json_body``), compiled once and encoded with orjson.

Each test renders as the dispatcher does (``render_request``), validates as every save does
(``HttpTemplate``), or analyses columns as the admin API does (``used_columns``), and asserts what a
partner, an editor or an operator would see.
"""

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from pydantic import ValidationError

from shared.application.checks import ObjectChecks, template_problems
from shared.domain import json_structure, rendering
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate, SavedQuery
from shared.domain.destinations import DestinationPolicy
from shared.domain.json_structure import compiled
from shared.domain.rendering import RenderLimits, TemplateRenderError, render_request
from shared.domain.template_columns import used_columns
from shared.events import MemberBatch
from shared.querystore.demo_data import generate_members

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ConnectionProfile(name="p", base_url="https://api.example.com")
TIGHT = RenderLimits(timeout_seconds=0.2, max_bytes=100_000)
INJECTION = 'x", "admin": true, "y": "'
AMELIE = {"id": 7, "email": "a@x.io", "first_name": "Amélie", "last_name": "Durand", "tier": "gold", "points": 12}
ZOE = {"id": 8, "email": "z@x.io", "first_name": "Zoé", "last_name": None, "tier": None, "points": 0}
#: A leaf inside 65 lists.
DEEP: Any = "{{ run.id }}"
for _ in range(65):
    DEEP = [DEEP]


def template(json_body: Any, **fields: Any) -> HttpTemplate:
    return HttpTemplate(name="t", query="q", profile="p", json_body=json_body, **fields)


def batch(*members: dict[str, Any], index: int = 0) -> MemberBatch:
    return MemberBatch(run_id=uuid.uuid4(), definition="d", template="t", batch_index=index, members=list(members))


def render(json_body: Any, *members: dict[str, Any], limits: RenderLimits = rendering.DEFAULT_LIMITS) -> Any:
    request = render_request(template(json_body), PROFILE, batch(*members), limits)
    assert request.headers["Content-Type"] == "application/json"
    return json.loads(request.content)


def refusal(json_body: Any, *members: dict[str, Any], limits: RenderLimits = rendering.DEFAULT_LIMITS) -> str:
    with pytest.raises(TemplateRenderError) as refused:
        render_request(template(json_body), PROFILE, batch(*members), limits)
    return str(refused.value)


# --- Leaves: typed, mixed, literal -------------------------------------------------------------------


def test_a_leaf_that_is_one_expression_keeps_its_type():
    member = {"id": 7, "ratio": 0.5, "vip": True, "note": None, "tags": ["a", "b"], "address": {"city": "Lyon"}}
    body = {key: f"{{{{ member.{key} }}}}" for key in member} | {"city": "{{ member.address.city }}"}
    assert render(body, member) == member | {"city": "Lyon"}


def test_a_leaf_mixing_text_and_expressions_is_a_string_as_jinja_writes_it():
    body = {"name": "{{ member.first_name }} {{ member.last_name }}", "ref": "M-{{ member.id }}", "none": "{{ 1 }} "}
    assert render(body, AMELIE) == {"name": "Amélie Durand", "ref": "M-7", "none": "1 "}
    assert render(body, ZOE)["name"] == "Zoé None"  # what {{ m.first_name ~ " " ~ m.last_name }} writes too


def test_any_expression_and_statement_is_the_sandboxs():
    body = {
        "upper": "{{ member.first_name | upper }}",
        "level": "{{ 'vip' if member.points > 10 else 'std' }}",
        "tier": "{% if member.tier %}{{ member.tier }}{% else %}none{% endif %}",
        "count": "{{ members | length }}",
        "emails": "{{ members | map(attribute='email') | list }}",
    }
    assert render(body, AMELIE, ZOE) == {
        "upper": "AMÉLIE",
        "level": "vip",
        "tier": "gold",
        "count": 2,
        "emails": ["a@x.io", "z@x.io"],
    }


def test_literal_leaves_numbers_and_nesting_are_written_as_they_are():
    body = {"source": "loyalty", "version": 2, "dry": False, "none": None, "meta": {"run": "{{ run.batch_index }}"}}
    assert render(body, AMELIE) == {"source": "loyalty", "version": 2, "dry": False, "none": None, "meta": {"run": 0}}
    assert render(["{{ member.id }}", {"a": [1, "{{ member.tier }}"]}], AMELIE) == [7, {"a": [1, "gold"]}]


def test_a_column_named_like_a_dict_method_reads_as_jinja_reads_it():
    member = {"id": 1, "items": 3}
    assert render({"n": "{{ member['items'] }}"}, member) == {"n": 3}
    assert "cannot carry" in refusal({"n": "{{ member.items }}"}, member)  # Jinja's member.items is the method


# --- $each and columns ---------------------------------------------------------------------------------


def test_each_writes_one_element_per_member():
    body = {
        "run": "{{ run.id }}",
        "members": {"$each": "members", "as": "m", "item": {"id": "{{ m.id }}", "tier": "{{ m.tier }}"}},
        "first": "{{ member.id }}",  # after the loop, member is the batch's first member again
    }
    sent = batch(AMELIE, ZOE)
    request = render_request(template(body), PROFILE, sent)
    assert json.loads(request.content) == {
        "run": str(sent.run_id),
        "members": [{"id": 7, "tier": "gold"}, {"id": 8, "tier": None}],
        "first": 7,
    }


def test_each_names_its_element_member_by_default_and_can_be_the_whole_body():
    assert render({"$each": "members", "item": "{{ member.email }}"}, AMELIE, ZOE) == ["a@x.io", "z@x.io"]
    assert render({"$each": "{{ members }}", "item": "{{ member }}"}, AMELIE) == [AMELIE]


def test_each_iterates_over_any_expression_and_nests():
    member = AMELIE | {"orders": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}], "consent": True}
    body = {
        "$each": "members | selectattr('consent')",
        "as": "m",
        "item": {"id": "{{ m.id }}", "lines": {"$each": "m.orders", "as": "o", "item": "{{ m.id }}-{{ o.sku }}"}},
    }
    assert render(body, member, ZOE | {"consent": False}) == [{"id": 7, "lines": ["7-A", "7-B"]}]


def test_columns_are_a_shorthand_for_an_object_of_columns():
    body = {"members": {"$each": "members", "columns": ["id", "email"]}}
    assert render(body, AMELIE, ZOE) == {"members": [{"id": 7, "email": "a@x.io"}, {"id": 8, "email": "z@x.io"}]}
    renamed = {"$each": "members", "columns": {"memberId": "id", "level": "tier"}}
    assert render(renamed, AMELIE) == [{"memberId": 7, "level": "gold"}]


def test_a_key_named_each_is_written_with_two_dollars():
    assert render({"$push": {"tags": {"$$each": ["{{ member.tier }}"]}}}, AMELIE) == {
        "$push": {"tags": {"$each": ["gold"]}}
    }


def test_the_readme_and_demo_templates_render_the_json_of_their_text_bodies():
    docs = list(yaml.safe_load_all((ROOT / "deploy/local/demo/demo-export.yaml").read_text()))
    demo = next(d for d in docs if d["kind"] == "HttpTemplate")["spec"]
    text = (
        '{"run": "{{ run.id }}", "members": [{% for m in members %}{"id": {{ m.id }}, "email": {{ m.email | tojson }},'
        ' "name": {{ (m.first_name ~ " " ~ m.last_name) | tojson }}, "tier": {{ m.tier | tojson }}, "points": '
        '{{ m.points }}}{{ "," if not loop.last }}{% endfor %}]}'
    )
    columns = ("id", "email", "first_name", "last_name", "tier", "points", "locale", "consent_email")
    sent = batch(*({c: m[c] for c in columns} for m in generate_members(200)))
    structured = render_request(template(demo["json_body"]), PROFILE, sent)
    textual = render_request(HttpTemplate(name="t", query="q", profile="p", body=text), PROFILE, sent)
    assert json.loads(structured.content) == json.loads(textual.content)
    assert structured.content == orjson.dumps(json.loads(textual.content))  # compact, UTF-8
    readme = {"members": {"$each": "members", "columns": ["id", "email"]}}
    assert render(readme, AMELIE) == {"members": [{"id": 7, "email": "a@x.io"}]}


# --- Member data is only ever a value ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"name": "{{ member.name }}"},
        {"name": "{{ member.name }} {{ member.name }}"},
        {"name": "{{ member.name | upper }}"},
        {"$each": "members", "columns": ["name"]},
    ],
)
def test_an_injection_attempt_stays_one_string(body):
    for name in (INJECTION, 'a\\", "admin": true}\n', "</script>{{ 7 * 7 }}"):
        rendered = render(body, {"name": name})
        values = rendered if isinstance(rendered, list) else [rendered]
        assert [set(value) for value in values] == [{"name"}]
        assert all(value["name"] in (name, f"{name} {name}", name.upper()) for value in values)


def test_keys_and_text_of_a_template_never_become_code():
    hostile = "__import__('os').system('false')"
    quote_key = '"}'
    body = {hostile: f"{hostile} {{{{ member.id }}}}", '"}; raise SystemExit #': "{{ member['" + quote_key + "'] }}"}
    program = compiled(body)
    assert hostile not in program.source
    assert "SystemExit" not in program.source
    assert render(body, {"id": 1, quote_key: 2}) == {hostile: f"{hostile} 1", '"}; raise SystemExit #': 2}
    for tampered in ("    return __import__", "    return 'text'", "    return K # comment"):
        with pytest.raises(AssertionError, match="unexpected token"):
            json_structure._checked_source(f"def render(S, scope, K):\n{tampered}\n")


# --- Errors name the field, the leaf and the member ------------------------------------------------------


def test_an_undefined_column_names_the_leaf_and_the_member():
    body = {"members": {"$each": "members", "as": "m", "item": {"id": "{{ m.id }}", "nick": "{{ m.nick }}"}}}
    assert refusal(body, {"id": 1, "nick": "a"}, {"id": 2}) == (
        "template json_body (at members[1].nick): 'dict object' has no attribute 'nick' (is the column in the query?)"
    )
    assert refusal({"$each": "members", "columns": ["id", "nick"]}, {"id": 1}) == (
        "template json_body (at [0].nick): 'dict object' has no attribute 'nick' (is the column in the query?)"
    )
    assert refusal({"a": "{{ member.nick | upper }}"}, {"id": 1}).startswith("template json_body (at a): ")


def test_the_sandbox_still_refuses_python_internals():
    assert "template json_body (at x)" in refusal({"x": "{{ member.__class__.__mro__ }}"}, AMELIE)


def test_a_value_json_cannot_carry_is_refused_naming_the_leaf():
    assert refusal({"f": "{{ range }}"}, AMELIE) == (
        "template json_body (at f): the value holds a function, which JSON cannot carry"
    )


def test_each_over_something_not_a_list_is_refused():
    assert refusal({"x": {"$each": "member", "item": 1}}, AMELIE) == (
        "template json_body (at x): $each iterates over a list, not a dict"
    )


def test_a_failure_while_iterating_a_lazy_filter_names_the_each():
    body = {"ids": {"$each": "members | map(attribute='nick') | map('int')", "item": "{{ member }}"}}
    assert refusal(body, {"id": 1}) == (
        "template json_body (at ids): 'dict object' has no attribute 'nick' (is the column in the query?)"
    )


# --- The same bounds as text bodies ---------------------------------------------------------------------


def test_nested_loops_are_stopped_at_the_cpu_deadline():
    body = {"$each": "range(100000)", "as": "i", "item": {"$each": "range(100000)", "as": "j", "item": "{{ i ~ j }}"}}
    message = refusal(body, {"id": 1}, limits=RenderLimits(timeout_seconds=0.2, max_bytes=10**9))
    assert message.startswith("template json_body (at [0][")
    assert message.endswith("took longer than 0.2 s of CPU time (EXPORT_RENDER_TIMEOUT_SECONDS)")


def test_a_value_repeated_past_the_cap_is_refused_before_it_is_encoded():
    body = {"$each": "range(100000)", "as": "i", "item": "{{ members[0].notes }}"}
    message = refusal(body, {"notes": "n" * 1000}, limits=TIGHT)
    assert message.startswith("template json_body (at [")
    assert message.endswith("rendered more than 100000 bytes (EXPORT_RENDER_MAX_BYTES)")


def test_a_body_over_the_cap_is_refused_even_when_each_column_is_read_once():
    body = {"$each": "members", "as": "m", "item": {"notes": "{{ m.notes }}"}}
    assert render(body, {"notes": "n" * 1000}, limits=TIGHT) == [{"notes": "n" * 1000}]
    assert refusal(body, *({"notes": "n" * 1000} for _ in range(200)), limits=TIGHT) == (
        "template json_body: rendered more than 100000 bytes (EXPORT_RENDER_MAX_BYTES)"
    )


def test_an_operation_that_would_build_too_much_is_refused_in_a_leaf():
    assert refusal({"x": "{{ 'a' * 10**8 }}"}, {"id": 1}, limits=TIGHT) == (
        "template json_body (at x): '*' would build 100000000 bytes, more than 100000 (EXPORT_RENDER_MAX_BYTES)"
    )


def test_integers_beyond_64_bits_are_still_written():
    assert render({"n": "{{ member.n }}"}, {"n": 2**70}) == {"n": 2**70}


# --- Checked when saved -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("json_body", "reason"),
    [
        ({"a": {"b": "{{ member.id }"}}, "at a.b: unexpected '}'"),
        ({"a": "{{ member.id | nofilter }}"}, "at a: there is no filter named 'nofilter'"),
        ({"m": {"$each": "members", "item": 1, "extra": 2}}, "at m: a $each object holds $each, as and item"),
        ({"m": {"$each": "members"}}, "at m: a $each object needs either item (each element) or columns"),
        ({"m": {"$each": "members }}{{ run", "item": 1}}, "at m.$each: write one expression"),
        ({"m": {"$each": "members", "as": "a b", "item": 1}}, "at m.as: the name of each element is a plain name"),
        ({"m": {"$each": "members", "columns": []}}, "at m.columns: a list of columns"),
        ({"$each": "members", "item": {"$each": "members", "item": {"$each": "members", "item": {
            "$each": "members", "item": {"$each": "members", "item": {"$each": "members", "item": 1}}}}}},
         "$each is nested more than 5 deep"),
        ({f"k{i}": "{{ member.id }}" for i in range(1001)}, "1001 leaves hold expressions, more than 1000"),
        ({"a": DEEP}, "objects and lists are nested more than 64 deep"),
    ],
)  # fmt: skip
def test_a_structure_that_cannot_compile_is_refused_when_saved(json_body, reason):
    with pytest.raises(ValidationError, match="json_body") as refused:
        template(json_body)
    assert reason in str(refused.value)


def test_a_text_body_and_a_structure_are_one_or_the_other():
    with pytest.raises(ValidationError, match=r"either as text \(body\) or as a structure \(json_body\)"):
        template({"id": "{{ member.id }}"}, body='{"id": 1}')


def test_a_structure_is_compiled_once_per_content():
    body = {"id": "{{ member.id }}", "each": {"$each": "members", "columns": ["id"]}}
    assert compiled(body) is compiled(copy.deepcopy(body))


def test_a_text_body_is_compiled_once_per_source():
    text = '{"once": {{ member.id }}, "marker": "compiled-once-check"}'
    text_template = HttpTemplate(name="t", query="q", profile="p", body=text)
    render_request(text_template, PROFILE, batch(AMELIE))
    misses = rendering._compile.cache_info().misses
    render_request(text_template, PROFILE, batch(ZOE))
    assert rendering._compile.cache_info().misses == misses


# --- Columns the template uses (checked against its query when saved) -------------------------------------


def test_used_columns_sees_leaves_each_aliases_and_column_shorthands():
    body = {
        "first": "{{ member.email }}",
        "members": {"$each": "members", "as": "m", "item": {"id": "{{ m.id }}", "name": "{{ m.first_name }}!"}},
        "short": {"$each": "members", "columns": {"level": "tier"}},
        "orders": {"$each": "member.orders", "as": "o", "item": "{{ o.sku }}"},
        "shadow": {"$each": "member.orders", "item": "{{ member.sku }}"},  # member is an order here
        "lines": {"$each": "run.lines", "columns": ["not_a_member_column"]},
    }
    assert used_columns(template(body, path="/m/{{ member.ref }}")) == {
        "email", "id", "first_name", "tier", "orders", "ref",
    }  # fmt: skip


class _OnePage:
    """A member store holding ``members`` (what ``exportctl apply`` renders a template with when it is saved)."""

    def __init__(self, *members: dict[str, Any]) -> None:
        self.members = list(members)

    def columns(self, query: SavedQuery) -> list[str]:
        return list(self.members[0])

    def pages(self, query: SavedQuery, *, page_size: int, parameters: dict[str, Any] | None = None) -> Any:
        yield self


def test_saving_checks_a_structure_against_its_querys_columns_and_renders_it():
    query = SavedQuery(name="q", sql="SELECT id, email FROM members", columns=["id", "email"])
    objects: dict[type, Any] = {SavedQuery: query, ConnectionProfile: PROFILE}
    checks = ObjectChecks(policy=DestinationPolicy(), resolve_host=lambda host: [], members=_OnePage(AMELIE))

    def problems(json_body: Any) -> list[str]:
        return template_problems(template(json_body), lambda kind, name: objects.get(kind), checks)

    assert problems({"$each": "members", "as": "m", "item": {"id": "{{ m.id }}", "mail": "{{ m.email }}"}}) == []
    assert problems({"$each": "members", "as": "m", "item": {"level": "{{ m.tier }}"}}) == [
        "HttpTemplate 't': field 'query': template 't' uses column(s) tier that query 'q' does not return "
        "(it returns: id, email)"
    ]
    [rendered] = problems({"n": "{{ member.id / 0 }}"})
    assert "template json_body (at n): ZeroDivisionError: division by zero" in rendered
