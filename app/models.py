"""Every mapped table, imported once so Alembic and the app see the whole metadata."""

from app.audit.models import AuditedPatient, AuditRecord
from app.bars.models import BarsMessage
from app.cases.models import Appointment, Case, CaseEvent, Prescription, Referral, WellbeingScore
from app.db import Base
from app.directory.models import SocialPrescribingService
from app.imports.models import ImportJob
from app.keys import SigningKey
from app.outbox.models import Delivery, DeliveryAttempt, Destination, TopicSubscription
from app.platform.models import PlatformMessage
from app.reports.models import ReportCaseFact, ReportCount
from app.retention.models import PurgeRun
from app.security.models import ApiClient

__all__ = [
    "ApiClient",
    "Appointment",
    "AuditRecord",
    "AuditedPatient",
    "BarsMessage",
    "Base",
    "Case",
    "CaseEvent",
    "Delivery",
    "DeliveryAttempt",
    "Destination",
    "ImportJob",
    "PlatformMessage",
    "Prescription",
    "PurgeRun",
    "Referral",
    "ReportCaseFact",
    "ReportCount",
    "SigningKey",
    "SocialPrescribingService",
    "TopicSubscription",
    "WellbeingScore",
]
