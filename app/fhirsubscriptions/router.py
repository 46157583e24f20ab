"""FHIR Subscriptions (R5 Backport IG on R4) under /fhir: the topic, Subscription create, read,
search, delete, ``$status`` and ``$events``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from app.dependencies import AppSettings, Now, RawBody, ReadSession, WriteSession
from app.errors import BadRequest, NotFound, fhir_error_responses
from app.fhir import notifications, parsing
from app.fhir.http import check_format, fhir_base, fhir_body, fhir_resource_response
from app.fhir.responses import FHIRResponse
from app.fhirsubscriptions import service
from app.outbox import topics
from app.security.auth import Principal, require
from app.security.roles import Operation

# $status and $events are declared before the read and the delete, so that they come first in
# the OpenAPI document's paths (its order is the declarations').
router = APIRouter(
    prefix="/fhir", tags=["FHIR Subscriptions"], dependencies=[Depends(check_format)]
)

Subscriber = Annotated[Principal, Depends(require(Operation.SUBSCRIPTION_MANAGE, writes=True))]
Reader = Annotated[Principal, Depends(require(Operation.SUBSCRIPTION_MANAGE, writes=False))]
_NOTE = (
    " A subscription sees what its owner's organisation may see (the referrals it sent or "
    "receives; an admin's, all)."
)


@router.get(
    "/Basic/{basic_id}",
    response_class=FHIRResponse,
    summary="The subscription topic: referral Task changed",
    description=(
        f"`GET /fhir/Basic/{topics.TOPIC_ID}`: the topic a Subscription names in `criteria` "
        f"(canonical `{topics.TOPIC_URL}`), as R4 "
        "carries an R5 SubscriptionTopic: a Basic resource with its elements as cross-version "
        "extensions. Triggered by every change to a referral's Task; filters: "
        + ", ".join(f"`{name}` ({text})" for name, text in topics.FILTERS.items())
        + "."
    ),
    operation_id="readSubscriptionTopic",
    responses={
        200: fhir_resource_response("The topic", "Basic"),
        **fhir_error_responses(401, 403, 404, 406),
    },
)
async def read_topic(
    basic_id: str,
    _principal: Annotated[Principal, Depends(require(Operation.SERVICE_READ, writes=False))],
) -> Response:
    if basic_id != topics.TOPIC_ID:
        raise NotFound("No such Basic resource: the one served here is the subscription topic")
    return FHIRResponse(service.topic_resource())


@router.post(
    "/Subscription",
    status_code=201,
    response_class=FHIRResponse,
    summary="Subscribe to referral Task changes (FHIR Subscription, R5 Backport)",
    description=(
        "A Subscription with the backport profile: `criteria` the topic's canonical URL, "
        "filters in `_criteria` (backport-filter-criteria, e.g. `Task?status=completed&"
        "requester=RW4`), `channel.type` rest-hook, `channel.endpoint`, `channel.payload` "
        "application/fhir+json with content `empty` or `id-only` (backport-payload-content; "
        "full-resource is refused: notifications never carry patient data), optional "
        "`channel.header` and heartbeat period (backport-heartbeat-period, seconds). It starts "
        "`requested`; a handshake is sent to the endpoint and, once delivered, it is `active` "
        "and notified of every change that matches, in order, numbered (events-since-"
        "subscription-start), retried and dead-lettered like every delivery. Header values are "
        "kept for sending and never read back." + _NOTE
    ),
    operation_id="createFhirSubscription",
    openapi_extra=fhir_body("Subscription", "Subscription-referral-task-changed"),
    responses={
        201: fhir_resource_response("The Subscription (status requested)", "Subscription"),
        **fhir_error_responses(400, 401, 403, 406, 413, 415, 422),
    },
)
async def create_subscription(
    request: Request,
    session: WriteSession,
    settings: AppSettings,
    body: RawBody,
    principal: Subscriber,
) -> Response:
    parsing.check_media_type(request.headers.get("content-type"))
    data = parsing.parse_json(body)
    parsing.check_resource_type(data, "Subscription")
    parsing.parse_resource(data, "Subscription")
    parsing.refuse_nul_characters(body, data, "Subscription")
    parsing.check_r4(data)
    subscription = await service.create(session, principal, data, settings)
    base = fhir_base(request, settings)
    return FHIRResponse(
        service.resource_of(subscription, base),
        status_code=201,
        headers={"Location": f"{base}/Subscription/{subscription.id}"},
    )


@router.get(
    "/Subscription",
    response_class=FHIRResponse,
    summary="Your FHIR Subscriptions",
    description="A searchset Bundle of the subscriptions of your organisation." + _NOTE,
    operation_id="searchFhirSubscription",
    responses={
        200: fhir_resource_response("searchset Bundle", "Bundle"),
        **fhir_error_responses(401, 403, 406),
    },
)
async def search_subscriptions(
    request: Request, session: ReadSession, settings: AppSettings, principal: Reader
) -> Response:
    base = fhir_base(request, settings)
    found = await service.list_visible(session, principal)
    bundle: dict[str, object] = {"resourceType": "Bundle", "type": "searchset", "total": len(found)}
    if found:
        bundle["entry"] = [
            {
                "fullUrl": f"{base}/Subscription/{s.id}",
                "resource": service.resource_of(s, base),
                "search": {"mode": "match"},
            }
            for s in found
        ]
    return FHIRResponse(bundle)


@router.get(
    "/Subscription/{fhir_subscription_id}/$status",
    response_class=FHIRResponse,
    summary="A FHIR Subscription's status",
    description=(
        "A searchset Bundle with the SubscriptionStatus (R4: Parameters, backport-subscription-"
        "status-r4): its status, type query-status, and events-since-subscription-start."
    ),
    operation_id="fhirSubscriptionStatus",
    responses={
        200: fhir_resource_response("searchset Bundle", "Bundle"),
        **fhir_error_responses(401, 403, 404, 406),
    },
)
async def subscription_status(
    fhir_subscription_id: str,
    request: Request,
    session: ReadSession,
    settings: AppSettings,
    principal: Reader,
) -> Response:
    subscription = await service.get(session, principal, fhir_subscription_id)
    base = fhir_base(request, settings)
    parameters = notifications.status_parameters(
        subscription_url=f"{base}/Subscription/{subscription.id}",
        topic=subscription.topic,
        status=subscription.status,
        kind="query-status",
        events_since_start=subscription.events_since_start,
    )
    return FHIRResponse(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 1,
            "entry": [
                {
                    "fullUrl": f"urn:uuid:{parameters['id']}",
                    "resource": parameters,
                    "search": {"mode": "match"},
                }
            ],
        }
    )


@router.get(
    "/Subscription/{fhir_subscription_id}/$events",
    response_class=FHIRResponse,
    summary="A FHIR Subscription's past notifications",
    description=(
        "For a receiver that missed some: a history Bundle like a notification (type "
        "query-event), with the events numbered from `eventsSinceNumber` to "
        f"`eventsUntilNumber` (at most {service.MAX_EVENTS}, oldest first), as the "
        "subscription's content (`content` may ask for `empty` or `id-only`)."
    ),
    operation_id="fhirSubscriptionEvents",
    responses={
        200: fhir_resource_response("history Bundle", "Bundle"),
        **fhir_error_responses(400, 401, 403, 404, 406),
    },
)
async def subscription_events(
    fhir_subscription_id: str,
    request: Request,
    session: ReadSession,
    settings: AppSettings,
    now: Now,
    principal: Reader,
    events_since: Annotated[
        int | None, Query(alias="eventsSinceNumber", ge=1, le=2**31 - 1)
    ] = None,
    events_until: Annotated[
        int | None, Query(alias="eventsUntilNumber", ge=1, le=2**31 - 1)
    ] = None,
    content: Annotated[str | None, Query(description="empty or id-only")] = None,
) -> Response:
    if content is not None and content not in service.CONTENTS:
        raise BadRequest("content must be empty or id-only", expression="content")
    subscription = await service.get(session, principal, fhir_subscription_id)
    events = await service.events(session, subscription, events_since, events_until)
    base = fhir_base(request, settings)
    return FHIRResponse(
        notifications.notification_bundle(
            bundle_id=str(uuid.uuid4()),
            subscription_url=f"{base}/Subscription/{subscription.id}",
            topic=subscription.topic,
            status=subscription.status,
            kind="query-event",
            events_since_start=subscription.events_since_start,
            events=events,
            content=content or subscription.content,
            base=base,
            now=now,
        )
    )


@router.get(
    "/Subscription/{fhir_subscription_id}",
    response_class=FHIRResponse,
    summary="Read a FHIR Subscription",
    description="The Subscription as sent, with its status now (requested, active, error, off)."
    + _NOTE,
    operation_id="readFhirSubscription",
    responses={
        200: fhir_resource_response("The Subscription", "Subscription"),
        **fhir_error_responses(401, 403, 404, 406),
    },
)
async def read_subscription(
    fhir_subscription_id: str,
    request: Request,
    session: ReadSession,
    settings: AppSettings,
    principal: Reader,
) -> Response:
    subscription = await service.get(session, principal, fhir_subscription_id)
    return FHIRResponse(service.resource_of(subscription, fhir_base(request, settings)))


@router.delete(
    "/Subscription/{fhir_subscription_id}",
    response_class=FHIRResponse,
    summary="End a FHIR Subscription",
    description="Nothing more is sent; what was queued is cancelled." + _NOTE,
    operation_id="deleteFhirSubscription",
    responses={
        200: fhir_resource_response("What was done", "OperationOutcome"),
        **fhir_error_responses(401, 403, 404, 406),
    },
)
async def delete_subscription(
    fhir_subscription_id: str, session: WriteSession, principal: Subscriber
) -> Response:
    await service.delete(session, principal, fhir_subscription_id)
    return FHIRResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"Subscription/{fhir_subscription_id} is off: nothing more "
                    "is sent",
                }
            ],
        }
    )
