"""Where the server may be told to send requests: not into its own network.

A webhook URL is a request the server makes on a user's behalf; aimed at loopback, a private
network or the cloud metadata address (link-local), it would reach services no user should.
Checked when the URL is saved and again at every delivery, after DNS (a name can be
re-pointed at an internal address later).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class BlockedAddressError(Exception):
    """The URL is not allowed; the message says why, for the person who gave it."""


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata)"
    if address.is_private or address.is_reserved or address.is_unspecified:
        return "private"
    if address.is_multicast:
        return "multicast"
    return None


async def check_url(url: str, *, allow_private: bool) -> None:
    """Raise BlockedAddressError unless `url` is http(s) to public addresses only."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BlockedAddressError("only http:// and https:// URLs are allowed")
    host = parts.hostname
    if not host:
        raise BlockedAddressError("the URL has no host")
    if allow_private:
        return
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host,
                parts.port or (443 if parts.scheme == "https" else 80),
                type=socket.SOCK_STREAM,
            )
        except (OSError, UnicodeError) as exc:
            raise BlockedAddressError(f"the host '{host}' does not resolve ({exc})") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        kind = _refusal(address)
        if kind is not None:
            raise BlockedAddressError(
                f"'{host}' is a {kind} address ({address}); webhooks may only reach public "
                "addresses (WEBHOOK_ALLOW_PRIVATE=true lifts this for trusted setups)"
            )
