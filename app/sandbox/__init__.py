"""Sandbox mode: a demo service on the simulated platform and one client per role, seeded at
start-up with fixed keys, and a reset that puts everything back as it was seeded.

The keys are fixed and public on purpose: the sandbox holds synthetic data only.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

import app.models  # noqa: F401  (every table mapped: the reset empties them in dependency order)
from adapters import simulator
from app.cases.models import Case, Referral
from app.cases.states import OPEN_STATES
from app.config import Settings
from app.db import Base, Database, transaction, utcnow
from app.directory.models import SocialPrescribingService
from app.outbox.models import Destination, DestinationKind
from app.sandbox import history
from app.security.auth import hash_key
from app.security.models import ApiClient
from app.security.roles import Role

SANDBOX_SERVICE = "sandbox-life-rooms"
SANDBOX_SERVICE_NAME = "Sandbox Life Rooms"
SANDBOX_SERVICE_ORGANISATION = "SBXLR"
SANDBOX_REFERRER_ORGANISATION = "SBXRIO"
# The simulated platform the sandbox service's cases live on (adapters/simulator).
SANDBOX_PLATFORM = "sandbox"
SANDBOX_KEYS = {
    Role.CLINICAL_SYSTEM: ("spb_sandbox_clinical_system", SANDBOX_REFERRER_ORGANISATION),
    Role.ADVISOR: ("spb_sandbox_advisor", SANDBOX_SERVICE_ORGANISATION),
    Role.PLATFORM: ("spb_sandbox_platform", SANDBOX_SERVICE_ORGANISATION),
    Role.REPORTING: ("spb_sandbox_reporting", SANDBOX_SERVICE_ORGANISATION),
    Role.ADMIN: ("spb_sandbox_admin", SANDBOX_SERVICE_ORGANISATION),
}
# The example referrals' requester (RW4, a Halton team): the sandbox's clinical system refers for
# it too, as a trust's integration engine would for several organisations, so the README's and
# the guide's examples work as written.
SANDBOX_ACTS_FOR = {Role.CLINICAL_SYSTEM: ["RW4"]}
# What a reset keeps: the audit trail (append-only: the database refuses deletes, and a reset is
# itself audited) and the installation's keys (the audit pseudonym key, journey-link keys).
KEPT_TABLES = frozenset({"signing_keys", "purge_runs"})
KEPT_PREFIXES = ("audit_",)


def simulator_config(settings: Settings) -> dict[str, Any]:
    """The sandbox service's adapter configuration, from the settings (``--seed``,
    ``--clock-speed``)."""
    config = simulator.SimulatorConfig(
        seed=settings.sandbox_seed,
        days_per_second=settings.sandbox_clock_speed,
        platform=SANDBOX_PLATFORM,
    )
    return config.model_dump(mode="json")


async def seed_session(session: AsyncSession, settings: Settings) -> None:
    """The sandbox services, the platform route and the clients, as configured now, and the
    seeded cases (app.sandbox.history); what is already there is brought up to date, never
    duplicated."""
    await history.seed_community_hub(session, SANDBOX_SERVICE_ORGANISATION)
    config = simulator_config(settings)
    service = await session.get(SocialPrescribingService, SANDBOX_SERVICE)
    if service is None:
        service = SocialPrescribingService(
            id=SANDBOX_SERVICE,
            name=SANDBOX_SERVICE_NAME,
            organisation=SANDBOX_SERVICE_ORGANISATION,
            adapter=simulator.SimulatorAdapter.name,
            delivers=simulator.SimulatorAdapter.delivers,
        )
        session.add(service)
        # No ORM relationship orders these inserts: the service row goes first.
        await session.flush()
    else:
        # An older sandbox database (or another seed or speed): the service moves over.
        service.adapter = simulator.SimulatorAdapter.name
        service.delivers = simulator.SimulatorAdapter.delivers
    now = utcnow()
    route = await session.scalar(
        select(Destination).where(
            Destination.kind == DestinationKind.PLATFORM, Destination.service_id == SANDBOX_SERVICE
        )
    )
    if route is None:
        session.add(
            Destination(
                id=str(uuid.uuid4()),
                kind=DestinationKind.PLATFORM,
                adapter=simulator.SimulatorAdapter.name,
                service_id=SANDBOX_SERVICE,
                config=config,
                event_types=sorted(simulator.SimulatorAdapter.event_types),
                consecutive_failures=0,
                created_at=now,
                updated_at=now,
            )
        )
    elif route.adapter != simulator.SimulatorAdapter.name or route.config != config:
        route.adapter = simulator.SimulatorAdapter.name
        route.config = config
        route.event_types = sorted(simulator.SimulatorAdapter.event_types)
        route.active = True
        route.updated_at = now  # the dispatcher builds its adapter again
    for role, (key, organisation) in SANDBOX_KEYS.items():
        digest = hash_key(key)
        acts_for = SANDBOX_ACTS_FOR.get(role, [])
        held = await session.scalar(select(ApiClient).where(ApiClient.key_hash == digest))
        if held is not None:
            if held.acts_for != acts_for:
                held.acts_for = acts_for
            continue
        session.add(
            ApiClient(
                id=f"sandbox-{role.value}",
                name=f"Sandbox {role.value}",
                role=role.value,
                organisation=organisation,
                default_service_id=SANDBOX_SERVICE,
                acts_for=acts_for,
                key_hash=digest,
                created_at=now,
            )
        )
    await session.flush()
    await history.seed_cases(session, settings, SANDBOX_REFERRER_ORGANISATION)


async def is_sandbox_database(session: AsyncSession) -> bool:
    """Whether the sandbox seeded this database: it holds the sandbox admin's public key, not
    revoked. The server and every command read sandbox mode from here as well as from
    SPBRIDGE_SANDBOX (or ``serve --sandbox``): where anyone may act as admin with a published
    key, what sandbox mode relaxes (http and loopback URLs) protects nothing more."""
    digest = hash_key(SANDBOX_KEYS[Role.ADMIN][0])
    found = await session.scalar(
        select(ApiClient.id).where(ApiClient.key_hash == digest, ApiClient.revoked_at.is_(None))
    )
    return found is not None


async def resume_journeys(session: AsyncSession) -> int:
    """Give every simulated platform back the open cases it held before a restart; their
    journeys carry on from the referral's arrival time. Returns how many."""
    rows = await session.execute(
        select(Destination.config, Case.referral_id, Referral.created_at)
        .join(Case, Case.service_id == Destination.service_id)
        .join(Case.referral)
        .where(
            Destination.kind == DestinationKind.PLATFORM,
            Destination.adapter == simulator.SimulatorAdapter.name,
            Case.state.in_([state.value for state in OPEN_STATES]),
            # Only cases the platform was given (the dispatcher will give it the rest).
            Case.external_reference.is_not(None),
        )
    )
    count = 0
    for adapter_config, referral_id, received_at in rows:
        config = simulator.SimulatorConfig.model_validate(adapter_config)
        simulator.hold(config.platform, referral_id, received_at)
        count += 1
    return count


def _wiped_tables() -> list[str]:
    """Every table of sandbox data, children before parents."""
    return [
        table.name
        for table in reversed(Base.metadata.sorted_tables)
        if table.name not in KEPT_TABLES and not table.name.startswith(KEPT_PREFIXES)
    ]


# The report tables in the order the drainer takes them (app/reports/projection.py).
_REPORT_TABLES = (
    "report_pending_cases",
    "report_case_facts",
    "report_counts",
    "report_model_state",
)


def lock_order(wiped: list[str]) -> list[str]:
    """The wiped tables (children first) in the order a reset locks them (see :func:`reset`)."""
    parents_first = [name for name in reversed(wiped) if name not in _REPORT_TABLES]
    return parents_first + [name for name in _REPORT_TABLES if name in wiped]


async def reset(session: AsyncSession, settings: Settings) -> dict[str, int]:
    """Empty every table of sandbox data and seed again, in the caller's transaction. Old
    journeys stop (the simulated platforms forget their cases); the fixed keys work as before.
    Returns the rows removed per table."""
    simulator.forget_all()
    removed: dict[str, int] = {}
    tables = {table.name: table for table in Base.metadata.sorted_tables}
    wiped = _wiped_tables()
    if session.get_bind().dialect.name == "postgresql":
        # No other writer between our deletes (the in-process dispatcher recording an attempt
        # of a delivery about to go broke the foreign key: a 500). In the order writers take
        # them, so a writer holding one finishes instead of deadlocking: parents first, and the
        # report tables last, as every piece of work queues its case for the reports at its end
        # (app/cases/after_write.py) and the drainer takes the queue before the counters.
        names = ", ".join(f'"{name}"' for name in lock_order(wiped))
        await session.execute(text(f"LOCK TABLE {names} IN EXCLUSIVE MODE"))
    for name in wiped:
        result = await session.execute(delete(tables[name]))
        removed[name] = int(getattr(result, "rowcount", 0) or 0)
    # The rows are gone under the session's feet (the caller's own client among them): forget
    # what it loaded, so seeding adds them afresh instead of clashing with stale objects.
    session.expunge_all()
    await seed_session(session, settings)
    return removed


async def seed_async(settings: Settings) -> int:
    """Seed the database and resume the journeys of open cases; returns how many resumed."""
    database = Database.from_url(settings.database_url)
    try:
        async with transaction(database.write_sessions) as session:
            await seed_session(session, settings)
            return await resume_journeys(session)
    finally:
        await database.dispose()


def seed(settings: Settings) -> None:
    """`spbridge serve --sandbox`: seed, and print what an integrator needs to start."""
    resumed = asyncio.run(seed_async(settings))
    print("Sandbox mode (synthetic data only). Clients and their API keys:")
    for role, (key, organisation) in SANDBOX_KEYS.items():
        print(f"  {role.value:16} organisation {organisation:7} Authorization: Bearer {key}")
    print(
        f"  referrals go to service '{SANDBOX_SERVICE}', whose simulated platform moves each "
        f"case along at {settings.sandbox_clock_speed:g} simulated days per second "
        f"(seed {settings.sandbox_seed})"
    )
    print(
        f"  service '{history.COMMUNITY_HUB}' keeps its cases in the bridge: advisors record "
        f"events through the API; it holds {len(history.SEEDED_CASES)} seeded cases, received "
        "days or weeks ago"
    )
    if resumed:
        print(f"  {resumed} open case(s) carry on their journeys")
    print("  the landing page (/) has synthetic patients and curl examples; /docs the API")
