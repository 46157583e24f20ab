"""Client roles and which operations each may call (DESIGN §7; hardened by the security issue)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    CLINICAL_SYSTEM = "clinical-system"
    PLATFORM = "platform"
    ADVISOR = "advisor"
    REPORTING = "reporting"
    ADMIN = "admin"


class Operation(StrEnum):
    REFERRAL_CREATE = "referral.create"
    REFERRAL_UPDATE = "referral.update"
    REFERRAL_READ = "referral.read"
    TASK_READ = "task.read"
    CLIENT_MANAGE = "client.manage"
    SERVICE_MANAGE = "service.manage"
    SERVICE_READ = "service.read"
    ROUTE_MANAGE = "route.manage"
    SUBSCRIPTION_MANAGE = "subscription.manage"
    CASE_READ = "case.read"
    CASE_EVENT_RECORD = "case.event.record"
    WORKLIST_READ = "worklist.read"
    JOURNEY_LINK = "journey.link"
    DELIVERY_READ = "delivery.read"
    DELIVERY_REPLAY = "delivery.replay"
    REPORT_READ = "report.read"
    SANDBOX_RESET = "sandbox.reset"
    AUDIT_READ = "audit.read"
    IMPORT_RUN = "import.run"


# One declarative table of who may do what. Every route names its operation once, with
# Depends(require(Operation.…)) (app.security.auth), or is listed in PUBLIC_ROUTES with its reason
# (app.security.policy); tests/test_authorisation.py walks every route for every role against it.
PERMISSIONS: dict[Operation, frozenset[Role]] = {
    Operation.REFERRAL_CREATE: frozenset({Role.CLINICAL_SYSTEM}),
    Operation.REFERRAL_UPDATE: frozenset({Role.CLINICAL_SYSTEM}),
    Operation.REFERRAL_READ: frozenset(
        {Role.CLINICAL_SYSTEM, Role.PLATFORM, Role.ADVISOR, Role.ADMIN}
    ),
    Operation.TASK_READ: frozenset({Role.CLINICAL_SYSTEM, Role.PLATFORM, Role.ADVISOR, Role.ADMIN}),
    Operation.CLIENT_MANAGE: frozenset({Role.ADMIN}),
    Operation.SERVICE_MANAGE: frozenset({Role.ADMIN}),
    Operation.SERVICE_READ: frozenset(Role),
    Operation.ROUTE_MANAGE: frozenset({Role.ADMIN}),
    # Worklists (advisors, platforms) and clinical systems follow their own cases by webhook.
    Operation.SUBSCRIPTION_MANAGE: frozenset(
        {Role.CLINICAL_SYSTEM, Role.PLATFORM, Role.ADVISOR, Role.ADMIN}
    ),
    # Cases: the service side records what happens; the referrer may follow it.
    Operation.CASE_READ: frozenset({Role.CLINICAL_SYSTEM, Role.PLATFORM, Role.ADVISOR, Role.ADMIN}),
    Operation.CASE_EVENT_RECORD: frozenset({Role.PLATFORM, Role.ADVISOR, Role.ADMIN}),
    Operation.WORKLIST_READ: frozenset({Role.PLATFORM, Role.ADVISOR, Role.ADMIN}),
    Operation.JOURNEY_LINK: frozenset(
        {Role.CLINICAL_SYSTEM, Role.PLATFORM, Role.ADVISOR, Role.ADMIN}
    ),
    Operation.DELIVERY_READ: frozenset({Role.ADMIN}),
    Operation.DELIVERY_REPLAY: frozenset({Role.ADMIN}),
    # Aggregate reports of the organisation's services: no patient-level data.
    Operation.REPORT_READ: frozenset({Role.REPORTING, Role.ADMIN}),
    # Sandbox mode only: wipes every referral and client made since start-up.
    Operation.SANDBOX_RESET: frozenset({Role.ADMIN}),
    Operation.AUDIT_READ: frozenset({Role.ADMIN}),
    # Imports of history (app.imports): referrals and their events, as their referrer.
    Operation.IMPORT_RUN: frozenset({Role.ADMIN}),
}


# OAuth2 scopes (app/security/oauth.py): each operation belongs to one scope. An access token
# carries the scopes granted, which can only narrow its client's role; API keys keep the role's
# full rights.
SCOPE_OF: dict[Operation, str] = {
    Operation.REFERRAL_CREATE: "referrals:write",
    Operation.REFERRAL_UPDATE: "referrals:write",
    Operation.REFERRAL_READ: "referrals:read",
    Operation.TASK_READ: "referrals:read",
    Operation.JOURNEY_LINK: "referrals:read",
    Operation.CASE_READ: "cases:read",
    Operation.CASE_EVENT_RECORD: "cases:write",
    Operation.WORKLIST_READ: "worklist:read",
    Operation.SERVICE_READ: "services:read",
    Operation.SUBSCRIPTION_MANAGE: "subscriptions:write",
    Operation.CLIENT_MANAGE: "admin",
    Operation.SERVICE_MANAGE: "admin",
    Operation.ROUTE_MANAGE: "admin",
    Operation.DELIVERY_READ: "admin",
    Operation.DELIVERY_REPLAY: "admin",
    Operation.REPORT_READ: "reports:read",
    Operation.SANDBOX_RESET: "admin",
    Operation.AUDIT_READ: "admin",
    Operation.IMPORT_RUN: "admin",
}


def role_scopes(role: Role) -> frozenset[str]:
    """Every scope a client of ``role`` may be granted: those of the operations it may do."""
    return frozenset(
        scope for operation, scope in SCOPE_OF.items() if role in PERMISSIONS[operation]
    )
