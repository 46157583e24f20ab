"""Round trips to the database per case event (`POST /api/v1/cases/{id}/events`), counted, not
timed, as for intake (tests/referrals/test_round_trips.py): a change that adds a query to an
advisor's event shows here. The ceiling is today's count: lower it as the path gets leaner,
never raise it without saying why."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from tests.conftest import Bridge
from tests.support.cases import open_case

# With an appointment booked and attended in between: the records are read once per event.
# SQLite has no data-modifying CTE: the versions and the report queue, and the audit record and
# its patients, are two statements each there.
CEILING = {"postgresql": 8, "sqlite": 11}


async def test_a_case_event_takes_at_most_the_ceiling_of_round_trips(
    app: Any, bridge: Bridge, backend: str
) -> None:
    case = await open_case(bridge)
    await case.record({"type": "case.accepted"})  # keys made, pool warm: as in a running service
    await case.record(
        {
            "type": "appointment.booked",
            "appointment_id": "A1",
            "start": "2030-01-01T10:00:00Z",
            "appointment_type": "face-to-face",
            "duration_minutes": 30,
        }
    )
    engine = app.state.database.engine.sync_engine
    trips: list[str] = []

    def sent(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        trips.append(" ".join(statement.split()[:3]))

    def began(_conn: Any) -> None:
        if backend == "postgresql":  # SQLite's BEGIN IMMEDIATE is a statement, counted above
            trips.append("BEGIN")

    def committed(_conn: Any) -> None:
        trips.append("COMMIT")

    event.listen(engine, "before_cursor_execute", sent)
    event.listen(engine, "begin", began)
    event.listen(engine, "commit", committed)
    try:
        await case.record({"type": "appointment.attended", "appointment_id": "A1"})
    finally:
        event.remove(engine, "before_cursor_execute", sent)
        event.remove(engine, "begin", began)
        event.remove(engine, "commit", committed)
    assert trips[-1] == "COMMIT"
    assert len(trips) <= CEILING[backend], "\n".join(trips)
