"""The patient journey page a clinician opens from the clinical record, and its signed link.

The clinical system asks for a link (API key, organisation visibility as for the referral); the
link opens a server-rendered HTML page for a short while, with no key and no JavaScript.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from app.cases.visibility import note_referrals
from app.config import Settings, public_base
from app.dependencies import AppSettings, Now, ReadSession, installation_keys
from app.errors import api_error_responses
from app.journey import service
from app.journey.schemas import JourneyLink
from app.keys import KeyPurpose
from app.referrals.service import get_referral
from app.security.auth import Principal, require
from app.security.roles import Operation

router = APIRouter(tags=["patient journey"])

_TEMPLATES = Path(__file__).resolve().parent / "templates"
_environment = Environment(
    loader=FileSystemLoader(_TEMPLATES),
    autoescape=True,  # everything shown is escaped: free text comes from advisors and platforms
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _breakable(value: str) -> Markup:
    """Escaped, with a line-break opportunity after each slash ("Employment/Volunteering")."""
    return escape(value).replace("/", Markup("/<wbr>"))


_environment.filters["breakable"] = _breakable

# The page's only style sheet, inline and allowed by its hash: no other source is allowed.
_CSS = (_TEMPLATES / "journey.css").read_text(encoding="utf-8")
_STYLE = Markup(_CSS)  # noqa: S704 (our own static file, not input)
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode("ascii")
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; base-uri 'none'; form-action 'none'"
)
# No frame-ancestors and no X-Frame-Options: the clinical record shows this page in a frame.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}
_EXPIRED = (
    "This link has expired or is not valid for this referral; open the journey again from "
    "the clinical record."
)
_NO_LINK = (
    "This page opens only from a link in the clinical record; open the journey again from "
    "the clinical record."
)
_GONE = "The bridge holds no journey for this referral."


def _render(template: str, status_code: int, **context: Any) -> HTMLResponse:
    html = _environment.get_template(template).render(css=_STYLE, **context)
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def _refused(message: str, status_code: int = 403) -> HTMLResponse:
    heading = "Page not found" if status_code == 404 else "This link cannot be opened"
    return _render("refused.html", status_code, heading=heading, message=message)


def _base_url(settings: Settings) -> str:
    # From the settings only: a link built on the Host header could send a clinician elsewhere.
    return public_base(settings)


@router.get(
    "/api/v1/referrals/{referral_id}/journey-link",
    response_model=JourneyLink,
    summary="Get a short-lived link to the patient journey page",
    description=(
        "A signed link to the HTML patient journey of this referral (state, timeline, social "
        "prescriptions, appointments, wellbeing change), for the clinical record to open or "
        "embed. It works without an API key until `expires_at` (15 minutes unless "
        "`expires_in` asks for 60 to 3600 seconds), and only for this referral. Available to "
        "the organisation that sent the referral and the one that runs its service; others get "
        "404. Ask for a new link each time the journey is opened: links are not to be stored."
    ),
    operation_id="createJourneyLink",
    responses={
        200: {"description": "The link, and when it stops working"},
        **api_error_responses(401, 403, 404, 410, 422),
    },
)
async def create_journey_link(
    referral_id: str,
    request: Request,
    response: Response,
    session: ReadSession,
    settings: AppSettings,
    now: Now,
    principal: Annotated[Principal, Depends(require(Operation.JOURNEY_LINK, writes=False))],
    expires_in: Annotated[
        int,
        Query(
            ge=service.MIN_LIFETIME_SECONDS,
            le=service.MAX_LIFETIME_SECONDS,
            description="Seconds the link works for",
        ),
    ] = int(service.LINK_LIFETIME.total_seconds()),
) -> JourneyLink:
    referral = await get_referral(session, principal, referral_id)
    key = await installation_keys(request).get(session, KeyPurpose.JOURNEY_LINK)
    token, expires = service.issue(key, referral.id, now, expires_in)
    base = _base_url(settings)
    response.headers["Cache-Control"] = "no-store"
    return JourneyLink(
        url=f"{base}/journey/{quote(referral.id, safe='')}?token={token}",
        expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
    )


@router.get(
    "/journey/{referral_id}",
    response_class=HTMLResponse,
    summary="The patient journey page",
    description=(
        "Server-rendered HTML for a clinician: where the referral stands, every event with its "
        "date, social prescriptions, appointments and the wellbeing change. Opened with the "
        "signed `token` from `createJourneyLink`; an expired, altered or missing token, or one "
        "issued for another referral, answers 403 with a short HTML page and no patient data."
    ),
    operation_id="readJourneyPage",
    # Both parameters are read by hand: whatever comes is answered with an HTML page (never a
    # JSON validation error), so they are documented here rather than declared.
    openapi_extra={
        "parameters": [
            {
                "name": "referral_id",
                "in": "path",
                "required": True,
                "description": "The referral (its ServiceRequest id)",
                "schema": {"type": "string"},
            },
            {
                "name": "token",
                "in": "query",
                "required": True,
                "description": "The signed token from the journey link (createJourneyLink)",
                "schema": {"type": "string"},
            },
        ]
    },
    responses={
        200: {"description": "The journey page", "content": {"text/html": {}}},
        403: {
            "description": "The link has expired or is not valid for this referral",
            "content": {"text/html": {}},
        },
        404: {"description": "No journey held for this referral", "content": {"text/html": {}}},
    },
)
async def read_journey_page(request: Request, session: ReadSession, now: Now) -> HTMLResponse:
    referral_id: str = request.path_params["referral_id"]
    token = request.query_params.get("token")
    if not token:
        return _refused(_NO_LINK)
    key = await installation_keys(request).get(session, KeyPurpose.JOURNEY_LINK)
    if not service.token_is_valid(key, token, referral_id, now):
        return _refused(_EXPIRED)
    page = await service.journey_page(session, referral_id, now)
    if page is None:
        return _refused(_GONE, 404)
    await note_referrals(session, [referral_id])
    return _render("journey.html", 200, page=page)
