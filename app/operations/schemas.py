from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Liveness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"]


class ReadinessCheck(BaseModel):
    ok: bool
    detail: str | None = Field(
        default=None, description="Why it failed, or a note on how it passed; never a secret"
    )


READY_EXAMPLE: dict[str, Any] = {
    "status": "ready",
    "checks": {
        "database": {"ok": True, "detail": None},
        "migrations": {"ok": True, "detail": None},
        "dispatcher": {"ok": True, "detail": "not run in this process: workers deliver"},
    },
}
NOT_READY_EXAMPLE: dict[str, Any] = {
    "status": "not ready",
    "checks": {
        "database": {"ok": True, "detail": None},
        "migrations": {
            "ok": False,
            "detail": "the database is at 0005, this code needs 0006: run `spbridge migrate`",
        },
        "dispatcher": {"ok": True, "detail": None},
    },
}


class Readiness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [READY_EXAMPLE]})

    status: Literal["ready", "not ready"]
    checks: dict[str, ReadinessCheck] = Field(
        description="Each check by name (database, migrations, dispatcher) and how it went"
    )
