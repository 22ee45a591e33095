"""Find the programs the local infrastructure needs, installing them on Debian/Ubuntu when run as root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
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


def require_for_demo() -> None:
    """What ``make demo`` and ``make up`` need beyond the venv: Java 17 and Maven for their own Kafka broker, unless
    ``EXPORT_KAFKA_BOOTSTRAP_SERVERS`` names a cluster (then nothing). Never PostgreSQL, Chromium or Prometheus."""
    bootstrap = os.environ.get("EXPORT_KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        print(f"Kafka: the cluster at {bootstrap} (EXPORT_KAFKA_BOOTSTRAP_SERVERS); Java and Maven not needed")
        return
    java, mvn = require_java_and_maven()
    print(f"java {java_major_version(java)}: {java}; maven: {mvn}")


def require_for_tests() -> None:
    """What ``make test`` needs: Java 17 and Maven (Kafka), PostgreSQL's server binaries, Chromium (the console's
    browser tests), promtool and prometheus (the alert-rule and dashboard tests)."""
    java, mvn = require_java_and_maven()
    print(f"java {java_major_version(java)}: {java}; maven: {mvn}")
    print(f"PostgreSQL server binaries: {postgres_bin_dir()}")
    from devtools.browser import chromium_path  # here: devtools.browser imports this module

    print(f"Chromium (the console's browser tests): {chromium_path()}")
    from devtools.prometheus import require_prometheus  # here: devtools.prometheus imports this module

    require_prometheus()


#: ``python -m devtools.prerequisites [STEP]``: no step is the tests' (everything).
STEPS = ("demo", "deploy-tools")


def main(argv: list[str] | None = None) -> int:
    """Check (and on Debian as root, install) what the tests need; with ``demo``, only what ``make demo`` and
    ``make up`` need; with ``deploy-tools``, build (once) the chart's tools and print where they are."""
    args = sys.argv[1:] if argv is None else argv
    if args and (len(args) > 1 or args[0] not in STEPS):
        print(f"usage: python -m devtools.prerequisites [{' | '.join(STEPS)}]", file=sys.stderr)
        return 2
    try:
        if args == ["deploy-tools"]:
            for name, path in deploy_tools().items():
                print(f"{name}: {path}")
        elif args == ["demo"]:
            require_for_demo()
        else:
            require_for_tests()
    except MissingPrerequisite as exc:
        print(f"missing prerequisite: {exc}")
        return 1
    return 0


# --- Deploy tooling: helm, kubeconform, kube-score, and the Kubernetes JSON schemas, all local -------------------

#: The cache the Kafka jars and toxiproxy use too (devtools/kafka_broker.py, devtools/toxiproxy.py).
CACHE_DIR = Path(os.environ.get("MEMBER_EXPORT_CACHE", Path.home() / ".cache" / "member-export"))

#: Go programs built once from the Go module proxy (``go install`` checks them against the Go checksum database)
#: into ``CACHE_DIR/bin/<name>-<version>``.
GO_TOOLS = {
    "helm": ("helm.sh/helm/v4/cmd/helm", "v4.3.2"),
    "kubeconform": ("github.com/yannh/kubeconform/cmd/kubeconform", "v0.8.0"),
    "kube-score": ("github.com/zegl/kube-score/cmd/kube-score", "v1.20.0"),
}


def go_tool(name: str) -> Path:
    """The binary of one of :data:`GO_TOOLS`, built with ``go install`` the first time (Debian's Go when none)."""
    module, version = GO_TOOLS[name]
    binary = CACHE_DIR / "bin" / f"{name}-{version.removeprefix('v')}"
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        if not _is_debian_root():
            raise MissingPrerequisite(
                f"building {name} needs Go: install it (Debian/Ubuntu: apt-get install golang-go)"
            )
        apt_install("golang-go")
    with tempfile.TemporaryDirectory(prefix=f"{name}-build-") as build:
        env = {**os.environ, "GOBIN": build, "GOFLAGS": "-mod=mod"}
        done = subprocess.run(["go", "install", f"{module}@{version}"], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise MissingPrerequisite(f"go install {module}@{version} failed: {done.stderr[-2000:]}")
        binary.parent.mkdir(parents=True, exist_ok=True)
        move_into_place(Path(build) / name, binary)
    return binary


def own_partial(target: Path) -> Path:
    """A partial file beside ``target``, this process's own: processes making the same file at once (a parallel
    test run's workers) never rename or rewrite each other's."""
    return target.with_name(f"{target.name}.{os.getpid()}.part")


def move_into_place(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` atomically: a concurrent reader sees the whole file or none (a move across file
    systems is a copy, so it goes to :func:`own_partial` first)."""
    partial = own_partial(target)
    shutil.move(str(source), partial)
    partial.replace(target)


_SCHEMA_REF = re.compile(r'"/api/_definitions\.json#')


def kubernetes_schemas(version: str, kinds: dict[str, str]) -> Path:
    """A kubeconform schema directory for Kubernetes ``version`` (e.g. ``1.27.0``) holding ``kinds``
    (file stem, e.g. ``deployment-apps-v1``, to kind), made from the kubernetes-validate package's schemas.

    That package's schemas refer to one shared definitions file by an absolute path only its own resolver
    knows; each schema here carries the definitions it needs inline (``$defs``), so kubeconform reads it
    alone, from disk, with no network. Returns the directory; kubeconform's ``-schema-location`` is
    ``<dir>/{{.ResourceKind}}{{.KindSuffix}}.json``.
    """
    import importlib.util
    import json

    package = importlib.util.find_spec("kubernetes_validate")
    if package is None or not package.submodule_search_locations:
        raise MissingPrerequisite("the Kubernetes schemas come from kubernetes-validate: pip install -e '.[dev]'")
    source = Path(package.submodule_search_locations[0]) / "kubernetes-json-schema" / f"v{version}-local-strict"
    if not source.is_dir():
        raise MissingPrerequisite(f"kubernetes-validate has no schemas for Kubernetes {version}")
    target = CACHE_DIR / "kubernetes-json-schema" / f"v{version}-standalone-strict"
    target.mkdir(parents=True, exist_ok=True)
    definitions: dict[str, object] | None = None
    for stem in kinds:
        schema_file = target / f"{stem}.json"
        if schema_file.exists():
            continue
        if definitions is None:
            text = _SCHEMA_REF.sub('"#', (source / "_definitions.json").read_text())
            definitions = json.loads(text)["$defs"]
        schema = json.loads(_SCHEMA_REF.sub('"#', (source / f"{stem}.json").read_text()))
        schema["$defs"] = definitions
        partial = own_partial(schema_file)
        partial.write_text(json.dumps(schema))
        partial.replace(schema_file)
    return target


def deploy_tools() -> dict[str, Path]:
    """Build (once) and return helm, kubeconform and kube-score."""
    return {name: go_tool(name) for name in GO_TOOLS}


if __name__ == "__main__":
    raise SystemExit(main())
