"""The import jobs admin API's bodies."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field


class RefusedLine(BaseModel):
    file: str
    line: int = Field(description="Line number in the file (1 is the first)")
    field: str = Field(description="The element refused (never its value)")
    reason: str


class ImportJobOut(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "stopped", "failed"] = Field(
        description="queued, running, done; stopped: interrupted (upload the same file again "
        "and it takes up where it stopped)"
    )
    name: str
    deliver: bool = Field(description="Whether the history is delivered as live traffic")
    lines: int
    referrals: int = Field(description="Referrals in the file (counted when it is read)")
    done: int = Field(description="Referrals taken so far: made, held already, or refused")
    created: int
    unchanged: int = Field(description="Referrals already held (a re-run changes nothing)")
    events: int = Field(description="Events applied")
    refused: int = Field(description="Referrals refused: nothing of them loaded")
    refusals: list[RefusedLine] = Field(description="The refused lines (the first 1000)")
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
