"""The keyed pseudonym of a patient: how a purged referral (retention) and the audit trail name a
person without their NHS number."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.fhir.codes import CANONICAL_BASE
from app.journey.models import SigningKey

log = logging.getLogger("spbridge.retention")

PSEUDONYM_KEY_PURPOSE = "pseudonym"
# Where a purged referral's stub names its patient: by pseudonym, never by NHS number.
PSEUDONYM_SYSTEM = f"{CANONICAL_BASE}/Id/patient-pseudonym"
# A pseudonym fits the NHS number column (10 characters) and can never be taken for an NHS
# number (those are ten digits): "P" and the first 9 base32 characters (45 bits) of the HMAC.
# Two people share one only by chance: about 1 in 70 000 for 10 000 people.
PSEUDONYM_PREFIX = "P"
_PSEUDONYM_CHARS = 9


def pseudonym(key: bytes, nhs_number: str) -> str:
    """The keyed pseudonym of an NHS number: the same person always gets the same one, and it
    cannot be turned back into the number without the key."""
    message = f"spbridge.pseudonym.v1\n{nhs_number.strip()}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return PSEUDONYM_PREFIX + base64.b32encode(digest).decode("ascii")[:_PSEUDONYM_CHARS]


async def pseudonym_key(session: AsyncSession) -> bytes:
    """The installation's pseudonym key (made by migration 0004). Should its row be gone, a new
    one is made, with a warning: pseudonyms made under the old key no longer match new ones."""
    held: str | None = await session.scalar(
        select(SigningKey.secret).where(SigningKey.purpose == PSEUDONYM_KEY_PURPOSE)
    )
    if held is None:
        log.warning("the pseudonym key was missing; a new one was made")
        made = secrets.token_urlsafe(48)
        try:
            async with session.begin_nested():
                session.add(
                    SigningKey(
                        purpose=PSEUDONYM_KEY_PURPOSE,
                        secret=made,
                        created_at=dt.datetime.now(dt.UTC),
                    )
                )
            held = made
        except IntegrityError:  # another process made it first
            held = await session.scalar(
                select(SigningKey.secret).where(SigningKey.purpose == PSEUDONYM_KEY_PURPOSE)
            )
            if held is None:
                raise
    return held.encode()
