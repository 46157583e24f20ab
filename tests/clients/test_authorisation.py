"""Authorisation (DESIGN §7, §8; security issue part 2).

1. Every route the app registers has exactly one rule: the Operation its require() dependency
   checks, or an entry in PUBLIC_ROUTES with the reason it needs no key (app/security/policy.py).
2. The role table itself says what DESIGN §7 says (hand-written rows: a change to PERMISSIONS
   that contradicts them fails here, whatever the generated matrix says).
3. The matrix: every route for every caller (no key, a wrong key, each role, the bootstrap admin),
   with real ids of objects the caller's organisation owns. The expected outcome is generated
   from PERMISSIONS: no key → 401; a role the operation does not allow → 403 from the role check;
   an allowed role → neither 401 nor 403, never 5xx (200 for every read of a real id).
3b. The matrix across organisations (issue 13 part 1): every route for every role of one
   organisation, admins included, naming the other organisation's objects and codes, writes
   included, both ways round. Each route is classified in ACROSS (a new route must be):
   404 for another organisation's object, 403 for a create naming another organisation, lists
   and searches without the other's data; never 2xx on it, none of its ids in any answer, none of
   its rows changed. Only the bootstrap admin crosses organisations.
4. Organisation isolation on every read path: two organisations' referrals with case records;
   every by-id read of the other organisation's data is 404, every search finds none of it, and
   every write to it is 404; the owners, asked the same, do see it. Journey-page tokens open only
   their referral; includes are refused; deliveries are for admins only.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import bindparam, text

from app.db import create_engine
from app.main import create_app
from app.security.policy import PUBLIC_ROUTES, PolicyError, Public, RouteKey, Rule, route_rules
from app.security.roles import PERMISSIONS, Operation, Role
from tests.bars.test_process_message import bars_message
from tests.bars.test_process_message import target as bars_target
from tests.conftest import (
    ADMIN_KEY,
    FHIR_JSON,
    Bridge,
    make_settings,
    referral_resource,
    requester_of,
)
from tests.fhirsubscriptions.test_fhir_subscriptions import subscription as fhir_subscription
from tests.support.cases import OpenCase, open_case
from tests.support.receiver import free_port

CLINICAL, PLATFORM, ADVISOR, REPORTING, ADMIN = (
    Role.CLINICAL_SYSTEM,
    Role.PLATFORM,
    Role.ADVISOR,
    Role.REPORTING,
    Role.ADMIN,
)
BOOTSTRAP_ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NHS_NUMBER = "9000000009"  # the example referral's patient: every referral here is about them
DUMMY_ID = "00000000-0000-4000-8000-000000000000"
# Where subscriptions and the clinical route point: a closed port on loopback (allowed below),
# so the subscription test ping fails fast and nothing leaves the machine.
HOOK_URL = f"http://127.0.0.1:{free_port()}/hook"
# A public key to register (EC P-256, the example of RFC 7515 A.3).
PUBLIC_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"]}


def offline_app() -> FastAPI:
    """The app as configured, without its lifespan (no database is touched)."""
    return create_app(make_settings("sqlite+aiosqlite:///:memory:"))


# --- 1. every route has a rule ------------------------------------------------------------------


def test_every_registered_route_has_exactly_one_rule() -> None:
    app = offline_app()
    rules = route_rules(app)  # raises PolicyError naming every route without a rule
    # The walk sees what the app serves: everything in its OpenAPI document, and the doc pages.
    documented = {
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in {"get", "put", "post", "patch", "delete"}
    }
    assert documented <= rules.keys(), documented - rules.keys()
    for key in [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc")]:
        assert isinstance(rules[key], Public)
    # Every public route says why, and nothing else is public.
    assert {key for key, rule in rules.items() if isinstance(rule, Public)} == set(PUBLIC_ROUTES)
    assert all(len(rule.reason) > 20 for rule in PUBLIC_ROUTES.values())


def test_a_new_route_without_a_rule_fails() -> None:
    app = offline_app()

    async def unguarded() -> dict[str, str]:
        return {}

    app.add_api_route("/api/v1/unguarded", unguarded, methods=["GET"])
    with pytest.raises(PolicyError) as refused:
        route_rules(app)
    assert len(refused.value.problems) == 1
    assert refused.value.problems[0].startswith("GET /api/v1/unguarded has no rule")


def test_public_routes_must_exist_and_must_not_also_take_a_key() -> None:
    app = offline_app()
    stale = {**PUBLIC_ROUTES, ("GET", "/gone"): Public("a route that was removed long ago")}
    with pytest.raises(PolicyError, match=r"PUBLIC_ROUTES lists GET /gone"):
        route_rules(app, stale)
    both = {**PUBLIC_ROUTES, ("GET", "/api/v1/worklist"): Public("a mistake, for this test")}
    with pytest.raises(PolicyError, match=r"GET /api/v1/worklist requires a key but is also"):
        route_rules(app, both)


def test_every_operation_is_in_the_table_and_used_by_a_route() -> None:
    assert set(PERMISSIONS) == set(Operation), "every Operation needs a row in PERMISSIONS"
    used = {rule for rule in route_rules(offline_app()).values() if isinstance(rule, Operation)}
    assert used == set(Operation), f"operations no route checks: {set(Operation) - used}"


# --- 2. the table says what DESIGN §7 says (written by hand, on purpose) ------------------------

# Patient-level operations: reporting may do none of them.
PATIENT_LEVEL = {
    Operation.REFERRAL_CREATE,
    Operation.REFERRAL_UPDATE,
    Operation.REFERRAL_READ,
    Operation.TASK_READ,
    Operation.CASE_READ,
    Operation.CASE_EVENT_RECORD,
    Operation.WORKLIST_READ,
    Operation.JOURNEY_LINK,
    Operation.DELIVERY_READ,
    Operation.DELIVERY_REPLAY,
}
DESIGN_ROWS: dict[Operation, set[Role]] = {
    # Clinical systems refer and cancel; nobody else makes or changes referrals.
    Operation.REFERRAL_CREATE: {CLINICAL},
    Operation.REFERRAL_UPDATE: {CLINICAL},
    # The service side records what happens on a case; the referrer follows it, never writes it.
    Operation.CASE_EVENT_RECORD: {PLATFORM, ADVISOR, ADMIN},
    Operation.WORKLIST_READ: {PLATFORM, ADVISOR, ADMIN},
    # Only admins manage clients, services and routes, and see the delivery queue.
    Operation.CLIENT_MANAGE: {ADMIN},
    Operation.SERVICE_MANAGE: {ADMIN},
    Operation.ROUTE_MANAGE: {ADMIN},
    Operation.DELIVERY_READ: {ADMIN},
    Operation.DELIVERY_REPLAY: {ADMIN},
}


def test_the_table_says_what_design_section_7_says() -> None:
    for operation, roles in DESIGN_ROWS.items():
        assert PERMISSIONS[operation] == roles, operation
    for operation in PATIENT_LEVEL:
        assert REPORTING not in PERMISSIONS[operation], operation
    # Both ends of a referral may read it and follow its Task and case.
    for operation in (Operation.REFERRAL_READ, Operation.TASK_READ, Operation.CASE_READ):
        assert {CLINICAL, ADVISOR, PLATFORM} <= PERMISSIONS[operation], operation
    assert {CLINICAL, ADVISOR} <= PERMISSIONS[Operation.JOURNEY_LINK]


# --- 3. the matrix ------------------------------------------------------------------------------

ROLE_CALLERS = [role.value for role in Role]
CALLERS = ["no key", "wrong key", *ROLE_CALLERS, "bootstrap admin"]

# Public routes: what they answer without their own credential, whoever calls (a key changes
# nothing). The webhook is called for a real elemental service, unsigned; the page without token.
PUBLIC_OUTCOMES: dict[RouteKey, int] = {
    ("GET", "/healthz"): 200,
    ("GET", "/"): 200,
    ("GET", "/readyz"): 200,
    ("GET", "/metrics"): 200,
    ("GET", "/fhir/metadata"): 200,
    ("GET", "/openapi.json"): 200,
    ("GET", "/docs"): 200,
    ("GET", "/docs/oauth2-redirect"): 200,
    ("GET", "/redoc"): 200,
    ("POST", "/api/v1/adapters/{adapter}/{service_id}/webhook"): 401,
    ("GET", "/journey/{referral_id}"): 403,
}

# A few rows written by hand at the level of routes (they also check which operation each of
# these routes asks for): (method, path, caller, expected status).
HAND_WRITTEN_ROUTE_ROWS = [
    ("POST", "/fhir/ServiceRequest", "clinical-system", 201),
    ("POST", "/fhir/ServiceRequest", "advisor", 403),
    ("POST", "/fhir/ServiceRequest", "platform", 403),
    ("PUT", "/fhir/ServiceRequest/{referral_id}", "advisor", 403),
    ("POST", "/api/v1/cases/{case_id}/events", "advisor", 201),
    ("POST", "/api/v1/cases/{case_id}/events", "clinical-system", 403),
    ("GET", "/api/v1/cases/{case_id}", "clinical-system", 200),
    ("GET", "/api/v1/worklist", "advisor", 200),
    ("GET", "/api/v1/worklist", "clinical-system", 403),
    ("GET", "/fhir/ServiceRequest/{referral_id}", "reporting", 403),
    ("GET", "/fhir/Task", "reporting", 403),
    ("GET", "/api/v1/worklist", "reporting", 403),
    ("GET", "/api/v1/services", "reporting", 200),
    ("POST", "/api/v1/clients", "admin", 201),
    ("POST", "/api/v1/clients", "advisor", 403),
    ("POST", "/api/v1/services", "clinical-system", 403),
    ("PUT", "/api/v1/clinical-routes/{organisation}", "platform", 403),
    ("GET", "/api/v1/deliveries", "admin", 200),
    # An organisation's admin manages its own organisation's clients, route and deliveries.
    ("POST", "/api/v1/clients/{client_id}/secret", "admin", 200),
    ("PUT", "/api/v1/clients/{client_id}/public-key", "admin", 200),
    ("PUT", "/api/v1/clients/{client_id}/acts-for", "admin", 403),
    ("POST", "/api/v1/clients/{client_id}/revoke", "admin", 200),
    ("GET", "/api/v1/clinical-routes/{organisation}", "admin", 200),
    ("PUT", "/api/v1/clinical-routes/{organisation}", "admin", 200),
    ("POST", "/api/v1/clinical-routes/{organisation}/capabilities", "admin", 200),
    ("GET", "/api/v1/deliveries/{delivery_id}", "admin", 200),
    ("GET", "/api/v1/deliveries", "advisor", 403),
    ("GET", "/api/v1/deliveries", "platform", 403),
    ("GET", "/api/v1/deliveries", "clinical-system", 403),
    ("GET", "/api/v1/deliveries/{delivery_id}", "reporting", 403),
    # The sandbox reset is admins' only, and outside sandbox mode (as here) not there at all.
    ("POST", "/api/v1/sandbox/reset", "advisor", 403),
    ("POST", "/api/v1/sandbox/reset", "admin", 404),
    ("POST", "/api/v1/sandbox/reset", "bootstrap admin", 404),
]

_PARAMETER = re.compile(r"\{(\w+)(?::[^}]*)?\}")


@dataclass
class Call:
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def fhir(resource: dict[str, Any]) -> Call:
    return Call(content=orjson.dumps(resource), headers=dict(FHIR_JSON))


@dataclass(frozen=True)
class Organisations:
    """The two ends of a world's referral: a referrer, and a service with the organisation that
    runs it (and an elemental hub of the same organisation, for the platform webhook)."""

    service: str
    service_organisation: str
    referrer: str
    elemental: str
    # Whether an answer naming its ODS codes gives its data away (the first world's codes are
    # also in the text of every referral here, whoever sent it).
    marked: bool = False

    def of(self, caller: str) -> str:
        """The organisation a caller of this world acts for (clinical systems are the referrer's;
        the bootstrap admin names the referrer where it must name one)."""
        if caller in ("clinical-system", "bootstrap admin"):
            return self.referrer
        return self.service_organisation


FIRST = Organisations("life-rooms", "LR001", "RW4", "elemental-hub")
# Codes that cannot turn up by chance in an id, a cursor or a key: the cross-organisation test
# searches every answer for them.
SECOND = Organisations("zq-service", "ZQ9SV", "ZQ9RF", "zq-elemental", marked=True)


def transaction_bundle(service: str = "life-rooms") -> dict[str, Any]:
    referral = referral_resource(service)
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": referral,
                "request": {"method": "POST", "url": "ServiceRequest"},
            }
        ],
    }


async def record_case_work(case: OpenCase) -> None:
    """A case accepted, with an appointment, a social prescription and a SWEMWBS score."""
    for event in (
        {"type": "case.accepted"},
        {
            "type": "appointment.booked",
            "appointment_id": "A",
            "start": "2030-01-01T10:00:00Z",
            "appointment_type": "telephone",
            "duration_minutes": 30,
        },
        {
            "type": "prescription.created",
            "prescription_id": "P",
            "category": "housing",
            "provider": "X",
            "activity": "Y",
        },
        {"type": "outcome.recorded", "stage": "start", "items": [3, 3, 3, 3, 3, 3, 3]},
    ):
        await case.record(event)


async def case_resources(bridge: Bridge, case: OpenCase) -> dict[str, list[str]]:
    """The ids of the case's FHIR resources by type (prescriptions are ServiceRequests)."""
    detail = (await case.detail()).json()["resources"]
    by_type: dict[str, list[str]] = {}
    for key in ("appointments", "prescriptions", "observations", "questionnaire_responses"):
        for reference in detail[key]:
            resource_type, _, resource_id = reference.partition("/")
            by_type.setdefault(resource_type, []).append(resource_id)
    assert set(by_type) == {"Appointment", "ServiceRequest", "Observation", "QuestionnaireResponse"}
    by_type["Patient"] = [detail["patient"].removeprefix("Patient/")]
    return by_type


async def subscribe(bridge: Bridge, headers: dict[str, str]) -> str:
    response = await bridge.http.post(
        "/api/v1/subscriptions", json={"url": HOOK_URL}, headers=headers
    )
    assert response.status_code == 201, response.text
    subscription_id: str = response.json()["id"]
    return subscription_id


@dataclass
class World:
    """What the matrix calls: one referral (referrer → the service of another organisation) with
    case records, keys for every role (clinical-system at the referrer; the rest at the service's
    organisation), a subscription of each caller's own, a clinical route for each of the two
    organisations, deliveries, a spare client to manage, and an elemental service."""

    orgs: Organisations
    keys: dict[str, dict[str, str]]
    case: OpenCase
    cancellable_id: str
    cancellation: dict[str, Any]
    resources: dict[str, list[str]]
    subscriptions: dict[str, str]
    # A delivery each admin may see (an organisation's admin: one to its own subscription).
    deliveries: dict[str, str]
    # Client ids: "spare" (made to be managed: secrets, keys, revocation) and each role's.
    clients: dict[str, str]
    routes: dict[str, str]  # organisation → its clinical route's destination id
    audit_id: str  # a record of the referral's creation
    destinations: set[str]  # every destination of its organisations: routes, platforms, hooks
    delivery_ids: set[str]  # every delivery of its referral
    # A FHIR Subscription of each caller's own, as the webhook subscriptions.
    fhir_subscriptions: dict[str, str] = field(default_factory=dict)
    import_job: str = DUMMY_ID  # an import its organisation's admin started

    def path(
        self, method: str, template: str, caller: str, client: str = "spare"
    ) -> tuple[str, bool]:
        """The URL for this caller, and whether every path parameter named a real object (a
        parameter this test does not know gets a dummy id: the read is then not expected to
        find anything, but the rule is checked all the same)."""
        values = {
            "referral_id": self.case.referral_id,
            "task_id": self.case.case_id,
            "case_id": self.case.case_id,
            "service_id": self.orgs.service,
            "organisation": self.orgs.of(caller),
            "delivery_id": self.deliveries.get(caller, self.deliveries["bootstrap admin"]),
            "subscription_id": self.subscriptions.get(caller, self.subscriptions["advisor"]),
            "basic_id": "referral-task-changed",  # the subscription topic
            "fhir_subscription_id": self.fhir_subscriptions.get(
                caller, self.fhir_subscriptions.get("advisor", DUMMY_ID)
            ),
            "client_id": self.clients[client],
            "audit_id": self.audit_id,
            "job_id": self.import_job,
            "adapter": "elemental",
            "vid": "1",
        }
        if (method, template) == ("PUT", "/fhir/ServiceRequest/{referral_id}"):
            values["referral_id"] = self.cancellable_id  # the matrix must not close the case
        if template.endswith("/webhook"):
            values["service_id"] = self.orgs.elemental
        if template.startswith("/fhir/") and "/{resource_id}" in template:
            values["resource_id"] = self.resources.get(template.split("/")[2], [DUMMY_ID])[0]
        names = [match.group(1) for match in _PARAMETER.finditer(template)]
        url = _PARAMETER.sub(lambda m: values.get(m.group(1), DUMMY_ID), template)
        return url, all(values.get(name, DUMMY_ID) != DUMMY_ID for name in names)

    def call(self, method: str, template: str, caller: str) -> Call:
        referral = f"ServiceRequest/{self.case.referral_id}"
        match method, template:
            case "POST", "/fhir/ServiceRequest":
                return fhir(referral_resource(self.orgs.service))
            case "POST", "/fhir/$process-message":
                call = fhir(bars_message())
                call.headers.update(
                    {
                        "X-Request-ID": str(uuid.uuid4()),
                        "NHSD-Target-Identifier": bars_target(self.orgs.service),
                        "NHSD-End-User-Organisation-ODS": self.orgs.of(caller),
                    }
                )
                return call
            case "POST", "/fhir/Subscription":
                return fhir(fhir_subscription(HOOK_URL))
            case "POST", "/fhir":
                return fhir(transaction_bundle(self.orgs.service))
            case "PUT", "/fhir/ServiceRequest/{referral_id}":
                call = fhir(self.cancellation)
                call.headers["If-Match"] = 'W/"1"'
                return call
            case "POST", _ if template.endswith("/_search"):
                searched = {
                    "/fhir/Task/_search": f"focus={referral}",
                    "/fhir/ServiceRequest/_search": f"patient.identifier={NHS_NUMBER}",
                    "/fhir/Patient/_search": f"identifier={NHS_NUMBER}",
                }.get(template, f"based-on={referral}")
                form = {"Content-Type": "application/x-www-form-urlencoded"}
                return Call(content=searched.encode(), headers=form)
            case "GET", "/fhir/Patient":
                return Call(params={"identifier": NHS_NUMBER})
            case "GET", "/fhir/Task":
                return Call(params={"focus": referral})
            case "GET", ("/fhir/Appointment" | "/fhir/Observation" | "/fhir/QuestionnaireResponse"):
                return Call(params={"based-on": referral})
            case "GET", "/fhir/ServiceRequest":
                return Call(params={"patient.identifier": NHS_NUMBER})
            case "GET", "/fhir/AuditEvent":
                return Call(params={"entity": referral})
            case "GET", "/api/v1/deliveries":
                return Call(params={"referral": self.case.referral_id})
            case "GET", (
                "/api/v1/worklist" | "/api/v1/reports/activity" | "/api/v1/reports/staff-hub"
            ):
                return Call(params={"service": self.orgs.service})
            case "POST", "/api/v1/cases/{case_id}/events":
                return Call(json={"type": "contact.attempted", "outcome": "no-answer"})
            case "POST", "/api/v1/clients":
                organisation = self.orgs.of(caller)
                return Call(json={"name": "new", "role": "reporting", "organisation": organisation})
            case "POST", "/api/v1/imports":
                # Empty: refused after the organisation check, so no background job is left running.
                ndjson = {"Content-Type": "application/x-ndjson"}
                return Call(
                    content=b"", headers=ndjson, params={"organisation": self.orgs.of(caller)}
                )
            case "PUT", "/api/v1/clients/{client_id}/acts-for":
                return Call(json={"organisations": []})
            case "PUT", "/api/v1/clients/{client_id}/public-key":
                return Call(json={"jwk": PUBLIC_JWK})
            case "POST", "/api/v1/services":
                service_id = f"svc-{uuid.uuid4().hex[:12]}"
                body = {
                    "id": service_id,
                    "name": "New",
                    "organisation": self.orgs.service_organisation,
                    "adapter": "local",
                }
                return Call(json=body)
            case "PUT", "/api/v1/clinical-routes/{organisation}":
                config = {"base_url": HOOK_URL.removesuffix("/hook") + "/fhir"}
                return Call(json={"adapter": "fhir_push", "adapter_config": config})
            case "POST", "/api/v1/subscriptions":
                return Call(json={"url": HOOK_URL, "events": ["referral.received"]})
            case "PATCH", "/api/v1/subscriptions/{subscription_id}":
                return Call(json={"description": "changed"})
            case "POST", "/api/v1/deliveries/replay":
                return Call(json={"referral": self.case.referral_id})
            case "POST", "/api/v1/adapters/{adapter}/{service_id}/webhook":
                return Call(content=b'{"type": "case.accepted"}')
        return Call()

    def markers(self) -> set[str]:
        """What identifies this world's organisations' data in an answer: every id of theirs and
        their ODS codes (not the service's id: services are directory data, public)."""
        resources = {i for ids in self.resources.values() for i in ids}
        return (
            {self.case.referral_id, self.case.case_id, self.cancellable_id, self.audit_id}
            | {self.import_job}
            | resources
            | set(self.subscriptions.values())
            | self.delivery_ids
            | set(self.clients.values())
            | self.destinations
            | ({self.orgs.referrer, self.orgs.service_organisation} if self.orgs.marked else set())
        )


async def new_client(
    bridge: Bridge, role: str, organisation: str, default_service: str | None = None
) -> tuple[str, dict[str, str]]:
    """A client made by the bootstrap admin: its id and its key's headers."""
    body = {"name": f"{role} {organisation}", "role": role, "organisation": organisation}
    if default_service:
        body["default_service"] = default_service
    response = await bridge.http.post("/api/v1/clients", json=body, headers=bridge.admin)
    assert response.status_code == 201, response.text
    created = response.json()
    return created["id"], {"Authorization": f"Bearer {created['api_key']}"}


async def build_world(bridge: Bridge, orgs: Organisations = FIRST) -> World:
    await bridge.service(orgs.service, orgs.service_organisation)
    elemental = {
        "id": orgs.elemental,
        "name": "A hub on Elemental",
        "organisation": orgs.service_organisation,
        "adapter": "elemental",
        "adapter_config": {
            "base_url": HOOK_URL.removesuffix("/hook"),
            "api_key": "elemental-key",
            "webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        },
    }
    response = await bridge.http.post("/api/v1/services", json=elemental, headers=bridge.admin)
    assert response.status_code == 201, response.text
    routes = {}
    for organisation in (orgs.referrer, orgs.service_organisation):
        response = await bridge.http.put(
            f"/api/v1/clinical-routes/{organisation}",
            json={"adapter": "fhir_push", "adapter_config": {"base_url": HOOK_URL + "/fhir"}},
            headers=bridge.admin,
        )
        assert response.status_code == 200, response.text
        routes[organisation] = response.json()["destination_id"]
    clients: dict[str, str] = {}
    keys: dict[str, dict[str, str]] = {}
    for role in Role:
        organisation = orgs.referrer if role is CLINICAL else orgs.service_organisation
        clients[role.value], keys[role.value] = await new_client(
            bridge, role.value, organisation, default_service=orgs.service
        )
    clients["spare"], _ = await new_client(bridge, "reporting", orgs.service_organisation)
    keys["bootstrap admin"] = BOOTSTRAP_ADMIN
    keys["wrong key"] = {"Authorization": "Bearer spb_not_a_key_" + "y" * 30}
    keys["no key"] = {}
    # Subscriptions first, so the referral below makes deliveries to them.
    subscriptions = {
        caller: await subscribe(bridge, keys[caller])
        for caller in (*ROLE_CALLERS, "bootstrap admin")
        if caller != "reporting"
    }
    case = await open_case(
        bridge,
        service=orgs.service,
        service_organisation=orgs.service_organisation,
        referrer_organisation=orgs.referrer,
        register=False,
    )
    await record_case_work(case)
    resources = await case_resources(bridge, case)
    cancellable = await bridge.refer(
        keys["clinical-system"],
        referral_resource(orgs.service, requester=requester_of(orgs.referrer)),
    )
    assert cancellable.status_code == 201, cancellable.text
    cancellation = {**cancellable.json(), "status": "revoked"}
    deliveries = {}
    for caller in ("admin", "bootstrap admin"):
        listed = await bridge.http.get(
            "/api/v1/deliveries", params={"referral": case.referral_id}, headers=keys[caller]
        )
        assert listed.status_code == 200, listed.text
        deliveries[caller] = listed.json()["items"][0]["id"]
    every_delivery = await bridge.http.get(
        "/api/v1/deliveries",
        params={"referral": case.referral_id, "limit": 100},
        headers=bridge.admin,
    )
    delivery_ids = {item["id"] for item in every_delivery.json()["items"]}
    # Every destination of the world: its routes, its platform, its subscriptions.
    stats = await bridge.http.get("/api/v1/deliveries/stats", headers=bridge.admin)
    services = {orgs.service, orgs.elemental}
    destinations = {
        queue["destination_id"]
        for queue in stats.json()["destinations"]
        if queue["organisation"] in routes or queue["service_id"] in services
    } | {subscriptions["bootstrap admin"]}
    assert set(routes.values()) | set(subscriptions.values()) <= destinations
    audit = await bridge.http.get(
        "/fhir/AuditEvent",
        params={"entity": f"ServiceRequest/{case.referral_id}", "action": "C"},
        headers=bridge.admin,
    )
    assert audit.status_code == 200, audit.text
    audit_id = audit.json()["entry"][0]["resource"]["id"]
    fhir_subscriptions = {}
    for caller in subscriptions:
        made = await bridge.http.post(
            "/fhir/Subscription",
            content=orjson.dumps(fhir_subscription(HOOK_URL)),
            headers={**keys[caller], **FHIR_JSON},
        )
        assert made.status_code == 201, made.text
        fhir_subscriptions[caller] = made.json()["id"]
    destinations |= set(fhir_subscriptions.values())
    world = World(
        orgs,
        keys,
        case,
        cancellable.json()["id"],
        cancellation,
        resources,
        subscriptions,
        deliveries,
        clients,
        routes,
        audit_id,
        destinations,
        delivery_ids,
    )
    world.fhir_subscriptions = fhir_subscriptions
    # One line the import refuses: a job to read, and nothing of the world changed by it.
    started = await bridge.http.post(
        "/api/v1/imports",
        content=b"{}\n",
        headers={**keys["admin"], "Content-Type": "application/x-ndjson"},
    )
    assert started.status_code == 202, started.text
    world.import_job = started.json()["id"]
    return world


@pytest.fixture
async def lenient(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client that returns the app's 500 instead of raising, so the matrix reports them all."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def _order(key: RouteKey) -> tuple[bool, str, str]:
    # Deletes and revocations last: the rest need what they remove.
    return (key[0] == "DELETE" or key[1].endswith("/revoke"), key[1], key[0])


ACTS_FOR = ("PUT", "/api/v1/clients/{client_id}/acts-for")


def problems_of(
    key: RouteKey,
    rule: Rule,
    caller: str,
    response: httpx.Response,
    public: dict[str, int],
    real_ids: bool,
) -> list[str]:
    method, path = key
    status = response.status_code
    where = f"{method} {path} as {caller}: {status}"
    if status >= 500:
        return [f"{where} (a server error): {response.text[:300]}"]
    if isinstance(rule, Public):
        expected = PUBLIC_OUTCOMES.get(key, public.setdefault(f"{method} {path}", status))
        return [] if status == expected else [f"{where}, expected {expected} (public route)"]
    if caller in ("no key", "wrong key"):
        return [] if status == 401 else [f"{where}, expected 401"]
    role = ADMIN if caller == "bootstrap admin" else Role(caller)
    if role not in PERMISSIONS[rule]:
        refused = status == 403 and f"may not do '{rule}'" in response.text
        return [] if refused else [f"{where}, expected 403 from the role check ({rule})"]
    if key == ACTS_FOR and caller == "admin" and status == 403:
        # Only the installation's admin lets a client refer for other organisations.
        return [] if "installation's admin" in response.text else [f"{where}: {response.text}"]
    if status in (401, 403):
        return [f"{where}: the role may do {rule}: {response.text[:200]}"]
    if method == "GET" and real_ids and status != 200:
        return [f"{where}, expected 200 (a read of the caller's own data): {response.text[:200]}"]
    return []


async def test_every_route_for_every_caller(app: Any, bridge: Bridge, lenient: Any) -> None:
    world = await build_world(bridge)
    rules = route_rules(app)
    outcomes: dict[tuple[str, str, str], int] = {}
    problems: list[str] = []
    public_seen: dict[str, int] = {}
    for key in sorted(rules, key=_order):
        method, template = key
        for caller in CALLERS:
            call = world.call(method, template, caller)
            url, real_ids = world.path(method, template, caller)
            response = await lenient.request(
                method,
                url,
                params=call.params,
                json=call.json,
                content=call.content,
                headers={**call.headers, **world.keys[caller]},
            )
            outcomes[method, template, caller] = response.status_code
            problems += problems_of(key, rules[key], caller, response, public_seen, real_ids)
    assert not problems, "\n".join(problems)
    for method, template, caller, expected in HAND_WRITTEN_ROUTE_ROWS:
        assert outcomes[method, template, caller] == expected, (method, template, caller)
    # Reporting reaches no route of a patient-level operation.
    for (method, template), rule in rules.items():
        if rule in PATIENT_LEVEL:
            assert outcomes[method, template, "reporting"] == 403, (method, template)
    # The matrix did reach every protected route with every caller.
    assert len(outcomes) == len(rules) * len(CALLERS)


# --- 3b. the matrix across organisations --------------------------------------------------------


class Across(StrEnum):
    """What a route answers a caller of one organisation who names another organisation's data
    (its ids in the path, query or body, or its ODS code as the organisation acted for)."""

    UNKNOWN = "404: another organisation's object is as unknown as one that does not exist"
    REFUSED = "403: a create or change naming another organisation"
    FILTERED = "200: a list or search, with none of the other organisation's data in it"
    DIRECTORY = "200: services are directory data, the same for every organisation"
    OWN = "2xx: it makes the caller's own data, whichever organisation that concerns"
    NOT_SERVED = "404: the sandbox reset exists only in sandbox mode"


ACROSS: dict[RouteKey, Across] = {
    ("GET", "/fhir/ServiceRequest/{referral_id}"): Across.UNKNOWN,
    ("PUT", "/fhir/ServiceRequest/{referral_id}"): Across.UNKNOWN,
    ("GET", "/fhir/ServiceRequest/{referral_id}/$journey"): Across.UNKNOWN,
    ("GET", "/fhir/ServiceRequest"): Across.FILTERED,
    # A referral to another organisation's service is the referrer's own (it is the job).
    ("POST", "/fhir/ServiceRequest"): Across.OWN,
    ("POST", "/fhir"): Across.OWN,
    ("GET", "/fhir/Task/{task_id}"): Across.UNKNOWN,
    ("GET", "/fhir/Task"): Across.FILTERED,
    ("GET", "/fhir/Appointment/{resource_id}"): Across.UNKNOWN,
    ("GET", "/fhir/Appointment"): Across.FILTERED,
    ("GET", "/fhir/Observation/{resource_id}"): Across.UNKNOWN,
    ("GET", "/fhir/Observation"): Across.FILTERED,
    ("GET", "/fhir/QuestionnaireResponse/{resource_id}"): Across.UNKNOWN,
    ("GET", "/fhir/QuestionnaireResponse"): Across.FILTERED,
    ("GET", "/fhir/AuditEvent/{audit_id}"): Across.UNKNOWN,
    ("GET", "/fhir/AuditEvent"): Across.FILTERED,
    ("GET", "/api/v1/cases/{case_id}"): Across.UNKNOWN,
    ("POST", "/api/v1/cases/{case_id}/events"): Across.UNKNOWN,
    ("GET", "/api/v1/referrals/{referral_id}/journey-link"): Across.UNKNOWN,
    ("GET", "/api/v1/worklist"): Across.UNKNOWN,  # ?service= another's
    ("GET", "/api/v1/reports/activity"): Across.UNKNOWN,  # ?service= another's
    ("GET", "/api/v1/reports/staff-hub"): Across.UNKNOWN,  # ?service= another's
    ("POST", "/api/v1/clients"): Across.REFUSED,
    ("GET", "/api/v1/clients"): Across.FILTERED,
    ("POST", "/api/v1/clients/{client_id}/secret"): Across.UNKNOWN,
    ("PUT", "/api/v1/clients/{client_id}/public-key"): Across.UNKNOWN,
    ("POST", "/api/v1/clients/{client_id}/revoke"): Across.UNKNOWN,
    ("PUT", "/api/v1/clients/{client_id}/acts-for"): Across.UNKNOWN,
    ("POST", "/api/v1/imports"): Across.REFUSED,  # ?organisation= another's
    ("GET", "/api/v1/imports/{job_id}"): Across.UNKNOWN,
    ("POST", "/api/v1/services"): Across.REFUSED,
    ("GET", "/api/v1/services"): Across.DIRECTORY,
    ("GET", "/api/v1/services/{service_id}"): Across.DIRECTORY,
    ("GET", "/fhir/HealthcareService/{service_id}"): Across.DIRECTORY,
    # Another organisation's ODS code: known (200) only when it runs a service, as here.
    ("GET", "/fhir/Organization/{organisation}"): Across.DIRECTORY,
    ("PUT", "/api/v1/clinical-routes/{organisation}"): Across.REFUSED,
    ("GET", "/api/v1/clinical-routes/{organisation}"): Across.UNKNOWN,
    ("POST", "/api/v1/clinical-routes/{organisation}/capabilities"): Across.UNKNOWN,
    ("GET", "/api/v1/clinical-routes"): Across.FILTERED,
    # A subscription hears only of what its own organisation sees, whatever it filters on.
    ("POST", "/api/v1/subscriptions"): Across.OWN,
    ("GET", "/api/v1/subscriptions"): Across.FILTERED,
    ("GET", "/api/v1/subscriptions/{subscription_id}"): Across.UNKNOWN,
    ("PATCH", "/api/v1/subscriptions/{subscription_id}"): Across.UNKNOWN,
    ("DELETE", "/api/v1/subscriptions/{subscription_id}"): Across.UNKNOWN,
    ("POST", "/api/v1/subscriptions/{subscription_id}/rotate-secret"): Across.UNKNOWN,
    ("POST", "/api/v1/subscriptions/{subscription_id}/test"): Across.UNKNOWN,
    ("GET", "/api/v1/deliveries"): Across.FILTERED,  # ?referral= another's
    ("GET", "/api/v1/deliveries/stats"): Across.FILTERED,
    ("GET", "/api/v1/deliveries/{delivery_id}"): Across.UNKNOWN,
    ("POST", "/api/v1/deliveries/{delivery_id}/replay"): Across.UNKNOWN,
    ("POST", "/api/v1/deliveries/replay"): Across.FILTERED,  # {"referral": another's}
    ("POST", "/api/v1/sandbox/reset"): Across.NOT_SERVED,
    ("GET", "/fhir/Patient/{resource_id}"): Across.UNKNOWN,
    ("GET", "/fhir/Patient"): Across.FILTERED,
    # BaRS: a message whose NHSD-End-User-Organisation-ODS names another organisation.
    ("POST", "/fhir/$process-message"): Across.REFUSED,
    # FHIR Subscriptions hear only of what their own organisation sees (as webhooks).
    ("GET", "/fhir/Basic/{basic_id}"): Across.DIRECTORY,
    ("POST", "/fhir/Subscription"): Across.OWN,
    ("GET", "/fhir/Subscription"): Across.FILTERED,
    ("GET", "/fhir/Subscription/{fhir_subscription_id}"): Across.UNKNOWN,
    ("GET", "/fhir/Subscription/{fhir_subscription_id}/$status"): Across.UNKNOWN,
    ("GET", "/fhir/Subscription/{fhir_subscription_id}/$events"): Across.UNKNOWN,
    ("DELETE", "/fhir/Subscription/{fhir_subscription_id}"): Across.UNKNOWN,
}
# Every type we serve has its versions and POST _search, classified as its read and search are.
for _type, _id in (
    ("ServiceRequest", "referral_id"),
    ("Task", "task_id"),
    ("Patient", "resource_id"),
    ("Appointment", "resource_id"),
    ("Observation", "resource_id"),
    ("QuestionnaireResponse", "resource_id"),
):
    ACROSS[("GET", f"/fhir/{_type}/{{{_id}}}/_history/{{vid}}")] = Across.UNKNOWN
    ACROSS[("GET", f"/fhir/{_type}/{{{_id}}}/_history")] = Across.UNKNOWN
    ACROSS[("POST", f"/fhir/{_type}/_search")] = Across.FILTERED
_EXPECTED_ACROSS = {
    Across.UNKNOWN: 404,
    Across.REFUSED: 403,
    Across.FILTERED: 200,
    Across.DIRECTORY: 200,
    Across.NOT_SERVED: 404,
}


def test_every_route_is_classified_across_organisations() -> None:
    rules = route_rules(offline_app())
    protected = {key for key, rule in rules.items() if isinstance(rule, Operation)}
    assert set(ACROSS) == protected, (protected - set(ACROSS), set(ACROSS) - protected)


def across_problems(
    key: RouteKey, rule: Rule, caller: str, response: httpx.Response, markers: set[str]
) -> list[str]:
    """What is wrong with the answer to a caller naming another organisation's data; ``markers``
    identify that data (those the caller sent itself, which a search's self link repeats, are
    not counted)."""
    method, path = key
    status = response.status_code
    where = f"{method} {path} as another organisation's {caller}: {status}"
    if status >= 500:
        return [f"{where} (a server error): {response.text[:300]}"]
    kind = ACROSS.get(key)
    problems = []
    if kind is not Across.DIRECTORY:
        sent = f"{response.request.url} {response.request.content!r}"
        leaked = sorted(m for m in markers if m in response.text and m not in sent)
        if leaked:
            problems.append(f"{where}: the answer holds the other organisation's {leaked}")
    if isinstance(rule, Public):
        expected = PUBLIC_OUTCOMES.get(key)
        if expected is not None and status != expected:
            problems.append(f"{where}, expected {expected} (public route)")
        return problems
    assert kind is not None, key
    if Role(caller) not in PERMISSIONS[rule]:
        if status != 403 or f"may not do '{rule}'" not in response.text:
            problems.append(f"{where}, expected 403 from the role check ({rule})")
        return problems
    if kind is Across.OWN:
        if not 200 <= status < 300:
            problems.append(f"{where}, expected 2xx (the caller's own): {response.text[:200]}")
    elif status != _EXPECTED_ACROSS[kind]:
        problems.append(f"{where}, expected {kind.value}: {response.text[:200]}")
    elif kind is Across.REFUSED and "must be your own organisation" not in response.text:
        problems.append(f"{where}: not refused by the organisation rule: {response.text[:200]}")
    return problems


async def organisation_rows(database_url: str, world: World) -> dict[str, list[Any]]:
    """Every row of the world's organisations that an admin operation could change: clients,
    services, destinations (routes, platforms, subscriptions), the referrals' deliveries,
    cases, events and the referrals themselves."""
    organisations = [world.orgs.referrer, world.orgs.service_organisation]
    referrals = [world.case.referral_id, world.cancellable_id]
    queries = {
        "api_clients": "SELECT * FROM api_clients WHERE organisation IN :orgs",
        "services": "SELECT id, name, organisation, adapter, adapter_config, delivers "
        "FROM services WHERE organisation IN :orgs",
        "destinations": "SELECT * FROM destinations WHERE id IN :destinations",
        "deliveries": "SELECT * FROM deliveries WHERE referral_id IN :referrals",
        "cases": "SELECT * FROM cases WHERE referral_id IN :referrals",
        "case_events": "SELECT e.* FROM case_events e JOIN cases c ON c.id = e.case_id "
        "WHERE c.referral_id IN :referrals",
        "referrals": "SELECT id, status, version_id, last_updated FROM referrals "
        "WHERE id IN :referrals",
    }
    values = {"orgs": organisations, "referrals": referrals, "destinations": world.destinations}
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = {}
            for table, sql in queries.items():
                statement = text(sql).bindparams(
                    *(bindparam(name, expanding=True) for name in values if f":{name}" in sql)
                )
                names = {name: list(values[name]) for name in values if f":{name}" in sql}
                result = await connection.execute(statement, names)
                rows[table] = sorted((tuple(row) for row in result), key=repr)
            return rows
    finally:
        await engine.dispose()


async def make_dead_letters(database_url: str, world: World) -> None:
    """The world's referral's deliveries become dead letters (replayable, so a replay that
    reached them would show)."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE deliveries SET state = 'dead' WHERE referral_id = :referral"),
                {"referral": world.case.referral_id},
            )
    finally:
        await engine.dispose()


def _across_order(key: RouteKey) -> tuple[bool, bool, str, str]:
    # The audit trail is searched first: the attempts below are recorded under the caller's own
    # organisation, naming the other's ids it tried (its own admin may see its own attempts).
    return (key[1] != "/fhir/AuditEvent", *_order(key))


async def test_every_route_across_organisations(
    app: Any, bridge: Bridge, lenient: Any, database_url: str
) -> None:
    """Every route, for every role of one organisation (admins included), naming another
    organisation's data, writes included: never 2xx on it, never any of it in an answer; and
    nothing of the other organisation changes. Both ways round. The installation's admin, asked
    the same, finds it all (so the checks could fail)."""
    first = await build_world(bridge, FIRST)
    second = await build_world(bridge, SECOND)
    rules = route_rules(app)
    for intruder, target in ((first, second), (second, first)):
        await make_dead_letters(database_url, target)
        before = await organisation_rows(database_url, target)
        markers = target.markers()
        problems: list[str] = []
        for key in sorted(rules, key=_across_order):
            method, template = key
            for caller in ROLE_CALLERS:
                call = target.call(method, template, caller)
                if key in (("POST", "/fhir/ServiceRequest"), ("POST", "/fhir")) and call.content:
                    # A referral to the other organisation's service, but requested by the
                    # intruder's own organisation: a client refers only for its own (issue 15).
                    call.content = call.content.replace(
                        b'"RW4"', f'"{intruder.orgs.referrer}"'.encode()
                    )
                # The client named is the other organisation's clinical system (issue 13).
                url, _ = target.path(method, template, caller, client="clinical-system")
                response = await lenient.request(
                    method,
                    url,
                    params=call.params,
                    json=call.json,
                    content=call.content,
                    headers={**call.headers, **intruder.keys[caller]},
                )
                problems += across_problems(key, rules[key], caller, response, markers)
        assert not problems, "\n".join(problems)
        assert await organisation_rows(database_url, target) == before

        # The installation's admin is the one caller that crosses organisations: the same
        # lists and searches show the target's data to it, and the same reads find it.
        for key, kind in ACROSS.items():
            method, template = key
            if method != "GET" or kind not in (Across.FILTERED, Across.UNKNOWN):
                continue
            call = target.call(method, template, "bootstrap admin")
            url, _ = target.path(method, template, "bootstrap admin", client="clinical-system")
            response = await lenient.get(url, params=call.params, headers=BOOTSTRAP_ADMIN)
            assert response.status_code == 200, (key, response.text)
            if kind is Across.FILTERED:
                assert any(marker in response.text for marker in markers), key
        # And the target's own admin replays its dead letters, which nobody else could.
        replayed = await lenient.post(
            "/api/v1/deliveries/replay",
            json={"referral": target.case.referral_id},
            headers=target.keys["admin"],
        )
        assert replayed.status_code == 200 and replayed.json()["replayed"] > 0, replayed.text


# --- 4. organisation isolation ------------------------------------------------------------------


@dataclass
class Side:
    """One organisation pair's referral: referrer → service, with everything made for it."""

    case: OpenCase
    identifier: str  # system|value of the referrer's id
    resources: dict[str, list[str]]  # FHIR type → ids (ServiceRequest: the prescriptions)
    service: str
    callers: dict[str, dict[str, str]]  # clinical-system (referrer), advisor, platform, admin
    subscriptions: dict[str, str]  # caller → a subscription it made


async def build_side(
    bridge: Bridge, service: str, service_organisation: str, referrer_organisation: str
) -> Side:
    await bridge.service(service, service_organisation)
    case = await open_case(
        bridge,
        service=service,
        service_organisation=service_organisation,
        referrer_organisation=referrer_organisation,
        register=False,
    )
    await record_case_work(case)
    referral = (
        await bridge.http.get(f"/fhir/ServiceRequest/{case.referral_id}", headers=case.referrer)
    ).json()
    identifier = referral["identifier"][0]
    callers = {
        "clinical-system": case.referrer,
        "advisor": case.advisor,
        "platform": await bridge.key("platform", service_organisation),
        "admin": await bridge.key("admin", service_organisation),
    }
    return Side(
        case=case,
        identifier=f"{identifier['system']}|{identifier['value']}",
        resources=await case_resources(bridge, case),
        service=service,
        callers=callers,
        subscriptions={
            name: await subscribe(bridge, callers[name]) for name in ("clinical-system", "advisor")
        },
    )


def found_ids(response: httpx.Response) -> set[str]:
    """The ids in a searchset Bundle (checking that its total counts only what it shows)."""
    assert response.status_code == 200, response.text
    bundle = response.json()
    ids = {entry["resource"]["id"] for entry in bundle.get("entry", [])}
    assert bundle["total"] == len(ids), bundle
    return ids


def owned_ids(side: Side) -> set[str]:
    """The ids of the side's referral, Task (= case) and every resource of its case."""
    resources = {i for ids in side.resources.values() for i in ids}
    return {side.case.referral_id, side.case.case_id} | resources


async def check_isolation(http: httpx.AsyncClient, mine: Side, other: Side) -> None:
    """``other``'s callers see nothing of ``mine``; ``mine``'s callers, asked the same, do."""
    referral, case_id = mine.case.referral_id, mine.case.case_id
    based_on = f"ServiceRequest/{referral}"
    by_id = [
        f"/fhir/ServiceRequest/{referral}",
        f"/fhir/ServiceRequest/{referral}/$journey",
        f"/fhir/Task/{case_id}",
        f"/api/v1/cases/{case_id}",
        f"/api/v1/referrals/{referral}/journey-link",
        *(
            f"/fhir/{resource_type}/{resource_id}"
            for resource_type, ids in mine.resources.items()
            for resource_id in ids
        ),
    ]
    # (path, query, the ids of ``mine`` it finds for ``mine``'s callers)
    searches: list[tuple[str, dict[str, str], set[str]]] = [
        ("/fhir/ServiceRequest", {"identifier": mine.identifier}, {referral}),
        ("/fhir/ServiceRequest", {"patient.identifier": NHS_NUMBER}, {referral}),
        ("/fhir/ServiceRequest", {"_id": referral}, {referral}),
        ("/fhir/ServiceRequest", {"based-on": based_on}, set(mine.resources["ServiceRequest"])),
        ("/fhir/Task", {"focus": f"{based_on},ServiceRequest/{other.case.referral_id}"}, {case_id}),
    ]
    for resource_type in ("Appointment", "Observation", "QuestionnaireResponse"):
        ids = set(mine.resources[resource_type])
        searches += [
            (f"/fhir/{resource_type}", {"based-on": based_on}, ids),
            (f"/fhir/{resource_type}", {"patient": NHS_NUMBER}, ids),
            (f"/fhir/{resource_type}", {"patient.identifier": NHS_NUMBER}, ids),
            (f"/fhir/{resource_type}", {"_id": ",".join(ids)}, ids),
        ]

    for name, headers in other.callers.items():
        for path in by_id:
            response = await http.get(path, headers=headers)
            assert response.status_code == 404, (name, path, response.text)
        for path, query, _ in searches:
            found = found_ids(await http.get(path, params=query, headers=headers))
            assert not found & owned_ids(mine), (name, path, query)
        # Writes to what is not yours are as unknown as reads.
        if name == "clinical-system":
            current = (
                await http.get(f"/fhir/ServiceRequest/{referral}", headers=mine.case.referrer)
            ).json()
            response = await http.put(
                f"/fhir/ServiceRequest/{referral}",
                content=orjson.dumps({**current, "status": "revoked"}),
                headers={**headers, **FHIR_JSON},
            )
            assert response.status_code == 404, response.text
        else:
            response = await http.post(
                f"/api/v1/cases/{case_id}/events",
                json={"type": "contact.attempted", "outcome": "no-answer"},
                headers=headers,
            )
            assert response.status_code == 404, (name, response.text)
            worklist = await http.get("/api/v1/worklist", headers=headers)
            assert worklist.status_code == 200, worklist.text
            listed = {item["case_id"] for item in worklist.json()["items"]}
            assert listed == {other.case.case_id}, (name, listed)
            foreign = await http.get(
                "/api/v1/worklist", params={"service": mine.service}, headers=headers
            )
            assert foreign.status_code == 404, (name, foreign.text)
        # Subscriptions belong to an organisation: another's are unknown, to read and to change.
        listed_subscriptions = await http.get("/api/v1/subscriptions", headers=headers)
        assert not {s["id"] for s in listed_subscriptions.json()} & set(mine.subscriptions.values())
        for subscription_id in mine.subscriptions.values():
            path = f"/api/v1/subscriptions/{subscription_id}"
            for method, suffix, body in [
                ("GET", "", None),
                ("PATCH", "", {"description": "not yours"}),
                ("POST", "/rotate-secret", None),
                ("POST", "/test", None),
                ("DELETE", "", None),
            ]:
                response = await http.request(method, path + suffix, json=body, headers=headers)
                assert response.status_code == 404, (name, method, suffix, response.text)

    # The same questions from the owners' side find everything (so the 404s above are isolation,
    # not broken ids). Both ends of the referral see it; the advisor side sees the worklist item.
    for name, headers in mine.callers.items():
        for path in by_id:
            response = await http.get(path, headers=headers)
            assert response.status_code == 200, (name, path, response.text)
        for path, query, expected in searches:
            found = found_ids(await http.get(path, params=query, headers=headers))
            assert expected <= found, (name, path, query)
            assert not found & owned_ids(other), (name, path, query)
    for name, subscription_id in mine.subscriptions.items():
        response = await http.get(
            f"/api/v1/subscriptions/{subscription_id}", headers=mine.callers[name]
        )
        assert response.status_code == 200, response.text


async def test_organisations_see_only_their_own_referrals(app: Any, bridge: Bridge) -> None:
    # RW4 refers to a service of LR001; RX1 refers to a service of ZZ001. Same patient.
    first = await build_side(bridge, "life-rooms", "LR001", "RW4")
    second = await build_side(bridge, "zz-service", "ZZ001", "RX1")
    await check_isolation(bridge.http, first, second)
    await check_isolation(bridge.http, second, first)

    # The referrer's subscription is not the service organisation's either (one per organisation).
    response = await bridge.http.get(
        f"/api/v1/subscriptions/{first.subscriptions['clinical-system']}",
        headers=first.callers["advisor"],
    )
    assert response.status_code == 404, response.text

    # Both ends see a referral, but each changes only its own part: the referrer's organisation
    # records no case events (even with an advisor key), the service's cancels no referral.
    referrer_side_advisor = await bridge.key("advisor", "RW4")
    response = await bridge.http.post(
        f"/api/v1/cases/{first.case.case_id}/events",
        json={"type": "contact.attempted", "outcome": "no-answer"},
        headers=referrer_side_advisor,
    )
    assert response.status_code == 403, response.text
    service_side_clinical = await bridge.key("clinical-system", "LR001")
    path = f"/fhir/ServiceRequest/{first.case.referral_id}"
    current = (await bridge.http.get(path, headers=service_side_clinical)).json()
    response = await bridge.http.put(
        path,
        content=orjson.dumps({**current, "status": "revoked"}),
        headers={**service_side_clinical, **FHIR_JSON},
    )
    assert response.status_code == 403, response.text

    # A journey-page token opens only the referral it was issued for.
    link = await bridge.http.get(
        f"/api/v1/referrals/{second.case.referral_id}/journey-link", headers=second.case.referrer
    )
    assert link.status_code == 200, link.text
    token = httpx.URL(link.json()["url"]).params["token"]
    own = await bridge.http.get(f"/journey/{second.case.referral_id}", params={"token": token})
    assert own.status_code == 200
    foreign = await bridge.http.get(f"/journey/{first.case.referral_id}", params={"token": token})
    assert foreign.status_code == 403
    assert "9000000009" not in foreign.text and first.case.referral_id not in foreign.text

    # No search pulls other resources in around the organisation filter: what _include and
    # _revinclude bring belongs to the matches, which the caller sees; an include this server
    # does not follow is ignored (and said), never followed.
    theirs = {first.case.referral_id, first.case.case_id} | {
        i for ids in first.resources.values() for i in ids
    }
    ours = {second.case.referral_id, second.case.case_id}
    for path, query in [
        (
            "/fhir/ServiceRequest",
            [("_include", "ServiceRequest:patient"), ("_revinclude", "Task:focus")],
        ),
        (
            "/fhir/Task",
            [
                ("_include", "Task:focus"),
                ("_include", "Task:output"),
                ("_include", "Task:patient"),
                ("_include", "*"),
            ],
        ),
        ("/fhir/Appointment", [("_revinclude", "Observation:based-on")]),
    ]:
        response = await bridge.http.get(path, params=query, headers=second.callers["admin"])
        assert response.status_code == 200, (path, response.text)
        assert not {i for i in theirs if i in response.text}, path
        if path != "/fhir/Appointment":
            assert ours <= {i for i in ours if i in response.text}, path

    # Deliveries (which name referrals and destinations) are admins' only; the rest get 403.
    for side in (first, second):
        for name in ("clinical-system", "advisor", "platform"):
            for path in ("/api/v1/deliveries", f"/api/v1/deliveries/{DUMMY_ID}"):
                response = await bridge.http.get(path, headers=side.callers[name])
                assert response.status_code == 403, (name, path)
