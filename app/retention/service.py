"""Retention (issue 5, part 7): the patient data of cases closed longer ago than
``SPBRIDGE_RETENTION_DAYS`` is removed by ``spbridge purge``; what reports count stays.

What a purge removes, for each referral whose case closed before the cutoff:
- the patient on the referral: name, birth date, phone, postcode, the referrer's notes, the free
  text of the reasons for referral, and the stored ServiceRequest (replaced by a stub without the
  patient or contained resources);
- the NHS number, replaced by a keyed pseudonym (HMAC-SHA256 under the installation's
  ``pseudonym`` key, see ``pseudonym``), so distinct people can still be counted;
- the referral's Patient resource (emptied) and every version kept of its resources (vread and
  _history: app.cases.history);
- the discharge summary, the free-text activity of social prescriptions (in their records and
  events), webhook payloads of the referral's deliveries and the receivers' answers kept with
  their attempts; deliveries not yet made are cancelled.

What stays, so the evaluation tables can still be produced from the events (DESIGN §9): every
case event with its type, times, source and codes (contact outcomes, appointment types and
minutes, prescription categories, providers and statuses, SWEMWBS answers and scores, the EDI
categories the person chose to give), the appointments, prescriptions and scores as records, the
referral's organisation, team, reasons (codes), priority, gender and dates, and the case's state.

A purged referral is then gone for FHIR: its ServiceRequest, Task and journey answer 410 Gone
(an OperationOutcome), searches no longer find it or its resources, and the dispatcher no longer
sends anything of it. Every run that changes something leaves a ``purge_runs`` row and a log line.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, func, null, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import trail
from app.cases.after_write import queue_for_reports
from app.cases.models import (
    Case,
    CaseEvent,
    Patient,
    Prescription,
    Referral,
    ResourceVersion,
)
from app.cases.states import CLOSED_STATES
from app.outbox.models import Delivery, DeliveryAttempt
from app.pseudonyms import (
    PSEUDONYM_SYSTEM,
    pseudonym,
    pseudonym_key,
)
from app.retention.models import PurgeRun

log = logging.getLogger("spbridge.retention")

PURGED_DELIVERY_ERROR = "cancelled: patient data purged (retention)"
# What a stub keeps of the ServiceRequest: what the referral was, never who it was about.
_STUB_ELEMENTS = ("intent", "category", "code", "priority", "authoredOn")
# What a reason for referral keeps: the codes, not the referrer's free text.
_REASON_KEYS = ("domain", "domain_display", "mapped", "system", "code", "display")
_FREE_TEXT_EVENTS = frozenset({"prescription.created", "prescription.updated"})


# --- the purge -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeResult:
    cutoff: dt.datetime
    retention_days: int
    dry_run: bool
    referrals: int  # purged (or, in a dry run, that would be)
    deliveries_cancelled: int = 0
    run_id: int | None = None  # the purge_runs row (None for a dry run)


def retention_cutoff(
    now: dt.datetime, retention_days: int, before: dt.datetime | None = None
) -> dt.datetime:
    """Cases closed before the returned instant are past retention. ``before`` may only bring
    the cutoff earlier: nothing still within the retention period is ever purged."""
    cutoff = now - dt.timedelta(days=retention_days)
    if before is None:
        return cutoff
    if before.tzinfo is None:
        raise ValueError("before must be timezone-aware")
    if before > cutoff:
        raise ValueError(
            f"--before {before.date().isoformat()} is within the retention period of "
            f"{retention_days} days: cases closed after {cutoff.date().isoformat()} are kept"
        )
    return before


def _due(cutoff: dt.datetime) -> Select[Referral]:
    # Cases closed before migration 0003 have no closed_at; their last change is when they closed.
    closed = func.coalesce(Case.closed_at, Case.updated_at)
    return (
        select(Referral)
        .join(Referral.case)
        .where(
            Case.state.in_([state.value for state in CLOSED_STATES]),
            closed < cutoff,
            Referral.purged_at.is_(None),
        )
        .order_by(Referral.created_at, Referral.id)
    )


def _stub(resource: dict[str, Any], patient: str) -> dict[str, Any]:
    stub = {name: resource[name] for name in _STUB_ELEMENTS if name in resource}
    stub["subject"] = {"identifier": {"system": PSEUDONYM_SYSTEM, "value": patient}}
    return stub


def _scrub_referral(referral: Referral, key: bytes, now: dt.datetime) -> None:
    patient = pseudonym(key, referral.nhs_number)
    referral.nhs_number = patient
    referral.patient_name = None
    referral.birth_date = None
    referral.postcode = None
    referral.phone = None
    referral.notes = None
    referral.reasons = [
        {name: reason[name] for name in _REASON_KEYS if name in reason}
        for reason in referral.reasons or []
    ]
    referral.resource = _stub(referral.resource or {}, patient)
    referral.purged_at = now


async def purge(
    session: AsyncSession,
    *,
    now: dt.datetime,
    retention_days: int,
    run_by: str,
    before: dt.datetime | None = None,
    dry_run: bool = False,
) -> PurgeResult:
    """Remove the patient data of every referral whose case closed before the cutoff, in the
    caller's transaction (never commits). A dry run only counts. Each referral is purged once:
    its row is locked and skipped once ``purged_at`` is set, so concurrent runs never pseudonymise
    a pseudonym."""
    began = time.monotonic()
    cutoff = retention_cutoff(now, retention_days, before)
    if dry_run:
        count = await session.scalar(select(func.count()).select_from(_due(cutoff).subquery()))
        return PurgeResult(cutoff, retention_days, True, int(count or 0))

    referrals = list(await session.scalars(_due(cutoff).with_for_update(of=Referral)))
    ids = [referral.id for referral in referrals]
    cancelled = 0
    if referrals:
        key = await pseudonym_key(session)
        for referral in referrals:
            _scrub_referral(referral, key, now)
        await session.execute(
            update(Case)
            .where(Case.referral_id.in_(ids))
            .values(summary=None)
            .execution_options(synchronize_session=False)
        )
        await session.execute(
            update(Prescription)
            .where(Prescription.referral_id.in_(ids))
            .values(activity="")
            .execution_options(synchronize_session=False)
        )
        # The referral's Patient and every version kept of its resources hold patient data.
        await session.execute(
            update(Patient)
            .where(Patient.referral_id.in_(ids))
            .values(resource={})
            .execution_options(synchronize_session=False)
        )
        await session.execute(delete(ResourceVersion).where(ResourceVersion.referral_id.in_(ids)))
        case_ids = select(Case.id).where(Case.referral_id.in_(ids))
        for event in await session.scalars(
            select(CaseEvent).where(
                CaseEvent.case_id.in_(case_ids), CaseEvent.type.in_(_FREE_TEXT_EVENTS)
            )
        ):
            # Case events are append-only, except for this: retention outranks the log.
            if "activity" in (event.data or {}):
                event.data = {k: v for k, v in event.data.items() if k != "activity"}
        cancelled = await _purge_deliveries(session, ids, now)
        # Purged referrals still count in the reports, recounted from what is kept.
        await queue_for_reports(
            session, await session.scalars(select(Case.id).where(Case.referral_id.in_(ids))), now
        )
        # One audit record for the run, naming each purged patient by pseudonym.
        await trail.write_record(
            session,
            key=key,
            source="cli",
            audited=trail.Audited("D", "delete", "ServiceRequest"),
            agent=(None, run_by, None, None),
            outcome="0",
            status=None,
            patients={referral.id: referral.nhs_number for referral in referrals},
            now=now,
        )

    run = PurgeRun(
        started_at=now,
        finished_at=now + dt.timedelta(seconds=time.monotonic() - began),
        cutoff=cutoff,
        retention_days=retention_days,
        referrals_purged=len(referrals),
        run_by=run_by[:128],
    )
    session.add(run)
    await session.flush()
    log.info(
        "purge run %s: %d referrals purged (cases closed before %s), %d deliveries cancelled",
        run.id,
        len(referrals),
        cutoff.isoformat(),
        cancelled,
    )
    return PurgeResult(cutoff, retention_days, False, len(referrals), cancelled, run.id)


async def _purge_deliveries(
    session: AsyncSession, referral_ids: list[str], now: dt.datetime
) -> int:
    """Webhook payloads and receivers' answers go; what was never delivered is cancelled."""
    deliveries = select(Delivery.id).where(Delivery.referral_id.in_(referral_ids))
    await session.execute(
        update(DeliveryAttempt)
        .where(DeliveryAttempt.delivery_id.in_(deliveries))
        .values(response_excerpt=None)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(
        update(Delivery)
        .where(
            Delivery.referral_id.in_(referral_ids),
            Delivery.state.in_(("pending", "in_flight", "dead")),
        )
        .values(
            state="cancelled",
            last_error=PURGED_DELIVERY_ERROR,
            claimed_by=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Delivery)
        .where(Delivery.referral_id.in_(referral_ids))
        .values(payload=null())
        .execution_options(synchronize_session=False)
    )
    cancelled: int = getattr(result, "rowcount", 0) or 0
    return cancelled
