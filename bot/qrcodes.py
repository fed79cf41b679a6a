"""QR codes for linking: images for the API and the dashboard, and text for the log.

People on a PaaS often have only the platform's log view, so each new QR is also printed
there once, as a QR drawn with block characters that a phone can scan off the screen.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    import segno

IMAGE_SCALE = 8


def _qr(data: str) -> segno.QRCode:
    # segno (and the XML writer it brings) is loaded with the first QR, not at start.
    import segno

    return segno.make(data, error="l", micro=False)


def qr_png(data: str) -> bytes:
    out = io.BytesIO()
    _qr(data).save(out, kind="png", scale=IMAGE_SCALE, border=4)
    return out.getvalue()


def qr_svg(data: str) -> bytes:
    out = io.BytesIO()
    _qr(data).save(out, kind="svg", scale=IMAGE_SCALE, border=4, xmldecl=False, title="QR code")
    return out.getvalue()


def qr_text(data: str) -> str:
    """Two rows per line with half blocks, so it fits a log viewer's width."""
    out = io.StringIO()
    _qr(data).terminal(out=out, compact=True, border=2)
    return out.getvalue()


class QrLogPrinter:
    """A session listener: prints each QR the session shows (already debounced there)."""

    async def __call__(self, session: Any, event: str, data: dict[str, Any]) -> None:
        if event != "qr" or not data.get("qr"):
            return
        logger.bind(component="bot", session=session.id).info(
            "📱 Scan this QR code with WhatsApp (Settings → Linked devices → Link a device) to "
            "link bot '{}'; or open GET /api/sessions/{}/qr:\n{}",
            session.record.name,
            session.id,
            qr_text(str(data["qr"])),
        )
