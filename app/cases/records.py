"""The records a case keeps besides its events: appointments, social prescriptions and wellbeing
scores, each the source of a FHIR resource. Only the domain function changes them, from events.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.cases import wellbeing
from app.cases.models import Appointment, Case, Prescription, Record, WellbeingScore
from app.errors import BusinessRuleViolation, Conflict


@dataclass
class Effect:
    """What an event did to the records: resources made or changed, new Task outputs, and the
    records themselves (their new versions are kept: app.cases.history)."""

    resources: list[str] = field(default_factory=list)
    outputs: list[dict[str, str]] = field(default_factory=list)
    records: list[Appointment | Prescription | WellbeingScore] = field(default_factory=list)


def _parse_instant(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)


# A case's records of each kind, the statements made once: built per read, a query cost more of
# a request's CPU than running it.
_OF_CASE = {
    model: select(model).where(model.case_id == bindparam("case_id"))
    for model in (Appointment, Prescription, WellbeingScore)
}


class RecordStore:
    """The records of one case as one writer sees them in its transaction.

    Each kind is read from the database once, when an event first needs it (never for a case
    made in this transaction: it has none), and the records the writer adds are kept here as
    well, so a writer applying a referral's whole history (app.imports) reads nothing and
    flushes nothing between its events; one event of a request reads what it needs, once."""

    def __init__(self, session: AsyncSession, case: Case, *, new: bool = False) -> None:
        self.session = session
        self.case = case
        self._appointments: list[Appointment] | None = [] if new else None
        self._prescriptions: list[Prescription] | None = [] if new else None
        self._scores: list[WellbeingScore] | None = [] if new else None

    async def _read(self, model: type[Record]) -> list[Any]:
        return list(await self.session.scalars(_OF_CASE[model], {"case_id": self.case.id}))

    async def appointments(self) -> list[Appointment]:
        if self._appointments is None:
            self._appointments = await self._read(Appointment)
        return self._appointments

    async def prescriptions(self) -> list[Prescription]:
        if self._prescriptions is None:
            self._prescriptions = await self._read(Prescription)
        return self._prescriptions

    async def scores(self) -> list[WellbeingScore]:
        if self._scores is None:
            self._scores = await self._read(WellbeingScore)
        return self._scores

    async def appointment(self, external_id: str) -> Appointment | None:
        return next((a for a in await self.appointments() if a.external_id == external_id), None)

    async def prescription(self, external_id: str) -> Prescription | None:
        return next((p for p in await self.prescriptions() if p.external_id == external_id), None)

    def add(self, record: Appointment | Prescription | WellbeingScore) -> None:
        """A new record: in the session, and here when its kind was read (a later read of a
        kind not read yet flushes and finds it in the database)."""
        self.session.add(record)
        held: list[Any] | None = (
            self._appointments
            if isinstance(record, Appointment)
            else self._prescriptions
            if isinstance(record, Prescription)
            else self._scores
        )
        if held is not None:
            held.append(record)

    async def all(self) -> CaseRecords:
        """Every record of the case, each list in the order things happened (as records_of)."""
        return in_order(await self.appointments(), await self.prescriptions(), await self.scores())


def _unknown(what: str, name: str) -> BusinessRuleViolation:
    return BusinessRuleViolation(f"{name} names no {what} of this case", expression=name)


async def _booked(
    store: RecordStore, case: Case, data: dict[str, Any], occurred_at: dt.datetime
) -> Appointment:
    if await store.appointment(data["appointment_id"]) is not None:
        raise Conflict(
            "appointment_id is already booked on this case; move it with "
            "appointment.rescheduled or book a new one with another id",
            expression="appointment_id",
        )
    appointment = Appointment(
        id=str(uuid.uuid4()),
        case_id=case.id,
        referral_id=case.referral_id,
        external_id=data["appointment_id"],
        status="booked",
        appointment_type=data["appointment_type"],
        start=_parse_instant(data["start"]),
        minutes=data["duration_minutes"],
        reschedules=0,
        booked_at=occurred_at,
        version_id=1,
    )
    store.add(appointment)
    return appointment


async def _open_appointment(store: RecordStore, data: dict[str, Any]) -> Appointment:
    appointment = await store.appointment(data["appointment_id"])
    if appointment is None:
        raise _unknown("appointment", "appointment_id")
    if appointment.status != "booked":
        raise Conflict(
            f"The appointment is already {appointment.status}; book a new one instead",
            expression="appointment_id",
        )
    return appointment


# The effect of one (already validated and allowed) event on the case and its records; the event
# registry (app.cases.events) names each event type's effect.
Effector = Callable[
    [RecordStore, Case, dict[str, Any], dt.datetime, dt.datetime], Awaitable[Effect]
]


async def register(
    store: RecordStore,
    case: Case,
    data: dict[str, Any],
    occurred_at: dt.datetime,
    now: dt.datetime,
) -> Effect:
    """Registered with the service: who will work with the person, when the event says."""
    case.team = data.get("team", case.team)
    case.advisor = data.get("advisor", case.advisor)
    return Effect()


async def book(
    store: RecordStore,
    case: Case,
    data: dict[str, Any],
    occurred_at: dt.datetime,
    now: dt.datetime,
) -> Effect:
    appointment = await _booked(store, case, data, occurred_at)
    appointment.created_at = appointment.updated_at = now
    reference = f"Appointment/{appointment.id}"
    return Effect([reference], [{"type": "appointment", "reference": reference}], [appointment])


async def reschedule(
    store: RecordStore,
    case: Case,
    data: dict[str, Any],
    occurred_at: dt.datetime,
    now: dt.datetime,
) -> Effect:
    appointment = await _open_appointment(store, data)
    appointment.start = _parse_instant(data["start"])
    appointment.appointment_type = data["appointment_type"]
    appointment.minutes = data["duration_minutes"]
    appointment.reschedules += 1
    _touch(appointment, now)
    return Effect([f"Appointment/{appointment.id}"], records=[appointment])


def close_appointment(status: str) -> Effector:
    """The effect of an appointment's outcome: the booked appointment becomes ``status``
    (fulfilled, noshow, cancelled), with the minutes spent or who cancelled when given."""

    async def effect(
        store: RecordStore,
        case: Case,
        data: dict[str, Any],
        occurred_at: dt.datetime,
        now: dt.datetime,
    ) -> Effect:
        appointment = await _open_appointment(store, data)
        appointment.status = status
        if status == "fulfilled":
            appointment.attended_minutes = data.get("duration_minutes")
        if status == "cancelled":
            appointment.cancelled_by = data.get("cancelled_by")
        _touch(appointment, now)
        return Effect([f"Appointment/{appointment.id}"], records=[appointment])

    return effect


async def prescribe(
    store: RecordStore,
    case: Case,
    data: dict[str, Any],
    occurred_at: dt.datetime,
    now: dt.datetime,
) -> Effect:
    if await store.prescription(data["prescription_id"]) is not None:
        raise Conflict(
            "prescription_id is already a prescription of this case; change it with "
            "prescription.updated",
            expression="prescription_id",
        )
    prescription = Prescription(
        id=str(uuid.uuid4()),
        case_id=case.id,
        referral_id=case.referral_id,
        external_id=data["prescription_id"],
        category=data["category"],
        provider=data["provider"],
        activity=data["activity"],
        status=data["status"],
        prescribed_at=occurred_at,
        version_id=1,
        created_at=now,
        updated_at=now,
    )
    store.add(prescription)
    reference = f"ServiceRequest/{prescription.id}"
    return Effect(
        [reference], [{"type": "social-prescription", "reference": reference}], [prescription]
    )


async def change_prescription(
    store: RecordStore,
    case: Case,
    data: dict[str, Any],
    occurred_at: dt.datetime,
    now: dt.datetime,
) -> Effect:
    found = await store.prescription(data["prescription_id"])
    if found is None:
        raise _unknown("social prescription", "prescription_id")
    for name in ("status", "category", "provider", "activity"):
        if name in data:
            setattr(found, name, data[name])
    _touch(found, now)
    return Effect([f"ServiceRequest/{found.id}"], records=[found])


async def measure(
    store: RecordStore,
    case: Case,
    data: dict[str, Any],
    occurred_at: dt.datetime,
    now: dt.datetime,
) -> Effect:
    """A wellbeing measurement: its answers (QuestionnaireResponse) and score (Observation)."""
    raw = wellbeing.raw_score(data["items"])
    score = WellbeingScore(
        id=str(uuid.uuid4()),
        questionnaire_response_id=str(uuid.uuid4()),
        case_id=case.id,
        referral_id=case.referral_id,
        instrument=data["instrument"],
        stage=data["stage"],
        items=list(data["items"]),
        raw_score=raw,
        metric_score=wellbeing.metric_score(raw),
        measured_at=occurred_at,
        created_at=now,
    )
    store.add(score)
    answers = f"QuestionnaireResponse/{score.questionnaire_response_id}"
    observation = f"Observation/{score.id}"
    return Effect(
        [answers, observation],
        [
            {"type": "wellbeing-answers", "reference": answers},
            {"type": "wellbeing-score", "reference": observation},
        ],
        [score],
    )


def _touch(record: Appointment | Prescription, now: dt.datetime) -> None:
    record.version_id += 1
    record.updated_at = now


@dataclass(frozen=True)
class CaseRecords:
    appointments: list[Appointment]
    prescriptions: list[Prescription]
    scores: list[WellbeingScore]


def in_order(
    appointments: list[Appointment], prescriptions: list[Prescription], scores: list[WellbeingScore]
) -> CaseRecords:
    """A case's records, each list in the order things happened."""
    return CaseRecords(
        sorted(appointments, key=lambda a: (a.booked_at, a.created_at)),
        sorted(prescriptions, key=lambda p: (p.prescribed_at, p.created_at)),
        sorted(scores, key=lambda s: (s.measured_at, s.created_at)),
    )


async def records_of(session: AsyncSession, case_ids: list[str]) -> dict[str, CaseRecords]:
    """Every record of these cases, each list in the order things happened."""
    out = {case_id: CaseRecords([], [], []) for case_id in case_ids}
    for appointment in await session.scalars(
        select(Appointment).where(Appointment.case_id.in_(case_ids))
    ):
        out[appointment.case_id].appointments.append(appointment)
    for prescription in await session.scalars(
        select(Prescription).where(Prescription.case_id.in_(case_ids))
    ):
        out[prescription.case_id].prescriptions.append(prescription)
    for score in await session.scalars(
        select(WellbeingScore).where(WellbeingScore.case_id.in_(case_ids))
    ):
        out[score.case_id].scores.append(score)
    return {
        case_id: in_order(held.appointments, held.prescriptions, held.scores)
        for case_id, held in out.items()
    }
