"""Round trips to the database per referral, counted (not timed: bench/intake.py times them), so
a change that adds a query to intake shows here rather than only in a benchmark.

A round trip is each statement the driver sends, and BEGIN (asyncpg sends it on its own;
SQLite's is our BEGIN IMMEDIATE statement) and COMMIT. The ceiling is today's count: lower it as
intake gets leaner (the target is 6 on PostgreSQL), never raise it without saying why."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from sqlalchemy import func, select

from app.audit.models import AuditedPatient, AuditRecord
from app.cases.models import Patient
from tests.conftest import FHIR_JSON, Bridge, referral_resource, row_counts
from tests.support.round_trips import counted

# One warm intake on PostgreSQL: one statement writing the referral, the case, its first event,
# the patient, the report queue row and the request's audit record with its patients
# (data-modifying CTEs, app.db.execute_with_new, app.audit.trail.fold), which commits itself: no
# BEGIN, no COMMIT (app.db.execute_made_once, final). SQLite has no data-modifying CTE: there
# each table is its own INSERT (BEGIN IMMEDIATE with the referral's). The principal, the service
# and the destinations it goes to are remembered by the process (app.caches): no SELECT.
CEILING = {"postgresql": 1, "sqlite": 10}


async def _refer(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.post(
        "/fhir/ServiceRequest",
        content=orjson.dumps(referral_resource()),
        headers={**headers, **FHIR_JSON},
    )
    assert response.status_code == 201, response.text


async def test_a_referral_takes_at_most_the_ceiling_of_round_trips(
    app: Any, client: httpx.AsyncClient, backend: str
) -> None:
    bridge = Bridge(client)
    await bridge.service()
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    await _refer(client, referrer)  # keys made, pool warm: as in a running service
    with counted(app, backend) as seen:
        await _refer(client, referrer)
    assert len(seen.trips) <= CEILING[backend], "\n".join(seen.trips)
    if backend == "postgresql":
        # The referral, its case and the audit record: one statement.
        (case,) = seen.statements
        for table in ("referrals", "cases", "patients", "audit_events", "audit_event_patients"):
            assert f"INSERT INTO {table} " in case, table
    else:
        assert seen.trips[-1] == "COMMIT"
    # Warm, the directory costs nothing: no read of services or destinations.
    assert not [s for s in seen.statements if s.lstrip().upper().startswith("SELECT")], (
        seen.statements
    )


async def _audited(app: Any) -> list[tuple[int | None, str | None, list[str | None]]]:
    """Each intake's audit record: its status, the resource it names and its patients'
    referrals, oldest first."""
    async with app.state.database.read_sessions() as session:
        records = list(
            await session.scalars(
                select(AuditRecord)
                .where(AuditRecord.route == "/fhir/ServiceRequest")
                .order_by(AuditRecord.recorded_at)
            )
        )
        found = []
        for record in records:
            patients = await session.scalars(
                select(AuditedPatient.referral_id).where(AuditedPatient.audit_event_id == record.id)
            )
            found.append((record.status, record.resource_id, list(patients)))
        return found


async def test_a_repeat_leaves_nothing_of_its_own_and_is_recorded_as_the_held_referral(
    app: Any, client: httpx.AsyncClient, backend: str, database_url: str
) -> None:
    """A repeat of a held identifier, whichever way intake's write finds it held: the
    statement that was to commit itself refused whole by the unique constraint (PostgreSQL,
    nothing sent before it), or the referral's own insert when a read went first (an
    If-None-Exist that matches nothing; SQLite always). Either way it answers with the held
    referral, writes no case, patient or event of its own, and its audit record says 200 for
    the held referral's patient, not the one it made and dropped."""
    bridge = Bridge(client)
    await bridge.service()
    referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
    resource = referral_resource()
    first = await client.post(
        "/fhir/ServiceRequest", content=orjson.dumps(resource), headers={**referrer, **FHIR_JSON}
    )
    assert first.status_code == 201, first.text
    held = first.json()["id"]
    other = "identifier=https://example.org/nothing|none"
    with counted(app, backend) as seen:
        plain = await client.post(
            "/fhir/ServiceRequest",
            content=orjson.dumps(resource),
            headers={**referrer, **FHIR_JSON},
        )
    after_a_read = await client.post(
        "/fhir/ServiceRequest",
        content=orjson.dumps(resource),
        headers={**referrer, **FHIR_JSON, "If-None-Exist": other},
    )
    for repeat in (plain, after_a_read):
        assert repeat.status_code == 200, repeat.text
        assert repeat.json()["id"] == held
    if backend == "postgresql":
        # The refused statement, then the held referral read in a transaction of its own.
        assert "INSERT INTO referrals " in seen.statements[0], seen.trips
        assert seen.statements[1].startswith("SELECT referrals.id"), seen.trips
        assert seen.trips.count("BEGIN") == 1 and seen.trips[-1] == "COMMIT", seen.trips
    assert await row_counts(database_url) == {
        "referrals": 1,
        "cases": 1,
        "case_events": 1,
        "deliveries": 0,
    }
    async with app.state.database.read_sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Patient)) == 1
    assert await _audited(app) == [(201, held, [held]), (200, held, [held]), (200, held, [held])]
