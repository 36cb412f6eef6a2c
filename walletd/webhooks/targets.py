"""Where a webhook may point: a party chooses the URL, so walletd must not become its way into
the network it runs in (Patroni's REST API, etcd, cloud metadata, anything on loopback).

- `parse_url` reads a URL strictly: http or https, an ASCII host that is not empty, not
  percent-encoded and not a numeric form other than a canonical address, no whitespace, control
  characters, backslashes, credentials or fragment. What it accepts can be delivered.
- `TargetPolicy.refusal` says why an address is refused: loopback, private, link-local, CGNAT,
  multicast, reserved, unspecified or otherwise not global (IPv4 and IPv6, and an IPv4 address
  carried inside IPv6: mapped, 6to4, NAT64), unless WALLETD_WEBHOOK_ALLOW_HOSTS names the host or
  a network holding the address.
- `TargetPolicy.vet` checks a URL at registration: its address, or every address its name
  resolves to.
- `VettingResolver` is the webhook client's resolver: every connection of a delivery resolves
  the name once, here, and connects only to the addresses this check let through. A name that
  resolved to a public address at registration and to 127.0.0.1 now (DNS rebinding) is refused
  at the delivery, and there is no second lookup between check and connect to race.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from walletd.config import network

Address = IPv4Address | IPv6Address

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"(?i)(0x[0-9a-f]*|[0-9]+)")
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")
RESOLVE_TIMEOUT = 5.0


class UnsafeUrl(ValueError):
    """Why a webhook URL is refused; the message is shown to the client."""


def parse_url(raw: str) -> URL:
    if not raw.isascii():
        raise UnsafeUrl("url must be ASCII (punycode for an international host name, percent-encoding in the path)")
    if _FORBIDDEN.search(raw):
        raise UnsafeUrl("url must not contain whitespace, control characters or backslashes")
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise UnsafeUrl("url must be http or https")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        raise UnsafeUrl("url must not carry credentials")
    if "%" in authority:
        raise UnsafeUrl("url host must not be percent-encoded")
    try:
        url = URL(raw)
        port = url.port
    except (ValueError, TypeError):
        raise UnsafeUrl("url is not a valid URL") from None
    if not url.raw_host:
        raise UnsafeUrl("url must name a host")
    if port is None or not 0 < port < 65536:
        raise UnsafeUrl("url port must be 1-65535")
    if "#" in raw:
        raise UnsafeUrl("url must not have a fragment")
    host = url.raw_host
    if literal_address(host) is None and _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
        raise UnsafeUrl(f"url host {host} is a numeric address in a non-canonical form")
    return url


def literal_address(host: str) -> Address | None:
    """The address a URL's host names literally (canonical forms only), or None for a name."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, IPv4Address) and str(address) != host:
        return None  # e.g. 127.000.0.1: refused by parse_url as a non-canonical number
    return address


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: Address) -> str | None:
    """Why walletd must not connect to this address on a party's behalf, or None."""
    if isinstance(address, IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            why = address_refusal(inner)
            return None if why is None else f"{why} ({inner}, carried in {address})"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, IPv4Address) and address in _CGNAT:
        return "a carrier-grade NAT (CGNAT) address"
    if address.is_reserved:
        return "a reserved address"
    if any(address in net for net in _PRIVATE if net.version == address.version):
        return "a private address"
    if not address.is_global:
        return "not a public address (a special-purpose range)"
    return None


@dataclass(frozen=True)
class TargetPolicy:
    allowed_names: frozenset[str] = frozenset()
    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    resolver: AbstractResolver | None = None  # None: a ThreadedResolver made on first use

    @classmethod
    def from_allow_list(cls, items: tuple[str, ...], resolver: AbstractResolver | None = None) -> "TargetPolicy":
        names, networks = set(), []
        for item in items:
            try:
                networks.append(network(item))
            except ValueError:
                names.add(item.rstrip(".").lower())
        return cls(frozenset(names), tuple(networks), resolver)

    def name_allowed(self, host: str) -> bool:
        return host.rstrip(".").lower() in self.allowed_names

    def refusal(self, address: Address) -> str | None:
        if any(address in net for net in self.allowed_networks if net.version == address.version):
            return None
        return address_refusal(address)

    def check_literal(self, host: str) -> bool:
        """True if the host is an address (allowed, else UnsafeUrl); False for a name."""
        literal = literal_address(host)
        if literal is None:
            return False
        why = None if self.name_allowed(host) else self.refusal(literal)
        if why is not None:
            raise UnsafeUrl(f"url host {host} is {why}; walletd does not call inside its own network")
        return True

    async def vet(self, raw: str) -> URL:
        """The URL, parsed and checked, or UnsafeUrl saying why not."""
        url = parse_url(raw)
        host = url.raw_host or ""
        if self.check_literal(host) or self.name_allowed(host):
            return url
        await self.resolve_checked(self.resolver or ThreadedResolver(), host, url.port or 443)
        return url

    async def resolve_checked(self, resolver: AbstractResolver, host: str, port: int,
                              family: socket.AddressFamily = socket.AF_UNSPEC) -> list[ResolveResult]:
        """Every address the name resolves to, all of them allowed; else UnsafeUrl."""
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                found = await resolver.resolve(host, port, family=family)
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise UnsafeUrl(f"url host {host} does not resolve ({reason})") from None
        if not found:
            raise UnsafeUrl(f"url host {host} does not resolve")
        for result in found:
            address = ipaddress.ip_address(result["host"].split("%")[0])
            why = self.refusal(address)
            if why is not None:
                raise UnsafeUrl(f"url host {host} resolves to {why} ({address}); walletd does not call inside "
                                "its own network")
        return found


class TargetRefused(OSError):
    """Raised inside a delivery's connect: aiohttp reports it as the attempt's connection error."""


class VettingResolver(AbstractResolver):
    """The webhook client's resolver: returns only addresses the policy allows, so the client
    connects to exactly what was checked. A name the allow-list names is resolved unchecked."""

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy
        self._plain = policy.resolver or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        if self.policy.name_allowed(host):
            return await self._plain.resolve(host, port, family)
        try:
            return await self.policy.resolve_checked(self._plain, host, port, family)
        except UnsafeUrl as exc:
            raise TargetRefused(str(exc)) from None

    async def close(self) -> None:
        await self._plain.close()
