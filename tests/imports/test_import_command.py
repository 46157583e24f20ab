"""`spbridge import` as an operator runs it: a summary, refused lines on stderr, exit status."""

from __future__ import annotations

from pathlib import Path

from tests.imports.lines import event_line, write
from tests.imports.test_import import history
from tests.test_cli import cli_database, spbridge

__all__ = ["cli_database"]


def test_the_command_imports_reports_and_is_a_no_op_the_second_time(
    cli_database: str, tmp_path: Path
) -> None:
    created = spbridge(
        "services", "create", "--id", "life-rooms", "--name", "The Life Rooms",
        "--organisation", "LR001",
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    path = write(tmp_path / "history.ndjson", history())

    first = spbridge("import", str(path))
    assert first.exit_code == 0, first.stderr
    assert "2 made, 0 held already, 0 refused; 5 events applied" in first.stdout
    assert "nothing sent downstream" in first.stdout
    # Not a terminal: progress as lines on stderr, a referral at a time here (2 of them).
    assert first.stderr.splitlines() == [
        "importing referrals: 1/2 referrals",
        "importing referrals: 2/2 referrals",
    ]
    again = spbridge("import", str(path))
    assert again.exit_code == 0, again.stderr
    assert "0 made, 2 held already, 0 refused; 0 events applied" in again.stdout

    bad = write(
        tmp_path / "bad.ndjson",
        [event_line("H-1", "contact.attempted", "2022-09-30T09:00:00", outcome="shouted")],
    )
    refused = spbridge("import", str(bad))
    assert refused.exit_code == 1
    assert "refused: bad.ndjson line 1: event.outcome:" in refused.stderr
    assert "shouted" not in refused.stderr + refused.stdout
