"""The report definitions the one engine serves: which sections, in which order."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from app.reports import sections
from app.reports.sections import SectionBuilder


class ReportName(StrEnum):
    ACTIVITY = "activity"
    STAFF_HUB = "staff-hub"


@dataclass(frozen=True)
class ReportDefinition:
    name: ReportName
    title: str
    sections: tuple[SectionBuilder, ...]


ACTIVITY = ReportDefinition(
    ReportName.ACTIVITY,
    "Social prescribing activity",
    (
        sections.activity,
        sections.referring_teams,
        sections.reasons,
        sections.case_status,
        sections.appointments,
        sections.prescriptions,
        sections.wellbeing,
        sections.demographics,
        sections.waiting,
    ),
)

# The staff mental-health and wellbeing hub monitoring dataset.
STAFF_HUB = ReportDefinition(
    ReportName.STAFF_HUB,
    "Staff mental health and wellbeing hub monitoring",
    (
        sections.staff_referrals,
        sections.referral_sources,
        sections.staff_groups,
        sections.assessment,
        sections.waiting,
        sections.demographics,
    ),
)

DEFINITIONS = {definition.name: definition for definition in (ACTIVITY, STAFF_HUB)}
