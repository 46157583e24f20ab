"""PII hygiene in logs and error bodies (DESIGN §8, app/logs.py), on both databases.

A whole journey runs through the real app, with the JSON log handler on the root logger at DEBUG
(the most that could be logged): a referral of a patient with distinctive identifying details,
repeats and searches, case work, the worklist, the journey link and page, the outbox delivered,
requests refused in every way with the patient's details in them, and an unexpected error whose
message quotes them. Then no log line, and no error body, may hold any of those details in any
usual spelling; and every request has its access line with the expected fields.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from app.logs import JsonFormatter, configure_logging
from app.requestids import correlation_id_var, request_id_var
from tests.conftest import ADMIN_KEY, FHIR_JSON, Bridge, referral_resource
from tests.support.delivery import dispatcher_for
from tests.support.logs import captured_logs
from tests.support.receiver import Receiver

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

NHS_NUMBER = "7382914658"
FAMILY = "Quillfeather"
GIVEN = "Ottoline"
MIDDLE = "Marisol"
BIRTH_DATE = "1957-03-14"
PHONE = "07700 900461"
EMAIL = "ottoline.q@example.com"
ADDRESS_LINE = "17 Larkspur Row"
CITY = "Penketh"
POSTCODE = "WA7 4QZ"
NOTE = "Zephyrine worries about the rent since the flood"
REASON_TEXT = "Lonely since Bartholomew moved away"

# Every spelling of the patient's details that must never be logged or echoed.
IDENTIFYING = [
    NHS_NUMBER,
    "738 291 4658",
    "738-291-4658",
    FAMILY,
    GIVEN,
    MIDDLE,
    f"{GIVEN} {FAMILY}",
    BIRTH_DATE,
    "14/03/1957",
    "14-03-1957",
    "19570314",
    PHONE,
    PHONE.replace(" ", ""),
    "7700900461",
    "+447700900461",
    EMAIL,
    ADDRESS_LINE,
    "Larkspur",
    CITY,
    POSTCODE,
    POSTCODE.replace(" ", ""),
    "Zephyrine",
    NOTE,
    "Bartholomew",
    REASON_TEXT,
]
ACCESS_FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "request_id",
    "correlation_id",
    "method",
    "route",
    "status",
    "latency_ms",
    "client",
    "role",
}


def patient_referral(service_id: str = "life-rooms", **overrides: Any) -> dict[str, Any]:
    resource = referral_resource(service_id)
    patient = resource["contained"][0]
    patient["identifier"][0]["value"] = NHS_NUMBER
    patient["name"] = [{"use": "official", "family": FAMILY, "given": [GIVEN, MIDDLE]}]
    patient["birthDate"] = BIRTH_DATE
    patient["gender"] = "female"
    patient["telecom"] = [
        {"system": "phone", "value": PHONE, "use": "mobile"},
        {"system": "email", "value": EMAIL},
    ]
    patient["address"] = [
        {"use": "home", "line": [ADDRESS_LINE], "city": CITY, "postalCode": POSTCODE}
    ]
    resource["subject"]["identifier"]["value"] = NHS_NUMBER
    resource["note"] = [{"text": NOTE}]
    resource["reasonCode"].append({"text": REASON_TEXT})
    resource.update(overrides)
    return resource


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"], "retry_schedule": [0.01]}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged, down to DEBUG, as the JSON lines `spbridge serve` writes."""
    with captured_logs("DEBUG") as stream:
        yield stream


def leaks(text: str) -> list[str]:
    folded = text.casefold()
    return [value for value in IDENTIFYING if value.casefold() in folded]


class DataError(Exception):
    """Stands in for a driver's error, whose message quotes the value it refused."""


async def test_a_whole_journey_logs_nothing_that_identifies_the_patient(
    captured: io.StringIO, app: Any, bridge: Bridge
) -> None:
    responses: list[httpx.Response] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        responses.append(response)

    bridge.http.event_hooks["response"].append(keep)

    async def unexpected() -> None:
        try:
            raise KeyError(f"{GIVEN} {FAMILY}")
        except KeyError as exc:
            raise DataError(f"invalid input for query argument $1: '{NHS_NUMBER}'") from exc

    app.add_api_route("/api/v1/test-only/unexpected", unexpected, methods=["GET"])

    # Set-up: a service, its clients, where updates go.
    receiver = Receiver()
    await receiver.start()
    try:
        await bridge.service()
        made = await bridge.http.post(
            "/api/v1/clients",
            json={"name": "RiO", "role": "clinical-system", "organisation": "RW4"},
            headers=ADMIN,
        )
        referrer = {"Authorization": f"Bearer {made.json()['api_key']}"}
        referrer_id = made.json()["id"]
        advisor = await bridge.key("advisor", "LR001")
        stranger = await bridge.key("clinical-system", "RX9")
        other_advisor = await bridge.key("advisor", "LR999")
        route = await bridge.http.put(
            "/api/v1/clinical-routes/RW4",
            json={"adapter": "fhir_push", "adapter_config": {"base_url": receiver.url + "/fhir"}},
            headers=ADMIN,
        )
        assert route.status_code == 200, route.text
        hook = await bridge.http.post(
            "/api/v1/subscriptions", json={"url": receiver.url + "/hooks"}, headers=ADMIN
        )
        assert hook.status_code == 201, hook.text

        # The referral, its repeat, reads and searches (the NHS number in a query string).
        resource = patient_referral()
        created = await bridge.refer(referrer, resource)
        assert created.status_code == 201, created.text
        referral_id = created.json()["id"]
        assert (await bridge.refer(referrer, resource)).status_code == 200
        search = await bridge.http.get(
            "/fhir/ServiceRequest",
            params={"patient.identifier": f"https://fhir.nhs.uk/Id/nhs-number|{NHS_NUMBER}"},
            headers=referrer,
        )
        assert search.status_code == 200
        assert search.json()["total"] == 1
        assert (
            await bridge.http.get(f"/fhir/ServiceRequest/{referral_id}", headers=referrer)
        ).status_code == 200
        tasks = await bridge.http.get(
            "/fhir/Task", params={"focus": f"ServiceRequest/{referral_id}"}, headers=referrer
        )
        case_id = tasks.json()["entry"][0]["resource"]["id"]

        # Case work, the worklist, the case, the journey link and page.
        events = f"/api/v1/cases/{case_id}/events"
        for body in [
            {"type": "case.accepted", "team": "Halton hub", "advisor": "A. Advisor"},
            {"type": "contact.attempted", "outcome": "reached", "method": "telephone"},
            {
                "type": "appointment.booked",
                "appointment_id": "AP-1",
                "start": "2040-01-10T10:00:00Z",
                "appointment_type": "face-to-face",
                "duration_minutes": 60,
            },
            {
                "type": "prescription.created",
                "prescription_id": "RX-1",
                "category": "benefits-money",
                "provider": "Citizens Advice Halton",
                "activity": "Benefits check",
            },
            {"type": "outcome.recorded", "stage": "start", "items": [3, 2, 3, 3, 3, 2, 3]},
            {"type": "demographics.recorded", "age_band": "65-74", "carer": "no"},
        ]:
            recorded = await bridge.http.post(events, json=body, headers=advisor)
            assert recorded.status_code == 201, recorded.text
        worklist = await bridge.http.get("/api/v1/worklist", headers=advisor)
        assert worklist.status_code == 200
        assert [item["case_id"] for item in worklist.json()["items"]] == [case_id]
        assert (await bridge.http.get(f"/api/v1/cases/{case_id}", headers=advisor)).status_code == (
            200
        )
        link = await bridge.http.get(
            f"/api/v1/referrals/{referral_id}/journey-link", headers=referrer
        )
        assert link.status_code == 200, link.text
        url = link.json()["url"]
        token = url.split("token=", 1)[1]
        page = await bridge.http.get(url)
        assert page.status_code == 200
        assert FAMILY in page.text or GIVEN in page.text or "journey" in page.text.lower()
        journey = await bridge.http.get(
            f"/fhir/ServiceRequest/{referral_id}/$journey", headers=referrer
        )
        assert journey.status_code == 200

        # Refusals, each carrying the patient's details somewhere in the request.
        bad_number = copy.deepcopy(resource)
        bad_number["identifier"][0]["value"] = "another-referral"
        bad_number["subject"]["identifier"]["value"] = "738 291 4659"
        bad_number["contained"][0]["identifier"][0]["value"] = "738 291 4659"
        bad_date = copy.deepcopy(resource)
        bad_date["identifier"][0]["value"] = "yet-another-referral"
        bad_date["contained"][0]["birthDate"] = "1957-02-30"
        draft = patient_referral(status="draft")
        unknown_element = patient_referral(patientName=f"{GIVEN} {FAMILY}")
        refusals: list[tuple[str, str, Any, dict[str, str], int]] = [
            ("POST", "/fhir/ServiceRequest", bad_number, {**referrer, **FHIR_JSON}, 422),
            ("POST", "/fhir/ServiceRequest", bad_date, {**referrer, **FHIR_JSON}, 400),
            ("POST", "/fhir/ServiceRequest", draft, {**referrer, **FHIR_JSON}, 422),
            ("POST", "/fhir/ServiceRequest", unknown_element, {**referrer, **FHIR_JSON}, 400),
            ("POST", events, {"type": "contact.attempted", "outcome": FAMILY}, advisor, 422),
            ("POST", events, {"type": "case.on_hold", "note": NOTE}, advisor, 422),
            ("POST", events, {"type": f"{GIVEN}.{FAMILY}", "x": NHS_NUMBER}, advisor, 422),
            (
                "POST",
                events,
                {"type": "demographics.recorded", "first_language": NOTE * 20},
                advisor,
                422,
            ),
            ("POST", events, {"type": "case.accepted", "team": FAMILY}, advisor, 409),
            (
                "POST",
                events,
                {"type": "appointment.attended", "appointment_id": NHS_NUMBER},
                advisor,
                422,
            ),
            (
                "POST",
                events,
                {"type": "case.resumed", "note": [[[[[[BIRTH_DATE]]]]]]},
                advisor,
                422,
            ),
            (
                "POST",
                events,
                {"type": "case.resumed", "deep": json.loads("[" * 70 + f'"{PHONE}"' + "]" * 70)},
                advisor,
                400,
            ),
            ("POST", events, {"type": "case.accepted", "team": FAMILY}, other_advisor, 404),
            ("GET", f"/fhir/ServiceRequest/{NHS_NUMBER}", None, referrer, 404),
            ("GET", f"/api/v1/cases/{FAMILY}", None, advisor, 404),
            ("GET", f"/fhir/Practitioner/{NHS_NUMBER}", None, referrer, 404),
            ("GET", f"/fhir/ServiceRequest/{referral_id}", None, stranger, 404),
            ("GET", "/api/v1/clients", None, {"Authorization": f"Bearer {NHS_NUMBER}"}, 401),
            ("GET", "/api/v1/worklist", None, referrer, 403),
            (
                "POST",
                "/api/v1/subscriptions",
                {"url": f"http://{FAMILY}.example/{NHS_NUMBER}"},
                ADMIN,
                422,
            ),
        ]
        for method, path, body, headers, expected in refusals:
            content = orjson.dumps(body) if body is not None else None
            if content is not None and "Content-Type" not in headers:
                headers = {**headers, "Content-Type": "application/json"}
            response = await bridge.http.request(method, path, content=content, headers=headers)
            assert response.status_code == expected, (method, path, response.text)
        refused_page = await bridge.http.get(
            f"/journey/{referral_id}", params={"token": NHS_NUMBER}
        )
        assert refused_page.status_code >= 400

        # An unexpected error whose message (and cause's) quotes the patient.
        lenient = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://testserver",
        )
        async with lenient:
            failed = await lenient.get(
                "/api/v1/test-only/unexpected",
                headers={"X-Request-ID": "unexpected-1", "X-Correlation-ID": "journey-test"},
            )
        assert failed.status_code == 500
        assert not leaks(failed.text)

        # The outbox: the patient's resources go where they should, and nowhere in the logs.
        await dispatcher_for(app).drain()
        assert any(NHS_NUMBER in request.body.decode() for request in receiver.requests)
        closed = await bridge.http.post(
            events, json={"type": "case.completed", "reason": "needs-met"}, headers=advisor
        )
        assert closed.status_code == 201
        await dispatcher_for(app).drain()
    finally:
        await receiver.stop()

    output = captured.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]

    # 1. Nothing that identifies the patient, in any log line or any error body.
    assert not leaks(output), [line for line in output.splitlines() if leaks(line)][:5]
    assert token not in output
    errors = [r for r in responses if r.status_code >= 400]
    assert len(errors) >= len(refusals)
    for response in errors:
        # Error bodies never echo what was sent, not even the path the client asked for.
        assert not leaks(response.text), (response.request.url.path, response.text)

    # 2. One access line per request, with its ids, route template, status, latency, client.
    access = [line for line in lines if line["logger"] == "spbridge.access"]
    by_request = {line["request_id"]: line for line in access}
    assert len(by_request) == len(access)
    for response in responses:
        line = by_request[response.headers["x-request-id"]]
        assert set(line) == ACCESS_FIELDS, line
        assert line["level"] == "INFO"
        assert line["message"] == "request"
        assert line["method"] == response.request.method
        assert line["status"] == response.status_code
        assert line["correlation_id"] == response.headers["x-correlation-id"]
        assert isinstance(line["latency_ms"], float)
        assert line["latency_ms"] >= 0
        assert line["route"] is None or line["route"].startswith("/")
        for concrete in (referral_id, case_id, "token="):
            assert concrete not in json.dumps(line), line
    routes = {(line["method"], line["route"], line["status"]) for line in access}
    assert ("POST", "/fhir/ServiceRequest", 201) in routes
    assert ("GET", "/fhir/ServiceRequest/{referral_id}", 200) in routes
    assert ("GET", "/fhir/ServiceRequest/{referral_id}", 404) in routes
    assert ("POST", "/api/v1/cases/{case_id}/events", 409) in routes
    assert ("GET", "/journey/{referral_id}", 200) in routes
    assert ("GET", None, 404) in routes  # /fhir/Practitioner/…: no such route
    referrer_lines = [line for line in access if line["client"] == referrer_id]
    assert referrer_lines
    # The role is there when the route authenticated the request; a request refused before
    # that (no such route) still names the client its key is known as.
    assert {line["role"] for line in referrer_lines} == {"clinical-system", None}
    unrouted = [line for line in referrer_lines if line["route"] is None]
    assert [line["role"] for line in unrouted] == [None]
    assert {line["client"] for line in access if line["route"] == "/api/v1/clients"} == {
        "bootstrap-admin",
        None,  # the 401: no client
    }
    journey_line = by_request[page.headers["x-request-id"]]
    assert journey_line["client"] is None

    # 3. The unexpected error: its type and frames, with the request's ids; never its message.
    (unhandled,) = [line for line in lines if line["message"] == "unhandled error"]
    assert unhandled["request_id"] == "unexpected-1"
    assert unhandled["correlation_id"] == "journey-test"
    exception = unhandled["exception"]
    assert exception["type"] == f"{__name__}.DataError"
    assert {"file", "line", "function"} <= set(exception["frames"][-1])
    assert exception["frames"][-1]["function"] == "unexpected"
    assert exception["frames"][-1]["file"].endswith("tests/test_logging.py")
    assert exception["cause"]["type"] == "builtins.KeyError"
    failed_line = by_request["unexpected-1"]
    assert failed_line["status"] == 500
    assert failed_line["route"] == "/api/v1/test-only/unexpected"


# --- the formatter ------------------------------------------------------------------------------


def formatted(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def record(
    name: str, message: str, *args: Any, exc_info: Any = None, **extra: Any
) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.WARNING, __file__, 1, message, args, exc_info)
    made.__dict__.update(extra)
    return made


def test_only_listed_fields_are_logged() -> None:
    line = formatted(
        record(
            "spbridge.delivery",
            "adapter failed",
            delivery_id="d-1",
            worker="w-1",
            patient=NHS_NUMBER,
            path=f"/fhir/ServiceRequest?patient.identifier={NHS_NUMBER}",
            body={"name": FAMILY},
        )
    )
    assert line["delivery_id"] == "d-1"
    assert line["worker"] == "w-1"
    assert not leaks(json.dumps(line))
    assert set(line) == {"time", "level", "logger", "message", "delivery_id", "worker"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


def test_ids_come_from_the_request_context() -> None:
    tokens = request_id_var.set("req-1"), correlation_id_var.set("corr-1")
    try:
        line = formatted(record("spbridge", "hello"))
    finally:
        request_id_var.reset(tokens[0])
        correlation_id_var.reset(tokens[1])
    assert (line["request_id"], line["correlation_id"]) == ("req-1", "corr-1")
    outside = formatted(record("spbridge", "hello", request_id="req 2 has spaces"))
    assert "request_id" not in outside


def test_other_libraries_messages_are_logged_without_their_arguments() -> None:
    query = formatted(record("aiosqlite", "executing %s", f"execute('...', ('{NHS_NUMBER}',))"))
    assert query["message"] == "executing %s"
    crash = formatted(
        record("asyncio", f"Task exception was never retrieved\nfuture: <Task {FAMILY}>")
    )
    assert crash["message"] == "Task exception was never retrieved"
    ours = formatted(record("spbridge.worker", "worker %s running", "host-1"))
    assert ours["message"] == "worker host-1 running"
    server = formatted(record("uvicorn.error", "Uvicorn running on %s", "http://127.0.0.1:8000"))
    assert server["message"] == "Uvicorn running on http://127.0.0.1:8000"


def test_exceptions_are_their_type_and_frames_never_their_message() -> None:
    def fails() -> None:
        try:
            {}[PHONE]
        except KeyError:
            raise DataError(f"value {NHS_NUMBER} for birth date {BIRTH_DATE}") from None

    try:
        fails()
    except DataError:
        info = sys.exc_info()
    line = formatted(record("spbridge", "unhandled error", exc_info=info))
    assert not leaks(json.dumps(line))
    assert line["exception"]["type"] == f"{__name__}.DataError"
    assert [frame["function"] for frame in line["exception"]["frames"]] == [
        "test_exceptions_are_their_type_and_frames_never_their_message",
        "fails",
    ]
    assert "cause" not in line["exception"]  # `from None`: the context is not shown

    try:
        try:
            {}[PHONE]
        except KeyError as exc:
            raise DataError(NHS_NUMBER) from exc
    except DataError:
        chained = formatted(record("spbridge", "failed", exc_info=sys.exc_info()))
    assert not leaks(json.dumps(chained))
    assert chained["exception"]["cause"]["type"] == "builtins.KeyError"


def test_configure_logging_keeps_chatty_libraries_quiet(captured: io.StringIO) -> None:
    logging.getLogger("sqlalchemy.engine.Engine").info("INSERT … %s", (NHS_NUMBER,))
    logging.getLogger("httpx").info("HTTP Request: GET https://x.example/?nhs=%s", NHS_NUMBER)
    logging.getLogger("spbridge.test").debug("debug is on")
    assert logging.getLogger("sqlalchemy.engine").getEffectiveLevel() == logging.WARNING
    output = captured.getvalue()
    assert not leaks(output)
    assert json.loads(output)["message"] == "debug is on"


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_per_minute": 60, "rate_limit_burst": 1}]
)
async def test_requests_refused_before_routing_are_logged_with_their_route(
    captured: io.StringIO, app: Any, bridge: Bridge
) -> None:
    app.state.rate_limits.clock = lambda: 0.0
    path = f"/fhir/ServiceRequest/{NHS_NUMBER}"
    statuses = [(await bridge.http.get(path, headers=ADMIN)).status_code for _ in range(3)]
    assert statuses == [404, 404, 429]
    access = [
        json.loads(line) for line in captured.getvalue().splitlines() if '"spbridge.access"' in line
    ]
    assert [(line["route"], line["status"], line["client"]) for line in access] == [
        ("/fhir/ServiceRequest/{referral_id}", 404, "bootstrap-admin"),
        ("/fhir/ServiceRequest/{referral_id}", 404, "bootstrap-admin"),
        ("/fhir/ServiceRequest/{referral_id}", 429, "bootstrap-admin"),
    ]
    assert not leaks(captured.getvalue())


def test_the_log_follows_stderr_after_the_stream_it_began_with_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A command run with its output captured (as a CLI runner does) set logging up on a stream
    it then closed; a later record (a server thread's) goes to stderr as it is now, not to the
    closed stream (which printed a logging error for every request, as CI's output showed)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    first, now = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        configure_logging("INFO")
        first.close()
        monkeypatch.setattr(sys, "stderr", now)
        logging.getLogger("spbridge.test").info("after the first stream closed")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert json.loads(now.getvalue())["message"] == "after the first stream closed"
