"""The client's address behind trusted proxies (WALLETD_TRUSTED_PROXIES).

Only when the TCP peer is a trusted proxy is X-Forwarded-For read, and then from the right:
each proxy appends the address it received the request from, so the rightmost address that is
not itself a trusted proxy is the client, and whatever stands left of it was written by the
client and proves nothing. The request is replaced by a clone whose `remote` is that address,
so everything that reads `request.remote` (login throttling, the password-hash queue's share
per address, the operator-key throttle, the logs) sees the client, not the balancer. With no
trusted proxy configured the middleware is not installed and X-Forwarded-For means nothing.
"""

from __future__ import annotations

import functools
import ipaddress

from aiohttp import web

from walletd.config import network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An X-Forwarded-For item as an address (`[v6]:port` and `v4:port` forms too), or None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    def __init__(self, cidrs: tuple[str, ...]) -> None:
        self.networks = tuple(network(cidr) for cidr in cidrs)
        # Parsing an address costs microseconds; a balancer forwards the same clients again and
        # again, so each distinct text is parsed once (bounded).
        self.entry = functools.lru_cache(maxsize=65536)(self._entry)

    def _entry(self, text: str) -> tuple[str | None, bool]:
        """(the address as walletd writes it, or None if it is none; whether it is a trusted proxy)."""
        address = _address(text)
        if address is None:
            return None, False
        return str(address), any(address in net for net in self.networks if net.version == address.version)

    def trusts(self, peer: str) -> bool:
        return self.entry(peer)[1]

    def client(self, peer: str, forwarded_for: list[str]) -> str:
        """The rightmost address that is not a trusted proxy; where the chain holds something that
        is not an address, the nearest address before it (never anything the client wrote)."""
        client = peer
        for header in reversed(forwarded_for):
            for item in reversed(header.split(",")):
                address, trusted = self.entry(item)
                if address is None:
                    return client
                client = address
                if not trusted:
                    return client
        return client

    def middleware(self):
        @web.middleware
        async def forwarded_for(request: web.Request, handler):
            peer = request.remote
            if peer is not None and self.trusts(peer):
                client = self.client(peer, request.headers.getall("X-Forwarded-For", []))
                if client != peer:
                    request = request.clone(remote=client)
            return await handler(request)

        return forwarded_for
