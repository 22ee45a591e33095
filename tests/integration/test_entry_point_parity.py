"""Entry-point parity: every use case through the admin API, exportctl on the catalog and exportctl through
the API, on one catalog (SQLite, then PostgreSQL), a real member store and real Kafka.

The same operation must leave the same state, and the same refusal must read the same: the API's problem
``detail`` is the refusal's reason, exportctl prints ``exportctl: <reason>`` (on the catalog) or
``exportctl: <status>: <reason>`` (through the API) and exits 3 (not found) or 4 (refused or invalid), and a
refusal changes nothing.

One admin API per backend for the whole module: tests share its catalog, each with names of its own.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from services.scheduler.clock import ManualClock
from shared.application.masked_secrets import MASK, UNKEPT_MASK
from shared.catalog import CatalogStores, make_engine
from shared.cli.__main__ import main as exportctl
from shared.domain.catalog_objects import KINDS, stored_form
from shared.events import RunRequested
from shared.querystore.demo_data import COLUMNS, create_demo_members
from shared.topics import Topics
from tests.admin_server import AdminServer, admin_server
from tests.integration.test_scheduler import failing_maths_for, scheduler_on

pytestmark = pytest.mark.integration

#: Where profiles may point: the admin API allows 127.0.0.1 (tests/admin_server.py); exportctl is told the same.
ALLOWED_DESTINATIONS = "127.0.0.1"
#: The columns the base set's saved query returns, as the member store tells them.
QUERY_COLUMNS = ["id", "email", "first_name", "points"]
#: The reason of the SSRF guard for the cloud metadata address (169.254.169.254), after the object and field.
METADATA_REFUSAL = (
    "destination 169.254.169.254 (169.254.169.254) is a link-local (cloud metadata) address; "
    "allow it explicitly in EXPORT_ALLOWED_DESTINATIONS if it is meant to be reached"
)
Snapshot = dict[str, list[dict[str, Any]]]


# --- infrastructure: one admin API per backend, a member store, Kafka --------------------------------


@dataclass
class Deployment:
    """The admin API on a catalog, the member store both entry points read, and the broker."""

    server: AdminServer
    members_url: str
    kafka_bootstrap: str


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory, postgres_database_factory, kafka_bootstrap: str
) -> Iterator[Deployment]:
    """One admin API per backend (it takes seconds to start), on a fresh catalog, with 25 demo members."""
    directory = tmp_path_factory.mktemp(f"parity-{request.param}")
    catalog_url = f"sqlite:///{directory / 'catalog.db'}" if request.param == "sqlite" else postgres_database_factory()
    members_url = f"sqlite:///{directory / 'members.db'}"
    engine = make_engine(members_url)
    create_demo_members(engine, 25)
    engine.dispose()
    with admin_server(
        directory, catalog_url, kafka_bootstrap, members_url, allowed_destinations=ALLOWED_DESTINATIONS
    ) as server:
        yield Deployment(server, members_url, kafka_bootstrap)


# --- the three entry points and the catalog's state ---------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one exportctl command did: its exit code and what it printed."""

    code: int
    out: str
    err: str


@dataclass
class Parity:
    """One test's view of the deployment: the admin API, exportctl in both modes, the catalog as stored."""

    deployment: Deployment
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]
    directory: Path
    #: Makes this test's object names its own (the catalog is shared by the module's tests).
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def server(self) -> AdminServer:
        return self.deployment.server

    def api(self) -> httpx.Client:
        """The admin API as an admin (connection profiles need one)."""
        return self.server.client("admin")

    def _exportctl(self, argv: tuple[str, ...], settings: dict[str, str]) -> Outcome:
        common = {
            "EXPORT_CATALOG_URL": self.server.catalog_url,
            "EXPORT_QUERY_STORE_URL": self.deployment.members_url,
            "EXPORT_ALLOWED_DESTINATIONS": ALLOWED_DESTINATIONS,
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS": self.deployment.kafka_bootstrap,
            "EXPORT_TOPIC_PREFIX": self.server.topic_prefix,  # the topics the admin API publishes on
            "EXPORT_TOPIC_PARTITIONS": "3",
        }
        for name in ("EXPORT_API_URL", "EXPORT_API_TOKEN"):
            self.monkeypatch.delenv(name, raising=False)
        for name, value in (common | settings).items():
            self.monkeypatch.setenv(name, value)
        self.capsys.readouterr()  # what was printed before is not this command's
        code = exportctl(list(argv))
        out, err = self.capsys.readouterr()
        return Outcome(code, out, err)

    def direct(self, *argv: str) -> Outcome:
        """exportctl on the catalog directly (no EXPORT_API_URL)."""
        return self._exportctl(argv, {})

    def via_api(self, *argv: str) -> Outcome:
        """exportctl through the admin API, with the admin's token."""
        return self._exportctl(
            argv, {"EXPORT_API_URL": self.server.url, "EXPORT_API_TOKEN": self.server.tokens["admin"]}
        )

    def snapshot(self) -> Snapshot:
        """Every object of every kind, as stored (secrets included), by kind."""
        stores = CatalogStores.from_url(self.server.catalog_url)
        try:
            return {
                kind: [stored_form(obj) for obj in stores.definitions.list_objects(model)]
                for kind, model in KINDS.items()
            }
        finally:
            stores.close()

    def manifest(self, documents: list[dict[str, Any]]) -> str:
        """A manifest file of ``documents`` (``{kind, spec}``), for ``exportctl apply -f``."""
        path = self.directory / f"manifest-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        return str(path)

    def refused_everywhere(self, call_api: Callable[[httpx.Client], httpx.Response], argv: list[str]) -> Refusals:
        """The same operation through the admin API, then exportctl (``argv``) in both modes; none may change
        the catalog."""
        before = self.snapshot()
        with self.api() as api:
            response = call_api(api)
        assert self.snapshot() == before, f"the admin API changed the catalog although it answered {response.text}"
        direct = self.direct(*argv)
        assert self.snapshot() == before, f"exportctl on the catalog changed it although it answered {direct}"
        via_api = self.via_api(*argv)
        assert self.snapshot() == before, (
            f"exportctl through the API changed the catalog although it answered {via_api}"
        )
        return Refusals(response, direct, via_api)


@dataclass(frozen=True)
class Refusals:
    """One operation's answers from the three entry points."""

    api: httpx.Response
    direct: Outcome
    via_api: Outcome

    def assert_same(self, status: int, reason: str) -> None:
        """All three refused with ``status`` (exportctl: exit 3 for a 404, else 4) and exactly ``reason``."""
        code = 3 if status == 404 else 4
        assert self.api.status_code == status, self.api.text
        assert self.api.headers["content-type"] == "application/problem+json"
        assert self.api.json()["detail"] == reason
        assert (self.direct.code, self.direct.err, self.direct.out) == (code, f"exportctl: {reason}\n", "")
        assert (self.via_api.code, self.via_api.err, self.via_api.out) == (
            code,
            f"exportctl: {status}: {reason}\n",
            "",
        )


@pytest.fixture
def parity(deployment: Deployment, monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> Parity:
    return Parity(deployment, monkeypatch, capsys, tmp_path)


# --- objects -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """The base set's names, made a test's own by its tag."""

    tag: str

    @property
    def profile(self) -> str:
        return f"partner-{self.tag}"

    @property
    def query(self) -> str:
        return f"members-{self.tag}"

    @property
    def template(self) -> str:
        return f"upsert-{self.tag}"

    @property
    def definition(self) -> str:
        return f"export-{self.tag}"


def base_documents(names: Names) -> list[dict[str, Any]]:
    """A profile (on an allowed address), a query with an integer parameter, a template and a definition.

    The query gives no ``columns``: they are discovered from the member store.
    """
    return [
        {
            "kind": "ConnectionProfile",
            "spec": {
                "name": names.profile,
                "label": "Partner",
                "base_url": "http://127.0.0.1:9/hooks",
                "auth": {"type": "bearer", "token": "partner-s3cret"},
            },
        },
        {
            "kind": "SavedQuery",
            "spec": {
                "name": names.query,
                "sql": "SELECT id, email, first_name, points FROM members WHERE points >= :min_points",
                "parameters": {"min_points": {"type": "integer", "default": 0}},
            },
        },
        {
            "kind": "HttpTemplate",
            "spec": {
                "name": names.template,
                "query": names.query,
                "profile": names.profile,
                "path": "/members",
                "body": '[{% for m in members %}{"id": {{ m.id }}, "email": {{ m.email | tojson }}}'
                "{% if not loop.last %},{% endif %}{% endfor %}]",
                "batch_size": 2,
            },
        },
        {
            "kind": "ExportDefinition",
            "spec": {
                "name": names.definition,
                "query": names.query,
                "template": names.template,
                "parameters": {"min_points": 10},
            },
        },
    ]


def seeded(parity: Parity) -> Names:
    """The base set, applied (through exportctl on the catalog)."""
    names = Names(parity.tag)
    applied = parity.direct("apply", "-f", parity.manifest(base_documents(names)))
    assert applied.code == 0, applied
    return names


def objects_named(snapshot: Snapshot, names: Names) -> Snapshot:
    """The base set's objects in a snapshot."""
    ours = {names.profile, names.query, names.template, names.definition}
    return {kind: [spec for spec in specs if spec["name"] in ours] for kind, specs in snapshot.items()}


def run_requests(deployment: Deployment) -> list[RunRequested]:
    """Every run request on the deployment's topic so far: read up to the end offsets taken when called.

    Run requests are published with acknowledgements before the request returns, so whatever an earlier
    call published is below these offsets.
    """
    topic = Topics(deployment.server.topic_prefix).run_requests
    consumer = KafkaConsumer(bootstrap_servers=deployment.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    deadline = time.monotonic() + 60
    values: list[bytes] = []
    try:
        while not (partitions := consumer.partitions_for_topic(topic)):
            assert time.monotonic() < deadline, f"{topic}: no partitions known"
            consumer.poll(timeout_ms=100)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(assigned)
        while any(consumer.position(tp) < ends[tp] for tp in assigned):
            assert time.monotonic() < deadline, f"{topic}: the records up to {ends} were not read in time"
            for records in consumer.poll(timeout_ms=250).values():
                values.extend(record.value for record in records)
    finally:
        consumer.close()
    return [RunRequested.model_validate_json(value) for value in values]


# --- one success, through each entry point -------------------------------------------------------------


def test_applying_a_set_stores_the_same_objects_through_each_entry_point(parity: Parity):
    names = Names(parity.tag)
    documents = base_documents(names)
    kinds = [document["kind"] for document in documents]
    created_lines = "".join(f"{d['kind']}/{d['spec']['name']} created\n" for d in documents)

    def through_the_api() -> None:
        with parity.api() as api:
            answer = api.post("/api/v1/apply", json={"objects": documents})
        assert answer.status_code == 200, answer.text
        assert [(c["kind"], c["name"], c["change"]) for c in answer.json()["changes"]] == [
            (d["kind"], d["spec"]["name"], "created") for d in documents
        ]

    def with_exportctl(run: Callable[..., Outcome]) -> Callable[[], None]:
        def apply() -> None:
            outcome = run("apply", "-f", parity.manifest(documents))
            assert (outcome.code, outcome.out) == (0, created_lines), outcome

        return apply

    stored = {}
    for entry_point, apply in (
        ("admin API", through_the_api),
        ("exportctl on the catalog", with_exportctl(parity.direct)),
        ("exportctl through the API", with_exportctl(parity.via_api)),
    ):
        apply()
        stored[entry_point] = objects_named(parity.snapshot(), names)
        for kind, document in reversed(list(zip(kinds, documents, strict=True))):  # leave the names free again
            deleted = parity.direct("delete", kind, document["spec"]["name"])
            assert deleted.code == 0, deleted

    api_state = stored["admin API"]
    assert stored["exportctl on the catalog"] == api_state
    assert stored["exportctl through the API"] == api_state
    assert [len(specs) for specs in api_state.values()] == [1, 1, 1, 1]
    assert api_state["SavedQuery"][0]["columns"] == QUERY_COLUMNS  # discovered from the member store
    assert api_state["ConnectionProfile"][0]["auth"]["token"] == "partner-s3cret"  # the secret kept as given
    assert objects_named(parity.snapshot(), names) == {kind: [] for kind in KINDS}


# --- the same refusals, with the same reasons ----------------------------------------------------------


def test_a_profile_on_a_refused_destination_is_refused_alike(parity: Parity):
    name = f"metadata-{parity.tag}"
    spec = {"name": name, "base_url": "http://169.254.169.254/latest"}
    refusals = parity.refused_everywhere(
        lambda api: api.post("/api/v1/connection-profiles", json=spec),
        ["apply", "-f", parity.manifest([{"kind": "ConnectionProfile", "spec": spec}])],
    )
    refusals.assert_same(422, f"ConnectionProfile '{name}': field 'base_url': {METADATA_REFUSAL}")


def read_profile(parity: Parity, name: str) -> dict[str, Any]:
    """A profile as the admin API answers it: its secrets masked."""
    with parity.api() as api:
        answer = api.get(f"/api/v1/connection-profiles/{name}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["auth"]["token"] == MASK
    return body


def test_a_profile_read_and_sent_under_a_new_name_is_refused_alike_as_no_secret_is_stored_there(parity: Parity):
    """Before: the manifest of a profile, applied or created under a new name, stored the mask as its token."""
    names = seeded(parity)
    name = f"renamed-{parity.tag}"
    spec = {key: value for key, value in read_profile(parity, names.profile).items() if value is not None}
    spec["name"] = name
    refusals = parity.refused_everywhere(
        lambda api: api.post("/api/v1/connection-profiles", json=spec),
        ["apply", "-f", parity.manifest([{"kind": "ConnectionProfile", "spec": spec}])],
    )
    refusals.assert_same(422, f"ConnectionProfile '{name}': field 'auth.token': {UNKEPT_MASK}")


def test_a_masked_secret_under_a_changed_auth_type_is_refused_alike(parity: Parity):
    """Before: changing a profile's auth type with the new type's secret masked stored the mask as the password."""
    names = seeded(parity)
    spec = {key: value for key, value in read_profile(parity, names.profile).items() if value is not None}
    spec["auth"] = {"type": "basic", "username": "exporter", "password": MASK}
    refusals = parity.refused_everywhere(
        lambda api: api.put(f"/api/v1/connection-profiles/{names.profile}", json=spec),
        ["apply", "-f", parity.manifest([{"kind": "ConnectionProfile", "spec": spec}])],
    )
    refusals.assert_same(422, f"ConnectionProfile '{names.profile}': field 'auth.password': {UNKEPT_MASK}")
    assert "partner-s3cret" not in refusals.api.text + refusals.direct.err + refusals.via_api.err


def test_a_profile_read_back_is_unchanged_and_a_copy_keeps_its_secret_through_each_entry_point(parity: Parity):
    names = seeded(parity)
    for run in (parity.direct, parity.via_api):
        shown = run("get", "ConnectionProfile", names.profile, "-o", "yaml")
        assert shown.code == 0, shown
        assert MASK in shown.out
        assert "partner-s3cret" not in shown.out
        manifest = parity.directory / f"shown-{uuid.uuid4().hex[:8]}.yaml"
        manifest.write_text(shown.out)
        applied = run("apply", "-f", str(manifest))
        assert (applied.code, applied.out) == (0, f"ConnectionProfile/{names.profile} unchanged\n"), applied
    with parity.api() as api:
        updated = api.put(f"/api/v1/connection-profiles/{names.profile}", json=read_profile(parity, names.profile))
        assert updated.status_code == 200, updated.text
        copied = api.post(f"/api/v1/connection-profiles/{names.profile}/copy", json={"name": f"copy-{parity.tag}"})
        assert copied.status_code == 201, copied.text
    copied_by_exportctl = parity.via_api("copy", "ConnectionProfile", names.profile, "--name", f"copy2-{parity.tag}")
    assert copied_by_exportctl.code == 0, copied_by_exportctl
    tokens = {
        spec["name"]: spec["auth"]["token"]
        for spec in parity.snapshot()["ConnectionProfile"]
        if spec["name"] in {names.profile, f"copy-{parity.tag}", f"copy2-{parity.tag}"}
    }
    assert tokens == dict.fromkeys([names.profile, f"copy-{parity.tag}", f"copy2-{parity.tag}"], "partner-s3cret")


def test_a_template_using_a_column_the_query_does_not_return_is_refused_alike(parity: Parity):
    names = seeded(parity)
    name = f"tiers-{parity.tag}"
    spec = {
        "name": name,
        "query": names.query,
        "profile": names.profile,
        "body": '{"tier": {{ member.tier | tojson }}}',
    }
    refusals = parity.refused_everywhere(
        lambda api: api.post("/api/v1/http-templates", json=spec),
        ["apply", "-f", parity.manifest([{"kind": "HttpTemplate", "spec": spec}])],
    )
    refusals.assert_same(
        422,
        f"HttpTemplate '{name}': field 'query': template '{name}' uses column(s) tier that query "
        f"'{names.query}' does not return (it returns: {', '.join(QUERY_COLUMNS)})",
    )


def test_deleting_a_referenced_object_is_refused_alike(parity: Parity):
    names = seeded(parity)
    refusals = parity.refused_everywhere(
        lambda api: api.delete(f"/api/v1/saved-queries/{names.query}"), ["delete", "SavedQuery", names.query]
    )
    refusals.assert_same(
        409,
        f"'{names.query}' is used by HttpTemplate '{names.template}', ExportDefinition '{names.definition}': "
        "delete those first",
    )


def test_deleting_a_missing_object_is_refused_alike(parity: Parity):
    name = f"nothing-{parity.tag}"
    refusals = parity.refused_everywhere(
        lambda api: api.delete(f"/api/v1/saved-queries/{name}"), ["delete", "SavedQuery", name]
    )
    refusals.assert_same(404, f"SavedQuery '{name}' does not exist")


def test_a_name_conflict_is_refused_alike(parity: Parity):
    names = seeded(parity)
    with parity.api() as api:
        copied = api.post(f"/api/v1/saved-queries/{names.query}/copy", json={"name": f"copy-{parity.tag}"})
        assert copied.status_code == 201, copied.text
    taken = f"copy-{parity.tag}"
    refusals = parity.refused_everywhere(
        lambda api: api.post(f"/api/v1/saved-queries/{names.query}/copy", json={"name": taken}),
        ["copy", "SavedQuery", names.query, "--name", taken],
    )
    reason = f"SavedQuery '{taken}' exists already"
    refusals.assert_same(409, reason)
    # Creating with a taken name is the same conflict.
    before = parity.snapshot()
    with parity.api() as api:
        created = api.post("/api/v1/saved-queries", json={"name": taken, "sql": "SELECT id FROM members"})
    assert (created.status_code, created.json()["detail"]) == (409, reason)
    assert parity.snapshot() == before


def test_an_invalid_run_parameter_is_refused_alike_and_nothing_is_run(parity: Parity):
    names = seeded(parity)
    refusals = parity.refused_everywhere(
        lambda api: api.post(
            f"/api/v1/export-definitions/{names.definition}/runs", json={"parameters": {"min_points": "abc"}}
        ),
        ["run", names.definition, "--param", "min_points=abc"],
    )
    refusals.assert_same(
        422,
        "parameters: parameter 'min_points': expected integer: "
        "Input should be a valid integer, unable to parse string as an integer",
    )
    stores = CatalogStores.from_url(parity.server.catalog_url)
    try:
        assert stores.runs.list_runs(names.definition) == []
        assert [r.definition for r in run_requests(parity.deployment)].count(names.definition) == 0

        # The control: a valid value is recorded and published, and it is the only run of the definition.
        accepted = parity.direct("run", names.definition, "--param", "min_points=5")
        assert accepted.code == 0, accepted
        [record] = stores.runs.list_runs(names.definition)
    finally:
        stores.close()
    [request] = [r for r in run_requests(parity.deployment) if r.definition == names.definition]
    assert (request.run_id, request.parameters) == (record.run_id, {"min_points": "5"})


def test_applying_a_set_is_all_or_nothing_through_both_exportctl_modes(parity: Parity):
    names = Names(parity.tag)
    profile, query, template = base_documents(names)[:3]
    template = {"kind": "HttpTemplate", "spec": {**template["spec"], "body": '{"tier": {{ member.tier | tojson }}}'}}
    documents = [profile, query, template]  # the third is refused: its query returns no tier
    refusals = parity.refused_everywhere(
        lambda api: api.post("/api/v1/apply", json={"objects": documents}),
        ["apply", "-f", parity.manifest(documents)],
    )
    refusals.assert_same(
        422,
        f"HttpTemplate '{names.template}': field 'query': template '{names.template}' uses column(s) tier that "
        f"query '{names.query}' does not return (it returns: {', '.join(QUERY_COLUMNS)})",
    )
    assert objects_named(parity.snapshot(), names) == {kind: [] for kind in KINDS}  # the first two unwritten


# --- the admin API's checks against the real member store ----------------------------------------------


def test_a_saved_query_created_through_the_api_has_its_columns_discovered(parity: Parity):
    name = f"everyone-{parity.tag}"
    with parity.api() as api:
        created = api.post(
            "/api/v1/saved-queries", json={"name": name, "sql": "SELECT * FROM members", "columns": ["stale"]}
        )
        assert created.status_code == 201, created.text
        assert created.json()["columns"] == list(COLUMNS)
        assert api.get(f"/api/v1/saved-queries/{name}").json()["columns"] == list(COLUMNS)

        before = parity.snapshot()
        keyless = f"keyless-{parity.tag}"
        refused = api.post("/api/v1/saved-queries", json={"name": keyless, "sql": "SELECT email FROM members"})
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"] == (
            f"SavedQuery '{keyless}': field 'key_column': the query returns no column 'id' (it returns: email)"
        )
        assert parity.snapshot() == before
    [stored] = [spec for spec in parity.snapshot()["SavedQuery"] if spec["name"] == name]
    assert stored["columns"] == list(COLUMNS)


#: Bodies that parse, use only the query's columns, and fail to render for its first members, on line 3.
UNRENDERABLE_BODIES = {
    "an attribute a value lacks": '{\n  "id": {{ member.id }},\n  "domain": "{{ member.email.domain }}"\n}',
    "a division by zero": '{\n  "id": {{ member.id }},\n  "ratio": {{ member.points // 0 }}\n}',
    "a string left unquoted": '{\n  "id": {{ member.id }},\n  "email": {{ member.email }}\n}',
}


@pytest.mark.parametrize("body", UNRENDERABLE_BODIES.values(), ids=UNRENDERABLE_BODIES.keys())
def test_a_template_that_does_not_render_for_the_first_members_is_refused_naming_its_line(parity: Parity, body: str):
    names = seeded(parity)
    name = f"broken-{parity.tag}"
    before = parity.snapshot()
    with parity.api() as api:
        refused = api.post(
            "/api/v1/http-templates", json={"name": name, "query": names.query, "profile": names.profile, "body": body}
        )
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith(f"HttpTemplate '{name}': field 'body': template body"), detail
    assert "line 3" in detail, detail
    assert detail.endswith("(rendered with the query's first members)"), detail
    assert parity.snapshot() == before


def test_a_schedule_the_scheduler_could_not_compute_is_named_by_next_runs_and_describe_alike(
    parity: Parity, monkeypatch: pytest.MonkeyPatch
):
    """The admin API's schedule preview and the console said it (session 49); exportctl listed fire times that never
    came, computed again on the spot (or failed as the scheduler's maths did)."""
    names = seeded(parity)
    scheduled = {"enabled": True, "timezone": "UTC", "cron": "0 3 * * *"}
    definition = base_documents(names)[-1]
    applied = parity.direct(
        "apply", "-f", parity.manifest([{**definition, "spec": {**definition["spec"], "schedule": scheduled}}])
    )
    assert applied.code == 0, applied
    stores = CatalogStores.from_url(parity.server.catalog_url)
    with monkeypatch.context() as patched:
        patched.setattr("services.scheduler.planning.fire_times", failing_maths_for("0 3 * * *"))
        # Its lease for a millisecond: another test's scheduler leads at once.
        scheduler_on(stores, ManualClock(datetime.now(UTC)), replica_id=f"s-{parity.tag}", lease_seconds=0.001).tick()
    stores.close()
    said = "schedule not computable (OverflowError): not fired until edited"
    for run in (parity.direct, parity.via_api):
        preview = run("next-runs", names.definition)
        assert (preview.code, preview.out.splitlines()) == (0, ["cron '0 3 * * *' (UTC): every day, time 03:00", said])
        as_json = json.loads(run("next-runs", names.definition, "-o", "json").out)
        assert (as_json["not_computable"], as_json["fire_times"]) == ("OverflowError", [])
        described = run("describe", "ExportDefinition", names.definition)
        assert (described.code, described.out.splitlines()[-1]) == (0, f"# {said}")
