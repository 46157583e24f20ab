"""Where the bridge may send things: the outbound URL policy (DESIGN §7, §8).

Outside sandbox mode a receiver must be https and public. Loopback, private, link-local and
cloud-metadata addresses are refused unless their host (or host:port) is listed in
``SPBRIDGE_ALLOWED_OUTBOUND_HOSTS`` (on-premises receivers, tests); listed hosts may use http.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from app.config import Settings
from app.errors import BusinessRuleViolation


def _is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Anything not on the public internet: loopback, private, link-local (cloud metadata at
    169.254.169.254), shared address space (100.64.0.0/10, another metadata range), reserved."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _is_internal(address.ipv4_mapped)
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
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
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
        raise BusinessRuleViolation(f"{field} must use https", expression=field)
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port or 443, type=socket.SOCK_STREAM
            )
        except OSError:
            raise BusinessRuleViolation(
                f"{field}: the host does not resolve", expression=field
            ) from None
        addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    if any(_is_internal(address) for address in addresses) and not settings.sandbox:
        raise BusinessRuleViolation(
            f"{field} points at an internal address; list the host in "
            "SPBRIDGE_ALLOWED_OUTBOUND_HOSTS if it is meant",
            expression=field,
        )
