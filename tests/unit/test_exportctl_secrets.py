"""exportctl never prints a secret it was given: the admin API's token, a database password, a manifest's literal."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shared.catalog.engine import shown_url
from shared.cli.__main__ import main
from shared.cli.config import Config, resolve
from shared.cli.exits import USAGE, CliError
from shared.cli.manifests import ManifestError, parse_documents
from shared.yaml_text import yaml_problem

TOKEN = "adm-Tk-Probe-9xQ"
PASSWORD = "Qz8-lit-PW"
SPACE = "a space or line break at character 17"  # the token's length is 16


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"EXPORTCTL_CONFIG": str(tmp_path / "config.yaml"), "EXPORT_API_URL": "http://127.0.0.1:9", **extra}


def test_a_token_variable_ending_with_a_line_break_is_sent_without_it(tmp_path: Path) -> None:
    """Before: the token went into the header with its line break, which the HTTP client refused quoting it."""
    environment = _environment(tmp_path, EXPORT_API_TOKEN=f"{TOKEN}\n")
    assert resolve(environment, None, None, None).token == TOKEN


@pytest.mark.parametrize(
    ("where", "text", "named", "what"),
    [
        ("env", f"{TOKEN} {TOKEN}", "EXPORT_API_TOKEN", SPACE),
        ("flag", f"{TOKEN}\n# ops token, rotated 2026-12\n", "--token-file {file}", SPACE),
        ("context", f"{TOKEN}\r\nsecond line", "context prod's token file {file}", SPACE),
        ("env", f"{TOKEN}é", "EXPORT_API_TOKEN", "a character that is not visible ASCII at character 17"),
    ],
    ids=["env-space", "flag-file-second-line", "context-file-second-line", "env-not-ascii"],
)
def test_a_token_that_cannot_be_a_bearer_token_is_refused_naming_its_source_never_its_value(
    tmp_path: Path, where: str, text: str, named: str, what: str
) -> None:
    file = tmp_path / "token"
    file.write_text(text)
    environment = _environment(tmp_path)
    if where == "env":
        environment["EXPORT_API_TOKEN"] = text
    if where == "context":
        context = {"api-url": "http://prod:8080", "token-file": str(file)}
        Config(Path(environment["EXPORTCTL_CONFIG"]), "prod", {"prod": context}).save()
        del environment["EXPORT_API_URL"]
    with pytest.raises(CliError) as refused:
        resolve(environment, None, str(file) if where == "flag" else None, "prod" if where == "context" else None)
    assert refused.value.code == USAGE
    assert refused.value.message.startswith(f"{named.format(file=file)} is not a bearer token: it holds ")
    assert what in refused.value.message
    assert TOKEN not in refused.value.message


def test_exportctl_refuses_a_token_file_with_a_second_line_without_printing_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``exportctl: unexpected error: ValueError: Invalid header value b'Bearer <token>\\n# ops…'``, exit 1."""
    for name, value in _environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("EXPORT_API_TOKEN", raising=False)
    file = tmp_path / "token"
    file.write_text(f"{TOKEN}\n# ops token, rotated 2026-12\n")
    assert main(["--token-file", str(file), "runs"]) == USAGE
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert err.startswith(f"exportctl: --token-file {file} is not a bearer token: it holds a space or line break")


def test_an_unexpected_errors_message_is_printed_with_its_credentials_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The net under a bug that quotes what it was given (before: printed as it was)."""

    def failing(_args: object) -> int:
        raise ValueError(f"Invalid header value b'Bearer {TOKEN}\\n', postgresql://app:{PASSWORD}@db/catalog")

    monkeypatch.setattr("shared.cli.modes.dispatch", failing)
    assert main(["runs"]) == 1
    err = capsys.readouterr().err
    assert TOKEN not in err
    assert PASSWORD not in err
    assert err.startswith("exportctl: unexpected error: ValueError: Invalid header value b'Bearer ***")
    assert "postgresql://app:***@db/catalog" in err


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (f"@{PASSWORD}", "found character '…' that cannot start any token (line 8, column 15)"),
        (f"*{PASSWORD}", "found undefined alias '…' (line 8, column 15)"),
        (f"!{PASSWORD} x", "could not determine a constructor for the tag '…' (line 8, column 15)"),
        (
            f"&{PASSWORD} a\n    token: &{PASSWORD} b",
            "found duplicate anchor '…'; first occurrence (line 8, column 15), second occurrence (line 9, column 12)",
        ),
        (f"{PASSWORD}: x", "mapping values are not allowed here (line 8, column 25)"),
    ],
    ids=["at-sign", "alias", "tag", "duplicate-anchor", "colon"],
)
def test_a_manifest_that_is_not_yaml_is_refused_by_line_and_column_never_quoting_it(value: str, problem: str) -> None:
    """A generated password written unquoted where YAML reads it otherwise (before: PyYAML's message quoted the
    line, or the alias's, anchor's or tag's name: the password)."""
    text = (
        "kind: ConnectionProfile\nname: partner\nspec:\n  base_url: https://partner.example.com\n  auth:\n"
        f"    type: basic\n    username: acme\n    password: {value}\n"
    )
    with pytest.raises(ManifestError) as refused:
        parse_documents(text, "m.yaml")
    assert refused.value.problems == [f"m.yaml: document 1 (ConnectionProfile 'partner'): not valid YAML: {problem}"]


def test_a_config_file_that_is_not_yaml_is_refused_by_line_and_column_never_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"current-context: prod\ncontexts:\n  prod: {{api-url: http://prod:8080, token-file: @{TOKEN}}}\n")
    with pytest.raises(CliError) as refused:
        Config.load({"EXPORTCTL_CONFIG": str(path)})
    assert refused.value.message == (
        f"config file {path} cannot be read: found character '…' that cannot start any token (line 3, column 49)"
    )


def test_yaml_problems_keep_what_the_parser_expected_and_found_of_its_own() -> None:
    """Token names (``'<stream end>'``, ``','``) are PyYAML's words, not the text's: kept, as is a reader's place."""
    for text, said in [
        ("kind: [unclosed", "expected ',' or ']', but got '<stream end>' (line 1, column 16)"),
        ("a: b\n- c", "expected <block end>, but found '-' (line 2, column 1)"),
        (f"a: {PASSWORD}\x07", "a character YAML does not allow (character 14)"),
    ]:
        with pytest.raises(yaml.YAMLError) as error:
            yaml.safe_load(text)
        assert yaml_problem(error.value) == said


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql+psycopg://app:{PASSWORD}@db:5432/catalog", "postgresql+psycopg://app:***@db:5432/catalog"),
        (
            f"postgresql+psycopg://app@db/catalog?password={PASSWORD}&sslmode=require",
            "postgresql+psycopg://app@db/catalog?password=***&sslmode=require",
        ),
        (
            f"postgresql+psycopg://app@db/catalog?sslmode=verify-full&sslpassword={PASSWORD}",
            "postgresql+psycopg://app@db/catalog?sslmode=verify-full&sslpassword=***",
        ),
        ("sqlite:////var/lib/export/catalog.db", "sqlite:////var/lib/export/catalog.db"),
        (f"not a URL {PASSWORD}", "(unparseable database URL)"),
    ],
    ids=["userinfo", "query", "sslpassword", "sqlite", "unparseable"],
)
def test_a_database_url_is_shown_with_every_password_hidden(url: str, shown: str) -> None:
    assert shown_url(url) == shown
