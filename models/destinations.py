"""Where webhooks may be sent: the SSRF guard.

A subscription's URL is checked when it is created or changed and again at
every delivery, because DNS can change between the two:

- the scheme must be ``http`` or ``https`` and the URL must name a host;
- every address the host resolves to must be public (``ipaddress``'s
  ``is_global``): loopback, private, link-local (which holds the cloud metadata
  endpoint 169.254.169.254), carrier-grade NAT, multicast, reserved and
  unspecified addresses are refused, as are IPv4 addresses mapped into IPv6.

``SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS=1`` lifts the address rule (local
development, tests); the scheme rule always holds. Delivery connects to the
address checked here, not to a second lookup (tasks/delivery.py), so a DNS
answer that changes between check and connect cannot slip past.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from .errors import SlaError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeDestination(SlaError):
    """A webhook URL the service refuses to send to; the message says why."""


@dataclass(frozen=True)
class Destination:
    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def parse(url: str) -> SplitResult:
    """The URL split, or UnsafeDestination naming what is wrong with its form."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeDestination(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeDestination("the scheme must be http or https")
    if not parts.hostname:
        raise UnsafeDestination("the URL names no host")
    if port == 0:
        raise UnsafeDestination("port 0 is not a port")
    return parts


def forbidden_reason(address: Address) -> str | None:
    """Why sending to ``address`` is refused; None if it is a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return forbidden_reason(address.ipv4_mapped)
    if address.is_global and not address.is_multicast:
        return None
    for kind in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{kind}"):
            return f"{kind.replace('_', '-')} address {address}"
    return f"non-public address {address}"


def resolve(host: str, port: int) -> tuple[str, ...]:
    """Every address ``host`` resolves to (a literal address resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeDestination(f"the host {host!r} does not resolve: {exc}") from None
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]).split("%")[0], None)
    return tuple(seen)


def check(url: str, *, allow_private: bool) -> Destination:
    """Resolve ``url``'s host and vet every address; UnsafeDestination says why not."""
    parts = parse(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve(host, port)
    if not allow_private:
        for raw in addresses:
            reason = forbidden_reason(ipaddress.ip_address(raw))
            if reason is not None:
                raise UnsafeDestination(
                    f"{host} resolves to a {reason}; set SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS=1 "
                    "to allow private networks"
                )
    return Destination(url, parts.scheme, host, port, addresses)
