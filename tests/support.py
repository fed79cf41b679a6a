"""Test support: a settable clock, free loopback ports, a local notification receiver, and
a real `python server.py` process with its log captured."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from config import Settings

ROOT = Path(__file__).resolve().parent.parent

# Every variable wakeful reads: a developer's shell (or CI's) must not change what a test
# sees, so tests start from none of them and set what they need.
SETTINGS_ENV = frozenset(name.upper() for name in Settings.model_fields)

# The one machine setting tests keep: which Chromium this machine has (CI points it at
# Debian's /usr/bin/chromium). Read before the settings are scrubbed from the environment.
_MACHINE_CHROMIUM = os.environ.get("CHROMIUM_PATH")


def chromium_for_tests() -> str:
    """CHROMIUM_PATH, else what wakeful itself would find; no Chromium fails the test."""
    from bot.engines.whatsapp.browser import find_chromium

    if _MACHINE_CHROMIUM:
        return _MACHINE_CHROMIUM
    found = find_chromium(None).path
    if found is None:
        raise AssertionError(
            "No Chromium on this machine: apt-get install -y chromium (or set CHROMIUM_PATH)"
        )
    return str(found)


def kill_strays(data_dir: Path) -> int:
    """Kill browsers a killed server left behind under `data_dir` (as a container stop
    would); returns how many processes were killed."""
    import psutil

    marker = str(data_dir.resolve())
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in arg for arg in proc.info.get("cmdline") or []):
            found.append(proc)
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(found, timeout=5)
    return len(found)


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self._now = start
        self._monotonic = 1_000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, delta: timedelta | float) -> None:
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else delta
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    explain: Callable[[], str] | None = None,
) -> None:
    """Poll until `predicate`; on a timeout, `explain()` (a server's log, say) goes with the
    error, so a failure in CI says why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    detail = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")


class Receiver:
    """A real HTTP server on loopback that records every POST (apprise json://, webhooks)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        # Answers for the next requests, in order (then `status`): [503, 503] fails twice.
        self.statuses: list[int] = []
        received = self.requests
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                received.append(
                    {"path": self.path, "headers": dict(self.headers), "json": parsed, "body": body}
                )
                self.send_response(outer.statuses.pop(0) if outer.statuses else outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST  # noqa: N815 - the heartbeat monitor is hit with GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, scheme: str = "http", path: str = "/hook") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class ServerProcess:
    """`python server.py` in a child process, on its own port and DATA_DIR."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.base_url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
        self.env = {
            **base,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATA_DIR": str(data_dir),
            "LOG_FORMAT": "text",
            "LOG_LEVEL": "DEBUG",
            "KEEP_ALIVE_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            **(env or {}),
        }
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # cwd is DATA_DIR, so a developer's own .env in the repository is never read.
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py")],
            cwd=self.data_dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process
        assert self.process.stdout
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 60) -> None:
        # /health is `pass` once the boot preflight launched the browser: seconds on a
        # loaded 2-core machine.
        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log}")
            try:
                return httpx.get(self.base_url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout, f"/health on {self.base_url}")

    def wait_for_log(self, text: str, timeout: float = 20, count: int = 1) -> None:
        wait_until(lambda: self.log.count(text) >= count, timeout, f"{text!r} in the log")

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=5, **kwargs)

    def stop(self, sig: int, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._reader:
            self._reader.join(timeout=5)
        return code

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        kill_strays(self.data_dir)


def run_server_once(data_dir: Path, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run `python server.py` expecting it to exit by itself (a bad setting)."""
    server = ServerProcess(data_dir, env)
    data_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, str(ROOT / "server.py")],
        cwd=data_dir,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


@contextlib.contextmanager
def fresh_postgres_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the test Postgres for a real server process (its name),
    dropped afterwards, connections and all."""
    import asyncio
    import uuid

    import asyncpg
    from sqlalchemy.engine import make_url

    admin = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
