"""Which stored object, at which version: the validator of a conditional write (an API ``ETag``, a console form's
hidden ``version``).

A version alone does not say which object it is of: an object deleted and created again under its name starts at
version 1 again. A revision names the stored object too (its row id, a UUID never given to another object), so a
token read before a delete never matches the object created after it."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

#: A token as :meth:`Revision.token` writes it: the object's id (32 lowercase hex digits), a dot, its version (in
#: decimal without leading zeros: a strong comparison is character by character, so ``.03`` is no ``.3``).
_TOKEN = re.compile(r"(?P<id>[0-9a-f]{32})\.(?P<version>0|[1-9][0-9]{0,17})")


@dataclass(frozen=True, order=True)
class Revision:
    """One stored object (its stable id) at one version."""

    object_id: uuid.UUID
    version: int

    def token(self) -> str:
        """The revision as text (an ``ETag``'s opaque part, a form's hidden field): ``<id, hex>.<version>``."""
        return f"{self.object_id.hex}.{self.version}"

    @classmethod
    def parse(cls, token: str) -> Revision | None:
        """The revision of a :meth:`token`; None for any other text (an old plain version, ``"3"``, included)."""
        found = _TOKEN.fullmatch(token)
        if found is None:
            return None
        return cls(uuid.UUID(hex=found["id"]), int(found["version"]))


#: What a validator that is no revision stands for (a console page of before revisions posting a plain version,
#: ``1``): a revision no object is ever at (no row id is all zeros), :meth:`Revision.token` of it reads back as it.
NO_OBJECT = Revision(uuid.UUID(int=0), 0)
