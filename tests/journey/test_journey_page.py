"""The patient journey page and its short-lived signed link.

API level on both databases: who gets a link, what the page shows for a recorded journey, its
headers, escaping, and every way a link is refused. Then the page end to end in headless
Chromium (Debian's `chromium`, driven by Playwright, JavaScript off, a narrow panel), with a
screenshot saved to test-artifacts/journey.png.

The API-level journey happens in 2040 (the app's clock is moved there) so that every date on the
page is written out below: events may be recorded late but not before the referral, which is
made now (so these tests assume they run before 2040).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import async_playwright

from app.journey.service import RedactLinkTokens
from app.main import create_app
from tests.conftest import ADMIN_KEY, ROOT, Bridge, empty_database, make_settings
from tests.support.cases import OpenCase, open_case
from tests.support.elemental_platform import serve

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "test-artifacts" / "journey.png"
REFUSED = (
    "This link has expired or is not valid for this referral; open the journey again from the "
    "clinical record."
)
# The app's clock during the API-level journey (all its events happen before it).
CLOCK = dt.datetime(2040, 6, 1, 12, 0, tzinfo=dt.UTC)


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- reading the page ------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One timeline item: its <time datetime>, the time as written, and what happened."""

    datetime: str
    when: str
    text: str


class Page(HTMLParser):
    """What the page shows, as a reader gets it (text unescaped), by element."""

    _VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "wbr"})
    _INLINE = frozenset({"a", "abbr", "b", "em", "span", "strong", "time"})

    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.tables: dict[str, list[list[str]]] = {}  # id → body rows → cells
        self.timeline: list[Entry] = []
        self.facts: dict[str, str] = {}  # <dt> → <dd>
        self.by_id: dict[str, str] = {}
        self.headings: list[tuple[int, str]] = []
        # Open elements: (tag, attributes, the text inside it so far).
        self._stack: list[tuple[str, dict[str, str], list[str]]] = []
        self._rows: list[list[str]] | None = None
        self._cells: list[str] | None = None
        self._time: tuple[str, str] = ("", "")

    @classmethod
    def of(cls, html: str) -> Page:
        page = cls()
        page.feed(html)
        page.close()
        assert not page._stack, f"unclosed elements: {[e[0] for e in page._stack]}"
        return page

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._VOID:
            return
        attributes = {name: value or "" for name, value in attrs}
        self._stack.append((tag, attributes, []))
        if tag == "table":
            self._rows = self.tables[attributes.get("id", "")] = []
        elif tag == "tr":
            self._cells = []

    def handle_endtag(self, tag: str) -> None:
        if tag in self._VOID:
            return
        name, attributes, parts = self._stack.pop()
        assert name == tag, f"<{name}> closed by </{tag}>"
        content = " ".join("".join(parts).split())
        parent = self._stack[-1] if self._stack else None
        if parent is not None:
            parent[2].append(content if tag in self._INLINE else f" {content} ")
        if "id" in attributes:
            self.by_id[attributes["id"]] = content
        if tag == "body":
            self.text = content
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append((int(tag[1]), content))
        elif tag in ("th", "td") and self._cells is not None:
            self._cells.append(content)
        elif tag == "tr" and parent is not None and parent[0] == "tbody":
            assert self._rows is not None and self._cells is not None
            self._rows.append(self._cells)
        elif tag == "time":
            self._time = (attributes["datetime"], content)
        elif tag == "li" and parent is not None and parent[1].get("id") == "timeline":
            datetime, when = self._time
            assert content.startswith(when + " "), content
            self.timeline.append(Entry(datetime, when, content[len(when) + 1 :]))
        elif tag == "dd" and parent is not None and parent[0] == "div":
            label = " ".join("".join(parent[2][:-1]).split())  # the <dt> before it
            self.facts[label] = content

    def handle_data(self, data: str) -> None:
        if self._stack and self._stack[-1][0] in ("style", "title"):
            return
        if self._stack:
            self._stack[-1][2].append(data)


# --- making a journey through the API ----------------------------------------------------------


@dataclass
class Journey(OpenCase):
    """A referral's case, with the journey link the referrer asks for."""

    async def link(self, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
        return await self.bridge.http.get(
            f"/api/v1/referrals/{self.referral_id}/journey-link",
            params=params,
            headers=self.referrer if headers is None else headers,
        )

    async def url(self) -> str:
        response = await self.link()
        assert response.status_code == 200, response.text
        url: str = response.json()["url"]
        return url


async def start_journey(bridge: Bridge, *, service: bool = True) -> Journey:
    case = await open_case(bridge, register=service)
    return Journey(case.bridge, case.referrer, case.advisor, case.referral_id, case.case_id)


# A pilot-like journey (DESIGN §1): (occurred_at, event, the timeline line it must read as).
# UK time: GMT until 25 March 2040, BST after.
JOURNEY: list[tuple[str, dict[str, Any], str]] = [
    ("2040-01-08T09:00:00Z",
     {"type": "case.accepted", "team": "Halton hub", "advisor": "A. Advisor"},
     "Accepted and registered by the service Working with: A. Advisor, Halton hub"),
    ("2040-01-08T10:15:00Z",
     {"type": "contact.attempted", "outcome": "no-answer", "method": "telephone"},
     "Contact attempted: no answer (by telephone)"),
    ("2040-01-09T14:00:00Z",
     {"type": "contact.attempted", "outcome": "reached", "method": "telephone"},
     "Contact made with the person (by telephone)"),
    ("2040-01-09T14:20:00Z",
     {"type": "appointment.booked", "appointment_id": "AP-1", "start": "2040-01-12T10:00:00Z",
      "appointment_type": "telephone", "duration_minutes": 30},
     "Appointment booked: telephone or video, 30 minutes, 12 Jan 2040, 10:00 GMT"),
    ("2040-01-12T10:30:00Z",
     {"type": "appointment.did_not_attend", "appointment_id": "AP-1"},
     "Did not attend appointment (12 Jan 2040, 10:00 GMT)"),
    ("2040-01-12T11:00:00Z",
     {"type": "appointment.booked", "appointment_id": "AP-2", "start": "2040-01-19T14:00:00Z",
      "appointment_type": "face-to-face", "duration_minutes": 60},
     "Appointment booked: face to face, 60 minutes, 19 Jan 2040, 14:00 GMT"),
    ("2040-01-19T15:00:00Z",
     {"type": "appointment.attended", "appointment_id": "AP-2", "duration_minutes": 50},
     "Attended appointment (19 Jan 2040, 14:00 GMT) Took 50 minutes"),
    # Raw 22 → metric 19.98.
    ("2040-01-19T15:05:00Z",
     {"type": "outcome.recorded", "stage": "start", "items": [3, 3, 3, 3, 3, 3, 4]},
     "Wellbeing measured (SWEMWBS): 19.98, start of support"),
    ("2040-01-19T15:10:00Z",
     {"type": "prescription.created", "prescription_id": "RX-1", "category": "benefits-money",
      "provider": "Citizens Advice Halton", "activity": "Benefits check", "status": "active"},
     "Social prescription: Benefits check with Citizens Advice Halton (active) "
     "Category: Benefits/Money"),
    ("2040-01-19T15:15:00Z",
     {"type": "prescription.created", "prescription_id": "RX-2",
      "category": "social-connection", "provider": "Halton Walking Group",
      "activity": "Weekly walking group"},
     "Social prescription: Weekly walking group with Halton Walking Group (proposed) "
     "Category: Social Connection"),
    ("2040-01-20T09:00:00Z",
     {"type": "demographics.recorded", "ethnicity": "Mixed: White and Asian",
      "age_band": "35-44"},
     "Equality monitoring information recorded"),
    ("2040-04-02T10:00:00Z",
     {"type": "appointment.booked", "appointment_id": "AP-3", "start": "2040-04-10T13:30:00Z",
      "appointment_type": "group", "duration_minutes": 90},
     "Appointment booked: group session, 90 minutes, 10 Apr 2040, 14:30 BST"),
    ("2040-04-10T15:30:00Z",
     {"type": "appointment.attended", "appointment_id": "AP-3"},
     "Attended appointment (10 Apr 2040, 14:30 BST)"),
    ("2040-04-10T16:00:00Z",
     {"type": "prescription.updated", "prescription_id": "RX-2", "status": "completed"},
     "Social prescription completed: Weekly walking group with Halton Walking Group"),
    # Raw 26 → metric 23.21: +3.23, a meaningful improvement.
    ("2040-04-10T16:05:00Z",
     {"type": "outcome.recorded", "stage": "end", "items": [4, 4, 4, 4, 3, 4, 3]},
     "Wellbeing measured (SWEMWBS): 23.21, end of support"),
]  # fmt: skip


async def record_journey(journey: Journey) -> None:
    for occurred_at, body, _ in JOURNEY:
        await journey.record({**body, "occurred_at": occurred_at})


async def open_page(journey: Journey, url: str | None = None) -> httpx.Response:
    return await journey.bridge.http.get(url or await journey.url())


def with_token(url: str, token: str) -> str:
    return url.split("?", 1)[0] + "?token=" + token


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def assert_refused(response: httpx.Response, message: str = REFUSED) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    page = Page.of(response.text)
    assert message in page.text
    # Nothing about the patient or the case.
    for secret in (
        "9000000009",
        "900 000 0009",
        "EXAMPLE",
        "1990",
        "Halton",
        "Citizens Advice",
        "Service life",
    ):
        assert secret not in response.text


def set_clock(app: Any, moment: dt.datetime) -> Callable[[], dt.datetime]:
    def clock() -> dt.datetime:
        return moment

    app.state.clock = clock
    return clock


# --- the link ----------------------------------------------------------------------------------


async def test_the_referrers_clinical_system_gets_a_link_that_expires(
    app: Any, bridge: Bridge
) -> None:
    set_clock(app, CLOCK)
    journey = await start_journey(bridge)
    response = await journey.link()
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"url", "expires_at"}
    assert body["expires_at"] == "2040-06-01T12:15:00Z"  # 15 minutes
    assert body["url"].startswith(f"http://testserver/journey/{journey.referral_id}?token=v1.")
    # v1.<expiry as a unix time: 2040-06-01T12:15:00Z>.<43 characters of base64url MAC>
    assert re.fullmatch(r"v1\.2222165700\.[A-Za-z0-9_-]{43}", token_of(body["url"]))

    shorter = await journey.link(expires_in=60)
    assert shorter.json()["expires_at"] == "2040-06-01T12:01:00Z"
    longest = await journey.link(expires_in=3600)
    assert longest.json()["expires_at"] == "2040-06-01T13:00:00Z"
    for refused in (59, 3601, "soon"):
        response = await journey.link(expires_in=refused)
        assert response.status_code == 422, refused
        assert response.headers["content-type"] == "application/problem+json"


async def test_the_services_advisor_gets_a_link_too(app: Any, bridge: Bridge) -> None:
    journey = await start_journey(bridge)
    response = await journey.link(headers=journey.advisor)
    assert response.status_code == 200, response.text
    page = await open_page(journey, response.json()["url"])
    assert page.status_code == 200


async def test_who_may_not_have_a_link(app: Any, bridge: Bridge) -> None:
    journey = await start_journey(bridge)
    other_trust = await bridge.key("clinical-system", "RX9")
    other_service = await bridge.key("advisor", "OTHER1")
    reporting = await bridge.key("reporting", "RW4")
    for headers, status in (
        (other_trust, 404),
        (other_service, 404),
        ({}, 401),
        ({"Authorization": "Bearer spb_not_a_key"}, 401),
        (reporting, 403),
    ):
        response = await journey.link(headers=headers)
        assert response.status_code == status, (headers, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert "url" not in response.json()
    unknown = await bridge.http.get(
        "/api/v1/referrals/no-such-referral/journey-link", headers=journey.referrer
    )
    assert unknown.status_code == 404


async def test_the_link_uses_the_public_base_url(app: Any, bridge: Bridge) -> None:
    journey = await start_journey(bridge)
    app.state.settings = app.state.settings.model_copy(
        update={"public_base_url": "https://bridge.example.nhs.uk/"}
    )
    url = await journey.url()
    assert url.startswith(f"https://bridge.example.nhs.uk/journey/{journey.referral_id}?token=")


# --- the page ----------------------------------------------------------------------------------


async def test_the_page_shows_the_journey(app: Any, bridge: Bridge) -> None:
    set_clock(app, CLOCK)
    journey = await start_journey(bridge)
    await record_journey(journey)
    response = await open_page(journey)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = response.headers["content-security-policy"]
    assert re.fullmatch(
        r"default-src 'none'; style-src 'sha256-[A-Za-z0-9+/]{43}='; base-uri 'none'; "
        r"form-action 'none'",
        policy,
    ), policy
    # The clinical record embeds the page in a frame.
    assert "frame-ancestors" not in policy
    assert "x-frame-options" not in response.headers
    html = response.text
    assert html.startswith('<!DOCTYPE html>\n<html lang="en-GB">')
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "<script" not in html.lower()
    assert "<main" in html and "<header" in html

    page = Page.of(html)
    assert page.headings == [
        (1, "Social prescribing journey"),
        (2, "Current status"),
        (2, "Social prescriptions"),
        (2, "Appointments"),
        (2, "Wellbeing"),
        (2, "Timeline"),
    ]
    assert "Service life-rooms" in page.text
    # The patient banner (NHS CUI): name (family name in capitals), date of birth with the age,
    # NHS number in 3-3-4, each after its label.
    assert page.by_id["patient-name"] == "EXAMPLE, Sam"
    assert page.by_id["patient-born"] == "01-Jan-1990 (50y)"
    assert page.by_id["patient-nhs-number"] == "900 000 0009"
    assert "EXAMPLE, Sam Born 01-Jan-1990 (50y) NHS No. 900 000 0009" in page.text
    assert page.by_id["state"] == "In progress — seen by the service"
    # The status last changed when the person attended AP-3 (later events only recorded things).
    assert "Since 10 Apr 2040, 16:30 BST" in page.text
    assert page.facts["Service"] == "Service life-rooms"
    assert page.facts["Referred by"] == "Halton Crisis Resolution Team (RW4)"
    assert page.facts["Referred for"].startswith("Finance, Benefits and Debt Advice")
    assert page.facts["First contact"] == "9 Jan 2040, 14:00 GMT"
    assert page.facts["Working with"] == "A. Advisor, Halton hub"
    assert "Closed" not in page.facts

    assert page.tables["prescriptions"] == [
        ["Benefits check", "Citizens Advice Halton", "Benefits/Money", "Active"],
        ["Weekly walking group", "Halton Walking Group", "Social Connection", "Completed"],
    ]
    assert page.tables["appointments"] == [
        ["12 Jan 2040, 10:00 GMT", "Telephone or video", "30 minutes", "Did not attend"],
        ["19 Jan 2040, 14:00 GMT", "Face to face", "60 minutes", "Attended (50 minutes)"],
        ["10 Apr 2040, 14:30 BST", "Group session", "90 minutes", "Attended"],
    ]
    assert page.tables["wellbeing"] == [
        ["19 Jan 2040, 15:05 GMT", "Start of support", "19.98"],
        ["10 Apr 2040, 17:05 BST", "End of support", "23.21"],
    ]
    assert page.by_id["wellbeing-change"] == (
        "From 19.98 to 23.21: +3.23 metric points, a meaningful improvement."
    )
    assert "A change of 3 or more points is meaningful for one person." in page.text

    # Every event, in the order it happened, each with its instant.
    received, *rest = page.timeline
    assert received.text == "Referral received"
    assert abs(utc(received.datetime) - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    assert [(entry.datetime, entry.text) for entry in rest] == [
        (occurred_at, line) for occurred_at, _, line in JOURNEY
    ]
    assert rest[0].when == "8 Jan 2040, 09:00 GMT"
    assert rest[-1].when == "10 Apr 2040, 17:05 BST"

    # Least data out: the banner identifies the person; no address, phone or EDI answers.
    for absent in ("WA7 1AA", "07700", "White and Asian", "35-44"):
        assert absent not in page.text, absent
    assert "Discharge summary" not in page.text
    assert "Shown at 1 Jun 2040, 13:00 BST." in page.text
    assert "Times are UK time (GMT in winter, BST in summer)." in page.text


async def test_a_closed_case_shows_its_discharge_summary(app: Any, bridge: Bridge) -> None:
    set_clock(app, CLOCK)
    journey = await start_journey(bridge)
    await record_journey(journey)
    await journey.record(
        {"type": "case.completed", "reason": "needs-met", "occurred_at": "2040-04-20T09:00:00Z"}
    )
    page = Page.of((await open_page(journey)).text)
    assert page.by_id["state"] == "Completed — needs met"
    assert "Since 20 Apr 2040, 10:00 BST" in page.text
    assert page.facts["Closed"] == "20 Apr 2040, 10:00 BST"
    assert (2, "Discharge summary") in page.headings
    assert (
        "Social prescribing support completed: needs met. 2 social prescriptions: Benefits check "
        "with Citizens Advice Halton (Benefits/Money, active); Weekly walking group with Halton "
        "Walking Group (Social Connection, completed). Appointments: 2 attended, 1 not attended. "
        "Wellbeing (SWEMWBS metric score): 19.98 at first, 23.21 at last (+3.23 metric points, "
        "a meaningful improvement)."
    ) in page.text
    assert page.timeline[-1] == Entry(
        "2040-04-20T09:00:00Z", "20 Apr 2040, 10:00 BST", "Support completed: needs met"
    )
    # Statuses agree with the closed case: what was still active says it was the last report.
    assert page.tables["prescriptions"] == [
        ["Benefits check", "Citizens Advice Halton", "Benefits/Money",
         "Active at last report (19 Jan 2040)"],
        ["Weekly walking group", "Halton Walking Group", "Social Connection", "Completed"],
    ]  # fmt: skip
    assert "Active" not in [row[-1] for row in page.tables["prescriptions"]]


async def test_a_case_closed_early_says_what_did_not_happen(app: Any, bridge: Bridge) -> None:
    """A closed case never says "yet": nothing more will happen."""
    set_clock(app, CLOCK)
    journey = await start_journey(bridge)
    await journey.record({"type": "case.accepted", "occurred_at": "2040-02-01T09:00:00Z"})
    await journey.record(
        {"type": "appointment.booked", "appointment_id": "AP-1", "start": "2040-02-10T10:00:00Z",
         "appointment_type": "telephone", "duration_minutes": 30,
         "occurred_at": "2040-02-01T10:00:00Z"}
    )  # fmt: skip
    await journey.record(
        {"type": "case.discharged", "reason": "unable-to-contact",
         "occurred_at": "2040-02-20T09:00:00Z"}
    )  # fmt: skip
    page = Page.of((await open_page(journey)).text)
    assert page.by_id["state"] == "Discharged — unable to contact"
    assert page.facts["First contact"] == "None before the case closed"
    assert "No social prescriptions were made." in page.text
    assert "Wellbeing was not measured while the service supported the person." in page.text
    assert page.tables["appointments"] == [
        ["10 Feb 2040, 10:00 GMT", "Telephone or video", "30 minutes",
         "Booked — no outcome recorded before the case closed"],
    ]  # fmt: skip
    for open_words in ("yet", "Not yet", "so far"):
        assert open_words not in page.text, open_words


def test_the_banner_writes_names_and_dates_as_the_nhs_patient_banner_does() -> None:
    from app.cases.models import Referral
    from app.journey.service import banner_name, born

    today = dt.date(2040, 6, 1)
    assert born("1990-06-02", today) == "02-Jun-1990 (49y)"
    assert born("1990-06-01", today) == "01-Jun-1990 (50y)"
    assert born("1990-06", today) == "Jun-1990"
    assert born("1990", today) == "1990"
    assert born(None, today) == "Not known"
    patient = {
        "resourceType": "Patient",
        "id": "p",
        "name": [
            {"use": "usual", "family": "Smith", "given": ["Jo"]},
            {"use": "official", "family": "Smith-Jones", "given": ["Joanne", "Mary"]},
        ],
    }
    held = Referral(resource={"subject": {"reference": "#p"}, "contained": [patient]})
    assert banner_name(held) == "SMITH-JONES, Joanne Mary"
    assert banner_name(Referral(resource={}, patient_name="Sam Example")) == "Sam Example"
    assert banner_name(Referral(resource={}, patient_name=None)) == "Name not known"


async def test_a_new_referral_and_a_small_change(app: Any, bridge: Bridge) -> None:
    set_clock(app, CLOCK)
    journey = await start_journey(bridge)
    page = Page.of((await open_page(journey)).text)
    assert page.by_id["state"] == "Received — waiting for the service to accept the referral"
    assert page.facts["First contact"] == "Not yet"
    assert "No social prescriptions yet." in page.text
    assert "No appointments booked yet." in page.text
    assert "Wellbeing has not been measured yet." in page.text
    assert "prescriptions" not in page.tables and "appointments" not in page.tables
    assert [entry.text for entry in page.timeline] == ["Referral received"]

    await journey.record({"type": "case.accepted", "occurred_at": "2040-02-01T09:00:00Z"})
    await journey.record(
        {"type": "contact.attempted", "outcome": "reached", "occurred_at": "2040-02-02T09:00:00Z"}
    )
    for day, items in ((3, [3, 3, 3, 3, 3, 3, 4]), (4, [3, 3, 3, 3, 3, 4, 4])):
        await journey.record(
            {
                "type": "outcome.recorded",
                "stage": "start" if day == 3 else "review",
                "items": items,
                "occurred_at": f"2040-02-0{day}T09:00:00Z",
            }
        )
    page = Page.of((await open_page(journey)).text)
    assert page.by_id["state"] == "In progress — the person has been contacted"
    assert "Since 2 Feb 2040, 09:00 GMT" in page.text
    # Raw 22 → 19.98, raw 23 → 20.73.
    assert page.by_id["wellbeing-change"] == (
        "From 19.98 to 20.73: +0.75 metric points, a small change."
    )
    assert (
        "This is less than the 3 points that count as a meaningful change for one person."
        in page.text
    )
    assert page.tables["wellbeing"][1] == ["4 Feb 2040, 09:00 GMT", "During support", "20.73"]


async def test_free_text_is_escaped(app: Any, bridge: Bridge) -> None:
    set_clock(app, CLOCK)
    journey = await start_journey(bridge)
    await journey.record({"type": "case.accepted", "occurred_at": "2040-01-02T09:00:00Z"})
    await journey.record(
        {
            "type": "prescription.created",
            "prescription_id": "RX-1",
            "category": "other",
            "provider": "<script>alert(1)</script>",
            "activity": 'Tea & "talk" <img src=x onerror=alert(2)>',
            "occurred_at": "2040-01-03T09:00:00Z",
        }
    )
    response = await open_page(journey)
    assert response.status_code == 200
    html = response.text
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Tea &amp; &#34;talk&#34; &lt;img src=x onerror=alert(2)&gt;" in html
    page = Page.of(html)
    assert page.tables["prescriptions"] == [
        ['Tea & "talk" <img src=x onerror=alert(2)>', "<script>alert(1)</script>", "Other",
         "Proposed"],
    ]  # fmt: skip


# --- refusals ----------------------------------------------------------------------------------


async def test_a_link_is_bound_to_its_referral(app: Any, bridge: Bridge) -> None:
    first = await start_journey(bridge)
    second = await start_journey(bridge, service=False)
    url = await first.url()
    assert (await open_page(first, url)).status_code == 200
    borrowed = url.replace(first.referral_id, second.referral_id)
    assert borrowed != url
    assert_refused(await open_page(second, borrowed))


async def test_an_expired_link_is_refused(app: Any, bridge: Bridge) -> None:
    set_clock(app, CLOCK)
    journey = await start_journey(bridge)
    url = await journey.url()
    set_clock(app, CLOCK + dt.timedelta(minutes=14, seconds=59))
    assert (await open_page(journey, url)).status_code == 200
    set_clock(app, CLOCK + dt.timedelta(minutes=15))
    assert_refused(await open_page(journey, url))
    set_clock(app, CLOCK + dt.timedelta(days=3))
    assert_refused(await open_page(journey, url))


async def test_a_tampered_link_is_refused(app: Any, bridge: Bridge) -> None:
    set_clock(app, CLOCK)
    journey = await start_journey(bridge)
    url = await journey.url()
    version, expires, mac = token_of(url).split(".")
    flipped = ("A" if mac[0] != "A" else "B") + mac[1:]
    later = str(int(expires) + 3600)
    for token in (
        f"{version}.{expires}.{flipped}",
        f"{version}.{later}.{mac}",  # a longer life
        f"v2.{expires}.{mac}",
        f"{version}.{expires}.{mac}=",
        f"{version}.{expires}.{mac[:-1]}",
        f"{version}.{expires}",
        "not-a-token",
        "v1.99999999999999999999." + "A" * 43,
        "x" * 5000,
    ):
        assert_refused(await open_page(journey, with_token(url, token)))


async def test_no_token_or_an_unknown_referral_never_fails(app: Any, bridge: Bridge) -> None:
    journey = await start_journey(bridge)
    url = await journey.url()
    without = await bridge.http.get(url.split("?", 1)[0])
    assert_refused(
        without,
        "This page opens only from a link in the clinical record; open the journey again from "
        "the clinical record.",
    )
    empty = await bridge.http.get(url.split("?", 1)[0] + "?token=")
    assert empty.status_code == 403
    for path in ("/journey/no-such-referral?token=v1.1.abc", "/journey/%00%FF?token=%00"):
        assert_refused(await bridge.http.get(path))


async def test_a_link_outlives_the_process_that_signed_it(
    app: Any, bridge: Bridge, database_url: str
) -> None:
    """The key is the installation's (in the database), so any process opens any link."""
    set_clock(app, CLOCK)
    journey = await start_journey(bridge)
    url = await journey.url()
    other = create_app(make_settings(database_url))
    set_clock(other, CLOCK)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.get(url)
    assert response.status_code == 200
    assert "NHS No. 900 000 0009" in Page.of(response.text).text


# --- in a browser ------------------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# What the page must satisfy in the browser, measured there (page JavaScript stays off: this
# runs from Playwright's side). Returns the facts; the test states what they must be.
MEASURE = """() => {
  const rgb = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const ratio = (a, b) => {
    const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  const background = (element) => {
    for (let e = element; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const body = getComputedStyle(document.body);
  const texts = [];
  for (const element of document.body.querySelectorAll('*')) {
    const own = [...element.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const style = getComputedStyle(element);
    texts.push({
      tag: element.tagName.toLowerCase() + (element.className ? '.' + element.className : ''),
      ratio: ratio(rgb(style.color).slice(0, 3), background(element)),
      size: parseFloat(style.fontSize),
    });
  }
  return {
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
    bodyColor: body.color,
    bodyBackground: body.backgroundColor,
    bodyRatio: ratio(rgb(body.color), background(document.body)),
    weakest: texts.reduce((a, b) => (b.ratio < a.ratio ? b : a)),
    smallest: texts.reduce((a, b) => (b.size < a.size ? b : a)),
    headings: [...document.querySelectorAll('h1, h2, h3, h4, h5, h6')].map(
      (h) => Number(h.tagName[1])),
    imagesWithoutAlt: [...document.images].filter((i) => !i.hasAttribute('alt')).length,
    landmarks: [...document.querySelectorAll('header, main')].map((e) => e.tagName),
    lang: document.documentElement.lang,
  };
}"""


def realistic_journey(start: dt.datetime) -> list[dict[str, Any]]:
    """Six weeks of a pilot-like case from ``start``, ending with needs met."""

    def at(days: float, hours: float = 0) -> str:
        moment = start + dt.timedelta(days=days, hours=hours)
        return moment.isoformat().replace("+00:00", "Z")

    return [
        {"type": "case.accepted", "team": "Halton hub", "advisor": "A. Advisor",
         "occurred_at": at(0, 2)},
        {"type": "contact.attempted", "outcome": "no-answer", "method": "telephone",
         "occurred_at": at(1)},
        {"type": "contact.attempted", "outcome": "reached", "method": "telephone",
         "occurred_at": at(2)},
        {"type": "appointment.booked", "appointment_id": "AP-1", "start": at(6),
         "appointment_type": "face-to-face", "duration_minutes": 60, "occurred_at": at(2, 1)},
        {"type": "appointment.did_not_attend", "appointment_id": "AP-1",
         "occurred_at": at(6, 2)},
        {"type": "appointment.booked", "appointment_id": "AP-2", "start": at(9),
         "appointment_type": "telephone", "duration_minutes": 30, "occurred_at": at(7)},
        {"type": "appointment.attended", "appointment_id": "AP-2", "duration_minutes": 45,
         "occurred_at": at(9, 1)},
        {"type": "outcome.recorded", "stage": "start", "items": [3, 2, 3, 3, 3, 2, 3],
         "occurred_at": at(9, 2)},
        {"type": "prescription.created", "prescription_id": "RX-1",
         "category": "benefits-money", "provider": "Citizens Advice Halton",
         "activity": "Benefits check and debt advice", "status": "active",
         "occurred_at": at(9, 3)},
        {"type": "prescription.created", "prescription_id": "RX-2",
         "category": "employment-volunteering",
         "provider": "Halton and St Helens Voluntary and Community Action",
         "activity": "Volunteering taster sessions", "occurred_at": at(9, 4)},
        {"type": "prescription.created", "prescription_id": "RX-3",
         "category": "social-connection", "provider": "Halton Men's Shed",
         "activity": "Weekly woodwork group", "status": "active", "occurred_at": at(10)},
        {"type": "demographics.recorded", "age_band": "35-44", "occurred_at": at(10, 1)},
        {"type": "prescription.updated", "prescription_id": "RX-1", "status": "completed",
         "occurred_at": at(30)},
        {"type": "outcome.recorded", "stage": "end", "items": [4, 3, 3, 4, 4, 3, 3],
         "occurred_at": at(31)},
        {"type": "case.completed", "reason": "needs-met", "occurred_at": at(31, 1)},
    ]  # fmt: skip


def chromium_missing() -> bool:
    return not CHROMIUM.exists()


def day_of(moment: dt.datetime) -> str:
    """A day as the page writes it, UK time ("16 Dec 2026", with no-break spaces)."""
    local = moment.astimezone(ZoneInfo("Europe/London"))
    return f"{local.day}\u00a0{local:%b}\u00a0{local.year}"


async def check_in_chromium(url: str, start: dt.datetime) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(
                java_script_enabled=False, viewport={"width": 360, "height": 800}
            )
            page = await context.new_page()
            response = await page.goto(url)
            assert response is not None and response.status == 200

            assert await page.locator("h1").inner_text() == "Social prescribing journey"
            assert await page.title() == "Social prescribing journey \u2013 The Life Rooms, Halton"
            # The patient banner: name, date of birth (with the age), NHS number.
            today = (start + dt.timedelta(days=45)).date()
            age = today.year - 1990
            assert await page.locator("#patient-name").inner_text() == "EXAMPLE, Sam"
            assert await page.locator("#patient-born").inner_text() == f"01-Jan-1990 ({age}y)"
            assert await page.locator("#patient-nhs-number").inner_text() == "900 000 0009"
            assert await page.locator("#patient dt").all_inner_texts() == ["Born", "NHS No."]
            assert await page.locator("#state").inner_text() == "Completed — needs met"
            rows = await page.locator("#prescriptions tbody tr").all()
            # The case is closed: what is not completed says what was last reported, and when.
            assert [await row.locator("th, td").all_inner_texts() for row in rows] == [
                ["Benefits check and debt advice", "Citizens Advice Halton", "Benefits/Money",
                 "Completed"],
                ["Volunteering taster sessions",
                 "Halton and St Helens Voluntary and Community Action",
                 "Employment/Volunteering",
                 f"Proposed at last report ({day_of(start + dt.timedelta(days=9, hours=4))})"],
                ["Weekly woodwork group", "Halton Men's Shed", "Social Connection",
                 f"Active at last report ({day_of(start + dt.timedelta(days=10))})"],
            ]  # fmt: skip
            assert await page.locator("#appointments tbody tr").count() == 2
            assert await page.locator("#timeline > li").count() == 16
            # Raw 19 → 17.98, raw 24 → 21.54.
            assert await page.locator("#wellbeing-change").inner_text() == (
                "From 17.98 to 21.54: +3.56 metric points, a meaningful improvement."
            )

            facts = await page.evaluate(MEASURE)
            # The inline style sheet is allowed by its CSP hash, so it applies.
            assert facts["bodyColor"] == "rgb(11, 12, 12)"
            assert facts["bodyBackground"] == "rgb(255, 255, 255)"
            assert facts["bodyRatio"] >= 4.5
            assert facts["weakest"]["ratio"] >= 4.5, facts["weakest"]
            assert facts["smallest"]["size"] >= 14, facts["smallest"]
            assert facts["scrollWidth"] <= facts["clientWidth"] == 360
            assert facts["imagesWithoutAlt"] == 0
            assert facts["landmarks"] == ["HEADER", "MAIN"]
            assert facts["lang"] == "en-GB"
            levels = facts["headings"]
            assert levels[0] == 1 and levels.count(1) == 1
            assert all(b <= a + 1 for a, b in itertools.pairwise(levels)), levels
            assert levels == [1, 2, 2, 2, 2, 2, 2]

            SCREENSHOT.parent.mkdir(exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT), full_page=True)

            for width in (320, 400):
                await page.set_viewport_size({"width": width, "height": 800})
                measured = await page.evaluate(MEASURE)
                assert measured["scrollWidth"] <= measured["clientWidth"] == width

            # A refused link is a page too, with nothing of the patient's.
            refused = await page.goto(with_token(url, "v1.1.abc"))
            assert refused is not None and refused.status == 403
            assert REFUSED in await page.locator("main").inner_text()
            await context.close()
        finally:
            await browser.close()


@pytest.mark.skipif(
    chromium_missing() and not os.environ.get("CI"),
    reason="Chromium is not installed at /usr/bin/chromium (Debian package `chromium`; "
    ".ci/run installs it, and in CI a missing Chromium fails this test)",
)
async def test_the_page_in_a_narrow_panel_of_headless_chromium(database_url: str) -> None:
    assert not chromium_missing(), (
        "CI needs Chromium at /usr/bin/chromium (apt-get install chromium)"
    )
    await empty_database(database_url)
    application = create_app(make_settings(database_url))
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=1)
    set_clock(application, start + dt.timedelta(days=45))
    async with (
        application.router.lifespan_context(application),
        serve(application) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as http,
    ):
        # The links point where the bridge is configured to be: here, the port just bound.
        application.state.settings = application.state.settings.model_copy(
            update={"public_base_url": base_url}
        )
        service = await http.post(
            "/api/v1/services",
            json={
                "id": "life-rooms",
                "name": "The Life Rooms, Halton",
                "organisation": "LR001",
                "adapter": "local",
            },
            headers=ADMIN,
        )
        assert service.status_code == 201, service.text
        journey = await start_journey(Bridge(http), service=False)
        for body in realistic_journey(start):
            await journey.record(body)
        url = await journey.url()
        assert url.startswith(f"{base_url}/journey/{journey.referral_id}?token=")
        await check_in_chromium(url, start)


def test_link_tokens_never_reach_the_access_log() -> None:
    """uvicorn logs each request's path with its query; a logged token would open the page."""
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/journey/abc?token=v1.123.SECRETMAC&x=1", "1.1", 200),
        None,
    )
    assert RedactLinkTokens().filter(record) is True
    message = record.getMessage()
    assert "SECRETMAC" not in message
    assert message == '127.0.0.1:5000 - "GET /journey/abc?token=[redacted]&x=1 HTTP/1.1" 200'
