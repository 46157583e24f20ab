"""What a report is made of: sections of tables, each a grid of cells (rows by months + total).

A cell keeps what disclosure control needs besides its value: how many people (or things) it is
computed from (``base``) and, for a percentage, the count it is of that base (``numerator``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

TOTAL = "total"
# count: a number of people or things; percent: numerator as a share of base; mean and days:
# an average or a percentile computed from ``base`` people.
Unit = Literal["count", "percent", "mean", "days"]
# What a cell shows once published: a number, "*" when suppressed, None when there is nothing
# to compute it from (a mean of nobody).
Published = int | float | str | None
SUPPRESSED = "*"


@dataclass(frozen=True)
class Cell:
    value: int | float | None
    base: int | None = None
    numerator: int | None = None


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Table:
    id: str
    title: str
    unit: Unit
    columns: tuple[str, ...]  # month keys ("2025-01") and, last, TOTAL
    rows: tuple[Row, ...]
    # The month columns add up to the total column (each thing is counted in one month).
    columns_add_up: bool = False
    # The row keyed TOTAL is the sum of the other rows (they partition it).
    total_row: bool = False
    # For a percentage table: the count table (same rows and columns) holding its numerators,
    # so that a count hidden there hides its percentage here.
    percent_of: str | None = None
    chart: bool = False  # the HTML page draws it as bars
    description: str = ""

    def column_labels(self) -> list[str]:
        return [month_label(c) for c in self.columns]


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    tables: tuple[Table, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    definition: str  # activity | staff-hub
    title: str
    services: tuple[tuple[str, str], ...]  # (id, name)
    team: str | None
    start: dt.date
    end: dt.date  # inclusive
    months: tuple[str, ...]
    generated_at: dt.datetime
    sections: tuple[Section, ...]
    notes: tuple[str, ...] = field(default=())


def month_label(key: str) -> str:
    if key == TOTAL:
        return "Total"
    return dt.date(int(key[:4]), int(key[5:7]), 1).strftime("%b %Y")


# --- building tables from grouped query results ----------------------------------------------


def columns_of(months: Sequence[str]) -> tuple[str, ...]:
    return (*months, TOTAL)


def count_row(
    key: str,
    label: str,
    months: Sequence[str],
    by_month: Mapping[str, int],
    total: int | None = None,
) -> Row:
    """Counts by month and, unless given, their sum as the total."""
    values = [int(by_month.get(m, 0)) for m in months]
    whole = sum(values) if total is None else total
    return Row(key, label, (*(Cell(v) for v in values), Cell(whole)))


def percent_row(key: str, label: str, numerators: Row, bases: Row) -> Row:
    """Each count of ``numerators`` as a percentage of the count in the same column of
    ``bases``; no value where the base is 0."""
    cells = []
    for top, bottom in zip(numerators.cells, bases.cells, strict=True):
        numerator = int(top.value or 0)
        base = int(bottom.value or 0)
        value = 100.0 * numerator / base if base else None
        cells.append(Cell(value, base=base, numerator=numerator))
    return Row(key, label, tuple(cells))


def percent_table(
    table_id: str,
    title: str,
    counts: Table,
    bases: Row,
    *,
    description: str = "",
    chart: bool = False,
) -> Table:
    rows = tuple(
        percent_row(row.key, row.label, row, bases) for row in counts.rows if row.key != TOTAL
    )
    return Table(
        id=table_id,
        title=title,
        unit="percent",
        columns=counts.columns,
        rows=rows,
        percent_of=counts.id,
        chart=chart,
        description=description,
    )


def publish(cell: Cell, unit: Unit) -> Published:
    """A cell's value as shown without disclosure control."""
    if cell.value is None:
        return None
    if unit == "count":
        return int(cell.value)
    return round(float(cell.value), 1 if unit in ("percent", "days") else 2)


def published_grid(table: Table) -> list[list[Published]]:
    return [[publish(cell, table.unit) for cell in row.cells] for row in table.rows]
