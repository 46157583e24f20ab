"""The advisors' worklist as the API answers it.

An item carries what an advisor needs to act on a case and no more: the patient's name, NHS
number and phone (to make contact), never their address, birth date or gender.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WorklistSort = Literal["oldest", "newest", "new-first"]

FIRST_CONTACT_OVERDUE = (
    "True when the case is open, nobody has reached the person yet, and more than the "
    "service's `first_contact_target_days` (default 7) have passed since the referral was "
    "received (now - received_at > target)."
)
SUPPORT_WINDOW_EXCEEDED = (
    "True when the case is open, the person has been reached, and more than the service's "
    "`support_window_days` (default 42, six weeks) have passed since first contact "
    "(now - first_contact_at > window)."
)


class WorklistReason(BaseModel):
    code: str = Field(description="Reason-for-referral domain (CodeSystem reason-for-referral)")
    display: str | None = Field(description="The domain's name")


class WorklistPatient(BaseModel):
    """Only what an advisor needs to make contact."""

    name: str | None
    nhs_number: str
    phone: str | None


class NextAppointment(BaseModel):
    appointment_id: str = Field(description="The advisor's or platform's own id for it")
    fhir_id: str = Field(description="The FHIR Appointment, `Appointment/<id>`")
    start: dt.datetime
    appointment_type: str = Field(description="face-to-face, telephone or group")
    duration_minutes: int


class WorklistFlags(BaseModel):
    first_contact_overdue: bool = Field(description=FIRST_CONTACT_OVERDUE)
    support_window_exceeded: bool = Field(description=SUPPORT_WINDOW_EXCEEDED)


class WorklistLinks(BaseModel):
    case: str = Field(description="The case, with its events (`/api/v1/cases/{case_id}`)")
    task: str = Field(description="The referral's FHIR Task")
    referral: str = Field(description="The referral's FHIR ServiceRequest")


class WorklistItem(BaseModel):
    case_id: str = Field(description="Also the id of the referral's FHIR Task")
    referral_id: str = Field(description="The referral's ServiceRequest id")
    service: str = Field(description="The social prescribing service the case belongs to")
    state: str = Field(description="received, accepted, in_progress, on_hold or a closed state")
    business_status: str
    team: str | None
    advisor: str | None
    priority: str | None = Field(description="The referral's priority (routine, urgent, …)")
    received_at: dt.datetime = Field(description="When the bridge received the referral")
    closed_at: dt.datetime | None
    waiting_days: int = Field(
        description="Whole days from received_at to now (to closed_at for a closed case)"
    )
    first_contact_at: dt.datetime | None = Field(
        description="When the person was first reached (null until then)"
    )
    days_to_first_contact: int | None = Field(
        description="Whole days from received_at to first_contact_at (null until contact)"
    )
    next_appointment: NextAppointment | None = Field(
        description="The earliest booked appointment that starts now or later"
    )
    flags: WorklistFlags
    reasons: list[WorklistReason] = Field(description="The referral's reason domains")
    referring_team: str | None
    referring_organisation: str = Field(description="ODS code of the referrer")
    patient: WorklistPatient
    links: WorklistLinks


class WorklistPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "case_id": "9e2a7c1d-5b0f-4f3e-9a47-0c7d3f1e2b6a",
                            "referral_id": "4d1c2b3a-8e7f-4a6b-9c5d-1e2f3a4b5c6d",
                            "service": "life-rooms-halton",
                            "state": "received",
                            "business_status": "received",
                            "team": None,
                            "advisor": None,
                            "priority": "routine",
                            "received_at": "2026-11-16T09:12:00Z",
                            "closed_at": None,
                            "waiting_days": 8,
                            "first_contact_at": None,
                            "days_to_first_contact": None,
                            "next_appointment": None,
                            "flags": {
                                "first_contact_overdue": True,
                                "support_window_exceeded": False,
                            },
                            "reasons": [
                                {
                                    "code": "finance-benefits-debt",
                                    "display": "Finance, Benefits and Debt Advice",
                                }
                            ],
                            "referring_team": "Halton Community Mental Health Team",
                            "referring_organisation": "RW4",
                            "patient": {
                                "name": "Jo Bloggs",
                                "nhs_number": "9434765919",
                                "phone": "07700 900123",
                            },
                            "links": {
                                "case": "/api/v1/cases/9e2a7c1d-5b0f-4f3e-9a47-0c7d3f1e2b6a",
                                "task": "/fhir/Task/9e2a7c1d-5b0f-4f3e-9a47-0c7d3f1e2b6a",
                                "referral": "/fhir/ServiceRequest/"
                                "4d1c2b3a-8e7f-4a6b-9c5d-1e2f3a4b5c6d",
                            },
                        }
                    ],
                    "next_cursor": "eyJzIjoib2xkZXN0Ii…",
                }
            ]
        }
    )

    items: list[WorklistItem]
    next_cursor: str | None = Field(
        description="Pass as `cursor` (with the same sort) for the next page; null on the last"
    )
