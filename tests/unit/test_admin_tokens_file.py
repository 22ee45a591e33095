"""The admin API's tokens file (``EXPORT_ADMIN_TOKENS_FILE``) read at start-up: a file it cannot use ends start-up
with one line naming the file and why (exit status 1), not a traceback, and the line never quotes the file, so a
token pasted where its SHA-256 belongs is not printed in the pod's log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.admin.bearer_tokens import TokensFileError, TokenStore, token_hash
from shared.yaml_text import NESTED_TOO_DEEPLY

#: A token an operator pasted into the file instead of its hash.
PASTED = "tok-pasted-4f1c9a8e0d2b7f3a"
#: Lists nested far deeper than PyYAML's recursion reaches (a RecursionError when read by plain yaml.safe_load).
DEEP = "tokens: " + "[" * 5000 + "]" * 5000 + "\n"


def refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(TokensFileError) as refused:
        TokenStore.from_file(str(path))
    message = str(refused.value)
    assert message.startswith(f"EXPORT_ADMIN_TOKENS_FILE {path}: ")
    assert PASTED not in message
    return message


def test_a_file_nested_too_deeply_is_named_not_a_recursion_error(tmp_path: Path) -> None:
    assert refusal(tmp_path, DEEP).endswith(NESTED_TOO_DEEPLY)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (f"tokens:\n  - {{name: ci, sha256: {PASTED}: x\n", "expected ',' or '}', but got ':' (line 2, column 51)"),
        # Before: the problem left out ("not valid YAML" and a place), or no place at all (a reader's error).
        (f"tokens:\n  - {{name: ci, sha256: {PASTED}\x07}}\n", "a character YAML does not allow (character 59)"),
        # Before: a ValueError quoting the value ("month must be in 1..12"), a traceback at start-up.
        (
            "tokens:\n  - {name: 2026-13-45, role: admin}\n",
            "a date or time that does not exist, or text to put in quotes (line 2, column 12)",
        ),
        (
            f"tokens:\n  - {{name: ci, role: !!bool {PASTED}}}\n",
            "a boolean that is neither true nor false (line 2, column 22)",
        ),
    ],
    ids=["syntax", "control-character", "no-such-date", "tagged"],
)
def test_a_file_that_is_not_yaml_is_refused_by_what_and_where_without_quoting_it(
    tmp_path: Path, text: str, said: str
) -> None:
    assert refusal(tmp_path, text).endswith(f": not valid YAML: {said}")


def test_two_entries_of_one_token_are_refused_naming_both(tmp_path: Path) -> None:
    """Before: accepted, the last entry silently replacing the first (its role and business units)."""
    text = (
        f"tokens:\n"
        f"  - {{name: ci, sha256: {token_hash(PASTED)}, role: viewer, business_units: [emea]}}\n"
        f"  - {{name: ops, sha256: {token_hash('other')}, role: editor}}\n"
        f"  - {{name: break-glass, sha256: {token_hash(PASTED)}, role: admin}}\n"
    )
    assert refusal(tmp_path, text).endswith(
        ": tokens[0] 'ci' and tokens[2] 'break-glass' have the same sha256 (one token, two entries: keep one)"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("- ci\n- ops\n", "expected a mapping holding 'tokens', a list of entries"),
        ("tokens: {ci: x}\n", "'tokens' should be a list of entries (name, sha256, role, business_units)"),
    ],
)
def test_a_file_of_another_shape_says_what_is_expected(tmp_path: Path, text: str, reason: str) -> None:
    assert refusal(tmp_path, text).endswith(reason)


def test_refused_entries_are_named_by_place_and_field_never_by_what_they_hold(tmp_path: Path) -> None:
    text = (
        f"tokens:\n"
        f"  - {{name: ci, sha256: {token_hash('fine')}, role: editor}}\n"
        f"  - {{name: ops, sha256: {PASTED}, role: admin}}\n"
        f"  - {{name: emea, {PASTED}: x, role: operator}}\n"
        f"  - {PASTED}\n"
    )
    message = refusal(tmp_path, text)
    assert "tokens[1]: sha256: String should match pattern" in message
    assert "tokens[2]: sha256: Field required" in message
    assert "tokens[2]: an unknown key" in message
    assert "tokens[3]: the entry: Input should be a valid dictionary" in message
    assert "tokens[0]" not in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TokensFileError, match=r"tokens\.yaml: cannot be read: No such file or directory$"):
        TokenStore.from_file(str(tmp_path / "tokens.yaml"))


def test_a_good_file_still_gives_its_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    entry = f"{{name: ci, sha256: {token_hash('secret')}, role: editor, business_units: [emea]}}"
    path.write_text(f"tokens:\n  - {entry}\n")
    actor = TokenStore.from_file(str(path)).authenticate("secret")
    assert actor is not None
    assert (actor.name, actor.business_units) == ("ci", frozenset({"emea"}))


#: One token listed twice, with two roles.
TWICE = "".join(["tokens:\n"] + [f"  - {{name: {name}, sha256: {token_hash('t')}, role: admin}}\n" for name in "ab"])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (DEEP, NESTED_TOO_DEEPLY),
        (TWICE, "tokens[0] 'a' and tokens[1] 'b' have the same sha256 (one token, two entries: keep one)"),
    ],
    ids=["nested-too-deeply", "listed-twice"],
)
def test_the_admin_api_exits_at_start_up_naming_the_file(tmp_path: Path, text: str, reason: str) -> None:
    """Before any catalog or Kafka is reached: one line on stderr, status 1, no traceback."""
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORT_")}
    env |= {"EXPORT_ADMIN_TOKENS_FILE": str(path), "EXPORT_CATALOG_URL": f"sqlite:///{tmp_path / 'absent.db'}"}
    done = subprocess.run(
        [sys.executable, "-m", "services.admin"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"EXPORT_ADMIN_TOKENS_FILE {path}: {reason}"
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "absent.db").exists()
