"""The log setup keeps secrets out of the lines, in both formats: no variable values in
tracebacks, no request lines from the notification libraries, and credential-looking query
values masked in what uvicorn logs. Run in a child process: the setup is process-wide."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

SCRIPT = """
import logging, sys
sys.path.insert(0, sys.argv[2])
from loguru import logger
from services.logging import setup_logging

setup_logging("DEBUG", sys.argv[1])

def handle(token):
    raise RuntimeError("boom")

secret = "LocalSecret-0a1b2c3d4e5f"
try:
    handle(secret)
except RuntimeError as exc:
    logger.opt(exception=exc).error("Handling failed")
logging.getLogger("urllib3.connectionpool").debug(
    '%s "POST /services/T0/B0/SlackSecret-0a1b2c3d HTTP/1.1" 200 2', "https://hooks.slack.com:443"
)
logging.getLogger("uvicorn.access").info(
    '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/health?token=AccessSecret-0a1b", "1.1", 200
)
"""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_secret_reaches_the_log(fmt: str, tmp_path: Path) -> None:
    script = tmp_path / "emit.py"  # a file: loguru shows variables only where it reads source
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), fmt, str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    output = done.stdout + done.stderr
    for secret in ("LocalSecret", "SlackSecret", "AccessSecret"):
        assert secret not in output, output
    assert "Handling failed" in output
    assert "RuntimeError: boom" in output
    assert "/health?token=***" in output
