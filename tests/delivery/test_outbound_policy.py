"""The outbound URL policy at connection time (app/outbound.py): after DNS, and on redirects.

A URL is checked when it is saved (tests/test_subscriptions_api.py, tests/test_retry_schedule.py)
and again whenever a connection is opened, on the addresses its host resolves to then: so a name
that resolved publicly when it was saved and resolves to loopback now (DNS rebinding) is refused,
and the delivery is dead-lettered. Nothing here leaves 127.0.0.1: names resolve through
``localhost`` (the hosts file) or a replaced resolver, and connections to public addresses are
made by a fake network backend.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import httpcore
import httpx
import pytest
from sqlalchemy import select

from adapters.base import PermanentError, RetryableError, send
from app import outbound as urls
from app.config import Settings
from app.db import Database
from app.errors import BusinessRuleViolation
from app.outbound import (
    GuardedNetworkBackend,
    OutboundAddressRefused,
    check_outbound_url,
    outbound_client,
)
from app.outbox.models import Delivery, DeliveryAttempt
from tests.conftest import ADMIN_KEY, Bridge, referral_resource
from tests.support.delivery import dispatcher_for
from tests.support.receiver import Receiver, free_port

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PUBLIC = ipaddress.ip_address("93.184.216.34")
LOOPBACK = ipaddress.ip_address("127.0.0.1")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Address]]:
    """A resolver the test controls: names it lists resolve as listed, any other is unknown."""
    table: dict[str, list[Address]] = {}

    async def resolve(host: str, port: int) -> list[Address]:
        if host not in table:
            raise OSError(f"{host} does not resolve")
        return table[host]

    monkeypatch.setattr(urls, "resolve", resolve)
    return table


def settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


# --- through the process's outbound client, to a real receiver on loopback ---------------------


async def test_a_name_that_resolves_to_loopback_is_refused_unless_listed() -> None:
    receiver = await Receiver().start()
    url = f"http://localhost:{receiver.port}/hook"
    try:
        # Only the address is listed: the name is not, and it resolves to loopback.
        async with outbound_client(settings(allowed_outbound_hosts=["127.0.0.1"])) as http:
            with pytest.raises(OutboundAddressRefused) as refused:
                await http.get(url)
            assert isinstance(refused.value, PermanentError)
            assert "localhost resolves to an internal address" in str(refused.value)
            assert "SPBRIDGE_ALLOWED_OUTBOUND_HOSTS" in str(refused.value)
            # The listed address itself is fine.
            assert (await http.get(f"{receiver.url}/hook")).status_code == 200
        assert [r.path for r in receiver.requests] == ["/hook"]

        for allowed in (
            settings(allowed_outbound_hosts=["localhost"]),
            settings(allowed_outbound_hosts=[f"LocalHost:{receiver.port}"]),
            settings(sandbox=True),
        ):
            async with outbound_client(allowed) as http:
                assert (await http.get(url)).status_code == 200
        assert len(receiver.requests) == 4

        async with outbound_client(settings(allowed_outbound_hosts=["localhost:1"])) as http:
            with pytest.raises(OutboundAddressRefused):
                await http.get(url)  # listed with another port
    finally:
        await receiver.stop()
    assert len(receiver.requests) == 4


def guard_of(http: httpx.AsyncClient) -> GuardedNetworkBackend:
    """The guard in a client's connection pool. Tests that must not connect anywhere give it a
    fake backend to connect through, so even a broken guard could not reach the network."""
    transport = http._transport
    assert isinstance(transport, httpx.AsyncHTTPTransport)
    assert isinstance(transport._pool, httpcore.AsyncConnectionPool)
    backend = transport._pool._network_backend
    assert isinstance(backend, GuardedNetworkBackend)
    return backend


async def test_send_turns_the_refusal_into_a_permanent_error() -> None:
    port = free_port()
    async with outbound_client(settings()) as http:
        inner = FakeBackend()
        guard_of(http).backend = inner
        for url in (
            f"http://localhost:{port}/",
            "http://169.254.169.254/latest/meta-data/",
            "https://10.1.2.3/fhir",
            "http://[::ffff:127.0.0.1]:8080/",
            "http://[::1]:8080/",
            "http://100.100.100.200/",  # shared address space: another cloud metadata range
        ):
            with pytest.raises(PermanentError, match="internal address"):
                await send(http, "POST", url, timeout=2.0, what="webhook")
    assert inner.calls == []


async def test_redirects_are_checked_on_every_hop() -> None:
    target = await Receiver().start()
    hop = Receiver()
    hop.rule = lambda _: (302, {"Location": f"http://localhost:{target.port}/inside"})
    await hop.start()
    try:
        async with outbound_client(settings(allowed_outbound_hosts=["127.0.0.1"])) as http:
            # Never followed by the adapters; had one followed it, the next hop is checked too.
            moved = await http.get(f"{hop.url}/moved")
            assert moved.status_code == 302
            with pytest.raises(OutboundAddressRefused):
                await http.get(f"{hop.url}/moved", follow_redirects=True)
    finally:
        await hop.stop()
        await target.stop()
    assert [r.path for r in hop.requests] == ["/moved", "/moved"]
    assert target.requests == []


# --- DNS rebinding through the whole delivery path ----------------------------------------------


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"retry_schedule": [0.01]}


async def test_a_host_that_rebinds_to_loopback_after_saving_is_dead_lettered(
    app: Any, bridge: Bridge, dns: dict[str, list[Address]]
) -> None:
    await bridge.service()
    dns["hooks.rebind.example"] = [PUBLIC]  # public when the subscription is saved
    created = await bridge.http.post(
        "/api/v1/subscriptions",
        json={"url": "https://hooks.rebind.example/events"},
        headers=ADMIN,
    )
    assert created.status_code == 201, created.text
    referrer = await bridge.key("clinical-system", default_service="life-rooms")
    assert (await bridge.refer(referrer, referral_resource())).status_code == 201

    dns["hooks.rebind.example"] = [LOOPBACK]  # and loopback when the bridge calls it
    inner = FakeBackend()
    guard_of(app.state.http).backend = inner
    await dispatcher_for(app).drain()

    database: Database = app.state.database
    async with database.read_sessions() as session:
        (delivery,) = await session.scalars(select(Delivery))
        attempts = list(await session.scalars(select(DeliveryAttempt)))
    # Dead at the first attempt: a connection failure would have been retried instead.
    assert delivery.state == "dead"
    assert delivery.attempts == 1
    assert [attempt.outcome for attempt in attempts] == ["dead"]
    assert delivery.last_error is not None
    assert "hooks.rebind.example resolves to an internal address (127.0.0.1)" in (
        delivery.last_error
    )
    assert inner.calls == []


async def test_the_subscription_ping_reports_the_refusal(
    app: Any, bridge: Bridge, dns: dict[str, list[Address]]
) -> None:
    dns["ping.rebind.example"] = [PUBLIC]
    created = await bridge.http.post(
        "/api/v1/subscriptions", json={"url": "https://ping.rebind.example/"}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    dns["ping.rebind.example"] = [LOOPBACK]
    guard_of(app.state.http).backend = FakeBackend()
    ping = await bridge.http.post(
        f"/api/v1/subscriptions/{created.json()['id']}/test", headers=ADMIN
    )
    assert ping.status_code == 200
    assert ping.json()["delivered"] is False
    assert "internal address" in ping.json()["error"]


# --- the backend itself: what it connects to -----------------------------------------------------


class FakeBackend(httpcore.AsyncNetworkBackend):
    """Records where connections would go; connects nowhere."""

    def __init__(self, fail: Callable[[str], bool] = lambda _: True) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail = fail

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        self.calls.append((host, port))
        if self.fail(host):
            raise httpcore.ConnectError("refused (fake)")
        return httpcore.AsyncMockStream([])

    async def sleep(self, seconds: float) -> None:
        return None


async def test_connections_go_to_the_address_that_was_checked(
    dns: dict[str, list[Address]],
) -> None:
    second = ipaddress.ip_address("93.184.216.35")
    dns["receiver.example"] = [PUBLIC, second]
    inner = FakeBackend(fail=lambda host: host == str(PUBLIC))
    guard = GuardedNetworkBackend(settings(), inner)
    stream = await guard.connect_tcp("receiver.example", 443, timeout=5.0)
    assert isinstance(stream, httpcore.AsyncMockStream)
    # The checked addresses, in order, never the name: nothing is resolved a second time.
    assert inner.calls == [(str(PUBLIC), 443), (str(second), 443)]

    inner.calls.clear()
    inner.fail = lambda _: True
    with pytest.raises(httpcore.ConnectError):
        await guard.connect_tcp("receiver.example", 443)
    assert len(inner.calls) == 2


async def test_one_internal_address_among_public_ones_is_refused(
    dns: dict[str, list[Address]],
) -> None:
    dns["mixed.example"] = [PUBLIC, ipaddress.ip_address("10.0.0.7")]
    inner = FakeBackend()
    guard = GuardedNetworkBackend(settings(), inner)
    with pytest.raises(OutboundAddressRefused, match=r"\(10\.0\.0\.7\)"):
        await guard.connect_tcp("mixed.example", 443)
    assert inner.calls == []


async def test_listed_hosts_and_the_sandbox_connect_by_name(
    dns: dict[str, list[Address]],
) -> None:
    inner = FakeBackend(fail=lambda _: False)
    listed = GuardedNetworkBackend(settings(allowed_outbound_hosts=["rio.trust.internal"]), inner)
    await listed.connect_tcp("rio.trust.internal", 8443)
    sandbox = GuardedNetworkBackend(settings(sandbox=True), inner)
    await sandbox.connect_tcp("anything.local", 80)
    assert inner.calls == [("rio.trust.internal", 8443), ("anything.local", 80)]


async def test_a_name_that_does_not_resolve_is_worth_retrying(
    dns: dict[str, list[Address]],
) -> None:
    async with outbound_client(settings()) as http:
        inner = FakeBackend()
        guard_of(http).backend = inner
        with pytest.raises(RetryableError, match="connection failed"):
            await send(http, "GET", "https://gone.example/", timeout=2.0, what="webhook")
    assert inner.calls == []


async def test_unix_sockets_are_never_used() -> None:
    guard = GuardedNetworkBackend(settings(), FakeBackend())
    with pytest.raises(OutboundAddressRefused):
        await guard.connect_unix_socket("/run/docker.sock")


# --- when a URL is saved (the resolver is the same one) ----------------------------------------


async def test_saving_checks_what_the_name_resolves_to(dns: dict[str, list[Address]]) -> None:
    dns["public.example"] = [PUBLIC]
    dns["private.example"] = [ipaddress.ip_address("192.168.1.20")]
    dns["mixed.example"] = [PUBLIC, ipaddress.ip_address("fd00::1")]
    dns["metadata.example"] = [ipaddress.ip_address("169.254.169.254")]
    await check_outbound_url("https://public.example/hook", settings())
    for name in ("private.example", "mixed.example", "metadata.example"):
        with pytest.raises(BusinessRuleViolation, match="internal address"):
            await check_outbound_url(f"https://{name}/hook", settings())
    with pytest.raises(BusinessRuleViolation, match="does not resolve"):
        await check_outbound_url("https://unknown.example/hook", settings())
    await check_outbound_url(
        "http://private.example/hook", settings(allowed_outbound_hosts=["private.example"])
    )


def test_the_outbound_client_uses_the_guard() -> None:
    """The guard sits in httpx's connection pool (httpx takes no network backend of its own):
    should a release of httpx stop using it, this fails before anything else does."""
    http = outbound_client(settings())
    assert isinstance(guard_of(http).backend, httpcore.AnyIOBackend)
    assert http.follow_redirects is False


# --- IPv6 forms that embed or map IPv4, and site-local (issue 13 part 5) ------------------------

# Each carries (or may be routed to) an IPv4 address, most of them an internal one; Python calls
# all but two of them global. They are refused whatever IPv4 address they carry.
EMBEDDING_IPV4 = {
    "NAT64 64:ff9b::/96 (169.254.169.254)": "64:ff9b::a9fe:a9fe",
    "NAT64 written with the IPv4 address": "64:ff9b::169.254.169.254",
    "NAT64 local-use 64:ff9b:1::/48": "64:ff9b:1::a9fe:a9fe",
    "6to4 2002::/16 (169.254.169.254)": "2002:a9fe:a9fe::1",
    "6to4 of a public address": "2002:5db8:d822::1",
    "Teredo 2001::/32": "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "IPv4-compatible ::/96 (127.0.0.1)": "::127.0.0.1",
    "IPv4-compatible of a public address": "::93.184.216.34",
    "IPv4-mapped (127.0.0.1)": "::ffff:127.0.0.1",
    "IPv4-mapped of a public address": "::ffff:93.184.216.34",
    "IPv4-translated ::ffff:0:0:0/96": "::ffff:0:a9fe:a9fe",
    "site-local fec0::/10": "fec0::1",
    "site-local, top of the range": "feff:ffff::1",
}


@pytest.mark.parametrize("address", EMBEDDING_IPV4.values(), ids=EMBEDDING_IPV4.keys())
async def test_saving_refuses_ipv6_that_embeds_ipv4_or_is_site_local(
    dns: dict[str, list[Address]], address: str
) -> None:
    with pytest.raises(BusinessRuleViolation, match="internal address"):
        await check_outbound_url(f"https://[{address}]/hook", settings())
    dns["embedded.example"] = [ipaddress.ip_address(address)]  # and as a DNS answer (AAAA)
    with pytest.raises(BusinessRuleViolation, match="internal address"):
        await check_outbound_url("https://embedded.example/hook", settings())
    # Listed, as today, it is allowed: an on-premises receiver behind such an address.
    await check_outbound_url(
        f"https://[{address}]/hook", settings(allowed_outbound_hosts=[f"[{address}]"])
    )


@pytest.mark.parametrize("address", EMBEDDING_IPV4.values(), ids=EMBEDDING_IPV4.keys())
async def test_connecting_refuses_ipv6_that_embeds_ipv4_or_is_site_local(
    dns: dict[str, list[Address]], address: str
) -> None:
    dns["rebound.example"] = [ipaddress.ip_address(address)]
    inner = FakeBackend(fail=lambda _: False)
    guard = GuardedNetworkBackend(settings(), inner)
    for host in (address, "rebound.example"):
        with pytest.raises(OutboundAddressRefused, match="internal address"):
            await guard.connect_tcp(host, 443)
    assert inner.calls == []
    listed = GuardedNetworkBackend(settings(allowed_outbound_hosts=["rebound.example"]), inner)
    await listed.connect_tcp("rebound.example", 443)
    assert inner.calls == [("rebound.example", 443)]


async def test_public_ipv6_is_still_allowed(dns: dict[str, list[Address]]) -> None:
    """The refusals above are of forms, not of IPv6: a global unicast address passes."""
    public6 = "2606:2800:220:1:248:1893:25c8:1946"
    await check_outbound_url(f"https://[{public6}]/hook", settings())
    dns["v6.example"] = [ipaddress.ip_address(public6)]
    await check_outbound_url("https://v6.example/hook", settings())
    inner = FakeBackend(fail=lambda _: False)
    await GuardedNetworkBackend(settings(), inner).connect_tcp("v6.example", 443)
    assert inner.calls == [(public6, 443)]


async def test_a_subscription_to_nat64_metadata_is_refused_through_the_api(
    app: Any, bridge: Bridge
) -> None:
    for url in ("https://[64:ff9b::a9fe:a9fe]/latest", "https://[::127.0.0.1]:8443/hook"):
        response = await bridge.http.post("/api/v1/subscriptions", json={"url": url}, headers=ADMIN)
        assert response.status_code == 422, response.text
        assert "internal address" in response.json()["detail"]
    listed = await bridge.http.get("/api/v1/subscriptions", headers=ADMIN)
    assert listed.json() == []
