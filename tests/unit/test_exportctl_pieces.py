"""exportctl's pure pieces: kinds and aliases, URL normalisation, manifest variables, contexts and their
precedence, options whose value starts with '-', help texts, completion scripts."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.cli.api import normalise_url
from shared.cli.completion import bash_script, zsh_script
from shared.cli.config import Config, resolve
from shared.cli.exits import NOT_FOUND, REFUSED, USAGE, CliError
from shared.cli.kinds import canonical_kind, collection_of
from shared.cli.parser import build_parser, join_dash_values
from shared.cli.variables import Expander, parse_assignments


@pytest.mark.parametrize(
    "name",
    ["ExportDefinition", "exportdefinition", "definition", "definitions", "def", "export-definitions", "DEF"],
)
def test_every_alias_of_a_kind_names_it(name: str) -> None:
    assert canonical_kind(name) == "ExportDefinition"


@pytest.mark.parametrize(
    ("name", "kind"),
    [("profile", "ConnectionProfile"), ("queries", "SavedQuery"), ("tpl", "HttpTemplate"), ("sq", "SavedQuery")],
)
def test_short_names_of_the_other_kinds(name: str, kind: str) -> None:
    assert canonical_kind(name) == kind


def test_an_unknown_kind_is_a_usage_error_listing_the_kinds() -> None:
    with pytest.raises(CliError) as error:
        collection_of("widget")
    assert error.value.code == USAGE
    assert "ExportDefinition/definition" in error.value.message


@pytest.mark.parametrize(
    "url",
    ["http://h:8080", "http://h:8080/", "http://h:8080/api/v1", "http://h:8080/api/v1/", " http://h:8080/api/v1 "],
)
def test_an_api_url_with_or_without_its_prefix_is_the_servers(url: str) -> None:
    assert normalise_url(url) == "http://h:8080"


def test_variables_are_expanded_in_values_from_vars_then_the_environment() -> None:
    expander = Expander({"URL": "https://a.example"}, {"URL": "https://ignored", "ZONE": "UTC"})
    document = {"spec": {"base_url": "${URL}/v1", "list": ["${ZONE}"], "literal": "$${URL}", "bare": "$URL", "n": 3}}
    assert expander.expand(document) == {
        "spec": {"base_url": "https://a.example/v1", "list": ["UTC"], "literal": "${URL}", "bare": "$URL", "n": 3}
    }
    expander.refuse_missing("m.yaml")


def test_an_unset_variable_is_refused_by_name() -> None:
    expander = Expander({}, {})
    expander.expand({"a": "${RECEIVER_URL}", "b": "${OTHER} and ${RECEIVER_URL}"})
    with pytest.raises(CliError) as error:
        expander.refuse_missing("demo.yaml")
    assert error.value.code == REFUSED
    assert "demo.yaml: variable(s) RECEIVER_URL, OTHER not set" in error.value.message


@pytest.mark.parametrize(("pairs", "message"), [(["a"], "expected NAME=VALUE"), (["a=1", "a=2"], "given twice")])
def test_malformed_or_repeated_assignments_are_usage_errors(pairs: list[str], message: str) -> None:
    with pytest.raises(CliError) as error:
        parse_assignments(pairs, "--param")
    assert error.value.code == USAGE
    assert message in error.value.message


def test_a_dash_value_is_joined_to_its_option() -> None:
    assert join_dash_values(["search", "--sort", "-priority", "--page", "2"]) == [
        "search",
        "--sort=-priority",
        "--page",
        "2",
    ]
    args = build_parser().parse_args(join_dash_values(["search", "--sort", "-priority"]))
    assert args.sort == "-priority"


def _write_config(tmp_path: Path, token: str = "context-token") -> dict[str, str]:
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "config.yaml").write_text(
        "current-context: prod\ncontexts:\n"
        f"  prod: {{api-url: 'http://prod:8080', token-file: '{tmp_path / 'token'}'}}\n"
        "  staging: {api-url: 'http://staging:8080'}\n"
    )
    return {"EXPORTCTL_CONFIG": str(tmp_path / "config.yaml")}


def test_precedence_is_flags_then_environment_then_the_current_context(tmp_path: Path) -> None:
    environment = _write_config(tmp_path)
    from_context = resolve(environment, None, None, None)
    assert (from_context.api_url, from_context.token) == ("http://prod:8080", "context-token")
    from_env = resolve(
        environment | {"EXPORT_API_URL": "http://env:1", "EXPORT_API_TOKEN": "env-token"}, None, None, None
    )
    assert (from_env.api_url, from_env.token, from_env.source) == ("http://env:1", "env-token", "EXPORT_API_URL")
    (tmp_path / "flag-token").write_text("flag-token")
    from_flags = resolve(
        environment | {"EXPORT_API_URL": "http://env:1"}, "http://flag:2", str(tmp_path / "flag-token"), None
    )
    assert (from_flags.api_url, from_flags.token, from_flags.source) == ("http://flag:2", "flag-token", "--api-url")
    chosen = resolve(environment | {"EXPORT_API_URL": "http://env:1"}, None, None, "staging")
    assert (chosen.api_url, chosen.token) == ("http://staging:8080", "")


def test_a_contexts_token_never_goes_to_another_url(tmp_path: Path) -> None:
    environment = _write_config(tmp_path)
    elsewhere = resolve(environment, "http://attacker.example", None, None)
    assert (elsewhere.api_url, elsewhere.token) == ("http://attacker.example", "")
    assert elsewhere.anonymous_because == (
        "context prod's token was not sent: --api-url names http://attacker.example, not that context's API "
        "(http://prod:8080); give --token-file or EXPORT_API_TOKEN for it"
    )
    for other in ("http://prod:8081", "https://prod:8080", "http://prod:8080/other", "http://prod.evil:8080"):
        assert resolve(environment, other, None, None).token == ""


@pytest.mark.parametrize(
    "url", ["http://prod:8080/", "http://prod:8080/api/v1", "http://PROD:8080/api/v1/", " http://prod:8080 "]
)
def test_a_contexts_token_goes_to_its_own_api_however_its_url_is_written(tmp_path: Path, url: str) -> None:
    """Before: only to the very same text (README: "never" to another URL; ``…/api/v1`` is the same API)."""
    environment = _write_config(tmp_path)
    for connection in (
        resolve(environment, url, None, None),
        resolve(environment | {"EXPORT_API_URL": url}, None, None, None),
    ):
        assert (connection.token, connection.anonymous_because) == ("context-token", "")
    assert resolve(environment, "http://prod:80", None, None).token == ""
    (tmp_path / "config.yaml").write_text(
        f"current-context: web\ncontexts:\n  web: {{api-url: 'https://h', token-file: '{tmp_path / 'token'}'}}\n"
    )
    assert resolve(environment, "https://h:443/api/v1", None, None).token == "context-token"


def test_an_unknown_context_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(CliError) as error:
        resolve(_write_config(tmp_path), None, None, "nope")
    assert error.value.code == NOT_FOUND
    assert "contexts: prod, staging" in error.value.message


def test_contexts_are_saved_readable_by_their_owner_only(tmp_path: Path) -> None:
    config = Config.load({"EXPORTCTL_CONFIG": str(tmp_path / "sub" / "config.yaml")})
    assert config.contexts == {}
    config.contexts["dev"] = {"api-url": "http://dev:8080"}
    config.current = "dev"
    config.save()
    assert (tmp_path / "sub" / "config.yaml").stat().st_mode & 0o777 == 0o600
    again = Config.load({"EXPORTCTL_CONFIG": str(tmp_path / "sub" / "config.yaml")})
    assert (again.current, again.contexts) == ("dev", {"dev": {"api-url": "http://dev:8080"}})


def test_a_malformed_config_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("contexts: {prod: {api-url: x, password: y}}\n")
    with pytest.raises(CliError) as error:
        Config.load({"EXPORTCTL_CONFIG": str(tmp_path / "config.yaml")})
    assert error.value.code == USAGE


def _parsers(parser: argparse.ArgumentParser, path: str = "exportctl") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}")
    return found


def test_every_option_and_argument_has_a_description() -> None:
    undocumented = [
        f"{path}: {action.option_strings or action.dest}"
        for path, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert undocumented == []


def test_the_top_level_help_has_no_markup() -> None:
    text = build_parser().format_help()
    assert "``" not in text
    assert "exit codes:" in text
    assert "5  unreachable" in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_the_bash_completion_script_is_valid_bash_and_completes_commands(tmp_path: Path) -> None:
    script = tmp_path / "exportctl.bash"
    script.write_text(bash_script(build_parser()))
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    completed = subprocess.run(
        [
            "bash",
            "-c",
            f"source {script}; COMP_WORDS=(exportctl db up); COMP_CWORD=2; _exportctl; echo ${{COMPREPLY[@]}};"
            " COMP_WORDS=(exportctl get de); COMP_CWORD=2; _exportctl; echo ${COMPREPLY[@]};"
            " COMP_WORDS=(exportctl runs -o j); COMP_CWORD=3; _exportctl; echo ${COMPREPLY[@]}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert completed.stdout.splitlines() == ["upgrade", "definition", "json"]


def test_the_zsh_completion_script_loads_the_bash_one() -> None:
    script = zsh_script(build_parser())
    assert script.startswith("#compdef exportctl\n")
    assert "bashcompinit" in script
    assert "complete -o default -F _exportctl exportctl" in script


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "nightly", "--idempotency-key", ""],
        ["run", "nightly", "--idempotency-key", "   "],
        ["dead-letters", "replay", "00000000-0000-0000-0000-000000000001", "--idempotency-key", ""],
        ["dead-letters", "replay", "00000000-0000-0000-0000-000000000001", "--idempotency-key", " \t"],
    ],
)
def test_an_empty_or_blank_idempotency_key_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]):
    """Before: taken as no key, so each retry of the command started another run (another replay)."""
    with pytest.raises(SystemExit) as usage:
        build_parser().parse_args(argv)
    assert usage.value.code == 2
    assert "--idempotency-key: must not be empty or blank" in capsys.readouterr().err


def test_an_idempotency_key_is_kept_as_given() -> None:
    args = build_parser().parse_args(["run", "nightly", "--idempotency-key", " k 1 "])
    assert args.idempotency_key == " k 1 "
