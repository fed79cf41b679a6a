"""What went wrong, in the words a person fixing the Dockerfile needs: the library a binary
cannot load and the Debian package that probably ships it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.engines.whatsapp.preflight import library_package

LOADER_ERROR = re.compile(r"error while loading shared libraries: ([^\s:]+)")
LDD_MISSING = re.compile(r"^\s*(\S+) => not found", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class MissingLibrary:
    soname: str
    needed_by: str

    def package(self) -> str:
        return debian_package_for(self.soname)

    def advice(self) -> str:
        return (
            f"{self.needed_by} cannot load {self.soname}: add the Debian package that ships it "
            f"(probably `{self.package()}`) to the Dockerfile's apt-get install"
        )


def debian_package_for(soname: str) -> str:
    return library_package(soname)


def missing_from_ldd(binary: str, ldd_output: str) -> list[MissingLibrary]:
    return [MissingLibrary(name, binary) for name in LDD_MISSING.findall(ldd_output)]


def missing_from_log(log: str) -> list[MissingLibrary]:
    found = []
    for line in log.splitlines():
        match = LOADER_ERROR.search(line)
        if match:
            binary = (
                line[: match.start()].rstrip(": ").split()[-1]
                if line[: match.start()].strip()
                else "a binary"
            )
            library = MissingLibrary(match.group(1), binary)
            if library not in found:
                found.append(library)
    return found
