"""`python -m scripts.imagecheck`: build the image's filesystem from the Dockerfile and run
wakeful in it; prints the figures, exits 1 naming what failed (a missing library by name).

Needs root (debootstrap, chroot, mounts); re-executes itself in a private mount namespace so
that nothing it mounts outlives it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from scripts.imagecheck import build, diagnose, dockerfile, pagecache
from scripts.imagecheck.demo import DemoRun, Memory
from scripts.imagecheck.rootfs import (
    BaseImage,
    BuildError,
    Chroot,
    copy_tree,
    from_image,
    resolve_user,
    say,
)

# The server and the Playwright driver together, with one bot linked (issue 19: from ~224 MB).
OVERHEAD_GOAL_MB = 150
IN_NAMESPACE = "IMAGE_CHECK_PRIVATE_MOUNTS"
DEFAULT_CACHE = Path(
    os.environ.get("IMAGE_CHECK_CACHE") or Path.home() / ".cache" / "wakeful-image-check"
)
# The binaries a bot needs, as the engine finds them in the image.
BOT_BINARIES = (
    "usr/lib/chromium/chromium-headless-shell",
    "usr/lib/chromium/chromium",
)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="image-check", description=__doc__)
    parser.add_argument("--dockerfile", type=Path, default=Path("Dockerfile"))
    parser.add_argument("--context", type=Path, default=Path("."))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--shutdown-bound",
        type=float,
        default=15.0,
        help="seconds SIGTERM may take (SHUTDOWN_TIMEOUT 10 s + margin)",
    )
    parser.add_argument(
        "--env",
        type=env_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="more environment for the CMD, as a platform's variables (repeatable); e.g. "
        "SIMULATOR_WEIGHT=real for a demo bot with WhatsApp Web's weight",
    )
    return parser.parse_args(argv)


# The check sets these itself: its port, its token, demo mode.
RESERVED_ENV = frozenset({"PORT", "ADMIN_TOKEN", "WHATSAPP_SIMULATOR"})


def env_setting(text: str) -> tuple[str, str]:
    """NAME=VALUE, as `docker run -e` takes it."""
    name, sep, value = text.partition("=")
    if not sep or not name.replace("_", "a").isalnum() or name[0].isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME=VALUE, NAME letters, digits and _ (not first a digit)"
        )
    if name in RESERVED_ENV:
        raise argparse.ArgumentTypeError(f"{name}: set by the check itself")
    return name, value


def linked_libraries(chroot: Chroot, env: dict[str, str]) -> list[diagnose.MissingLibrary]:
    """ldd on the Playwright driver's Node and the browser: a library missing from the image
    is named before anything runs."""
    rootfs = chroot.rootfs
    binaries = [
        p for p in rootfs.glob("usr/local/lib/python3*/site-packages/playwright/driver/node")
    ]
    binaries += [rootfs / b for b in BOT_BINARIES if (rootfs / b).exists()]
    missing: list[diagnose.MissingLibrary] = []
    for binary in binaries:
        inside = "/" + str(binary.relative_to(rootfs))
        process = chroot.popen(["ldd", inside], env, stdout=subprocess.PIPE)
        output = process.communicate()[0].decode(errors="replace")
        missing += diagnose.missing_from_ldd(inside, output)
    return missing


def size_mb(rootfs: Path) -> float:
    out = subprocess.run(["du", "-sxb", str(rootfs)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 2**20


def check(args: argparse.Namespace) -> int:
    started = time.monotonic()
    context = args.context.resolve()
    parsed = dockerfile.parse(args.dockerfile.read_text())
    base = BaseImage.from_reference(parsed.base_image)
    args.cache.mkdir(parents=True, exist_ok=True)
    image = from_image(args.cache, base)
    rootfs = args.cache / "last-run" / "rootfs"
    copy_tree(image, rootfs)
    with Chroot(rootfs).mounted() as chroot:
        state = build.apply(parsed, context, chroot, base.env())
        chroot.forget_network_ca()
        built_in = time.monotonic() - started
        size = size_mb(rootfs)
        say(f"image built in {built_in:.0f} s: {size:.0f} MB")
        missing = linked_libraries(chroot, state.env)
        for library in missing:
            say(f"FAIL: {library.advice()}")
        user = resolve_user(rootfs, parsed.user())
        run = DemoRun(
            chroot,
            parsed.env() | base.env() | {k: v for k, v in state.env.items()} | dict(args.env),
            state.workdir,
            user,
            parsed.cmd(),
            args.cache / "last-run" / "server.log",
            args.shutdown_bound,
        )
        dropped = pagecache.drop_file_cache(rootfs)
        say(f"page cache of the image's {dropped} files dropped (read from disk, as deployed)")
        try:
            run.start()
            run.wait_healthy()
            healthcheck = parsed.healthcheck()
            if healthcheck:
                timeout = float(healthcheck.options.get("timeout", "30s").rstrip("s"))
                run.run_healthcheck(healthcheck.command, timeout)
            run.link_and_send()
            run.measure()
            run.stop()
        except BuildError as failure:
            run.kill()
            log = run.log()
            print(log[-4000:], file=sys.stderr)
            for library in diagnose.missing_from_log(log):
                if library.soname not in {m.soname for m in missing}:
                    missing.append(library)
            for library in missing:
                say(f"FAIL: {library.advice()}")
            say(f"FAIL: {failure}")
            return 1
        if missing:
            return 1
    figures = run.figures
    overhead = figures.server + figures.driver
    page = "weighty" if dict(args.env).get("SIMULATOR_WEIGHT") == "real" else "light simulator"
    total = overhead + figures.bot
    verdict = (
        "met"
        if overhead.pss_mb <= OVERHEAD_GOAL_MB
        else f"missed by {overhead.pss_mb - OVERHEAD_GOAL_MB:.0f} MB"
    )
    print(
        "image-check: PASS\n"
        f"  image size            {size:8.0f} MB (uncompressed filesystem)\n"
        f"  /health 200 after     {figures.health_after_s:8.1f} s\n"
        f"  bot linked in         {figures.linked_after_s:8.1f} s\n"
        f"  SIGTERM to exit 0     {figures.stopped_in_s:8.1f} s\n"
        f"  server (python)       {_memory(figures.server)}\n"
        f"  Playwright driver     {_memory(figures.driver)}\n"
        f"  server + driver       {_memory(overhead)}\n"
        f"                        (goal ≤ {OVERHEAD_GOAL_MB} MB PSS: {verdict})\n"
        f"  one demo bot          {_memory(figures.bot)} (browser tree, {page} page)\n"
        f"  total                 {_memory(total)}\n"
        f"  whole check           {time.monotonic() - started:8.0f} s",
        flush=True,
    )
    return 0


def _memory(memory: Memory) -> str:
    """PSS, split into what the processes allocated and the mapped files' pages (code,
    libraries: clean pages the kernel can drop and read again under memory pressure)."""
    return (
        f"{memory.pss_mb:8.0f} MB PSS ({memory.anon_mb:.0f} allocated + {memory.file_mb:.0f} "
        "mapped files)"
    )


def main() -> int:
    if os.geteuid() != 0:
        say("needs root (debootstrap, chroot and mounts); CI runs as root")
        return 2
    if os.environ.get(IN_NAMESPACE) != "1":
        env = {**os.environ, IN_NAMESPACE: "1"}
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "scripts.imagecheck",
            *sys.argv[1:],
        ]
        return subprocess.run(argv, env=env, check=False).returncode
    try:
        return check(arguments())
    except (BuildError, dockerfile.DockerfileError) as failure:
        say(f"FAIL: {failure}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
