"""Where the server may be told to send requests: not into its own network.

A webhook URL is a request the server makes on a user's behalf; aimed at loopback, a private
network or the cloud metadata address (link-local), it would reach services no user should.
Checked when the URL is saved, and at every delivery by the transport that then connects to
exactly the address it checked (`services.pinned`): a name re-pointed between the check and
the connection (DNS rebinding) cannot slip through.

The non-public ranges are listed explicitly (RFC 6890's special-purpose registries and their
successors), not left to `ipaddress.is_global`, which passes IPv4-compatible IPv6
(`[::7f00:1]`), local-use NAT64 (`64:ff9b:1::/48`) and `192.0.0.192` (a cloud's metadata).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.resolver import IPAddress, ResolveError, Resolver, SystemResolver


class BlockedAddressError(Exception):
    """The URL is not allowed; the message says why, for the person who gave it."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nets(kind: str, *cidrs: str) -> list[tuple[Network, str]]:
    return [(ipaddress.ip_network(cidr), kind) for cidr in cidrs]


# Checked in order; the first match names the kind in the refusal.
NON_PUBLIC: list[tuple[Network, str]] = [
    *_nets("loopback", "127.0.0.0/8", "::1/128"),
    *_nets("link-local (cloud metadata)", "169.254.0.0/16", "fe80::/10"),
    *_nets("multicast", "224.0.0.0/4", "ff00::/8"),
    *_nets(
        "private",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # shared address space (carrier NAT; some clouds' metadata)
        "fc00::/7",  # unique local
        "fec0::/10",  # the old site-local
    ),
    *_nets(
        "special-purpose",
        "0.0.0.0/8",
        "192.0.0.0/24",  # IETF protocol assignments (192.0.0.192: a cloud's metadata)
        "192.0.2.0/24",
        "192.31.196.0/24",
        "192.52.193.0/24",
        "192.88.99.0/24",
        "192.175.48.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "240.0.0.0/4",  # reserved, and 255.255.255.255
        "::/96",  # unspecified and IPv4-compatible (deprecated: ::7f00:1 is 127.0.0.1)
        "64:ff9b:1::/48",  # local-use NAT64: translates into the operator's own network
        "100::/64",
        "2001::/23",  # IETF protocol assignments (Teredo, ORCHID, ...)
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
    ),
]
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, well-known NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress) -> str | None:
    """The kind of non-public address this is, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            address = embedded
    for network, kind in NON_PUBLIC:
        if address.version == network.version and address in network:
            return kind
    # A belt to the list's braces: anything Python knows as not global is refused too.
    return None if address.is_global else "special-purpose"


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses requests may reach: public ones, plus `allowed` networks (a trusted
    private network), or anything at all with `allow_private`."""

    allow_private: bool = False
    allowed: Sequence[Network] = ()

    def refusal(self, address: IPAddress) -> str | None:
        if self.allow_private or any(
            address.version == net.version and address in net for net in self.allowed
        ):
            return None
        return refusal(address)


_DEFAULT_RESOLVER: SystemResolver | None = None


def default_resolver() -> SystemResolver:
    global _DEFAULT_RESOLVER
    if _DEFAULT_RESOLVER is None:
        _DEFAULT_RESOLVER = SystemResolver()
    return _DEFAULT_RESOLVER


def url_target(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL, or BlockedAddressError saying what is wrong."""
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
    return host, port or (443 if parts.scheme == "https" else 80)


async def approved_addresses(
    host: str, port: int, policy: AddressPolicy, resolver: Resolver | None = None, key: str = ""
) -> list[IPAddress]:
    """Resolve `host` once and return its addresses if every one is allowed."""
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = await (resolver or default_resolver()).resolve(host, port, key)
        except ResolveError as exc:
            raise BlockedAddressError(str(exc)) from None
    for address in addresses:
        kind = policy.refusal(address)
        if kind is not None:
            raise BlockedAddressError(
                f"'{host}' is a {kind} address ({address}); webhooks may only reach public "
                "addresses (WEBHOOK_ALLOW_PRIVATE=true lifts this for trusted setups)"
            )
    return addresses


async def check_url(
    url: str,
    *,
    allow_private: bool,
    policy: AddressPolicy | None = None,
    resolver: Resolver | None = None,
    key: str = "",
) -> None:
    """Raise BlockedAddressError unless `url` is http(s) to allowed addresses only."""
    host, port = url_target(url)
    policy = policy or AddressPolicy(allow_private=allow_private)
    if policy.allow_private:
        return
    await approved_addresses(host, port, policy, resolver, key)
