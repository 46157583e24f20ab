"""Schemathesis against the running app (issue 6, scope 3): every operation in the served OpenAPI
document, with generated valid and invalid requests, must answer without a 5xx and as the
document says (status, content type, headers, body schema).

The app runs in uvicorn on a free loopback port, on a migrated database of each backend, with a
small world seeded through the API (a service, a key of every role, a referral with case records,
a referral to cancel, subscriptions, a clinical route, a delivery, a client to manage). Each
operation is called with the key of a role allowed to call it (PERMISSIONS), and, when it takes
path parameters the world has real values for, called again with those (so reads and writes of
real objects are checked, not only 404s).

Checks run: every built-in check but the ones in EXCLUDED_CHECKS, each with its reason.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import load_all_checks
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi import checks as openapi_checks

from app.fhir.http import example as fhir_example
from app.main import create_app
from app.main import openapi_document as document
from app.security.policy import route_rules
from app.security.roles import PERMISSIONS, Operation, Role
from tests.conftest import (
    ADMIN_KEY,
    FHIR_JSON,
    empty_database,
    make_settings,
    prepared_url,
    referral_resource,
)
from tests.support.receiver import free_port

# Bounded: a few examples per operation and mode keeps the run near a minute per backend on a
# slow two-core machine (the examples in the document are sent as well).
MAX_EXAMPLES = 8

load_all_checks()
# Checks not run, and why:
EXCLUDED_CHECKS: dict[Any, str] = {
    # Wants 2xx for any body the schema allows. FHIR bodies are documented as "a FHIR R4
    # resource" (the full R4 rules do not fit in JSON Schema), so most generated bodies are
    # rightly refused 400/422; and ids that the world does not hold are rightly 404.
    openapi_checks.positive_data_acceptance: "FHIR bodies and unknown ids are rightly refused",
}

BOOTSTRAP_ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# Which role calls an operation: the first of these the operation allows.
ROLE_PREFERENCE = [Role.CLINICAL_SYSTEM, Role.ADVISOR, Role.PLATFORM, Role.REPORTING, Role.ADMIN]
HOOK_URL = f"http://127.0.0.1:{free_port()}/hook"  # a closed loopback port: pings fail fast


@dataclass
class World:
    keys: dict[Role, dict[str, str]]
    rules: dict[tuple[str, str], Any]
    values: dict[str, str]
    resources: dict[str, str]
    cancellable_id: str

    def role_for(self, method: str, path: str) -> Role | None:
        rule = self.rules.get((method.upper(), path))
        if not isinstance(rule, Operation):
            return None
        return next(role for role in ROLE_PREFERENCE if role in PERMISSIONS[rule])

    def headers_for(self, method: str, path: str) -> dict[str, str]:
        role = self.role_for(method, path)
        return {} if role is None else self.keys[role]

    def real_path_parameters(self, method: str, path: str, names: list[str]) -> dict[str, str]:
        values = dict(self.values)
        if (method.upper(), path) == ("PUT", "/fhir/ServiceRequest/{referral_id}"):
            values["referral_id"] = self.cancellable_id
        if path.startswith("/fhir/") and "/{resource_id}" in path:
            resource_type = path.split("/")[2]
            if resource_type in self.resources:
                values["resource_id"] = self.resources[resource_type]
        return {name: values[name] for name in names if name in values}


def _check(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def seed(base_url: str, app: Any) -> World:
    """The world, made through the API as an integrator would."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        admin = BOOTSTRAP_ADMIN
        service = {"id": "life-rooms", "name": "Life Rooms", "organisation": "LR001"}
        _check(
            http.post("/api/v1/services", json={**service, "adapter": "local"}, headers=admin), 201
        )
        keys: dict[Role, dict[str, str]] = {Role.ADMIN: admin}
        for role in (Role.CLINICAL_SYSTEM, Role.ADVISOR, Role.PLATFORM, Role.REPORTING):
            organisation = "RW4" if role is Role.CLINICAL_SYSTEM else "LR001"
            body = {
                "name": f"{role} {organisation}",
                "role": role.value,
                "organisation": organisation,
                "default_service": "life-rooms",
            }
            created = _check(http.post("/api/v1/clients", json=body, headers=admin), 201)
            keys[role] = {"Authorization": f"Bearer {created['api_key']}"}
        managed = _check(
            http.post(
                "/api/v1/clients",
                json={"name": "managed", "role": "reporting", "organisation": "LR001"},
                headers=admin,
            ),
            201,
        )
        route = {"adapter": "fhir_push", "adapter_config": {"base_url": HOOK_URL + "/fhir"}}
        _check(http.put("/api/v1/clinical-routes/RW4", json=route, headers=admin))
        subscription = _check(
            http.post(
                "/api/v1/subscriptions",
                json={"url": HOOK_URL},
                headers=keys[Role.CLINICAL_SYSTEM],
            ),
            201,
        )
        referrer = {**keys[Role.CLINICAL_SYSTEM], **FHIR_JSON}
        fhir_subscription = _check(
            http.post(
                "/fhir/Subscription",
                content=orjson.dumps(
                    {
                        **fhir_example("Subscription-referral-task-changed"),
                        "channel": {
                            **fhir_example("Subscription-referral-task-changed")["channel"],
                            "endpoint": HOOK_URL,
                        },
                    }
                ),
                headers=referrer,
            ),
            201,
        )
        referral = _check(
            http.post(
                "/fhir/ServiceRequest",
                content=orjson.dumps(referral_resource("life-rooms")),
                headers=referrer,
            ),
            201,
        )
        cancellable = _check(
            http.post(
                "/fhir/ServiceRequest",
                content=orjson.dumps(referral_resource("life-rooms")),
                headers=referrer,
            ),
            201,
        )
        tasks = _check(
            http.get(
                "/fhir/Task",
                params={"focus": f"ServiceRequest/{referral['id']}"},
                headers=referrer,
            )
        )
        case_id = tasks["entry"][0]["resource"]["id"]
        advisor = keys[Role.ADVISOR]
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
                "provider": "Citizens Advice",
                "activity": "Housing advice",
            },
            {"type": "outcome.recorded", "stage": "start", "items": [3, 3, 3, 3, 3, 3, 3]},
        ):
            _check(http.post(f"/api/v1/cases/{case_id}/events", json=event, headers=advisor), 201)
        detail = _check(http.get(f"/api/v1/cases/{case_id}", headers=advisor))
        resources = {}
        for key in ("appointments", "observations", "questionnaire_responses"):
            resource_type, _, resource_id = detail["resources"][key][0].partition("/")
            resources[resource_type] = resource_id
        resources["Patient"] = detail["resources"]["patient"].removeprefix("Patient/")
        deliveries = _check(
            http.get("/api/v1/deliveries", params={"referral": referral["id"]}, headers=admin)
        )
        link = _check(
            http.get(f"/api/v1/referrals/{referral['id']}/journey-link", headers=referrer)
        )
    values = {
        "referral_id": referral["id"],
        "task_id": case_id,
        "case_id": case_id,
        "service_id": "life-rooms",
        "organisation": "RW4",
        "delivery_id": deliveries["items"][0]["id"],
        "subscription_id": subscription["id"],
        "fhir_subscription_id": fhir_subscription["id"],
        "basic_id": "referral-task-changed",  # the subscription topic
        "client_id": managed["id"],
        "token": httpx.URL(link["url"]).params["token"],  # the journey page's query
        "vid": "1",  # every resource has its first version
    }
    return World(keys, route_rules(app), values, resources, cancellable["id"])


class Server:
    """The app in uvicorn on a loopback port, in a thread (its own event loop)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _documented_operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every operation the app documents (no database needed)."""
    return [
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method in {"get", "put", "post", "patch", "delete"}
    ]


@pytest.fixture(scope="module")
def running(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, World, Any]]:
    """The app serving on a loopback port, the world seeded, and its served document loaded."""
    database_url = prepared_url(backend, tmp_path_factory)
    asyncio.run(empty_database(database_url))
    app = create_app(
        make_settings(
            database_url,
            allowed_outbound_hosts=["127.0.0.1"],
            rate_limit_per_minute=0,  # 429 is documented everywhere; it is not the subject here
            rate_limit_anonymous_per_minute=0,
        )
    )
    with Server(app) as server:
        world = seed(server.url, app)
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        schema.config.update(base_url=server.url)
        yield server, world, schema


def _cases(operation: Any) -> Iterator[tuple[str, Any, int]]:
    """(what, strategy, how many) for an operation: its documented examples, then generated
    valid and invalid requests (an operation with nothing to make invalid has no negative)."""
    examples = operation.get_strategies_from_examples()
    if examples:
        yield "examples", st.one_of(examples), 2 * len(examples)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        yield mode.value, operation.as_strategy(generation_mode=mode), MAX_EXAMPLES


@pytest.mark.parametrize(("method", "path"), _documented_operations(), ids=lambda value: str(value))
def test_every_operation_answers_as_documented(
    method: str, path: str, running: tuple[Server, World, Any]
) -> None:
    _server, world, schema = running
    operation = schema[path][method]
    headers = world.headers_for(method, path)
    failures: dict[str, str] = {}
    excluded = list(EXCLUDED_CHECKS)

    statuses: list[int] = []  # of the calls made with the world's real ids

    with requests.Session() as session:

        def call(case: Any) -> int:
            try:
                response = case.call_and_validate(
                    headers=headers, session=session, excluded_checks=excluded
                )
            except FailureGroup as failure:
                failures.setdefault(str(failure).split("\n", 1)[0], str(failure))
                return 0
            status: int = response.status_code
            return status

        def check(case: Any) -> None:
            call(case)
            names = list((case.path_parameters or {}).keys())
            real = world.real_path_parameters(method, path, names)
            if real and not (case.meta and case.meta.is_negative_at(ParameterLocation.PATH)):
                case.path_parameters = {**case.path_parameters, **real}
                if path == "/journey/{referral_id}":
                    case.query = {**(case.query or {}), "token": world.values["token"]}
                statuses.append(call(case))

        for mode, strategy, count in _cases(operation):

            @given(case=strategy)
            @settings(
                max_examples=count,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
            )
            def run(case: Any) -> None:
                check(case)

            try:
                run()
            except Unsatisfiable:
                # Nothing in the operation can be made invalid (no parameters, no body, or
                # only free-form strings): there is no negative case to send.
                assert mode == GenerationMode.NEGATIVE.value, f"no {mode} case"
    assert not failures, "\n\n".join(list(failures.values())[:5])
    if statuses and method == "GET":
        # The world was used: a read of real objects with an allowed key finds them.
        assert any(200 <= status < 300 for status in statuses), statuses
