"""The boot preflight: before /health says `pass`, the Playwright driver and the browser are
launched once (then closed), and DATA_DIR is written to. A broken image (a library missing,
no Chromium, a volume the image's user cannot write) then fails the platform's deploy check
with the cause, instead of going live green while no bot can ever start.

The result is set once, at boot: a bot crashing later is that bot's business (its own state,
backoff and alert), never a failed /health."""

from __future__ import annotations

import asyncio
import enum
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger
from playwright.async_api import async_playwright

from bot.engines.whatsapp.browser import ChromiumChoice

log = logger.bind(component="bot")
LOADER_ERROR = re.compile(r"error while loading shared libraries: ([^\s:]+)")
DRIVER_PROBE_TIMEOUT = 30.0


class Stage(enum.Enum):
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Diagnosis:
    cause: str
    fix: str


class PreflightError(Exception):
    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(diagnosis.cause)
        self.diagnosis = diagnosis


def library_package(soname: str) -> str:
    """Debian's naming: libfoo.so.1 ships in libfoo1, libfoo2.so.3 in libfoo2-3."""
    found = re.fullmatch(r"(lib[\w+.-]*?)\.so\.?(\d*)[\d.]*", soname)
    if not found:
        return soname
    name, version = found.group(1).lower(), found.group(2)
    if not version:
        return name
    return f"{name}-{version}" if name[-1].isdigit() else f"{name}{version}"


def missing_library(text: str, binary: str) -> Diagnosis | None:
    match = LOADER_ERROR.search(text)
    if match is None:
        return None
    soname = match.group(1)
    return Diagnosis(
        f"{binary} cannot load {soname}",
        f"install the system package that ships {soname} (on Debian/Ubuntu: "
        f"`apt-get install {library_package(soname)}`, in the Dockerfile's apt-get line)",
    )


def diagnose_launch(error: str, chromium: ChromiumChoice) -> Diagnosis:
    """A failed browser launch, in the words that fix it."""
    first_line = error.strip().splitlines()[0] if error.strip() else "unknown error"
    where = str(chromium.path) if chromium.path else "Playwright's own browser"
    found = missing_library(error, where)
    if found:
        return found
    if "Executable doesn't exist" in error or (chromium.path and not chromium.path.exists()):
        if chromium.source == "CHROMIUM_PATH":
            return Diagnosis(
                f"CHROMIUM_PATH={chromium.path}: no executable there",
                "point CHROMIUM_PATH at a Chromium binary (Debian: /usr/bin/chromium or "
                "/usr/lib/chromium/chromium-headless-shell), or unset it",
            )
        return Diagnosis(
            "no Chromium found (none on the system, and Playwright's own is not downloaded)",
            "run `playwright install chromium` (or install Debian's chromium-headless-shell, "
            "or set CHROMIUM_PATH)",
        )
    return Diagnosis(f"the browser ({where}) did not start: {first_line}", _generic_fix(chromium))


def _generic_fix(chromium: ChromiumChoice) -> str:
    return (
        "check that this Chromium runs here (`"
        + (str(chromium.path) if chromium.path else "chromium")
        + " --headless --no-sandbox --dump-dom about:blank`), or set CHROMIUM_PATH"
    )


def check_data_dir(data_dir: Path) -> Diagnosis | None:
    """Profiles and the SQLite file live here; a root-owned platform volume is the usual
    reason it is not writable by the image's unprivileged user."""
    probe = data_dir / ".wakeful-write-check"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return Diagnosis(
            f"DATA_DIR={data_dir} is not writable by uid {os.getuid()} ({exc.strerror})",
            "on Railway set RAILWAY_RUN_UID=0 (its volumes are mounted root-owned); "
            "elsewhere make the volume writable by this user, or point DATA_DIR elsewhere",
        )
    return None


async def probe_driver() -> Diagnosis | None:
    """Run the driver's own Node once: a missing library is named here, where Playwright
    itself would only say 'Connection closed while reading from the driver'."""
    from playwright._impl._driver import compute_driver_executable

    node, _cli = compute_driver_executable()
    try:
        process = await asyncio.create_subprocess_exec(
            node,
            "--version",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(DRIVER_PROBE_TIMEOUT):
            output, _ = await process.communicate()
    except (OSError, TimeoutError) as exc:
        return Diagnosis(
            f"the Playwright driver ({node}) does not start: {exc}",
            "reinstall playwright (`pip install --force-reinstall playwright`)",
        )
    if process.returncode == 0:
        return None
    text = output.decode(errors="replace")
    return missing_library(text, f"the Playwright driver ({node})") or Diagnosis(
        f"the Playwright driver ({node}) exits {process.returncode}: {text.strip()[:300]}",
        "reinstall playwright (`pip install --force-reinstall playwright`)",
    )


class BootPreflight:
    def __init__(
        self,
        chromium: ChromiumChoice,
        data_dir: Path,
        flags: tuple[str, ...],
        timeout: float,
    ) -> None:
        self.chromium = chromium
        self.data_dir = data_dir
        self.flags = flags
        self.timeout = timeout
        self.stage = Stage.PENDING
        self.diagnosis: Diagnosis | None = None
        self.took: float | None = None
        self.done = asyncio.Event()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.done.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self.timeout):
                await self._steps()
        except PreflightError as exc:
            self._fail(exc.diagnosis)
        except TimeoutError:
            self._fail(
                Diagnosis(
                    f"the browser did not start within {self.timeout:.0f} s",
                    "the machine may be too small or too busy; " + _generic_fix(self.chromium),
                )
            )
        else:
            self.stage = Stage.PASSED
            self.took = loop.time() - started
            log.info("Browser preflight passed: driver and browser start ({:.1f}s)", self.took)

    async def _steps(self) -> None:
        for found in (check_data_dir(self.data_dir), await probe_driver()):
            if found:
                raise PreflightError(found)
        executable = str(self.chromium.path) if self.chromium.path else None
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=executable,
                    args=list(self.flags),
                    headless=True,
                    timeout=self.timeout * 1000,
                )
                await browser.close()
        except Exception as exc:  # Playwright raises its own Error, and OSError from a spawn
            raise PreflightError(diagnose_launch(str(exc), self.chromium)) from None

    def _fail(self, diagnosis: Diagnosis) -> None:
        self.stage = Stage.FAILED
        self.diagnosis = diagnosis
        log.error("Browser preflight failed: {}. Fix: {}", diagnosis.cause, diagnosis.fix)

    def health_check(self) -> tuple[str, dict[str, Any]]:
        details: dict[str, Any] = {"componentType": "component", "observedValue": self.stage.value}
        if self.stage is Stage.PASSED:
            return "pass", details
        if self.stage is Stage.PENDING:
            # Not `pass` until a browser has started: a platform's deploy check must not
            # see a healthy process before we know bots can run in it.
            return "fail", {**details, "output": "starting: launching the browser once"}
        assert self.diagnosis is not None
        return "fail", {**details, "output": self.diagnosis.cause, "fix": self.diagnosis.fix}
