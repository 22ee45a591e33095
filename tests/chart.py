"""The Helm chart (deploy/helm/member-export) rendered by the real helm, for the tests that read what it makes."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devtools.prerequisites import go_tool

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "member-export"
CI_VALUES = {path.stem.removesuffix("-values"): path for path in sorted((CHART / "ci").glob("*-values.yaml"))}
RELEASE = "member-export"
SERVICES = ("scheduler", "extractor", "dispatcher", "notifier", "admin")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the helm the project builds (devtools.prerequisites.GO_TOOLS)."""
    done = subprocess.run([str(go_tool("helm")), *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stderr}")
    return done


@dataclass
class Rendered:
    """The documents ``helm template`` printed, and the text itself (for kubeconform and kube-score)."""

    text: str
    documents: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        [document] = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        return document

    def deployments(self) -> dict[str, dict[str, Any]]:
        """Each service's Deployment, by service name."""
        return {d["metadata"]["name"].removeprefix(f"{RELEASE}-"): d for d in self.of_kind("Deployment")}

    def container(self, service: str) -> dict[str, Any]:
        [container] = self.deployments()[service]["spec"]["template"]["spec"]["containers"]
        return container

    def pod_specs(self) -> dict[str, dict[str, Any]]:
        """Every pod template (Deployments and Jobs), by workload name."""
        return {
            d["metadata"]["name"]: d["spec"]["template"]["spec"]
            for d in self.documents
            if d["kind"] in ("Deployment", "Job")
        }


def render(
    *values_files: Path,
    values: dict[str, Any] | None = None,
    tmp_dir: Path | None = None,
    release: str = RELEASE,
    namespace: str = "member-export",
) -> Rendered:
    """``helm template`` of the chart as ``release`` (``member-export``) in ``namespace`` with ``values_files`` and
    then ``values``."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for path in values_files:
        args += ["-f", str(path)]
    if values is not None:
        assert tmp_dir is not None, "values given inline need a directory to write them to"
        extra = tmp_dir / "test-values.yaml"
        extra.write_text(yaml.safe_dump(values))
        args += ["-f", str(extra)]
    text = helm(*args).stdout
    return Rendered(text, [d for d in yaml.safe_load_all(text) if d])
