"""What the server process carries: `python server.py` migrates in a child process, so the
server never imports Alembic; apprise is loaded only when ALERT_URLS names a channel."""

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
