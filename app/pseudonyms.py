"""The keyed pseudonym of a patient: how a purged referral (retention) and the audit trail name a
person without their NHS number."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging

from sqlalchemy.ext.asyncio import AsyncSession

from app.fhir.codes import CANONICAL_BASE
from app.keys import KeyPurpose, get_or_create_key

log = logging.getLogger("spbridge.retention")

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
    """The installation's pseudonym key (made by migration 0004; app.keys makes it if missing)."""
    return await get_or_create_key(session, KeyPurpose.PSEUDONYM)
