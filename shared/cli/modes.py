"""Which way a command runs: locally, through the admin API, or on the catalog directly.

The connection comes from flags, the environment and the config file's contexts
(:mod:`shared.cli.config`). With an API URL, a command that has an API form goes through it; one that
works only on the catalog says so, unless ``EXPORT_CATALOG_URL`` is set too; none of them silently
creates a local catalog file.
"""

from __future__ import annotations

import argparse
import os

from shared.cli.exits import USAGE, CliError


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit code (:class:`CliError` for a failure)."""
    if args.local is not None:
        return int(args.local(args))
    from shared.cli.config import resolve

    connection = resolve(os.environ, args.api_url, args.token_file, args.context)
    if connection.api_url and args.api is not None:
        from shared.cli.api import AdminApi
        from shared.cli.api_commands import run_api_command

        api = AdminApi(connection.api_url, connection.token, anonymous_because=connection.anonymous_because)
        return run_api_command(api, args.api, args)
    if args.func is None:
        raise CliError(
            f"'{args.command}' works through the admin API: give --api-url, EXPORT_API_URL or a context", USAGE
        )
    if args.catalog != "none" and connection.api_url and not os.environ.get("EXPORT_CATALOG_URL"):
        raise CliError(
            f"'{_name(args)}' works on the catalog directly, not through the admin API ({connection.source}): "
            "set EXPORT_CATALOG_URL (and EXPORT_KAFKA_BOOTSTRAP_SERVERS where Kafka is needed)",
            USAGE,
        )
    from shared.cli.common import settings_or_refusal
    from shared.log import configure_logging

    # Warnings of the library (a plain-text secret, an unreachable broker) go to stderr, as a human reads
    # them: stdout is the command's answer, which scripts parse.
    configure_logging("WARNING", "console", "exportctl")
    settings = settings_or_refusal()
    if args.catalog == "needs":
        refuse_missing_catalog(settings.catalog_url)
    return int(args.func(settings, args))


def refuse_missing_catalog(url: str) -> None:
    """:class:`CliError` when ``url`` is a SQLite file that does not exist (opening it would create it empty)."""
    from shared.cli.common import missing_sqlite_file

    if missing_sqlite_file(url):
        raise CliError(
            f"no catalog at {url}: set EXPORT_API_URL (or --api-url, or a context) to work through the admin API, "
            "EXPORT_CATALOG_URL to use another catalog, or run 'exportctl db upgrade' to create this one",
            USAGE,
        )


def _name(args: argparse.Namespace) -> str:
    sub = getattr(args, "db_command", None) or getattr(args, "secrets_command", None)
    sub = sub or getattr(args, "dead_letters_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)
