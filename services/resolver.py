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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ResolveError(Exception):
    """The name could not be resolved; the message says why, for the person who gave it."""


class Resolver(Protocol):
    async def resolve(self, host: str, port: int, key: str = "") -> list[IPAddress]:
        """Every address `host` has (never empty), or ResolveError. `key` says on whose
        behalf (a user, a receiver), so one caller's slow lookups cannot use up the rest."""
        ...


Lookup = Callable[[str, int, int, int], list[tuple[Any, ...]]]


def _getaddrinfo(host: str, port: int, family: int, kind: int) -> list[tuple[Any, ...]]:
    return socket.getaddrinfo(host, port, family, kind)


class SystemResolver:
    """The system's resolver (/etc/hosts, DNS), on threads of its own, with a timeout, and
    at most `per_key` lookups in progress for one key."""

    def __init__(
        self,
        *,
        workers: int = 16,
        per_key: int = 2,
        timeout: float = 5.0,
        lookup: Lookup = _getaddrinfo,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wakeful-dns")
        self._per_key = per_key
        self._waiting: dict[str, int] = {}
        self._timeout = timeout
        self._lookup = lookup

    async def resolve(self, host: str, port: int, key: str = "") -> list[IPAddress]:
        if self._waiting.get(key, 0) >= self._per_key:
            raise ResolveError(
                f"'{host}' was not looked up: {self._per_key} lookups of yours are still "
                "waiting for an answer; try again later"
            )
        self._waiting[key] = self._waiting.get(key, 0) + 1
        loop = asyncio.get_running_loop()
        lookup = loop.run_in_executor(
            self._executor, self._lookup, host, port, 0, socket.SOCK_STREAM
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
                self._one_less(key)
            else:
                lookup.add_done_callback(lambda _: self._one_less(key))
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise ResolveError(f"the host '{host}' has no address")
        return addresses

    def _one_less(self, key: str) -> None:
        left = self._waiting.get(key, 1) - 1
        if left > 0:
            self._waiting[key] = left
        else:
            self._waiting.pop(key, None)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
