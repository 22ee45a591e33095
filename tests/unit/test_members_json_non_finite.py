"""A batch sent as its members' JSON array (no body in the template) is valid JSON whatever its values: a float NaN
or infinity is null, as orjson writes it, also when a member's integer beyond 64 bits sends the batch to the standard
library's writer, which would write ``NaN`` and ``Infinity`` (hunt s54: only a forged member batch holds such values,
the extractor writes null)."""

import json
import math
from typing import Any

import pytest

from shared.domain.rendering import prepare_request, render_request
from tests.unit.test_prepared_rendering import PROFILE, batch_of, template

NON_FINITE = {"x": math.nan, "y": math.inf, "nested": {"z": -math.inf, "list": [math.nan, 1.5]}}
AS_SENT = {"x": None, "y": None, "nested": {"z": None, "list": [None, 1.5]}}


def _strict(content: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(content, parse_constant=refuse)


@pytest.mark.parametrize("big", [None, 123456789012345678901234567890], ids=["64-bit", "wider"])
def test_a_non_finite_value_is_sent_as_null(big: int | None) -> None:
    members = [{"id": 1, "big": big, **NON_FINITE}]
    batch = batch_of(members)
    plain = template({"path": "/members"})
    expected = [{"id": 1, "big": big, **AS_SENT}]
    assert _strict(render_request(plain, PROFILE, batch).content) == expected
    assert _strict(prepare_request(plain, PROFILE, batch).render(members).content) == expected
