"""What a bot's browser says it is: a desktop Chromium of its real version, never
"HeadlessChrome".

WhatsApp Web (≥ ~2.3000.1044) shows its unsupported-browser page to a HeadlessChrome user
agent, and a user agent alone is not enough: `navigator.userAgentData` and the `Sec-CH-UA`
headers carry the brands, which still list HeadlessChrome in headless mode. The user agent
and its client hints are built here from the real browser's version and set through CDP
(`Emulation.setUserAgentOverride` with `userAgentMetadata`)."""

from __future__ import annotations

import contextlib
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)\.(\d+)")
CHROME_RE = re.compile(r"(?:HeadlessChrome|Chrome)/(\d+)[\d.]*")
# Chromium's own "GREASE" brand, which real browsers list beside their names.
GREASE_BRAND = "Not)A;Brand"
NAVIGATOR_PLATFORM = {"Windows": "Win32", "macOS": "MacIntel", "Linux": "Linux x86_64"}


@dataclass(frozen=True, slots=True)
class BrowserIdentity:
    user_agent: str
    metadata: dict[str, Any]  # CDP Emulation.UserAgentMetadata

    def override(self) -> dict[str, Any]:
        """The parameters of `Emulation.setUserAgentOverride`."""
        return {
            "userAgent": self.user_agent,
            "platform": NAVIGATOR_PLATFORM.get(self.metadata["platform"], ""),
            "userAgentMetadata": self.metadata,
        }


def browser_version(executable: Path | None) -> str | None:
    """The full version of a Chromium binary (`chromium --version`), or None."""
    if executable is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(  # noqa: S603 - our own configured browser binary
            [str(executable), "--version"], capture_output=True, text=True, timeout=20, check=False
        )
        found = VERSION_RE.search(done.stdout)
        if found:
            return found.group(0)
    return None


def _os_of(user_agent: str) -> tuple[str, str]:
    """The client-hint platform and its version for a user agent."""
    if "Windows" in user_agent:
        return "Windows", "10.0.0"
    if "Mac OS X" in user_agent:
        return "macOS", "14.0.0"
    return "Linux", platform.release().split("-")[0] if platform.system() == "Linux" else ""


def build_identity(version: str | None, configured: str, *, default: str) -> BrowserIdentity:
    """The user agent and client hints for a browser of `version`.

    A user agent set on purpose (BOT_USER_AGENT differs from the default) is kept, with
    "HeadlessChrome" made "Chrome"; otherwise a Linux desktop Chromium of the real version,
    which is what the machine is. The client hints always agree with the user agent."""
    if configured != default or version is None:
        user_agent = configured.replace("HeadlessChrome", "Chrome")
        found = CHROME_RE.search(user_agent)
        major = found.group(1) if found else (version or "0").split(".")[0]
        full = version if version and version.split(".")[0] == major else f"{major}.0.0.0"
    else:
        major = version.split(".")[0]
        full = version
        user_agent = (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            f"Chrome/{major}.0.0.0 Safari/537.36"
        )
    os_name, os_version = _os_of(user_agent)
    metadata: dict[str, Any] = {
        "brands": [
            {"brand": "Chromium", "version": major},
            {"brand": GREASE_BRAND, "version": "24"},
        ],
        "fullVersionList": [
            {"brand": "Chromium", "version": full},
            {"brand": GREASE_BRAND, "version": "24.0.0.0"},
        ],
        "fullVersion": full,
        "platform": os_name,
        "platformVersion": os_version,
        "architecture": "x86",
        "bitness": "64",
        "model": "",
        "mobile": False,
        "wow64": False,
    }
    return BrowserIdentity(user_agent, metadata)
