"""exportctl over the admin API, against the running pipeline: run --wait with its progress, and the rest."""

from __future__ import annotations

import pytest

from tests.admin_server import admin_server
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e


def test_exportctl_through_the_api_runs_with_progress_and_a_summary(pipeline: Pipeline, tmp_path):
    with admin_server(
        tmp_path,
        pipeline.env["EXPORT_CATALOG_URL"],
        pipeline.bootstrap,
        pipeline.env["EXPORT_QUERY_STORE_URL"],
        topic_prefix=pipeline.env["EXPORT_TOPIC_PREFIX"],
    ) as admin:
        operator = {"EXPORT_API_URL": admin.url, "EXPORT_API_TOKEN": admin.tokens["operator"]}
        run = pipeline.exportctl("run", "small-to-good-partner", "--wait", "--timeout", "240", env=operator)
        assert run.returncode == 0, run.stdout + run.stderr
        lines = run.stdout.splitlines()
        assert lines[0].startswith("run ")
        assert lines[0].endswith("requested for 'small-to-good-partner'")
        assert any("succeeded" in line and "100/100" in line for line in lines), run.stdout  # the progress bar
        assert "': succeeded" in run.stdout
        assert "read: 100  delivered: 100  failed: 0" in run.stdout  # the summary

        search = pipeline.exportctl("search", "--name-contains", "small", env=operator)
        assert search.returncode == 0, search.stderr
        assert "small-to-good-partner" in search.stdout
        assert "small-to-strict-partner" in search.stdout
        assert "(2 of 2, page 1)" in search.stdout

        described = pipeline.exportctl("describe", "profile", "good-partner", env=operator)
        assert "token: '**********'" in described.stdout
        assert "e2e-s3cret" not in described.stdout

        dry = pipeline.exportctl("dry-run", "small-to-good-partner", "--requests", "1", env=operator)
        assert dry.returncode == 0, dry.stderr
        assert "--- request 1: 50 member(s)" in dry.stdout
        assert f"POST {pipeline.good.url}/v1/members" in dry.stdout

        refused = pipeline.exportctl("copy", "definition", "small-to-good-partner", env=operator)
        assert refused.returncode == 2
        assert "403: role 'operator' may not write" in refused.stderr
        editor = {"EXPORT_API_URL": admin.url, "EXPORT_API_TOKEN": admin.tokens["editor"]}
        copied = pipeline.exportctl("copy", "definition", "small-to-good-partner", env=editor)
        assert (
            copied.stdout.strip()
            == 'definition/copy-of-small-to-good-partner created ("Copy of small-to-good-partner")'
        )
