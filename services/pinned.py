"""An httpx transport that connects to exactly the address the guard approved.

The guard resolved a webhook's host, checked the addresses, and then httpx resolved it again
to connect: a name answering a public address first and 127.0.0.1 next walked past the check
(DNS rebinding). This transport resolves once, checks every address, and connects to an
approved one by its IP, keeping the URL's host in the Host header and as the TLS server name
(so certificates are verified against the name, as before). Redirects are never followed here:
each hop would need its own check, and webhooks treat a redirect as permanent anyway.

Each request gets a connection of its own: a pooled TLS connection made for one name must not
carry another name's request that happens to resolve to the same IP.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import httpx

from services.netguard import AddressPolicy, approved_addresses
from services.resolver import Resolver


class _ClosingStream(httpx.AsyncByteStream):
    """The response body; closing it closes the one-request transport under it."""

    def __init__(self, stream: httpx.AsyncByteStream, transport: httpx.AsyncHTTPTransport) -> None:
        self._stream = stream
        self._transport = transport

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            await self._transport.aclose()


class PinnedTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        policy: AddressPolicy,
        resolver: Resolver | None = None,
        *,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        # One TLS context for every connection (loading the CA bundle per request costs
        # milliseconds of CPU each time).
        self._verify: ssl.SSLContext | bool = (
            httpx.create_ssl_context() if verify is True else verify
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        # Lookups are accounted per receiver: one receiver's slow DNS holds its own share.
        addresses = await approved_addresses(
            host, port, self._policy, self._resolver, key=f"receiver:{host}"
        )
        last_error: httpx.ConnectError | None = None
        for address in addresses:
            extensions = dict(request.extensions)
            if url.scheme == "https":
                extensions["sni_hostname"] = host
            pinned = httpx.Request(
                request.method,
                url.copy_with(host=str(address)),
                headers=request.headers,  # Host stays the URL's host
                stream=request.stream,
                extensions=extensions,
            )
            transport = httpx.AsyncHTTPTransport(verify=self._verify, retries=0)
            try:
                response = await transport.handle_async_request(pinned)
            except httpx.ConnectError as exc:
                await transport.aclose()
                last_error = exc  # the next approved address, as a browser would
                continue
            except BaseException:
                await transport.aclose()
                raise
            assert isinstance(response.stream, httpx.AsyncByteStream)
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=_ClosingStream(response.stream, transport),
                extensions=response.extensions,
                request=request,
            )
        assert last_error is not None
        raise last_error
