"""Name lookups for the addresses the server is told to reach (webhook URLs), kept apart.

`getaddrinfo` blocks a thread; on asyncio's shared default executor a dozen lookups that hang
(one user's slow DNS) held every worker, and anything else queued there waited a minute. Here
lookups get their own few threads, a bound on how many may be waiting, and a timeout, so a
slow name costs its owner a refusal and nobody else anything. The resolver is injectable: the
tests point one at a DNS server of their own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ResolveError(Exception):
    """The name could not be resolved; the message says why, for the person who gave it."""


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` has (never empty), or ResolveError."""
        ...


class SystemResolver:
    """The system's resolver (/etc/hosts, DNS), on threads of its own, with a timeout."""

    def __init__(self, *, workers: int = 8, max_waiting: int = 64, timeout: float = 5.0) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wakeful-dns")
        self._max_waiting = max_waiting
        self._waiting = 0
        self._timeout = timeout

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        if self._waiting >= self._max_waiting:
            raise ResolveError(f"too many lookups in progress; '{host}' was not looked up")
        self._waiting += 1
        loop = asyncio.get_running_loop()
        lookup = loop.run_in_executor(
            self._executor, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM
        )
        try:
            async with asyncio.timeout(self._timeout):
                infos = await lookup
        except TimeoutError:
            raise ResolveError(
                f"the host '{host}' did not resolve within {self._timeout:g}s"
            ) from None
        except (OSError, UnicodeError) as exc:
            raise ResolveError(f"the host '{host}' does not resolve ({exc})") from None
        finally:
            # A thread stuck in getaddrinfo cannot be interrupted; it stays counted until it
            # returns, so hung lookups fill this bound, not the process's threads.
            if lookup.done():
                self._waiting -= 1
            else:
                lookup.add_done_callback(self._one_less)
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise ResolveError(f"the host '{host}' has no address")
        return addresses

    def _one_less(self, _: object) -> None:
        self._waiting -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
