"""Fetching a file someone named by URL, as webhooks reach their receivers: through the address
guard and a connection pinned to the approved address (`services.pinned`), each redirect hop
checked again, bounded in size (refused as soon as it passes the bound, from the declared
length or while it streams) and in time.
"""

from __future__ import annotations

import asyncio
import mimetypes
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httpx

from services.netguard import BlockedAddressError

MAX_REDIRECTS = 3


class MediaFetchError(Exception):
    """The file could not be had; `status` is the answer for the caller (413: too big,
    422: the URL is refused or did not answer with a file)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes
    mimetype: str | None  # from the answer's Content-Type, else the URL's extension
    filename: str | None  # the URL path's last part


def _mimetype(content_type: str | None, url: str) -> str | None:
    value = (content_type or "").split(";")[0].strip().lower()
    if value and value != "application/octet-stream":
        return value
    guessed, _ = mimetypes.guess_type(urlsplit(url).path)
    return guessed or (value or None)


def _filename(url: str) -> str | None:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1]).strip()
    return name[:255] or None


async def fetch_media(
    client: httpx.AsyncClient, url: str, *, max_bytes: int, within: float, accept: str
) -> Fetched:
    """GET `url` and return its bytes; MediaFetchError saying why not."""
    try:
        async with asyncio.timeout(within):
            return await _fetch(client, url, max_bytes, accept)
    except TimeoutError:
        raise MediaFetchError(422, f"the URL did not send the file within {within:g}s") from None
    except BlockedAddressError as exc:
        raise MediaFetchError(422, str(exc)) from None
    except httpx.TooManyRedirects:
        raise MediaFetchError(422, f"more than {MAX_REDIRECTS} redirects") from None
    except httpx.HTTPError as exc:
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise MediaFetchError(422, f"the URL could not be fetched ({why})") from None


async def _fetch(client: httpx.AsyncClient, url: str, max_bytes: int, accept: str) -> Fetched:
    headers = {"Accept": accept, "Accept-Encoding": "identity"}
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            raise MediaFetchError(
                422, f"the URL answered {response.status_code}, not 200 with the file"
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise MediaFetchError(
                413, f"the file is {int(declared)} bytes; MAX_MEDIA_BYTES is {max_bytes}"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > max_bytes:
                raise MediaFetchError(
                    413, f"the file is larger than MAX_MEDIA_BYTES ({max_bytes} bytes)"
                )
            chunks.append(chunk)
        final = str(response.url)
        return Fetched(
            b"".join(chunks),
            _mimetype(response.headers.get("content-type"), final),
            _filename(final),
        )
