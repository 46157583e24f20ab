"""Case work end to end: an advisor records a pilot-like journey through the case-event API; the
Task moves through its states, the FHIR resources appear (readable, searchable, in the journey
Bundle), and the referrer's FHIR server receives every change. Both databases.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from app.fhir.resources import model_class
from tests.conftest import ADMIN_KEY, Bridge
from tests.support.cases import as_pushed_by_id, open_case
from tests.support.delivery import dispatcher_for
from tests.support.receiver import Receiver

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NHS_NUMBER = "9000000009"  # the example referral's patient


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01]}


def at(day: float) -> str:
    """An instant `day` days after the start of the test's clock."""
    return (START + dt.timedelta(days=day)).isoformat().replace("+00:00", "Z")


START = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=1)


def fhir(resource: dict[str, Any]) -> Any:
    """Parse with the R4B model of its type: every resource we produce must be valid FHIR."""
    return model_class(resource["resourceType"]).model_validate(resource)


def status_of(task: dict[str, Any]) -> tuple[str, str]:
    return task["status"], task["businessStatus"]["coding"][0]["code"]


# The pilot's typical case (DESIGN §1), one step a day; after each, the Task's status and
# businessStatus as DESIGN §5 maps them.
JOURNEY: list[tuple[dict[str, Any], tuple[str, str]]] = [
    ({"type": "case.accepted", "team": "Halton hub", "advisor": "A. Advisor"},
     ("accepted", "registered")),
    ({"type": "contact.attempted", "outcome": "no-answer", "method": "telephone"},
     ("in-progress", "awaiting-contact")),
    ({"type": "contact.attempted", "outcome": "reached", "method": "telephone"},
     ("in-progress", "contacted")),
    ({"type": "appointment.booked", "appointment_id": "AP-1", "start": at(5),
      "appointment_type": "face-to-face", "duration_minutes": 60},
     ("in-progress", "appointment-booked")),
    ({"type": "appointment.did_not_attend", "appointment_id": "AP-1"},
     ("in-progress", "awaiting-contact")),
    ({"type": "appointment.booked", "appointment_id": "AP-2", "start": at(9),
      "appointment_type": "telephone", "duration_minutes": 30},
     ("in-progress", "appointment-booked")),
    ({"type": "appointment.attended", "appointment_id": "AP-2", "duration_minutes": 45},
     ("in-progress", "seen")),
    ({"type": "prescription.created", "prescription_id": "RX-1", "category": "benefits-money",
      "provider": "Citizens Advice Halton", "activity": "Benefits check", "status": "active"},
     ("in-progress", "prescribed")),
    ({"type": "prescription.created", "prescription_id": "RX-2", "category": "learning",
      "provider": "The Life Rooms", "activity": "Confidence course", "status": "proposed"},
     ("in-progress", "prescribed")),
    ({"type": "prescription.created", "prescription_id": "RX-3",
      "category": "social-connection", "provider": "Halton Men's Shed",
      "activity": "Weekly group", "status": "active"},
     ("in-progress", "prescribed")),
    # Raw 19 → metric 17.98; then raw 24 → 21.54 (+3.56: a meaningful change).
    ({"type": "outcome.recorded", "stage": "start", "items": [3, 2, 3, 3, 3, 2, 3]},
     ("in-progress", "prescribed")),
    ({"type": "outcome.recorded", "stage": "end", "items": [4, 3, 3, 4, 4, 3, 3]},
     ("in-progress", "prescribed")),
    ({"type": "case.completed", "reason": "needs-met"}, ("completed", "needs-met")),
]  # fmt: skip


async def test_a_pilot_journey_moves_the_task_and_reaches_the_referrer(
    app: Any, bridge: Bridge
) -> None:
    app.state.clock = lambda: START + dt.timedelta(days=30)
    receiver = Receiver()
    await bridge.service()
    route = await bridge.http.put(
        "/api/v1/clinical-routes/RW4",
        json={"adapter": "fhir_push", "adapter_config": {"base_url": receiver.url + "/fhir"}},
        headers=ADMIN,
    )
    assert route.status_code == 200, route.text
    case = await open_case(bridge, register=False)
    assert status_of(await case.task()) == ("requested", "received")

    for day, (body, expected) in enumerate(JOURNEY, start=1):
        result = await case.record({**body, "occurred_at": at(day)})
        assert result["applied"] is True
        task = await case.task()
        assert status_of(task) == expected, body["type"]
        fhir(task)

    task = await case.task()
    assert task["statusReason"]["coding"][0]["code"] == "needs-met"
    (note,) = task["note"]
    assert note["time"] == at(len(JOURNEY))
    assert note["text"] == (
        "Social prescribing support completed: needs met. 3 social prescriptions: Benefits check "
        "with Citizens Advice Halton (Benefits/Money, active); Confidence course with The Life "
        "Rooms (Learning, proposed); Weekly group with Halton Men's Shed (Social Connection, "
        "active). Appointments: 1 attended, 1 not attended. Wellbeing (SWEMWBS metric score): "
        "17.98 at first, 21.54 at last (+3.56 metric points, a meaningful improvement)."
    )
    outputs = [(o["type"]["coding"][0]["code"], o["valueReference"]["reference"]) for o in
               task["output"]]  # fmt: skip
    assert [kind for kind, _ in outputs] == [
        "appointment",
        "appointment",
        "social-prescription",
        "social-prescription",
        "social-prescription",
        "wellbeing-answers",
        "wellbeing-score",
        "wellbeing-answers",
        "wellbeing-score",
    ]

    # Every output can be read, is valid R4B, and is what the journey Bundle holds.
    read: dict[str, dict[str, Any]] = {}
    for _, reference in outputs:
        response = await bridge.http.get(f"/fhir/{reference}", headers=case.referrer)
        assert response.status_code == 200, response.text
        assert response.headers["etag"] == f'W/"{response.json()["meta"]["versionId"]}"'
        fhir(response.json())
        read[reference] = response.json()

    first, second = (read[ref] for kind, ref in outputs if kind == "appointment")
    assert (first["status"], first["identifier"][0]["value"]) == ("noshow", "AP-1")
    assert first["start"] == at(5) and first["minutesDuration"] == 60
    assert first["appointmentType"]["coding"][0]["code"] == "face-to-face"
    assert first["meta"]["versionId"] == "2"  # booked, then did not attend
    assert (second["status"], second["minutesDuration"]) == ("fulfilled", 45)
    # Our ServiceRequest, and the requester's identifier by which their own server finds theirs.
    (based_on,) = second["basedOn"]
    assert (based_on["reference"], based_on["type"]) == (
        f"ServiceRequest/{case.referral_id}",
        "ServiceRequest",
    )
    assert based_on["identifier"]["system"] == "https://rio.example.nhs.uk/Id/referral"
    prescriptions = [read[ref] for kind, ref in outputs if kind == "social-prescription"]
    assert [(p["status"], p["intent"], p["performer"][0]["display"]) for p in prescriptions] == [
        ("active", "order", "Citizens Advice Halton"),
        ("draft", "plan", "The Life Rooms"),
        ("active", "order", "Halton Men's Shed"),
    ]
    assert prescriptions[0]["category"][0]["coding"][0]["code"] == "benefits-money"
    scores = [read[ref] for kind, ref in outputs if kind == "wellbeing-score"]
    assert [s["valueInteger"] for s in scores] == [19, 24]
    assert [s["component"][0]["valueQuantity"]["value"] for s in scores] == [17.98, 21.54]
    assert [s["component"][1]["valueCodeableConcept"]["coding"][0]["code"] for s in scores] == [
        "start",
        "end",
    ]
    assert scores[0]["code"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "718466001",
        "display": "Short Warwick-Edinburgh Mental Well-being Scale score",
    }
    answers = [read[ref] for kind, ref in outputs if kind == "wellbeing-answers"]
    assert [a["answer"][0]["valueInteger"] for a in answers[0]["item"]] == [3, 2, 3, 3, 3, 2, 3]
    assert scores[0]["derivedFrom"][0]["reference"] == f"QuestionnaireResponse/{answers[0]['id']}"

    journey = await case.journey()
    fhir(journey)
    assert journey["type"] == "collection"
    entries = [e["resource"] for e in journey["entry"]]
    assert [r["resourceType"] for r in entries[:2]] == ["ServiceRequest", "Task"]
    assert entries[0]["id"] == case.referral_id and entries[1] == task
    assert {f"{r['resourceType']}/{r['id']}": r for r in entries[2:]} == read

    # The referrer's FHIR server got every change: each resource before the Task that lists it.
    await receiver.start()
    try:
        dispatcher = dispatcher_for(app, clock=app.state.clock)
        await dispatcher.drain()
    finally:
        await receiver.stop()
    # The receiver has no CapabilityStatement (it answers anything with 200 and no resource):
    # read once, at the first send, and the adapter writes by PUT as it always did.
    assert [r.path for r in receiver.requests].count("/fhir/metadata") == 1
    writes = [r for r in receiver.requests if r.path != "/fhir/metadata"]
    puts = [(r.path.removeprefix("/fhir/"), r.json()) for r in writes]
    assert all(r.method == "PUT" for r in writes)
    for _, body in puts:
        fhir(body)
    task_puts = [body for path, body in puts if path.startswith("Task/")]
    assert len(task_puts) == len(JOURNEY) + 1  # referral.received, then one per event
    # The Task as served, but what the referrer's server cannot resolve by identifier alone.
    assert task_puts[-1] == as_pushed_by_id(task)
    sent = {path for path, _ in puts}
    assert sent == {f"Task/{case.case_id}", *read}
    for position, (path, body) in enumerate(puts):
        if path.startswith("Task/"):
            earlier = {p for p, _ in puts[:position]}
            listed = {o["valueReference"]["reference"] for o in body.get("output", [])}
            assert listed <= earlier, "a Task output was sent before its resource"


async def test_discharge_summary_and_task_mapping(app: Any, bridge: Bridge) -> None:
    case = await open_case(bridge)
    await case.record({"type": "case.accepted"})
    await case.record({"type": "contact.attempted", "outcome": "message-left"})
    await case.record(
        {"type": "appointment.booked", "appointment_id": "A", "start": "2030-01-02T10:00:00Z",
         "appointment_type": "group", "duration_minutes": 90}
    )  # fmt: skip
    await case.record({"type": "appointment.did_not_attend", "appointment_id": "A"})
    await case.record({"type": "case.discharged", "reason": "did-not-attend"})
    task = await case.task()
    assert (task["status"], task["businessStatus"]["coding"][0]["code"]) == (
        "failed",
        "did-not-attend",
    )
    assert task["note"][0]["text"] == (
        "Discharged from social prescribing: did not attend. No social prescriptions were made. "
        "Appointments: 0 attended, 1 not attended. Wellbeing was not measured."
    )
    detail = (await case.detail()).json()
    assert detail["state"] == "discharged"
    assert detail["summary"] == task["note"][0]["text"]
    assert detail["allowed_events"] == []


async def test_a_rejected_referral_shows_its_reason(app: Any, bridge: Bridge) -> None:
    case = await open_case(bridge)
    await case.record({"type": "case.rejected", "reason": "out-of-area"})
    task = await case.task()
    fhir(task)
    assert task["status"] == "rejected"
    assert task["statusReason"]["coding"][0] == {
        "system": "https://fhir.spbridge.org/CodeSystem/rejection-reason",
        "code": "out-of-area",
        "display": "Out of area",
    }
    assert "note" not in task


# --- the case -------------------------------------------------------------------------------


async def test_case_read_lists_events_in_time_order_and_resources(app: Any, bridge: Bridge) -> None:
    app.state.clock = lambda: START + dt.timedelta(days=30)
    case = await open_case(bridge)
    await case.record({"type": "case.accepted", "occurred_at": at(1)})
    await case.record(
        {"type": "appointment.booked", "appointment_id": "A", "start": at(20),
         "appointment_type": "telephone", "duration_minutes": 30, "occurred_at": at(10)}
    )  # fmt: skip
    # Recorded later, happened earlier: an advisor catching up on their notes.
    await case.record({"type": "contact.attempted", "outcome": "reached", "occurred_at": at(3)})
    await case.record(
        {"type": "prescription.created", "prescription_id": "P", "category": "food",
         "provider": "Halton Foodbank", "activity": "Food parcels", "occurred_at": at(5)}
    )  # fmt: skip
    response = await case.detail()
    assert response.status_code == 200, response.text
    detail = response.json()
    assert [(e["type"], e["sequence"]) for e in detail["events"]] == [
        ("referral.received", 1),
        ("case.accepted", 2),
        ("contact.attempted", 4),
        ("prescription.created", 5),
        ("appointment.booked", 3),
    ]
    assert detail["first_contact_at"] == at(3)
    assert detail["team"] is None
    assert detail["referral_id"] == case.referral_id
    assert detail["resources"]["task"] == f"Task/{case.case_id}"
    assert len(detail["resources"]["appointments"]) == 1
    assert len(detail["resources"]["prescriptions"]) == 1
    assert "appointment.booked" in detail["allowed_events"]
    assert "case.accepted" not in detail["allowed_events"]

    # The journey orders resources by when things happened, not when they were recorded.
    journey = await case.journey()
    assert [e["resource"]["resourceType"] for e in journey["entry"]] == [
        "ServiceRequest",
        "Task",
        "ServiceRequest",
        "Appointment",
    ]
    assert journey["entry"][2]["resource"]["authoredOn"] == at(5)

    # The referrer follows the case too; other organisations cannot see it at all.
    assert (await case.detail(case.referrer)).status_code == 200
    stranger = await bridge.key("advisor", "ZZ999")
    assert (await case.detail(stranger)).status_code == 404
    missing = await bridge.http.get("/api/v1/cases/no-such-case", headers=case.advisor)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_demographics_are_shown_only_to_the_service(app: Any, bridge: Bridge) -> None:
    case = await open_case(bridge)
    await case.record({"type": "case.accepted"})
    await case.record(
        {"type": "demographics.recorded", "ethnicity": "White British", "carer": "no"}
    )
    for headers, expected in (
        (case.advisor, {"ethnicity": "White British", "carer": "no"}),
        (case.referrer, {}),
    ):
        events = (await case.detail(headers)).json()["events"]
        assert events[-1]["type"] == "demographics.recorded"
        assert events[-1]["data"] == expected


# --- refusals -------------------------------------------------------------------------------

# A valid body for every event type the advisor API takes (validation passes; the state
# machine decides).
BODIES: dict[str, dict[str, Any]] = {
    "case.accepted": {},
    "case.rejected": {"reason": "no-capacity"},
    "contact.attempted": {"outcome": "reached"},
    "appointment.booked": {"appointment_id": "B", "start": "2030-01-01T09:00:00Z",
                           "appointment_type": "telephone", "duration_minutes": 20},
    "appointment.rescheduled": {"appointment_id": "A", "start": "2030-01-03T09:00:00Z",
                                "appointment_type": "telephone", "duration_minutes": 20},
    "appointment.attended": {"appointment_id": "A"},
    "appointment.did_not_attend": {"appointment_id": "A"},
    "appointment.cancelled": {"appointment_id": "A", "cancelled_by": "patient"},
    "prescription.created": {"prescription_id": "Q", "category": "housing",
                             "provider": "Halton Housing", "activity": "Tenancy support"},
    "prescription.updated": {"prescription_id": "P", "status": "completed"},
    "outcome.recorded": {"stage": "review", "items": [3, 3, 3, 3, 3, 3, 3]},
    "demographics.recorded": {"age_band": "25-34"},
    "case.on_hold": {"reason": "unwell"},
    "case.resumed": {},
    "case.completed": {"reason": "referred-on"},
    "case.discharged": {"reason": "no-longer-required"},
    "consent.withdrawn": {"reason": "objection"},
}  # fmt: skip

# Which of those each state allows (DESIGN §5); every other one must be refused with 409.
ALLOWED: dict[str, set[str]] = {
    "received": {"case.accepted", "case.rejected", "case.discharged", "consent.withdrawn"},
    "accepted": {
        "case.rejected", "contact.attempted", "appointment.booked", "appointment.rescheduled",
        "appointment.attended", "appointment.did_not_attend", "appointment.cancelled",
        "prescription.created", "prescription.updated", "outcome.recorded",
        "demographics.recorded", "case.on_hold", "case.completed", "case.discharged",
        "consent.withdrawn",
    },
    "in_progress": {
        "contact.attempted", "appointment.booked", "appointment.rescheduled",
        "appointment.attended", "appointment.did_not_attend", "appointment.cancelled",
        "prescription.created", "prescription.updated", "outcome.recorded",
        "demographics.recorded", "case.on_hold", "case.completed", "case.discharged",
        "consent.withdrawn",
    },
    "on_hold": {
        "prescription.updated", "outcome.recorded", "demographics.recorded", "case.resumed",
        "case.completed", "case.discharged", "consent.withdrawn",
    },
    "completed": set(),
    "discharged": set(),
    "rejected": set(),
    "cancelled": set(),
}  # fmt: skip

# How to bring a case with a booked appointment "A" and a prescription "P" into each state.
SETUP = [
    {"type": "case.accepted"},
    {"type": "appointment.booked", "appointment_id": "A", "start": "2030-01-02T09:00:00Z",
     "appointment_type": "face-to-face", "duration_minutes": 30},
    {"type": "prescription.created", "prescription_id": "P", "category": "learning",
     "provider": "Life Rooms", "activity": "Course"},
]  # fmt: skip
TO_STATE: dict[str, list[dict[str, Any]]] = {
    "received": [],
    "accepted": [],  # SETUP leaves an accepted case in progress, so accepted is set up alone
    "in_progress": SETUP,
    "on_hold": [*SETUP, {"type": "case.on_hold"}],
    "completed": [*SETUP, {"type": "case.completed"}],
    "discharged": [*SETUP, {"type": "case.discharged", "reason": "declined"}],
    "rejected": [{"type": "case.rejected", "reason": "not-eligible"}],
    "cancelled": [],
}


@pytest.mark.parametrize("state", list(ALLOWED))
async def test_every_refused_transition_is_a_409_naming_the_state(
    app: Any, bridge: Bridge, state: str
) -> None:
    case = await open_case(bridge)
    for body in TO_STATE[state]:
        await case.record(body)
    if state == "accepted":
        await case.record({"type": "case.accepted"})
    if state == "cancelled":
        await bridge.cancel(case.referral_id)
    before = (await case.detail()).json()
    assert before["state"] == state
    assert set(before["allowed_events"]) & set(BODIES) == ALLOWED[state]
    for event_type, body in BODIES.items():
        if event_type in ALLOWED[state]:
            continue
        response = await case.post({"type": event_type, **body})
        assert response.status_code == 409, (event_type, response.text)
        problem = response.json()
        assert problem["current_state"] == state
        assert set(problem["allowed_events"]) & set(BODIES) == ALLOWED[state]
        assert f"'{state}'" in problem["detail"]
    after = (await case.detail()).json()
    assert after["version"] == before["version"]
    assert len(after["events"]) == len(before["events"])


async def test_a_closed_case_refuses_a_second_close(app: Any, bridge: Bridge) -> None:
    case = await open_case(bridge)
    await case.record({"type": "case.accepted"})
    await case.record({"type": "case.completed"})
    response = await case.post({"type": "case.discharged", "reason": "declined"})
    assert response.status_code == 409
    assert response.json()["allowed_events"] == []
    assert (await case.task())["status"] == "completed"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # An unknown member is located at its parent: its name is the client's (T7).
        ({"type": "contact.attempted", "outcome": "reached", "colour": "blue"}, "body"),
        ({"type": "contact.attempted", "outcome": "shouted"}, "outcome"),
        ({"type": "contact.attempted"}, "outcome"),
        ({"type": "case.discharged", "reason": "bored"}, "reason"),
        ({"type": "outcome.recorded", "stage": "start", "items": [3, 3, 3]}, "items"),
        ({"type": "outcome.recorded", "stage": "start", "items": [3, 3, 3, 3, 3, 3, 6]}, "items.6"),
        ({"type": "outcome.recorded", "stage": "start", "items": [3, 3, 3, 3, 3, 3, "3"]},
         "items.6"),
        ({"type": "appointment.booked", "appointment_id": "A", "start": "2030-01-01T09:00:00",
          "appointment_type": "telephone", "duration_minutes": 30}, "start"),
        ({"type": "appointment.booked", "appointment_id": "A", "start": "2030-01-01T09:00:00Z",
          "appointment_type": "video call", "duration_minutes": 30}, "appointment_type"),
        ({"type": "appointment.booked", "appointment_id": "A", "start": "2030-01-01T09:00:00Z",
          "appointment_type": "telephone", "duration_minutes": 0}, "duration_minutes"),
        ({"type": "appointment.booked", "appointment_id": "a b", "start": "2030-01-01T09:00:00Z",
          "appointment_type": "telephone", "duration_minutes": 30}, "appointment_id"),
        ({"type": "prescription.created", "prescription_id": "P", "category": "housing",
          "provider": "Halton\u0000Housing", "activity": "Advice"}, "provider"),
        ({"type": "prescription.updated", "prescription_id": "P"}, "body"),
        ({"type": "demographics.recorded"}, "body"),
        ({"type": "contact.attempted", "outcome": "reached", "occurred_at": "yesterday"},
         "occurred_at"),
        ({"type": "contact.attempted", "outcome": "reached", "idempotency_key": ""},
         "idempotency_key"),
        ({"type": "case.exploded"}, "body"),
        ({"outcome": "reached"}, "body"),
    ],
)  # fmt: skip
async def test_invalid_bodies_are_422_naming_the_field_and_change_nothing(
    app: Any, bridge: Bridge, body: dict[str, Any], field: str
) -> None:
    case = await open_case(bridge)
    await case.record({"type": "case.accepted"})
    before = (await case.detail()).json()
    response = await case.post(body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["status"] == 422
    pointers = [error["pointer"] for error in problem.get("errors", [])]
    assert field in pointers or problem["detail"].startswith(field), problem
    # The value sent is never echoed (it may be patient data).
    assert "Halton\u0000Housing" not in response.text and "shouted" not in response.text
    after = (await case.detail()).json()
    assert after["version"] == before["version"]


async def test_occurred_at_may_be_late_but_not_in_the_future(app: Any, bridge: Bridge) -> None:
    app.state.clock = lambda: START + dt.timedelta(days=10)
    case = await open_case(bridge)
    await case.record({"type": "case.accepted", "occurred_at": at(1)})
    # Four minutes ahead: clocks drift, so it is taken.
    await case.record(
        {"type": "contact.attempted", "outcome": "no-answer",
         "occurred_at": at(10 + 4 / (24 * 60))}
    )  # fmt: skip
    for when, message in (
        (at(10 + 6 / (24 * 60)), "occurred_at is more than 5 minutes in the future"),
        (at(-1), "occurred_at is before the referral was received"),
    ):
        response = await case.post(
            {"type": "contact.attempted", "outcome": "reached", "occurred_at": when}
        )
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == message
        assert response.json()["errors"][0]["pointer"] == "occurred_at"


async def test_appointments_and_prescriptions_must_exist_and_be_open(
    app: Any, bridge: Bridge
) -> None:
    case = await open_case(bridge)
    await case.record({"type": "case.accepted"})
    unknown = await case.post({"type": "appointment.attended", "appointment_id": "NOPE"})
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["pointer"] == "appointment_id"
    unknown = await case.post(
        {"type": "prescription.updated", "prescription_id": "NOPE", "status": "active"}
    )
    assert unknown.status_code == 422
    await case.record(BODIES["appointment.booked"] | {"type": "appointment.booked"})
    again = await case.post(BODIES["appointment.booked"] | {"type": "appointment.booked"})
    assert again.status_code == 409
    await case.record({"type": "appointment.attended", "appointment_id": "B"})
    for event_type in ("appointment.did_not_attend", "appointment.rescheduled"):
        body = BODIES[event_type] | {"type": event_type, "appointment_id": "B"}
        late = await case.post(body)
        assert late.status_code == 409, late.text
        assert late.json()["detail"] == (
            "The appointment is already fulfilled; book a new one instead"
        )
    # A reschedule moves the same appointment: a new version of the same resource.
    await case.record(BODIES["appointment.booked"] | {"type": "appointment.booked",
                                                      "appointment_id": "C"})  # fmt: skip
    await case.record(
        {"type": "appointment.rescheduled", "appointment_id": "C",
         "start": "2030-02-01T15:30:00Z", "appointment_type": "face-to-face",
         "duration_minutes": 45}
    )  # fmt: skip
    detail = (await case.detail()).json()
    moved = await bridge.http.get(f"/fhir/{detail['resources']['appointments'][1]}",
                                  headers=case.referrer)  # fmt: skip
    assert moved.json()["start"] == "2030-02-01T15:30:00Z"
    assert moved.json()["end"] == "2030-02-01T16:15:00Z"
    assert moved.json()["meta"]["versionId"] == "2"
    assert moved.headers["etag"] == 'W/"2"'


async def test_who_may_record(app: Any, bridge: Bridge) -> None:
    case = await open_case(bridge)
    body = {"type": "case.accepted"}
    assert (await case.post(body, case.referrer)).status_code == 403
    reporting = await bridge.key("reporting", "LR001")
    assert (await case.post(body, reporting)).status_code == 403
    assert (await case.post(body, {})).status_code == 401
    stranger = await bridge.key("advisor", "ZZ999")
    assert (await case.post(body, stranger)).status_code == 404
    # An advisor of the referring organisation sees the case but does not run the service.
    referrers_advisor = await bridge.key("advisor", "RW4")
    assert (await case.post(body, referrers_advisor)).status_code == 403
    platform = await bridge.key("platform", "LR001")
    recorded = await case.post(body, platform)
    assert recorded.status_code == 201
    assert recorded.json()["event"]["source"] == "platform"
    # The referrer's own events come through FHIR, not this API.
    cancel = await case.post({"type": "referral.cancelled"})
    assert cancel.status_code == 422
    assert cancel.json()["errors"][0]["pointer"] == "type"
    assert (await case.post({"type": "referral.received"})).status_code == 422


async def test_cases_held_on_a_platform_are_changed_there(app: Any, bridge: Bridge) -> None:
    response = await bridge.http.post(
        "/api/v1/services",
        json={
            "id": "on-elemental",
            "name": "On Elemental",
            "organisation": "LR001",
            "adapter": "elemental",
            "adapter_config": {
                "base_url": "http://127.0.0.1:9/api",
                "api_key": "k" * 32,
                "webhook_secret": "whsec_" + "A" * 44,
            },
        },
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text
    case = await open_case(bridge, service="on-elemental", register=False)
    refused = await case.post({"type": "case.accepted"})
    assert refused.status_code == 409
    assert "held on its platform" in refused.json()["detail"]


# --- idempotency ----------------------------------------------------------------------------


async def test_an_idempotency_key_applies_an_event_once(app: Any, bridge: Bridge) -> None:
    case = await open_case(bridge)
    await case.record({"type": "case.accepted"})
    body = {
        "type": "prescription.created",
        "prescription_id": "P1",
        "category": "housing",
        "provider": "Halton Housing",
        "activity": "Tenancy support",
        "idempotency_key": "rx-P1",
    }
    first = await case.post(body)
    assert first.status_code == 201
    repeat = await case.post(body)
    assert repeat.status_code == 200, repeat.text
    assert repeat.json()["applied"] is False
    assert repeat.json()["event"] == first.json()["event"]
    different = await case.post({**body, "activity": "Something else"})
    assert different.status_code == 409
    assert different.json()["errors"][0]["pointer"] == "idempotency_key"
    detail = (await case.detail()).json()
    assert [e["type"] for e in detail["events"]].count("prescription.created") == 1
    assert len(detail["resources"]["prescriptions"]) == 1
    # Even once the case has moved on, the repeat answers with what was recorded.
    await case.record({"type": "case.completed"})
    late_repeat = await case.post(body)
    assert late_repeat.status_code == 200
    assert late_repeat.json()["state"] == "completed"


# --- FHIR search ----------------------------------------------------------------------------


async def test_search_by_based_on_and_patient(app: Any, bridge: Bridge) -> None:
    case = await open_case(bridge)
    other = await open_case(bridge, register=False)
    for each in (case, other):
        await each.record({"type": "case.accepted"})
        await each.record(BODIES["appointment.booked"] | {"type": "appointment.booked"})
        await each.record(BODIES["prescription.created"] | {"type": "prescription.created"})
        await each.record(BODIES["outcome.recorded"] | {"type": "outcome.recorded"})
    get = bridge.http.get
    for resource_type in ("Appointment", "Observation", "QuestionnaireResponse", "ServiceRequest"):
        mine = await get(
            f"/fhir/{resource_type}",
            params={"based-on": f"ServiceRequest/{case.referral_id}"},
            headers=case.referrer,
        )
        assert mine.status_code == 200, mine.text
        bundle = mine.json()
        fhir(bundle)
        assert bundle["total"] == 1
        (entry,) = bundle["entry"]
        assert entry["resource"]["resourceType"] == resource_type
        assert entry["resource"]["basedOn"][0]["reference"] == f"ServiceRequest/{case.referral_id}"
        stranger = await bridge.key("clinical-system", "ZZ999")
        item = await get(f"/fhir/{resource_type}/{entry['resource']['id']}", headers=stranger)
        assert item.status_code == 404
        assert item.json()["resourceType"] == "OperationOutcome"
        hidden = await get(
            f"/fhir/{resource_type}",
            params={"based-on": f"ServiceRequest/{case.referral_id}"},
            headers=stranger,
        )
        assert hidden.json()["total"] == 0
        if resource_type == "ServiceRequest":
            # Without based-on, ServiceRequest searches find referrals (test_referrals_api).
            continue
        # Both referrals are the same patient's (the example's NHS number).
        for name in ("patient", "patient:identifier", "patient.identifier"):
            both = await get(
                f"/fhir/{resource_type}",
                params={name: f"https://fhir.nhs.uk/Id/nhs-number|{NHS_NUMBER}"},
                headers=case.referrer,
            )
            assert both.status_code == 200, both.text
            assert both.json()["total"] == 2
        paged = await get(
            f"/fhir/{resource_type}", params={"patient": NHS_NUMBER, "_count": "1"},
            headers=case.referrer,
        )  # fmt: skip
        next_link = [link for link in paged.json()["link"] if link["relation"] == "next"]
        assert len(paged.json()["entry"]) == 1 and len(next_link) == 1
        rest = await get(next_link[0]["url"].removeprefix("http://testserver"),
                         headers=case.referrer)  # fmt: skip
        assert rest.status_code == 200, rest.text
        ids = {
            paged.json()["entry"][0]["resource"]["id"],
            rest.json()["entry"][0]["resource"]["id"],
        }
        assert len(ids) == 2
        hidden = await get(
            f"/fhir/{resource_type}", params={"patient": NHS_NUMBER}, headers=stranger
        )
        assert hidden.json()["total"] == 0
    # Appointment has no subject parameter: ignored and said (lenient), refused when strict.
    lenient = await get("/fhir/Appointment", params={"subject": "x"}, headers=case.referrer)
    assert lenient.status_code == 200
    assert lenient.json()["entry"][-1]["search"]["mode"] == "outcome"
    bad = await get(
        "/fhir/Appointment",
        params={"subject": "x"},
        headers={**case.referrer, "Prefer": "handling=strict"},
    )
    assert bad.status_code == 400
    bad = await get(
        "/fhir/Appointment", params={"patient": "http://other|1"}, headers=case.referrer
    )
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["expression"] == ["patient"]
