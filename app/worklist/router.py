"""The advisors' worklist: `GET /api/v1/worklist`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.dependencies import Now, ReadSession
from app.errors import api_error_responses
from app.security.auth import Principal, require
from app.security.roles import Operation
from app.worklist import service
from app.worklist.schemas import (
    FIRST_CONTACT_OVERDUE,
    SUPPORT_WINDOW_EXCEEDED,
    WorklistPage,
    WorklistSort,
)

router = APIRouter(prefix="/api/v1/worklist", tags=["worklist"])

Reader = Annotated[Principal, Depends(require(Operation.WORKLIST_READ, writes=False))]


@router.get(
    "",
    response_model=WorklistPage,
    summary="The pathway advisors' worklist",
    description=(
        "The cases of the caller's services (those its organisation runs; an admin without an "
        "organisation sees every service), open cases only unless `state` says otherwise. Each "
        "item says how long the referral has waited, how long first contact took, the next "
        "appointment, and two flags: `first_contact_overdue` (open, nobody reached yet, and "
        "more than the service's `first_contact_target_days`, default 7, since the referral was "
        "received) and `support_window_exceeded` (open, reached, and more than the service's "
        "`support_window_days`, default 42, since first contact). Sorted oldest first by "
        "default; `sort=new-first` puts the referrals nobody has picked up yet (state "
        "`received`) first. Paged by `limit` and the opaque `next_cursor`. Items carry the "
        "patient's name, NHS number and phone, and no other patient data. A `service` that is "
        "not the caller's answers 404."
    ),
    operation_id="listWorklist",
    responses=api_error_responses(401, 403, 404, 422),
)
async def list_worklist(
    session: ReadSession,
    now: Now,
    principal: Reader,
    service_id: Annotated[
        str | None,
        Query(alias="service", max_length=64, description="Only this service's cases"),
    ] = None,
    team: Annotated[
        str | None, Query(max_length=255, description="Only cases of this team (exact)")
    ] = None,
    advisor: Annotated[
        str | None, Query(max_length=255, description="Only cases of this advisor (exact)")
    ] = None,
    state: Annotated[
        list[str] | None,
        Query(
            description="Case states to list (repeat or separate with commas); default the "
            "open states: received, accepted, in_progress, on_hold"
        ),
    ] = None,
    waiting_longer_than_days: Annotated[
        int | None,
        Query(ge=0, le=36500, description="Only cases received more than this many days ago"),
    ] = None,
    first_contact_overdue: Annotated[
        bool | None,
        Query(
            description="Only cases with (true) or without (false) the flag: "
            + FIRST_CONTACT_OVERDUE
        ),
    ] = None,
    support_window_exceeded: Annotated[
        bool | None,
        Query(
            description="Only cases with (true) or without (false) the flag: "
            + SUPPORT_WINDOW_EXCEEDED
        ),
    ] = None,
    sort: Annotated[
        WorklistSort,
        Query(
            description="`oldest` (received first, the default), `newest`, or `new-first` "
            "(state received first, then the rest, each oldest first)"
        ),
    ] = "oldest",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=500, description="`next_cursor` of the previous page")
    ] = None,
) -> WorklistPage:
    return await service.list_worklist(
        session,
        principal,
        service.WorklistQuery(
            service=service_id,
            team=team,
            advisor=advisor,
            states=state,
            waiting_longer_than_days=waiting_longer_than_days,
            support_window_exceeded=support_window_exceeded,
            first_contact_overdue=first_contact_overdue,
            sort=sort,
            limit=limit,
            cursor=cursor,
        ),
        now,
    )
