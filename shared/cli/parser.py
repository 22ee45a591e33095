"""exportctl's command line: every command, option and help text (light: nothing heavy is imported here).

Each command says how it runs (``set_defaults``): ``api`` names its function in
:mod:`shared.cli.api_commands` (None: it has none), ``func`` is its direct-mode function (on the
catalog), ``catalog`` whether that needs the catalog, ``local`` a function needing neither.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.cli import (
    attempts_commands,
    audit_commands,
    database_commands,
    dead_letters,
    delivery_commands,
    secret_commands,
)
from shared.cli.argtypes import idempotency_key, positive_float, positive_int
from shared.cli.exits import DOCUMENTED
from shared.cli.kinds import KIND_HELP
from shared.cli.output import output_option

DESCRIPTION = """\
exportctl: apply manifests, run exports, follow runs, manage the catalog of the member-export pipeline.

With an admin API configured (--api-url, EXPORT_API_URL or a context, see 'exportctl config') every
command goes through it, with its roles and scopes; without one, exportctl works on the catalog
directly (EXPORT_CATALOG_URL) as the local operator.
"""

EPILOG = "exit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in DOCUMENTED.items())

#: Options whose value may start with '-' (``--sort -priority``): main joins them to their value first.
DASH_VALUE_OPTIONS = ("--sort",)

Handler = Callable[..., int]


def lazy(module: str, name: str) -> Handler:
    """The function ``name`` of ``module``, imported when called (exportctl's start-up)."""

    def command(*args: Any) -> int:
        return int(getattr(importlib.import_module(module), name)(*args))

    command.__name__ = name
    return command


def direct(name: str, module: str = "shared.cli.direct_commands") -> Handler:
    """A direct-mode command of :mod:`shared.cli.direct_commands` (or of ``module``)."""
    return lazy(module, name)


class VersionAction(argparse.Action):
    """``--version``: the installed package's version (read when asked: importlib.metadata is slow to load)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("member-export")
        except PackageNotFoundError:
            installed = "unknown (not installed as a package)"
        print(f"exportctl {installed}")
        parser.exit()


def connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """``--api-url``, ``--token-file``, ``--context``: accepted before or after the command."""
    parser.add_argument(
        "--api-url",
        default=default,
        metavar="URL",
        help="the admin API (with or without /api/v1); overrides EXPORT_API_URL and contexts",
    )
    parser.add_argument(
        "--token-file",
        default=default,
        metavar="FILE",
        help="a file holding the API's bearer token; overrides EXPORT_API_TOKEN and contexts",
    )
    parser.add_argument(
        "--context", default=default, metavar="NAME", help="a context of the config file, for this command only"
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="exportctl",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction, nargs=0, help="print exportctl's version and exit")
    connection_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    connection_options(common, argparse.SUPPRESS)

    def command(name: str, help_text: str, **defaults: Any) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text, parents=[common]
        )
        sub.set_defaults(**({"api": None, "catalog": "needs", "local": None} | defaults))
        return sub

    _objects(command)
    _runs(command)
    dead_letters.add_commands(commands, [common])
    database_commands.add_commands(commands, [common])
    audit_commands.add_commands(commands, [common])
    attempts_commands.add_commands(commands, [common])
    delivery_commands.add_commands(commands, [common])
    secret_commands.add_commands(commands, [common])
    _local(command)
    return parser


def _objects(command: Callable[..., argparse.ArgumentParser]) -> None:
    apply = command("apply", "create or update objects from YAML manifests, all or nothing", api="cmd_apply")
    apply.add_argument(
        "-f", "--file", type=Path, action="append", required=True, help="a manifest file, '-' for stdin (repeatable)"
    )
    apply.add_argument(
        "--var",
        action="append",
        metavar="NAME=VALUE",
        help="a value for ${NAME} in the manifests (repeatable; else the environment variable NAME)",
    )
    apply.add_argument(
        "--skip-discovery",
        action="store_true",
        help="(direct) do not run saved queries against the member store to discover their columns",
    )
    apply.add_argument("--diff", action="store_true", help="print what would change, change nothing")
    apply.set_defaults(func=direct("cmd_apply"))

    get = command("get", "print objects as manifests (secrets masked)", api="cmd_get")
    get.add_argument("kind", help=f"the kind: {KIND_HELP}")
    get.add_argument("name", nargs="?", help="one object's name (default: all of the kind)")
    output_option(get, "yaml")
    get.set_defaults(func=direct("cmd_get"))

    describe = command("describe", "one object as a manifest, with a definition's next fire times", api="cmd_describe")
    describe.add_argument("kind", help=f"the kind: {KIND_HELP}")
    describe.add_argument("name", help="the object's name")
    output_option(describe, "yaml")
    describe.set_defaults(func=direct("cmd_describe"))

    listing = command("list", "names and labels of the objects of a kind", api="cmd_list")
    listing.add_argument("kind", help=f"the kind: {KIND_HELP}")
    output_option(listing, "table")
    listing.set_defaults(func=direct("cmd_list"))

    search = command("search", "(admin API) search export definitions, a page at a time", api="cmd_search")
    search.add_argument("--name-contains", metavar="TEXT", help="names containing TEXT")
    search.add_argument("--business-unit", metavar="UNIT", help="definitions of this business unit")
    search.add_argument("--priority", choices=["high", "normal", "low"], help="definitions of this priority")
    search.add_argument(
        "--enabled", action=argparse.BooleanOptionalAction, default=None, help="only enabled (or disabled) schedules"
    )
    search.add_argument("--template", metavar="NAME", help="definitions using this template")
    search.add_argument("--query", metavar="NAME", help="definitions using this saved query")
    search.add_argument(
        "--sort", default="name", metavar="FIELD", help="sort field, '-' first for descending (e.g. -priority)"
    )
    search.add_argument("--page", type=int, default=1, help="page number (default: 1)")
    search.add_argument("--page-size", type=int, default=50, help="definitions per page (default: 50)")
    output_option(search, "table")
    search.set_defaults(func=None)

    delete = command("delete", "delete an object (refused while others refer to it)", api="cmd_delete")
    delete.add_argument("kind", help=f"the kind: {KIND_HELP}")
    delete.add_argument("name", help="the object's name")
    delete.set_defaults(func=direct("cmd_delete"))

    copy = command("copy", 'copy an object ("Copy of …"; a copied schedule is disabled)', api="cmd_copy")
    copy.add_argument("kind", help=f"the kind: {KIND_HELP}")
    copy.add_argument("name", help="the object to copy")
    copy.add_argument("--label", help='the copy\'s label (default: "Copy of <label>")')
    copy.add_argument("--name", dest="new_name", metavar="NAME", help="the copy's name (default: from its label)")
    copy.set_defaults(func=direct("cmd_copy"))


def _runs(command: Callable[..., argparse.ArgumentParser]) -> None:
    run = command("run", "execute an export definition now", api="cmd_run")
    run.add_argument("definition", help="the export definition to run")
    run.add_argument("--wait", action="store_true", help="follow the run with a progress bar and print its summary")
    run.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="a value for a query parameter (repeatable, once each)"
    )
    run.add_argument(
        "--timeout",
        type=positive_float,
        default=600.0,
        metavar="SECONDS",
        help="with --wait, stop following after this long, exit 1 (default: 600)",
    )
    run.add_argument(
        "--idempotency-key",
        metavar="KEY",
        type=idempotency_key,
        help="a retried command with the same key and parameters returns the same run; other parameters: refused",
    )
    run.add_argument(
        "--allow-mass-removal",
        action="store_true",
        help="(change mode) this run may remove more members than the definition's sync.max_removed allows",
    )
    run.set_defaults(func=direct("cmd_run", "shared.cli.direct_runs"))

    runs = command("runs", "list recent runs, or show one with --id", api="cmd_runs")
    runs.add_argument("--definition", metavar="NAME", help="only this definition's runs")
    runs.add_argument("--id", metavar="RUN_ID", help="show this run: its summary, errors and replay links")
    runs.add_argument("--limit", type=positive_int, default=20, help="at most this many runs (default: 20)")
    output_option(runs, "table")
    runs.set_defaults(func=direct("cmd_runs", "shared.cli.direct_runs"))

    cancel = command(
        "cancel",
        "cancel a run: its extraction stops, its undelivered batches are not sent (refused once it has finished)",
        api="cmd_cancel",
    )
    cancel.add_argument("run_id", metavar="RUN_ID", help="the run to cancel")
    cancel.set_defaults(func=direct("cmd_cancel", "shared.cli.direct_runs"))

    next_runs = command("next-runs", "preview the next fire times of a definition's schedule", api="cmd_next_runs")
    next_runs.add_argument("definition", help="the export definition")
    next_runs.add_argument("-n", "--count", type=positive_int, default=5, help="how many fire times (default: 5)")
    output_option(next_runs, "table")
    next_runs.set_defaults(func=direct("cmd_next_runs"))

    dry = command("dry-run", "render the first requests a definition would send (nothing is sent)", api="cmd_dry_run")
    dry.add_argument("definition", help="the export definition")
    dry.add_argument("--requests", type=positive_int, default=3, help="how many requests to render (default: 3)")
    dry.set_defaults(func=direct("cmd_dry_run"))


def _local(command: Callable[..., argparse.ArgumentParser]) -> None:
    demo = command("demo-data", "(re)create the demo members table of the member store", catalog="none")
    demo.add_argument("--members", type=positive_int, default=10_000, help="how many members (default: 10000)")
    demo.add_argument("--seed", type=int, default=42, help="seed of the random member data (default: 42)")
    demo.add_argument("--url", help="the member store's SQLAlchemy URL (default: EXPORT_QUERY_STORE_URL)")
    demo.set_defaults(func=direct("cmd_demo_data"))

    schemas = command("schemas", "print the JSON Schema of every event", catalog="none")
    schemas.set_defaults(func=direct("cmd_schemas"))

    completion = command(
        "completion",
        "print a shell completion script (bash: source <(exportctl completion bash); zsh: likewise)",
        local=lazy("shared.cli.completion", "cmd_completion"),
    )
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell")

    config = command("config", "named contexts: which admin API, with which token (see --help)")
    config.description = (
        "Contexts live in $EXPORTCTL_CONFIG, else ~/.config/exportctl/config.yaml. Precedence: flags "
        "(--api-url, --token-file, --context) > environment (EXPORT_API_URL, EXPORT_API_TOKEN) > current context."
    )
    sub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    handler = lazy("shared.cli.config_commands", "cmd_config")
    get_contexts = sub.add_parser("get-contexts", help="list the contexts; '*' marks the current one")
    output_option(get_contexts, "table")
    sub.add_parser("current-context", help="print the current context's name")
    use = sub.add_parser("use-context", help="make a context the current one")
    use.add_argument("name", help="the context")
    setting = sub.add_parser("set-context", help="create a context, or change its settings")
    setting.add_argument("name", help="the context")
    setting.add_argument("--api-url", dest="context_api_url", metavar="URL", help="the admin API of the context")
    setting.add_argument(
        "--token-file", dest="context_token_file", metavar="FILE", help="the file holding the context's token"
    )
    setting.add_argument("--use", action="store_true", help="also make it the current context")
    removing = sub.add_parser("delete-context", help="remove a context")
    removing.add_argument("name", help="the context")
    config.set_defaults(local=handler)


def join_dash_values(argv: list[str]) -> list[str]:
    """``--sort -priority`` as ``--sort=-priority``: argparse would take ``-priority`` for an option."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token in DASH_VALUE_OPTIONS and index + 1 < len(argv) and argv[index + 1].startswith("-"):
            joined.append(f"{token}={argv[index + 1]}")
            index += 2
            continue
        joined.append(token)
        index += 1
    return joined
