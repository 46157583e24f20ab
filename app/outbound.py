"""Where the bridge may send things: the outbound URL policy (DESIGN §7, §8).

Outside sandbox mode a receiver must be https and public. Loopback, private, link-local and
cloud-metadata addresses, and IPv6 forms that embed or map IPv4 (NAT64, 6to4, Teredo,
IPv4-compatible, IPv4-mapped) or are site-local, are refused unless their host (or host:port) is
listed in ``SPBRIDGE_ALLOWED_OUTBOUND_HOSTS`` (on-premises receivers, tests); listed hosts may
use http.

The policy is checked twice: when a URL is saved (``check_outbound_url``), and when a connection
is made (``guarded_transport``, under the process's one outbound client), on the addresses the
host resolves to then, and the connection goes to an address that was checked. So a name that
resolved publicly when saved and privately later (DNS rebinding) is refused, and so would every
hop of a redirect be, should one ever be followed (none is: adapters.base.send).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from adapters.base import PermanentError
from app.config import Settings
from app.errors import BusinessRuleViolation


async def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses ``host`` resolves to, in the resolver's order (tests replace this)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


# IPv6 forms that carry an IPv4 address inside them, so that a gateway, tunnel or the host's own
# stack may deliver to that IPv4 address (64:ff9b::a9fe:a9fe reaches 169.254.169.254 through
# NAT64), and the deprecated site-local range. Python calls most of them global. They are refused
# whatever IPv4 address they carry: a receiver with a real IPv6 address never needs one.
_IPV6_REFUSED = tuple(
    ipaddress.IPv6Network(network)
    for network in (
        "::/96",  # IPv4-compatible (deprecated), and the unspecified and loopback addresses
        "::ffff:0:0/96",  # IPv4-mapped
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "64:ff9b::/96",  # NAT64, well-known prefix
        "64:ff9b:1::/48",  # NAT64, local-use prefix
        "2001::/32",  # Teredo
        "2002::/16",  # 6to4
        "fec0::/10",  # site-local (deprecated)
    )
)


def _is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Anything not on the public internet: loopback, private, link-local (cloud metadata at
    169.254.169.254), shared address space (100.64.0.0/10, another metadata range), reserved,
    and every IPv6 form that embeds or maps an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and any(
        address in network for network in _IPV6_REFUSED
    ):
        return True
    return not address.is_global or address.is_multicast


def _allowed(host: str, port: int | None, settings: Settings) -> bool:
    # IPv6 hosts are listed with brackets, "[::1]" or "[::1]:8080"; urlsplit gives them bare.
    shown = f"[{host}]" if ":" in host else host
    allowed = {entry.strip().lower() for entry in settings.allowed_outbound_hosts}
    names = {host, shown}
    if port is not None:
        names.add(f"{shown}:{port}")
    return bool(names & allowed)


async def check_outbound_url(url: str, settings: Settings, field: str = "url") -> None:
    """Refuse (422 naming ``field``) a URL the bridge must not call."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        # As the sender will read it (httpx, IDNA 2008): what it cannot send is refused now.
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        # Unbalanced brackets, a bracketed host that is no IP address, a host name that is no
        # IDNA name (urlsplit and the idna codec raise ValueError subclasses).
        raise BusinessRuleViolation(f"{field} is not a valid URL", expression=field) from None
    if parts.scheme not in ("http", "https") or not host:
        raise BusinessRuleViolation(f"{field} must be an absolute http(s) URL", expression=field)
    if parts.username or parts.password:
        raise BusinessRuleViolation(f"{field} must not carry credentials", expression=field)
    try:
        port = parts.port
    except ValueError:
        raise BusinessRuleViolation(f"{field} has an invalid port", expression=field) from None
    if _allowed(host, port, settings):
        return
    if parts.scheme != "https" and not settings.sandbox:
        raise BusinessRuleViolation(
            f"{field} must use https (http only for a host listed in "
            "SPBRIDGE_ALLOWED_OUTBOUND_HOSTS, or in sandbox mode)",
            expression=field,
        )
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addresses = set(await resolve(host, port or 443))
        except (OSError, ValueError):  # ValueError: a name the resolver cannot encode
            raise BusinessRuleViolation(
                f"{field}: the host does not resolve", expression=field
            ) from None
    if any(_is_internal(address) for address in addresses) and not settings.sandbox:
        raise BusinessRuleViolation(
            f"{field} points at an internal address; list the host in "
            "SPBRIDGE_ALLOWED_OUTBOUND_HOSTS if it is meant",
            expression=field,
        )


# --- at connection time --------------------------------------------------------------------


class OutboundAddressRefused(PermanentError):
    """The host resolved to an address the policy refuses: the delivery is dead-lettered."""


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Opens outbound connections only to addresses the URL policy allows (see the module)."""

    def __init__(
        self, settings: Settings, backend: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.settings = settings
        self.backend = backend if backend is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        name = host.lower()
        if self.settings.sandbox or _allowed(name, port, self.settings):
            return await self.backend.connect_tcp(
                host, port, timeout, local_address, socket_options
            )
        try:
            addresses = [ipaddress.ip_address(name)]
        except ValueError:
            try:
                addresses = await asyncio.wait_for(resolve(name, port), timeout)
            except TimeoutError:
                raise httpcore.ConnectTimeout(f"resolving {name} timed out") from None
            except (OSError, ValueError):  # ValueError: a name the resolver cannot encode
                raise httpcore.ConnectError(f"{name} does not resolve") from None
        refused = [address for address in addresses if _is_internal(address)]
        if refused or not addresses:
            raise OutboundAddressRefused(
                f"{name} resolves to an internal address ({refused[0] if refused else 'none'}); "
                "list the host in SPBRIDGE_ALLOWED_OUTBOUND_HOSTS if it is meant"
            )
        failure: Exception | None = None
        for address in addresses:  # the checked addresses themselves: no second lookup
            try:
                return await self.backend.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundAddressRefused("outbound calls never use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context (the CA bundle loaded once, 25 ms) for every transport of the process."""
    return httpx.create_ssl_context(trust_env=False)


def guarded_transport(settings: Settings, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport with its connection pool opening connections through the guard."""
    transport = httpx.AsyncHTTPTransport(verify=_tls_context(), limits=limits, trust_env=False)
    # httpx takes no network backend; its pool is replaced by the same pool with ours
    # (tests/delivery/test_outbound_policy.py fails should an httpx release stop honouring it).
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=_tls_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedNetworkBackend(settings),
    )
    return transport


def outbound_client(settings: Settings) -> httpx.AsyncClient:
    """The process's one outbound client; every call also sets its own timeout. Its connections
    go only to addresses the outbound URL policy allows, checked after DNS (app.outbound)."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=64)
    return httpx.AsyncClient(
        transport=guarded_transport(settings, limits),
        timeout=httpx.Timeout(10.0, connect=5.0),
        follow_redirects=False,
        trust_env=False,
    )
