"""Round trips to the database per referral, counted (not timed: bench/intake.py times them), so
a change that adds a query to intake shows here rather than only in a benchmark.

A round trip is each statement the driver sends, and BEGIN (asyncpg sends it on its own;
SQLite's is our BEGIN IMMEDIATE statement) and COMMIT. The ceiling is today's count: lower it as
intake gets leaner (the target is 6 on PostgreSQL), never raise it without saying why."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.conftest import FHIR_JSON, Bridge, referral_resource
from tests.support.round_trips import counted

# One warm intake on PostgreSQL: BEGIN; INSERT referrals (ON CONFLICT DO NOTHING RETURNING: is it
# new?); one statement writing the case, its first event, the patient, the resource versions, the
# report queue row and the request's audit record with its patients (data-modifying CTEs,
# app.db.execute_with_new, app.audit.trail.fold); COMMIT. SQLite has no data-modifying CTE: there
# each table is its own INSERT (BEGIN IMMEDIATE instead of BEGIN). The principal, the service and
# the destinations it goes to are remembered by the process (app.caches): no SELECT.
CEILING = {"postgresql": 4, "sqlite": 10}


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
    assert seen.trips[-1] == "COMMIT"
    assert len(seen.trips) <= CEILING[backend], "\n".join(seen.trips)
    if backend == "postgresql":
        # The audit record is written with the case, not in a round trip of its own.
        (case,) = [s for s in seen.statements if "INSERT INTO cases" in s]
        assert "INSERT INTO audit_events" in case and "INSERT INTO audit_event_patients" in case
    # Warm, the directory costs nothing: no read of services or destinations.
    assert not [s for s in seen.statements if s.lstrip().upper().startswith("SELECT")], (
        seen.statements
    )
