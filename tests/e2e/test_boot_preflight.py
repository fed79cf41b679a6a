"""The boot preflight, through a real `python server.py`: the browser is launched once before
/health says `pass`, and a browser that cannot start fails /health (503) with the cause and
one ERROR line that says what to do, so a platform's deploy check stops a broken deploy."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx

from bot.engines.whatsapp.browser import ChromiumChoice
from bot.engines.whatsapp.preflight import check_data_dir, diagnose_launch, missing_library
from tests.support import ServerProcess, chromium_for_tests, wait_until


def health(server: ServerProcess) -> httpx.Response:
    return httpx.get(server.base_url + "/health", timeout=5)


def wait_health(server: ServerProcess, status: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def answered() -> bool:
        assert server.process is not None and server.process.poll() is None, server.log
        try:
            response = health(server)
        except httpx.HTTPError:
            return False
        seen.update(code=response.status_code, body=response.json())
        return response.status_code == status and response.json()["checks"]["browser"][0][
            "observedValue"
        ] in ("passed", "failed")

    wait_until(answered, 60, f"/health {status} after the preflight")
    body: dict[str, Any] = seen["body"]
    return body


def test_a_chromium_path_to_a_missing_file_fails_health_with_the_cause(tmp_path: Path):
    missing = tmp_path / "no-such-chromium"
    with ServerProcess(tmp_path / "data", {"CHROMIUM_PATH": str(missing)}) as server:
        body = wait_health(server, 503)
        assert body["status"] == "fail"
        [browser] = body["checks"]["browser"]
        assert browser["status"] == "fail"
        assert f"CHROMIUM_PATH={missing}" in browser["output"]
        assert "CHROMIUM_PATH" in browser["fix"]
        errors = [line for line in server.lines if "ERROR" in line and "preflight" in line]
        assert len(errors) == 1, server.log
        assert f"CHROMIUM_PATH={missing}" in errors[0]
        assert "Fix:" in errors[0]
        # The server itself stays up (the old deploy keeps serving; this one is not routed).
        assert server.stop(signal.SIGTERM) == 0


def test_health_passes_once_the_browser_started(tmp_path: Path):
    env = {"CHROMIUM_PATH": chromium_for_tests()}
    with ServerProcess(tmp_path / "data", env) as server:
        body = wait_health(server, 200)
        assert body["status"] == "pass"
        assert body["checks"]["browser"] == [
            {"status": "pass", "componentType": "component", "observedValue": "passed"}
        ]
        assert "Browser preflight passed" in server.log
        assert server.stop(signal.SIGTERM) == 0


def test_a_data_dir_it_cannot_write_names_railway_run_uid(tmp_path: Path):
    # The tests run as root, which no mode bit stops: a file where the folder must be is
    # the same refusal (an OSError on the first write) a root-owned volume gives uid 10001.
    blocker = tmp_path / "volume"
    blocker.write_text("not a folder")
    found = check_data_dir(blocker / "data")
    assert found is not None
    assert f"DATA_DIR={blocker / 'data'} is not writable" in found.cause
    assert "RAILWAY_RUN_UID=0" in found.fix
    assert check_data_dir(tmp_path / "fine") is None


def test_the_missing_library_is_named_with_its_package():
    log = (
        "/venv/lib/python3.11/site-packages/playwright/driver/node: error while loading shared "
        "libraries: libatomic.so.1: cannot open shared object file: No such file or directory"
    )
    found = missing_library(log, "the Playwright driver")
    assert found is not None
    assert found.cause == "the Playwright driver cannot load libatomic.so.1"
    assert "apt-get install libatomic1" in found.fix


def test_no_chromium_anywhere_says_to_run_playwright_install():
    error = (
        "BrowserType.launch: Executable doesn't exist at "
        "/home/u/.cache/ms-playwright/chromium_headless_shell-1200/chrome-linux/headless_shell"
    )
    found = diagnose_launch(error, ChromiumChoice(None, "Playwright's own browser"))
    assert "no Chromium found" in found.cause
    assert "playwright install chromium" in found.fix
    # A CHROMIUM_PATH that points nowhere names the variable instead.
    named = diagnose_launch(error, ChromiumChoice(Path("/opt/none/chrome"), "CHROMIUM_PATH"))
    assert named.cause == "CHROMIUM_PATH=/opt/none/chrome: no executable there"
