"""The `spbridge` command line against a real migrated database: clients, services,
subscriptions, deliveries, purge and openapi; helpful --help everywhere; clear errors, no
tracebacks, non-zero exits on bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.main
from sqlalchemy import select
from typer.testing import CliRunner, Result

from app.cli import cli
from app.config import get_settings
from app.db import Database
from app.main import create_app
from app.outbox.models import Delivery
from tests.conftest import Bridge, empty_database, make_settings, referral_resource
from tests.support.delivery import ADMIN, dispatcher_for, subscribe
from tests.support.receiver import Receiver

runner = CliRunner()


@pytest.fixture
def cli_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The migrated test database, emptied, as the commands' SPBRIDGE_DATABASE_URL."""
    asyncio.run(empty_database(database_url))
    monkeypatch.setenv("SPBRIDGE_DATABASE_URL", database_url)
    monkeypatch.setenv("SPBRIDGE_ALLOWED_OUTBOUND_HOSTS", "127.0.0.1")
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


def spbridge(*args: str) -> Result:
    return runner.invoke(cli, list(args))


def refused(result: Result, code: int, message: str) -> None:
    """Refused with one clear line on stderr: no traceback, nothing on stdout."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit)


async def _status_with_key(url: str, key: str) -> int:
    application = create_app(make_settings(url))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.get(
                "/api/v1/services", headers={"Authorization": f"Bearer {key}"}
            )
            return response.status_code


async def _states(url: str) -> list[str]:
    database = Database.from_url(url)
    try:
        async with database.read_sessions() as session:
            return sorted(await session.scalars(select(Delivery.state)))
    finally:
        await database.dispose()


# --- help ---------------------------------------------------------------------------------------


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``command`` (typer ships its own click: groups are known by their
    subcommands)."""
    yield path, command
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _commands(sub, (*path, name))


def test_every_command_and_option_has_help() -> None:
    root = typer.main.get_command(cli)
    commands = dict(_commands(root))
    for expected in (
        ("clients", "create"),
        ("clients", "list"),
        ("clients", "revoke"),
        ("clients", "acts-for"),
        ("services", "list"),
        ("services", "show"),
        ("services", "create"),
        ("subscriptions", "list"),
        ("subscriptions", "create"),
        ("subscriptions", "delete"),
        ("deliveries", "list"),
        ("deliveries", "replay"),
        ("openapi",),
        ("purge",),
        ("serve",),
        ("worker",),
        ("migrate",),
    ):
        assert expected in commands, expected
    for path, command in commands.items():
        result = spbridge(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert command.help, f"`spbridge {' '.join(path)}` has no help"
        for parameter in command.params:
            if parameter.name == "help":
                continue
            assert getattr(parameter, "help", None), (path, parameter.name)


# --- clients ------------------------------------------------------------------------------------


def test_clients_create_list_revoke(cli_database: str) -> None:
    created = spbridge(
        "clients", "create", "--name", "RiO at Mersey Care", "--role", "clinical-system",
        "--organisation", "RW4",
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    first, key = created.stdout.splitlines()
    assert first.startswith("created client ") and "(clinical-system, RW4)" in first
    assert key.startswith("spb_") and len(key) > 40
    # The key printed is the client's: the API takes it.
    assert asyncio.run(_status_with_key(cli_database, key)) == 200

    listing = spbridge("clients", "list", "--json")
    assert listing.exit_code == 0, listing.stderr
    (client,) = json.loads(listing.stdout)
    assert client["name"] == "RiO at Mersey Care"
    assert client["role"] == "clinical-system" and client["organisation"] == "RW4"
    assert client["revoked_at"] is None
    assert key not in listing.stdout and "api_key" not in client

    revoked = spbridge("clients", "revoke", client["id"])
    assert revoked.exit_code == 0, revoked.stderr
    assert revoked.stdout.startswith(f"client {client['id']} revoked (since ")
    assert asyncio.run(_status_with_key(cli_database, key)) == 401
    table = spbridge("clients", "list").stdout.splitlines()
    columns = ["id", "role", "organisation", "default", "service", "name", "revoked"]
    assert table[0].split() == columns
    (now_revoked,) = json.loads(spbridge("clients", "list", "--json").stdout)
    row = table[1].split()
    assert row[0] == client["id"] and row[-1] == now_revoked["revoked_at"]
    # Aligned: every column starts where its heading does.
    assert table[1].index(now_revoked["revoked_at"]) == table[0].index("revoked")
    assert spbridge("clients", "list", "--no-revoked").stdout == "no clients\n"


def test_clients_acts_for(cli_database: str) -> None:
    created = spbridge(
        "clients", "create", "--name", "Integration engine", "--role", "clinical-system",
        "--organisation", "RW4", "--json",
    )  # fmt: skip
    client_id = json.loads(created.stdout)["id"]
    named = spbridge("clients", "acts-for", client_id, "RXA", "RTV")
    assert named.exit_code == 0, named.stderr
    assert named.stdout == f"client {client_id} refers for RW4 and RTV, RXA\n"
    (listed,) = json.loads(spbridge("clients", "list", "--json").stdout)
    assert listed["acts_for"] == ["RTV", "RXA"]
    refused(spbridge("clients", "acts-for", client_id, "rxa"), 2, "organisations")
    cleared = spbridge("clients", "acts-for", client_id, "--json")
    assert cleared.exit_code == 0, cleared.stderr
    assert json.loads(cleared.stdout)["acts_for"] == []


def test_clients_bad_input_is_refused_clearly(cli_database: str) -> None:
    base = ("clients", "create", "--name", "X", "--role")
    refused(spbridge(*base, "clinical-system", "--organisation", "rw4"), 2, "--organisation:")
    refused(spbridge(*base, "surgeon", "--organisation", "RW4"), 2, "'surgeon' is not one of")
    refused(
        spbridge(*base, "clinical-system", "--organisation", "RW4", "--default-service", "nope"),
        2,
        "error: --default-service: no service 'nope' is known here; `spbridge services list`",
    )
    refused(spbridge("clients", "revoke", "no-such-client"), 1, "error: No such client")
    # Nothing was made.
    assert spbridge("clients", "list").stdout == "no clients\n"


# --- services -----------------------------------------------------------------------------------


def test_services_create_list_show(cli_database: str) -> None:
    created = spbridge(
        "services", "create", "--id", "life-rooms-halton", "--name", "The Life Rooms, Halton",
        "--organisation", "RW4LR", "--support-window-days", "56",
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    assert created.stdout == "registered service life-rooms-halton (local)\n"

    listing = spbridge("services", "list")
    header = ["id", "organisation", "adapter", "name"]
    row = ["life-rooms-halton", "RW4LR", "local", "The", "Life", "Rooms,", "Halton"]
    assert listing.stdout.split() == header + row
    shown = json.loads(spbridge("services", "show", "life-rooms-halton", "--json").stdout)
    assert shown["name"] == "The Life Rooms, Halton"
    assert shown["support_window_days"] == 56
    assert shown["first_contact_target_days"] == 7

    again = spbridge(
        "services", "create", "--id", "life-rooms-halton", "--name", "Again", "--organisation",
        "RW4LR",
    )  # fmt: skip
    refused(again, 1, "error: A service with this id already exists")
    refused(spbridge("services", "show", "nowhere"), 1, "error: No such service")


def test_services_bad_input_is_refused_clearly(cli_database: str, tmp_path: Path) -> None:
    base = ("services", "create", "--id", "s1", "--name", "S", "--organisation", "RW4LR")
    refused(spbridge(*base, "--adapter", "carrier-pigeon"), 2, "error: adapter must be one of")
    refused(spbridge(*base, "--adapter-config", "{not json"), 2, "--adapter-config: not valid")
    refused(spbridge(*base, "--adapter-config", "[1]"), 2, "must be a JSON object")
    refused(
        spbridge(*base, "--adapter-config-file", str(tmp_path / "missing.json")),
        2,
        "--adapter-config-file: cannot read it",
    )
    refused(spbridge(*base, "--support-window-days", "0"), 2, "--support-window-days:")
    refused(
        spbridge("services", "create", "--id", "bad id!", "--name", "S", "--organisation", "RW4"),
        2,
        "--id:",
    )
    assert spbridge("services", "list").stdout == "no services\n"


# --- subscriptions ------------------------------------------------------------------------------


def test_subscriptions_create_list_delete(cli_database: str) -> None:
    rw4 = ("clients", "create", "--name", "RiO", "--role", "clinical-system", "--organisation")
    assert spbridge(*rw4, "RW4").exit_code == 0  # an organisation the bridge knows
    created = spbridge(
        "subscriptions", "create", "--url", "http://127.0.0.1:9/hooks", "--event",
        "case.accepted", "--event", "delivery.dead_lettered", "--description", "alerts",
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    first, secret = created.stdout.splitlines()
    assert first.startswith("created subscription ")
    assert secret.startswith("whsec_")
    subscription_id = first.split()[2].rstrip(";")

    scoped = spbridge(
        "subscriptions", "create", "--url", "http://127.0.0.1:9/rw4", "--organisation", "RW4",
        "--json",
    )  # fmt: skip
    assert scoped.exit_code == 0, scoped.stderr
    scoped_body = json.loads(scoped.stdout)
    assert scoped_body["organisation"] == "RW4" and scoped_body["secret"].startswith("whsec_")

    listing = json.loads(spbridge("subscriptions", "list", "--json").stdout)
    assert [(s["id"], s["events"], s["organisation"]) for s in listing] == [
        (subscription_id, ["case.accepted", "delivery.dead_lettered"], None),
        (scoped_body["id"], [], "RW4"),
    ]
    assert all("secret" not in s for s in listing)

    deleted = spbridge("subscriptions", "delete", subscription_id)
    assert deleted.exit_code == 0, deleted.stderr
    assert deleted.stdout == f"subscription {subscription_id} deleted\n"
    remaining = json.loads(spbridge("subscriptions", "list", "--json").stdout)
    assert [s["id"] for s in remaining] == [scoped_body["id"]]
    refused(spbridge("subscriptions", "delete", subscription_id), 1, "error: No such subscription")


def test_subscriptions_bad_input_is_refused_clearly(cli_database: str) -> None:
    rw4 = ("clients", "create", "--name", "RiO", "--role", "clinical-system", "--organisation")
    assert spbridge(*rw4, "RW4").exit_code == 0  # an organisation the bridge knows
    create = ("subscriptions", "create", "--url")
    refused(
        spbridge(*create, "http://127.0.0.1:9/x", "--event", "tea.made"),
        2,
        "is not a known event type",
    )
    refused(spbridge(*create, "ftp://127.0.0.1/x"), 2, "error: url must be an absolute http(s)")
    refused(spbridge(*create, "http://example.org/x"), 2, "error: url must use https")
    refused(spbridge(*create, "http://127.0.0.1:9/x", "--organisation", "rw4"), 2, "ODS code")
    # An organisation's subscription cannot ask for the admins' operational events.
    operational = ("--organisation", "RW4", "--event", "delivery.dead_lettered")
    refused(spbridge(*create, "http://127.0.0.1:9/x", *operational), 2, "is not a known event type")
    # Services and organisations the bridge does not know are refused, as everywhere.
    unknown = spbridge(*create, "http://127.0.0.1:9/x", "--service", "nowhere")
    refused(unknown, 2, "error: --service: no service 'nowhere' is known here")
    unknown = spbridge(*create, "http://127.0.0.1:9/x", "--organisation", "ZZ9")
    refused(unknown, 2, "error: --organisation: organisation 'ZZ9' is not known here")
    assert spbridge("subscriptions", "list").stdout == "no subscriptions\n"


# --- deliveries, purge, openapi ------------------------------------------------------------------


async def _dead_letters(url: str, count: int) -> None:
    """``count`` referrals whose webhooks the receiver refuses (400): as many dead letters."""
    application = create_app(make_settings(url, allowed_outbound_hosts=["127.0.0.1"]))
    receiver = Receiver(default_status=400)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            bridge = Bridge(http)
            await bridge.service()
            await subscribe(bridge, receiver.url, headers=ADMIN, events=["referral.received"])
            referrer = await bridge.key("clinical-system", "RW4", default_service="life-rooms")
            for _ in range(count):
                response = await bridge.refer(referrer, referral_resource())
                assert response.status_code == 201, response.text
            await receiver.start()
            try:
                await dispatcher_for(application).drain()
            finally:
                await receiver.stop()


def test_deliveries_list_and_replay_every_dead_letter(cli_database: str) -> None:
    asyncio.run(_dead_letters(cli_database, 3))
    assert asyncio.run(_states(cli_database)) == ["dead", "dead", "dead"]
    listing = spbridge("deliveries", "list", "--state", "dead")
    assert listing.exit_code == 0, listing.stderr
    heading, *rows = listing.stdout.splitlines()
    assert heading.split()[:3] == ["id", "state", "event"]
    assert len(rows) == 3
    assert all(row.split()[1] == "dead" for row in rows)
    as_json = json.loads(spbridge("deliveries", "list", "--state", "dead", "--json").stdout)
    assert sorted(d["id"] for d in as_json) == sorted(row.split()[0] for row in rows)
    assert {d["state"] for d in as_json} == {"dead"}

    replayed = spbridge("deliveries", "replay", "--event-type", "referral.received")
    assert replayed.exit_code == 0, replayed.stderr
    lines = replayed.stdout.splitlines()
    assert lines[0] == "replayed 3 deliveries"
    assert sorted(lines[1:]) == sorted(row.split()[0] for row in rows)
    assert asyncio.run(_states(cli_database)) == ["pending", "pending", "pending"]
    # Nothing is dead any more: a second run replays nothing.
    assert spbridge("deliveries", "replay", "--event-type", "referral.received").stdout == (
        "replayed 0 deliveries\n"
    )
    refused(spbridge("deliveries", "replay", lines[1]), 1, "error: Only dead letters")


def test_deliveries_bad_input_is_refused_clearly(cli_database: str) -> None:
    refused(spbridge("deliveries", "list", "--state", "lost"), 2, "error: state must be one of")
    refused(spbridge("deliveries", "replay"), 2, "error: give a delivery id or at least one")
    refused(spbridge("deliveries", "replay", "no-such-delivery"), 1, "error: No such delivery")
    refused(spbridge("deliveries", "list", "--limit", "0"), 2, "Invalid value for '--limit'")


def test_purge_dry_run_and_a_bad_date(cli_database: str) -> None:
    result = spbridge("purge", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("dry run: 0 referrals would be purged")
    refused(spbridge("purge", "--before", "last tuesday"), 2, "give a date as YYYY-MM-DD")


def test_commands_say_so_when_the_database_has_no_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPBRIDGE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    get_settings.cache_clear()
    try:
        for args in (("clients", "list"), ("services", "list"), ("deliveries", "list")):
            refused(spbridge(*args), 1, "error: the database did not answer, or has no schema")
    finally:
        get_settings.cache_clear()


def test_openapi_writes_the_document(tmp_path: Path) -> None:
    output = tmp_path / "openapi.json"
    result = spbridge("openapi", "--output", str(output))
    assert result.exit_code == 0, result.stderr
    document: dict[str, Any] = json.loads(output.read_text())
    assert document["paths"]["/readyz"]["get"]["operationId"] == "readyz"
    assert document["paths"]["/healthz"]["get"]["operationId"] == "healthz"
    assert "text/plain" in document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_a_started_process_freezes_what_it_imported_and_collects_less_often() -> None:
    import gc

    from app.cli import GC_THRESHOLDS, settle_garbage_collector

    thresholds = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 10_000  # the imported modules, classes and functions
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > thresholds[0]  # fewer young collections than Python's default
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
