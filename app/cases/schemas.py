"""What the case API answers: events as recorded, the case, and the 409 of a refused event.

The bodies it takes are declared with their event types in the registry (app.cases.events).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# --- what the API answers ------------------------------------------------------------------


class CaseEventOut(BaseModel):
    event_id: str
    sequence: int = Field(description="Order in which the bridge recorded it")
    type: str
    occurred_at: dt.datetime
    recorded_at: dt.datetime
    source: str = Field(description="adapter / platform / advisor / clinician / system")
    idempotency_key: str | None = None
    data: dict[str, Any]
    resources: list[str] = Field(
        default_factory=list, description="FHIR resources this event made or changed"
    )


class CaseResources(BaseModel):
    """The FHIR resources of the case, readable under /fhir."""

    service_request: str = Field(examples=["ServiceRequest/4d1c…"])
    task: str = Field(examples=["Task/9e2a…"])
    patient: str | None = Field(
        default=None,
        examples=["Patient/3f0c…"],
        description="The patient as the referral described them (referrals made before the "
        "bridge kept Patients have none)",
    )
    appointments: list[str] = Field(default_factory=list)
    prescriptions: list[str] = Field(
        default_factory=list, description="Social prescriptions (ServiceRequests)"
    )
    observations: list[str] = Field(default_factory=list, description="SWEMWBS scores")
    questionnaire_responses: list[str] = Field(default_factory=list, description="SWEMWBS answers")


class CaseOut(BaseModel):
    case_id: str
    referral_id: str = Field(description="The referral's ServiceRequest id")
    service: str
    state: str
    business_status: str
    task_status: str
    status_reason: str | None
    team: str | None
    advisor: str | None
    external_reference: str | None = Field(description="The platform's own id for the case")
    received_at: dt.datetime
    first_contact_at: dt.datetime | None
    closed_at: dt.datetime | None
    updated_at: dt.datetime
    version: int
    summary: str | None = Field(description="The discharge summary, once the case has closed")
    allowed_events: list[str] = Field(description="Event types the case accepts now")
    resources: CaseResources
    events: list[CaseEventOut] = Field(description="In the order they happened (occurred_at)")


class RecordedEvent(BaseModel):
    """The event as recorded and where the case stands after it."""

    event: CaseEventOut
    case_id: str
    state: str
    business_status: str
    task_status: str
    version: int
    applied: bool = Field(
        description="false when this was a repeat of an idempotency key already applied"
    )


class TransitionRefusedDoc(BaseModel):
    """A 409: the case's state does not allow this event (or a record it names is closed)."""

    model_config = ConfigDict(title="TransitionRefused")
    type: str = "about:blank"
    title: str = Field(examples=["Conflict"])
    status: int = Field(examples=[409])
    detail: str = Field(
        examples=[
            "'case.resumed' is not allowed in state 'completed'. The case is 'completed'; "
            "events allowed now: none (the case is closed)"
        ]
    )
    current_state: str | None = Field(
        default=None, description="The case's state (when the state machine refused)"
    )
    allowed_events: list[str] | None = Field(
        default=None, description="The event types the case accepts now"
    )
    errors: list[dict[str, Any]] | None = None
