from pathlib import Path

import pytest

from shared.cli.config import Config
from shared.cli.exits import REFUSED, USAGE, CliError
from shared.cli.manifests import ManifestError, parse_documents
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition
from shared.yaml_text import NESTED_TOO_DEEPLY

GOOD = """
kind: ExportDefinition
name: nightly-gold
spec:
  query: gold
  template: partner-upsert
---
kind: ConnectionProfile
spec:
  name: partner
  base_url: https://partner.example.com
"""


def test_documents_become_catalog_objects():
    objects = parse_documents(GOOD, "exports.yaml")
    assert isinstance(objects[0], ExportDefinition)
    assert isinstance(objects[1], ConnectionProfile)
    assert objects[0].name == "nightly-gold"


def test_a_bad_field_names_the_file_the_object_and_the_field():
    text = GOOD + "---\nkind: ExportDefinition\nname: broken\nspec:\n  query: q\n  template: t\n  priority: urgent\n"
    with pytest.raises(ManifestError) as error:
        parse_documents(text, "exports.yaml")
    assert error.value.problems == [
        "exports.yaml: document 3 (ExportDefinition 'broken'): field 'priority': "
        "Input should be 'high', 'normal' or 'low'"
    ]


def test_every_problem_is_reported_not_only_the_first():
    text = "kind: Nope\nname: a\n---\nkind: SavedQuery\nname: q\nspec: {sql: 'delete from x', colour: red}\n"
    with pytest.raises(ManifestError) as error:
        parse_documents(text, "m.yaml")
    problems = error.value.problems
    assert problems[0].startswith("m.yaml: document 1 (Nope 'a'): kind must be one of")
    assert any("field 'sql'" in p for p in problems)
    assert any("field 'colour': Extra inputs are not permitted" in p for p in problems)


def test_yaml_syntax_errors_name_the_file():
    with pytest.raises(ManifestError, match=r"^broken.yaml: document 1: not valid YAML"):
        parse_documents("kind: [unclosed", "broken.yaml")


#: A third document whose syntax breaks after its kind and name (a flow list never closed), then a fourth.
UNCLOSED = (
    "---\nkind: ExportDefinition\nname: broken\nspec:\n  query: q\n  template: [unclosed\n"
    "---\nkind: SavedQuery\nname: q\nspec: {sql: SELECT 1}\n"
)


@pytest.mark.parametrize(
    ("document", "said"),
    [
        (
            UNCLOSED,
            "document 3 (ExportDefinition 'broken'): not valid YAML: expected ',' or ']', but got "
            "'<document start>' (line 18, column 1)",
        ),
        # The name is not known yet: the kind is said; the secret on the line is not.
        (
            "---\nkind: ConnectionProfile\nspec:\n  base_url: https://x.example\n  auth: {password: @s3cr3t}\n",
            "document 3 (ConnectionProfile): not valid YAML: found character '…' that cannot start any token "
            "(line 16, column 20)",
        ),
        # Named in its spec, as the manifest allows.
        (
            "---\nkind: SavedQuery\nspec:\n  name: by-tier\n  sql: x\n   bad: indent\n",
            "document 3 (SavedQuery 'by-tier'): not valid YAML: "
            "mapping values are not allowed here (line 17, column 7)",
        ),
        # A mapping's key that is a collection, then its value: still read as a key and a value.
        (
            "---\n? [kind, name]\n: x\nkind: HttpTemplate\nspec: {name: t1, path: [unclosed}\n",
            "document 3 (HttpTemplate 't1'): not valid YAML: expected ',' or ']', but got '}' (line 16, column 33)",
        ),
        # An alias to no anchor, read once the document is parsed: that document, not the stream's last.
        (
            "---\nkind: SavedQuery\nname: q1\nspec: {sql: *nothing}\n---\nkind: SavedQuery\nname: q2\n",
            "document 3 (SavedQuery 'q1'): not valid YAML: found undefined alias '…' (line 15, column 13)",
        ),
        # A list of objects (what `get -o json` prints): which of them is not said, the document is.
        (
            '---\n[{"kind": "SavedQuery", "spec": {"name": "q1"}}, {"kind": "SavedQuery", "spec": {"name": "q2",]\n',
            "document 3: not valid YAML: expected the node content, but found ']' (line 13, column 95)",
        ),
        # Nothing of the document read: its number alone.
        (
            "---\n@s3cr3t: 1\n",
            "document 3: not valid YAML: found character '…' that cannot start any token (line 13, column 1)",
        ),
        # A kind that is none, a name that is no object's name: neither quoted.
        (
            "---\nkind: P@ssw0rd\nname: Not A Name\nspec: [unclosed\n",
            "document 3: not valid YAML: expected ',' or ']', but got '<stream end>' (line 16, column 1)",
        ),
    ],
    ids=[
        "after-its-name",
        "before-its-name",
        "named-in-spec",
        "complex-key",
        "undefined-alias",
        "list",
        "first-line",
        "unknown-kind-and-odd-name",
    ],
)
def test_a_syntax_error_names_the_file_the_document_and_its_object_when_known(document: str, said: str):
    """Before: ``exports.yaml: not valid YAML: …``, the line alone to tell which of a stream's documents broke."""
    with pytest.raises(ManifestError) as error:
        parse_documents(GOOD + document, "exports.yaml")
    assert error.value.problems == [f"exports.yaml: {said}"]


def test_nested_fields_are_named_by_their_path():
    text = (
        "kind: ExportDefinition\nname: d\nspec:\n  query: q\n  template: t\n"
        "  notifications:\n    error:\n      enabled: true\n"
    )
    with pytest.raises(ManifestError, match=r"field 'notifications.error': .*at least one recipient"):
        parse_documents(text, "m.yaml")


@pytest.mark.parametrize("spec", ["[a, b]", "5", "'text'"])
def test_a_spec_that_is_no_mapping_is_refused_naming_the_document(spec: str):
    """Before: exportctl apply crashed (exit 1, ValueError or TypeError) on ``spec: [a, b]`` or ``spec: 5``."""
    with pytest.raises(ManifestError) as error:
        parse_documents(f"kind: SavedQuery\nname: q\nspec: {spec}\n", "m.yaml")
    assert error.value.problems == ["m.yaml: document 1: 'spec' must be a mapping of the object's fields"]


#: A list in a list, 3,000 levels deep: PyYAML reads nesting by recursion, and this is far past what it can.
DEEP = "[" * 3000 + "]" * 3000


def test_a_manifest_nested_too_deeply_is_refused_naming_the_file_and_the_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # It used to end in a RecursionError: "unexpected error" and exit 1, as for a bug, naming no file.
    from shared.cli.__main__ import main

    deep = tmp_path / "deep.yaml"
    deep.write_text("kind: ConnectionProfile\nname: p\nspec: {base_url: 'https://x.example'}\n---\nspec: " + DEEP)
    monkeypatch.setenv("EXPORTCTL_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("EXPORT_API_URL", "http://127.0.0.1:9")  # never called: the manifest is refused first
    assert main(["apply", "-f", str(deep)]) == REFUSED
    assert capsys.readouterr().err == (f"exportctl: invalid manifest\n  {deep}: document 2: {NESTED_TOO_DEEPLY}\n")


def test_a_config_file_nested_too_deeply_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(f"contexts: {DEEP}\n")
    with pytest.raises(CliError) as error:
        Config.load({"EXPORTCTL_CONFIG": str(tmp_path / "config.yaml")})
    assert error.value.code == USAGE
    assert error.value.message == f"config file {tmp_path / 'config.yaml'} cannot be read: {NESTED_TOO_DEEPLY}"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("2026-13-45", "a date or time that does not exist, or text to put in quotes (line 9, column 12)"),
        ("2026-02-30 12:00:00", "a date or time that does not exist, or text to put in quotes (line 9, column 12)"),
        (
            "2026-01-01T00:00:00+99:00",
            "a date or time that does not exist, or text to put in quotes (line 9, column 12)",
        ),
        ("7" * 5000, "an integer of more than 4300 digits, or not an integer (line 9, column 12)"),
    ],
    ids=["month-13", "february-30", "offset-99h", "5000-digits"],
)
def test_a_value_yaml_cannot_build_is_an_invalid_manifest_by_file_document_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str, said: str
) -> None:
    """Before: PyYAML's ValueError ("month must be in 1..12", or quoting the value): "unexpected error", exit 1."""
    from shared.cli.__main__ import main

    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "kind: ConnectionProfile\nname: p\nspec: {base_url: 'https://x.example'}\n---\n"
        f"kind: SavedQuery\nname: q\nspec:\n  sql: SELECT 1\n  created: {value}\n"
    )
    monkeypatch.setenv("EXPORTCTL_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("EXPORT_API_URL", "http://127.0.0.1:9")  # never called: the manifest is refused first
    assert main(["apply", "-f", str(manifest)]) == REFUSED
    assert capsys.readouterr().err == f"exportctl: invalid manifest\n  {manifest}: document 2: {said}\n"


def test_a_config_file_with_a_date_that_does_not_exist_is_a_usage_error_by_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("current-context: prod\ncontexts:\n  prod: {api-url: 2026-13-45}\n")
    with pytest.raises(CliError) as error:
        Config.load({"EXPORTCTL_CONFIG": str(tmp_path / "config.yaml")})
    assert error.value.code == USAGE
    assert error.value.message == (
        f"config file {tmp_path / 'config.yaml'} cannot be read: "
        "a date or time that does not exist, or text to put in quotes (line 3, column 19)"
    )
