"""`spbridge serve --sandbox` as the README's first command runs it: a real process on a free
port of 127.0.0.1, an embedded SQLite database, and the landing page's own shell examples, run as
they are, taking a referral through the simulated platform."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adapters.simulator.journeys import ACTIVE, plan
from tests.support.processes import SPBRIDGE, serving
from tests.support.receiver import free_port

SEED = 5
CLINICAL = {"Authorization": "Bearer spb_sandbox_clinical_system"}


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    port = free_port()
    env = {
        **os.environ,
        "SPBRIDGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'sandbox.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("SPBRIDGE_ADMIN_API_KEY", None)
    command = [str(SPBRIDGE), "serve", "--sandbox", "--port", str(port), "--seed", str(SEED)]
    base_url = f"http://127.0.0.1:{port}"
    with (
        (tmp_path / "stdout.txt").open("w") as printed,
        serving(
            [*command, "--clock-speed", "300"], base_url, cwd=tmp_path, env=env, stdout=printed
        ) as process,
    ):
        yield base_url, process, tmp_path / "stdout.txt"


def examples(page: str) -> dict[str, str]:
    return {
        name: html.unescape(script)
        for name, script in re.findall(r'<pre data-example="(\w+)">(.*?)</pre>', page, re.S)
    }


def run_shell(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        ["bash", "-c", script],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env={**os.environ, **env},
    )


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("bash")), reason="needs curl, bash")
def test_serve_sandbox_starts_and_its_landing_page_examples_work_as_they_are(
    bridge: tuple[str, subprocess.Popen[str], Path],
) -> None:
    base_url, process, printed = bridge
    # The keys are printed at start-up.
    assert "Authorization: Bearer spb_sandbox_admin" in printed.read_text()
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
    page = httpx.get(f"{base_url}/")
    assert page.status_code == 200
    assert "<code>spb_sandbox_clinical_system</code>" in page.text
    assert "300 simulated days per second (seed 5" in page.text
    scripts = examples(page.text)
    assert list(scripts) == [
        "webhook",
        "referral",
        "follow",
        "journey",
        "worklist",
        "advisor",
        "report",
        "subscription",
        "bars",
        "reset",
    ]
    assert all(f"BRIDGE={base_url}\n" in script for script in scripts.values())

    # Every example but the reset, pasted into one shell in order as the page says; between
    # them only a pause for the simulated platform, and the receiver stopped at the end.
    work = printed.parent
    session = "\n".join(
        [
            "trap 'kill $HOOKS $NOTIFIER 2>/dev/null' EXIT",
            scripts["webhook"],
            scripts["referral"],
            "sleep 2",
            scripts["follow"],
            scripts["journey"],
            scripts["worklist"],
            scripts["advisor"],
            scripts["report"],
            scripts["subscription"],
            "sleep 1",
            scripts["bars"],
            "sleep 2",
        ]
    )
    shell = run_shell(session, work, HOOKS_PORT=str(free_port()), NOTIFY_PORT=str(free_port()))
    assert shell.returncode == 0, shell.stderr
    out = shell.stdout
    found = re.search(r"referral ServiceRequest/([0-9a-f-]{36})", out)
    assert found, out[:500]
    referral_id = found.group(1)
    assert '"resourceType":"Task"' in out
    assert '"resourceType":"Bundle","type":"collection"' in out  # the $journey

    # Signed notifications, checked by the example's own verification, for this referral.
    verified = [
        json.loads(line.split(" ", 2)[2])
        for line in out.splitlines()
        if line.startswith("verified ")
    ]
    mine = [body["type"] for body in verified if body["data"].get("referral_id") == referral_id]
    assert mine[:2] == ["referral.received", "case.accepted"], verified
    assert all("9990000" not in json.dumps(body) for body in verified)  # never the patient

    # Journey links: the referral's (JSON) and the seeded six-week case's (a URL to open).
    assert f"/journey/{referral_id}?token=" in out
    seeded_url = re.search(
        rf"^({re.escape(base_url)}/journey/[0-9a-f-]{{36}}\?token=\S+)$", out, re.M
    )
    assert seeded_url, out[-2000:]
    journey_page = httpx.get(seeded_url.group(1))
    assert journey_page.status_code == 200
    assert "SANDBOX, Sam" in journey_page.text and "Completed — needs met" in journey_page.text

    # The worklist: the community hub's cases waiting, with their flags.
    assert re.search(
        r" sandbox-community-hub in_progress waiting 9 days first_contact_overdue$", out, re.M
    )
    assert re.search(
        r" sandbox-community-hub in_progress waiting 51 days support_window_exceeded$", out, re.M
    )
    assert re.search(r" sandbox-community-hub on_hold waiting 26 days $", out, re.M)

    # The advisor reached the person whose first contact was overdue.
    recorded = re.search(r'^\{"event":.*\}$', out, re.M)
    assert recorded, out[-2000:]
    event = json.loads(recorded.group(0))
    assert event["applied"] is True and event["business_status"] == "contacted"
    assert event["event"]["type"] == "contact.attempted" and event["event"]["source"] == "advisor"

    # The report, as CSV and HTML files.
    assert "report,section,table,unit,row_key,row,column,value" in out
    assert "wrote activity.csv and activity.html" in out
    assert (work / "activity.csv").read_text().count("\n") > 20
    assert (work / "activity.html").read_text().lower().startswith("<!doctype html>")

    # FHIR Subscriptions: the handshake, then numbered id-only notifications of the BaRS
    # referral's Task; BaRS: the message accepted once, its repeat 409 REC_CONFLICT.
    assert re.search(r"^Subscription/[0-9a-f-]{36} \(stop the receiver", out, re.M), out[-3000:]
    assert re.search(r"^notified handshake$", out, re.M), out[-3000:]
    accepted = re.search(
        r'"diagnostics":"Referral accepted as ServiceRequest/([0-9a-f-]{36})".* HTTP 200$',
        out,
        re.M,
    )
    assert accepted, out[-3000:]
    assert re.search(r"REC_CONFLICT.* HTTP 409$", out, re.M), out[-3000:]
    bars_task = re.search(
        r'"resourceType":"Task","id":"([0-9a-f-]{36})"', out.split(" HTTP 409")[-1]
    )
    assert bars_task, out[-3000:]
    notified = re.findall(r"^notified event-notification (\d+) (\S+)$", out, re.M)
    assert any(focus.endswith(f"/Task/{bars_task.group(1)}") for _, focus in notified), out[-3000:]
    numbers = [int(number) for number, _ in notified]
    assert len(numbers) == len(set(numbers))  # each notification once
    # In order for each Task, the order promised (the seeded cases' Tasks change meanwhile, and
    # one Task's notification may overtake another's).
    for task in {focus for _, focus in notified}:
        mine = [int(number) for number, focus in notified if focus == task]
        assert mine == sorted(mine), notified
    assert '"name":"events-since-subscription-start"' in out
    assert "9990000026" not in "".join(
        line for line in out.splitlines() if line.startswith("notified")
    )

    # The simulated platform takes the referral through its seeded journey to the end.
    journey = plan(SEED, referral_id)
    expected = {"accepted", "in-progress"} if journey.outcome == ACTIVE else None
    deadline = time.monotonic() + 60
    while True:
        bundle = httpx.get(
            f"{base_url}/fhir/Task",
            params={"focus": f"ServiceRequest/{referral_id}"},
            headers=CLINICAL,
        ).json()
        status = bundle["entry"][0]["resource"]["status"]
        if expected is not None and status in expected:
            break
        if status in ("completed", "failed", "cancelled", "rejected"):
            break
        assert time.monotonic() < deadline, f"the Task stayed {status}"
        time.sleep(0.2)

    # The reset example, as it is.
    reset = run_shell(scripts["reset"], work)
    assert '"status":"reset"' in reset.stdout, reset.stdout + reset.stderr
    gone = httpx.get(f"{base_url}/fhir/ServiceRequest/{referral_id}", headers=CLINICAL)
    assert gone.status_code == 404
    assert process.poll() is None


def test_seed_and_clock_speed_need_sandbox(tmp_path: Path) -> None:
    result = subprocess.run(  # noqa: S603
        [str(SPBRIDGE), "serve", "--seed", "3", "--no-migrate"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "SPBRIDGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"},
        check=False,
    )
    assert result.returncode != 0
    assert "--seed and --clock-speed go with --sandbox" in result.stderr
