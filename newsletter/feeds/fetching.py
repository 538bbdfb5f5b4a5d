"""A feed fetcher that cannot be turned against the machine it runs on.

A feed URL comes from an admin or a publisher, and polling runs on our servers, so
every hop (the first request and each redirect) is checked: http(s) only, the host
resolved once and every address it has must be public (unless
NEWSLETTER_ALLOW_PRIVATE_FEEDS is set), and the connection goes to the address we
checked, not to a second lookup a hostile DNS server could answer differently. The
body is read as a stream with a byte cap, and one deadline bounds the whole fetch:
every socket operation (connect, TLS, each read and write) may only wait for what
is left of it, so a server dripping its headers a byte at a time cannot hold a
poller past the cap.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpcore
import httpx

from newsletter import __version__
from newsletter.config import Settings, get_settings
from newsletter.errors import InvalidInput
from newsletter.urls import split_url

log = logging.getLogger(__name__)

USER_AGENT = f"tag-digest-newsletter/{__version__} (+feed poller)"
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
)
REDIRECTS = {301, 302, 303, 307, 308}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# IPv6 prefixes that carry an IPv4 address in their last 32 bits and reach it:
# NAT64 (RFC 6052), IPv4-translated (SIIT, RFC 6145) and the deprecated
# IPv4-compatible form (::a.b.c.d).
_EMBEDDING_PREFIXES = tuple(
    ipaddress.ip_network(prefix) for prefix in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96")
)
# Local-use NAT64 (RFC 8215): translated by the site itself, to anything.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


class FetchError(InvalidInput):
    """The feed could not be fetched, or was refused: said in one line, nothing stored."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FetchResult:
    """A feed response: a 200 with its body, or a 304 with none."""

    url: str
    status: int
    content: bytes
    content_type: str | None
    etag: str | None
    last_modified: str | None

    @property
    def not_modified(self) -> bool:
        return self.status == 304


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the order the system prefers."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc}") from None
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    return addresses


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a transition prefix (mapped, NAT64, 6to4, Teredo,
    IPv4-compatible) leads to: the address that is really reached."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in prefix for prefix in _EMBEDDING_PREFIXES):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """False for loopback, private, link-local, reserved, multicast and the like,
    also when hidden in an IPv6 transition prefix (`::7f00:1`, `2002:7f00:1::`)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64:
            return False
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public(inner)
    return address.is_global and not address.is_multicast


def check_feed_url(url: str) -> str:
    """An absolute http(s) URL without credentials, or InvalidInput."""
    url = url.strip()
    parts = split_url(url, "feed URL")
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidInput(f"a feed URL must be an absolute http(s) URL, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("feed URLs with a user name or password are not supported")
    if any(c in url for c in " \r\n\t") or len(url) > 2000:
        raise InvalidInput(f"not a usable feed URL: {url!r}")
    return url


def _pick_address(host: str, port: int, resolver: Resolver, allow_private: bool) -> IPAddress:
    try:
        addresses = [ipaddress.ip_address(a) for a in resolver(host, port)]
    except ValueError as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc}") from None
    if not addresses:
        raise FetchError(f"host {host!r} has no address")
    if not allow_private:
        # Every address must be public: a name with one public and one private
        # address could otherwise be steered to the private one.
        refused = [a for a in addresses if not is_public(a)]
        if refused:
            raise FetchError(
                f"refusing to fetch from {host!r}: it resolves to non-public address "
                f"{refused[0]} (set NEWSLETTER_ALLOW_PRIVATE_FEEDS=true for intranet feeds)"
            )
    return addresses[0]


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every wait is cut to what is left before the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _wait(self, timeout: float | None, error: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error("the fetch deadline has passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._wait(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._wait(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        wait = self._wait(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, wait), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """Opens connections whose streams honour one deadline for the whole fetch."""

    def __init__(self, deadline: float) -> None:
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("the fetch deadline has passed")
        wait = left if timeout is None else min(timeout, left)
        stream = self._backend.connect_tcp(host, port, wait, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport on a connection pool whose sockets all share one deadline."""

    def __init__(self, deadline: float) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=1,
            max_keepalive_connections=0,
            network_backend=_DeadlineBackend(deadline),
        )


def _too_slow(url: str, settings: Settings) -> FetchError:
    return FetchError(f"fetching {url!r} took longer than {settings.feed_timeout:g} s")


def fetch_feed(
    url: str,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    settings: Settings | None = None,
    resolver: Resolver = system_resolver,
) -> FetchResult:
    """GET a feed with conditional headers, under the configured limits.

    Raises FetchError for a refused address, a network error, an HTTP error
    status, too many redirects, a body over the size cap or a fetch over time.
    """
    settings = settings or get_settings()
    deadline = time.monotonic() + settings.feed_timeout
    current = check_feed_url(url)
    headers = {"User-Agent": USER_AGENT, "Accept": ACCEPT, "Accept-Encoding": "gzip, deflate"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    # trust_env=False: no proxy from the environment may carry us past the checks.
    transport = _DeadlineTransport(deadline)
    with httpx.Client(transport=transport, trust_env=False, follow_redirects=False) as client:
        for _hop in range(settings.feed_max_redirects + 1):
            response = _fetch_one(client, current, headers, settings, deadline, resolver)
            if isinstance(response, str):
                current = response
                continue
            return response
    raise FetchError(f"more than {settings.feed_max_redirects} redirects fetching {url!r}")


def _fetch_one(
    client: httpx.Client,
    url: str,
    headers: dict[str, str],
    settings: Settings,
    deadline: float,
    resolver: Resolver,
) -> FetchResult | str:
    """One hop: a FetchResult, or the next URL to follow."""
    parts = urlsplit(check_feed_url(url))
    try:
        # International names travel as IDNA in DNS, the Host header and SNI alike.
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except UnicodeError:
        raise FetchError(f"bad host name in {url!r}") from None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _pick_address(host, port, resolver, settings.allow_private_feeds)
    literal = f"[{address}]" if address.version == 6 else str(address)
    target = urlunsplit(parts._replace(netloc=f"{literal}:{port}"))
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header += f":{parts.port}"
    hop_headers = {**headers, "Host": host_header}
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _too_slow(url, settings)
    try:
        request = client.build_request(
            "GET", target, headers=hop_headers, extensions=extensions, timeout=remaining
        )
        response = client.send(request, stream=True)
    except httpx.TimeoutException:
        raise _too_slow(url, settings) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise FetchError(f"cannot fetch {url!r}: {exc or type(exc).__name__}") from None
    try:
        if response.status_code in REDIRECTS:
            return _redirect_target(url, response)
        if response.status_code == 304:
            return FetchResult(url, 304, b"", None, None, None)
        if response.status_code != 200:
            raise FetchError(
                f"{url!r} answered HTTP {response.status_code} {response.reason_phrase}",
                response.status_code,
            )
        content = _read_capped(response, url, settings, deadline)
        return FetchResult(
            url=url,
            status=200,
            content=content,
            content_type=response.headers.get("content-type"),
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
        )
    finally:
        response.close()


def _redirect_target(url: str, response: httpx.Response) -> str:
    """The absolute URL a redirect points at; FetchError when it cannot be one."""
    location = response.headers.get("location")
    if not location:
        raise FetchError(f"{url!r} redirects without a Location", response.status_code)
    try:
        target = urljoin(url, str(location).strip())
        httpx.URL(target)
        check_feed_url(target)
    except (httpx.InvalidURL, InvalidInput, ValueError) as exc:
        raise FetchError(
            f"{url!r} redirects to an unusable Location {str(location)[:200]!r}: {exc}",
            response.status_code,
        ) from None
    return target


def _read_capped(response: httpx.Response, url: str, settings: Settings, deadline: float) -> bytes:
    limit = settings.feed_max_bytes
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FetchError(f"{url!r} is {int(declared)} bytes, over the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        # Decoded bytes are counted, so a small gzip bomb is cut off all the same.
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise FetchError(f"{url!r} is over the {limit} byte limit")
            if time.monotonic() > deadline:
                raise _too_slow(url, settings)
            chunks.append(chunk)
    except httpx.TimeoutException:
        raise _too_slow(url, settings) from None
    except httpx.HTTPError as exc:
        raise FetchError(f"cannot fetch {url!r}: {exc or type(exc).__name__}") from None
    return b"".join(chunks)
