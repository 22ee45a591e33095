"""A chaos pipeline left removes the directories its servers made for themselves: each chaos run left its two
PostgreSQL clusters' folders (``/tmp/pg-*``, about 96 MB a run) behind, and a machine running `make chaos` again and
again filled up."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.harness import ChaosPipeline


def test_a_chaos_pipeline_stopped_removes_its_postgresql_clusters_directories(tmp_path: Path) -> None:
    pipeline = ChaosPipeline(tmp_path / "chaos", members=10)
    made = [pipeline.catalog_pg.work_dir, pipeline.store_pg.work_dir]
    assert all(directory.is_dir() for directory in made)

    pipeline.stop()

    assert [directory for directory in made if directory.exists()] == []
