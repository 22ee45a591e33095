"""Write-only secrets: the API answers them masked, and a masked value sent back means "keep it". Pure."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from shared.domain.catalog_objects import CatalogObject, stored_form

#: How pydantic writes a ``SecretStr`` in JSON, hence in every API response.
MASK = "**********"


def keep_masked_secrets(new: dict[str, Any], old: CatalogObject | None) -> dict[str, Any]:
    """``new`` (an incoming object, as JSON) with every masked value replaced by ``old``'s value there.

    An update may send back what a read returned: its secrets are masked, and must not become
    ``**********``. A mask where ``old`` has no value is left for validation to refuse or keep.
    """
    if old is None:
        return new
    merged: dict[str, Any] = _merge(new, stored_form(old))
    return merged


def _merge(new: Any, old: Any) -> Any:
    if isinstance(new, SecretStr):
        new = new.get_secret_value()
    if new == MASK and isinstance(old, str):
        return old
    if isinstance(new, dict) and isinstance(old, dict):
        # A changed auth type must not inherit the old type's secret under a shared field name.
        if "type" in new and new.get("type") != old.get("type"):
            return new
        return {key: _merge(value, old.get(key)) for key, value in new.items()}
    return new
