"""The Dockerfile's steps applied to a copy of the FROM image, in order: ENV in effect for what
follows, WORKDIR created, COPY from the build context as `.dockerignore` leaves it, RUN through
the chroot as the USER of the moment."""

from __future__ import annotations

import fnmatch
import posixpath
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts.imagecheck.dockerfile import (
    Dockerfile,
    DockerfileError,
    context_files,
    parse_copy,
    parse_dockerignore,
    parse_env,
    substitute,
)
from scripts.imagecheck.rootfs import BuildError, Chroot, resolve_user, say


@dataclass(slots=True)
class BuildState:
    env: dict[str, str]
    workdir: str = "/"
    user: str = "root"
    timings: list[tuple[str, float]] = field(default_factory=list)


def copy_sources(
    context: Path, sent: list[str], sources: list[str], dest: str, rootfs: Path
) -> int:
    """COPY: a folder's contents (or `.`) keep their paths below it; files land in `dest`
    (a folder when it ends with `/` or there are several sources). Returns files copied."""
    copied = 0
    into_folder = dest.endswith("/") or len(sources) > 1
    for source in sources:
        source = posixpath.normpath(source)
        if source == ".":
            matches = sent
            strip = ""
        elif any(ch in source for ch in "*?["):
            matches = [p for p in sent if fnmatch.fnmatchcase(p, source)]
            strip = None
        elif (context / source).is_dir():
            matches = [p for p in sent if p.startswith(source + "/")]
            strip = source + "/"
        else:
            matches = [source] if source in sent else []
            strip = None
        if not matches:
            raise BuildError(f"COPY {source}: not in the build context (or .dockerignore'd)")
        for relative in matches:
            if strip is None:
                target = (
                    posixpath.join(dest, posixpath.basename(relative))
                    if into_folder or (len(matches) > 1)
                    else dest
                )
            else:
                target = posixpath.join(dest, relative.removeprefix(strip))
            path = rootfs / target.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.is_file():
                path.unlink()
            shutil.copy2(context / relative, path, follow_symlinks=False)
            copied += 1
    return copied


def apply(
    dockerfile: Dockerfile, context: Path, chroot: Chroot, base_env: dict[str, str]
) -> BuildState:
    rootfs = chroot.rootfs
    rules = parse_dockerignore(
        (context / ".dockerignore").read_text() if (context / ".dockerignore").exists() else ""
    )
    sent = context_files(context, rules)
    state = BuildState(env=dict(base_env))
    for step in dockerfile.steps:
        started = time.monotonic()
        label = f"{step.keyword} {step.argument}"[:90]
        say(f"line {step.line}: {label}")
        if step.keyword == "ENV":
            state.env.update(parse_env(step.argument, state.env))
        elif step.keyword == "WORKDIR":
            state.workdir = posixpath.join(state.workdir, substitute(step.argument, state.env))
            (rootfs / state.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif step.keyword == "USER":
            state.user = substitute(step.argument, state.env)
            resolve_user(rootfs, state.user)  # a USER that does not exist fails here
        elif step.keyword == "COPY":
            sources, dest = parse_copy(step.argument, state.env)
            if not dest.startswith("/"):
                dest = posixpath.join(state.workdir, dest) + ("/" if dest.endswith("/") else "")
            copy_sources(context, sent, sources, dest, rootfs)
        elif step.keyword == "RUN":
            user = resolve_user(rootfs, state.user)
            env = {"HOME": user.home if user.uid else "/root", "HOSTNAME": "image-check"}
            env.update(chroot.network_env())
            env.update(state.env)
            try:
                chroot.run(step.command(), env, cwd=state.workdir, user=user)
            except BuildError as exc:
                raise BuildError(f"Dockerfile line {step.line}: RUN failed: {exc}") from None
        else:  # pragma: no cover - steps() filters
            raise DockerfileError(step.keyword)
        state.timings.append((label, time.monotonic() - started))
    return state
