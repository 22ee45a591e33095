"""exportctl prints the same through the admin API and on the catalog directly (README: "the same tables and YAML"),
for one catalog read both ways: the real admin app on a real HTTP server in a thread (its publisher records), and
exportctl in-process, once with EXPORT_API_URL, once with EXPORT_CATALOG_URL. Also what a new user met in direct
mode (session 54's walkthrough): ``cancel`` in both modes, a run not published without an Idempotency-Key, a
member store that does not exist, a dead-letter topic that does not exist, warnings without colour codes.

Before (main at e6a4c79): instants ``+00:00`` on the catalog and ``Z`` through the API (``runs``, ``describe``,
``next-runs``, ``audit``), ``audit -o json`` without ``id``/``business_units`` on the catalog, ``attempts -o json``
keys in another order; no ``cancel``; the run's message told to retry with a key never given; an empty member store
created; ``0 dead letter(s)``, exit 0; ``field 'label'`` named after a definition that does not exist."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.processes import free_port
from shared.catalog import CatalogStores
from shared.cli.__main__ import main as exportctl
from shared.kafka import ensure_topics
from shared.settings import CommonSettings
from tests.admin_app import in_process_api, seed
from tests.integration.test_admin_replay import _attempt as captured_attempt
from tests.integration.test_kafka_unavailable import serving

pytestmark = pytest.mark.integration


@dataclass
class Both:
    """One catalog, and how exportctl reaches it in each mode."""

    directory: Path
    catalog_url: str
    api_url: str
    token: str
    #: A port nothing listens on: Kafka down, for direct mode.
    kafka: str

    def run(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mode: str, *argv: str
    ) -> tuple[int, str, str]:
        """exportctl ``argv`` in ``mode`` ("api", "api without token" or "direct"): its exit code, stdout and stderr.
        Its config file is the directory's ``config.yaml`` (none unless a test writes it)."""
        capsys.readouterr()
        with monkeypatch.context() as env:
            for name in ("EXPORT_API_URL", "EXPORT_API_TOKEN", "EXPORTCTL_DEBUG", "EXPORT_QUERY_STORE_URL", "NO_COLOR"):
                env.delenv(name, raising=False)
            env.setenv("EXPORTCTL_CONFIG", str(self.directory / "config.yaml"))
            env.setenv("EXPORT_CATALOG_URL", self.catalog_url)
            env.setenv("EXPORT_KAFKA_BOOTSTRAP_SERVERS", self.kafka)
            if mode.startswith("api"):
                env.setenv("EXPORT_API_URL", self.api_url)
            if mode == "api":
                env.setenv("EXPORT_API_TOKEN", self.token)
            code = exportctl(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    def same(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
        """What ``argv`` prints, asserted identical (and exit 0) in both modes."""
        api = self.run(monkeypatch, capsys, "api", *argv)
        direct = self.run(monkeypatch, capsys, "direct", *argv)
        assert api[0] == direct[0] == 0, (api, direct)
        assert direct[1] == api[1]
        return api[1]


@pytest.fixture
def both(tmp_path: Path) -> Iterator[Both]:
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with in_process_api(tmp_path, catalog_url=catalog_url) as api:
        with api.client() as client:
            seed(client)
            answer = client.post("/api/v1/export-definitions/nightly/runs", json={"parameters": {}})
            assert answer.status_code == 202, answer.text
        with serving(api.app) as url:
            yield Both(tmp_path, catalog_url, url, api.tokens["admin"], f"127.0.0.1:{free_port()}")


def test_both_modes_print_runs_schedules_audit_and_attempts_alike(
    both: Both, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    stores = CatalogStores.from_url(both.catalog_url)
    try:
        run = stores.runs.list_runs("nightly", 1)[0]
        stores.attempts.add([captured_attempt("nightly", "partner", run.run_id)], keep=10)
    finally:
        stores.close()
    listed = both.same(monkeypatch, capsys, "runs", "-o", "json")
    assert '"requested_at": "20' in listed
    assert 'Z"' in listed
    assert "+00:00" not in listed
    both.same(monkeypatch, capsys, "runs", "--id", str(run.run_id), "-o", "json")
    described = both.same(monkeypatch, capsys, "describe", "def", "nightly")
    assert "next: " in described
    assert "+00:00" not in described
    both.same(monkeypatch, capsys, "next-runs", "nightly", "-o", "json")
    table = both.same(monkeypatch, capsys, "audit")
    assert "Z  admin" in table
    entries = both.same(monkeypatch, capsys, "audit", "-o", "json")
    assert '"business_units": [' in entries
    assert '"id": ' in entries
    attempts = both.same(monkeypatch, capsys, "attempts", "nightly", "-o", "json")
    assert '"at": "' in attempts
    both.same(monkeypatch, capsys, "attempts", "nightly")


def test_cancel_through_the_api_and_on_the_catalog(
    both: Both, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """Through the API: the run cancelled, exit 0. On the catalog with Kafka down: the run recorded cancelled (it
    holds), exit 5 saying its event was not published and that cancelling again publishes it."""
    first = both.run(monkeypatch, capsys, "api", "runs", "-o", "json")
    run_id = first[1].split('"run_id": "')[1].split('"')[0]
    code, out, err = both.run(monkeypatch, capsys, "api", "cancel", run_id)
    assert (code, err) == (0, "")
    assert out.startswith(f"run {run_id} of 'nightly': cancelled\n")
    code, out, err = both.run(monkeypatch, capsys, "direct", "cancel", run_id)  # cancelled already: as it is
    assert code == 5, err  # its cancellation is published again while the notifier has not handled it
    assert f"run {run_id} was recorded cancelled" in err
    assert "cancelling it again publishes it again" in err
    code, out, err = both.run(monkeypatch, capsys, "direct", "cancel", "not-a-run")
    assert code == 2
    assert "'not-a-run' is not a run id" in err
    code, out, err = both.run(monkeypatch, capsys, "api", "cancel", str(uuid.uuid4()))
    assert code == 3, err


def test_a_run_requested_without_a_key_kafka_does_not_take_says_how_to_cancel_it(
    both: Both, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    code, _, err = both.run(monkeypatch, capsys, "direct", "run", "nightly")
    assert code == 5, err
    run_id = err.split("run ", 1)[1].split()[0]
    assert "retrying with the same Idempotency-Key" not in err
    assert "requested without an Idempotency-Key, so requesting it again starts another run" in err
    assert f"exportctl cancel {run_id}" in err
    code, _, err = both.run(monkeypatch, capsys, "direct", "cancel", run_id)
    assert code == 5
    assert f"run {run_id} was recorded cancelled" in err
    code, out, _ = both.run(monkeypatch, capsys, "direct", "runs", "--id", run_id)
    assert f"run {run_id} of 'nightly': cancelled" in out
    code, _, err = both.run(monkeypatch, capsys, "direct", "run", "nightly", "--idempotency-key", "k-1")
    assert code == 5
    assert "retrying with the same Idempotency-Key publishes it again" in err


def test_a_copy_label_too_long_is_refused_alike_naming_the_field(
    both: Both, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    label = "x" * 201
    api = both.run(monkeypatch, capsys, "api", "copy", "def", "nightly", "--label", label)
    direct = both.run(monkeypatch, capsys, "direct", "copy", "def", "nightly", "--label", label)
    reason = "field 'label': String should have at most 200 characters"
    assert api == (4, "", f"exportctl: 422: {reason}\n")
    assert direct == (4, "", f"exportctl: {reason}\n")


def test_apply_on_the_catalog_does_not_create_a_member_store_that_does_not_exist(
    both: Both, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    manifest = tmp_path / "q.yaml"
    manifest.write_text("kind: SavedQuery\nspec: {name: qq, sql: 'SELECT id FROM members'}\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = both.run(monkeypatch, capsys, "direct", "apply", "-f", str(manifest))
    assert code == 2, err
    assert "no member store at sqlite:///.local/members.db" in err
    assert "EXPORT_QUERY_STORE_URL" in err
    assert "--skip-discovery" in err
    assert not (tmp_path / ".local").exists()  # before: an empty .local/members.db, then "no such table: members"
    code, out, err = both.run(monkeypatch, capsys, "direct", "apply", "-f", str(manifest), "--skip-discovery")
    assert code == 0, err
    assert out.startswith("SavedQuery/qq created")


def test_direct_mode_warnings_carry_no_colour_codes_when_stderr_is_not_a_terminal(
    both: Both, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """The seed's profile holds a password and the catalog has no encryption key: its copy's save warns on stderr."""
    code, _, err = both.run(monkeypatch, capsys, "direct", "copy", "profile", "partner")
    assert code == 0
    assert "EXPORT_CATALOG_ENCRYPTION_KEYS" in err
    assert "\x1b[" not in err


def test_dead_letters_list_on_a_topic_that_does_not_exist_exits_5_naming_it_and_the_prefix(
    both: Both, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """A wrong EXPORT_TOPIC_PREFIX (or cluster) is not "no dead letters"; the topic there, empty, is."""
    prefix = f"s54{uuid.uuid4().hex[:8]}."
    monkeypatch.setenv("EXPORT_TOPIC_PREFIX", prefix)
    both.kafka = kafka_bootstrap
    code, out, err = both.run(monkeypatch, capsys, "direct", "dead-letters", "list")
    assert (code, out) == (5, ""), err  # before: "0 dead letter(s)", exit 0
    assert err == (
        f"exportctl: the dead letters cannot be read now: topic '{prefix}exports.dead-letters' does not exist on the "
        f"Kafka cluster at {kafka_bootstrap}: check EXPORT_TOPIC_PREFIX ('{prefix}') and "
        "EXPORT_KAFKA_BOOTSTRAP_SERVERS, or whether the Kafka user is allowed to DESCRIBE it\n"
    )
    settings = CommonSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, metrics_port=0)
    ensure_topics(settings, [settings.topics.dead_letters])
    code, out, err = both.run(monkeypatch, capsys, "direct", "dead-letters", "list")
    assert code == 0, err
    assert "0 dead letter(s)" in out


def test_a_contexts_token_goes_to_its_api_however_written_and_a_401_says_why_none_was_sent(
    both: Both, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    (both.directory / "token").write_text(both.token + "\n")
    port = both.api_url.rsplit(":", 1)[1]

    def context(url: str) -> None:
        (both.directory / "config.yaml").write_text(
            "current-context: local\ncontexts:\n"
            f"  local: {{api-url: '{url}', token-file: '{both.directory / 'token'}'}}\n"
        )

    context(f"http://127.0.0.1:{port}/api/v1/")  # the same API, written otherwise: before, its token was not sent
    code, out, err = both.run(monkeypatch, capsys, "api without token", "list", "def")
    assert code == 0, err
    assert "nightly" in out
    context(f"http://localhost:{port}")  # another host name: not the same API, whatever it resolves to
    code, out, err = both.run(monkeypatch, capsys, "api without token", "list", "def")
    assert code == 4
    assert err == (
        "exportctl: 401: a bearer token is required (context local's token was not sent: EXPORT_API_URL names "
        f"{both.api_url}, not that context's API (http://localhost:{port}); give --token-file or EXPORT_API_TOKEN "
        "for it)\n"
    )
