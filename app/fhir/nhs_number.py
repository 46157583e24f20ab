"""NHS number check (DESIGN §6): ten digits, modulus-11 check digit."""

from __future__ import annotations

_WEIGHTS = range(10, 1, -1)


def normalise(value: str) -> str:
    """Drop the spaces and hyphens people type ("943 476 5919")."""
    return value.replace(" ", "").replace("-", "")


def is_valid(value: str) -> bool:
    digits = normalise(value)
    if len(digits) != 10 or not digits.isascii() or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], _WEIGHTS, strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    if check == 10:
        return False
    return check == int(digits[9])


def is_test_range(value: str) -> bool:
    """NHS England issues synthetic test numbers from the 999 range; they pass the check too."""
    return normalise(value).startswith("999")
