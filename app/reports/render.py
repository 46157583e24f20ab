"""A report document (app.reports.service.report_document) as CSV or as a printable HTML page
with bar charts drawn on the server as inline SVG: the page loads nothing from anywhere.

CSV shape: one file, one line per figure, columns
``report,section,table,unit,row_key,row,column,value`` (``column`` a month 'YYYY-MM' or
'total'; ``value`` a number, '*' where disclosure control hides it, empty where there is
nothing to compute it from).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

CSV_COLUMNS = ("report", "section", "table", "unit", "row_key", "row", "column", "value")

_TEMPLATES = Path(__file__).resolve().parent / "templates"
_environment = Environment(
    loader=FileSystemLoader(_TEMPLATES),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_CSS = (_TEMPLATES / "report.css").read_text(encoding="utf-8")
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode("ascii")
# The page's only style is its own inline sheet; nothing else may load.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else f"{value:.1f}"
    return str(value)


def to_csv(document: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for section in document["sections"]:
        for table in section["tables"]:
            for row in table["rows"]:
                for column, value in zip(table["columns"], row["values"], strict=True):
                    writer.writerow(
                        (
                            document["report"],
                            section["id"],
                            table["id"],
                            table["unit"],
                            row["key"],
                            _safe(row["label"]),
                            column,
                            _cell(value),
                        )
                    )
    return out.getvalue()


def _safe(label: str) -> str:
    """Free text (a team's name, an EDI answer) cannot start a formula in a spreadsheet."""
    return "'" + label if label[:1] in ("=", "+", "-", "@", "\t", "\r") else label


# --- charts ------------------------------------------------------------------------------------

_BAR_HEIGHT = 18
_GAP = 6
_LABEL_WIDTH = 260
_PLOT_WIDTH = 380
_VALUE_WIDTH = 70


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def bar_chart(table: dict[str, Any]) -> Markup:
    """Horizontal bars of each row's total (the last column); '*' and empty show no bar."""
    rows = [r for r in table["rows"] if r["key"] != "total"]
    values = [r["values"][-1] for r in rows]
    numbers = [n for n in (_number(v) for v in values) if n is not None]
    top = max([*numbers, 0.0]) or 1.0
    if table["unit"] == "percent":
        top = max(top, 100.0)
    height = len(rows) * (_BAR_HEIGHT + _GAP) + _GAP
    width = _LABEL_WIDTH + _PLOT_WIDTH + _VALUE_WIDTH
    title = escape(table["title"])
    parts = [
        f'<svg class="chart" role="img" aria-label="{title}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{title} (total)</title>",
    ]
    suffix = "%" if table["unit"] == "percent" else ""
    for index, (row, value) in enumerate(zip(rows, values, strict=True)):
        y = _GAP + index * (_BAR_HEIGHT + _GAP)
        middle = y + _BAR_HEIGHT / 2 + 4
        label = escape(_shorten(row["label"]))
        parts.append(
            f'<text x="{_LABEL_WIDTH - 6}" y="{middle:.0f}" text-anchor="end">{label}</text>'
        )
        number = _number(value)
        if number is not None and number > 0:
            length = max(1.0, _PLOT_WIDTH * number / top)
            parts.append(
                f'<rect class="bar" x="{_LABEL_WIDTH}" y="{y}" width="{length:.1f}" '
                f'height="{_BAR_HEIGHT}"/>'
            )
        shown = "" if value is None else f"{_cell(value)}{suffix if number is not None else ''}"
        parts.append(
            f'<text x="{_LABEL_WIDTH + _PLOT_WIDTH + 6}" y="{middle:.0f}">{escape(shown)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (built here; every text in it is escaped)


_SPARK_WIDTH = 60
_SPARK_HEIGHT = 16


def sparkline(table: dict[str, Any], row: dict[str, Any]) -> Markup:
    """A small column chart of a row's monthly values, drawn beside its total: the trend by
    month a reader looks for. Nothing for a table of one month, or a row with nothing to draw
    ('*' and empty cells are gaps)."""
    monthly = row["values"][:-1]
    if table["unit"] != "count" or len(monthly) < 2:
        return Markup("")
    numbers = [_number(value) for value in monthly]
    top = max((n for n in numbers if n is not None), default=0.0)
    if top <= 0:
        return Markup("")
    step = _SPARK_WIDTH / len(monthly)
    bar = max(step - 1, 1)
    parts = [
        f'<svg class="spark" viewBox="0 0 {_SPARK_WIDTH} {_SPARK_HEIGHT}" width="{_SPARK_WIDTH}" '
        f'height="{_SPARK_HEIGHT}" aria-hidden="true" xmlns="http://www.w3.org/2000/svg">'
    ]
    for index, number in enumerate(numbers):
        if number is None or number <= 0:
            continue
        height = max(1.0, (_SPARK_HEIGHT - 1) * number / top)
        parts.append(
            f'<rect x="{index * step:.1f}" y="{_SPARK_HEIGHT - height:.1f}" '
            f'width="{bar:.1f}" height="{height:.1f}"/>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (numbers only, built here)


def all_zero(row: dict[str, Any]) -> bool:
    """A row with nothing in it (every cell 0 or empty): folded away unless asked for."""
    return row["key"] != "total" and all(value in (0, 0.0, None) for value in row["values"])


_environment.tests["all_zero_row"] = all_zero


def _shorten(label: str, limit: int = 42) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def to_html(document: dict[str, Any]) -> str:
    template = _environment.get_template("report.html")
    return template.render(
        report=document,
        style=Markup(_CSS),  # noqa: S704 (our own static file, not input)
        chart=bar_chart,
        spark=sparkline,
        all_zero=all_zero,
        cell=_cell,
    )
