"""The extractor's settings (``EXPORT_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class ExtractorSettings(CommonSettings):
    """Settings of the extractor service."""

    query_store_url: str = Field(
        default="sqlite:///.local/members.db", description="SQLAlchemy URL of the member store the queries read."
    )
    extractor_page_size: int = Field(
        default=5_000, ge=1, description="Members read per query page (rounded up to whole batches)."
    )
    extractor_pages_in_flight: int = Field(
        default=2,
        ge=1,
        le=4,
        description="On a PostgreSQL member store, query pages of a run read at once (each on a connection of its "
        "own, plus one for finding where the next page starts): the server writes the members' JSON on more cores; "
        "1 reads one page at a time. A run then holds up to this many + 1 of the store's connections.",
    )
    extractor_max_record_bytes: int = Field(
        default=900_000,
        ge=10_000,
        description="Largest member-batch record, in bytes; bigger batches are split (keep under the "
        "broker's message.max.bytes, 1 MiB by default).",
    )
    extractor_record_members: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="Members per member-batch record at least, in whole requests of the template's batch size: a "
        "one-member template's record carries this many requests, so Kafka, outcome and ledger costs are paid once "
        "per record, not per member (a template of this size or more: one request per record).",
    )
    extractor_database_json: bool = Field(
        default=True,
        description="Have the member store write each member's JSON (PostgreSQL, SQLite), where it writes every "
        "column as the extractor would; false reads every query as driver rows.",
    )
    extractor_range_members: int = Field(
        default=250_000,
        ge=0,
        description="Split a run of at least twice this many members into key ranges (at least this many members "
        "each, at most one per partition of the run-requests topic) that every extractor replica takes part in; "
        "0 never splits.",
    )
    extractor_store_retry_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a run waits for an unreachable member store (its pages read again from the last "
        "checkpoint once it answers) before it fails with the reason.",
    )
    extractor_max_start_wait_seconds: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="A scheduled run published ahead of its instant (EXPORT_SCHEDULER_LOOKAHEAD_SECONDS) is held back "
        "until that instant, the requests after it handled meanwhile; one due further ahead than this (clocks out of "
        "step, another publisher) starts when received, with a warning. 0 never waits.",
    )
    extractor_start_round: int = Field(
        default=32,
        ge=1,
        le=500,
        description="Run requests a consumer round takes at most: a burst of small runs pays one poll and one offset "
        "commit a round, not a run. A round begins no request after 2 s (those not begun go to the next round), and "
        "what a request produces is published as soon as it is handled, so a long run holds up no other's records. "
        "1: one request a round, as before.",
    )
    extractor_start_batch: int = Field(
        default=5_000,
        ge=0,
        le=10_000,
        description="Run requests due that a round starts together at most, ahead of their extraction: their claims in "
        "one catalog transaction and their run.started published together (1,000 a transaction at most), then "
        "extracted one by one over this round and the next (a burst of runs due at one instant starts in a round "
        "or two, not as fast as runs are extracted). 0: each run started as its extraction begins, as before.",
    )
    metrics_port: int = Field(default=9402, ge=0, le=65535, description="Port of /metrics; 0 turns it off.")
