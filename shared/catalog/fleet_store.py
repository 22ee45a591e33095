"""The dispatcher fleet's shared state: the replicas' heartbeats and the profiles' circuit breakers.

Heartbeats: each replica writes its row every few seconds and reads the live ones (one short transaction);
the replicas divide each profile's limits between them (:mod:`shared.domain.limit_shares`). Circuit
breakers: a replica whose own breaker opens or closes moves the profile's shared row with a conditional
update; the one whose update takes announces the change, so that each opening and closing is announced once
whatever the number of replicas.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update

from shared.catalog.database import CatalogDatabase, now
from shared.catalog.tables import CircuitBreakerRow, DispatcherReplicaRow


@dataclass(frozen=True)
class ReplicaBeat:
    """A live replica: its id and the view (shares) it has drained to."""

    replica_id: str
    drained_view: str | None


@dataclass(frozen=True)
class BreakerChange:
    """A change of a profile's shared breaker to announce: ``state`` (open or closed) in its ``episode``."""

    profile: str
    state: str
    episode: int

    @property
    def ordinal(self) -> int:
        """Its place among the profile's changes: an episode's opening, then its closing."""
        return 2 * self.episode + (1 if self.state == "closed" else 0)


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

    def change_breaker(self, profile: str, state: str) -> BreakerChange | None:
        """Move ``profile``'s shared breaker to ``state`` (``open`` or ``closed``); the change to announce when
        this call made it (an opening starts a new episode), None when it was in that state already."""
        with self.database.transaction() as session:
            self.database.insert_ignore(
                session, CircuitBreakerRow, {"profile": profile, "state": "closed", "episode": 0, "changed_at": now()}
            )
            episode = CircuitBreakerRow.episode + 1 if state == "open" else CircuitBreakerRow.episode
            changed = session.execute(
                update(CircuitBreakerRow)
                .where(CircuitBreakerRow.profile == profile, CircuitBreakerRow.state != state)
                .values(state=state, episode=episode, changed_at=now())
                .returning(CircuitBreakerRow.episode)
            ).first()
        return None if changed is None else BreakerChange(profile, state, changed.episode)

    def claim_announcement(self, change: BreakerChange) -> bool:
        """True once per change (the notifier sends its notices then); False when it, or a later change of the
        profile, was claimed before."""
        with self.database.transaction() as session:
            claimed = session.execute(
                update(CircuitBreakerRow)
                .where(
                    CircuitBreakerRow.profile == change.profile,
                    (CircuitBreakerRow.announced.is_(None)) | (CircuitBreakerRow.announced < change.ordinal),
                )
                .values(announced=change.ordinal)
                .returning(CircuitBreakerRow.profile)
            ).first()
        return claimed is not None
