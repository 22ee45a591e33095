"""The catalog ``exportctl dead-letters list`` reads its RETRY column from on the catalog directly: pending retry (the
next run sends them again), given up, delivered by a later run, or gone from the query
(:class:`shared.application.dead_letter_listing.RetryCells`, as the admin API reads them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.application.dead_letter_listing import RetryCells


class RetryLookup:
    """The catalog's view of dead letters' retries, as the local operator (through ``shared.application``):
    opened once a listing, read-only; nothing at all without a readable catalog (the listing is of Kafka's
    dead letters, and says what it can), and no cell where a catalog at an older revision cannot say."""

    def __init__(self, catalog_url: str) -> None:
        import getpass

        from shared.application.actors import local_operator
        from shared.cli.exits import CliError
        from shared.cli.modes import refuse_missing_catalog

        self.actor = local_operator(getpass.getuser())
        self._stores: Any = None
        self.cells: RetryCells | None = None
        try:
            refuse_missing_catalog(catalog_url)
        except CliError:
            return
        from sqlalchemy.exc import SQLAlchemyError

        from shared.application.dead_letter_listing import RetryCells
        from shared.catalog import CatalogStores

        self._stores = CatalogStores.from_url(catalog_url)
        self.cells = RetryCells(
            self.actor, self._stores.definitions, self._stores.retries, tolerated=(SQLAlchemyError,)
        )

    def close(self) -> None:
        if self._stores is not None:
            self._stores.close()
