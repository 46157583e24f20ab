"""Reports as the API answers them in JSON (CSV and HTML carry the same figures)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

ReportFormat = Literal["json", "csv", "html"]


class ReportService(BaseModel):
    id: str
    name: str


class ReportRow(BaseModel):
    key: str = Field(description="Stable code of the row (a code from fhir/, or 'total')")
    label: str
    values: list[int | float | str | None] = Field(
        description="One per column: a number; '*' where disclosure control hides it; null "
        "where there is nothing to compute it from"
    )


class ReportTable(BaseModel):
    id: str
    title: str
    unit: Literal["count", "percent", "mean", "days"]
    description: str = ""
    columns: list[str] = Field(description="Months ('YYYY-MM') then 'total'")
    column_labels: list[str]
    rows: list[ReportRow]


class ReportSection(BaseModel):
    id: str
    title: str
    notes: list[str] = Field(default_factory=list)
    tables: list[ReportTable]


class ReportDocument(BaseModel):
    report: Literal["activity", "staff-hub"]
    title: str
    services: list[ReportService]
    team: str | None = Field(description="Only referrals from this referring team, if given")
    from_: dt.date = Field(alias="from", serialization_alias="from")
    to: dt.date
    months: list[str]
    suppressed: bool = Field(description="Disclosure control applied (suppress=true)")
    generated_at: dt.datetime
    notes: list[str] = Field(default_factory=list)
    sections: list[ReportSection]

    model_config = {"populate_by_name": True}
