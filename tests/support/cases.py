"""Test helpers for case work: a referral with its case, and events recorded on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from app.fhir.codes import RESOURCE_ID_SYSTEM
from tests.conftest import Bridge, referral_resource, requester_of


@dataclass
class OpenCase:
    bridge: Bridge
    referrer: dict[str, str]
    advisor: dict[str, str]
    referral_id: str
    case_id: str

    async def post(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        return await self.bridge.http.post(
            f"/api/v1/cases/{self.case_id}/events",
            json=body,
            headers=self.advisor if headers is None else headers,
        )

    async def record(self, body: dict[str, Any]) -> dict[str, Any]:
        """Record an event that must be applied (201)."""
        response = await self.post(body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def task(self) -> dict[str, Any]:
        response = await self.bridge.http.get(f"/fhir/Task/{self.case_id}", headers=self.referrer)
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task

    async def detail(self, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.bridge.http.get(
            f"/api/v1/cases/{self.case_id}", headers=headers or self.advisor
        )

    async def journey(self) -> dict[str, Any]:
        response = await self.bridge.http.get(
            f"/fhir/ServiceRequest/{self.referral_id}/$journey", headers=self.referrer
        )
        assert response.status_code == 200, response.text
        bundle: dict[str, Any] = response.json()
        return bundle


async def open_case(
    bridge: Bridge,
    *,
    service: str = "life-rooms",
    service_organisation: str = "LR001",
    referrer_organisation: str = "RW4",
    register: bool = True,
    **resource: Any,
) -> OpenCase:
    """A new referral to ``service`` and its case, with a referrer's and an advisor's keys."""
    if register:
        await bridge.service(service, service_organisation)
    referrer = await bridge.key("clinical-system", referrer_organisation)
    advisor = await bridge.key("advisor", service_organisation)
    # The requester is the referrer's organisation, as a client may refer only for its own.
    resource = {"requester": requester_of(referrer_organisation), **resource}
    response = await bridge.refer(referrer, referral_resource(service, **resource))
    assert response.status_code == 201, response.text
    referral_id = response.json()["id"]
    tasks = await bridge.http.get(
        "/fhir/Task", params={"focus": f"ServiceRequest/{referral_id}"}, headers=referrer
    )
    case_id = tasks.json()["entry"][0]["resource"]["id"]
    return OpenCase(bridge, referrer, advisor, referral_id, case_id)


def as_pushed_by_id(resource: Any) -> Any:
    """A resource as ``fhir_push`` writes it by PUT by id: references to what the bridge does not
    write there (the referral, the service, its organisation) by identifier alone."""
    if isinstance(resource, list):
        return [as_pushed_by_id(item) for item in resource]
    if not isinstance(resource, dict):
        return resource
    out = {key: as_pushed_by_id(value) for key, value in resource.items()}
    identifier = resource.get("identifier")
    if (
        isinstance(resource.get("reference"), str)
        and "/" in resource["reference"]
        and not (isinstance(identifier, dict) and identifier.get("system") == RESOURCE_ID_SYSTEM)
    ):
        del out["reference"]
    return out
