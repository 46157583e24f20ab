"""The ``spbridge`` command line."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from app.config import get_settings

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
) -> None:
    """Run the API (applies migrations first unless told not to)."""
    from app.main import create_app
    from app.migrate import upgrade

    settings = get_settings()
    if sandbox:
        settings.sandbox = True
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
    uvicorn.run(application, host=host, port=port, log_level="info")


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
