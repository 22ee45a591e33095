"""Find the programs the local infrastructure needs, installing them on Debian/Ubuntu when run as root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


class MissingPrerequisite(RuntimeError):
    """A program the local infrastructure needs is absent and could not be installed."""


def _is_debian_root() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


_apt_updated = False


def apt_install(*packages: str) -> None:
    """Install Debian packages (root only); run ``apt-get update`` once per process first."""
    global _apt_updated
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        _apt_updated = True
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


def java_major_version(java: str) -> int:
    """The major version of a ``java`` binary (``17`` for 17.0.15)."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=True)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def require_java_and_maven() -> tuple[str, str]:
    """Return paths to ``java`` (17+) and ``mvn``; install them on Debian as root, else explain."""
    java, mvn = shutil.which("java"), shutil.which("mvn")
    if (java is None or java_major_version(java) < 17 or mvn is None) and _is_debian_root():
        apt_install("openjdk-17-jre-headless", "maven")
        java, mvn = shutil.which("java"), shutil.which("mvn")
    if java is None or java_major_version(java) < 17:
        raise MissingPrerequisite(
            "Kafka needs Java 17 or newer: install it (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
        )
    if mvn is None:
        raise MissingPrerequisite("fetching Kafka needs Maven: install it (Debian/Ubuntu: apt-get install maven)")
    return java, mvn


def postgres_bin_dir() -> Path:
    """Return the directory holding ``initdb``/``pg_ctl``; install PostgreSQL on Debian as root, else explain."""

    def find() -> Path | None:
        on_path = shutil.which("pg_ctl")
        if on_path:
            return Path(on_path).resolve().parent
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
        return versions[0].parent if versions else None

    found = find()
    if found is None and _is_debian_root():
        apt_install("postgresql")
        found = find()
    if found is None:
        raise MissingPrerequisite(
            "the PostgreSQL tests need the server binaries (initdb, pg_ctl): "
            "install them (Debian/Ubuntu: apt-get install postgresql)"
        )
    return found


def main() -> int:
    """Check (and on Debian as root, install) everything the demo and the tests need."""
    try:
        java, mvn = require_java_and_maven()
        print(f"java {java_major_version(java)}: {java}; maven: {mvn}")
        print(f"PostgreSQL server binaries: {postgres_bin_dir()}")
    except MissingPrerequisite as exc:
        print(f"missing prerequisite: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
