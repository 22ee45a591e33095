"""Write-only secrets: the API answers them masked, and a masked value sent back means "keep it". Pure."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from shared.domain.catalog_objects import CatalogObject, secret_fields, stored_form

#: How pydantic writes a ``SecretStr`` in JSON, hence in every API response.
MASK = "**********"

#: A field's place in an object's JSON: its keys from the top (``("auth", "password")``).
Path = tuple[str, ...]

#: Why a secret still masked after the merge is refused (the mask is not a secret: it may be quoted).
UNKEPT_MASK = (
    f"'{MASK}' stands for a stored secret, and none is stored here: give the secret itself "
    "(or an env:/file: reference to it)"
)


def keep_masked_secrets(new: dict[str, Any], old: CatalogObject | None) -> dict[str, Any]:
    """``new`` (an incoming object, as JSON) with the mask replaced by ``old``'s value at each of ``old``'s secrets.

    An update may send back what a read returned: its secrets are masked, and must not become
    ``**********``. Only a secret field's value is compared, and whole: a secret holding ``*`` or the mask
    (``a**********b``) is a new value, and so is ``**********`` in any field that is not a secret (a
    username, a label: a read answers them as they are). A mask where ``old`` has no secret is left as it is,
    for the checks to refuse (:func:`unkept_masks`). The mask itself cannot be set as a new secret: sent where
    a secret is stored, it keeps it (a read answers every secret so: nothing tells the two apart).
    """
    if old is None:
        return new
    secrets = {tuple(path.split(".")) for path, _ in secret_fields(old)}
    merged: dict[str, Any] = _merge(new, stored_form(old), (), secrets)
    return merged


def _merge(new: Any, old: Any, path: Path, secrets: set[Path]) -> Any:
    if isinstance(new, SecretStr):
        new = new.get_secret_value()
    if path in secrets:
        return old if new == MASK and isinstance(old, str) else new
    if isinstance(new, dict) and isinstance(old, dict):
        # A changed auth type must not inherit the old type's secret under a shared field name.
        if "type" in new and new.get("type") != old.get("type"):
            return new
        return {key: _merge(value, old.get(key), (*path, key), secrets) for key, value in new.items()}
    return new


def unkept_masks(obj: CatalogObject) -> list[str]:
    """The dotted paths of ``obj``'s secrets that are still the mask (:data:`UNKEPT_MASK` says why each is refused).

    Run on the merged object: a mask left there had no stored secret to keep (a new object, a manifest applied
    under a new name, an auth type changed), and saved it would be sent to the partner as the credential.
    """
    return [path for path, secret in secret_fields(obj) if secret.get_secret_value() == MASK]
