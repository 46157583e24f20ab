"""Disclosure control for publication (``suppress=true``): no figure may let a reader find out
about a small group of people, directly or by subtraction.

The rules, table by table within a section:
1. Primary suppression: a count of 1 to 7 is shown as ``*``. Zero is shown: it discloses
   nobody.
2. Secondary suppression: where the month columns add up to the total column, or the rows add
   up to a total row, a hidden cell could be worked out from the others in the same row or
   column. So wherever exactly one member of such a sum (its parts and its total) is hidden,
   the smallest non-zero visible part is hidden too (the total when no part is left), and this
   repeats until no sum has exactly one hidden member.
3. Every count still shown is rounded to the nearest 5 (totals on their own, so rounded parts
   need not add up to their rounded total).
4. A percentage is hidden where its count or its base is 1 to 7, or where its count was hidden
   in the section's count table; otherwise it is computed from the rounded count and base, so
   it gives away no more than they do. A mean or a percentile is hidden where 1 to 7 people
   contribute to it.

Only the sums within one table are protected; figures repeated across tables (the number of
referrals in a month appears in several) are rounded and suppressed by the same rules, so they
agree wherever they are shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from app.reports.tables import SUPPRESSED, TOTAL, Cell, Published, Table, publish

SMALLEST_SHOWN = 8  # counts of 1 to 7 are hidden
ROUND_TO = 5

Position = tuple[int, int]  # (row index, column index)


def is_small(number: int | float | None) -> bool:
    return number is not None and 0 < number < SMALLEST_SHOWN


def round_count(number: int) -> int:
    """To the nearest multiple of 5 (counts are whole numbers, so there are no ties)."""
    return ROUND_TO * ((number + ROUND_TO // 2) // ROUND_TO)


def _sums(table: Table) -> list[tuple[list[Position], Position]]:
    """Each sum the table holds: its parts and its total, as cell positions."""
    sums: list[tuple[list[Position], Position]] = []
    width = len(table.columns)
    if table.columns_add_up and table.columns and table.columns[-1] == TOTAL:
        for r in range(len(table.rows)):
            sums.append(([(r, c) for c in range(width - 1)], (r, width - 1)))
    if table.total_row:
        keys = [row.key for row in table.rows]
        if TOTAL in keys:
            total = keys.index(TOTAL)
            parts = [r for r in range(len(table.rows)) if r != total]
            for c in range(width):
                sums.append(([(r, c) for r in parts], (total, c)))
    return sums


def hidden_counts(table: Table) -> set[Position]:
    """The cells of a count table to hide: primary then secondary suppression."""

    def value(position: Position) -> int:
        return int(table.rows[position[0]].cells[position[1]].value or 0)

    hidden = {
        (r, c)
        for r, row in enumerate(table.rows)
        for c, cell in enumerate(row.cells)
        if is_small(cell.value)
    }
    sums = _sums(table)
    changed = True
    while changed:
        changed = False
        for parts, total in sums:
            if sum(1 for p in (*parts, total) if p in hidden) != 1:
                continue
            candidates = [p for p in parts if p not in hidden and value(p) > 0]
            if candidates:
                hidden.add(min(candidates, key=lambda p: (value(p), p)))
            elif total not in hidden:
                hidden.add(total)
            else:
                # The one hidden member is the total and every visible part is 0: hide a
                # zero part, or the total could be read off as the sum of the parts.
                zeros = [p for p in parts if p not in hidden]
                if not zeros:
                    continue
                hidden.add(zeros[0])
            changed = True
    return hidden


def _disclosed_count(cell: Cell, hidden: bool) -> Published:
    if hidden:
        return SUPPRESSED
    if cell.value is None:
        return None
    return round_count(int(cell.value))


def _disclosed_percent(cell: Cell, hidden_count: bool) -> Published:
    if cell.value is None:
        return None
    if hidden_count or is_small(cell.numerator) or is_small(cell.base):
        return SUPPRESSED
    numerator = round_count(int(cell.numerator or 0))
    base = round_count(int(cell.base or 0))
    return round(100.0 * numerator / base, 1) if base else None


def _disclosed_statistic(cell: Cell, table: Table) -> Published:
    if cell.value is None:
        return None
    if is_small(cell.base):
        return SUPPRESSED
    return publish(cell, table.unit)


def disclose(tables: Sequence[Table]) -> dict[str, list[list[Published]]]:
    """The published grid of each table of one section under the rules above, by table id."""
    hidden_by_table = {t.id: hidden_counts(t) for t in tables if t.unit == "count"}
    grids: dict[str, list[list[Published]]] = {}
    for table in tables:
        if table.unit == "count":
            hidden = hidden_by_table[table.id]
            grids[table.id] = [
                [_disclosed_count(cell, (r, c) in hidden) for c, cell in enumerate(row.cells)]
                for r, row in enumerate(table.rows)
            ]
        elif table.unit == "percent":
            counts = _count_positions(tables, table, hidden_by_table)
            grids[table.id] = [
                [
                    _disclosed_percent(cell, (row.key, c) in counts)
                    for c, cell in enumerate(row.cells)
                ]
                for row in table.rows
            ]
        else:
            grids[table.id] = [
                [_disclosed_statistic(cell, table) for cell in row.cells] for row in table.rows
            ]
    return grids


def _count_positions(
    tables: Iterable[Table], table: Table, hidden_by_table: dict[str, set[Position]]
) -> set[tuple[str, int]]:
    """The (row key, column) of every hidden count a percentage table is computed from."""
    source = next((t for t in tables if t.id == table.percent_of), None)
    if source is None:
        return set()
    hidden = hidden_by_table.get(source.id, set())
    return {(source.rows[r].key, c) for r, c in hidden}
