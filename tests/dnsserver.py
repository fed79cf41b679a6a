"""A DNS server of the test's own on loopback, and a resolver pointed at it.

The server answers A queries for one name with addresses from a script (the first answers,
then the rest), counts the queries, and never talks to anything but 127.0.0.1. It can also
be told to hang (never answer), as a user's slow DNS would.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import threading
from collections.abc import Callable

from services.resolver import IPAddress, ResolveError


def _name(labels: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in labels.rstrip(".").split(".")) + b"\0"


def _read_name(packet: bytes, offset: int) -> tuple[str, int]:
    labels = []
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    return ".".join(labels), offset + 1


class DnsServer:
    """`answer(query_number) -> address` (query_number from 1), or None to hang."""

    def __init__(self, answer: Callable[[int], str | None]) -> None:
        self.answer = answer
        self.queries: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stop = False

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop:
            try:
                packet, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            name, end = _read_name(packet, 12)
            qtype = struct.unpack("!H", packet[end : end + 2])[0]
            question = packet[12 : end + 4]
            if qtype != 1:  # only A: no AAAA, no answer records
                header = packet[:2] + struct.pack("!HHHHH", 0x8180, 1, 0, 0, 0)
                self._sock.sendto(header + question, peer)
                continue
            self.queries.append(name)
            address = self.answer(len(self.queries))
            if address is None:
                continue  # hang: the client times out
            header = packet[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
            record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4)
            record += ipaddress.IPv4Address(address).packed
            self._sock.sendto(header + question + record, peer)

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self._sock.close()


class _Query(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self.done = done

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.done.done():
            self.done.set_result(data)


class LoopbackDnsResolver:
    """A resolver (services.resolver.Resolver) asking only the test's DNS server."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.port = port
        self.timeout = timeout

    async def resolve(self, host: str, port: int, key: str = "") -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Query(done), remote_addr=("127.0.0.1", self.port)
        )
        try:
            query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + _name(host)
            transport.sendto(query + struct.pack("!HH", 1, 1))
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await done
            except TimeoutError:
                raise ResolveError(f"the host '{host}' did not resolve in time") from None
        finally:
            transport.close()
        count = struct.unpack("!H", reply[6:8])[0]
        _, offset = _read_name(reply, 12)
        offset += 4
        addresses: list[IPAddress] = []
        for _ in range(count):
            offset += 2  # a pointer to the question's name
            rtype, _, _, length = struct.unpack("!HHIH", reply[offset : offset + 10])
            offset += 10
            if rtype == 1:
                addresses.append(ipaddress.IPv4Address(reply[offset : offset + length]))
            offset += length
        if not addresses:
            raise ResolveError(f"the host '{host}' has no address")
        return addresses
