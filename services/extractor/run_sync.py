"""Fix a run's sync mode at its first start, so a resume extracts it the same way.

A definition edited while its run is under way (``full`` to ``changes``, or to ``incremental``) would otherwise
resume the run in the other mode: a full run's batch index taken as a change run's, a change run's last key as a
full run's. The checkpoint keeps the mode (and the scope the run's retries look members up in) from the start, and
how many members its records hold (a template's ``batch_size`` edited before a resume would re-chunk the pages read
again under the identities their records had: a partner honouring the Idempotency-Key would drop members as seen),
and a full or incremental run's template by name (a definition switched to another template would send the rest of
the run, its ranges and retries with it; the catalog refuses to delete or rename the one the run keeps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from shared.domain.catalog_objects import ExportDefinition, HttpTemplate
from shared.domain.checkpoints import Checkpoint, RunSync
from shared.domain.sync_mode import SyncMode
from shared.member_batches import members_per_record

#: Members a one-member template's record holds (EXPORT_EXTRACTOR_RECORD_MEMBERS' default).
DEFAULT_RECORD_MEMBERS = 64


def fixed_sync(
    definition: ExportDefinition,
    checkpoint: Checkpoint,
    save: Callable[[Checkpoint], None],
    *,
    record_size: int | None = None,
) -> Checkpoint:
    """The checkpoint with the run's sync: as recorded, or (first start) the definition's, recorded now with the
    members per record its template gives (``record_size``; None: its template is missing, the run fails) and, but
    for a change run (its templates fixed by :mod:`~services.extractor.change_extraction`), its template's name."""
    if checkpoint.sync is not None:
        return checkpoint
    incremental = definition.incremental
    sync = RunSync(
        definition.sync.mode,
        full_scope=incremental is None,
        watermark_column=incremental.watermark_column if incremental is not None else None,
        record_size=record_size,
        template=definition.template if definition.sync.mode is not SyncMode.CHANGES else None,
    )
    checkpoint = replace(checkpoint, sync=sync)
    save(checkpoint)
    return checkpoint


def watermark_column(definition: ExportDefinition, checkpoint: Checkpoint) -> str | None:
    """The run's watermark column, None for a full run: as fixed at its first start (a definition switched between
    full and incremental since, or given another column, does not change a run under way). A run whose sync was
    recorded before its column was takes its definition's column, if it still has one."""
    now = definition.incremental.watermark_column if definition.incremental is not None else None
    sync = checkpoint.sync
    if sync is None:
        return now
    if sync.full_scope:
        return None
    return sync.watermark_column or now


def run_sync(checkpoint: Checkpoint) -> RunSync:
    """The run's sync, once :func:`fixed_sync` recorded it."""
    assert checkpoint.sync is not None, "fixed_sync first"
    return checkpoint.sync


def record_size(template: HttpTemplate | None, record_members: int, checkpoint: Checkpoint | None = None) -> int | None:
    """Members per record of the run: as fixed at its first start, else as its template gives now (None: no
    template)."""
    if checkpoint is not None and checkpoint.sync is not None and checkpoint.sync.record_size is not None:
        return checkpoint.sync.record_size
    return members_per_record(template.batch_size, record_members) if template is not None else None


def template_name(definition: ExportDefinition, checkpoint: Checkpoint) -> str:
    """The name of a full or incremental run's template: as fixed at its first start (a definition switched to
    another template since does not change a run under way), else (recorded before this was) its definition's."""
    sync = checkpoint.sync
    return sync.template if sync is not None and sync.template is not None else definition.template
