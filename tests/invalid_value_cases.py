"""Checking that a call refuses a value with gradkit's one invalid-value message.

A case is ``(call, name, value, allowed)``: ``call()`` must raise ValueError with exactly
``"Invalid {name}: {value!r}; {name} must be {allowed}"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

TEMPLATE = re.compile(r"^Invalid (?P<name>\w+): (?P<value>.+); (?P=name) must be (?P<allowed>.+)$")

Case = tuple[Callable[[], Any], str, Any, str]


def case_id(case: Case) -> str:
    """``name=value``, the test id of a case."""
    _, name, value, _ = case
    return f"{name}={value!r}"


def assert_invalid_value_message(call: Callable[[], Any], name: str, value: Any, allowed: str):
    """``call()`` raises ValueError with the template filled with ``name, value, allowed``."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    match = TEMPLATE.match(message)
    assert match is not None, f"not the invalid-value template: {message!r}"
    assert match["name"] == name
    assert match["value"] == repr(value)
    assert match["allowed"] == allowed
    assert message == f"Invalid {name}: {value!r}; {name} must be {allowed}"
