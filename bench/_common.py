"""What the benchmarks in bench/ share: free loopback ports, a server in a child process
(started, waited for, stopped), the environment it gets, the machine's description and the
JSON the figures are written as.

The scripts put the repository root on `sys.path` before importing this module (it imports
the app's `config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from config import Settings

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"

# Every variable wakeful reads (tests/support.py has the same set): whatever the caller's
# shell holds must not change what the server under test does, nor let it reach the outside
# world or a real database, so none of them is inherited; each benchmark sets what it needs.
SETTINGS_ENV = frozenset(name.upper() for name in Settings.model_fields)


def wakeful_env(port: int, data_dir: Path, **settings: str) -> dict[str, str]:
    """The caller's environment without any of wakeful's variables, then loopback only on
    `port`, DATA_DIR, no keep-alive pings, WARNING logs without access lines, and `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    env.update(
        HOST=LOOPBACK,
        PORT=str(port),
        DATA_DIR=str(data_dir),
        KEEP_ALIVE_ENABLED="false",
        LOG_LEVEL="WARNING",
        ACCESS_LOG="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    return env


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open at once, then released)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        return ports


@dataclass
class Server:
    """A server in a child process (its own session), its output going to `log_path`."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    log_file: IO[bytes]

    def log_text(self, limit: int = 4000) -> str:
        self.log_file.flush()
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def start_server(
    name: str, argv: list[str], cwd: Path, env: dict[str, str], port: int, log_path: Path
) -> Server:
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Server(name, proc, port, log_path, log_file)


def start_wakeful(name: str, port: int, data_dir: Path, log_path: Path, **settings: str) -> Server:
    """`python server.py` with `wakeful_env`. Its cwd is DATA_DIR, so a developer's `.env` in
    the repository is not read either."""
    return start_wakeful_in(REPO_ROOT, name, port, data_dir, log_path, settings)


def start_wakeful_in(
    root: Path, name: str, port: int, data_dir: Path, log_path: Path, settings: dict[str, str]
) -> Server:
    """`start_wakeful` from another checkout (`baseline_checkout`): an earlier commit run side
    by side with this one."""
    return start_server(
        name,
        [sys.executable, str(root / "server.py")],
        data_dir,
        wakeful_env(port, data_dir, **settings),
        port,
        log_path,
    )


# The commit before issue 19's work (the lean overhead, /health front door, group commit):
# `make bench` measures it side by side with the working tree.
BASELINE_REF = "b9a1158"


@contextlib.contextmanager
def baseline_checkout(ref: str | None) -> Iterator[Path | None]:
    """`ref`'s files in a temporary directory (git archive: the repository is not touched),
    or None when `ref` is None or git cannot give it. Run with this virtualenv: its server.py
    imports its own modules first (the script's directory leads sys.path)."""
    if not ref:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="wakeful-baseline-") as tmp:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", ref],
            cwd=REPO_ROOT,
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            print(f"note: no baseline: git archive {ref} failed", file=sys.stderr)
            yield None
            return
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        yield Path(tmp)


def stop_server(server: Server, timeout: float) -> tuple[float, int | None]:
    """SIGTERM, `timeout` s to exit, then SIGKILL. Returns (seconds to exit, exit status)."""
    proc = server.proc
    start = time.perf_counter()
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
    finally:
        server.log_file.close()
    return time.perf_counter() - start, proc.returncode


def wait_ready(server: Server, path: str, timeout: float, probe_timeout: float = 1.0) -> float:
    """Seconds until `GET path` answers 200; RuntimeError if the process dies first or
    `timeout` passes. Each probe may take `probe_timeout` seconds."""
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        code = server.proc.poll()
        if code is not None:
            raise RuntimeError(
                f"{server.name} exited with status {code} before answering {path}.\n"
                f"--- {server.name} output ---\n{server.log_text()}"
            )
        conn = http.client.HTTPConnection(LOOPBACK, server.port, timeout=probe_timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                return time.perf_counter() - start
            last_error = f"HTTP {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.name} did not answer GET {path} with 200 within {timeout:.0f}s "
        f"(last: {last_error}).\n--- {server.name} output ---\n{server.log_text()}"
    )


def run_async(coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """On uvloop when available (as uvicorn's loop="auto" runs the app), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro_factory())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_factory())


def machine_info(modules: Iterable[str], **extra: Any) -> dict[str, Any]:
    """CPUs, Python and platform, then `extra`, then each module's version (None: absent)."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        **extra,
    }
    for module in modules:
        try:
            info[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            info[module] = None
    return info


def finite(value: Any) -> Any:
    """A copy of a JSON-able value with NaN/inf floats (no samples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write the figures (strict JSON: no NaN) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(document), indent=2, allow_nan=False) + "\n")
    print(f"figures written to {path}")


def kill_strays(root: Path) -> int:
    """Kill every process whose command line names `root` (a browser left running)."""
    import psutil

    marker = str(root)
    strays = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == os.getpid():
            continue
        if any(marker in arg for arg in proc.info.get("cmdline") or []):
            strays.append(proc)
    for proc in strays:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(strays, timeout=5)
    return len(strays)
