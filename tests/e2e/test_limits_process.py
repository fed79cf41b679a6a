"""What one anonymous visitor can make the real server hold: bodies, heads, connections.

Each test measures the server process itself (its RSS, its open connections), not only the
status it answers: a 413 that arrives after the whole body was buffered is no protection.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.httpwire import RawResponse, read_response
from tests.support import ServerProcess, wait_until

MIB = 1024 * 1024
UPLOAD = 64 * MIB
# The server's RSS may move a little from anything (a log line, a GC); 64 MiB buffered moves
# it by 64 MiB or more.
ALLOWED_GROWTH = 16 * MIB


ADMIN = "admin-token-for-limits-01"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # One server for these probes (a start takes seconds on a loaded machine); each probe
    # measures its own RSS before and after, and the server must still answer after it.
    env = {"ADMIN_TOKEN": ADMIN, "HEADER_READ_TIMEOUT": "1s"}
    with ServerProcess(tmp_path_factory.mktemp("limits") / "data", env) as running:
        running.wait_ready()
        yield running


def rss(server: ServerProcess) -> int:
    assert server.process is not None
    return int(psutil.Process(server.process.pid).memory_info().rss)


def post_large(
    server: ServerProcess, path: str, *, chunked: bool, content_type: str, extra: str = ""
) -> RawResponse | None:
    """POST 64 MiB, stopping as soon as the server answers; None if it only reset the
    connection (which is an answer too: it stopped reading)."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {UPLOAD}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: wakeful\r\nContent-Type: {content_type}\r\n"
        f"{extra}{framing}\r\n\r\n"
    ).encode()
    piece = b"a" * MIB
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(head)
        sent = 0
        try:
            while sent < UPLOAD:
                answered, _, _ = select.select([conn], [], [], 0)
                if answered:
                    break
                conn.sendall(frame)
                sent += len(piece)
            else:
                if chunked:
                    conn.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            return read_response(conn)
        except (ConnectionError, OSError):
            return None


FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("path", "content_type", "extra"),
    [
        ("/login", FORM, ""),
        ("/logout", FORM, ""),
        # The API reads a body only from a caller it knows (others get a 401 unread).
        ("/api/sessions", "application/json", f"Authorization: Bearer {ADMIN}\r\n"),
    ],
    ids=["login", "logout", "api"],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
def test_a_64_mib_post_is_refused_without_being_held(
    server: ServerProcess, path: str, content_type: str, extra: str, chunked: bool
):
    before = rss(server)
    response = post_large(server, path, chunked=chunked, content_type=content_type, extra=extra)
    after = rss(server)
    assert response is None or response.status == 413, response
    if response is not None:
        assert response.headers["content-type"] == "application/problem+json"
    assert after - before < ALLOWED_GROWTH, f"RSS grew by {(after - before) / MIB:.0f} MiB"
    assert server.get("/health").status_code == 200


def test_a_huge_request_head_is_refused_without_being_held(server: ServerProcess):
    before = rss(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: wakeful\r\nX-Big: ")
        refused = False
        try:
            for _ in range(100):  # up to 100 MiB of one header
                conn.sendall(b"b" * MIB)
        except (BrokenPipeError, ConnectionResetError):
            refused = True
        if not refused:
            conn.sendall(b"\r\n\r\n")
            try:
                refused = read_response(conn).status in (400, 431)
            except (ConnectionError, OSError):
                refused = True
    after = rss(server)
    assert refused, "a 100 MiB header was accepted"
    assert after - before < ALLOWED_GROWTH, f"RSS grew by {(after - before) / MIB:.0f} MiB"


def test_half_sent_requests_are_closed_after_the_header_read_timeout(server: ServerProcess):
    assert server.process is not None
    process = psutil.Process(server.process.pid)

    def held() -> int:
        return sum(
            1
            for c in process.net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port
        )

    conns = []
    try:
        for i in range(50):
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            # Half of them send part of a head, half nothing at all.
            if i % 2:
                conn.sendall(b"GET /health HTTP/1.1\r\nHost: wak")
            conns.append(conn)
        wait_until(lambda: held() >= 50, 10, "the server to accept 50 connections")
        started = time.monotonic()
        wait_until(lambda: held() == 0, 15, "the server to close the half-sent requests")
        assert time.monotonic() - started < 10
        for conn in conns:
            assert conn.recv(1024) == b""  # closed by the server, nothing answered
    finally:
        for conn in conns:
            conn.close()
    # A whole request in good time still works.
    assert server.get("/health").status_code == 200


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted-peer", "trusted-proxy"])
def test_forwarding_headers_count_only_from_forwarded_allow_ips(tmp_path: Path, trusted: bool):
    env = {
        "ADMIN_TOKEN": ADMIN,
        "ACCESS_LOG": "true",
        "AUTH_MAX_FAILURES": "3",
        # The test's client is 127.0.0.1: a proxy we trust, or a peer we do not.
        "FORWARDED_ALLOW_IPS": "127.0.0.1" if trusted else "10.9.9.9",
    }
    with ServerProcess(tmp_path / "data", env) as server:
        server.wait_ready()
        answers = []
        for i in range(4):
            forwarded = {"X-Forwarded-For": f"6.6.6.{i + 1}", "Authorization": "Bearer wk_x"}
            answers.append(server.get("/api/sessions", headers=forwarded).status_code)
        server.wait_for_log("/api/sessions", count=4)
        if trusted:
            # Each forwarded client is its own address: none has failed three times.
            assert answers == [401, 401, 401, 401]
            assert "6.6.6.1" in server.log
        else:
            # The header is anyone's to send: all four are 127.0.0.1, limited after three.
            assert answers == [401, 401, 401, 429]
            assert "6.6.6." not in server.log
