"""Importing history (issue 18 part 1): referrals with the time they were received, and their
cases' events with the time they happened, through the same rules as live traffic.

Each referral of the file is loaded with its events in one transaction of its own: the referral
by ``app.referrals.service.create_referral`` (received at its historical time), then its events
in time order, each by ``app.cases.service.apply_event`` (no second set of rules). A line that
is refused (the referral's or any of its events') rolls back the whole referral and is reported
by line number, element and reason, never by value. Imported history sends nothing to
platforms, clinical systems or subscribers unless asked (``deliver``).

Idempotent: a referral already held with the same content is not made again, and an event
already applied (its ``idempotency_key``, or for a line without one a key derived from the
line) is not applied again, so importing the same file twice changes nothing. A job
(app.imports.models.ImportJob, by the file's SHA-256) records how far an import got: a stopped
import of the same file takes up where it stopped. Nothing here commits except through the
transactions it opens, one per referral (this is a job, like the dispatcher's, not a request).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import multiprocessing
import os
import queue
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from pydantic import AwareDatetime, TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.cases import service as cases
from app.cases.events import CaseEventIn, EventBody
from app.cases.models import Referral
from app.config import Settings
from app.db import Database, transaction, utcnow
from app.directory.service import service_by_id
from app.errors import AppError, BadRequest, NotFound, validation_location, validation_message
from app.fhir import parsing
from app.fhir.terminology import reason_map
from app.fhir.transaction import unbundle
from app.imports.models import ImportJob
from app.imports.reader import (
    Group,
    Grouped,
    LineError,
    Place,
    Reader,
    Refusal,
    group,
    service_request_of,
)
from app.referrals import service as referrals
from app.referrals.changes import content, stored_resource
from app.referrals.intake import assess
from app.security.auth import Principal
from app.security.roles import Role

log = logging.getLogger("spbridge.imports")
SOURCE = "import"
# Refused lines kept on a job (the rest are counted): enough to fix a file by, bounded.
KEPT_REFUSALS = 1000
_EVENT_IN: TypeAdapter[EventBody] = TypeAdapter(CaseEventIn)
_INSTANT: TypeAdapter[dt.datetime] = TypeAdapter(AwareDatetime)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Options:
    deliver: bool = False  # send what the history causes, as live traffic would
    # The organisation that sent the referrals (ODS code); by default each referral's requester.
    organisation: str | None = None
    # The service a referral goes to when its performer names none.
    service_id: str | None = None
    client_id: str | None = None  # the admin who asked (None from the command line)
    name: str = ""


@dataclass
class Summary:
    job_id: str
    lines: int = 0
    referrals: int = 0
    created: int = 0
    unchanged: int = 0
    events: int = 0
    refused: int = 0
    done: int = 0  # referrals taken so far (made, held already, or refused)
    resumed_at: int = 0  # referrals a stopped run of this file had taken (skipped)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


def digest_of(paths: list[Path]) -> str:
    sha = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                sha.update(chunk)
        sha.update(b"\x00")
    return sha.hexdigest()


def _from_error(name: str, line: int, error: AppError) -> Refusal:
    issue = error.issues[0] if error.issues else None
    where = (issue.expression if issue else None) or "(line)"
    return Refusal(name, line, where, issue.diagnostics if issue else error.diagnostics)


def _from_validation(name: str, line: int, root: str, exc: ValidationError) -> Refusal:
    first = exc.errors()[0]
    location = validation_location(first)
    if first.get("type") != "union_tag_invalid" and location:
        location = location[1:]  # the event type pydantic chose by ``type``: not an element
    inside = ".".join(str(part) for part in location)
    return Refusal(name, line, f"{root}.{inside}" if inside else root, validation_message(first))


def _event_key(body: dict[str, Any]) -> str:
    """A line's own idempotency key when it brings none: the same line gives the same key."""
    return (
        "import:" + hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:48]
    )


@dataclass(frozen=True)
class _Event:
    occurred_at: dt.datetime
    line: int
    key: str
    body: EventBody


class Loader:
    """Loads one referral's lines at a time (its own transaction, given by the caller)."""

    def __init__(self, reader: Reader, settings: Settings, options: Options) -> None:
        self.reader = reader
        self.settings = settings
        self.options = options
        self.skew = dt.timedelta(seconds=settings.clock_skew_seconds)
        self.reasons = reason_map()
        self.context = cases.EventContext(
            client_id=options.client_id,
            request_id=None,
            correlation_id=None,
            deliver=options.deliver,
        )

    def _refuse(self, place: Place, where: str, reason: str) -> Refused:
        return Refused(Refusal(self.reader.name(place), place.line, where, reason))

    async def _referral(
        self, session: AsyncSession, place: Place, now: dt.datetime
    ) -> referrals.Intake:
        name = self.reader.name(place)
        data = self.reader.read(place)
        unknown = set(data) - {"received_at", "resource"}
        if unknown:
            raise self._refuse(place, "(line)", "a referral line has received_at and resource only")
        try:
            received_at = _INSTANT.validate_python(data.get("received_at")).astimezone(dt.UTC)
        except ValidationError:
            raise self._refuse(
                place, "received_at", "when the referral was received, with its time zone"
            ) from None
        if received_at > now + self.skew:
            raise self._refuse(place, "received_at", "received_at is in the future")
        resource = data["resource"]
        try:
            if resource.get("resourceType") == "Bundle":
                issues = parsing.r4_issues(resource)
                if issues:
                    raise _first(issues)
                service_request = unbundle(resource).service_request
            else:
                parsing.check_r4(resource)
                service_request = resource
            draft = assess(
                service_request,
                now=now,
                clock_skew=self.skew,
                require_consent=self.settings.require_consent,
                reason_map=self.reasons,
            )
            organisation = self.options.organisation or draft.requester_ods
            if not organisation:
                raise self._refuse(
                    place,
                    "ServiceRequest.requester",
                    "the referring organisation: an ODS code on the requester, or --organisation",
                )
            principal = Principal(
                client_id=self.options.client_id,
                name="import",
                role=Role.CLINICAL_SYSTEM,
                organisation=organisation,
                default_service_id=self.options.service_id,
            )
            # Left open: the referral's history is applied in the same piece of work.
            return await referrals.create_referral(
                session,
                draft,
                service_request,
                principal,
                self.context,
                received_at=received_at,
                finish=False,
            )
        except AppError as error:
            raise Refused(_from_error(name, place.line, error)) from None

    async def _held_same(self, session: AsyncSession, group: Group) -> Referral | None:
        """The referral held already for this group's line with the same content, if any."""
        assert group.referral is not None
        system, value = group.key
        query = select(Referral).where(
            Referral.identifier_system == system, Referral.identifier_value == value
        )
        if self.options.organisation:
            query = query.where(Referral.organisation == self.options.organisation)
        held = list(await session.scalars(query.limit(2)))
        if len(held) != 1 or held[0].purged_at is not None:
            return None
        resource = self.reader.read(group.referral).get("resource")
        if not isinstance(resource, dict):
            return None
        service_request = service_request_of(resource)
        if resource.get("resourceType") == "Bundle":
            try:
                service_request = unbundle(resource).service_request
            except AppError:
                return None
        if service_request is None:
            return None
        if content(stored_resource(service_request)) != content(held[0].resource):
            return None  # intake says what differs (409), as it would to the referrer
        return held[0]

    async def _held_referral(self, session: AsyncSession, group: Group) -> Referral:
        system, value = group.key
        query = select(Referral).where(
            Referral.identifier_system == system, Referral.identifier_value == value
        )
        if self.options.organisation:
            query = query.where(Referral.organisation == self.options.organisation)
        held = list(await session.scalars(query.limit(2)))
        if len(held) != 1:
            place = group.events[0]
            raise self._refuse(
                place,
                "referral",
                "names no referral of this file or held here"
                if not held
                else "names a referral held for more than one organisation: give --organisation",
            )
        return held[0]

    def _events(self, group: Group, now: dt.datetime) -> list[_Event]:
        events: list[_Event] = []
        for place in group.events:
            data = self.reader.read(place)
            body = data.get("event")
            if not isinstance(body, dict) or set(data) - {"referral", "event"}:
                raise self._refuse(place, "event", "an event line has referral and event only")
            try:
                parsed = _EVENT_IN.validate_python(body)
            except ValidationError as exc:
                raise Refused(
                    _from_validation(self.reader.name(place), place.line, "event", exc)
                ) from None
            if parsed.occurred_at is None:
                raise self._refuse(
                    place, "event.occurred_at", "when it happened: required for history"
                )
            if parsed.occurred_at > now + self.skew:
                raise self._refuse(place, "event.occurred_at", "occurred_at is in the future")
            key = parsed.idempotency_key or _event_key(body)
            events.append(_Event(parsed.occurred_at, place.line, key, parsed))
        events.sort(key=lambda event: (event.occurred_at, event.line))
        return events

    async def load(
        self, session: AsyncSession, group: Group, *, maybe_held: bool = True
    ) -> tuple[bool, int]:
        """Load ``group`` (raises Refused, after which the caller rolls back). Returns whether
        the referral was made now and how many events were applied. ``maybe_held`` False: the
        caller knows no referral with the group's identifier was held when it looked."""
        if group.refusal is not None:
            raise Refused(group.refusal)
        now = utcnow()
        events = self._events(group, now)  # every line checked before anything is written
        held_referral = (
            await self._held_same(session, group) if group.referral and maybe_held else None
        )
        work: cases.CaseWork | None = None
        if held_referral is not None:
            referral, created = held_referral, False  # a re-run: nothing to assess again
        elif group.referral is not None:
            intake = await self._referral(session, group.referral, now)
            referral, created, work = intake.referral, intake.created, intake.work
        else:
            referral, created = await self._held_referral(session, group), False
        if work is None:
            if not events:
                return created, 0
            if await cases.all_recorded(session, referral.id, {event.key for event in events}):
                return created, 0  # a re-run: every event is recorded already
            case = await cases.lock_case(session, referral.id)
            service = await service_by_id(session, referral.service_id)
            assert case is not None
            assert service is not None
            work = cases.CaseWork(session, case, referral, service, self.context)
        held = await work.held_keys()
        applied = 0
        for event in events:
            if event.key in held:
                continue
            try:
                await work.apply(
                    cases.NewEvent(
                        type=event.body.type,
                        source=SOURCE,
                        occurred_at=event.occurred_at,
                        data=event.body.data(),
                        idempotency_key=event.key,
                    ),
                    # Recorded as of when it happened, as the seeded sandbox history is.
                    now=max(event.occurred_at, referral.created_at),
                )
            except AppError as error:
                name = self.reader.paths[group.events[0].file].name
                raise Refused(_from_error(name, event.line, error)) from None
            held.add(event.key)
            applied += 1
        await work.finish()  # the versions and the report queue, once for the referral
        return created, applied


def _first(issues: list[Any]) -> AppError:
    return BadRequest(issues[0].diagnostics, issues=issues)


def _count(summary: Summary, job: ImportJob) -> None:
    job.lines = summary.lines
    job.referrals = summary.referrals
    job.done = summary.done
    job.created = summary.created
    job.unchanged = summary.unchanged
    job.events = summary.events
    job.refused = summary.refused
    job.refusals = summary.refusals[:KEPT_REFUSALS]
    job.updated_at = utcnow()


async def start_job(
    session: AsyncSession, digest: str, options: Options, job_id: str | None = None
) -> ImportJob:
    """The job for this file: a new one, or the unfinished one of the same file (resumed)."""
    job = None
    if job_id is not None:
        job = await session.get(ImportJob, job_id)
    if job is None:
        job = await session.scalar(
            select(ImportJob)
            .where(ImportJob.digest == digest, ImportJob.status.in_(("running", "stopped")))
            .order_by(ImportJob.created_at.desc())
            .limit(1)
        )
    now = utcnow()
    if job is None:
        job = ImportJob(
            id=job_id or str(uuid.uuid4()),
            digest=digest,
            name=options.name[:200],
            status="queued",
            deliver=options.deliver,
            client_id=options.client_id,
            lines=0,
            referrals=0,
            done=0,
            created=0,
            unchanged=0,
            events=0,
            refused=0,
            refusals=[],
            created_at=now,
            updated_at=now,
        )
        session.add(job)
    job.digest = digest
    job.status = "running"
    job.updated_at = now
    return job


@dataclass(frozen=True)
class _Outcome:
    created: bool = False
    applied: int = 0
    refusal: Refusal | None = None


class _HeldKeys:
    """Which referral identifiers of the file are held already, read for a block of groups at
    a time (one query per block instead of one per referral). Only a hint: a referral that
    arrives between the read and its load still meets the unique constraint at intake."""

    BLOCK = 500

    def __init__(self, database: Database, groups: list[Group], organisation: str | None) -> None:
        self.database = database
        self.groups = groups
        self.organisation = organisation
        self._blocks: dict[int, asyncio.Task[set[tuple[str, str]]]] = {}

    async def _read(self, block: int) -> set[tuple[str, str]]:
        keys = [g.key for g in self.groups[block * self.BLOCK : (block + 1) * self.BLOCK]]
        query = select(Referral.identifier_system, Referral.identifier_value).where(
            Referral.identifier_value.in_({value for _, value in keys})
        )
        if self.organisation:
            query = query.where(Referral.organisation == self.organisation)
        async with transaction(self.database.read_sessions) as session:
            return {(system, value) for system, value in await session.execute(query)}

    async def maybe_held(self, index: int) -> bool:
        block = index // self.BLOCK
        if block not in self._blocks:  # one read per block, awaited by every loader in it
            self._blocks[block] = asyncio.ensure_future(self._read(block))
        return self.groups[index].key in await self._blocks[block]


class _Taker:
    """Takes referrals of the file by index, each with its events in a transaction of its own,
    ``concurrency`` at a time; says what came of each (``done``), in the order they finish."""

    def __init__(
        self,
        database: Database,
        paths: list[Path],
        grouped: Grouped,
        settings: Settings,
        options: Options,
    ) -> None:
        self.database = database
        self.groups = grouped.groups
        self.reader = Reader(paths)
        self.loader = Loader(self.reader, settings, options)
        self.held_keys = _HeldKeys(database, grouped.groups, options.organisation)
        postgresql = database.engine.dialect.name == "postgresql"
        self.concurrency = settings.import_concurrency if postgresql else 1

    async def take(self, index: int) -> _Outcome:
        held = self.groups[index]
        try:
            maybe_held = held.referral is None or await self.held_keys.maybe_held(index)
            async with transaction(self.database.write_sessions) as session:
                created, applied = await self.loader.load(session, held, maybe_held=maybe_held)
            return _Outcome(created=created, applied=applied)
        except Refused as refused:
            return _Outcome(refusal=refused.refusal)
        except LineError as error:
            place = held.referral or held.events[0]
            return _Outcome(refusal=Refusal(self.reader.name(place), 0, error.field, error.reason))

    async def run(
        self, indices: Iterator[int], done: Callable[[int, _Outcome], Awaitable[None]]
    ) -> None:
        async def loader() -> None:
            for index in indices:  # one iterator shared by the loaders: each taken once
                await done(index, await self.take(index))

        try:
            if self.concurrency == 1:
                await loader()
                return
            loaders = [asyncio.create_task(loader()) for _ in range(self.concurrency)]
            try:
                await asyncio.gather(*loaders)
            except BaseException:
                for task in loaders:
                    task.cancel()
                await asyncio.gather(*loaders, return_exceptions=True)
                raise
        finally:
            self.reader.close()


# A file this large (referrals left to take) on PostgreSQL is shared among processes: one
# process's Python is the bottleneck there, not the database.
PROCESSES_FROM = 2000


def loading_processes(settings: Settings, dialect: str, left: int) -> int:
    """How many processes load ``left`` referrals."""
    if dialect != "postgresql" or left < PROCESSES_FROM:
        return 1
    return settings.import_processes or min(os.cpu_count() or 1, 4)


def _share(
    settings: Settings,
    paths: list[Path],
    options: Options,
    indices: range,
    outcomes: Any,  # multiprocessing queue: lists of (index, _Outcome), then None when done
) -> None:
    """A child process's share of a large import (started by ``run_import``). Outcomes go to
    the parent a batch at a time: one pickle and pipe write per referral cost a tenth of it."""

    async def run() -> None:
        database = Database.from_settings(settings)
        batch: list[tuple[int, _Outcome]] = []
        sent = time.monotonic()
        try:
            taker = _Taker(database, paths, group(paths), settings, options)

            async def done(index: int, outcome: _Outcome) -> None:
                nonlocal sent
                batch.append((index, outcome))
                if len(batch) >= 100 or time.monotonic() - sent > 0.5:
                    outcomes.put(batch.copy())
                    batch.clear()
                    sent = time.monotonic()

            await taker.run(iter(indices), done)
        finally:
            if batch:
                outcomes.put(batch)
            await database.dispose()

    asyncio.run(run())
    outcomes.put(None)


async def _in_processes(
    count: int,
    settings: Settings,
    paths: list[Path],
    options: Options,
    first: int,
    total: int,
    done: Callable[[int, _Outcome], Awaitable[None]],
) -> None:
    """Take referrals ``first``..``total`` in ``count`` child processes (each a stride of the
    file, each loading ``import_concurrency`` at a time), handing each outcome to ``done``."""
    context = multiprocessing.get_context("spawn")  # never fork a process holding a loop
    outcomes = context.Queue()
    children = [
        context.Process(
            target=_share,
            args=(settings, paths, options, range(first + k, total, count), outcomes),
            daemon=True,
        )
        for k in range(count)
    ]
    for child in children:
        child.start()
    try:
        finished = 0
        while finished < count:
            try:
                batch = await asyncio.to_thread(outcomes.get, True, 1.0)
            except queue.Empty:
                if any(c.exitcode not in (None, 0) for c in children):
                    raise RuntimeError("an import process stopped") from None
                continue
            if batch is None:
                finished += 1
                continue
            for index, outcome in batch:
                await done(index, outcome)
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join(5)
        outcomes.close()


async def run_import(
    database: Database,
    paths: list[Path],
    settings: Settings,
    options: Options,
    *,
    progress: Progress | None = None,
    job_id: str | None = None,
) -> Summary:
    """Import ``paths`` (NDJSON), a referral with its events per transaction; on PostgreSQL
    ``settings.import_concurrency`` referrals at a time, and a large file in several processes
    (``settings.import_processes``)."""
    started = time.monotonic()
    digest = digest_of(paths)
    async with transaction(database.write_sessions) as session:
        job = await start_job(session, digest, options, job_id)
        summary = Summary(job.id)
        resume_from = job.done
        if resume_from:
            # A stopped run of this file: its counts stand, the referrals it took are skipped.
            summary.created, summary.unchanged = job.created, job.unchanged
            summary.events, summary.refused = job.events, job.refused
            summary.refusals = list(job.refusals)
            summary.resumed_at = summary.done = resume_from
    grouped: Grouped = group(paths)
    summary.lines = grouped.lines
    summary.referrals = len(grouped.groups)
    if not resume_from:
        summary.refusals = [refusal.as_dict() for refusal in grouped.refusals]
    total = len(grouped.groups)
    # Referrals finish out of order when several load at once; the job's progress (what a
    # resume skips) is the run of referrals all taken from the start, folded in file order.
    outcomes: dict[int, _Outcome] = {}
    last_saved = time.monotonic()
    saving = False

    def fold() -> None:
        nonlocal summary
        while summary.done in outcomes:
            outcome = outcomes.pop(summary.done)
            if outcome.refusal is not None:
                summary.refused += 1
                summary.refusals.append(outcome.refusal.as_dict())
                summary.done += 1
            else:
                summary = _advanced(summary, outcome.created, outcome.applied, summary.done + 1)
            if progress is not None:
                progress(summary.done, total)

    async def save(status: str | None = None, error: str | None = None) -> None:
        async with transaction(database.write_sessions) as session:
            job_row = await session.get(ImportJob, summary.job_id)
            if job_row is not None:
                _count(summary, job_row)
                if status is not None:
                    job_row.status = status
                    job_row.error = error
                    if status == "done":
                        job_row.finished_at = utcnow()

    async def done(index: int, outcome: _Outcome) -> None:
        nonlocal last_saved, saving
        outcomes[index] = outcome
        fold()
        if time.monotonic() - last_saved > 1.0 and not saving:
            saving = True
            try:
                await save()
            finally:
                saving, last_saved = False, time.monotonic()

    processes = loading_processes(settings, database.engine.dialect.name, total - resume_from)
    try:
        if processes > 1:
            await _in_processes(processes, settings, paths, options, resume_from, total, done)
        else:
            taker = _Taker(database, paths, grouped, settings, options)
            await taker.run(iter(range(resume_from, total)), done)
    except BaseException as exc:
        await asyncio.shield(save("stopped", type(exc).__name__))
        raise
    await save("done")
    summary.seconds = time.monotonic() - started
    return summary


def _advanced(summary: Summary, created: bool, applied: int, done: int) -> Summary:
    return replace(
        summary,
        created=summary.created + created,
        unchanged=summary.unchanged + (not created),
        events=summary.events + applied,
        done=done,
    )


async def read_job(session: AsyncSession, principal: Principal, job_id: str) -> ImportJob:
    """An import job: the installation's admin sees every one, an organisation's admin those
    its client started."""
    job = await session.get(ImportJob, job_id)
    if job is None or not (principal.sees_everything or job.client_id == principal.client_id):
        raise NotFound("No such import job")
    return job
