"""Sandbox mode: a demo service and one client per role, with keys printed at start-up.

The keys are fixed and public on purpose: the sandbox holds synthetic data only.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from app.clients.auth import hash_key
from app.clients.models import ApiClient
from app.clients.roles import Role
from app.config import Settings
from app.db import Database
from app.directory.models import SocialPrescribingService

SANDBOX_SERVICE = "sandbox-life-rooms"
SANDBOX_SERVICE_ORGANISATION = "SBXLR"
SANDBOX_REFERRER_ORGANISATION = "SBXRIO"
SANDBOX_KEYS = {
    Role.CLINICAL_SYSTEM: ("spb_sandbox_clinical_system", SANDBOX_REFERRER_ORGANISATION),
    Role.ADVISOR: ("spb_sandbox_advisor", SANDBOX_SERVICE_ORGANISATION),
    Role.PLATFORM: ("spb_sandbox_platform", SANDBOX_SERVICE_ORGANISATION),
    Role.REPORTING: ("spb_sandbox_reporting", SANDBOX_SERVICE_ORGANISATION),
    Role.ADMIN: ("spb_sandbox_admin", SANDBOX_SERVICE_ORGANISATION),
}


async def seed_async(settings: Settings) -> None:
    database = Database.from_url(settings.database_url)
    try:
        async with database.write_sessions() as session, session.begin():
            if await session.get(SocialPrescribingService, SANDBOX_SERVICE) is None:
                session.add(
                    SocialPrescribingService(
                        id=SANDBOX_SERVICE,
                        name="Sandbox Life Rooms",
                        organisation=SANDBOX_SERVICE_ORGANISATION,
                        adapter="local",
                        adapter_config={},
                    )
                )
                await session.flush()
            for role, (key, organisation) in SANDBOX_KEYS.items():
                digest = hash_key(key)
                if await session.scalar(select(ApiClient.id).where(ApiClient.key_hash == digest)):
                    continue
                session.add(
                    ApiClient(
                        id=f"sandbox-{role.value}",
                        name=f"Sandbox {role.value}",
                        role=role.value,
                        organisation=organisation,
                        default_service_id=SANDBOX_SERVICE,
                        key_hash=digest,
                    )
                )
    finally:
        await database.dispose()


def seed(settings: Settings) -> None:
    asyncio.run(seed_async(settings))
    print("Sandbox clients (synthetic data only):")
    for role, (key, organisation) in SANDBOX_KEYS.items():
        print(f"  {role.value:16} organisation {organisation:7} Authorization: Bearer {key}")
    print(f"  referrals go to service '{SANDBOX_SERVICE}'; try test NHS number 9000000009")
