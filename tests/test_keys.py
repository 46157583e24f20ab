"""The installation's keys (app.keys): made when their row is missing, another process's used
when it made the row first, and never by flushing the caller's pending rows (intake builds its
rows before writing them in one statement, its referral first). Both databases."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app import keys
from app.db import Database, transaction
from app.directory.models import SocialPrescribingService
from app.keys import KeyPurpose, get_or_create_key
from tests.conftest import empty_database


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    await empty_database(database_url)  # no key rows: each is made when first needed
    database = Database.from_url(database_url)
    try:
        yield database
    finally:
        await database.dispose()


async def test_a_missing_key_is_made_without_writing_the_callers_pending_rows(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    async with transaction(database.write_sessions) as session:
        pending = SocialPrescribingService(id="s1", name="S", organisation="ORG1")
        session.add(pending)
        with caplog.at_level(logging.WARNING, logger="spbridge.keys"):
            made = await get_or_create_key(session, KeyPurpose.PSEUDONYM)
        assert pending in session.new  # still the caller's to write, when it chooses
        session.expunge(pending)
    assert "a new one was made: pseudonym" in caplog.text
    async with transaction(database.write_sessions) as session:  # kept, and read as it is
        assert await get_or_create_key(session, KeyPurpose.PSEUDONYM) == made


async def test_a_key_another_process_made_first_is_the_one_used(
    database: Database, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with transaction(database.write_sessions) as session:
        theirs = await get_or_create_key(session, KeyPurpose.JOURNEY_LINK)
    read = keys._read
    reads = 0

    async def not_yet_there(*args: Any) -> str | None:
        # As if the other process committed its row between our read and our insert.
        nonlocal reads
        reads += 1
        return None if reads == 1 else await read(*args)

    monkeypatch.setattr(keys, "_read", not_yet_there)
    caplog.clear()
    async with transaction(database.write_sessions) as session:
        with caplog.at_level(logging.WARNING, logger="spbridge.keys"):
            assert await get_or_create_key(session, KeyPurpose.JOURNEY_LINK) == theirs
    assert reads == 2
    assert "a new one was made" not in caplog.text
