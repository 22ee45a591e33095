"""The documentation stays true: every setting is in the README, the AsyncAPI file is current, the README's
manifest examples are valid and those that stand alone apply as written."""

import base64
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from services.admin.settings import AdminSettings
from services.dispatcher.settings import DispatcherSettings
from services.extractor.settings import ExtractorSettings
from services.notifier.settings import NotifierSettings
from services.scheduler.settings import SchedulerSettings
from shared.asyncapi import render
from shared.catalog import make_engine
from shared.cli.__main__ import main as exportctl
from shared.cli.common import CliSettings
from shared.cli.manifests import ManifestError, load_manifests
from shared.domain.catalog_objects import KINDS
from shared.querystore.demo_data import create_demo_members

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [SchedulerSettings, ExtractorSettings, DispatcherSettings, NotifierSettings, CliSettings, AdminSettings]


@pytest.mark.parametrize("settings_class", SETTINGS, ids=lambda cls: cls.__name__)
def test_the_readme_documents_every_setting(settings_class):
    readme = (ROOT / "README.md").read_text()
    prefix = settings_class.model_config["env_prefix"]
    missing = [
        f"{prefix}{name}".upper()
        for name in settings_class.model_fields
        if f"`{prefix}{name}`".upper() not in readme.upper()
    ]
    assert missing == []


def test_the_asyncapi_document_matches_the_event_models():
    assert (ROOT / "docs" / "asyncapi.yaml").read_text() == render(), "run `make docs` and commit the result"


#: A fenced YAML block of the README (indented or not): its first line's number and its text.
_YAML_BLOCK = re.compile(r"^( *)```yaml\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)


def _readme_manifests() -> list[tuple[int, str]]:
    """The README's manifest examples: its YAML blocks whose documents each have a catalog ``kind`` (so not the
    Kubernetes, Helm values or tokens-file ones), as (line, text)."""
    readme = (ROOT / "README.md").read_text()
    found = []
    for block in _YAML_BLOCK.finditer(readme):
        text = textwrap.dedent(block.group(2))
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        if documents and all(isinstance(doc, dict) and doc.get("kind") in KINDS for doc in documents):
            found.append((readme.count("\n", 0, block.start()) + 1, text))
    return found


def test_the_readme_shows_manifest_examples():
    examples = _readme_manifests()
    assert len(examples) >= 6, examples  # the ### Manifests one, chained, notifications, TLS/proxy, formats, retries


@pytest.mark.parametrize(("line", "text"), _readme_manifests(), ids=[f"line-{line}" for line, _ in _readme_manifests()])
def test_every_readme_manifest_example_is_valid(line: int, text: str, tmp_path: Path):
    """Each example is a valid manifest as written (its fields, and the rules between them)."""
    manifest = tmp_path / f"readme-line-{line}.yaml"
    manifest.write_text(text)
    try:
        load_manifests([manifest])
    except ManifestError as exc:
        pytest.fail(f"README line {line}: " + "; ".join(exc.problems))


def test_the_readme_s_first_manifest_example_applies_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """The example under ``### Manifests`` defines all it names: ``exportctl apply --diff`` on a new catalog and the
    demo member store, as a reader copying it does (its references checked, its query run on the store to find its
    columns, nothing written), with the two environment variables it names set."""
    monkeypatch.delenv("EXPORT_API_URL", raising=False)
    monkeypatch.setenv("EXPORTCTL_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("EXPORT_CATALOG_URL", f"sqlite:///{tmp_path / 'catalog.db'}")
    monkeypatch.setenv("EXPORT_QUERY_STORE_URL", f"sqlite:///{tmp_path / 'members.db'}")
    monkeypatch.setenv("PARTNER_TOKEN", "a-token")
    monkeypatch.setenv("PARTNER_WEBHOOK_SECRET", "whsec_" + base64.b64encode(b"0" * 32).decode())
    create_demo_members(make_engine(f"sqlite:///{tmp_path / 'members.db'}"), 20)
    assert exportctl(["db", "upgrade"]) == 0, capsys.readouterr().err
    readme = (ROOT / "README.md").read_text()
    section = readme.index("\n### Manifests\n")
    line, text = next((line, text) for line, text in _readme_manifests() if line > readme.count("\n", 0, section) + 1)
    manifest = tmp_path / "manifests.yaml"
    manifest.write_text(text)
    capsys.readouterr()
    assert exportctl(["apply", "--diff", "-f", str(manifest)]) == 0, f"README line {line}: {capsys.readouterr().err}"
    would = sorted(f"{doc['kind']}/{doc['name']} would be created" for doc in yaml.safe_load_all(text))
    assert sorted(capsys.readouterr().out.splitlines()) == would
