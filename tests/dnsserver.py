"""A small authoritative DNS server on a loopback UDP port, answering from a dict.

Tests point a dnspython resolver at it (`nameserver`) to check real lookups, real
wire formats and real "no such name" answers without the network:

    with DnsServer({"news.example.org": {"TXT": [txt("v=spf1 -all")]}}) as dns:
        ...  # resolver_at(dns.nameserver)

A name in the zone without the asked type answers NOERROR with no records, a name
not in it NXDOMAIN, as real servers do; `dns.zone` may be changed while it runs.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

# name -> record type -> records in zone-file text form
Zone = Mapping[str, Mapping[str, list[str]]]


def txt(value: str) -> str:
    """A TXT record's zone-file text: split into quoted strings of at most 255
    characters (the most one string holds), as a 2048-bit DKIM key needs."""
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"' for chunk in chunks)


class DnsServer:
    """Answers UDP queries on 127.0.0.1 from `zone` in a thread, until stopped."""

    def __init__(self, zone: Zone) -> None:
        self.zone = {name.lower().rstrip("."): dict(types) for name, types in zone.items()}
        self.queries: list[tuple[str, str]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(1.0)  # a lost wake-up still ends the thread soon
        self.port: int = self._sock.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    @property
    def nameserver(self) -> str:
        """`host:port`, as NEWSLETTER_DOCTOR_NAMESERVER takes it."""
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        # Wake the thread from recvfrom at once: an empty datagram is no query.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wake:
            wake.sendto(b"", ("127.0.0.1", self.port))
        self._thread.join()
        self._sock.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                wire, peer = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            try:
                query = dns.message.from_wire(wire)
            except dns.exception.DNSException:
                continue  # not DNS: a real server drops it too
            self._sock.sendto(self._answer(query), peer)

    def _answer(self, query: dns.message.Message) -> bytes:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower().rstrip(".")
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        types = self.zone.get(name)
        if types is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif types.get(rdtype):
            response.answer.append(
                dns.rrset.from_text_list(question.name, 300, "IN", rdtype, types[rdtype])
            )
        try:
            return response.to_wire(max_size=query.payload if query.edns >= 0 else 512)
        except dns.exception.TooBig:
            # Too long for UDP: say so (TC), and the resolver asks again over TCP,
            # which this server does not offer; tests keep answers small enough.
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()
