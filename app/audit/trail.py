"""Recording the audit trail: which routes touch patient data, and the one record each request
to them leaves (security issue part 3).

Each request to an audited route gets an :class:`AuditScope`. The code that decides what a caller
may see notes the referrals it hands out (:func:`note`), wherever it runs in the request. The
record is then written exactly once:

- a request that changes data writes it in its own transaction, just before the commit
  (``app.dependencies.write_session`` calls :func:`stage`), so a change is never committed
  without its record and a record never claims a change that was rolled back;
- every other request (reads, and writes that failed) has it written by :class:`AuditMiddleware`
  before the response starts; if that write fails, the caller gets a 503 instead of the data.

One rule with the rest of the app for the database being unavailable (app.db.unavailability):
a record that cannot be written because of it gives the same 503 as any request that meets it
(one log line, counted), and a request answered that 503 is not recorded (see ``_unrecorded``).
A record that cannot be written for any other reason still withholds the answer (503), logged
with its stack.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import bindparam, insert
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit.models import AuditedPatient, AuditRecord
from app.db import (
    Database,
    fold_rows,
    inserted_rows,
    rows_parameters,
    table_of,
    unavailability,
    utcnow,
)
from app.errors import (
    DATABASE_UNAVAILABLE,
    AppError,
    ServiceUnavailable,
    database_unavailable,
    error_response,
)
from app.keys import KeyPurpose, KeyStore
from app.logs import route_template
from app.pseudonyms import PSEUDONYM_PREFIX, pseudonym
from app.requestids import valid_id

log = logging.getLogger("spbridge.audit")

RouteKey = tuple[str, str]


@dataclass(frozen=True)
class Audited:
    """How a route is recorded: FHIR AuditEvent.action, the RESTful interaction, the resource."""

    action: str  # C create, R read, U update, D delete, E execute (a search or an operation)
    interaction: str  # http://hl7.org/fhir/restful-interaction (AuditEvent.subtype)
    resource_type: str


def _read(resource_type: str) -> Audited:
    return Audited("R", "read", resource_type)


def _search(resource_type: str) -> Audited:
    return Audited("E", "search-type", resource_type)


# Every route that reads or writes patient data, and how it is recorded. A route whose operation
# touches patient data but is missing here fails tests/test_audit.py, as does a stale entry.
AUDITED_ROUTES: dict[RouteKey, Audited] = {
    ("POST", "/fhir/ServiceRequest"): Audited("C", "create", "ServiceRequest"),
    ("POST", "/fhir"): Audited("C", "transaction", "ServiceRequest"),
    ("POST", "/fhir/$process-message"): Audited("C", "operation", "ServiceRequest"),
    ("GET", "/fhir/ServiceRequest/{referral_id}"): _read("ServiceRequest"),
    ("PUT", "/fhir/ServiceRequest/{referral_id}"): Audited("U", "update", "ServiceRequest"),
    ("GET", "/fhir/ServiceRequest"): _search("ServiceRequest"),
    ("GET", "/fhir/ServiceRequest/{referral_id}/$journey"): Audited(
        "R", "operation", "ServiceRequest"
    ),
    ("GET", "/fhir/Task/{task_id}"): _read("Task"),
    ("GET", "/fhir/Task"): _search("Task"),
    ("GET", "/fhir/Appointment/{resource_id}"): _read("Appointment"),
    ("GET", "/fhir/Appointment"): _search("Appointment"),
    ("GET", "/fhir/Observation/{resource_id}"): _read("Observation"),
    ("GET", "/fhir/Observation"): _search("Observation"),
    ("GET", "/fhir/QuestionnaireResponse/{resource_id}"): _read("QuestionnaireResponse"),
    ("GET", "/fhir/QuestionnaireResponse"): _search("QuestionnaireResponse"),
    ("GET", "/api/v1/cases/{case_id}"): _read("Task"),
    ("POST", "/api/v1/cases/{case_id}/events"): Audited("U", "update", "Task"),
    ("POST", "/api/v1/adapters/{adapter}/{service_id}/webhook"): Audited("U", "update", "Task"),
    ("GET", "/api/v1/worklist"): _search("Task"),
    ("GET", "/api/v1/referrals/{referral_id}/journey-link"): Audited(
        "E", "operation", "ServiceRequest"
    ),
    ("GET", "/journey/{referral_id}"): Audited("R", "operation", "ServiceRequest"),
    ("GET", "/api/v1/deliveries"): _search("Delivery"),
    ("GET", "/api/v1/deliveries/{delivery_id}"): _read("Delivery"),
    ("POST", "/api/v1/deliveries/replay"): Audited("U", "update", "Delivery"),
    ("POST", "/api/v1/deliveries/{delivery_id}/replay"): Audited("U", "update", "Delivery"),
    ("GET", "/fhir/AuditEvent"): _search("AuditEvent"),
    ("GET", "/fhir/AuditEvent/{audit_id}"): _read("AuditEvent"),
    ("GET", "/fhir/Patient/{resource_id}"): _read("Patient"),
    ("GET", "/fhir/Patient"): _search("Patient"),
}
# Every resource type we serve has its versions (vread, _history) and POST _search, recorded as
# what they are.
for _type, _id in (
    ("ServiceRequest", "referral_id"),
    ("Task", "task_id"),
    ("Patient", "resource_id"),
    ("Appointment", "resource_id"),
    ("Observation", "resource_id"),
    ("QuestionnaireResponse", "resource_id"),
):
    AUDITED_ROUTES[("GET", f"/fhir/{_type}/{{{_id}}}/_history/{{vid}}")] = Audited(
        "R", "vread", _type
    )
    AUDITED_ROUTES[("GET", f"/fhir/{_type}/{{{_id}}}/_history")] = Audited(
        "R", "history-instance", _type
    )
    AUDITED_ROUTES[("POST", f"/fhir/{_type}/_search")] = _search(_type)

# Who a request without a client is recorded as (the journey page, a platform's webhook).
JOURNEY_LINK_HOLDER = "holder of a journey link"


class HasPatient(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def nhs_number(self) -> str: ...


@dataclass
class AuditScope:
    """What one request to an audited route did, gathered while it runs."""

    audited: Audited
    method: str
    route: str
    # referral id → NHS number (or the pseudonym a purged referral already holds)
    patients: dict[str, str] = field(default_factory=dict)
    # An outcome the code knows better than the route does (e.g. 200 for an existing referral).
    status: int | None = None
    agent_name: str | None = None
    written: bool = False


# The key of a patient noted by NHS number alone, not through a referral.
_BY_NUMBER = "nhs:"

_current: ContextVar[AuditScope | None] = ContextVar("audit_scope", default=None)


def note(referrals: Iterable[HasPatient]) -> None:
    """Record that the current request reaches these referrals' patients (no-op outside one)."""
    scope = _current.get()
    if scope is not None:
        for referral in referrals:
            scope.patients[referral.id] = referral.nhs_number


def forget(referrals: Iterable[HasPatient]) -> None:
    """Take back a note of these referrals (ones the request made but did not write)."""
    scope = _current.get()
    if scope is not None:
        for referral in referrals:
            scope.patients.pop(referral.id, None)


def note_patient(referral_id: str, nhs_number: str) -> None:
    scope = _current.get()
    if scope is not None:
        scope.patients[referral_id] = nhs_number


def note_nhs_number(nhs_number: str) -> None:
    """A patient reached by NHS number rather than through a referral (an audit search)."""
    scope = _current.get()
    if scope is not None:
        scope.patients[f"{_BY_NUMBER}{nhs_number}"] = nhs_number


def set_status(status: int) -> None:
    scope = _current.get()
    if scope is not None:
        scope.status = status


def set_agent(name: str) -> None:
    """Who acted, for a route without an API client (a platform's signed webhook)."""
    scope = _current.get()
    if scope is not None:
        scope.agent_name = name


def scope_of(asgi_scope: Scope) -> AuditScope | None:
    state = asgi_scope.get("state") or {}
    found = state.get("audit")
    return found if isinstance(found, AuditScope) else None


def _outcome(status: int) -> str:
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def _pseudonyms(key: bytes, noted: dict[str, str]) -> list[str]:
    """The pseudonym of each noted patient, in the order noted (one per referral)."""
    return [
        number if number.startswith(PSEUDONYM_PREFIX) else pseudonym(key, number)
        for number in noted.values()
    ]


async def installation_pseudonym_key(state: Any, session: AsyncSession) -> bytes:
    """The pseudonym key, from the process's key store."""
    keys: KeyStore = state.keys
    return await keys.get(session, KeyPurpose.PSEUDONYM)


async def write_record(
    session: AsyncSession,
    *,
    key: bytes,
    source: str,
    audited: Audited,
    agent: tuple[str | None, str, str | None, str | None],
    outcome: str,
    status: int | None,
    patients: dict[str, str],
    resource_id: str | None = None,
    method: str | None = None,
    route: str | None = None,
    request_ids: tuple[str | None, str | None] = (None, None),
    now: dt.datetime | None = None,
    fold: bool = False,
) -> str:
    """Write one audit record (and its patients) in ``session``'s transaction; never commits.
    ``agent`` is (client id, name, role, organisation). ``fold``: with the rows the session's
    work writes next (app.db.fold_rows), in its statement on PostgreSQL."""
    client_id, agent_name, role, organisation = agent
    record_id = str(uuid.uuid4())
    pseudonyms = _pseudonyms(key, patients)
    # Plain INSERTs, not ORM objects: the record is written on every patient-data request, and
    # the unit of work would cost more than the statements (nothing reads these objects back).
    record_values: dict[str, Any] = {
        "id": record_id,
        "recorded_at": now or utcnow(),
        "source": source,
        "client_id": client_id,
        "agent_name": agent_name[:200],
        "role": role,
        "organisation": organisation,
        "action": audited.action,
        "interaction": audited.interaction,
        "method": method,
        "route": route,
        "resource_type": audited.resource_type,
        "resource_id": resource_id[:64] if resource_id else None,
        "outcome": outcome,
        "status": status,
        "request_id": request_ids[0],
        "correlation_id": request_ids[1],
    }
    referral_ids = [None if ident.startswith(_BY_NUMBER) else ident for ident in patients]
    noted = [
        {
            "audit_event_id": record_id,
            "position": position,
            "patient": patient,
            "referral_id": referral_ids[position],
        }
        for position, patient in enumerate(pseudonyms)
    ]
    if fold:
        fold_rows(session, table_of(AuditRecord), [record_values])
        if noted:
            fold_rows(session, table_of(AuditedPatient), noted)
    elif not noted:
        await session.execute(_RECORDS, record_values)
    elif session.get_bind().dialect.name == "postgresql":
        # Both made once (app.db.inserted_rows): a multi-row VALUES would be compiled each time.
        await session.execute(
            _recorded_with_patients(tuple(record_values)),
            {**record_values, **rows_parameters("noted", _NOTED, noted)},
        )
    else:
        await session.execute(_RECORDS, record_values)
        await session.execute(_PATIENTS, noted)
    return record_id


# The columns of an audited patient's row, as write_record gives them.
_NOTED = ("audit_event_id", "position", "patient", "referral_id")
# Made once, the values given at execution (Core inserts of the tables: no ORM bulk path).
_RECORDS = insert(table_of(AuditRecord))
_PATIENTS = insert(table_of(AuditedPatient))


@functools.lru_cache(maxsize=8)
def _recorded_with_patients(columns: tuple[str, ...]) -> Any:
    # PostgreSQL, one round trip made once: the record's insert (the columns write_record
    # gives, the rest at their defaults) a data-modifying CTE of its patients' (their foreign
    # key is checked at the statement's end, when the record is there).
    records, patients = table_of(AuditRecord), table_of(AuditedPatient)
    record = insert(records).values({key: bindparam(key) for key in columns})
    return inserted_rows(patients, "noted", _NOTED).add_cte(record.cte("record"))


def _agent(asgi_scope: Scope, audit: AuditScope) -> tuple[str | None, str, str | None, str | None]:
    state = asgi_scope.get("state") or {}
    principal = state.get("principal")
    if principal is not None:
        role = getattr(principal, "role", None)
        return (
            getattr(principal, "client_id", None),
            str(getattr(principal, "name", "")),
            str(role) if role is not None else None,
            getattr(principal, "organisation", None),
        )
    if audit.agent_name is not None:
        return None, audit.agent_name, None, None
    if audit.route == "/journey/{referral_id}":
        return None, JOURNEY_LINK_HOLDER, None, None
    return None, "unauthenticated caller", None, None


async def _record(
    session: AsyncSession, asgi_scope: Scope, audit: AuditScope, status: int, *, fold: bool = False
) -> None:
    state = asgi_scope.get("state") or {}
    key = await installation_pseudonym_key(asgi_scope["app"].state, session)
    await write_record(
        session,
        key=key,
        source="api",
        audited=audit.audited,
        agent=_agent(asgi_scope, audit),
        outcome=_outcome(status),
        status=status,
        patients=audit.patients,
        resource_id=_resource_id(asgi_scope, audit)
        or (next(iter(audit.patients), None) if audit.audited.action == "C" else None),
        method=audit.method,
        route=audit.route,
        request_ids=(state.get("request_id"), state.get("correlation_id")),
        fold=fold,
    )


class AuditUnavailable(ServiceUnavailable):
    """503: the audit record could not be written (for a reason other than the database being
    unavailable, which is answered as every request is), so the request is refused."""


async def stage(asgi_scope: Scope, session: AsyncSession, default_status: int) -> None:
    """Write the request's record in its own (write) transaction, before the commit."""
    audit = scope_of(asgi_scope)
    if audit is None or audit.written:
        return
    await _recording(_record(session, asgi_scope, audit, audit.status or default_status))
    audit.written = True


async def fold(
    asgi_scope: Scope, session: AsyncSession, status: int, write: Callable[[], Awaitable[None]]
) -> None:
    """Run ``write``, the work's last write, with the request's record among the rows it
    writes (app.db.fold_rows): in its statement on PostgreSQL, no round trip of its own. For a
    writer that knows its answer before that write (intake); :func:`stage` then has nothing
    left to do. That write failing is the record failing too, and is answered as such."""
    audit = scope_of(asgi_scope)
    if audit is None or audit.written:
        await write()
        return

    async def recorded_and_written() -> None:
        await _record(session, asgi_scope, audit, audit.status or status, fold=True)
        await write()

    await _recording(recorded_and_written())
    audit.written = True


async def _recording(writing: Awaitable[None]) -> None:
    """Await what writes the request's record; when it fails, 503 with the cause logged (the
    database being unavailable is answered by the ErrorBoundary, as for every request)."""
    try:
        await writing
    except AppError:
        raise  # the write refused for a reason of its own, answered as such
    except Exception as exc:
        if unavailability(exc) is not None:
            raise
        log.error("the audit record could not be written; the change is rolled back", exc_info=exc)
        raise AuditUnavailable(
            "The request could not be recorded in the audit trail, so it was not carried out; "
            "try again shortly"
        ) from exc


def begin(asgi_scope: Scope) -> AuditScope | None:
    """The request's audit scope if it is for an audited route (found as routing will find it,
    from the method and the path's template), stored in the request state."""
    path = route_template(asgi_scope)
    if path is None:
        return None
    method = str(asgi_scope.get("method", ""))
    audited = AUDITED_ROUTES.get((method, path))
    if audited is None:
        return None
    audit = AuditScope(audited, method, path)
    asgi_scope.setdefault("state", {})["audit"] = audit
    return audit


def _resource_id(asgi_scope: Scope, audit: AuditScope) -> str | None:
    """The resource the path names (routing has filled in the path parameters by now)."""
    if audit.route.startswith("/api/v1/adapters/"):
        return None  # the path names the service, not the patient's resource: cases are noted
    params = asgi_scope.get("path_params") or {}
    given = next((str(value) for name, value in params.items() if name.endswith("_id")), None)
    # What a caller puts in a path is kept only if it is a plain id: not NUL or other bytes the
    # database refuses, and not an NHS number (the same rule as request ids).
    return given if given is not None and valid_id(given) else None


def _withheld(scope: Scope, exc: Exception) -> AppError:
    """The answer in place of one whose record could not be written: the database's 503 if it
    is unavailable, else the audit trail's own 503 (logged with its stack: something to fix)."""
    refusal = database_unavailable(scope, exc)
    if refusal is not None:
        return refusal
    log.error("the audit record could not be written; answer withheld", exc_info=exc)
    return AuditUnavailable(
        "The request could not be recorded in the audit trail, so its answer is withheld; "
        "try again shortly"
    )


def _unrecorded(scope: Scope) -> bool:
    """A request answered 503 because the database was unavailable is not recorded here: its
    answer discloses nothing, a change it made (committed as the connection was lost) carries its
    record already, the database could not take the record anyway, and trying would make the
    caller wait a second time. The access log and the metrics count it."""
    state = scope.get("state") or {}
    return bool(state.get(DATABASE_UNAVAILABLE))


class AuditMiddleware:
    """Writes the record of every audited request not already written with its change, before
    the response starts; withholds the response (503) when the record cannot be written.

    Sits inside the limit middlewares: a request refused for its rate or size never reached a
    route, touched no data and is not recorded here (the access log has it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _current.set(begin(scope))
        withheld = False

        async def send_after_record(message: Message) -> None:
            nonlocal withheld
            if withheld:
                return
            if message["type"] == "http.response.start":
                audit = scope_of(scope)
                if audit is not None and not audit.written and not _unrecorded(scope):
                    try:
                        await self._write(scope, audit, int(message["status"]))
                    except Exception as exc:
                        withheld = True
                        refusal = error_response(scope.get("path", ""), _withheld(scope, exc))
                        await refusal(scope, receive, send)
                        return
            await send(message)

        try:
            await self.app(scope, receive, send_after_record)
        except Exception as exc:
            # An error raised after its response started (the ErrorBoundary answers the others):
            # record the failed access, unless the database was unavailable.
            audit = scope_of(scope)
            if audit is not None and not audit.written and unavailability(exc) is None:
                try:
                    await self._write(scope, audit, 500)
                except Exception as failure:
                    if unavailability(failure) is None:
                        log.exception("the audit record of a failed request could not be written")
            raise
        finally:
            _current.reset(token)

    async def _write(self, scope: Scope, audit: AuditScope, status: int) -> None:
        database: Database = scope["app"].state.database
        async with database.write_sessions() as session, session.begin():
            await _record(session, scope, audit, status)
        audit.written = True
