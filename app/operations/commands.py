"""The operator's commands: ``spbridge clients``, ``services`` and ``subscriptions``, and what every
command shares (running it, its errors, its tables, its progress).

Each command is one transaction through the same service functions the API uses
(app.clients.service, app.directory.service, app.webhooks.service), acting as the bootstrap
admin would. Bad input and refusals are printed as one line on stderr, ``error: …``, saying what
was wrong and what would be right, with exit status 2 (the input is wrong) or 1 (refused, or the
database did not answer): never a traceback or a box, also for what the command line itself
refuses (an unknown option, a value of the wrong kind: :class:`OneLineErrors`). Lists print an
aligned table, or JSON with ``--json``. A service or an organisation that is not known here is
refused the same way by every command that takes one (:func:`check_service`,
:func:`check_organisation`). Sandbox mode is read as ``spbridge serve`` reads it
(:func:`settings_for`).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import typer.core
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings, get_settings
from app.db import Database, transaction, utcnow
from app.errors import AppError, validation_message
from app.security.roles import Role

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# Exit statuses: 1 for a refusal or a failure, 2 for input that is not valid (as click does).
REFUSED = 1
INVALID = 2


def fail(message: str, code: int = REFUSED) -> NoReturn:
    typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(code)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def refusal(exc: AppError) -> str:
    """An AppError as one line: its diagnostics, and each issue that says more."""
    details = [i.diagnostics for i in exc.issues if i.diagnostics != exc.diagnostics]
    # Pydantic's "Value error, " before a validator's own words says nothing to a reader.
    return "; ".join([exc.diagnostics, *details]).replace("Value error, ", "")


class OneLineErrors(typer.core.TyperGroup):
    """The ``spbridge`` command group, whose usage errors (an unknown command or option, a
    value of the wrong kind, a missing option) are one ``error:`` line naming the command's
    --help, instead of a box; the exit status stays 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except typer.Abort:
            typer.echo("error: stopped before it finished", err=True)
            sys.exit(1)
        except typer.TyperException as exc:
            context = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError":
                # A group named alone: its help (rich help is printed as it is made).
                if exc.format_message().strip():
                    typer.echo(exc.format_message())
                sys.exit(0)
            message = _one_line(exc.format_message()).replace("Value error, ", "")
            if context is not None:
                message += f" (see `{context.command_path} --help`)"
            typer.echo(f"error: {message}", err=True)
            sys.exit(exc.exit_code)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def database() -> Database:
    """The database for a command that does not start the app."""
    import app.models  # noqa: F401  (every table mapped, so foreign keys resolve)

    return Database.from_url(get_settings().database_url)


def run(work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` against the database; its refusals and the database's failures become one
    clear line and a non-zero exit status."""

    async def main() -> T:
        opened = database()
        try:
            return await work(opened)
        finally:
            await opened.dispose()

    try:
        return asyncio.run(main())
    except AppError as exc:
        code = INVALID if exc.status in (400, 422) else REFUSED
        fail(refusal(exc), code)
    except IntegrityError:
        fail("the database refused the change: it conflicts with what is stored")
    except (DBAPIError, OSError) as exc:
        # Not the driver's message: it can quote the URL's user and host, or a statement.
        fail(
            f"the database did not answer, or has no schema ({type(exc).__name__}): check "
            "SPBRIDGE_DATABASE_URL and run `spbridge migrate`"
        )


def write(work: Callable[[Any], Awaitable[T]]) -> T:
    """``work(session)`` in one write transaction (committed if it returns)."""

    async def inside(opened: Database) -> T:
        async with transaction(opened.write_sessions) as session:
            return await work(session)

    return run(inside)


def read(work: Callable[[Any], Awaitable[T]]) -> T:
    """``work(session)`` in one read-only transaction."""

    async def inside(opened: Database) -> T:
        async with transaction(opened.read_sessions) as session:
            return await work(session)

    return run(inside)


def parse(model: type[M], **values: Any) -> M:
    """The request model the API would build, or the first problem with the options given."""
    try:
        return model.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]).replace("_", "-")
        fail(f"--{where}: {validation_message(error)}", INVALID)


def progress() -> Progress:
    """A progress display on stderr (stdout stays for the result), for work that takes a while."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} done"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


@contextmanager
def working(description: str) -> Iterator[None]:
    """A spinner on stderr while one long step runs (a line saying so where stderr is not a
    terminal)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        typer.echo(description, err=True)
        yield
        return
    with console.status(description):
        yield


Step = Callable[[str, int], None]


@contextmanager
def steps(title: str, total: int) -> Iterator[Step]:
    """Progress through ``total`` named steps on stderr: a bar on a terminal, else one line per
    step ("title: 3/9 done, step"), so logs and pipes see it too. Yields ``step(name, done)``."""
    console = Console(stderr=True)
    if not console.is_terminal:

        def line(name: str, done: int) -> None:
            typer.echo(f"{title}: {done}/{total} done, {name}", err=True)

        yield line
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as shown:
        task = shown.add_task(title, total=total)

        def bar(name: str, done: int) -> None:
            shown.update(task, completed=done, description=f"{title}: {name}")

        yield bar


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Rows under their column names, each column aligned, nothing cut or wrapped (on a
    terminal or not)."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*("-" if value is None else str(value) for value in row))
    console = Console(highlight=False, soft_wrap=True, width=100_000)
    if console.is_terminal:
        console = Console(highlight=False)
    console.print(table)


# --- what every command reads the same way ------------------------------------------------------

# Whether a database is a sandbox's (app.sandbox.is_sandbox_database). The command line wires it
# in (app.cli): the sandbox package sits beside this one, so this one does not import it.
SandboxProbe = Callable[[AsyncSession], Awaitable[bool]]
_sandbox_probe: SandboxProbe | None = None


def read_sandbox_mode_with(probe: SandboxProbe) -> None:
    global _sandbox_probe
    _sandbox_probe = probe


async def settings_for(session: AsyncSession) -> Settings:
    """The settings as ``spbridge serve`` reads them for this database: sandbox mode when
    SPBRIDGE_SANDBOX says so or when the database is a sandbox's (it holds the sandbox's public
    keys), as for the server started with ``--sandbox``."""
    settings = get_settings()
    if not settings.sandbox and _sandbox_probe is not None and await _sandbox_probe(session):
        settings = settings.model_copy(update={"sandbox": True})
    return settings


async def check_service(session: AsyncSession, option: str, service_id: str | None) -> None:
    """Refuse a service this bridge does not know (every command the same way)."""
    from app.directory.models import SocialPrescribingService

    if service_id is not None and await session.get(SocialPrescribingService, service_id) is None:
        fail(
            f"{option}: no service '{service_id}' is known here; `spbridge services list` shows "
            "the services there are",
            INVALID,
        )


async def check_organisation(
    session: AsyncSession, option: str, organisation: str | None, *, runs_a_service: bool = False
) -> None:
    """Refuse an organisation (ODS code) this bridge does not know: one that runs no service and
    has no API client (or runs no service, where only a service's organisation makes sense)."""
    from app.directory.models import SocialPrescribingService
    from app.security.models import ApiClient

    if organisation is None:
        return
    services = await session.scalar(
        select(SocialPrescribingService.id)
        .where(SocialPrescribingService.organisation == organisation)
        .limit(1)
    )
    if services is not None:
        return
    if runs_a_service:
        fail(
            f"{option}: no service of organisation '{organisation}' is known here; "
            "`spbridge services list` shows the services there are and their organisations",
            INVALID,
        )
    clients = await session.scalar(
        select(ApiClient.id).where(ApiClient.organisation == organisation).limit(1)
    )
    if clients is None:
        fail(
            f"{option}: organisation '{organisation}' is not known here (no service or API "
            "client belongs to it); `spbridge services list` and `spbridge clients list` show "
            "the organisations there are",
            INVALID,
        )


def echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


# --- clients -----------------------------------------------------------------------------------

clients_cli = typer.Typer(
    help="API clients: create one (its key is printed once), list them, revoke one.",
    no_args_is_help=True,
)


def _client_out(client: Any) -> dict[str, Any]:
    from app.clients.schemas import ClientOut

    return ClientOut(
        id=client.id,
        name=client.name,
        role=Role(client.role),
        organisation=client.organisation,
        default_service=client.default_service_id,
        acts_for=list(client.acts_for or []),
        created_at=client.created_at,
        revoked_at=client.revoked_at,
    ).model_dump(mode="json")


@clients_cli.command("create")
def clients_create(
    name: Annotated[str, typer.Option(help="Who the client is, e.g. 'RiO at Mersey Care'")],
    role: Annotated[
        Role,
        typer.Option(
            help="What it may do: clinical-system refers and follows its referrals; platform "
            "and advisor work the cases of their organisation's services; reporting reads "
            "counts only; admin manages the bridge"
        ),
    ],
    organisation: Annotated[
        str, typer.Option(help="ODS code of the client's organisation, e.g. RW4")
    ],
    default_service: Annotated[
        str | None,
        typer.Option(help="Service that receives its referrals when they name no performer"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API client and print its key: shown this once, only its hash is kept."""
    from app.clients import service
    from app.clients.schemas import ClientCreate

    request = parse(
        ClientCreate,
        name=name,
        role=role,
        organisation=organisation,
        default_service=default_service,
    )

    async def create(session: Any) -> tuple[dict[str, Any], str]:
        await check_service(session, "--default-service", default_service)
        client, key = await service.create_client(session, _operator(), request)
        return _client_out(client), key

    created, key = write(create)
    if as_json:
        echo_json({**created, "api_key": key})
        return
    typer.echo(
        f"created client {created['id']} ({created['role']}, {created['organisation']}); "
        "its API key, shown only now:"
    )
    typer.echo(key)


@clients_cli.command("list")
def clients_list(
    include_revoked: Annotated[
        bool, typer.Option("--revoked/--no-revoked", help="Include revoked clients")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """List API clients, oldest first (never their keys)."""
    from app.clients import service

    async def listing(session: Any) -> list[dict[str, Any]]:
        return [_client_out(client) for client in await service.list_clients(session, _operator())]

    clients = [c for c in read(listing) if include_revoked or c["revoked_at"] is None]
    if as_json:
        echo_json(clients)
        return
    if not clients:
        typer.echo("no clients")
        return
    print_table(
        ("id", "role", "organisation", "default service", "name", "revoked"),
        [
            (
                c["id"],
                c["role"],
                c["organisation"],
                c["default_service"],
                c["name"],
                c["revoked_at"],
            )
            for c in clients
        ],
    )


@clients_cli.command("revoke")
def clients_revoke(
    client_id: Annotated[str, typer.Argument(help="The client's id (see `clients list`)")],
) -> None:
    """Revoke a client: its key, secrets and access tokens stop working at once."""
    from app.clients import service

    async def revoke(session: Any) -> dict[str, Any]:
        return _client_out(await service.revoke(session, _operator(), client_id, utcnow()))

    revoked = write(revoke)
    typer.echo(f"client {revoked['id']} revoked (since {revoked['revoked_at']})")


@clients_cli.command("acts-for")
def clients_acts_for(
    client_id: Annotated[str, typer.Argument(help="The client's id (see `clients list`)")],
    organisations: Annotated[
        list[str] | None,
        typer.Argument(help="ODS codes it may refer for besides its own (none: its own only)"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Name the organisations a client may refer for besides its own (replaces the list)."""
    from app.clients import service
    from app.clients.schemas import ActsFor

    request = parse(ActsFor, organisations=organisations or [])

    async def change(session: Any) -> dict[str, Any]:
        client = await service.set_acts_for(session, _operator(), client_id, request.organisations)
        return _client_out(client)

    changed = write(change)
    if as_json:
        echo_json(changed)
        return
    also = ", ".join(changed["acts_for"]) or "no other organisation"
    typer.echo(f"client {changed['id']} refers for {changed['organisation']} and {also}")


# --- services ----------------------------------------------------------------------------------

services_cli = typer.Typer(
    help="Social prescribing services: the directory that referrals are addressed to.",
    no_args_is_help=True,
)


def _service_out(record: Any) -> dict[str, Any]:
    from app.directory.schemas import ServiceOut

    return ServiceOut(
        id=record.id,
        name=record.name,
        organisation=record.organisation,
        adapter=record.adapter,
        first_contact_target_days=record.first_contact_target_days,
        support_window_days=record.support_window_days,
        created_at=record.created_at,
    ).model_dump(mode="json")


@services_cli.command("list")
def services_list(as_json: JsonOption = False) -> None:
    """List the services, by id."""
    from app.directory import service

    async def listing(session: Any) -> list[dict[str, Any]]:
        return [_service_out(record) for record in await service.list_services(session)]

    services = read(listing)
    if as_json:
        echo_json(services)
        return
    if not services:
        typer.echo("no services")
        return
    print_table(
        ("id", "organisation", "adapter", "name"),
        [(s["id"], s["organisation"], s["adapter"], s["name"]) for s in services],
    )


@services_cli.command("show")
def services_show(
    service_id: Annotated[str, typer.Argument(help="The service's id")],
    as_json: JsonOption = False,
) -> None:
    """Show one service (its adapter's settings are not printed: they may hold secrets)."""
    from app.directory import service

    async def show(session: Any) -> dict[str, Any]:
        return _service_out(await service.get_service(session, service_id))

    found = read(show)
    if as_json:
        echo_json(found)
        return
    for key, value in found.items():
        typer.echo(f"{key}: {value}")


def _adapter_config(config: str | None, config_file: Path | None) -> dict[str, Any] | None:
    if config is not None and config_file is not None:
        fail("give --adapter-config or --adapter-config-file, not both", INVALID)
    source = config
    if config_file is not None:
        try:
            source = config_file.read_text()
        except OSError as exc:
            fail(f"--adapter-config-file: cannot read it ({type(exc).__name__})", INVALID)
    if source is None:
        return None
    try:
        value = json.loads(source)
    except json.JSONDecodeError:
        fail("--adapter-config: not valid JSON", INVALID)
    if not isinstance(value, dict):
        fail("--adapter-config: must be a JSON object", INVALID)
    return value


def _check_adapter_settings(adapter: str, config: dict[str, Any]) -> None:
    """Name every setting the adapter needs that is missing, with how to give them."""
    from adapters import registry
    from adapters.base import AdapterKind

    if adapter not in registry.names(AdapterKind.PLATFORM):
        return  # the service's own check names the adapters there are
    model = registry.adapter_class(adapter).config_model
    missing = [
        name
        for name, field in model.model_fields.items()
        if field.is_required() and name not in config
    ]
    if missing:
        shape = ", ".join(f'"{name}": …' for name in missing)
        fail(
            f"--adapter-config: the {adapter} adapter needs the settings {', '.join(missing)}, "
            f"and none {'was' if len(missing) == 1 else 'were'} given; give them as a JSON "
            f"object, {{{shape}}}, with --adapter-config or (for secrets) --adapter-config-file",
            INVALID,
        )


@services_cli.command("create")
def services_create(
    service_id: Annotated[
        str, typer.Option("--id", help="Its id (also the FHIR HealthcareService id)")
    ],
    name: Annotated[str, typer.Option(help="Its name, e.g. 'The Life Rooms, Halton'")],
    organisation: Annotated[str, typer.Option(help="ODS code of the providing organisation")],
    adapter: Annotated[
        str, typer.Option(help="Platform adapter that holds its cases (`local`: the bridge)")
    ] = "local",
    adapter_config: Annotated[
        str | None, typer.Option(help="The adapter's settings as a JSON object")
    ] = None,
    adapter_config_file: Annotated[
        Path | None,
        typer.Option(
            help="The adapter's settings from a JSON file (keeps secrets off the "
            "command line and out of the shell's history)"
        ),
    ] = None,
    first_contact_target_days: Annotated[
        int | None, typer.Option(help="Days within which a new referral should be contacted")
    ] = None,
    support_window_days: Annotated[
        int | None, typer.Option(help="Days support usually lasts from first contact")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Register a social prescribing service (its adapter's settings are checked now)."""
    from app.directory import service
    from app.directory.schemas import ServiceCreate

    config = _adapter_config(adapter_config, adapter_config_file)
    _check_adapter_settings(adapter, config or {})
    request = parse(
        ServiceCreate,
        id=service_id,
        name=name,
        organisation=organisation,
        adapter=adapter,
        adapter_config=config,
        first_contact_target_days=first_contact_target_days,
        support_window_days=support_window_days,
    )

    async def create(session: Any) -> dict[str, Any]:
        settings = await settings_for(session)
        return _service_out(await service.register_service(session, _operator(), request, settings))

    created = write(create)
    if as_json:
        echo_json(created)
        return
    typer.echo(f"registered service {created['id']} ({created['adapter']})")


# --- subscriptions -----------------------------------------------------------------------------

subscriptions_cli = typer.Typer(
    help="Webhook subscriptions: where signed notifications of case events are sent.",
    no_args_is_help=True,
)


def _operator(organisation: str | None = None) -> Any:
    """Who a command acts as: an admin, of every organisation unless one is named."""
    from app.security.auth import Principal

    return Principal(
        client_id=None, name="spbridge command line", role=Role.ADMIN, organisation=organisation
    )


def _subscription_out(subscription: Any) -> dict[str, Any]:
    from app.webhooks.schemas import SubscriptionOut

    return SubscriptionOut(
        id=subscription.id,
        url=subscription.url or "",
        events=list(subscription.event_types),
        service=subscription.service_id,
        description=subscription.description,
        organisation=subscription.organisation,
        active=subscription.active,
        disabled_reason=subscription.disabled_reason,
        failing_since=subscription.failing_since,
        created_at=subscription.created_at,
    ).model_dump(mode="json")


@subscriptions_cli.command("list")
def subscriptions_list(as_json: JsonOption = False) -> None:
    """List every webhook subscription (not deleted ones), oldest first."""
    from app.webhooks import service

    async def listing(session: Any) -> list[dict[str, Any]]:
        found = await service.list_subscriptions(session, _operator())
        return [_subscription_out(s) for s in found]

    subscriptions = read(listing)
    if as_json:
        echo_json(subscriptions)
        return
    if not subscriptions:
        typer.echo("no subscriptions")
        return
    print_table(
        ("id", "state", "organisation", "service", "events", "url"),
        [
            (
                s["id"],
                "active" if s["active"] else f"disabled ({s['disabled_reason']})",
                s["organisation"] or "all",
                s["service"] or "all",
                ",".join(s["events"]) or "all",
                s["url"],
            )
            for s in subscriptions
        ],
    )


@subscriptions_cli.command("create")
def subscriptions_create(
    url: Annotated[str, typer.Option(help="Where notifications are POSTed (https)")],
    event: Annotated[
        list[str] | None,
        typer.Option(
            help="An event type to receive (repeat for several; none: every case event). "
            "Operational events (delivery.dead_lettered, subscription.disabled) only when named"
        ),
    ] = None,
    service: Annotated[str | None, typer.Option(help="Only this service's cases")] = None,
    organisation: Annotated[
        str | None,
        typer.Option(help="Only this organisation's cases (ODS code); default: every one"),
    ] = None,
    description: Annotated[str | None, typer.Option(help="What it is for")] = None,
    as_json: JsonOption = False,
) -> None:
    """Subscribe a URL to case events; prints the signing secret, shown this once."""
    from app.fhir.codes import ODS_CODE
    from app.webhooks import service as subscriptions
    from app.webhooks.schemas import SubscriptionCreate

    if organisation is not None and not re.fullmatch(ODS_CODE, organisation):
        fail("--organisation: not an ODS code (3 to 10 capital letters and digits)", INVALID)
    request = parse(
        SubscriptionCreate, url=url, events=event or [], service=service, description=description
    )

    async def create(session: Any) -> tuple[dict[str, Any], str]:
        await check_service(session, "--service", service)
        await check_organisation(session, "--organisation", organisation)
        settings = await settings_for(session)
        subscription, secret = await subscriptions.create_subscription(
            session, _operator(organisation), request, settings
        )
        return _subscription_out(subscription), secret

    created, secret = write(create)
    if as_json:
        echo_json({**created, "secret": secret})
        return
    typer.echo(f"created subscription {created['id']}; its signing secret, shown only now:")
    typer.echo(secret)


@subscriptions_cli.command("delete")
def subscriptions_delete(
    subscription_id: Annotated[str, typer.Argument(help="The subscription's id")],
) -> None:
    """Delete a subscription: nothing more is sent, its pending deliveries are cancelled."""
    from app.webhooks import service

    async def delete(session: Any) -> None:
        await service.delete_subscription(session, _operator(), subscription_id)

    write(delete)
    typer.echo(f"subscription {subscription_id} deleted")
