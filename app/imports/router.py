"""Imports of history by an admin: `/api/v1/imports` (the same import as `spbridge import`).

The upload is streamed to a file (never held in memory) and imported by a background job whose
status is read at `/api/v1/imports/{id}`."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from fastapi.responses import JSONResponse

from app.db import Database
from app.dependencies import AppSettings, ReadSession, WriteSession, get_database
from app.errors import (
    BusinessRuleViolation,
    PayloadTooLarge,
    UnsupportedMediaType,
    api_error_responses,
)
from app.imports import service
from app.imports.schemas import ImportJobOut
from app.security import scope
from app.security.auth import Principal, require
from app.security.roles import Operation

router = APIRouter(prefix="/api/v1/imports", tags=["imports"])

Importer = Annotated[Principal, Depends(require(Operation.IMPORT_RUN, writes=True))]
Watcher = Annotated[Principal, Depends(require(Operation.IMPORT_RUN, writes=False))]
NDJSON = "application/x-ndjson"
# Background imports of this process, kept so that they are not collected while they run.
_RUNNING: set[asyncio.Task[Any]] = set()


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _spool(request: Request, limit: int) -> tuple[Path, int]:
    """The body, streamed to a file of its own; 413 past ``limit`` bytes."""
    handle, name = tempfile.mkstemp(prefix="spbridge-import-", suffix=".ndjson")
    size = 0
    try:
        with os.fdopen(handle, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"An import file is limited to {limit} bytes")
                out.write(chunk)
    except BaseException:
        _remove(Path(name))
        raise
    return Path(name), size


async def _run(database: Database, path: Path, settings: Any, options: Any, job_id: str) -> None:
    try:
        await service.run_import(database, [path], settings, options, job_id=job_id)
    except Exception:  # the job row says it stopped; the log says why
        service.log.exception("import job %s stopped", job_id)
    finally:
        _remove(path)


@router.post(
    "",
    status_code=202,
    response_model=ImportJobOut,
    summary="Import history (background job)",
    description=(
        "An NDJSON file (`Content-Type: application/x-ndjson`): referral lines "
        '`{"received_at": …, "resource": ServiceRequest or transaction Bundle}` and event '
        'lines `{"referral": {"system", "value"}, "event": {"type", "occurred_at", …}}`, as '
        "`spbridge import` takes. Answers 202 with the job at once; read its status at "
        "`GET /api/v1/imports/{id}`. Each referral with its events is one transaction, applied "
        "by the same rules as live traffic; a refused line is listed by line, element and "
        "reason, and nothing of its referral is loaded. Imported history sends nothing to "
        "platforms, clinical systems or subscribers unless `deliver=true`. Uploading the same "
        "file again changes nothing; an interrupted job of the same file takes up where it "
        "stopped. An organisation's admin imports the referrals of its own organisation."
    ),
    operation_id="startImport",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {NDJSON: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses=api_error_responses(401, 403, 413, 415, 422),
)
async def start_import(
    request: Request,
    session: WriteSession,
    settings: AppSettings,
    principal: Importer,
    tasks: BackgroundTasks,
    deliver: Annotated[
        bool, Query(description="Send what the history causes, as live traffic would")
    ] = False,
    organisation: Annotated[
        str | None,
        Query(max_length=64, description="The referring organisation (default: the requester's)"),
    ] = None,
    service_id: Annotated[
        str | None,
        Query(alias="service", max_length=64, description="Service when performer names none"),
    ] = None,
    name: Annotated[str, Query(max_length=200, description="A name for the job")] = "upload",
) -> JSONResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != NDJSON:
        raise UnsupportedMediaType(f"Send the file as {NDJSON}")
    if principal.organisation is not None:
        # An organisation's admin imports its own organisation's referrals (403 otherwise).
        if organisation is not None:
            scope.require_own(principal, organisation, expression="organisation")
        organisation = principal.organisation
    path, size = await _spool(request, settings.import_max_bytes)
    if size == 0:
        _remove(path)
        raise BusinessRuleViolation("The file is empty", expression="body")
    options = service.Options(
        deliver=deliver,
        organisation=organisation,
        service_id=service_id,
        client_id=principal.client_id,
        name=name,
    )
    job = await service.start_job(session, service.digest_of([path]), options)
    job.status = "queued"
    out = ImportJobOut.model_validate(job, from_attributes=True)
    database = get_database(request)

    async def launch() -> None:  # after the commit: the job row is there for the task to take
        task = asyncio.get_running_loop().create_task(
            _run(database, path, settings, options, job.id)
        )
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)

    tasks.add_task(launch)
    return JSONResponse(
        out.model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/api/v1/imports/{job.id}"},
    )


@router.get(
    "/{job_id}",
    response_model=ImportJobOut,
    summary="An import job's status",
    operation_id="readImport",
    responses=api_error_responses(401, 403, 404),
)
async def read_import(session: ReadSession, principal: Watcher, job_id: str) -> ImportJobOut:
    job = await service.read_job(session, principal, job_id)
    return ImportJobOut.model_validate(job, from_attributes=True)
