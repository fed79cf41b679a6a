"""WhatsApp Web's weight: the code, the heap and the files the real page carries, for
`Behaviour(weight=REAL_WEIGHT)`.

The simulator's page is otherwise a few dozen KB of script and no files, so a browser on it
costs a fraction of what a browser on web.whatsapp.com costs, and a saving measured on it
(a flag, a blocked request) says little about the real page. With this weight the page also:

* loads its application code from static.whatsapp.net (`rsrc.php`), as WhatsApp Web does:
  `bundles` scripts of `bundle_kb` each, every module factory in them run at load (so V8
  compiles what it would compile), their inner functions left for later, as most are;
* uses WhatsApp's fonts (`fonts` woff2 files) and its emoji sprite sheet (a PNG of
  `sprite_px` square) from static.whatsapp.net;
* once its first sync is over, keeps a store of `chats` chats of `messages_per_chat`
  messages (a share of them media, each with its thumbnail in the message as the real
  page keeps it) and `contacts` contacts, and renders the chat list: its visible rows
  (`visible_chats`), each with the chat's profile picture from pps.whatsapp.net.

The sizes: the only figures the maintained clients' users report for the real page are
whole sessions, ~270 MB a bot (30 whatsapp-web.js sessions in 8 GB, wwebjs issue #3559) to
300-400 MB; WhatsApp Web's code is ~10 MB once unpacked. The defaults below put a linked bot
on full Chromium with Playwright's default flags in that range on this machine (see the
README's per-bot figures); what each part weighs alone is not known, and is not claimed.

`AssetHost` answers those two hosts inside the browser context (nothing leaves the machine)
and counts what reached it, by kind: a test can see what the bot's browser did not fetch.
"""

from __future__ import annotations

import functools
import random
import struct
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from loguru import logger
from playwright.async_api import Error, Route

STATIC_HOST = "https://static.whatsapp.net"
PICTURES_HOST = "https://pps.whatsapp.net"
LIGHT_WEIGHT = "light"
REAL_WEIGHT = "real"
WEIGHTS = (LIGHT_WEIGHT, REAL_WEIGHT)
# Fonts are fetched across origins: the font host answers WhatsApp Web's page.
CORS = {"Access-Control-Allow-Origin": "https://web.whatsapp.com"}

log = logger.bind(component="bot")

# True once the page's chat list is up and every picture and font in it has loaded or been
# refused: the whole weight is in the page then (for tests and benchmarks to wait on).
SETTLED_SCRIPT = """() => {
    const pictures = [...document.querySelectorAll("#side img")];
    return pictures.length > 0 && pictures.every((p) => p.complete)
        && document.fonts.status === "loaded";
}"""


@dataclass(frozen=True, slots=True)
class Weight:
    bundles: int = 10
    bundle_kb: int = 1000
    fonts: int = 3
    font_kb: int = 60
    sprite_px: int = 1024
    chats: int = 300
    messages_per_chat: int = 40
    contacts: int = 1000
    media_every: int = 8  # one message in this many carries a thumbnail
    thumbnail_kb: int = 6
    visible_chats: int = 18
    picture_px: int = 96

    def page_config(self) -> dict[str, Any]:
        return {**asdict(self), "staticHost": STATIC_HOST, "picturesHost": PICTURES_HOST}


WORDS = (
    *("ok", "thanks", "see", "you", "tomorrow", "at", "the", "office", "please", "send"),
    *("invoice", "when", "can", "meeting", "moved", "to", "three", "call", "me", "later"),
    *("did", "get", "my", "message", "order", "shipped", "today", "price", "list", "good"),
)


@functools.lru_cache(maxsize=16)
def bundle_script(index: int, size_kb: int) -> bytes:
    """One application script: module definitions (`__wd(name, factory)`) of made-up but
    ordinary code, deterministic for its index, about `size_kb` long."""
    rng = random.Random(index)
    parts: list[str] = [f"/* WhatsApp Web (simulated weight) bundle {index} */\n"]
    size = len(parts[0])
    module = 0
    while size < size_kb * 1024:
        name = f"WAWebSim{index:02d}M{module:05d}"
        strings = [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(6)]
        consts = {f"k{n}": rng.randint(0, 1 << 30) for n in range(8)}
        functions = []
        for n in range(rng.randint(4, 9)):
            a, b = rng.randint(1, 97), rng.randint(1, 97)
            functions.append(
                f"function f{n}(x,y){{if(x==null)return S[{n % 6}];"
                f"const r=[];for(let i=0;i<(y|0)%{a};i++)r.push(x[i%x.length]^{b});"
                f"return r.length?r.reduce((s,v)=>s+v,{n}):K.k{n % 8}}}"
            )
        text = (
            f'__wd("{name}",function(){{"use strict";'
            f"const S={strings!r};const K={consts!r};"
            f"{''.join(functions)}"
            f"return {{{','.join(f'f{n}' for n in range(len(functions)))},S,K}}}});\n"
        ).replace("'", '"')
        parts.append(text)
        size += len(text)
        module += 1
    return "".join(parts).encode()


def _png(width: int, height: int, pixel: Any) -> bytes:
    """A PNG (RGB, 8 bits) whose pixel (x, y) is `pixel(x, y)` -> (r, g, b)."""
    raw = bytearray()
    for y in range(height):
        raw.append(0)  # no filter
        for x in range(width):
            raw.extend(pixel(x, y))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw), 6))
        + chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=4)
def sprite_png(size: int) -> bytes:
    """The emoji sheet: a grid of flat-coloured cells (it compresses as a sprite does)."""
    return _png(size, size, lambda x, y: ((x // 32) * 7 % 256, (y // 32) * 11 % 256, 160))


@functools.lru_cache(maxsize=64)
def picture_png(seed: int, size: int) -> bytes:
    """A profile picture: noisy, like a photo (it does not compress)."""
    rng = random.Random(seed)
    noise = rng.randbytes(size * size * 3)
    return _png(size, size, lambda x, y: noise[(y * size + x) * 3 : (y * size + x) * 3 + 3])


@functools.lru_cache(maxsize=8)
def font_bytes(index: int, size_kb: int) -> bytes:
    """A woff2-sized file (not a font Chromium can use: it rejects it and falls back, after
    fetching it, which is what a blocked font saves)."""
    return b"wOF2" + random.Random(index).randbytes(size_kb * 1024 - 4)


class AssetHost:
    """static.whatsapp.net and pps.whatsapp.net for the pages of one simulator (each page
    with the weight it was loaded with)."""

    def __init__(self) -> None:
        self.fetched: Counter[str] = Counter()  # "script", "font", "sprite", "picture"

    async def fulfil(self, route: Route, weight: Weight) -> None:
        url = urlsplit(route.request.url)
        found = _asset(weight, f"{url.scheme}://{url.netloc}", url.path)
        try:
            if found is None:
                await route.fulfill(status=404, headers=CORS, body="not in the simulator")
                return
            kind, content_type, body = found
            self.fetched[kind] += 1
            await route.fulfill(status=200, headers=CORS, content_type=content_type, body=body)
        except Error as exc:  # the page went away while we answered
            log.debug("Simulator: asset {} not answered: {}", url.path, exc)


def _asset(weight: Weight, host: str, path: str) -> tuple[str, str, bytes] | None:
    """What a URL of the two hosts is: (kind, content type, body); None: not found."""
    name = path.rsplit("/", 1)[-1]
    stem, _, extension = name.partition(".")
    if host == PICTURES_HOST and extension == "png" and stem.isdigit():
        return "picture", "image/png", picture_png(int(stem), weight.picture_px)
    if host != STATIC_HOST or not path.startswith("/rsrc.php/"):
        return None
    if extension == "js" and stem.startswith("app-") and stem[4:].isdigit():
        index = int(stem[4:])
        if index < weight.bundles:
            script = bundle_script(index, weight.bundle_kb)
            return "script", "application/javascript", script
    if extension == "woff2" and stem.startswith("font-") and stem[5:].isdigit():
        return "font", "font/woff2", font_bytes(int(stem[5:]), weight.font_kb)
    if name == "emoji-sprite.png":
        return "sprite", "image/png", sprite_png(weight.sprite_px)
    return None
