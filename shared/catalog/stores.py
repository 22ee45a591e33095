"""The four stores of the catalog over one database, for composition roots to hand out one by one."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.catalog.attempts_store import SqlAttemptsStore
from shared.catalog.audit_store import SqlAuditLog
from shared.catalog.database import CatalogDatabase
from shared.catalog.definitions_store import SqlDefinitionsStore
from shared.catalog.delivery_log_store import SqlDeliveryLog
from shared.catalog.extraction_store import SqlExtractionStore
from shared.catalog.member_retries_store import SqlMemberRetries
from shared.catalog.runs_store import SqlRunsStore
from shared.catalog.scheduling_store import SqlSchedulingStore
from shared.secrets_at_rest import SecretCipher


@dataclass
class CatalogStores:
    """The catalog's stores, each owned by one part of the system.

    A composition root opens this once and gives each service only the stores it uses: the
    definitions store (profiles, templates, queries, definitions: written through the application
    layer), the runs store (run records, outcome ledger, notifications, idempotency keys: the
    notifier and the application layer), the scheduling store (the scheduler) and the extraction
    store (the extractor's checkpoints and watermarks).

    ``cipher`` encrypts the literal secrets of connection profiles at rest: the composition roots that
    read or write profiles (admin API, dispatcher, exportctl) give it; the other services read no secret.
    """

    database: CatalogDatabase
    definitions: SqlDefinitionsStore = field(init=False)
    runs: SqlRunsStore = field(init=False)
    scheduling: SqlSchedulingStore = field(init=False)
    extraction: SqlExtractionStore = field(init=False)
    #: Days the audit log keeps an entry.
    audit_retention_days: int = 365
    audit: SqlAuditLog = field(init=False)
    cipher: SecretCipher | None = None
    #: The attempt inspector's captured requests (written by the dispatcher, read by the API and exportctl).
    attempts: SqlAttemptsStore = field(init=False)
    #: Per-member state: refused members retried by the next runs, and the member delivery log.
    retries: SqlMemberRetries = field(init=False)
    deliveries: SqlDeliveryLog = field(init=False)

    def __post_init__(self) -> None:
        self.definitions = SqlDefinitionsStore(self.database, self.cipher)
        self.runs = SqlRunsStore(self.database)
        self.scheduling = SqlSchedulingStore(self.database)
        self.extraction = SqlExtractionStore(self.database)
        self.audit = SqlAuditLog(self.database, self.audit_retention_days)
        self.attempts = SqlAttemptsStore(self.database)
        self.retries = SqlMemberRetries(self.database)
        self.deliveries = SqlDeliveryLog(self.database)

    @classmethod
    def from_url(
        cls, url: str, *, migrate: bool = False, audit_retention_days: int = 365, cipher: SecretCipher | None = None
    ) -> CatalogStores:
        """The stores of the catalog at ``url``; ``cipher`` for secrets at rest (``settings.secret_cipher()``).

        ``migrate=True`` creates or upgrades the schema first (tests, the local demo); services and
        exportctl instead refuse an old schema (``shared.catalog.schema.require_current``) and leave
        the upgrade to the operator (``exportctl db upgrade``).
        """
        database = CatalogDatabase.from_url(url)
        if migrate:
            from shared.catalog.schema import upgrade

            upgrade(database.engine)
        return cls(database, audit_retention_days=audit_retention_days, cipher=cipher)

    def close(self) -> None:
        """Close the catalog's database connections."""
        self.database.close()
