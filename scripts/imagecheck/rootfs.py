"""The image's filesystem without a Docker engine.

The FROM image (`python:<X.Y>-slim-<suite>`) is rebuilt the way its own Dockerfile builds it,
since no container registry is reachable from here: Debian `<suite>` minbase by debootstrap,
made slim as Debian's container images are (no docs, man pages or locales; apt cleaning after
itself), then CPython compiled from source into /usr/local with the runtime libraries its
binaries link against. No registry we reach ships a relocatable CPython: the npm and PyPI
"portable Python" packages download their builds from GitHub at install time. So the source
comes from Debian's archive (`apt-get source`, whose `.orig` tarball is python.org's release
unchanged), and it is built without PGO/LTO (they only change speed, and would cost CI 20
minutes). Both the Debian base and the built CPython are cached between runs.

Everything runs in a chroot from a private mount namespace (see `__main__`), so the mounts
made here (proc, sysfs, a 64 MB /dev/shm as Docker gives) vanish with the process."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MIRROR = os.environ.get("IMAGE_CHECK_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get(
    "IMAGE_CHECK_SECURITY_MIRROR", "http://deb.debian.org/debian-security"
)
# What Debian's container images leave out (debuerreotype's slimming): the image's size is
# only honest with the same exclusions.
DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""
_CLEAN = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"
APT_CLEAN = f"""\
DPkg::Post-Invoke {{ "{_CLEAN}"; }};
APT::Update::Post-Invoke {{ "{_CLEAN}"; }};
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Install-Recommends "false";
Acquire::Languages "none";
"""
# The official image's build dependencies (tk and bluetooth left out: the slim image cannot
# use them either, it purges them).
CPYTHON_BUILD_DEPS = (
    "ca-certificates dpkg-dev gcc make libc6-dev libbz2-dev libdb-dev libexpat1-dev "
    "libffi-dev libgdbm-dev liblzma-dev libncursesw5-dev libreadline-dev libsqlite3-dev "
    "libssl-dev uuid-dev xz-utils zlib1g-dev"
)
# The runtime packages are found as the official image finds them: the Debian packages
# owning every library the installed binaries resolve.
CPYTHON_BUILD = r"""
set -eux
cd /usr/src
apt-get source --download-only python{minor} || test -e python{minor}_*.orig.tar.*
tar -xf python{minor}_*.orig.tar.*
cd Python-*
./configure --build="$(dpkg-architecture --query DEB_BUILD_GNU_TYPE)" \
    --enable-loadable-sqlite-extensions --enable-option-checking=fatal --enable-shared \
    --with-system-expat --with-ensurepip=install
make -j "$(nproc)" LDFLAGS="-Wl,--strip-all -Wl,-rpath='\$\$ORIGIN/../lib'"
make install DESTDIR=/opt/python
cd /opt/python/usr/local/bin
for name in idle3 pip3 pydoc3 python3 python3-config; do ln -sf "$name" "${{name%3}}"; done
find /opt/python/usr/local -depth \( -type d -a \( -name test -o -name tests \
    -o -name idle_test \) \) -exec rm -rf '{{}}' +
find /opt/python/usr/local -type f -executable -not -name '*tkinter*' \
    -exec ldd '{{}}' ';' 2>/dev/null \
    | awk '/=>/ {{ print $(NF-1) }}' | grep -v '^/opt/python' | sed -E 's,^/(usr/)?,*,' | sort -u \
    | xargs -r dpkg-query --search | cut -d: -f1 | sort -u > /opt/python/runtime-packages
"""


# This machine reaches PyPI through a proxy with its own CA. Build steps get the machine's
# trust store at this path (and the variables pip and Python read), as a build behind that
# proxy would; it is removed before the image is measured and run.
HOST_CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
CA_IN_CHROOT = "/run/image-check-ca.crt"


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class BaseImage:
    python: str  # "3.11"
    suite: str  # "bookworm"

    @classmethod
    def from_reference(cls, reference: str) -> BaseImage:
        found = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim-(\w+)", reference)
        if not found:
            raise BuildError(
                f"FROM {reference}: the image check rebuilds python:<X.Y>-slim-<debian suite> "
                "only (no container registry is reachable)"
            )
        return cls(found.group(1), found.group(2))

    # What the official image's own ENV gives every step and the CMD.
    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
        }


@dataclass(slots=True)
class User:
    uid: int
    gid: int
    home: str


def resolve_user(rootfs: Path, spec: str) -> User:
    """USER name[:group] or uid[:gid], read from the image's own /etc/passwd."""
    name, _, group = spec.partition(":")
    passwd = [line.split(":") for line in (rootfs / "etc/passwd").read_text().splitlines()]
    groups = [line.split(":") for line in (rootfs / "etc/group").read_text().splitlines()]
    entry = next((e for e in passwd if name in (e[0], e[2])), None)
    if entry is None:
        if not name.isdigit():
            raise BuildError(f"USER {spec}: no such user in the image's /etc/passwd")
        entry = [name, "x", name, group or name, "", "/", ""]
    gid = int(entry[3])
    if group:
        found = next((g for g in groups if group in (g[0], g[2])), None)
        gid = int(found[2]) if found else int(group)
    return User(int(entry[2]), gid, entry[5] or "/")


class Chroot:
    """Runs commands inside a root filesystem as Docker would: the given env only, a cwd,
    a user, and the kernel filesystems mounted."""

    def __init__(self, rootfs: Path) -> None:
        self.rootfs = rootfs

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Chroot]:
        points = [
            (["-t", "proc", "proc"], "proc"),
            (["-t", "sysfs", "-o", "ro", "sysfs"], "sys"),
            (["-t", "tmpfs", "-o", "size=64m,mode=1777", "shm"], "dev/shm"),
        ]
        done: list[Path] = []
        try:
            for args, where in points:
                target = self.rootfs / where
                target.mkdir(parents=True, exist_ok=True)
                subprocess.run(["mount", *args, str(target)], check=True)
                done.append(target)
            for name in ("resolv.conf", "hosts"):
                target = self.rootfs / "etc" / name
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
                shutil.copyfile(Path("/etc") / name, target)
            if HOST_CA_BUNDLE.exists():
                (self.rootfs / "run").mkdir(exist_ok=True)
                shutil.copyfile(HOST_CA_BUNDLE, self.rootfs / CA_IN_CHROOT.lstrip("/"))
            yield self
        finally:
            self.forget_network_ca()
            for target in reversed(done):
                subprocess.run(["umount", "-l", str(target)], check=False)

    def network_env(self) -> dict[str, str]:
        """For build steps that download: the machine's CAs (see HOST_CA_BUNDLE)."""
        if not (self.rootfs / CA_IN_CHROOT.lstrip("/")).exists():
            return {}
        return {name: CA_IN_CHROOT for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}

    def forget_network_ca(self) -> None:
        (self.rootfs / CA_IN_CHROOT.lstrip("/")).unlink(missing_ok=True)

    def popen(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        *,
        cwd: str = "/",
        user: User | None = None,
        stdout: IO[bytes] | int | None = None,
    ) -> subprocess.Popen[bytes]:
        rootfs = str(self.rootfs)

        def enter() -> None:
            os.chroot(rootfs)
            os.chdir(cwd)
            if user is not None and user.uid != 0:
                os.setgroups([])
                os.setgid(user.gid)
                os.setuid(user.uid)
            os.setsid()

        return subprocess.Popen(
            list(argv),
            env=env,
            preexec_fn=enter,  # chroot and setuid must happen in the child
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            stdin=subprocess.DEVNULL,
        )

    def run(
        self, argv: Sequence[str], env: dict[str, str], *, cwd: str = "/", user: User | None = None
    ) -> None:
        process = self.popen(argv, env, cwd=cwd, user=user)
        if process.wait() != 0:
            raise BuildError(f"{' '.join(argv)[:200]} exited {process.returncode}")

    def shell(self, script: str, env: dict[str, str] | None = None) -> None:
        base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        self.run(["/bin/sh", "-c", script], {**base, **(env or {})})


def say(message: str) -> None:
    print(f"image-check: {message}", file=sys.stderr, flush=True)


def copy_tree(source: Path, target: Path) -> None:
    if target.exists():
        remove_tree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)


def remove_tree(path: Path) -> None:
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def _cached(path: Path, build: object, what: str) -> Path:
    """`build(tmp)` fills a temporary folder renamed to `path` once complete, so an
    interrupted build is never taken for a cached one."""
    if path.exists():
        say(f"{what}: cached at {path}")
        return path
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        remove_tree(tmp)
    started = time.monotonic()
    say(f"{what}: building (cold cache)")
    build(tmp)  # type: ignore[operator]
    tmp.rename(path)
    say(f"{what}: built in {time.monotonic() - started:.0f} s")
    return path


def debian_base(cache: Path, suite: str) -> Path:
    def build(tmp: Path) -> None:
        subprocess.run(
            ["debootstrap", "--variant=minbase", suite, str(tmp), MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (tmp / "etc/dpkg/dpkg.cfg.d/docker").write_text(DPKG_EXCLUDES)
        (tmp / "etc/apt/apt.conf.d/docker-clean").write_text(APT_CLEAN)
        (tmp / "etc/apt/sources.list").unlink(missing_ok=True)
        (tmp / "etc/apt/sources.list.d/debian.sources").write_text(
            f"Types: deb\nURIs: {MIRROR}\nSuites: {suite} {suite}-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            f"Types: deb\nURIs: {SECURITY_MIRROR}\nSuites: {suite}-security\n"
            "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
        with Chroot(tmp).mounted() as chroot:
            # What debuerreotype removes from an installed minbase, so later layers match.
            chroot.shell(
                "find /usr/share/doc -mindepth 2 -not -name copyright -not -type d -delete; "
                "find /usr/share/doc -mindepth 1 -type d -empty -delete; "
                "rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/?* "
                "/var/cache/apt/* /var/lib/apt/lists/*"
            )

    return _cached(cache / f"debian-{suite}-minbase", build, f"Debian {suite} minbase")


def cpython(cache: Path, base: BaseImage) -> Path:
    """/opt/python from a builder chroot: usr/local/... plus runtime-packages."""
    debian = debian_base(cache, base.suite)

    def build(tmp: Path) -> None:
        builder = cache / "cpython-builder"
        copy_tree(debian, builder)
        sources = builder / "etc/apt/sources.list.d/debian.sources"
        # Sources from the main archive only: the security mirror serves binaries, and its
        # source files are not always there.
        text = sources.read_text()
        sources.write_text(text.replace("Types: deb\n", "Types: deb deb-src\n", 1))
        try:
            with Chroot(builder).mounted() as chroot:
                chroot.shell(
                    f"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install "
                    f"-y -qq {CPYTHON_BUILD_DEPS} >/dev/null"
                )
                # Quiet unless it fails: then the end of the build's log.
                script = CPYTHON_BUILD.format(minor=base.python)
                chroot.shell(
                    f"( {script} ) > /usr/src/build.log 2>&1 "
                    "|| { tail -n 60 /usr/src/build.log; exit 1; }"
                )
            shutil.move(builder / "opt/python", tmp)
        finally:
            remove_tree(builder)

    return _cached(cache / f"cpython-{base.python}-{base.suite}", build, f"CPython {base.python}")


def from_image(cache: Path, base: BaseImage) -> Path:
    """The FROM image: slim Debian + the official image's packages + CPython in /usr/local."""
    debian = debian_base(cache, base.suite)
    python = cpython(cache, base)

    def build(tmp: Path) -> None:
        copy_tree(debian, tmp)
        subprocess.run(["cp", "-a", f"{python}/usr/local/.", str(tmp / "usr/local")], check=True)
        runtime = " ".join((python / "runtime-packages").read_text().split())
        with Chroot(tmp).mounted() as chroot:
            chroot.shell(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                f"ca-certificates netbase tzdata {runtime} >/dev/null "
                "&& rm -rf /var/lib/apt/lists/* && ldconfig"
            )
            chroot.shell(
                "python3 --version && python3 -m pip install -q --no-cache-dir "
                "--disable-pip-version-check --upgrade pip setuptools wheel",
                base.env() | chroot.network_env(),
            )

    return _cached(cache / f"python-{base.python}-slim-{base.suite}", build, "FROM image")
