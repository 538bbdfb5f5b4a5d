"""Request-scoped dependencies as typed aliases, and who the client is."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from newsletter import jsonsafe
from newsletter.config import ProxyTrust, get_settings
from newsletter.db import session_scope

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


class StrictJSONRequest(Request):
    """A request whose JSON body is read by `jsonsafe.loads`: NaN, Infinity, lone
    surrogates and absurd nesting become a 422 naming the problem, never a 500."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = jsonsafe.loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """Routes of the JSON APIs: their bodies are parsed by `StrictJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


def _parse_ip(value: str) -> IPAddress | None:
    """An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:443`."""
    text = value.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 peer seen through a dual-stack socket is still that IPv4 address.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _forwarded_for(request: Request) -> list[str]:
    """Every X-Forwarded-For entry, left (claimed by the client) to right (nearest)."""
    entries: list[str] = []
    for header in request.headers.getlist("x-forwarded-for"):
        entries.extend(part.strip() for part in header.split(","))
    return entries


def resolve_client(peer: str, forwarded: list[str], trust: ProxyTrust) -> str:
    """The client address: the peer, unless trusted proxies vouch for one further left.

    Only the right end of X-Forwarded-For is written by our own proxies; anything to
    the left of what they vouch for is whatever the client chose to send.
    """
    if trust.hops:
        if len(forwarded) < trust.hops:
            return peer
        claimed = _parse_ip(forwarded[-trust.hops])
        return str(claimed) if claimed else peer
    if trust.networks:
        client = _parse_ip(peer)
        if client is None:
            return peer
        for entry in reversed(forwarded):
            if not any(client in network for network in trust.networks):
                break
            previous = _parse_ip(entry)
            if previous is None:
                break
            client = previous
        return str(client)
    return peer


def client_ip(request: Request) -> str:
    """Who sent `request`, as far as the configured trusted proxies can tell."""
    peer = request.client.host if request.client else "unknown"
    trust = get_settings().proxy_trust
    if not trust.hops and not trust.networks:
        return peer
    return resolve_client(peer, _forwarded_for(request), trust)
