"""The `spbridge` command line as an operator meets it: each command run as its own process
against an SQLite database, its output read as a terminal-less caller (a script, CI) reads it.

Every error is one `error:` line saying what was wrong and what would be right, with a non-zero
exit status; every list command takes --json; tables line up; long commands show progress;
services and organisations the bridge does not know are refused the same way by every command;
and sandbox mode is read from the database as `spbridge serve` reads it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.main

from app import sandbox
from app.cli import cli
from app.config import Settings
from tests.support.processes import SPBRIDGE, serving
from tests.support.receiver import free_port


class Cli:
    """Runs `spbridge` against one database, as a separate process each time."""

    def __init__(self, database: Path, cwd: Path) -> None:
        self.url = f"sqlite+aiosqlite:///{database}"
        self.cwd = cwd

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPBRIDGE_")}
        return {**env, "SPBRIDGE_DATABASE_URL": self.url, "COLUMNS": "80", **extra}

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 (our own entry point)
            [str(SPBRIDGE), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.cwd,
            env=self.env(**env),
        )


@pytest.fixture(scope="module")
def spbridge(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A migrated database with two services and a client."""
    where = tmp_path_factory.mktemp("cli")
    run = Cli(where / "bridge.db", where)
    assert run("migrate").returncode == 0
    for service_id, organisation in (("life-rooms", "LR001"), ("hub", "HUB01")):
        made = run(
            "services", "create", "--id", service_id, "--name", f"The {service_id}",
            "--organisation", organisation,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    made = run(
        "clients", "create", "--name", "RiO", "--role", "clinical-system", "--organisation", "RW4"
    )
    assert made.returncode == 0, made.stderr
    return run


def one_error_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Refused with exactly one line on stderr, `error: …`, and nothing on stdout."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("error: "), line
    for word in words:
        assert word in line, (word, line)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr and "╭" not in result.stderr
    return line


# --- errors -----------------------------------------------------------------------------------


BAD_INPUT: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    # A value of the wrong kind: which option, what was given, what it may be.
    (
        ("clients", "create", "--name", "X", "--role", "surgeon", "--organisation", "RW4"),
        ("--role", "'surgeon' is not one of", "'advisor'", "spbridge clients create --help"),
    ),
    (("purge", "--before", "last tuesday"), ("--before", "give a date as YYYY-MM-DD")),
    (("report", "--from", "2025-13-01"), ("--from", "give a date as YYYY-MM-DD")),
    (("report", "--format", "pdf"), ("--format", "json, csv or html")),
    (("deliveries", "list", "--limit", "0"), ("--limit", "greater than or equal to 1")),
    # The command line itself: unknown command or option, a missing option.
    (("referrals",), ("No such command 'referrals'", "spbridge --help")),
    (("clients", "list", "--colour"), ("No such option: --colour",)),
    (("clients", "create", "--role", "admin"), ("Missing option '--name'",)),
    # Input a command checks itself.
    (
        ("services", "create", "--id", "s", "--name", "S", "--organisation", "lr001"),
        ("--organisation",),
    ),
    (("serve", "--seed", "3", "--no-migrate"), ("--seed and --clock-speed go with --sandbox",)),
]


def test_bad_input_is_one_error_line_with_status_2(spbridge: Cli) -> None:
    # Each is its own process; a few at a time (each spends most of a second importing).
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: spbridge(*case[0]), BAD_INPUT))
    for (args, words), result in zip(BAD_INPUT, results, strict=True):
        assert result.returncode == 2, (args, result.stderr)
        one_error_line(result, 2, *words)


def test_an_adapter_without_its_settings_names_them(spbridge: Cli) -> None:
    line = one_error_line(
        spbridge(
            "services",
            "create",
            "--id",
            "e1",
            "--name",
            "Elemental",
            "--organisation",
            "LR001",
            "--adapter",
            "elemental",
        ),
        2,
        "--adapter-config: the elemental adapter needs the settings base_url, api_key, "
        "webhook_secret",
        "--adapter-config-file",
    )
    assert "not valid" not in line
    # Given some, it names those still missing; given a bad one, says what is wrong with it.
    one_error_line(
        spbridge(
            "services",
            "create",
            "--id",
            "e1",
            "--name",
            "E",
            "--organisation",
            "LR001",
            "--adapter",
            "elemental",
            "--adapter-config",
            '{"base_url": "https://x.example"}',
        ),
        2,
        "needs the settings api_key, webhook_secret",
    )
    one_error_line(
        spbridge(
            "services",
            "create",
            "--id",
            "e1",
            "--name",
            "E",
            "--organisation",
            "LR001",
            "--adapter",
            "elemental",
            "--adapter-config",
            '{"base_url": "https://x.example", "api_key": "k", "webhook_secret": "nope"}',
        ),
        2,
        "adapter_config is not valid; adapter_config.webhook_secret: webhook_secret must start "
        "with 'whsec_'",
    )


# --- services and organisations: known, or refused the same way everywhere --------------------


def test_unknown_services_and_organisations_are_refused_the_same_way(spbridge: Cli) -> None:
    unknown_service = "no service 'nowhere' is known here; `spbridge services list` shows"
    cases = [
        ("report", "activity", "--service", "nowhere"),
        ("report", "staff-hub", "--service", "nowhere", "--format", "csv"),
        ("subscriptions", "create", "--url", "https://93.184.216.34/h", "--service", "nowhere"),
        ("clients", "create", "--name", "X", "--role", "advisor", "--organisation", "LR001",
         "--default-service", "nowhere"),
    ]  # fmt: skip
    with ThreadPoolExecutor(max_workers=4) as pool:
        for result in pool.map(lambda args: spbridge(*args), cases):
            one_error_line(result, 2, "--", unknown_service)
    # The README's second report example, with an organisation that runs no service here: an
    # error, not an all-zero report.
    one_error_line(
        spbridge("report", "staff-hub", "--organisation", "ZZ999", "--format", "csv", "--suppress"),
        2,
        "--organisation: no service of organisation 'ZZ999' is known here",
    )
    # A referrer's organisation runs no service: nothing to report for it either.
    one_error_line(spbridge("report", "--organisation", "RW4"), 2, "no service of organisation")
    one_error_line(
        spbridge("subscriptions", "create", "--url", "https://93.184.216.34/h", "--organisation",
                 "ZZ999"),
        2,
        "--organisation: organisation 'ZZ999' is not known here",
    )  # fmt: skip
    # Known ones go through.
    report = spbridge("report", "activity", "--organisation", "LR001", "--format", "csv")
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("report,section,table,unit,row_key,row,column,value\n")


# --- lists: --json everywhere, aligned tables -------------------------------------------------


def list_commands() -> list[tuple[str, ...]]:
    found = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        for name, sub in (getattr(command, "commands", None) or {}).items():
            if name == "list":
                found.append((*path, name))
            walk(sub, (*path, name))

    walk(typer.main.get_command(cli), ())
    return found


def test_every_list_command_takes_json(spbridge: Cli) -> None:
    commands = list_commands()
    assert set(commands) >= {
        ("clients", "list"),
        ("services", "list"),
        ("subscriptions", "list"),
        ("deliveries", "list"),
    }
    for command in commands:
        result = spbridge(*command, "--json")
        assert result.returncode == 0, (command, result.stderr)
        assert isinstance(json.loads(result.stdout), list), command
    services = json.loads(spbridge("services", "list", "--json").stdout)
    assert [s["id"] for s in services] == ["hub", "life-rooms"]


def test_tables_line_up(spbridge: Cli) -> None:
    result = spbridge("services", "list")
    assert result.returncode == 0, result.stderr
    heading, *rows = result.stdout.splitlines()
    assert heading.split() == ["id", "organisation", "adapter", "name"]
    assert [row.split()[0] for row in rows] == ["hub", "life-rooms"]
    # Each column starts at the same place on every line, however long the values.
    for column, values in (("organisation", ("HUB01", "LR001")), ("name", ("The", "The"))):
        starts = {heading.index(column)} | {
            row.index(v) for row, v in zip(rows, values, strict=True)
        }
        assert len(starts) == 1, (column, result.stdout)
    clients = spbridge("clients", "list").stdout.splitlines()
    assert clients[0].split()[:3] == ["id", "role", "organisation"]
    assert clients[1].index("RW4") == clients[0].index("organisation")


def test_a_report_shows_its_progress_on_stderr(spbridge: Cli, tmp_path: Path) -> None:
    output = tmp_path / "report.html"
    result = spbridge(
        "report", "activity", "--service", "life-rooms", "--format", "html", "--output",
        str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Social prescribing activity: 0/9 done, ")
    assert "Social prescribing activity: 9/9 done, done" in lines
    assert lines[-1] == f"wrote {output}"
    assert output.read_text().lower().startswith("<!doctype html>")


# --- sandbox mode, read the same way by the server and the commands --------------------------


def test_sandbox_mode_is_read_from_the_database_by_every_command(tmp_path: Path) -> None:
    run = Cli(tmp_path / "sandbox.db", tmp_path)
    assert run("migrate").returncode == 0
    # Not a sandbox's database yet: http and loopback receivers are refused, saying why.
    one_error_line(
        run("subscriptions", "create", "--url", "http://127.0.0.1:9000/hooks"),
        2,
        "url must use https (http only for a host listed in SPBRIDGE_ALLOWED_OUTBOUND_HOSTS, "
        "or in sandbox mode)",
    )
    # `spbridge serve --sandbox` seeds it (as here, without the server).
    settings = Settings(database_url=run.url, sandbox=True)
    asyncio.run(sandbox.seed_async(settings))
    # Now every command reads it as a sandbox, as the server does, with no setting to guess.
    made = run("subscriptions", "create", "--url", "http://127.0.0.1:9000/hooks", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["url"] == "http://127.0.0.1:9000/hooks"
    # The setting still works on its own, as before.
    elsewhere = Cli(tmp_path / "other.db", tmp_path)
    assert elsewhere("migrate").returncode == 0
    allowed = elsewhere(
        "subscriptions", "create", "--url", "http://127.0.0.1:9000/hooks", SPBRIDGE_SANDBOX="true"
    )
    assert allowed.returncode == 0, allowed.stderr


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Cli, str]]:
    """`spbridge serve` with no --sandbox, on a database the sandbox seeded."""
    run = Cli(tmp_path / "sandbox.db", tmp_path)
    assert run("migrate").returncode == 0
    asyncio.run(sandbox.seed_async(Settings(database_url=run.url, sandbox=True)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving([str(SPBRIDGE), "serve", "--port", str(port)], base, cwd=tmp_path, env=run.env()):
        yield run, base


def test_the_server_reads_sandbox_mode_the_same_way(served: tuple[Cli, str]) -> None:
    _run, base = served
    page = httpx.get(f"{base}/")
    assert "<code>spb_sandbox_admin</code>" in page.text  # the sandbox's landing page
    admin = {"Authorization": "Bearer spb_sandbox_admin"}
    made = httpx.post(
        f"{base}/api/v1/subscriptions", json={"url": "http://127.0.0.1:9000/x"}, headers=admin
    )
    assert made.status_code == 201, made.text
