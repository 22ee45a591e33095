"""The dispatcher fleet's shared state: the replicas' heartbeats and the profiles' circuit breakers.

Heartbeats: each replica writes its row every few seconds and reads the live ones (one short transaction);
the replicas divide each profile's limits between them (:mod:`shared.domain.limit_shares`).

Circuit breakers: each replica reports, every second or so, the profiles whose breaker is open (or half-open)
at it (:meth:`SqlFleetStore.report_breakers`); a report unrenewed for the TTL no longer counts (a replica that
crashed or was scaled down). A profile's breaker is open for the fleet while a live replica's is; the report
moves the profile's shared row when that changes (conditional updates: one change whatever the number of
replicas reporting at once) and returns the changes not announced yet, which the reporter publishes and then
marks announced: a change is announced at least once, by whichever replica reports next should the
publication fail.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select, update

from shared.catalog.database import CatalogDatabase, aware, now
from shared.catalog.tables import CircuitBreakerRow, DispatcherReplicaRow, OpenBreakerRow
from shared.domain.fleet import BreakerChange, ReplicaBeat

__all__ = ["BreakerChange", "ReplicaBeat", "SqlFleetStore"]


class SqlFleetStore:
    """Heartbeats and shared breakers, in the catalog."""

    #: A row unseen this many times the TTL is deleted (a replica that crashed; a live one writes it again).
    FORGET_AFTER_TTLS = 10

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database

    def beat(self, replica_id: str, at: float, ttl: float, drained_view: str | None) -> list[ReplicaBeat]:
        """Record ``replica_id``'s heartbeat at ``at`` (Unix seconds); the replicas that beat within ``ttl``
        seconds of it (itself included), by id."""
        with self.database.transaction() as session:
            values = {"beat_at": at, "drained_view": drained_view}
            found = session.execute(
                update(DispatcherReplicaRow).where(DispatcherReplicaRow.replica_id == replica_id).values(**values)
            )
            if not found.rowcount:  # type: ignore[attr-defined]
                self.database.insert_ignore(session, DispatcherReplicaRow, {"replica_id": replica_id, **values})
            session.execute(
                delete(DispatcherReplicaRow).where(DispatcherReplicaRow.beat_at < at - ttl * self.FORGET_AFTER_TTLS)
            )
            rows = session.execute(
                select(DispatcherReplicaRow.replica_id, DispatcherReplicaRow.drained_view)
                .where(DispatcherReplicaRow.beat_at >= at - ttl)
                .order_by(DispatcherReplicaRow.replica_id)
            ).all()
        return [ReplicaBeat(row.replica_id, row.drained_view) for row in rows]

    def leave(self, replica_id: str) -> None:
        """The replica stops: its share goes to the others at their next heartbeat."""
        with self.database.transaction() as session:
            session.execute(delete(DispatcherReplicaRow).where(DispatcherReplicaRow.replica_id == replica_id))

    def report_breakers(
        self, replica_id: str, open_profiles: Iterable[str], at: float, ttl: float
    ) -> list[BreakerChange]:
        """Record that ``open_profiles`` are the profiles whose breaker is open at ``replica_id`` at ``at`` (Unix
        seconds); move the fleet's breakers accordingly (open while a replica that reported within ``ttl``
        seconds has it open); return the changes not announced yet, oldest profile first."""
        reported = set(open_profiles)
        with self.database.transaction() as session:
            session.execute(
                delete(OpenBreakerRow).where(
                    OpenBreakerRow.replica_id == replica_id, OpenBreakerRow.profile.not_in(reported)
                )
            )
            for profile in sorted(reported):
                values = {"replica_id": replica_id, "profile": profile, "seen_at": at}
                if not self.database.insert_ignore(session, OpenBreakerRow, values):
                    session.execute(
                        update(OpenBreakerRow)
                        .where(OpenBreakerRow.replica_id == replica_id, OpenBreakerRow.profile == profile)
                        .values(seen_at=at)
                    )
            session.execute(delete(OpenBreakerRow).where(OpenBreakerRow.seen_at < at - ttl * self.FORGET_AFTER_TTLS))
            fleet_open = set(
                session.scalars(select(OpenBreakerRow.profile).where(OpenBreakerRow.seen_at >= at - ttl).distinct())
            )
            for profile in sorted(fleet_open):
                self.database.insert_ignore(
                    session,
                    CircuitBreakerRow,
                    {"profile": profile, "state": "closed", "episode": 0, "changed_at": now()},
                )
                session.execute(
                    update(CircuitBreakerRow)
                    .where(CircuitBreakerRow.profile == profile, CircuitBreakerRow.state != "open")
                    .values(state="open", episode=CircuitBreakerRow.episode + 1, changed_at=now())
                )
            session.execute(
                update(CircuitBreakerRow)
                .where(CircuitBreakerRow.state == "open", CircuitBreakerRow.profile.not_in(fleet_open))
                .values(state="closed", changed_at=now())
            )
            rows = session.scalars(
                select(CircuitBreakerRow).where(CircuitBreakerRow.episode > 0).order_by(CircuitBreakerRow.profile)
            ).all()
            changes = [BreakerChange(row.profile, row.state, row.episode, aware(row.changed_at)) for row in rows]
            return [c for row, c in zip(rows, changes, strict=True) if (row.announced or -1) < c.ordinal]

    def mark_announced(self, changes: Iterable[BreakerChange]) -> None:
        """Record ``changes`` as published (a later change of a profile stays pending)."""
        with self.database.transaction() as session:
            for change in changes:
                session.execute(
                    update(CircuitBreakerRow)
                    .where(
                        CircuitBreakerRow.profile == change.profile,
                        (CircuitBreakerRow.announced.is_(None)) | (CircuitBreakerRow.announced < change.ordinal),
                    )
                    .values(announced=change.ordinal)
                )

    def forget_breakers(self, replica_id: str) -> None:
        """The replica stops: its open breakers no longer count (the fleet's close once no other has them)."""
        with self.database.transaction() as session:
            session.execute(delete(OpenBreakerRow).where(OpenBreakerRow.replica_id == replica_id))
