"""A throwaway PostgreSQL cluster from Debian's server binaries: initdb into a temp dir, pg_ctl start.

As root (CI, these machines), the cluster runs as the ``postgres`` system user, since PostgreSQL
refuses to run as root.

    python -m devtools.postgres start --port 5433 --dir .local/postgres
    python -m devtools.postgres stop --dir .local/postgres
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devtools.prerequisites import postgres_bin_dir
from devtools.processes import Managed, free_port

SUPERUSER = "postgres"
#: Starts tried when the port picked was taken meanwhile, and how much of the log an error keeps.
START_ATTEMPTS = 3
LOG_TAIL_CHARACTERS = 2_000


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
    return ["runuser", "-u", "postgres", "--"]


class LocalPostgres(Managed):
    """A PostgreSQL server owned by this object, listening on 127.0.0.1 only."""

    def __init__(self, work_dir: Path | None = None, port: int | None = None) -> None:
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="pg-"))
        self.temporary_dir = None if work_dir else self.work_dir
        #: A port of the caller's is kept; one picked here may be taken before the server binds it (another
        #: process's outgoing connection, in the ephemeral range), and is picked again (see :meth:`start`).
        self._port_given = port is not None
        self.port = port or free_port()
        self.bin = postgres_bin_dir()
        self.prefix = _run_as()

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3) of ``database``."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _pg(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True)

    def start(self) -> LocalPostgres:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.prefix:
            shutil.chown(self.work_dir, "postgres")
            os.chmod(self.work_dir, 0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._pg(
                str(self.bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            )
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_server()
                return self
            except subprocess.CalledProcessError as exc:
                log = self._log_tail()
                if self._port_given or attempt == START_ATTEMPTS or "already in use" not in log:
                    raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{self.port}: {log}") from exc
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_server(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.work_dir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._pg(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-o",
            options,
            "-l",
            str(self.work_dir / "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def _log_tail(self) -> str:
        """The end of the server's log (why it did not start), kept in the error: the directory holding the log
        may be removed as the server is left."""
        try:
            return (self.work_dir / "postgres.log").read_text(errors="replace")[-LOG_TAIL_CHARACTERS:].strip()
        except OSError as exc:
            return f"(no log: {exc})"

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._pg(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """Create a database and return its URL."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')  # name chosen by the caller (tests)
        return self.url(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=5433)
    parser.add_argument("--dir", type=Path, default=Path(".local/postgres").resolve())
    args = parser.parse_args(argv)
    server = LocalPostgres(args.dir, args.port)
    if args.action == "start":
        server.start()
        print(f"PostgreSQL ready: {server.url()}")
    else:
        server.stop()
        print("PostgreSQL stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
