"""Who asks: an actor with a role (a set of permissions) and an optional business-unit scope. Pure.

=========  ==========================================================================
viewer     read everything (secrets masked)
editor     read; create, change, copy and delete templates, queries and definitions; dry runs
operator   read; run, cancel and dry-run exports
admin      everything, including connection profiles (they hold credentials)
=========  ==========================================================================

An actor with ``business_units`` sees and touches only the definitions (and their runs) of those
units. exportctl working on the catalog directly acts as :data:`LOCAL_OPERATOR`: whoever holds the
catalog's credentials can do everything anyway.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from shared.application.errors import Forbidden


class Role(StrEnum):
    VIEWER = "viewer"
    EDITOR = "editor"
    OPERATOR = "operator"
    ADMIN = "admin"


class Permission(StrEnum):
    READ = "read"
    WRITE = "write"
    WRITE_PROFILES = "write_profiles"
    RUN = "run"
    DRY_RUN = "dry_run"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.EDITOR: frozenset({Permission.READ, Permission.WRITE, Permission.DRY_RUN}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.RUN, Permission.DRY_RUN}),
    Role.ADMIN: frozenset(Permission),
}


class Actor(BaseModel):
    """Who performs a use case."""

    model_config = ConfigDict(frozen=True)
    name: str
    role: Role
    business_units: frozenset[str] = frozenset()

    def may(self, permission: Permission) -> bool:
        return permission in GRANTS[self.role]

    def sees(self, business_unit: str | None) -> bool:
        """Whether a definition of ``business_unit`` is in this actor's scope."""
        return not self.business_units or business_unit in self.business_units


def authorise(actor: Actor, permission: Permission) -> None:
    """:class:`~shared.application.errors.Forbidden` unless the actor's role grants ``permission``."""
    if not actor.may(permission):
        raise Forbidden(f"role '{actor.role.value}' may not {permission.value.replace('_', ' ')}")


def local_operator(name: str) -> Actor:
    """The actor of exportctl on the catalog directly (full rights: it holds the catalog's credentials)."""
    return Actor(name=name, role=Role.ADMIN)
