"""Media fetches (and webhook deliveries: the same transport) cut short by their deadline, at
every point of the exchange, leave no socket open: each request has a pool of its own that is
closed with it (services.pinned). A pooled client cancelled between its connect and its
request keeps that socket, and its place in the pool, for good (services.uncancelled), which
here would be one user's slow URLs using up what every user's fetches share."""

from __future__ import annotations

import asyncio
import ipaddress
import random

import httpx
import psutil
import pytest

from services.mediafetch import MediaFetchError, fetch_media
from services.netguard import AddressPolicy
from services.pinned import PinnedTransport

FETCHES = 300


def sockets_to(port: int) -> int:
    return sum(
        1 for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port
    )


async def test_fetches_cut_short_at_any_point_leave_no_socket_open() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(random.uniform(0, 0.004))  # some answers beat the deadline
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 4\r\n\r\n")
            writer.write(b"\x89PNG")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/cat.png"
    policy = AddressPolicy(allowed=[ipaddress.ip_network("127.0.0.1/32")])
    rand = random.Random(19)
    try:
        async with httpx.AsyncClient(transport=PinnedTransport(policy)) as client:
            outcomes: dict[str, int] = {}
            for _ in range(FETCHES):
                # Deadlines from 0.1 ms to 5 ms fall in the connect, between connect and
                # request, in the request and in the answer.
                within = rand.uniform(0.0001, 0.005)
                try:
                    await fetch_media(client, url, max_bytes=1000, within=within, accept="*/*")
                    outcomes["fetched"] = outcomes.get("fetched", 0) + 1
                except MediaFetchError:
                    outcomes["cut short"] = outcomes.get("cut short", 0) + 1
            assert outcomes.get("cut short", 0) > FETCHES // 4, outcomes
            try:
                async with asyncio.timeout(10):
                    while sockets_to(port):
                        await asyncio.sleep(0.05)
            except TimeoutError:
                pytest.fail(f"{sockets_to(port)} socket(s) to the URL's server still open")
            fetched = await fetch_media(client, url, max_bytes=1000, within=5, accept="*/*")
            assert fetched.data == b"\x89PNG"
    finally:
        server.close()
        await server.wait_closed()
