"""``exportctl``: apply manifests, run exports, follow runs, manage the catalog.

The command line is built from light modules (:mod:`shared.cli.parser`); a command's implementation is
imported when it runs, so ``--help`` and commands through the admin API start fast. Every failure goes
through one path: a message on stderr, ``exportctl: <reason>``, and a documented exit code.
"""

from __future__ import annotations

import os
import sys

from shared.cli.collector import paused
from shared.cli.exits import USAGE, CliError, fail


def main(argv: list[str] | None = None) -> int:
    """Run exportctl with ``argv`` (default: the process's arguments); return its exit code.

    Without ``argv`` the command is the process (the ``exportctl`` script, ``python -m shared.cli``), which ends
    when it returns: what the command made is then left to the process's end, not to the garbage collector
    (:func:`shared.cli.collector.paused`).
    """
    # pydantic looks for its plugins at its first model by reading the entry points of every installed
    # distribution: about 30 ms of exportctl's start-up, for plugins the project neither ships nor uses. A value
    # set by the user (the names of plugins to skip, or none) is kept.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    with paused(process_ends=argv is None):
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    from shared.cli.parser import build_parser, join_dash_values

    parser = build_parser()
    try:
        args = parser.parse_args(join_dash_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, --version, or argparse's usage error (already printed)
        return int(exc.code or 0) if isinstance(exc.code, int) else USAGE
    try:
        from shared.cli.modes import dispatch

        code = dispatch(args)
        sys.stdout.flush()  # a closed pipe is found here, not at exit (where it would be a traceback)
        return code
    except CliError as exc:
        return fail(exc.message, exc.code)
    except BrokenPipeError:
        # The reader went away (`exportctl schemas | head`): nothing more to say, and nothing to print it to.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as exc:  # a bug: said in one line; the traceback on demand
        if os.environ.get("EXPORTCTL_DEBUG"):
            raise
        from shared.domain.credential_patterns import mask_credential_shapes
        from shared.domain.masking import MASK

        # A bug's message may quote what it was given: a header (``Bearer <token>``), a URL with its password.
        reason = mask_credential_shapes(f"{type(exc).__name__}: {exc}", MASK)
        return fail(f"unexpected error: {reason} (EXPORTCTL_DEBUG=1 shows the traceback)", 1)


if __name__ == "__main__":
    sys.exit(main())
