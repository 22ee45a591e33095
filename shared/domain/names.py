"""Internal names: lowercase slugs derived from labels, as the reference platform derives them."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import StringConstraints

from shared.events import NAME_PATTERN

#: The internal name of a catalog object: lowercase letters, digits and dashes, 1 to 100 characters.
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


def slugify(label: str) -> str:
    """Derive an internal name from a human label: ``"Gold members, 90 days"`` → ``"gold-members-90-days"``."""
    ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_label.lower()).strip("-")
    return slug[:100].strip("-") or "unnamed"
