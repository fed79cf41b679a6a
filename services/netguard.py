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


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            address = embedded
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata)"
    if address.is_multicast:
        return "multicast"
    # Private, shared (100.64/10, where some clouds keep metadata), reserved, unspecified,
    # and IPv6's old site-local range...
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    if not address.is_global or site_local:
        return "private"
    return None


async def check_url(url: str, *, allow_private: bool) -> None:
    """Raise BlockedAddressError unless `url` is http(s) to public addresses only."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise BlockedAddressError("the URL's port is not a valid port number") from None
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
                port or (443 if parts.scheme == "https" else 80),
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
