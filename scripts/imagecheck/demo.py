"""The CMD run as the platform runs it: the image's ENV, its USER, a PORT of the platform's
choosing, demo mode (WHATSAPP_SIMULATOR=1). Then what a user would check: /health, the
HEALTHCHECK command, a bot linked through the simulator, a message sent, SIGTERM."""

from __future__ import annotations

import contextlib
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from scripts.imagecheck.rootfs import BuildError, Chroot, User, say
from services.procmem import anonymous, smaps_rollup

HEALTH_WAIT = 180.0  # a cold first start on a loaded 2-core machine: Chromium's first launch
STEP_WAIT = 90.0


@dataclass(slots=True)
class Memory:
    """PSS and its anonymous part (what the processes allocated: heaps, not mapped files)."""

    pss_mb: float = 0.0
    anon_mb: float = 0.0

    @property
    def file_mb(self) -> float:
        return self.pss_mb - self.anon_mb

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.pss_mb + other.pss_mb, self.anon_mb + other.anon_mb)


@dataclass(slots=True)
class Figures:
    server: Memory = field(default_factory=Memory)
    driver: Memory = field(default_factory=Memory)
    bot: Memory = field(default_factory=Memory)
    health_after_s: float = 0.0
    linked_after_s: float = 0.0
    stopped_in_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, alive: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not alive():
            raise BuildError(f"the server exited while waiting for {what}")
        time.sleep(0.25)
    raise BuildError(f"no {what} within {timeout:.0f} s")


def memory_of(processes: list[psutil.Process]) -> Memory:
    pss = anon = 0
    for proc in processes:
        fields = smaps_rollup(proc.pid) or {}  # empty: it exited
        pss += fields.get("Pss", 0)
        anon += anonymous(fields)
    return Memory(pss / 2**20, anon / 2**20)


class DemoRun:
    def __init__(
        self,
        chroot: Chroot,
        image_env: dict[str, str],
        workdir: str,
        user: User,
        cmd: list[str],
        log_path: Path,
        shutdown_bound: float,
    ) -> None:
        self.chroot = chroot
        self.port = free_port()
        self.token = secrets.token_urlsafe(24)
        self.env = {
            "HOME": user.home,
            "HOSTNAME": "image-check",
            **image_env,
            "PORT": str(self.port),
            "WHATSAPP_SIMULATOR": "1",
            "ADMIN_TOKEN": self.token,
        }
        self.workdir = workdir
        self.user = user
        self.cmd = cmd
        self.log_path = log_path
        self.shutdown_bound = shutdown_bound
        self.process: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.port}"
        self.figures = Figures()

    # -- plumbing --------------------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, self.base + path, headers=headers, timeout=30, **kw)

    def bot_state(self, bot_id: str) -> str:
        response = self.call("GET", f"/api/sessions/{bot_id}")
        return str(response.json().get("state")) if response.status_code == 200 else ""

    # -- the run ---------------------------------------------------------------------------

    def start(self) -> None:
        say(f"CMD {self.cmd} as uid {self.user.uid} in {self.workdir}, PORT={self.port}")
        self.started = time.monotonic()
        with self.log_path.open("wb") as out:
            self.process = self.chroot.popen(
                self.cmd, self.env, cwd=self.workdir, user=self.user, stdout=out
            )

    def wait_healthy(self) -> None:
        last: dict[str, Any] = {}

        def healthy() -> bool:
            try:
                response = httpx.get(self.base + "/health", timeout=5)
            except httpx.HTTPError:
                return False
            last.update(status=response.status_code, body=response.text[:600])
            # The boot preflight's verdict: a browser that cannot start is final, not slow.
            if response.status_code == 503 and '"observedValue":"failed"' in response.text:
                raise BuildError(f"/health answers 503: {response.text[:800]}")
            return response.status_code == 200

        wait_for(healthy, HEALTH_WAIT, "/health 200", self.alive)
        self.figures.health_after_s = time.monotonic() - self.started
        say(f"/health 200 after {self.figures.health_after_s:.1f} s")

    def run_healthcheck(self, command: list[str], timeout: float) -> None:
        if not command:
            return
        process = self.chroot.popen(command, self.env, cwd=self.workdir, user=self.user)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise BuildError(f"HEALTHCHECK did not answer within {timeout:.0f} s") from None
        if code != 0:
            raise BuildError(f"HEALTHCHECK exited {code}")
        say("HEALTHCHECK exits 0")

    def link_and_send(self) -> None:
        started = time.monotonic()
        created = self.call("POST", "/api/sessions", json={"name": "image-check"})
        if created.status_code != 201:
            raise BuildError(f"creating a bot: {created.status_code} {created.text[:300]}")
        bot_id = created.json()["id"]
        wait_for(lambda: self.bot_state(bot_id) == "SCAN_QR", STEP_WAIT, "QR", self.alive)
        scan = self.call("POST", f"/api/sessions/{bot_id}/simulator", json={"action": "scan"})
        if scan.status_code != 200:
            raise BuildError(f"simulated scan: {scan.status_code} {scan.text[:300]}")
        wait_for(lambda: self.bot_state(bot_id) == "CONNECTED", STEP_WAIT, "link", self.alive)
        self.figures.linked_after_s = time.monotonic() - started
        say(f"bot {bot_id} linked through the simulator in {self.figures.linked_after_s:.1f} s")
        text = f"sent from the image {secrets.token_hex(4)}"
        queued = self.call(
            "POST", f"/api/sessions/{bot_id}/messages", json={"to": "+15550001234", "text": text}
        )
        if queued.status_code not in (201, 202):
            raise BuildError(f"sending: {queued.status_code} {queued.text[:300]}")

        def delivered() -> bool:
            sent = self.call("GET", f"/api/sessions/{bot_id}/simulator/sent").json()
            return any(m.get("body") == text for m in sent.get("messages", []))

        wait_for(delivered, STEP_WAIT, "the message in the simulator's sent list", self.alive)
        say("message sent")

    def measure(self) -> None:
        assert self.process is not None
        server = psutil.Process(self.process.pid)
        children = server.children(recursive=True)
        browsers = [p for p in children if "--user-data-dir=" in " ".join(_cmdline(p))]
        browser_tree = set()
        for root in browsers:
            browser_tree.add(root.pid)
            browser_tree.update(c.pid for c in root.children(recursive=True))
        driver = [p for p in children if p.pid not in browser_tree]
        self.figures.server = memory_of([server])
        self.figures.driver = memory_of(driver)
        self.figures.bot = memory_of([p for p in children if p.pid in browser_tree])

    def stop(self) -> None:
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=self.shutdown_bound)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BuildError(
                f"SIGTERM: still running after {self.shutdown_bound:.0f} s (killed)"
            ) from None
        self.figures.stopped_in_s = time.monotonic() - started
        if code != 0:
            raise BuildError(f"SIGTERM: exit code {code}")
        say(f"SIGTERM: exit 0 in {self.figures.stopped_in_s:.1f} s")

    def kill(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.process.pid)
            for proc in [*root.children(recursive=True), root]:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        self.process.wait(timeout=10)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return [str(arg) for arg in proc.cmdline()]
    except psutil.Error:
        return []
