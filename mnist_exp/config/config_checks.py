"""The building blocks of config checks: each check takes a value and returns None when it is fine, else a
phrase saying what is allowed (mnist_exp.config puts the key in front of it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# A check returns None when the value is fine, else a phrase saying what is allowed.
Check = Callable[[Any], "str | None"]


def integer(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return None if ok else f"an integer from {low} to {high}"
    return check


def number(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    left, right = "(" if low_open else "[", ")" if high_open else "]"

    def check(value: Any) -> str | None:
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (low < value if low_open else low <= value)
            and (value < high if high_open else value <= high)
        )
        return None if ok else f"a number in {left}{low}, {high}{right}"
    return check


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def one_of(*allowed: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in allowed else "one of " + ", ".join(allowed)
    return check


def optional(check: Check) -> Check:
    def check_optional(value: Any) -> str | None:
        problem = check(value) if value is not None else None
        return None if problem is None else f"null or {problem}"
    return check_optional


def text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "a non-empty string"
