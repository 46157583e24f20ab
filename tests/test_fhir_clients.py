"""Real FHIR clients against the real server (issue 16, "Done when"): fhirclient (SMART on FHIR's
Python client) and fhirpy, as integrators use them, against the app served by uvicorn on
127.0.0.1, on both databases: create, read, vread, search with paging, count, sort and include.

Both clients are synchronous (requests / httpx), so the app runs in a thread of its own, as in
tests/test_schemathesis.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fhirclient import client as fhirclient
from fhirclient.models.bundle import Bundle as ClientBundle
from fhirclient.models.servicerequest import ServiceRequest as ClientServiceRequest
from fhirclient.models.task import Task as ClientTask
from fhirpy import SyncFHIRClient

from app.fhir.validation import validate_resource
from app.main import create_app
from tests.conftest import ADMIN_KEY, FHIR_JSON, empty_database, make_settings, prepared_url
from tests.conftest import referral_resource as new_referral
from tests.support.receiver import free_port

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
REFERRALS = 7  # more than a page of 3, so paging is followed


@dataclass
class Served:
    base: str  # the FHIR base, http://127.0.0.1:<port>/fhir
    key: str  # a clinical system's API key
    made: list[str]  # the ids of the referrals made through the API, in order


@pytest.fixture(scope="module")
def served(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The app in uvicorn on a loopback port (its public base URL the same address), with a
    service, a clinical system's key and a few referrals."""
    database_url = prepared_url(backend, tmp_path_factory)
    asyncio.run(empty_database(database_url))
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    app = create_app(make_settings(database_url, public_base_url=root, rate_limit_per_minute=0))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=root, timeout=30) as http:
            service = {"id": "life-rooms", "name": "Life Rooms", "organisation": "LR001"}
            created = http.post(
                "/api/v1/services", json={**service, "adapter": "local"}, headers=ADMIN
            )
            assert created.status_code == 201, created.text
            client = http.post(
                "/api/v1/clients",
                json={
                    "name": "RiO",
                    "role": "clinical-system",
                    "organisation": "RW4",
                    "default_service": "life-rooms",
                },
                headers=ADMIN,
            )
            assert client.status_code == 201, client.text
            key = client.json()["api_key"]
            made = []
            for _ in range(REFERRALS):
                response = http.post(
                    "/fhir/ServiceRequest",
                    content=orjson.dumps(new_referral()),
                    headers={"Authorization": f"Bearer {key}", **FHIR_JSON},
                )
                assert response.status_code == 201, response.text
                made.append(response.json()["id"])
        yield Served(f"{root}/fhir", key, made)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# --- fhirclient (SMART on FHIR) ----------------------------------------------------------------


def smart(served: Served) -> Any:
    """A fhirclient FHIRClient on the bridge, sending the API key on every request."""
    client = fhirclient.FHIRClient(settings={"app_id": "spbridge-tests", "api_base": served.base})
    client.server.session.headers["Authorization"] = f"Bearer {served.key}"
    return client


def test_fhirclient_reads_the_capability_statement(served: Served) -> None:
    client = smart(served)
    statement = client.server.capabilityStatement
    assert statement.fhirVersion == "4.0.1"
    resources = {r.type: r for r in statement.rest[0].resource}
    assert "Task:output" in resources["Task"].searchInclude
    security = statement.rest[0].security
    assert security.service[0].coding[0].code == "SMART-on-FHIR"


def test_fhirclient_create_read_vread(served: Served) -> None:
    server = smart(served).server
    referral = ClientServiceRequest(new_referral())
    created = referral.create(server)
    assert created["resourceType"] == "ServiceRequest"
    read = ClientServiceRequest.read(created["id"], server)
    assert read.id == created["id"] and read.status == "active"
    assert read.meta.versionId == "1"
    version = ClientServiceRequest.read_from(f"ServiceRequest/{created['id']}/_history/1", server)
    assert version.as_json() == read.as_json()


def test_fhirclient_searches_with_paging_count_sort_and_include(served: Served) -> None:
    server = smart(served).server
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        search = ClientServiceRequest.where(struct={"_count": "3", "_sort": "_lastUpdated"})
        found = [r.id for r in search.perform_resources_iter(server)]  # follows next links
        assert found[:REFERRALS] == served.made
        count = ClientServiceRequest.where(struct={"_summary": "count"}).perform(server)
    assert count.total >= REFERRALS and not count.entry
    newest = ClientServiceRequest.where(struct={"_sort": "-_lastUpdated", "_count": "1"})
    (first_page, *_) = newest.perform_iter(server)
    assert first_page.entry[0].resource.id != served.made[0]

    # _revinclude=Task:focus, written by fhirclient's include().
    with_tasks = ClientServiceRequest.where(struct={"_id": served.made[0]}).include(
        "focus", ClientTask, reverse=True
    )
    assert "_revinclude=Task:focus" in with_tasks.construct()
    (bundle,) = with_tasks.perform_iter(server)
    assert isinstance(bundle, ClientBundle)
    modes = [(e.search.mode, e.resource.resource_type) for e in bundle.entry]
    assert modes == [("match", "ServiceRequest"), ("include", "Task")]
    task = bundle.entry[1].resource
    assert task.focus.reference == f"ServiceRequest/{served.made[0]}"


# --- fhirpy ---------------------------------------------------------------------------------


def fhirpy_client(served: Served) -> SyncFHIRClient:
    return SyncFHIRClient(served.base, authorization=f"Bearer {served.key}")


def test_fhirpy_create_read_vread(served: Served) -> None:
    client = fhirpy_client(served)
    referral = client.resource("ServiceRequest", **new_referral())
    referral.save()
    assert referral.id and referral["meta"]["versionId"] == "1"
    read = client.reference("ServiceRequest", referral.id).to_resource()
    assert read["status"] == "active" and read.id == referral.id
    version = client.execute(f"ServiceRequest/{referral.id}/_history/1", method="get")
    assert version["id"] == referral.id and version["meta"]["versionId"] == "1"
    history = client.execute(f"ServiceRequest/{referral.id}/_history", method="get")
    assert history["type"] == "history" and history["total"] == 1


def test_fhirpy_searches_with_paging_count_sort_and_include(served: Served) -> None:
    client = fhirpy_client(served)
    referrals = client.resources("ServiceRequest")
    everything = [r.id for r in referrals.sort("_lastUpdated").limit(3)]  # follows next links
    assert everything[:REFERRALS] == served.made
    assert referrals.count() >= REFERRALS  # _count=0&_totalMethod=count: the unknown ignored
    newest = referrals.sort("-_lastUpdated").limit(2).fetch()
    assert len(newest) == 2 and newest[0].id not in served.made[:1]

    tasks = client.resources("Task").search(requester="RW4").sort("-_lastUpdated")
    assert tasks.count() >= REFERRALS
    bundle = (
        client.resources("Task")
        .search(focus=f"ServiceRequest/{served.made[0]}")
        .include("Task", "focus")
        .fetch_raw()
    )
    assert [e["search"]["mode"] for e in bundle.entry] == ["match", "include"]
    assert bundle.entry[1].resource.id == served.made[0]
    referral = (
        client.resources("ServiceRequest")
        .search(_id=served.made[0])
        .revinclude("Task", "focus")
        .fetch_raw()
    )
    assert [e.resource.resourceType for e in referral.entry] == ["ServiceRequest", "Task"]
    subset = referrals.search(_id=served.made[0]).elements("identifier").fetch()
    assert set(subset[0]) >= {"identifier", "status"} and "requester" not in subset[0]
    assert subset[0]["meta"]["tag"][-1]["code"] == "SUBSETTED"


def test_what_the_clients_were_served_is_valid_r4(served: Served) -> None:
    """Everything the clients above read, read again plainly: valid against the R4 schema."""
    headers = {"Authorization": f"Bearer {served.key}"}
    with httpx.Client(base_url=served.base, headers=headers, timeout=30) as http:
        referral = served.made[0]
        paths = [
            "metadata",
            f"ServiceRequest/{referral}",
            f"ServiceRequest/{referral}/_history",
            f"ServiceRequest/{referral}/_history/1",
            f"ServiceRequest?_id={referral}&_revinclude=Task:focus&_include=ServiceRequest:patient",
            "ServiceRequest?_summary=count",
            "ServiceRequest?_elements=identifier&_count=2",
            "Task?requester=RW4&_include=Task:focus&colour=red",
            "Patient?identifier=9000000009&_count=2",
        ]
        for path in paths:
            response = http.get(path)
            assert response.status_code == 200, (path, response.text)
            assert validate_resource(response.json()) == [], path
