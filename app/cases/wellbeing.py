"""SWEMWBS: the raw total of the seven items and its metric score (DESIGN §6)."""

from __future__ import annotations

from collections.abc import Sequence

# Raw total (7-35) → metric score, from the published SWEMWBS conversion table.
METRIC_SCORES: dict[int, float] = {
    7: 7.00, 8: 9.51, 9: 11.25, 10: 12.40, 11: 13.33, 12: 14.08, 13: 14.75, 14: 15.32,
    15: 15.84, 16: 16.36, 17: 16.88, 18: 17.43, 19: 17.98, 20: 18.59, 21: 19.25, 22: 19.98,
    23: 20.73, 24: 21.54, 25: 22.35, 26: 23.21, 27: 24.11, 28: 25.03, 29: 26.02, 30: 27.03,
    31: 28.13, 32: 29.31, 33: 30.70, 34: 32.55, 35: 35.00,
}  # fmt: skip
# A change of at least this many metric points is a meaningful change for one person.
MEANINGFUL_CHANGE = 3.0

ITEMS = (
    "I've been feeling optimistic about the future",
    "I've been feeling useful",
    "I've been feeling relaxed",
    "I've been dealing with problems well",
    "I've been thinking clearly",
    "I've been feeling close to other people",
    "I've been able to make up my own mind about things",
)
ANSWERS = ("None of the time", "Rarely", "Some of the time", "Often", "All of the time")


def raw_score(items: Sequence[int]) -> int:
    if len(items) != len(ITEMS) or any(not 1 <= item <= 5 for item in items):
        raise ValueError("SWEMWBS needs 7 answers from 1 to 5")
    return sum(items)


def metric_score(raw: int) -> float:
    return METRIC_SCORES[raw]


def describe_change(first: float, last: float) -> str:
    change = round(last - first, 2)
    if abs(change) >= MEANINGFUL_CHANGE:
        size = "a meaningful improvement" if change > 0 else "a meaningful decline"
    elif change == 0:
        size = "no change"
    else:
        size = "a small change"
    return f"{change:+.2f} metric points, {size}"
