"""The admin API over HTTP against a real server process, on a SQLite and on a PostgreSQL catalog."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.events import RunCancelled, RunRequested
from tests.admin_server import AdminServer, admin_servers_by_dialect
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.integration

SECRET_PASSWORD = "s3cr3t-partner-password-4471"
SIGNING_SECRET = "whsec_" + "c2VjcmV0LXNpZ25pbmcta2V5LWZvci10aGUtdGVzdHM="


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, postgres_database_factory: Callable[[], str], kafka_bootstrap: str
) -> Iterator[Callable[[str], AdminServer]]:
    """The module's two servers (SQLite and PostgreSQL catalogs), shared by its tests: each test's objects are named
    by its own ``tag``."""
    with admin_servers_by_dialect(tmp_path_factory, postgres_database_factory, kafka_bootstrap, 25) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def admin(request: pytest.FixtureRequest, servers: Callable[[str], AdminServer]) -> AdminServer:
    """The API on a SQLite catalog, then on a PostgreSQL one."""
    return servers(request.param)


@pytest.fixture
def admin_on_sqlite(servers: Callable[[str], AdminServer]) -> AdminServer:
    """For what does not depend on the catalog's engine (authentication, the HTTP contract)."""
    return servers("sqlite")


@pytest.fixture
def tag() -> str:
    """In the labels (so the names) of a test's objects: its own on the server the module's tests share."""
    return uuid.uuid4().hex[:8]


def _seed(admin: AdminServer, business_unit: str | None = None, suffix: str = "") -> dict[str, str]:
    """A profile, query, template and definition created over the API; their names."""
    with admin.client() as api:
        profile = api.post(
            "/api/v1/connection-profiles",
            json={
                "label": f"Partner API{suffix}",
                "base_url": "https://partner.example.com/v2",
                "auth": {"type": "basic", "username": "exporter", "password": SECRET_PASSWORD},
                "signing_secret": SIGNING_SECRET,
            },
        )
        assert profile.status_code == 201, profile.text
        query = api.post(
            "/api/v1/saved-queries",
            json={
                "label": f"Gold members{suffix}",
                "sql": "SELECT id, email, tier FROM members WHERE tier = 'gold'",
                "columns": ["id", "email", "tier"],
            },
        )
        assert query.status_code == 201, query.text
        template = api.post(
            "/api/v1/http-templates",
            json={
                "label": f"Upsert{suffix}",
                "query": query.json()["name"],
                "profile": profile.json()["name"],
                "path": "/members",
                "batch_size": 2,
            },
        )
        assert template.status_code == 201, template.text
        definition = api.post(
            "/api/v1/export-definitions",
            json={
                "label": f"Gold to partner{suffix}",
                "business_unit": business_unit,
                "query": query.json()["name"],
                "template": template.json()["name"],
                "schedule": {"enabled": True, "repeat": {"every": "day", "time": "02:00"}},
            },
        )
        assert definition.status_code == 201, definition.text
    return {
        "profile": profile.json()["name"],
        "query": query.json()["name"],
        "template": template.json()["name"],
        "definition": definition.json()["name"],
    }


def test_objects_are_created_from_labels_read_updated_copied_and_deleted(admin: AdminServer, tag: str):
    names = _seed(admin, suffix=f" {tag}")
    assert names == {
        "profile": f"partner-api-{tag}",
        "query": f"gold-members-{tag}",
        "template": f"upsert-{tag}",
        "definition": f"gold-to-partner-{tag}",
    }
    with admin.client() as api:
        again = api.post(
            "/api/v1/saved-queries", json={"label": f"Gold members {tag}", "sql": "SELECT id FROM members"}
        )
        assert again.json()["name"] == f"gold-members-{tag}-2"  # derived names are made unique
        conflict = api.post(
            "/api/v1/saved-queries", json={"name": f"gold-members-{tag}", "sql": "SELECT id FROM members"}
        )
        assert conflict.status_code == 409
        assert conflict.headers["content-type"] == "application/problem+json"
        assert conflict.json()["detail"] == f"SavedQuery 'gold-members-{tag}' exists already"

        copy = api.post(f"/api/v1/export-definitions/{names['definition']}/copy")
        assert copy.status_code == 201
        assert (copy.json()["name"], copy.json()["label"]) == (
            f"copy-of-gold-to-partner-{tag}",
            f"Copy of Gold to partner {tag}",
        )
        assert copy.json()["schedule"]["enabled"] is False  # a copy does not start firing

        renamed = api.put(
            f"/api/v1/export-definitions/copy-of-gold-to-partner-{tag}",
            json={**copy.json(), "name": f"gold-weekly-{tag}", "priority": "high"},
        )
        assert renamed.status_code == 200, renamed.text
        assert api.get(f"/api/v1/export-definitions/copy-of-gold-to-partner-{tag}").status_code == 404
        assert api.get(f"/api/v1/export-definitions/gold-weekly-{tag}").json()["priority"] == "high"

        in_use = api.delete(f"/api/v1/saved-queries/{names['query']}")
        assert in_use.status_code == 409
        assert "used by" in in_use.json()["detail"]
        assert api.delete(f"/api/v1/export-definitions/gold-weekly-{tag}").status_code == 204
        assert api.get(f"/api/v1/export-definitions/gold-weekly-{tag}").status_code == 404


def test_invalid_input_gets_a_422_problem_naming_the_field(admin: AdminServer, tag: str):
    names = _seed(admin, suffix=f" {tag}")
    with admin.client() as api:
        bad = api.post("/api/v1/connection-profiles", json={"name": f"p2-{tag}", "base_url": "ftp://nope"})
        assert bad.status_code == 422
        problem = bad.json()
        assert bad.headers["content-type"] == "application/problem+json"
        assert problem["status"] == 422
        assert any(e["field"] == "body.base_url" for e in problem["errors"]), problem

        missing = api.put(f"/api/v1/export-definitions/{names['definition']}/destination", json={"template": "nope"})
        assert missing.status_code == 422
        assert "field 'template': HttpTemplate 'nope' does not exist" in missing.json()["detail"]

        # A template is held to its query's columns when it is saved (the query's columns were discovered).
        unknown_column = api.post(
            "/api/v1/http-templates",
            json={
                "name": f"uses-points-{tag}",
                "query": names["query"],
                "profile": names["profile"],
                "body": '{"points": {{ member.points }}}',
            },
        )
        assert unknown_column.status_code == 422
        assert (
            f"uses column(s) points that query 'gold-members-{tag}' does not return" in unknown_column.json()["detail"]
        )
        unknown_template = api.put(
            f"/api/v1/export-definitions/{names['definition']}/destination", json={"template": f"uses-points-{tag}"}
        )
        assert unknown_template.status_code == 422
        assert f"HttpTemplate 'uses-points-{tag}' does not exist" in unknown_template.json()["detail"]

        no_recipient = api.put(
            f"/api/v1/export-definitions/{names['definition']}/notifications",
            json={"error": {"enabled": True, "recipients": []}},
        )
        assert no_recipient.status_code == 422
        bad_address = api.put(
            f"/api/v1/export-definitions/{names['definition']}/notifications",
            json={"error": {"enabled": True, "recipients": ["not-an-address"]}},
        )
        assert bad_address.status_code == 422
        assert "error.recipients" in bad_address.text

        schedule = api.put(
            f"/api/v1/export-definitions/{names['definition']}/schedule",
            json={
                "enabled": True,
                "timezone": "Europe/Paris",
                "repeat": {"every": "week", "weekday": "mon", "time": "06:30"},
            },
        )
        assert schedule.status_code == 200, schedule.text
        assert schedule.json()["schedule"]["timezone"] == "Europe/Paris"
        preview = api.get(f"/api/v1/export-definitions/{names['definition']}/schedule/preview", params={"count": 3})
        assert preview.json()["cron"] == "30 6 * * 1"
        assert len(preview.json()["fire_times"]) == 3
        assert api.get("/api/v1/export-definitions/nope").json()["status"] == 404


def test_a_schedule_out_of_the_calendar_or_with_an_overlong_zone_gets_a_422_naming_the_field(
    admin: AdminServer, tag: str
):
    """Such schedules were saved (200/201), then their preview was a 500 and every scheduler tick failed (a date at the
    end of Python's calendar), or were a 500 at once (a zone name too long for a file name)."""
    names = _seed(admin, suffix=f" {tag}")
    daily = {"every": "day", "time": "02:00"}
    refused = [
        ({"enabled": True, "repeat": daily, "from": "0001-01-01"}, "body.from"),
        (
            {"enabled": True, "timezone": "America/New_York", "once": {"date": "9999-12-31", "time": "23:00"}},
            "body.once.date",
        ),
        (
            {
                "enabled": True,
                "repeat": {"every": "year", "day": 29, "month": 2, "time": "09:00"},
                "from": "9997-01-01",
            },
            "body.from",
        ),
        ({"enabled": True, "repeat": daily, "timezone": "x" * 300}, "body.timezone"),
        ({"enabled": True, "repeat": daily, "timezone": "Europe/" + "x" * 260}, "body.timezone"),
        ({"enabled": True, "repeat": daily, "timezone": "localtime"}, "body.timezone"),
    ]
    with admin.client() as api:
        path = f"/api/v1/export-definitions/{names['definition']}/schedule"
        for body, field in refused:
            answer = api.put(path, json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert any(e["field"] == field for e in answer.json()["errors"]), answer.json()
        # The bounds themselves are fine, and "to" may be the usual "no end".
        edge = {"enabled": True, "repeat": daily, "from": "1900-01-01", "to": "9999-12-31"}
        assert api.put(path, json=edge).status_code == 200
        last = {"enabled": True, "timezone": "Pacific/Kiritimati", "once": {"date": "2999-12-31", "time": "23:00"}}
        assert api.put(path, json=last).status_code == 200
        preview = api.get(f"{path}/preview", params={"count": 3})
        assert preview.status_code == 200, preview.text
        assert preview.json()["fire_times"] == ["2999-12-31T09:00:00Z"]


def test_search_filters_paginates_and_sorts(admin: AdminServer, tag: str):
    _seed(admin, business_unit="emea", suffix=f" {tag}")
    _seed(admin, business_unit="apac", suffix=f" {tag} B")
    # The module's other tests' definitions are on this server too: each search is scoped to this test's three, all
    # named ...gold-to-partner-<tag>..., which no other test's name contains.
    ours = f"gold-to-partner-{tag}"
    with admin.client() as api:
        api.post(f"/api/v1/export-definitions/{ours}/copy")
        everything = api.get("/api/v1/export-definitions", params={"sort": "-name", "name_contains": ours}).json()
        assert [d["name"] for d in everything["items"]] == [f"{ours}-b", ours, f"copy-of-{ours}"]
        assert everything["total"] == 3
        # Unfiltered, the same three in the same order among the others, the whole listing sorted and counted.
        unfiltered = api.get("/api/v1/export-definitions", params={"sort": "-name", "page_size": 500}).json()
        listed = [d["name"] for d in unfiltered["items"]]
        assert listed == sorted(listed, reverse=True)
        assert [n for n in listed if ours in n] == [f"{ours}-b", ours, f"copy-of-{ours}"]
        assert unfiltered["total"] == len(listed)
        emea = api.get(
            "/api/v1/export-definitions", params={"business_unit": "emea", "enabled": True, "name_contains": ours}
        ).json()
        assert [d["name"] for d in emea["items"]] == [ours]
        page = api.get(
            "/api/v1/export-definitions", params={"name_contains": ours.upper(), "page": 2, "page_size": 2}
        ).json()
        assert (page["total"], [d["name"] for d in page["items"]]) == (3, [f"{ours}-b"])
    with admin.client("emea-operator") as scoped:
        seen = scoped.get("/api/v1/export-definitions").json()
        assert {d["business_unit"] for d in seen["items"]} == {"emea"}
        assert ours in {d["name"] for d in seen["items"]}
        assert scoped.get(f"/api/v1/export-definitions/{ours}-b").status_code == 403
        assert scoped.post(f"/api/v1/export-definitions/{ours}-b/runs").status_code == 403


def test_secrets_are_masked_kept_on_update_and_never_in_responses_or_logs(admin: AdminServer, tag: str):
    names = _seed(admin, suffix=f" {tag}")
    bodies = []
    with admin.client() as api:
        profile = api.get(f"/api/v1/connection-profiles/{names['profile']}")
        bodies.append(profile.text)
        assert profile.json()["auth"]["password"] == "**********"
        assert profile.json()["signing_secret"] == "**********"
        # Sending back what was read (masked) keeps the stored secrets.
        updated = api.put(
            f"/api/v1/connection-profiles/{names['profile']}", json={**profile.json(), "timeout_seconds": 5}
        )
        bodies.append(updated.text)
        assert updated.status_code == 200, updated.text
        bodies.append(api.get("/api/v1/connection-profiles").text)
        dry = api.post(f"/api/v1/export-definitions/{names['definition']}/dry-run", params={"requests": 2})
        bodies.append(dry.text)
        bodies.append(api.post(f"/api/v1/connection-profiles/{names['profile']}/copy").text)
    dry_run = dry.json()
    assert dry_run["requests"], dry_run
    assert all(r["url"] == "https://partner.example.com/v2/members" for r in dry_run["requests"])
    assert all(len(json.loads(r["body"])) == r["members"] <= 2 for r in dry_run["requests"])
    # The stored profile still has the real secret: the dispatcher's view of it.
    from shared.catalog import CatalogStores
    from shared.domain.catalog_objects import BasicAuth, ConnectionProfile

    catalog = CatalogStores.from_url(admin.catalog_url)
    stored = catalog.definitions.get(ConnectionProfile, names["profile"])
    catalog.close()
    assert isinstance(stored.auth, BasicAuth)
    assert stored.auth.password.get_secret_value() == SECRET_PASSWORD
    assert stored.timeout_seconds == 5
    for text_seen in [*bodies, admin.log()]:
        assert SECRET_PASSWORD not in text_seen
        assert SIGNING_SECRET not in text_seen


def test_runs_on_demand_are_idempotent_listed_and_cancellable(admin: AdminServer, kafka_bootstrap: str, tag: str):
    names = _seed(admin, suffix=f" {tag}")
    with admin.client("operator") as api:
        key = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}
        first = api.post(f"/api/v1/export-definitions/{names['definition']}/runs", headers=key)
        second = api.post(f"/api/v1/export-definitions/{names['definition']}/runs", headers=key)
        assert first.status_code == second.status_code == 202
        run_id = first.json()["run_id"]
        assert second.json()["run_id"] == run_id
        assert first.json()["status"] == "queued"
        assert first.json()["requested_by"] == "operator"
        other = api.post(f"/api/v1/export-definitions/{names['definition']}/runs").json()["run_id"]
        assert other != run_id

        runs = api.get("/api/v1/runs", params={"definition": names["definition"], "status": "queued"}).json()
        assert {r["run_id"] for r in runs} == {run_id, other}
        cancelled = api.post(f"/api/v1/runs/{run_id}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        # Cancelling again is the retry of a cancel Kafka did not acknowledge: its cancellation published again.
        assert api.post(f"/api/v1/runs/{run_id}/cancel").json()["status"] == "cancelled"
        assert api.get(f"/api/v1/runs/{run_id}").json()["status"] == "cancelled"
        assert [
            r["run_id"]
            for r in api.get(
                f"/api/v1/export-definitions/{names['definition']}/runs", params={"status": "queued"}
            ).json()
        ] == [other]

    # The server's topics are shared by the module's tests: this test's requests are those naming its definition,
    # its run events those of its two runs.
    topic = f"{admin.topic_prefix}exports.run-requests"

    def our_requests(values: list[bytes]) -> list[RunRequested]:
        requests = [RunRequested.model_validate_json(v) for v in values]
        return [r for r in requests if r.definition == names["definition"]]

    requests = our_requests(read_until(kafka_bootstrap, topic, lambda vs: len(our_requests(vs)) >= 3))
    # The retry found its run still queued and published its request again, under the same run id (the extractor
    # starts it once): what makes a retry after a 503 kafka-unavailable start the run.
    assert sorted(str(r.run_id) for r in requests) == sorted([run_id, run_id, other])
    assert {(r.trigger.value, r.requested_by) for r in requests} == {("manual", "operator")}

    def our_events(values: list[bytes]) -> list[bytes]:
        return [v for v in values if json.loads(v)["run_id"] in (run_id, other)]

    events = our_events(
        read_until(kafka_bootstrap, f"{admin.topic_prefix}exports.run-events", lambda vs: len(our_events(vs)) >= 1)
    )
    assert RunCancelled.model_validate_json(events[0]).run_id == uuid.UUID(run_id)


# Every operation of the API and the permission it needs; the matrix test fails when a route is missing here.
REQUIRED_ROLE: dict[str, str] = {
    **{f"list_{k}": "viewer" for k in ("ConnectionProfile", "HttpTemplate", "SavedQuery")},
    **{f"read_{k}": "viewer" for k in ("ConnectionProfile", "HttpTemplate", "SavedQuery", "ExportDefinition")},
    **{f"{op}_ConnectionProfile": "admin" for op in ("create", "replace", "delete", "copy")},
    **{
        f"{op}_{k}": "editor"
        for op in ("create", "replace", "delete", "copy")
        for k in ("HttpTemplate", "SavedQuery", "ExportDefinition")
    },
    "search_ExportDefinition": "viewer",
    **{f"{step}_ExportDefinition": "editor" for step in ("filter", "destination", "schedule", "notifications")},
    "preview_schedule_ExportDefinition": "viewer",
    "execute_ExportDefinition": "operator",
    "dry_run_ExportDefinition": "editor",  # editors and operators may dry-run; viewers may not
    "list_runs": "viewer",
    "list_runs_of_ExportDefinition": "viewer",
    "read_run": "viewer",
    "cancel_run": "operator",
    "replay_run": "operator",
    "list_dead_letters": "viewer",
    "apply_objects": "editor",
    "read_audit": "viewer",
    "read_member_delivery": "viewer",
    "read_attempts_ExportDefinition": "editor",  # attempts are member data as sent: the dry-run permission
}
#: A role that lacks the permission, for each required role.
WRONG_ROLE = {"viewer": None, "editor": "viewer", "operator": "editor", "admin": "editor"}


def test_auth_matrix_every_route_without_token_with_a_wrong_role_and_with_the_right_one(admin_on_sqlite: AdminServer):
    admin = admin_on_sqlite
    with admin.client(None) as anonymous:
        spec = anonymous.get("/openapi.json").json()
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/metrics").status_code == 200
    operations = [
        (method.upper(), path, op["operationId"])
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if path.startswith("/api/")
    ]
    assert {op for *_, op in operations} == set(REQUIRED_ROLE)
    for method, path, operation in operations:
        url = path.replace("{name}", "nothing-here").replace("{run_id}", str(uuid.uuid4()))
        body: dict[str, object] | None = {} if method in ("POST", "PUT") else None
        with admin.client(None) as anonymous:
            answer = anonymous.request(method, url, json=body)
            assert answer.status_code == 401, (operation, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert (
                anonymous.request(method, url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
            )
        required = REQUIRED_ROLE[operation]
        if wrong := WRONG_ROLE[required]:
            with admin.client(wrong) as api:
                assert api.request(method, url, json=body).status_code == 403, (operation, wrong)
        with admin.client(required) as api:
            assert api.request(method, url, json=body).status_code not in (401, 403, 500), operation


@pytest.mark.parametrize(
    "phases",
    [
        # The coverage phase (every operation's boundary and negative cases) is most of the time over HTTP: CI
        # runs it in-process (tests/fuzz/test_schemathesis.py), `make fuzz` over HTTP too.
        pytest.param("examples,fuzzing", id="examples-fuzzing"),
        pytest.param("examples,coverage,fuzzing", id="all-phases", marks=[pytest.mark.long, pytest.mark.fuzz]),
    ],
)
def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(admin_on_sqlite: AdminServer, phases: str):
    admin = admin_on_sqlite
    _seed(admin)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{admin.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {admin.tokens['admin']}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "10",
            "--phases",
            phases,
            "--generation-deterministic",
            "--request-timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert SECRET_PASSWORD not in admin.log()
