"""Pure unit tests of the retry schedule (app/delivery/retry.py) and the outbound URL policy
(app/outbound.py). No database, no network beyond resolving ``localhost`` and IP literals.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from app.config import Settings
from app.delivery.retry import JITTER, delay_after, next_attempt_at
from app.errors import BusinessRuleViolation
from app.outbound import check_outbound_url

T0 = dt.datetime(2026, 2, 1, 9, 0, tzinfo=dt.UTC)
DAY = 24 * 3600.0


class FixedJitter:
    """A stand-in for random.Random whose uniform() always returns one end (or the middle)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return {"low": a, "high": b, "none": 0.0}[self.where]


NO_JITTER: Any = FixedJitter("none")


def settings(**values: Any) -> Settings:
    return Settings(database_url="sqlite+aiosqlite:///unused.db", **values)


# --- delay_after ------------------------------------------------------------------------------


def test_jitter_is_twenty_percent() -> None:
    assert JITTER == 0.2


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 10.0), (1, 10.0), (2, 20.0), (3, 30.0), (4, 30.0), (10, 30.0), (10_000, 30.0)],
)
def test_schedule_steps_and_the_last_step_repeats(failures: int, expected: float) -> None:
    assert delay_after(failures, [10.0, 20.0, 30.0], rng=FixedJitter("none")) == expected


def test_jitter_is_asked_for_plus_or_minus_twenty_percent() -> None:
    rng = FixedJitter("high")
    assert delay_after(2, [10.0, 20.0], rng=rng) == pytest.approx(24.0)
    assert rng.calls == [(-0.2, 0.2)]
    assert delay_after(2, [10.0, 20.0], rng=FixedJitter("low")) == pytest.approx(16.0)


@pytest.mark.parametrize("seed", [0, 1, 42, 2026])
def test_jitter_stays_within_twenty_percent_and_spreads(seed: int) -> None:
    rng = random.Random(seed)
    schedule = [5.0, 30.0, 120.0, 600.0]
    for failures, step in enumerate(schedule, start=1):
        delays = [delay_after(failures, schedule, rng=rng) for _ in range(300)]
        assert all(step * 0.8 <= d <= step * 1.2 for d in delays), (failures, step)
        # Jitter spreads retries: both sides of the step are used, not one constant value.
        assert min(delays) < step < max(delays)
        assert max(delays) - min(delays) > step * 0.2


def test_a_seeded_generator_gives_the_same_delays() -> None:
    first = [delay_after(n, [5.0, 30.0], rng=random.Random(7)) for n in range(1, 5)]
    second = [delay_after(n, [5.0, 30.0], rng=random.Random(7)) for n in range(1, 5)]
    assert first == second


def test_retry_after_raises_the_delay() -> None:
    assert delay_after(1, [10.0], retry_after=120.0, rng=FixedJitter("high")) == 120.0


def test_retry_after_shorter_than_the_schedule_does_not_shorten_it() -> None:
    assert delay_after(1, [10.0], retry_after=1.0, rng=FixedJitter("low")) == pytest.approx(8.0)
    assert delay_after(1, [10.0], retry_after=0.0, rng=FixedJitter("none")) == 10.0


def test_a_zero_step_is_never_negative() -> None:
    assert delay_after(1, [0.0], rng=FixedJitter("low")) == 0.0


# --- next_attempt_at -------------------------------------------------------------------------


def test_next_attempt_is_now_plus_the_delay() -> None:
    now = T0 + dt.timedelta(seconds=50)
    when = next_attempt_at(2, T0, now, [10.0, 20.0], 3600, rng=FixedJitter("none"))
    assert when == now + dt.timedelta(seconds=20)


def test_next_attempt_with_retry_after() -> None:
    now = T0 + dt.timedelta(seconds=5)
    when = next_attempt_at(1, T0, now, [10.0], 3600, retry_after=600, rng=FixedJitter("high"))
    assert when == now + dt.timedelta(seconds=600)


@pytest.mark.parametrize("age", [3600.0, 3600.001, 10 * DAY])
def test_dead_once_the_delivery_is_max_age_old(age: float) -> None:
    now = T0 + dt.timedelta(seconds=age)
    assert next_attempt_at(5, T0, now, [10.0], 3600, rng=FixedJitter("none")) is None


def test_just_before_max_age_it_still_retries_once_at_the_deadline() -> None:
    now = T0 + dt.timedelta(seconds=3590)
    when = next_attempt_at(5, T0, now, [60.0], 3600, rng=FixedJitter("none"))
    assert when == T0 + dt.timedelta(seconds=3600)


def test_a_retry_after_beyond_the_window_gets_one_last_try_at_the_window_end() -> None:
    now = T0 + dt.timedelta(seconds=100)
    when = next_attempt_at(1, T0, now, [10.0], 3600, retry_after=99_999, rng=NO_JITTER)
    assert when == T0 + dt.timedelta(seconds=3600)
    # ...and at that last try, the window is over: dead.
    assert next_attempt_at(2, T0, when, [10.0], 3600, rng=NO_JITTER) is None


def test_max_age_zero_dead_at_once() -> None:
    assert next_attempt_at(1, T0, T0, [10.0], 0, rng=NO_JITTER) is None


def _simulate(schedule: list[float], max_age: float, where: str) -> tuple[int, dt.datetime]:
    """Fail every attempt; return how many attempts were made and when the last one was."""
    now = T0
    failures = 0
    rng: Any = FixedJitter(where)
    while True:
        failures += 1  # the attempt at `now` failed
        upcoming = next_attempt_at(failures, T0, now, schedule, max_age, rng=rng)
        if upcoming is None:
            return failures, now
        assert upcoming > now or upcoming == T0 + dt.timedelta(seconds=max_age)
        now = upcoming
        assert failures < 100_000, "the schedule never ends"


def test_default_settings_keep_retrying_for_at_least_seven_days() -> None:
    defaults = settings()
    assert defaults.retry_schedule == [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0]
    # The upper jitter bound spends the window fastest in wall time per attempt; either way the
    # retries must cover at least 7 days (the pilot's outage lasted five).
    for where in ("high", "low", "none"):
        attempts, last = _simulate(defaults.retry_schedule, defaults.retry_max_age, where)
        assert last - T0 >= dt.timedelta(days=7), where
        # The dead letter comes no earlier than the configured window, and no later.
        assert last - T0 == dt.timedelta(seconds=defaults.retry_max_age), where
        # Hourly (±20 %) after the first steps: roughly 8 days x 24 attempts.
        assert 150 <= attempts <= 250, (where, attempts)


def test_default_delays_never_exceed_the_last_step_with_jitter() -> None:
    defaults = settings()
    rng = random.Random(3)
    delays = [delay_after(n, defaults.retry_schedule, rng=rng) for n in range(1, 200)]
    assert max(delays) <= 3600 * 1.2
    assert min(delays) >= 5 * 0.8


def test_schedule_and_hosts_from_environment_strings() -> None:
    parsed = settings(retry_schedule="1, 2.5,60", allowed_outbound_hosts="127.0.0.1, Host:8080")
    assert parsed.retry_schedule == [1.0, 2.5, 60.0]
    assert parsed.allowed_outbound_hosts == ["127.0.0.1", "Host:8080"]


# --- check_outbound_url ----------------------------------------------------------------------

DEFAULT: dict[str, Any] = {}
LOOPBACK_ALLOWED = {"allowed_outbound_hosts": ["127.0.0.1"]}
LOOPBACK_PORT_ALLOWED = {"allowed_outbound_hosts": ["127.0.0.1:8080"]}
SANDBOX = {"sandbox": True}


@pytest.mark.parametrize(
    ("url", "overrides"),
    [
        ("https://93.184.216.34/", DEFAULT),
        ("https://93.184.216.34:8443/hooks?x=1", DEFAULT),
        ("https://[2606:2800:220:1:248:1893:25c8:1946]/hook", DEFAULT),
        ("HTTPS://93.184.216.34/", DEFAULT),
        ("http://127.0.0.1/hook", LOOPBACK_ALLOWED),
        ("http://127.0.0.1:8080/hook", LOOPBACK_ALLOWED),
        ("https://127.0.0.1:9999/hook", LOOPBACK_ALLOWED),
        ("http://127.0.0.1:8080/hook", LOOPBACK_PORT_ALLOWED),
        ("http://localhost:8000/", {"allowed_outbound_hosts": ["localhost"]}),
        ("http://LocalHost:8000/", {"allowed_outbound_hosts": ["LOCALHOST"]}),
        ("http://localhost:8000/", {"allowed_outbound_hosts": ["localhost:8000"]}),
        ("http://[::1]:8080/", {"allowed_outbound_hosts": ["::1"]}),
        ("http://10.1.2.3/fhir", {"allowed_outbound_hosts": ["10.1.2.3"]}),
        ("http://rio.trust.internal:8080/fhir", {"allowed_outbound_hosts": ["rio.trust.internal"]}),
        ("http://127.0.0.1:8080/", SANDBOX),
        ("http://localhost:8080/", SANDBOX),
        ("http://[::1]/", SANDBOX),
        ("http://93.184.216.34/", SANDBOX),
    ],
)
async def test_allowed_urls(url: str, overrides: dict[str, Any]) -> None:
    await check_outbound_url(url, settings(**overrides))


@pytest.mark.parametrize(
    ("url", "overrides", "message"),
    [
        # https is required outside the sandbox, even to a public host
        ("http://93.184.216.34/", DEFAULT, "url must use https"),
        ("http://127.0.0.1:8080/", DEFAULT, "url must use https"),
        ("http://127.0.0.1:9090/", LOOPBACK_PORT_ALLOWED, "url must use https"),
        # internal addresses
        ("https://127.0.0.1/", DEFAULT, "internal address"),
        ("https://127.0.0.1:9090/", LOOPBACK_PORT_ALLOWED, "internal address"),
        ("https://127.1/", DEFAULT, "internal address"),
        ("https://2130706433/", DEFAULT, "internal address"),
        ("https://0x7f000001/", DEFAULT, "internal address"),
        ("https://localhost/", DEFAULT, "internal address"),
        ("https://[::1]/", DEFAULT, "internal address"),
        ("https://[::1]:8443/", LOOPBACK_ALLOWED, "internal address"),
        ("https://[::ffff:127.0.0.1]/", DEFAULT, "internal address"),
        ("https://[::ffff:169.254.169.254]/", DEFAULT, "internal address"),
        ("https://[::ffff:10.0.0.1]/", LOOPBACK_ALLOWED, "internal address"),
        ("https://169.254.169.254/latest/meta-data/", DEFAULT, "internal address"),
        ("https://169.254.169.254/", LOOPBACK_ALLOWED, "internal address"),
        ("https://[fd00:ec2::254]/", DEFAULT, "internal address"),
        ("https://[fe80::1]/", DEFAULT, "internal address"),
        ("https://10.0.0.1/", DEFAULT, "internal address"),
        ("https://172.16.5.4/", DEFAULT, "internal address"),
        ("https://192.168.1.10/", DEFAULT, "internal address"),
        ("https://0.0.0.0/", DEFAULT, "internal address"),
        ("https://[::]/", DEFAULT, "internal address"),
        ("https://224.0.0.1/", DEFAULT, "internal address"),
        ("https://240.0.0.1/", DEFAULT, "internal address"),
        # credentials, schemes, malformed
        ("https://user:pw@93.184.216.34/", DEFAULT, "url must not carry credentials"),
        ("https://token@93.184.216.34/", DEFAULT, "url must not carry credentials"),
        ("http://user:pw@127.0.0.1:8080/", LOOPBACK_ALLOWED, "url must not carry credentials"),
        ("http://user:pw@127.0.0.1:8080/", SANDBOX, "url must not carry credentials"),
        ("ftp://93.184.216.34/", DEFAULT, "url must be an absolute http(s) URL"),
        ("file:///etc/passwd", SANDBOX, "url must be an absolute http(s) URL"),
        ("/hooks", DEFAULT, "url must be an absolute http(s) URL"),
        ("https://", DEFAULT, "url must be an absolute http(s) URL"),
        ("", DEFAULT, "url must be an absolute http(s) URL"),
        ("https://93.184.216.34:99999/", DEFAULT, "url has an invalid port"),
        ("https://does-not-exist.invalid/", DEFAULT, "url: the host does not resolve"),
    ],
)
async def test_refused_urls(url: str, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(BusinessRuleViolation) as caught:
        await check_outbound_url(url, settings(**overrides))
    assert message in caught.value.diagnostics
    assert caught.value.status == 422
    assert [issue.expression for issue in caught.value.issues] == ["url"]


async def test_the_field_named_in_the_error_is_the_callers() -> None:
    with pytest.raises(BusinessRuleViolation) as caught:
        await check_outbound_url("http://10.0.0.1/", settings(), field="adapter_config")
    assert caught.value.diagnostics.startswith("adapter_config must use https (http only")
    assert caught.value.issues[0].expression == "adapter_config"


# Regressions: the shared address space 100.64.0.0/10 holds Alibaba Cloud's metadata service
# (100.100.100.200), and IPv6 hosts are listed with brackets like in a URL.


@pytest.mark.parametrize(
    "url", ["https://100.100.100.200/latest/meta-data/", "https://100.64.0.1/"]
)
async def test_shared_address_space_and_its_metadata_service_are_refused(url: str) -> None:
    with pytest.raises(BusinessRuleViolation) as caught:
        await check_outbound_url(url, settings())
    assert "internal address" in caught.value.diagnostics


@pytest.mark.parametrize("entry", ["[::1]", "[::1]:8080", "::1"])
async def test_ipv6_allow_list_entries(entry: str) -> None:
    await check_outbound_url("http://[::1]:8080/", settings(allowed_outbound_hosts=[entry]))


async def test_an_ipv6_host_port_entry_allows_only_that_port() -> None:
    allowed = settings(allowed_outbound_hosts=["[::1]:8080"])
    with pytest.raises(BusinessRuleViolation):
        await check_outbound_url("http://[::1]:8081/", allowed)
    with pytest.raises(BusinessRuleViolation):
        await check_outbound_url("https://[::1]:8081/", allowed)
