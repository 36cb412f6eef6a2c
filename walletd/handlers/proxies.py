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
        # Peers are few (the balancers): remember each verdict instead of parsing per request.
        self.trusts = functools.lru_cache(maxsize=4096)(self._trusts)

    def _trusts(self, peer: str) -> bool:
        address = _address(peer)
        return address is not None and any(address in net for net in self.networks if net.version == address.version)

    def client(self, peer: str, forwarded_for: list[str]) -> str:
        """The rightmost address that is not a trusted proxy; where the chain holds something that
        is not an address, the nearest address before it (never anything the client wrote)."""
        client = peer
        for item in reversed([part for header in forwarded_for for part in header.split(",")]):
            address = _address(item)
            if address is None:
                break
            client = str(address)
            if not self.trusts(client):
                break
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
