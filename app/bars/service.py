"""A BaRS referral message taken through the one referral path (app.referrals.service): a new
referral, an amendment or a cancellation, each the same referral, case and events as through
FHIR REST. Never commits."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.bars.messages import Message
from app.bars.models import BarsMessage
from app.cases import service as cases
from app.cases.models import Referral
from app.errors import (
    AppError,
    BadRequest,
    BusinessRuleViolation,
    Conflict,
    Forbidden,
    Issue,
    NotFound,
)
from app.referrals import service as referrals
from app.referrals.intake import ReferralDraft
from app.security.auth import Principal

DUPLICATE = "the message has been identified as having already been processed (X-Request-ID)"


@dataclass(frozen=True)
class Headers:
    """The BaRS headers of a request, as read by :func:`read_headers`."""

    request_id: str
    target: str | None  # NHSD-Target-Identifier's value: the service the message is for
    end_user_organisation: str  # NHSD-End-User-Organisation-ODS


@dataclass(frozen=True)
class Processed:
    referral: Referral
    outcome: str  # created | held | updated | unchanged | cancelled


def _header_error(name: str, text: str) -> BadRequest:
    return BadRequest(f"{name}: {text}", issues=[Issue("invalid", f"{name}: {text}")])


def read_target(value: str | None) -> str | None:
    """NHSD-Target-Identifier: base64 of a JSON object ``{"value": …, "system": …}`` (BaRS);
    its value names the service here (HealthcareService id)."""
    if value is None or not value.strip():
        return None
    try:
        decoded = orjson.loads(base64.b64decode(value.strip(), validate=True))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise _header_error(
            "NHSD-Target-Identifier", "must be base64 of a JSON object with a value"
        ) from None
    target = decoded.get("value") if isinstance(decoded, dict) else None
    if not isinstance(target, str) or not target.strip() or len(target) > 64:
        raise _header_error(
            "NHSD-Target-Identifier", "must be base64 of a JSON object with a value"
        )
    return target.strip()


def read_headers(
    principal: Principal,
    *,
    sent_request_id: str | None,
    request_id: str,
    target: str | None,
    end_user_ods: str | None,
) -> Headers:
    """The BaRS headers, checked: X-Request-ID is required (a message is processed once),
    NHSD-End-User-Organisation-ODS must be the caller's organisation."""
    if not sent_request_id or sent_request_id.strip() != request_id:
        raise _header_error(
            "X-Request-ID",
            "is required, a unique id of this message (a UUID; letters, digits, '-', '_', '.')",
        )
    if not end_user_ods or not end_user_ods.strip():
        raise _header_error("NHSD-End-User-Organisation-ODS", "is required (the sender's ODS code)")
    ods = end_user_ods.strip()
    if ods != principal.organisation:
        raise Forbidden(
            "NHSD-End-User-Organisation-ODS must be your own organisation: the one this client "
            "acts for"
        )
    return Headers(request_id=request_id, target=read_target(target), end_user_organisation=ods)


async def record_message(
    session: AsyncSession, principal: Principal, headers: Headers, message: Message
) -> BarsMessage:
    """Note the message as processed, first: a repeat of its X-Request-ID is 409 REC_CONFLICT
    (BaRS) and changes nothing, also under concurrent repeats (the unique constraint)."""
    assert principal.organisation is not None
    row = BarsMessage(
        organisation=principal.organisation,
        request_id=headers.request_id,
        bundle_id=message.bundle_id[:64] if message.bundle_id else None,
        reason=message.reason,
        received_at=dt.datetime.now(dt.UTC),
    )
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:
        raise Conflict(DUPLICATE, issues=[Issue("duplicate", DUPLICATE)]) from None
    return row


def cancels(message: Message) -> bool:
    """Whether the message cancels its referral: reason ``cancel``, or an ``update`` whose
    ServiceRequest is revoked (BaRS cancels either way)."""
    return message.reason == "cancel" or (
        message.reason == "update" and message.service_request.get("status") == "revoked"
    )


def _identifier(raw: dict[str, Any]) -> tuple[str, str]:
    for identifier in raw.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") and identifier.get("value"):
            return str(identifier["system"]), str(identifier["value"])
    raise BusinessRuleViolation(
        "identifier (the referrer's own referral id, with system and value) is required",
        issue_code="required",
        expression="ServiceRequest.identifier",
    )


async def _held(session: AsyncSession, principal: Principal, raw: dict[str, Any]) -> Referral:
    system, value = _identifier(raw)
    held = await session.scalar(
        select(Referral).where(
            Referral.organisation == principal.organisation,
            Referral.identifier_system == system,
            Referral.identifier_value == value,
        )
    )
    if held is None:
        raise NotFound(
            "No referral with this ServiceRequest's identifier was sent by this organisation "
            "(an update or a cancellation names a referral already made)"
        )
    return held


def _origin(message: Message, headers: Headers, context: cases.EventContext) -> dict[str, Any]:
    return {
        "channel": "bars",
        "bundle_id": message.bundle_id,
        "source_endpoint": message.source_endpoint,
        "request_id": headers.request_id,
        # BaRS keeps one X-Correlation-ID across a referral's whole exchange.
        "correlation_id": context.correlation_id,
    }


async def process(
    session: AsyncSession,
    principal: Principal,
    message: Message,
    draft: ReferralDraft | None,
    headers: Headers,
    context: cases.EventContext,
) -> Processed:
    """The message through the one referral path: ``new`` makes the referral (or answers with
    the one held for the same identifier and content), ``update`` amends it (the amendment
    rules of a FHIR update), ``cancel`` (or an update whose ServiceRequest is revoked) cancels
    it. ``draft``: the message's ServiceRequest assessed as a referral (None for a cancellation,
    which names the referral by its identifier and changes nothing else)."""
    record = await record_message(session, principal, headers, message)
    raw = message.service_request
    if draft is not None and headers.target is not None:
        draft.service_id = headers.target
    if message.reason == "new":
        assert draft is not None
        draft.requester_ods = draft.requester_ods or headers.end_user_organisation
        intake = await referrals.create_referral(session, draft, raw, principal, context)
        referral = intake.referral
        if intake.created:
            referral.origin = _origin(message, headers, context)
        record.referral_id = referral.id
        return Processed(referral, "created" if intake.created else "held")
    held = await _held(session, principal, raw)
    record.referral_id = held.id
    version = f'W/"{held.version_id}"'
    if cancels(message) or draft is None:
        cancelled = {**held.resource, "status": "revoked"}
        referral, changed = await referrals.update_referral(
            session, principal, held.id, cancelled, None, version, context
        )
        return Processed(referral, "cancelled" if changed else "unchanged")
    if held.status != "active":
        raise Conflict(
            "The referral has been cancelled: it cannot be updated",
            expression="ServiceRequest.status",
        )
    if message.authored_on_supplied:
        # The Bundle's timestamp stood in for authoredOn: an update keeps the referral's own.
        raw["authoredOn"] = held.resource.get("authoredOn")
        draft.authored_on = held.authored_on
    referral, changed = await referrals.update_referral(
        session, principal, held.id, raw, draft, version, context
    )
    return Processed(referral, "updated" if changed else "unchanged")


def locate(error: AppError, message: Message) -> AppError:
    """``error`` found in the message's ServiceRequest, pointed back at the message's entries."""
    error.issues = message.locate(error.issues)
    return error
