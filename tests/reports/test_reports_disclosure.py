"""Disclosure control (app.reports.disclosure), on tables written by hand."""

from __future__ import annotations

from app.reports.disclosure import _sums, disclose, hidden_counts, round_count
from app.reports.tables import TOTAL, Cell, Row, Table

COLUMNS = ("2025-01", "2025-02", TOTAL)


def counts(
    rows: dict[str, list[int]], *, columns_add_up: bool = True, total_row: bool = False
) -> Table:
    return Table(
        id="t",
        title="t",
        unit="count",
        columns=COLUMNS,
        rows=tuple(Row(k, k, tuple(Cell(v) for v in values)) for k, values in rows.items()),
        columns_add_up=columns_add_up,
        total_row=total_row,
    )


def shown(table: Table, *others: Table) -> dict[str, list[object]]:
    grid = disclose([table, *others])[table.id]
    return {row.key: values for row, values in zip(table.rows, grid, strict=True)}


def test_rounding_to_the_nearest_five() -> None:
    assert [round_count(n) for n in (0, 8, 10, 12, 13, 17, 18, 22, 23, 160)] == [
        0, 10, 10, 10, 15, 15, 20, 20, 25, 160
    ]  # fmt: skip


def test_counts_of_one_to_seven_are_hidden_zero_is_shown_the_rest_rounded() -> None:
    table = counts({"a": [0, 12, 12], "b": [8, 13, 21]})
    assert shown(table) == {"a": [0, 10, 10], "b": [10, 15, 20]}
    assert shown(counts({"a": [1, 7, 8]})) == {"a": ["*", "*", 10]}


def test_one_hidden_cell_in_a_row_hides_the_next_smallest() -> None:
    # 3 alone hidden could be read as 23 - 20: the 20 goes too; the total stays.
    assert shown(counts({"a": [3, 20, 23]})) == {"a": ["*", "*", 25]}
    # A zero is no protection: the smallest non-zero cell goes.
    four = Table(
        id="t",
        title="t",
        unit="count",
        columns=("m1", "m2", "m3", TOTAL),
        rows=(Row("a", "a", (Cell(3), Cell(0), Cell(10), Cell(13))),),
        columns_add_up=True,
    )
    assert shown(four) == {"a": ["*", 0, "*", 15]}
    # With no part left to hide, the total goes.
    assert shown(counts({"a": [3, 0, 3]})) == {"a": ["*", 0, "*"]}


def test_secondary_suppression_runs_along_rows_and_columns() -> None:
    table = counts({"a": [2, 10, 12], "b": [9, 11, 20], TOTAL: [11, 21, 32]}, total_row=True)
    # a/Jan is small; a/Feb then protects it in its row; b/Jan and b/Feb in the columns.
    assert shown(table) == {"a": ["*", "*", 10], "b": ["*", "*", 20], TOTAL: [10, 20, 30]}


def test_no_sum_is_ever_left_with_exactly_one_hidden_member() -> None:
    table = counts(
        {
            "a": [5, 40, 45],
            "b": [30, 2, 32],
            "c": [12, 14, 26],
            "d": [0, 9, 9],
            TOTAL: [47, 65, 112],
        },
        total_row=True,
    )
    hidden = hidden_counts(table)
    for parts, total in _sums(table):
        assert sum(1 for p in (*parts, total) if p in hidden) != 1
    assert shown(table) == {
        "a": ["*", "*", 45],
        "b": ["*", "*", 30],
        "c": [10, 15, 25],
        "d": [0, 10, 10],
        TOTAL: [45, 65, 110],
    }


def test_tables_that_do_not_add_up_get_no_secondary_suppression() -> None:
    # People in several categories: neither rows nor months add up, so nothing can be derived.
    table = counts({"a": [3, 20, 21]}, columns_add_up=False)
    assert shown(table) == {"a": ["*", 20, 20]}


def percent(numerators: Table, bases: list[int]) -> Table:
    rows = []
    for row in numerators.rows:
        cells = []
        for cell, base in zip(row.cells, bases, strict=True):
            n = int(cell.value or 0)
            cells.append(Cell(100.0 * n / base if base else None, base=base, numerator=n))
        rows.append(Row(row.key, row.label, tuple(cells)))
    return Table(
        id="p",
        title="p",
        unit="percent",
        columns=COLUMNS,
        rows=tuple(rows),
        percent_of=numerators.id,
    )


def test_percentages_follow_their_counts_and_are_computed_from_rounded_figures() -> None:
    numbers = counts({"a": [3, 20, 23], "b": [13, 30, 43]})
    shares = percent(numbers, [160, 6, 166])
    assert shown(shares, numbers) == {
        # a/Jan small; a/Feb hidden by secondary suppression; Feb's base (6) is small.
        "a": ["*", "*", 15.2],  # 25 of 165
        "b": [9.4, "*", 27.3],  # 15 of 160; 45 of 165
    }
    # Without suppression, the exact figures.
    assert [round(c.value or 0, 1) for c in shares.rows[1].cells] == [8.1, 500.0, 25.9]


def test_means_and_percentiles_of_one_to_seven_people_are_hidden() -> None:
    table = Table(
        id="m",
        title="m",
        unit="mean",
        columns=COLUMNS,
        rows=(Row("mean", "mean", (Cell(1.234, base=7), Cell(None, base=0), Cell(2.5, base=8))),),
    )
    assert disclose([table])["m"] == [["*", None, 2.5]]
    days = Table(
        id="d",
        title="d",
        unit="days",
        columns=COLUMNS,
        rows=(Row("median", "median", (Cell(3.25, base=1), Cell(4.0, base=30), Cell(4, base=31))),),
    )
    assert disclose([days])["d"] == [["*", 4.0, 4.0]]
