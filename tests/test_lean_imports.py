"""What the server process carries: `python server.py` migrates in a child process, so the
server never imports Alembic; apprise is loaded only when ALERT_URLS names a channel; Jinja2
only when a dashboard page is served, segno only when a QR is drawn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


def test_the_server_imports_neither_alembic_nor_apprise_it_does_not_use() -> None:
    loaded = modules_after("import server")
    assert "alembic" not in loaded
    assert "apprise" not in loaded


def test_apprise_is_loaded_for_a_channel_and_alerts_still_name_their_type() -> None:
    loaded = modules_after(
        "from services.alertchannels import load_channel, notify_type, FAILURE\n"
        "channel = load_channel(1, 'json://127.0.0.1:9/alerts')\n"
        "assert notify_type(FAILURE).value == 'failure'"
    )
    assert "apprise" in loaded


def test_an_app_serving_only_the_api_loads_neither_jinja2_nor_segno(tmp_path: Path) -> None:
    loaded = modules_after(
        "import os\n"
        f"os.environ['DATA_DIR'] = {str(tmp_path)!r}\n"
        "import server\n"
        "from config import Settings\n"
        "app = server.create_app(Settings())"
    )
    assert "server" in loaded
    assert "jinja2" not in loaded
    assert "segno" not in loaded


def test_the_first_page_and_the_first_qr_load_what_they_need(tmp_path: Path) -> None:
    loaded = modules_after(
        "import asyncio, os, httpx\n"
        f"os.environ['DATA_DIR'] = {str(tmp_path)!r}\n"
        "import server\n"
        "from config import Settings\n"
        "from bot.qrcodes import qr_svg\n"
        "app = server.create_app(Settings())\n"
        "async def fetch_login() -> None:\n"
        "    transport = httpx.ASGITransport(app=app)\n"
        "    async with httpx.AsyncClient(transport=transport, base_url='http://t') as client:\n"
        "        page = await client.get('/login')\n"
        "        assert page.status_code == 200 and 'token' in page.text, page.text\n"
        "asyncio.run(fetch_login())\n"
        "assert qr_svg('2@demo').startswith(b'<svg')"
    )
    assert "jinja2" in loaded
    assert "segno" in loaded
