"""Reports: `GET /api/v1/reports/activity` and `GET /api/v1/reports/staff-hub`, as JSON, CSV or
a printable HTML page."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from app.dependencies import Now, WriteSession
from app.errors import api_error_responses
from app.reports import render, service
from app.reports.definitions import ACTIVITY, STAFF_HUB, ReportDefinition
from app.reports.schemas import ReportDocument, ReportFormat
from app.security.auth import Principal, require
from app.security.roles import Operation

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

# A write session: a report first takes the queued cases into the read model
# (app.reports.projection.drain), in its own transaction.
Reader = Annotated[Principal, Depends(require(Operation.REPORT_READ, writes=True))]

_COMMON = (
    " Covers the services the caller's organisation runs (an admin without an organisation: "
    "every service), or the one named by `service` (404 if it is not the caller's). The period "
    "is `from` to `to` inclusive (dates, at most three years; default the twelve months to "
    "today); each table has a column per calendar month (UTC) and a total. Referrals count in "
    "the month they were received; every other figure in the month its event happened "
    "(`occurred_at`), so late and backdated records count where they belong. `suppress=true` "
    "applies disclosure control for publication: counts of 1-7 become `*`, others are rounded "
    "to the nearest 5, enough further cells are hidden that none can be worked out from totals, "
    "and percentages and means of 1-7 people are hidden. The format is `format` if given, else "
    "the Accept header: `text/csv` (one line per figure: "
    "report,section,table,unit,row_key,row,column,value), `text/html` (a printable page with "
    "bar charts, no external resources), anything else JSON."
)
_MEDIA = {"json": "application/json", "csv": "text/csv", "html": "text/html"}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The report",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "text/html": {"schema": {"type": "string"}},
        },
    },
    **api_error_responses(401, 403, 404, 422),
}


def _format(request: Request, asked: ReportFormat | None) -> ReportFormat:
    if asked is not None:
        return asked
    accept = request.headers.get("accept", "").lower()
    if "text/csv" in accept:
        return "csv"
    if "text/html" in accept and "application/json" not in accept:
        return "html"
    return "json"


async def _answer(
    request: Request,
    session: WriteSession,
    now: dt.datetime,
    principal: Principal,
    definition: ReportDefinition,
    *,
    start: dt.date | None,
    end: dt.date | None,
    service_id: str | None,
    team: str | None,
    suppress: bool,
    output: ReportFormat | None,
) -> Response:
    chosen = _format(request, output)
    period = service.period_of(start, end, now.date())
    report = await service.run_report(
        session,
        principal,
        definition,
        service_id=service_id,
        team=team,
        period=period,
        now=now,
    )
    document = service.report_document(report, suppress=suppress)
    name = f"{definition.name.value}-{period.start.isoformat()}-{period.end.isoformat()}"
    headers = {"Cache-Control": "no-store"}
    if chosen == "csv":
        headers["Content-Disposition"] = f'attachment; filename="{name}.csv"'
        return Response(render.to_csv(document), media_type="text/csv", headers=headers)
    if chosen == "html":
        headers["Content-Security-Policy"] = render.CONTENT_SECURITY_POLICY
        headers["X-Content-Type-Options"] = "nosniff"
        return Response(render.to_html(document), media_type="text/html", headers=headers)
    body = ReportDocument.model_validate(document).model_dump_json(by_alias=True)
    return Response(body, media_type=_MEDIA["json"], headers=headers)


From = Annotated[
    dt.date | None,
    Query(
        alias="from",
        description="First day (YYYY-MM-DD); default 11 months before `to`, from the 1st",
    ),
]
To = Annotated[
    dt.date | None,
    Query(alias="to", description="Last day, inclusive (YYYY-MM-DD); default today"),
]
ServiceId = Annotated[
    str | None, Query(alias="service", max_length=64, description="Only this service")
]
Team = Annotated[
    str | None,
    Query(max_length=255, description="Only referrals from this referring team (exact name)"),
]
Suppress = Annotated[bool, Query(description="Apply disclosure control for publication")]
Format = Annotated[
    ReportFormat | None,
    Query(alias="format", description="json, csv or html; overrides the Accept header"),
]


@router.get(
    "/activity",
    response_model=ReportDocument,
    summary="The activity report (the evaluation tables)",
    description="Referrals, registrations, attended appointments and social prescriptions; "
    "referrals by referring team; reasons for referral; case status and discharge reasons; "
    "appointments by outcome, type and length; social prescriptions by category and provider; "
    "SWEMWBS matched pairs; demographics and equality items; waiting times." + _COMMON,
    operation_id="getActivityReport",
    responses=_RESPONSES,
)
async def activity_report(
    request: Request,
    session: WriteSession,
    now: Now,
    principal: Reader,
    start: From = None,
    end: To = None,
    service_id: ServiceId = None,
    team: Team = None,
    suppress: Suppress = False,
    output: Format = None,
) -> Response:
    return await _answer(
        request,
        session,
        now,
        principal,
        ACTIVITY,
        start=start,
        end=end,
        service_id=service_id,
        team=team,
        suppress=suppress,
        output=output,
    )


@router.get(
    "/staff-hub",
    response_model=ReportDocument,
    summary="The staff mental-health hub monitoring dataset",
    description="Referrals (individuals and teams) by source and staff group, people "
    "assessed, time from referral to contact, signposted / referred onward / monitored / in "
    "treatment elsewhere, and demographics. Referral source and staff group come from the "
    "ServiceRequest, mapped by fhir/ConceptMap-referral-source.json and "
    "fhir/ConceptMap-staff-group.json." + _COMMON,
    operation_id="getStaffHubReport",
    responses=_RESPONSES,
)
async def staff_hub_report(
    request: Request,
    session: WriteSession,
    now: Now,
    principal: Reader,
    start: From = None,
    end: To = None,
    service_id: ServiceId = None,
    team: Team = None,
    suppress: Suppress = False,
    output: Format = None,
) -> Response:
    return await _answer(
        request,
        session,
        now,
        principal,
        STAFF_HUB,
        start=start,
        end=end,
        service_id=service_id,
        team=team,
        suppress=suppress,
        output=output,
    )
