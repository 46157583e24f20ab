"""Examples of the JSON bodies the API answers with, recorded from the running app (sandbox
names, no real person). app.openapi puts them in the OpenAPI document where a schema has no
``examples`` of its own; tests/test_openapi.py checks each against its schema."""

from typing import Any

RESPONSE_EXAMPLES: dict[str, Any] = {
    "ServiceOut": {
        "id": "sandbox-life-rooms",
        "name": "The Life Rooms (sandbox)",
        "organisation": "LR001",
        "adapter": "local",
        "first_contact_target_days": 7,
        "support_window_days": 42,
        "created_at": "2026-12-01T21:41:38.912816Z",
    },
    "ImportJobOut": {
        "id": "0b7c6d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e",
        "status": "done",
        "name": "halton-pilot.ndjson",
        "deliver": False,
        "lines": 1160,
        "referrals": 160,
        "done": 160,
        "created": 159,
        "unchanged": 0,
        "events": 998,
        "refused": 1,
        "refusals": [
            {
                "file": "halton-pilot.ndjson",
                "line": 412,
                "field": "occurred_at",
                "reason": "occurred_at is before the referral was received",
            }
        ],
        "created_at": "2026-12-07T01:00:00Z",
        "updated_at": "2026-12-07T01:00:02Z",
        "finished_at": "2026-12-07T01:00:02Z",
    },
    "ClientOut": {
        "id": "5743f5bd-6c70-46a0-80ea-b3a6860b458f",
        "name": "Halton pathway advisors",
        "role": "advisor",
        "organisation": "LR001",
        "default_service": "sandbox-life-rooms",
        "created_at": "2026-12-01T21:41:38.932636Z",
        "revoked_at": None,
    },
    "ClientCreated": {
        "id": "5743f5bd-6c70-46a0-80ea-b3a6860b458f",
        "name": "Halton pathway advisors",
        "role": "advisor",
        "organisation": "LR001",
        "default_service": "sandbox-life-rooms",
        "created_at": "2026-12-01T21:41:38.932636Z",
        "revoked_at": None,
        "api_key": "spb_example_key_shown_once_xxxxxxxxxxxxxxxx",
    },
    "SecretIssued": {
        "client_id": "5743f5bd-6c70-46a0-80ea-b3a6860b458f",
        "client_secret": "spbs_example_secret_shown_once_xxxxxxxxxxxx",
        "previous_secret_expires_at": None,
    },
    "PublicKeyRegistered": {
        "client_id": "5743f5bd-6c70-46a0-80ea-b3a6860b458f",
        "jwk": {
            "kty": "EC",
            "crv": "P-256",
            "kid": "rio-2026-01",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        },
        "previous_public_key_expires_at": None,
    },
    "ClinicalRouteOut": {
        "organisation": "RW4",
        "adapter": "fhir_push",
        "active": True,
        "destination_id": "685cc2d4-9fef-4933-8e68-925dd34ea3f9",
        "updated_at": "2026-12-01T21:41:38.957401Z",
    },
    "SubscriptionCreated": {
        "id": "6c8cbe0e-65e2-4680-89ec-d4c6e0fd5cab",
        "url": "https://worklist.example.org/hooks/spbridge",
        "events": ["referral.received"],
        "service": None,
        "description": "Halton pathway advisors' worklist",
        "organisation": "LR001",
        "active": True,
        "disabled_reason": None,
        "failing_since": None,
        "created_at": "2026-12-01T21:41:39.077023Z",
        "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    },
    "SubscriptionOut": {
        "id": "6c8cbe0e-65e2-4680-89ec-d4c6e0fd5cab",
        "url": "https://worklist.example.org/hooks/spbridge",
        "events": ["referral.received"],
        "service": None,
        "description": "Halton pathway advisors' worklist",
        "organisation": "LR001",
        "active": True,
        "disabled_reason": None,
        "failing_since": None,
        "created_at": "2026-12-01T21:41:39.077023Z",
    },
    "SecretRotated": {
        "id": "6c8cbe0e-65e2-4680-89ec-d4c6e0fd5cab",
        "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "previous_secret_expires_at": "2026-12-02T21:41:39.098022Z",
    },
    "PingResult": {"delivered": True, "status_code": 204, "error": None, "duration_ms": 38},
    "RecordedEvent": {
        "event": {
            "event_id": "8e6a04ef-6fd1-4770-9e40-5b9bc09ada83",
            "sequence": 3,
            "type": "appointment.booked",
            "occurred_at": "2026-12-01T21:41:39.123056Z",
            "recorded_at": "2026-12-01T21:41:39.123056Z",
            "source": "advisor",
            "idempotency_key": "appt-1-booked",
            "data": {
                "appointment_id": "appt-1",
                "start": "2026-03-02T10:00:00Z",
                "appointment_type": "face-to-face",
                "duration_minutes": 45,
            },
            "resources": ["Appointment/7d06c15a-b16e-42e8-9e6f-6efe2804ee91"],
        },
        "case_id": "66795b66-e154-4738-8a8a-5765b0811155",
        "state": "in_progress",
        "business_status": "appointment-booked",
        "task_status": "in-progress",
        "version": 3,
        "applied": True,
    },
    "TransitionRefusedDoc": {
        "current_state": "in_progress",
        "allowed_events": [
            "appointment.attended",
            "appointment.booked",
            "appointment.cancelled",
            "appointment.did_not_attend",
            "appointment.rescheduled",
            "case.completed",
            "case.discharged",
            "case.on_hold",
            "consent.withdrawn",
            "contact.attempted",
            "demographics.recorded",
            "outcome.recorded",
            "prescription.created",
            "prescription.updated",
            "referral.cancelled",
            "referral.updated",
        ],
        "type": "about:blank",
        "title": "Conflict",
        "status": 409,
        "detail": "'case.accepted' is not allowed in state 'in_progress'. "
        "The case is 'in_progress'; events allowed now: "
        "appointment.attended, appointment.booked, "
        "appointment.cancelled, appointment.did_not_attend, "
        "appointment.rescheduled, case.completed, "
        "case.discharged, case.on_hold, consent.withdrawn, "
        "contact.attempted, demographics.recorded, "
        "outcome.recorded, prescription.created, "
        "prescription.updated, referral.cancelled, "
        "referral.updated",
        "errors": [
            {
                "code": "conflict",
                "detail": "'case.accepted' is not allowed in state "
                "'in_progress'. The case is 'in_progress'; "
                "events allowed now: appointment.attended, "
                "appointment.booked, appointment.cancelled, "
                "appointment.did_not_attend, "
                "appointment.rescheduled, case.completed, "
                "case.discharged, case.on_hold, "
                "consent.withdrawn, contact.attempted, "
                "demographics.recorded, outcome.recorded, "
                "prescription.created, prescription.updated, "
                "referral.cancelled, referral.updated",
                "pointer": "type",
            }
        ],
    },
    "CaseOut": {
        "case_id": "66795b66-e154-4738-8a8a-5765b0811155",
        "referral_id": "8de43411-40d9-4789-a8c7-8274f4ad9804",
        "service": "sandbox-life-rooms",
        "state": "in_progress",
        "business_status": "appointment-booked",
        "task_status": "in-progress",
        "status_reason": None,
        "team": None,
        "advisor": None,
        "external_reference": None,
        "received_at": "2026-12-01T21:41:39.031699Z",
        "first_contact_at": None,
        "closed_at": None,
        "updated_at": "2026-12-01T21:41:39.123056Z",
        "version": 3,
        "summary": None,
        "allowed_events": [
            "appointment.attended",
            "appointment.booked",
            "appointment.cancelled",
            "appointment.did_not_attend",
            "appointment.rescheduled",
            "case.completed",
            "case.discharged",
            "case.on_hold",
            "consent.withdrawn",
            "contact.attempted",
            "demographics.recorded",
            "outcome.recorded",
            "prescription.created",
            "prescription.updated",
            "referral.cancelled",
            "referral.updated",
        ],
        "resources": {
            "service_request": "ServiceRequest/8de43411-40d9-4789-a8c7-8274f4ad9804",
            "task": "Task/66795b66-e154-4738-8a8a-5765b0811155",
            "appointments": ["Appointment/7d06c15a-b16e-42e8-9e6f-6efe2804ee91"],
            "prescriptions": [],
            "observations": [],
            "questionnaire_responses": [],
        },
        "events": [
            {
                "event_id": "5e5bedd3-c8a5-423f-9a24-466a594e9061",
                "sequence": 1,
                "type": "referral.received",
                "occurred_at": "2026-12-01T21:41:39.031699Z",
                "recorded_at": "2026-12-01T21:41:39.035788Z",
                "source": "clinician",
                "idempotency_key": None,
                "data": {},
                "resources": [],
            },
            {
                "event_id": "b05262e9-93a6-44b6-bd5a-244aad3b8f8b",
                "sequence": 2,
                "type": "case.accepted",
                "occurred_at": "2026-12-01T21:41:39.110626Z",
                "recorded_at": "2026-12-01T21:41:39.110626Z",
                "source": "advisor",
                "idempotency_key": None,
                "data": {},
                "resources": [],
            },
            {
                "event_id": "8e6a04ef-6fd1-4770-9e40-5b9bc09ada83",
                "sequence": 3,
                "type": "appointment.booked",
                "occurred_at": "2026-12-01T21:41:39.123056Z",
                "recorded_at": "2026-12-01T21:41:39.123056Z",
                "source": "advisor",
                "idempotency_key": "appt-1-booked",
                "data": {
                    "appointment_id": "appt-1",
                    "start": "2026-03-02T10:00:00Z",
                    "appointment_type": "face-to-face",
                    "duration_minutes": 45,
                },
                "resources": ["Appointment/7d06c15a-b16e-42e8-9e6f-6efe2804ee91"],
            },
        ],
    },
    "WorklistPage": {
        "items": [
            {
                "case_id": "66795b66-e154-4738-8a8a-5765b0811155",
                "referral_id": "8de43411-40d9-4789-a8c7-8274f4ad9804",
                "service": "sandbox-life-rooms",
                "state": "in_progress",
                "business_status": "appointment-booked",
                "team": None,
                "advisor": None,
                "priority": "routine",
                "received_at": "2026-12-01T21:41:39.031699Z",
                "closed_at": None,
                "waiting_days": 0,
                "first_contact_at": None,
                "days_to_first_contact": None,
                "next_appointment": None,
                "flags": {"first_contact_overdue": False, "support_window_exceeded": False},
                "reasons": [
                    {
                        "code": "finance-benefits-debt",
                        "display": "Finance, Benefits and Debt Advice",
                    },
                    {"code": "social-isolation", "display": "Social Isolation"},
                ],
                "referring_team": "Halton Crisis Resolution Team",
                "referring_organisation": "RW4",
                "patient": {
                    "name": "Sam Example",
                    "nhs_number": "9000000009",
                    "phone": "07700 900000",
                },
                "links": {
                    "case": "/api/v1/cases/66795b66-e154-4738-8a8a-5765b0811155",
                    "task": "/fhir/Task/66795b66-e154-4738-8a8a-5765b0811155",
                    "referral": "/fhir/ServiceRequest/8de43411-40d9-4789-a8c7-8274f4ad9804",
                },
            }
        ],
        "next_cursor": None,
    },
    "JourneyLink": {
        "url": "http://127.0.0.1:8000/journey/8de43411-40d9-4789-a8c7-8274f4ad9804?token=v1.1796162199.rAst4_KnBzVoLGxLeR6Atd7INiNTAcq_ytwbXMP1JQM",
        "expires_at": "2026-12-01T21:56:39Z",
    },
    "DeliveryPage": {
        "items": [
            {
                "id": "4334e311-52fa-4733-9397-6519de2fe370",
                "destination_id": "685cc2d4-9fef-4933-8e68-925dd34ea3f9",
                "destination_kind": "clinical",
                "adapter": "fhir_push",
                "referral_id": "8de43411-40d9-4789-a8c7-8274f4ad9804",
                "event_type": "appointment.booked",
                "event_seq": 3,
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": "2026-12-01T21:41:39.123056Z",
                "last_status_code": None,
                "last_error": None,
                "created_at": "2026-12-01T21:41:39.123056Z",
                "delivered_at": None,
                "correlation_id": "ee26f18e-7bd4-48ea-bd49-e0e8df1c9965",
            }
        ],
        "next_cursor": (
            "MjAyNi0xMi0wMVQyMTo0MTozOS4xMTA2MjYrMDA6MDB8N2EwYjY1ZGEtYTc0MC00YjYxLWFjYmMtNjg5NzEzMzJkODc3"
        ),
    },
    "DeliveryDetail": {
        "id": "4334e311-52fa-4733-9397-6519de2fe370",
        "destination_id": "685cc2d4-9fef-4933-8e68-925dd34ea3f9",
        "destination_kind": "clinical",
        "adapter": "fhir_push",
        "referral_id": "8de43411-40d9-4789-a8c7-8274f4ad9804",
        "event_type": "appointment.booked",
        "event_seq": 3,
        "state": "pending",
        "attempts": 1,
        "next_attempt_at": "2026-12-01T21:41:39.123056Z",
        "last_status_code": 503,
        "last_error": "HTTP 503",
        "created_at": "2026-12-01T21:41:39.123056Z",
        "delivered_at": None,
        "correlation_id": "ee26f18e-7bd4-48ea-bd49-e0e8df1c9965",
        "history": [
            {
                "number": 1,
                "started_at": "2026-12-01T21:41:39.123056Z",
                "duration_ms": 41,
                "outcome": "retry",
                "status_code": 503,
                "response_excerpt": '{"error": "temporarily unavailable"}',
                "error": "HTTP 503",
                "worker": "api-1",
            }
        ],
    },
    "QueueStats": {
        "by_state": {"pending": 3, "in_flight": 0, "delivered": 0, "dead": 0, "cancelled": 0},
        "oldest_pending_age_seconds": 0.199651,
        "attempts": 0,
        "destinations": [
            {
                "destination_id": "685cc2d4-9fef-4933-8e68-925dd34ea3f9",
                "kind": "clinical",
                "adapter": "fhir_push",
                "service_id": None,
                "organisation": "RW4",
                "active": True,
                "circuit": "closed",
                "failing_since": None,
                "consecutive_failures": 0,
                "by_state": {
                    "pending": 3,
                    "in_flight": 0,
                    "delivered": 0,
                    "dead": 0,
                    "cancelled": 0,
                },
                "oldest_pending_age_seconds": 0.199651,
                "attempts": 0,
            },
            {
                "destination_id": "6c8cbe0e-65e2-4680-89ec-d4c6e0fd5cab",
                "kind": "webhook",
                "adapter": "webhook",
                "service_id": None,
                "organisation": "LR001",
                "active": True,
                "circuit": "closed",
                "failing_since": None,
                "consecutive_failures": 0,
                "by_state": {
                    "pending": 0,
                    "in_flight": 0,
                    "delivered": 0,
                    "dead": 0,
                    "cancelled": 0,
                },
                "oldest_pending_age_seconds": None,
                "attempts": 0,
            },
        ],
    },
    "ReplayResult": {"replayed": 1, "ids": ["4334e311-52fa-4733-9397-6519de2fe370"]},
    "TokenResponse": {
        "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJleGFtcGxlIn0.c2lnbmF0dXJl",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "referrals:read referrals:write",
    },
    "OAuthErrorBody": {
        "error": "invalid_client",
        "error_description": "The client could not be authenticated",
    },
    "InboundResult": {"status": "applied", "events": 1},
}

# The activity report, cut to its first table's first rows.
RESPONSE_EXAMPLES["ReportDocument"] = {
    "report": "activity",
    "title": "Social prescribing activity",
    "services": [{"id": "sandbox-life-rooms", "name": "Service sandbox-life-rooms"}],
    "team": None,
    "from": "2026-01-01",
    "to": "2026-12-01",
    "months": [
        "2026-01",
        "2026-02",
        "2026-03",
        "2026-04",
        "2026-05",
        "2026-06",
        "2026-07",
        "2026-08",
        "2026-09",
        "2026-10",
        "2026-11",
        "2026-12",
    ],
    "suppressed": False,
    "generated_at": "2026-12-01T21:52:22.464770Z",
    "notes": [
        "Referrals count in the month the bridge received them; every other figure in the "
        "month its event happened (occurred_at), whenever it was recorded. Months are UTC "
        "calendar months."
    ],
    "sections": [
        {
            "id": "activity",
            "title": "Activity by month",
            "notes": [],
            "tables": [
                {
                    "id": "activity",
                    "title": "Activity",
                    "unit": "count",
                    "description": "Referrals by the month received; registrations, "
                    "attended appointments and social prescriptions by "
                    "the month they happened.",
                    "columns": [
                        "2026-01",
                        "2026-02",
                        "2026-03",
                        "2026-04",
                        "2026-05",
                        "2026-06",
                        "2026-07",
                        "2026-08",
                        "2026-09",
                        "2026-10",
                        "2026-11",
                        "2026-12",
                        "total",
                    ],
                    "column_labels": [
                        "Jan 2026",
                        "Feb 2026",
                        "Mar 2026",
                        "Apr 2026",
                        "May 2026",
                        "Jun 2026",
                        "Jul 2026",
                        "Aug 2026",
                        "Sep 2026",
                        "Oct 2026",
                        "Nov 2026",
                        "Dec 2026",
                        "Total",
                    ],
                    "rows": [
                        {
                            "key": "referrals",
                            "label": "Referrals",
                            "values": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
                        },
                        {
                            "key": "registrations",
                            "label": "Registrations",
                            "values": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
                        },
                    ],
                }
            ],
        }
    ],
}

_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>'
    "<body><main><h1>{title}</h1>{body}</main></body></html>"
)

# Bodies that are not JSON schemas' instances, by (operation id, status or "request", media type).
MEDIA_EXAMPLES: dict[tuple[str, str, str], Any] = {
    ("readJourneyPage", "200", "text/html"): _PAGE.format(
        title="Patient journey",
        body="<ol><li>Referral received</li><li>Accepted by the service</li>"
        "<li>Appointment booked: face-to-face, 45 minutes</li></ol>",
    ),
    ("readJourneyPage", "403", "text/html"): _PAGE.format(
        title="This link cannot be opened",
        body="<p>The link has expired. Open the journey again from the clinical record.</p>",
    ),
    ("readJourneyPage", "404", "text/html"): _PAGE.format(
        title="Page not found", body="<p>No journey is held for this referral.</p>"
    ),
    ("startImport", "request", "application/x-ndjson"): (
        '{"received_at": "2022-09-05T09:12:00Z", "resource": {"resourceType": '
        '"ServiceRequest", "identifier": [{"system": "https://rio.example-trust.nhs.uk/Id/'
        'referral", "value": "REF-000123"}], "status": "active", "intent": "order"}}\n'
        '{"referral": {"system": "https://rio.example-trust.nhs.uk/Id/referral", "value": '
        '"REF-000123"}, "event": {"type": "case.accepted", "occurred_at": '
        '"2022-09-06T10:00:00Z"}}\n'
    ),
    ("oauth2Token", "request", "application/x-www-form-urlencoded"): {
        "grant_type": "client_credentials",
        "scope": "referrals:read referrals:write",
    },
}

_REPORT_CSV = (
    "report,section,table,unit,row_key,row,column,value\n"
    "activity,activity,activity,count,referrals,Referrals,2026-11,14\n"
    "activity,activity,activity,count,referrals,Referrals,2026-12,9\n"
    "activity,activity,activity,count,referrals,Referrals,total,23\n"
)
_REPORT_HTML = _PAGE.format(
    title="Social prescribing activity",
    body="<table><tr><th></th><th>Nov 2026</th><th>Dec 2026</th><th>Total</th></tr>"
    "<tr><th>Referrals</th><td>14</td><td>9</td><td>23</td></tr></table>",
)
for _report in ("getActivityReport", "getStaffHubReport"):
    MEDIA_EXAMPLES[(_report, "200", "text/csv")] = _REPORT_CSV
    MEDIA_EXAMPLES[(_report, "200", "text/html")] = _REPORT_HTML
