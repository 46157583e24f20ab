"""The ``spbridge`` command line."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import uvicorn

from app.config import get_settings
from app.logs import configure_logging

if TYPE_CHECKING:
    from app.db import Database

cli = typer.Typer(help="Social Prescribing Referral Bridge", no_args_is_help=True)


@cli.command()
def migrate(revision: Annotated[str, typer.Argument(help="Target revision")] = "head") -> None:
    """Bring the database schema up to date (Alembic migrations)."""
    from app.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    typer.echo(f"database at {revision}")


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    sandbox: Annotated[
        bool, typer.Option(help="Sandbox mode: seed a demo service and clients")
    ] = False,
    migrate_first: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Apply migrations first")
    ] = True,
    dispatcher: Annotated[
        bool,
        typer.Option(
            "--dispatcher/--no-dispatcher",
            help="Deliver the outbox in this process (off when separate workers do it)",
        ),
    ] = True,
) -> None:
    """Run the API (applies migrations first unless told not to)."""
    from app.main import create_app
    from app.migrate import upgrade

    settings = get_settings()
    configure_logging(settings.log_level)
    if sandbox:
        settings.sandbox = True
    if not dispatcher:
        settings.run_dispatcher = False
    if migrate_first:
        upgrade(settings.database_url)
    if sandbox:
        from app.sandbox import seed

        seed(settings)
    application = create_app(settings)
    # Everything imported so far lives as long as the process: keep it out of the cyclic GC's
    # full collections, which otherwise pause requests for ~100 ms (bench/RESULTS.md).
    gc.collect()
    gc.freeze()
    # JSON logs (app/logs.py); our access log replaces uvicorn's, whose lines carry the path
    # and query (so do its WebSocket lines: the API has no WebSockets, so uvicorn takes none).
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
        ws="none",
    )


@cli.command()
def worker(
    migrate_first: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Apply migrations first")
    ] = False,
) -> None:
    """Deliver the outbox (and reconcile platforms) without serving the API.

    On PostgreSQL run as many as you like beside the API processes: they share the queue. With
    SQLite, run the API alone (`serve` already dispatches); a second process only contends.
    """
    from app.db import is_sqlite
    from app.migrate import upgrade
    from app.worker import run_worker

    settings = get_settings()
    configure_logging(settings.log_level)
    if migrate_first:
        upgrade(settings.database_url)
    if is_sqlite(settings.database_url):
        typer.echo("note: SQLite serves one process; prefer `spbridge serve` alone", err=True)
    asyncio.run(run_worker(settings))


def _database() -> Database:
    """The database for a command that does not start the app."""
    import app.models  # noqa: F401  (every table mapped, so foreign keys resolve)
    from app.db import Database

    return Database.from_url(get_settings().database_url)


deliveries_cli = typer.Typer(help="The delivery queue: list and replay dead letters.")
cli.add_typer(deliveries_cli, name="deliveries")


@deliveries_cli.command("list")
def deliveries_list(
    state: Annotated[str | None, typer.Option(help="pending, in_flight, delivered, dead…")] = None,
    referral: Annotated[str | None, typer.Option(help="Only this referral's")] = None,
    destination: Annotated[str | None, typer.Option(help="Only this destination's")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 50,
) -> None:
    """List deliveries, newest first."""
    from app.db import transaction
    from app.delivery import admin

    async def run() -> None:
        database = _database()
        try:
            async with transaction(database.read_sessions) as session:
                page = await admin.list_deliveries(
                    session,
                    state=state,
                    referral=referral,
                    destination=destination,
                    event_type=None,
                    limit=limit,
                    cursor=None,
                )
        finally:
            await database.dispose()
        for item in page.items:
            typer.echo(
                f"{item.id}  {item.state:<9} {item.event_type:<24} attempts={item.attempts:<3} "
                f"{item.adapter:<10} referral={item.referral_id or '-'}"
                + (f"  error={item.last_error}" if item.last_error else "")
            )

    asyncio.run(run())


@deliveries_cli.command("replay")
def deliveries_replay(
    delivery_id: Annotated[str | None, typer.Argument(help="One dead letter's id")] = None,
    destination: Annotated[str | None, typer.Option(help="Every dead letter to it")] = None,
    referral: Annotated[str | None, typer.Option(help="Every dead letter of it")] = None,
    event_type: Annotated[str | None, typer.Option(help="Every dead letter of this type")] = None,
) -> None:
    """Put dead letters back in the queue (one by id, or all that match the filters)."""
    from app.db import transaction
    from app.delivery import admin
    from app.delivery.schemas import ReplayFilter
    from app.errors import AppError

    if delivery_id is None and not (destination or referral or event_type):
        raise typer.BadParameter("give a delivery id or at least one filter")

    async def run() -> list[str]:
        database = _database()
        try:
            async with transaction(database.write_sessions) as session:
                if delivery_id is not None:
                    await admin.replay_one(session, delivery_id)
                    return [delivery_id]
                return await admin.replay_matching(
                    session,
                    ReplayFilter(destination=destination, referral=referral, event_type=event_type),
                )
        finally:
            await database.dispose()

    try:
        ids = asyncio.run(run())
    except AppError as exc:
        typer.echo(f"error: {exc.diagnostics}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"replayed {len(ids)} deliveries")
    for ident in ids:
        typer.echo(ident)


@cli.command()
def purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be purged; change nothing")
    ] = False,
    before: Annotated[
        str | None,
        typer.Option(
            help="Only cases closed before this date (YYYY-MM-DD, UTC); it may only be earlier "
            "than the retention period allows"
        ),
    ] = None,
) -> None:
    """Remove the patient data of cases closed longer ago than SPBRIDGE_RETENTION_DAYS.

    Names, birth dates, contact details, notes and the stored referral go; the NHS number is
    replaced by a keyed pseudonym; case events keep the codes reports count. Every run that
    changes something is recorded (purge_runs).
    """
    import datetime as dt
    import getpass
    import socket

    from app.db import transaction
    from app.retention.service import PurgeResult
    from app.retention.service import purge as run_purge

    settings = get_settings()
    configure_logging(settings.log_level)
    cutoff_before: dt.datetime | None = None
    if before is not None:
        try:
            day = dt.date.fromisoformat(before)
        except ValueError:
            raise typer.BadParameter("give a date as YYYY-MM-DD", param_hint="--before") from None
        cutoff_before = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    run_by = f"spbridge purge ({user}@{socket.gethostname()})"

    async def run() -> PurgeResult:
        database = _database()
        try:
            sessions = database.read_sessions if dry_run else database.write_sessions
            async with transaction(sessions) as session:
                return await run_purge(
                    session,
                    now=dt.datetime.now(dt.UTC),
                    retention_days=settings.retention_days,
                    run_by=run_by,
                    before=cutoff_before,
                    dry_run=dry_run,
                )
        finally:
            await database.dispose()

    try:
        result = asyncio.run(run())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--before") from None
    cutoff = result.cutoff.isoformat(timespec="seconds")
    if result.dry_run:
        typer.echo(
            f"dry run: {result.referrals} referrals would be purged (cases closed before "
            f"{cutoff}; retention {result.retention_days} days); nothing changed"
        )
        return
    typer.echo(
        f"purged {result.referrals} referrals (cases closed before {cutoff}; retention "
        f"{result.retention_days} days); {result.deliveries_cancelled} deliveries cancelled; "
        f"recorded as purge run {result.run_id}"
    )


@cli.command()
def openapi(
    output: Annotated[Path, typer.Option(help="Where to write the document")] = Path(
        "openapi/openapi.json"
    ),
) -> None:
    """Write the OpenAPI document generated from the app."""
    from app.openapi import document

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document(), indent=2, sort_keys=True) + "\n")
    typer.echo(f"wrote {output}")


def main() -> None:
    cli()
