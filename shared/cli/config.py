"""Named contexts: which admin API exportctl talks to, and with which token, kept in a config file.

The file is ``$EXPORTCTL_CONFIG``, else ``$XDG_CONFIG_HOME/exportctl/config.yaml``, else
``~/.config/exportctl/config.yaml``::

    current-context: prod
    contexts:
      prod: {api-url: https://export-admin.example.com, token-file: ~/.config/exportctl/prod.token}
      staging: {api-url: http://export-admin.staging:8080}

A setting comes from, first to last: the flags (``--api-url``, ``--token-file``, then the context
named by ``--context``), the environment (``EXPORT_API_URL``, ``EXPORT_API_TOKEN``), the current
context. A context's token file is read only for that context's own API: a URL given by a flag or the
environment receives a context's token only when it names the same API (:func:`same_api`: scheme, host and port,
case and default port aside, with or without ``/api/v1`` and a trailing slash), never another one. Without any
API URL, exportctl works on the catalog directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.cli.exits import NOT_FOUND, USAGE, CliError


def config_path(environment: Mapping[str, str]) -> Path:
    """Where the config file is (it may not exist)."""
    if environment.get("EXPORTCTL_CONFIG"):
        return Path(environment["EXPORTCTL_CONFIG"]).expanduser()
    base = Path(environment["XDG_CONFIG_HOME"]) if environment.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "exportctl" / "config.yaml"


@dataclass
class Config:
    """The config file's contents: the current context's name and each context's settings."""

    path: Path
    current: str | None
    contexts: dict[str, dict[str, str]]

    @classmethod
    def load(cls, environment: Mapping[str, str]) -> Config:
        """The config file, or an empty config when there is none; :class:`CliError` if it is malformed."""
        path = config_path(environment)
        if not path.exists():
            return cls(path, None, {})
        try:
            text = path.read_text()
        except OSError as exc:
            raise CliError(f"config file {path} cannot be read: {exc}", USAGE) from None
        if not text.strip():  # an empty file (or /dev/null) holds no context: no YAML parser to load
            return cls(path, None, {})
        import yaml  # only when there is something to read (exportctl's start-up)

        from shared.yaml_text import load, yaml_problem

        try:
            data = load(text) or {}
        except yaml.YAMLError as exc:
            raise CliError(f"config file {path} cannot be read: {yaml_problem(exc)}", USAGE) from None
        except ValueError as exc:  # nested too deeply (shared.yaml_text)
            raise CliError(f"config file {path} cannot be read: {exc}", USAGE) from None
        contexts = data.get("contexts") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(contexts or {}, dict):
            raise CliError(f"config file {path}: expected 'current-context' and a mapping 'contexts'", USAGE)
        checked: dict[str, dict[str, str]] = {}
        for name, context in (contexts or {}).items():
            if not isinstance(context, dict) or set(context) - {"api-url", "token-file"}:
                raise CliError(f"config file {path}: context '{name}' may hold only api-url and token-file", USAGE)
            checked[str(name)] = {str(key): str(value) for key, value in context.items()}
        current = data.get("current-context")
        return cls(path, str(current) if current else None, checked)

    def save(self) -> None:
        """Write the file (readable by its owner only: it names token files)."""
        import yaml

        self.path.parent.mkdir(parents=True, exist_ok=True)
        document: dict[str, Any] = {"current-context": self.current, "contexts": self.contexts}
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            yaml.safe_dump(document, file, sort_keys=False)

    def context(self, name: str) -> dict[str, str]:
        """A context's settings; :class:`CliError` (not found) naming the known ones."""
        if name not in self.contexts:
            known = ", ".join(sorted(self.contexts)) or "none yet (exportctl config set-context)"
            raise CliError(f"no context '{name}' in {self.path}; contexts: {known}", NOT_FOUND)
        return self.contexts[name]


@dataclass(frozen=True)
class Connection:
    """Where exportctl sends its commands: the admin API (``api_url`` and ``token``), or the catalog (no URL)."""

    api_url: str
    token: str
    #: Where the URL came from ("--api-url", "EXPORT_API_URL", "context NAME"), for messages.
    source: str
    #: Why no token is sent, when none is (a context's withheld from another API, or none given): the hint of a 401.
    anonymous_because: str = ""


def same_api(url: str, other: str) -> bool:
    """Whether two admin API URLs name the same API: the same scheme, host and port (``http://H:80/`` is
    ``http://h``) and path, once ``/api/v1`` and a trailing slash are dropped (:func:`shared.cli.api.normalise_url`)."""
    from urllib.parse import urlsplit

    from shared.cli.api import normalise_url

    def key(text: str) -> tuple[str, str, int | None, str] | None:
        try:
            parts = urlsplit(normalise_url(text))
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
        except ValueError:  # a port that is not a number: names no API
            return None
        return parts.scheme.lower(), (parts.hostname or "").lower(), port, parts.path

    first = key(url)
    return first is not None and first == key(other)


def read_token_file(path: str, source: str | None = None) -> str:
    """The token in a file (surrounding whitespace dropped); :class:`CliError` if it cannot be read or is not a
    bearer token (:func:`bearer_token`; ``source`` names the file in that message, default ``token file PATH``)."""
    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise CliError(f"token file {path} cannot be read ({exc.strerror})", USAGE) from None
    except UnicodeDecodeError:
        raise CliError(f"token file {path} is not a text file (UTF-8)", USAGE) from None
    return bearer_token(text, source or f"token file {path}")


def bearer_token(text: str, source: str) -> str:
    """``text`` less surrounding whitespace (a file's or a variable's last line break), if it can be sent as a
    bearer token: visible ASCII characters, no space or line break (RFC 6750's token is narrower still). Otherwise
    :class:`CliError` naming ``source`` and what is wrong, never the token: a header holding it would be refused
    by the HTTP client with the token in its message (a token file's second line, a comment, a pasted space)."""
    token = text.strip()
    for position, character in enumerate(token, start=1):
        if not "!" <= character <= "~":
            what = "a space or line break" if character.isspace() else "a character that is not visible ASCII"
            raise CliError(
                f"{source} is not a bearer token: it holds {what} at character {position} "
                "(a token is one line of visible ASCII characters, no spaces)",
                USAGE,
            )
    return token


def resolve(
    environment: Mapping[str, str], api_url: str | None, token_file: str | None, context_name: str | None
) -> Connection:
    """The connection, by the precedence flags > environment > context (see the module's docstring).

    ``--context NAME`` is a flag: its context's URL and token file come before the environment's.
    """
    config = Config.load(environment)
    name = context_name or config.current
    context = config.context(name) if name else {}
    chosen = context if context_name else {}  # what the --context flag brings, before the environment
    if api_url:
        url, source = api_url, "--api-url"
    elif chosen.get("api-url"):
        url, source = chosen["api-url"], f"context {name}"
    elif environment.get("EXPORT_API_URL"):
        url, source = environment["EXPORT_API_URL"], "EXPORT_API_URL"
    else:
        url, source = context.get("api-url", ""), f"context {name}"
    # A context's token goes only to that context's API, never to a URL given otherwise that names another API.
    own_api = bool(url) and same_api(url, context.get("api-url", ""))
    own_token_file = context.get("token-file") if own_api else None
    own_source = f"context {name}'s token file {own_token_file}"
    if token_file:
        token = read_token_file(token_file, f"--token-file {token_file}")
    elif context_name and own_token_file:
        token = read_token_file(own_token_file, own_source)
    elif environment.get("EXPORT_API_TOKEN", "").strip():
        token = bearer_token(environment["EXPORT_API_TOKEN"], "EXPORT_API_TOKEN")
    elif own_token_file:
        token = read_token_file(own_token_file, own_source)
    else:
        token = ""
    anonymous_because = ""
    if url and not token:
        if context.get("token-file") and not own_api:
            anonymous_because = (
                f"context {name}'s token was not sent: {source} names {url}, not that context's API "
                f"({context.get('api-url')}); give --token-file or EXPORT_API_TOKEN for it"
            )
        else:
            anonymous_because = "no token was sent: give --token-file, EXPORT_API_TOKEN or a context with a token-file"
    return Connection(url, token, source, anonymous_because)
