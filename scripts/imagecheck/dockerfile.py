"""The Dockerfile and the build context as Docker reads them: instructions (with line
continuations, comments, JSON or shell form, `ENV a=b c=d` or `ENV a b`, HEALTHCHECK options),
and `.dockerignore` (Go filepath.Match patterns, `**`, `!` exceptions, the last match wins).

Only what the check executes is understood; any other instruction is an error, so a Dockerfile
that grows a step the check cannot follow fails the check instead of being checked wrongly."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED = frozenset(
    {"FROM", "ENV", "RUN", "COPY", "WORKDIR", "USER", "EXPOSE", "HEALTHCHECK", "CMD", "ARG"}
)


class DockerfileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    argument: str  # the raw text after the keyword, continuations joined
    line: int

    def command(self) -> list[str]:
        """RUN/CMD: exec form as given; shell form through /bin/sh -c, as Docker does."""
        return command_of(self.argument)


@dataclass(frozen=True, slots=True)
class Healthcheck:
    options: dict[str, str]
    command: list[str]


@dataclass(slots=True)
class Dockerfile:
    base_image: str = ""
    instructions: list[Instruction] = field(default_factory=list)

    @property
    def steps(self) -> list[Instruction]:
        """What builds the filesystem, in order (FROM excluded)."""
        return [
            i for i in self.instructions if i.keyword in {"ENV", "RUN", "COPY", "WORKDIR", "USER"}
        ]

    def last(self, keyword: str) -> Instruction | None:
        found = [i for i in self.instructions if i.keyword == keyword]
        return found[-1] if found else None

    def cmd(self) -> list[str]:
        instruction = self.last("CMD")
        if instruction is None:
            raise DockerfileError("no CMD: the image would not know what to run")
        return instruction.command()

    def user(self) -> str:
        instruction = self.last("USER")
        return instruction.argument.strip() if instruction else "root"

    def healthcheck(self) -> Healthcheck | None:
        instruction = self.last("HEALTHCHECK")
        if instruction is None:
            return None
        return parse_healthcheck(instruction.argument)

    def env(self) -> dict[str, str]:
        """The ENV in effect at the end of the build (what the CMD sees)."""
        env: dict[str, str] = {}
        for instruction in self.instructions:
            if instruction.keyword == "ENV":
                env.update(parse_env(instruction.argument, env))
        return env


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with `\\` continuations joined; comments and blank lines dropped (a comment
    inside a continued instruction is dropped too, as Docker does)."""
    lines: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue
        if not stripped:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        lines.append((start, pending + stripped))
        pending = ""
    if pending:
        lines.append((start, pending.rstrip()))
    return lines


def parse(text: str) -> Dockerfile:
    dockerfile = Dockerfile()
    for number, line in logical_lines(text):
        keyword, _, argument = line.partition(" ")
        keyword = keyword.upper()
        if keyword not in SUPPORTED:
            raise DockerfileError(f"line {number}: {keyword} is not followed by the image check")
        if keyword == "FROM":
            if dockerfile.base_image:
                raise DockerfileError(f"line {number}: multi-stage builds are not followed")
            dockerfile.base_image = argument.split()[0]
        dockerfile.instructions.append(Instruction(keyword, argument.strip(), number))
    if not dockerfile.base_image:
        raise DockerfileError("no FROM line")
    return dockerfile


def command_of(argument: str) -> list[str]:
    argument = argument.strip()
    if argument.startswith("["):
        try:
            exec_form = json.loads(argument)
        except json.JSONDecodeError:
            exec_form = None
        if isinstance(exec_form, list) and all(isinstance(a, str) for a in exec_form):
            return exec_form
    return ["/bin/sh", "-c", argument]


def substitute(value: str, env: dict[str, str]) -> str:
    """`$VAR` and `${VAR}` from the ENV so far (Docker's own expansion in ENV/WORKDIR/COPY)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def parse_env(argument: str, env: dict[str, str]) -> dict[str, str]:
    words = shlex.split(argument)
    if words and "=" not in words[0]:
        # Legacy form: `ENV NAME the rest of the line`.
        return {words[0]: substitute(argument.strip()[len(words[0]) :].strip(), env)}
    found: dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep:
            raise DockerfileError(f"ENV {argument!r}: {word!r} is not NAME=value")
        found[name] = substitute(value, {**env, **found})
    return found


def parse_copy(argument: str, env: dict[str, str]) -> tuple[list[str], str]:
    words = [w for w in shlex.split(argument) if not w.startswith("--")]
    if any(w.startswith("--") for w in shlex.split(argument)):
        raise DockerfileError(f"COPY {argument!r}: options are not followed by the image check")
    if len(words) < 2:
        raise DockerfileError(f"COPY {argument!r}: needs a source and a destination")
    return [substitute(w, env) for w in words[:-1]], substitute(words[-1], env)


def parse_healthcheck(argument: str) -> Healthcheck:
    options: dict[str, str] = {}
    rest = argument.strip()
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.strip()
    keyword, _, command = rest.partition(" ")
    if keyword.upper() == "NONE":
        return Healthcheck(options, [])
    if keyword.upper() != "CMD":
        raise DockerfileError(f"HEALTHCHECK {argument!r}: expected CMD or NONE")
    return Healthcheck(options, command_of(command))


# -- .dockerignore -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    pattern: re.Pattern[str]
    exception: bool


def _translate(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match plus `**` (any number of folders), anchored at the context root."""
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.find("]", i)
            if end == -1:
                out += re.escape(char)
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
                i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(char)
        i += 1
    # A pattern naming a folder leaves out all that is in it.
    return re.compile(out + "(?:/.*)?")


def parse_dockerignore(text: str) -> list[IgnoreRule]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:].strip() if exception else line
        pattern = re.sub(r"/+", "/", pattern).strip("/")
        pattern = pattern.removeprefix("./")
        if pattern:
            rules.append(IgnoreRule(_translate(pattern), exception))
    return rules


def ignored(relative: str, rules: list[IgnoreRule]) -> bool:
    verdict = False
    for rule in rules:
        if rule.pattern.fullmatch(relative):
            verdict = not rule.exception
    return verdict


def context_files(context: Path, rules: list[IgnoreRule]) -> list[str]:
    """Every file and link the build context sends, relative to it, sorted."""
    sent = []
    for path in sorted(context.rglob("*")):
        relative = path.relative_to(context).as_posix()
        if ignored(relative, rules) or (path.is_dir() and not path.is_symlink()):
            continue
        sent.append(relative)
    return sent
