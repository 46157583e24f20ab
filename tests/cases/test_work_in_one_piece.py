"""A case's history applied in one piece of work (an import: no reads or flushes between its
events, versions and the report queue written once) leaves exactly what the same events leave
applied one piece of work each (as requests apply them): the same case, events, records and
resource versions. The one domain path (app.cases.service.CaseWork) decides both; this checks
that how it writes does not change what it means; and on PostgreSQL, that the rows folded into
the work's last statement are the rows the unit of work writes. Both databases."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from app import db
from app.cases.models import (
    Appointment,
    Case,
    CaseEvent,
    Patient,
    Prescription,
    Referral,
    ReportPendingCase,
    ResourceVersion,
    WellbeingScore,
)
from app.db import transaction
from app.imports.service import Options, run_import
from tests.conftest import Bridge
from tests.imports.lines import event_line, referral_line, write

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def history(value: str) -> list[dict[str, Any]]:
    """A journey touching every kind of record: appointments booked, moved, attended, missed
    and cancelled; prescriptions made and changed; two wellbeing measurements; a completion
    (whose summary reads the records made in the same piece of work)."""
    return [
        event_line(value, "case.accepted", "2022-09-06T11:00:00", team="Hub", advisor="A"),
        event_line(value, "contact.attempted", "2022-09-07T09:30:00", outcome="no-answer"),
        event_line(value, "contact.attempted", "2022-09-07T15:30:00", outcome="reached"),
        event_line(
            value,
            "appointment.booked",
            "2022-09-08T10:00:00",
            appointment_id="a1",
            start="2022-09-20T10:00:00+00:00",
            appointment_type="face-to-face",
            duration_minutes=60,
        ),
        event_line(
            value,
            "appointment.rescheduled",
            "2022-09-09T10:00:00",
            appointment_id="a1",
            start="2022-09-21T10:00:00+00:00",
            appointment_type="telephone",
            duration_minutes=30,
        ),
        event_line(
            value, "appointment.attended", "2022-09-21T11:00:00", appointment_id="a1",
            duration_minutes=45,
        ),
        event_line(
            value,
            "appointment.booked",
            "2022-09-22T10:00:00",
            appointment_id="a2",
            start="2022-09-29T10:00:00+00:00",
            appointment_type="face-to-face",
            duration_minutes=60,
        ),
        event_line(value, "appointment.did_not_attend", "2022-09-29T12:00:00", appointment_id="a2"),
        event_line(
            value,
            "appointment.booked",
            "2022-09-30T10:00:00",
            appointment_id="a3",
            start="2022-10-06T10:00:00+00:00",
            appointment_type="face-to-face",
            duration_minutes=60,
        ),
        event_line(
            value, "appointment.cancelled", "2022-10-01T10:00:00", appointment_id="a3",
            cancelled_by="patient",
        ),
        event_line(
            value,
            "prescription.created",
            "2022-09-21T12:00:00",
            prescription_id="p1",
            category="benefits-money",
            provider="Citizens Advice Halton",
            activity="Benefits check",
            status="proposed",
        ),
        event_line(
            value, "prescription.updated", "2022-09-28T12:00:00", prescription_id="p1",
            status="active",
        ),
        event_line(
            value, "outcome.recorded", "2022-09-21T12:30:00", stage="start",
            items=[3, 2, 3, 3, 3, 2, 3],
        ),
        event_line(
            value, "outcome.recorded", "2022-10-20T12:30:00", stage="end",
            items=[4, 3, 3, 4, 4, 3, 3],
        ),
        event_line(value, "case.completed", "2022-10-21T09:00:00", reason="needs-met"),
    ]  # fmt: skip


def _row(item: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        column.key: getattr(item, column.key)
        for column in item.__mapper__.column_attrs
        if column.key not in skip
    }


async def _snapshot(app: Any, value: str) -> str:
    """Everything the referral's history left, as text with each id replaced by its place of
    first appearance (ids are random; where they appear is not)."""
    async with transaction(app.state.database.read_sessions) as session:
        referral = await session.scalar(select(Referral).where(Referral.identifier_value == value))
        assert referral is not None
        case = await session.scalar(select(Case).where(Case.referral_id == referral.id))
        assert case is not None
        taken: dict[str, Any] = {
            "referral": _row(referral),
            "case": _row(case),
            "patient": _row(
                await session.scalar(select(Patient).where(Patient.referral_id == referral.id))
            ),
            "events": [
                _row(event)
                for event in await session.scalars(
                    select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.seq)
                )
            ],
            "queued": await session.scalar(
                select(ReportPendingCase.case_id).where(ReportPendingCase.case_id == case.id)
            )
            is not None,
        }
        for name, model, order in (
            ("appointments", Appointment, Appointment.external_id),
            ("prescriptions", Prescription, Prescription.external_id),
            ("scores", WellbeingScore, WellbeingScore.measured_at),
        ):
            taken[name] = [
                _row(item)
                for item in await session.scalars(
                    select(model).where(model.case_id == case.id).order_by(order)  # type: ignore[attr-defined]
                )
            ]
        taken["versions"] = [
            _row(version)
            for version in await session.scalars(
                select(ResourceVersion)
                .where(ResourceVersion.referral_id == referral.id)
                .order_by(
                    ResourceVersion.resource_type,
                    ResourceVersion.last_updated,
                    ResourceVersion.version_id,
                )
            )
        ]
    text = orjson.dumps(taken, default=str, option=orjson.OPT_SORT_KEYS).decode()
    text = text.replace(value, "VALUE")
    places: dict[str, str] = {}
    return UUID.sub(lambda m: places.setdefault(m.group(0), f"id-{len(places)}"), text)


async def _import(app: Any, path: Path) -> Any:
    summary = await run_import(
        app.state.database, [path], app.state.settings, Options(name=path.name)
    )
    assert summary.refused == 0, summary.refusals
    return summary


async def test_one_piece_of_work_leaves_what_one_event_at_a_time_leaves(
    app: Any, bridge: Bridge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await bridge.service()
    received = "2022-09-05T09:00:00"
    # Whole: the referral and its history in one file, one piece of work.
    whole = await _import(
        app, write(tmp_path / "whole.ndjson", [referral_line("W-1", received), *history("W-1")])
    )
    assert whole.events == len(history("W-1"))
    # One at a time: the referral, then each event in a run (a piece of work) of its own.
    await _import(app, write(tmp_path / "referral.ndjson", [referral_line("W-2", received)]))
    # In time order, as the import applies a file's lines of one referral.
    in_order = sorted(history("W-2"), key=lambda line: line["event"]["occurred_at"])
    for index, line in enumerate(in_order):
        single = await _import(app, write(tmp_path / f"event-{index}.ndjson", [line]))
        assert single.events == 1
    # Whole again, its rows left to the unit of work (on PostgreSQL they are otherwise folded
    # into the work's last statement: app.db.execute_with_new).
    monkeypatch.setattr(db, "FOLDED_AT_MOST", 0)
    await _import(
        app, write(tmp_path / "unfolded.ndjson", [referral_line("W-3", received), *history("W-3")])
    )
    whole_text = await _snapshot(app, "W-1")
    assert '"summary":"Social prescribing support completed' in whole_text
    assert whole_text == await _snapshot(app, "W-2")
    assert whole_text == await _snapshot(app, "W-3")
