"""``exportctl config``: the named contexts of the config file (:mod:`shared.cli.config`). Token values are
never printed, only the files holding them."""

from __future__ import annotations

import argparse
import os

from shared.cli.config import Config
from shared.cli.exits import NOT_FOUND, OK, CliError
from shared.cli.output import dump, table


def cmd_config(args: argparse.Namespace) -> int:
    """Run ``config get-contexts|current-context|use-context|set-context|delete-context``."""
    config = Config.load(os.environ)
    command = args.config_command
    if command == "get-contexts":
        if args.output != "table":
            dump({"current-context": config.current, "contexts": config.contexts}, args.output)
            return OK
        rows = [
            ("*" if name == config.current else "", name, context.get("api-url"), context.get("token-file"))
            for name, context in sorted(config.contexts.items())
        ]
        table(("CURRENT", "NAME", "API URL", "TOKEN FILE"), rows)
        return OK
    if command == "current-context":
        if not config.current:
            raise CliError(f"no current context in {config.path} (exportctl config use-context NAME)", NOT_FOUND)
        print(config.current)
        return OK
    if command == "use-context":
        config.context(args.name)  # it must exist
        config.current = args.name
        config.save()
        print(f"current context: {args.name}")
        return OK
    if command == "set-context":
        context = config.contexts.setdefault(args.name, {})
        if args.context_api_url is not None:
            context["api-url"] = args.context_api_url
        if args.context_token_file is not None:
            context["token-file"] = args.context_token_file
        if args.use:
            config.current = args.name
        config.save()
        print(f"context {args.name} saved in {config.path}")
        return OK
    config.context(args.name)  # delete-context: it must exist
    del config.contexts[args.name]
    if config.current == args.name:
        config.current = None
    config.save()
    print(f"context {args.name} deleted")
    return OK
