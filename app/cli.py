"""The ``spbridge`` command line."""

from __future__ import annotations

import asyncio
import gc
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import uvicorn

from app.config import ConfigurationError, Settings, get_settings, require_public_base_url
from app.logs import configure_logging
from app.operations.commands import (
    JsonOption,
    OneLineErrors,
    clients_cli,
    read_sandbox_mode_with,
    services_cli,
    subscriptions_cli,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.db import Database

cli = typer.Typer(
    cls=OneLineErrors, help="Social Prescribing Referral Bridge", no_args_is_help=True
)
cli.add_typer(clients_cli, name="clients")
cli.add_typer(services_cli, name="services")
cli.add_typer(subscriptions_cli, name="subscriptions")


async def _is_sandbox_database(session: AsyncSession) -> bool:
    from app.sandbox import is_sandbox_database

    return await is_sandbox_database(session)


# Commands read sandbox mode as the server does: from the setting, or from the database.
read_sandbox_mode_with(_is_sandbox_database)


def _sandbox_database() -> bool:
    """Whether the database was seeded as a sandbox's (False when it cannot be read yet)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from app.db import transaction

    url = make_url(get_settings().database_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or ":memory:").exists():
        return False  # nothing there yet: looking must not make the file

    async def probe() -> bool:
        database = _database()
        try:
            async with transaction(database.read_sessions) as session:
                return await _is_sandbox_database(session)
        finally:
            await database.dispose()

    try:
        return asyncio.run(probe())
    except (DBAPIError, OSError):
        return False


@cli.command()
def migrate(revision: Annotated[str, typer.Argument(help="Target revision")] = "head") -> None:
    """Bring the database schema up to date (Alembic migrations)."""
    from app.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    typer.echo(f"database at {revision}")


def graceful_timeout(settings: Settings) -> int:
    """Seconds uvicorn lets open requests finish after SIGTERM; then the lifespan gives the
    dispatcher as long again (app.worker.Background.stop). Whole seconds, rounded up."""
    return math.ceil(settings.shutdown_grace_seconds)


def bound_base_url(host: str, port: int) -> str:
    """http://host:port for the address `serve` binds; a wildcard address is reached locally."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 (naming the wildcard, not binding it)
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _require_public_base_url(settings: Settings) -> None:
    try:
        require_public_base_url(settings)
    except ConfigurationError as refused:
        typer.echo(f"error: {refused}", err=True)
        raise typer.Exit(2) from None


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    sandbox: Annotated[
        bool,
        typer.Option(
            help="Sandbox mode: seed a demo service on a simulated platform, clients with fixed "
            "keys and synthetic patients (see the landing page at /)"
        ),
    ] = False,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=2**31 - 1,
            help="With --sandbox: the seed of the simulated journeys (the same seed replays the "
            "same journeys) [default: 42, or SPBRIDGE_SANDBOX_SEED]",
        ),
    ] = None,
    clock_speed: Annotated[
        float | None,
        typer.Option(
            min=0.0001,
            max=1_000_000,
            help="With --sandbox: simulated days per real second (2: a six-week journey in "
            "about 20 s) [default: 2, or SPBRIDGE_SANDBOX_CLOCK_SPEED]",
        ),
    ] = None,
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
    """Run the API (applies migrations first unless told not to).

    On SIGTERM it stops taking connections, lets open requests finish and the dispatcher finish
    or give back what it is sending, each within SPBRIDGE_SHUTDOWN_GRACE_SECONDS.
    """
    from app.main import create_app
    from app.migrate import upgrade

    settings = get_settings()
    configure_logging(settings.log_level)
    if (seed is not None or clock_speed is not None) and not sandbox:
        raise typer.BadParameter("--seed and --clock-speed go with --sandbox")
    if sandbox:
        settings.sandbox = True
        if seed is not None:
            settings.sandbox_seed = seed
        if clock_speed is not None:
            settings.sandbox_clock_speed = clock_speed
    if not dispatcher:
        settings.run_dispatcher = False
    if not settings.sandbox and _sandbox_database():
        # Sandbox mode is read as every command reads it: a database the sandbox seeded (its
        # public keys work) is served as the sandbox it is.
        typer.echo("note: this database is a sandbox's (it holds the sandbox's keys)", err=True)
        settings.sandbox = True
    if settings.sandbox and not settings.public_base_url:
        # The address this server binds: the links it hands out point back at it.
        settings.public_base_url = bound_base_url(host, port)
    _require_public_base_url(settings)
    if migrate_first:
        upgrade(settings.database_url)
    if settings.sandbox:
        if "reconcile_interval" not in settings.model_fields_set:
            # The simulated platform's events are read by the reconciliation poll: every second.
            settings.reconcile_interval = 1.0
        from app.sandbox import seed as seed_sandbox

        seed_sandbox(settings)
    application = create_app(settings)
    settle_garbage_collector()
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
        timeout_graceful_shutdown=graceful_timeout(settings),
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
    _require_public_base_url(settings)  # the links in webhooks are built on it
    if migrate_first:
        upgrade(settings.database_url)
    if is_sqlite(settings.database_url):
        typer.echo("note: SQLite serves one process; prefer `spbridge serve` alone", err=True)
    settle_garbage_collector()
    asyncio.run(run_worker(settings))


# Allocations between young collections, and young (then middle) collections between older ones.
# A request allocates a few thousand container objects and frees nearly all of them by reference
# counting; Python's default (700, 10, 10) runs a collection every few hundred and a full one
# every few seconds under load (27-41 ms each, bench/RESULTS.md).
GC_THRESHOLDS = (10_000, 50, 100)


def settle_garbage_collector() -> None:
    """Once a process has started: everything imported lives as long as the process, so keep it
    out of every collection (freeze), and collect the rest less often (GC_THRESHOLDS). Frozen,
    a full collection walks only what requests left behind."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
    limit: Annotated[int, typer.Option(min=1, max=100, help="At most this many (1-100)")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List deliveries, newest first."""
    from app.delivery import admin
    from app.delivery.schemas import DeliveryPage
    from app.operations.commands import echo_json, print_table, read
    from app.security import scope

    async def listing(session: AsyncSession) -> DeliveryPage:
        return await admin.list_deliveries(
            session,
            scope.installation("spbridge command line"),
            state=state,
            referral=referral,
            destination=destination,
            event_type=None,
            limit=limit,
            cursor=None,
        )

    page = read(listing)
    if as_json:
        echo_json([item.model_dump(mode="json") for item in page.items])
        return
    if not page.items:
        typer.echo("no deliveries")
        return
    print_table(
        ("id", "state", "event", "attempts", "adapter", "referral", "last error"),
        [
            (i.id, i.state, i.event_type, i.attempts, i.adapter, i.referral_id, i.last_error)
            for i in page.items
        ],
    )


@deliveries_cli.command("replay")
def deliveries_replay(
    delivery_id: Annotated[str | None, typer.Argument(help="One dead letter's id")] = None,
    destination: Annotated[str | None, typer.Option(help="Every dead letter to it")] = None,
    referral: Annotated[str | None, typer.Option(help="Every dead letter of it")] = None,
    event_type: Annotated[str | None, typer.Option(help="Every dead letter of this type")] = None,
) -> None:
    """Put dead letters back in the queue: one by id, or every one that matches the filters.

    Matching dead letters are replayed in batches of up to 1000, each its own transaction, with
    progress shown; it stops when a batch finds only deliveries it has already replayed (they
    failed again meanwhile).
    """
    from app.db import transaction
    from app.delivery import admin
    from app.delivery.schemas import ReplayFilter
    from app.operations.commands import INVALID, fail, progress, run, write
    from app.security import scope

    operator = scope.installation("spbridge command line")

    if delivery_id is None and not (destination or referral or event_type):
        fail(
            "give a delivery id or at least one filter (--destination, --referral, --event-type)",
            INVALID,
        )
    if delivery_id is not None:

        async def replay(session: AsyncSession) -> None:
            await admin.replay_one(session, operator, delivery_id)

        write(replay)
        typer.echo("replayed 1 delivery")
        typer.echo(delivery_id)
        return

    matching = ReplayFilter(destination=destination, referral=referral, event_type=event_type)
    replayed: list[str] = []

    async def replay_all(database: Database) -> None:
        seen: set[str] = set()
        with progress() as shown:
            task = shown.add_task("replaying dead letters", total=None)
            while True:
                async with transaction(database.write_sessions) as session:
                    batch = await admin.replay_matching(session, operator, matching)
                fresh = [ident for ident in batch if ident not in seen]
                if not fresh:
                    return
                seen.update(fresh)
                replayed.extend(fresh)
                shown.update(task, advance=len(fresh))

    run(replay_all)
    typer.echo(f"replayed {len(replayed)} deliveries")
    for ident in replayed:
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
    from app.operations.commands import run, working
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

    async def purging(database: Database) -> PurgeResult:
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

    # One transaction (all or nothing), so a spinner rather than a count.
    try:
        with working("counting what would be purged…" if dry_run else "purging…"):
            result = run(purging)
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
def report(
    name: Annotated[str, typer.Argument(help="activity or staff-hub")] = "activity",
    service: Annotated[
        str | None, typer.Option(help="Only this service (default: every service in scope)")
    ] = None,
    organisation: Annotated[
        str | None, typer.Option(help="Only this organisation's services (ODS code)")
    ] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="First day, YYYY-MM-DD (default 12 months back)")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Last day, inclusive, YYYY-MM-DD (default today)")
    ] = None,
    team: Annotated[str | None, typer.Option(help="Only this referring team's referrals")] = None,
    output_format: Annotated[str, typer.Option("--format", help="json, csv or html")] = "json",
    suppress: Annotated[
        bool, typer.Option("--suppress", help="Disclosure control for publication")
    ] = False,
    output: Annotated[
        Path | None, typer.Option(help="Write to this file (default: standard output)")
    ] = None,
) -> None:
    """Write the activity or staff-hub report for a service and period (as the API does).

    Progress goes to standard error, section by section; the report to --output or stdout.
    """
    import datetime as dt

    from app.db import transaction
    from app.errors import AppError
    from app.operations.commands import check_organisation, check_service, refusal, steps
    from app.reports import render
    from app.reports import service as reports
    from app.reports.definitions import DEFINITIONS, ReportName
    from app.security.auth import Principal
    from app.security.roles import Role

    if name not in {n.value for n in ReportName}:
        raise typer.BadParameter("activity or staff-hub", param_hint="NAME")
    if output_format not in ("json", "csv", "html"):
        raise typer.BadParameter("json, csv or html", param_hint="--format")

    def day(value: str | None, hint: str) -> dt.date | None:
        if value is None:
            return None
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise typer.BadParameter("give a date as YYYY-MM-DD", param_hint=hint) from None

    first, last = day(start, "--from"), day(end, "--to")
    now = dt.datetime.now(dt.UTC)
    # The operator reads the database directly: every organisation, unless told one.
    principal = Principal(
        client_id=None,
        name="spbridge report",
        role=Role.ADMIN if organisation is None else Role.REPORTING,
        organisation=organisation,
    )
    definition = DEFINITIONS[ReportName(name)]

    async def run() -> str:
        database = _database()
        try:
            with steps(definition.title, len(definition.sections)) as shown:

                def step(section: str, done: int, of: int) -> None:
                    shown(section.replace("_", " "), done)

                async with transaction(database.write_sessions) as session:
                    # Refused as every command refuses them, before anything is counted.
                    await check_service(session, "--service", service)
                    await check_organisation(
                        session, "--organisation", organisation, runs_a_service=True
                    )
                    built = await reports.run_report(
                        session,
                        principal,
                        definition,
                        service_id=service,
                        team=team,
                        period=reports.period_of(first, last, now.date()),
                        now=now,
                        progress=step,
                    )
        finally:
            await database.dispose()
        document = reports.report_document(built, suppress=suppress)
        if output_format == "csv":
            return render.to_csv(document)
        if output_format == "html":
            return render.to_html(document)
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"

    try:
        text = asyncio.run(run())
    except AppError as exc:
        typer.echo(f"error: {refusal(exc)}", err=True)
        raise typer.Exit(1) from None
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)


reports_cli = typer.Typer(help="The report read model.")
cli.add_typer(reports_cli, name="reports")


@contextmanager
def _progress(title: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A progress callback ``step(done, total)`` for a long command, shown on stderr.

    On a terminal a bar, shown from the first step on (so that a refusal before it is one clear
    line) and its clock started then; in logs and pipes a line at each tenth of the way.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    shown = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = shown.add_task(title, total=None, start=False)
    tenths = [-1]

    def step(done: int, total: int) -> None:
        if not console.is_terminal:
            tenth = done * 10 // max(total, 1)
            if tenth > tenths[0]:
                tenths[0] = tenth
                typer.echo(f"{title}: {done}/{total} {unit}", err=True)
            return
        if not shown.live.is_started:
            shown.start()
            shown.start_task(task)
        shown.update(task, completed=done, total=total)

    try:
        yield step
    finally:
        if shown.live.is_started:
            shown.stop()


@reports_cli.command("rebuild")
def reports_rebuild(
    batch: Annotated[
        int, typer.Option(min=1, max=5000, help="Cases per transaction (1-5000)")
    ] = 500,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart", help="Start again from the first case, not where a stopped rebuild got to"
        ),
    ] = False,
) -> None:
    """Take every case into the report read model again, by this code's counting.

    Run it when the service warns that the stored version of the model is older than the
    code's (after an upgrade that changed how reports count, or over cases held before the
    model existed). Safe while the service runs: a batch at a time, under the report queue's
    rules, so reports stay exact; a stopped rebuild resumes where it got to. Progress on stderr.
    """
    from app.operations.commands import fail, run
    from app.reports.rebuild import NewerModel, Rebuilt, rebuild

    async def rebuilding(database: Database) -> Rebuilt:
        with _progress("rebuilding the report read model", "cases") as step:
            return await rebuild(database, batch=batch, restart=restart, progress=step)

    try:
        result = run(rebuilding)
    except NewerModel as exc:
        fail(str(exc))
    typer.echo(
        f"report read model rebuilt: {result.cases} cases taken in, counting version "
        f"{result.version}"
    )


@cli.command("import")
def import_history(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="NDJSON files: referral lines (received_at, resource) and event lines "
            "(referral, event)",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    deliver: Annotated[
        bool,
        typer.Option(
            "--deliver",
            help="Send what the history causes to platforms, clinical systems and subscribers "
            "(by default imported history sends nothing)",
        ),
    ] = False,
    organisation: Annotated[
        str | None,
        typer.Option(help="The referring organisation (ODS code); default: each requester's"),
    ] = None,
    service: Annotated[
        str | None,
        typer.Option(help="The service a referral goes to when its performer names none"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Import history: referrals with the time they were received, and their events.

    Each referral with its events is one transaction, applied by the same rules as live
    traffic (events in time order). A refused line is reported by file, line, element and
    reason, and nothing of its referral is loaded. Importing the same file again changes
    nothing; a stopped import of the same file takes up where it stopped. Progress on stderr;
    a summary at the end. Exit status 1 when a line was refused.
    """
    from app.imports.service import Options, Summary, run_import
    from app.operations.commands import run

    settings = get_settings()
    options = Options(
        deliver=deliver,
        organisation=organisation,
        service_id=service,
        name=", ".join(path.name for path in files),
    )

    async def importing(database: Database) -> Summary:
        with _progress("importing referrals", "referrals") as step:
            return await run_import(database, list(files), settings, options, progress=step)

    summary = run(importing)
    if as_json:
        typer.echo(json.dumps(summary.__dict__, indent=2))
    else:
        for refused in summary.refusals:
            typer.echo(
                f"refused: {refused['file']} line {refused['line']}: {refused['field']}: "
                f"{refused['reason']}",
                err=True,
            )
        resumed = f" (resumed after {summary.resumed_at})" if summary.resumed_at else ""
        typer.echo(
            f"imported {summary.referrals} referrals from {summary.lines} lines in "
            f"{summary.seconds:.1f} s{resumed}: {summary.created} made, {summary.unchanged} "
            f"held already, {summary.refused} refused; {summary.events} events applied; "
            f"{'delivered as live traffic' if deliver else 'nothing sent downstream'} "
            f"(job {summary.job_id})"
        )
    if summary.refused or summary.refusals:
        raise typer.Exit(1)


@cli.command()
def openapi(
    output: Annotated[Path, typer.Option(help="Where to write the document")] = Path(
        "openapi/openapi.json"
    ),
) -> None:
    """Write the OpenAPI document generated from the app."""
    from app.main import openapi_document as document

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document(), indent=2, sort_keys=True) + "\n")
    typer.echo(f"wrote {output}")


def main() -> None:
    cli()
