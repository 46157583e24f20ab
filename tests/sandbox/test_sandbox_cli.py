"""`spbridge serve --sandbox` as the README's first command runs it: a real process on a free
port of 127.0.0.1, an embedded SQLite database, and the landing page's own shell examples, run as
they are, taking a referral through the simulated platform."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adapters.simulator.journeys import ACTIVE, plan
from tests.support.receiver import free_port

SPBRIDGE = Path(sys.executable).parent / "spbridge"
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
    printed = (tmp_path / "stdout.txt").open("w")
    process = subprocess.Popen(  # noqa: S603 (our own entry point)
        [*command, "--clock-speed", "300"],
        cwd=tmp_path,
        env=env,
        stdout=printed,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "spbridge serve --sandbox exited"
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "spbridge serve --sandbox did not start"
            time.sleep(0.2)
        yield base_url, process, tmp_path / "stdout.txt"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        printed.close()


def examples(page: str) -> dict[str, str]:
    return {
        name: html.unescape(script)
        for name, script in re.findall(r'<pre data-example="(\w+)">(.*?)</pre>', page, re.S)
    }


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
    assert f"BRIDGE={base_url}\n" in scripts["referral"]

    # The referral and follow examples, pasted into one shell as the page says.
    shell = subprocess.run(  # noqa: S603
        ["bash", "-c", scripts["referral"] + "\nsleep 1\n" + scripts["follow"]],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shell.returncode == 0, shell.stderr
    found = re.search(r"referral ServiceRequest/([0-9a-f-]{36})", shell.stdout)
    assert found, shell.stdout[:500]
    referral_id = found.group(1)
    assert '"resourceType":"Task"' in shell.stdout
    assert '"resourceType":"Bundle","type":"collection"' in shell.stdout  # the $journey

    # The simulated platform takes it through its seeded journey to the end.
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
    reset = subprocess.run(  # noqa: S603
        ["bash", "-c", scripts["reset"]],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
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
