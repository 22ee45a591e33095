"""How a model knows it is reading one of the catalog's own rows: a rule tightened since a row was saved is enforced
when the row is written again, not when it is read (a catalog saved under older rules keeps loading and running)."""

from __future__ import annotations

from pydantic import ValidationInfo

#: The validation context entry holding the function that decrypts such a value (given by the catalog's store).
DECRYPT_SECRET = "decrypt_secret"  # noqa: S105 - a context key, not a secret
#: The validation context entry saying the input is one of the catalog's own rows (read as saved), for readers that
#: decrypt nothing (the scheduler's): a rule tightened since it was saved is enforced where it matters, not at the read.
STORED_ROW = "stored_row"


def read_as_saved(info: ValidationInfo) -> bool:
    """Whether the input is one of the catalog's own rows (read with its context: :data:`DECRYPT_SECRET` or
    :data:`STORED_ROW`): a rule tightened since a row was saved is not enforced at its read, only when it is written."""
    return isinstance(info.context, dict) and (DECRYPT_SECRET in info.context or STORED_ROW in info.context)
