"""Raw HTTP/1.1 over a socket, for tests that need what a client library hides: one kept
connection, a half-sent request, a body too large to buffer.

A socket read returns whatever has arrived, so a response is read until it is whole: the
head up to its blank line, then exactly Content-Length bytes (or chunks to the last one).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class _Reader:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.conn.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-response")
        self.buffer += chunk

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def read_response(conn: socket.socket) -> RawResponse:
    """One whole response from `conn` (which keeps its timeout for every read)."""
    reader = _Reader(conn)
    head = reader.until(b"\r\n\r\n").decode("latin-1")
    status_line, *lines = head.split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int(reader.until(b"\r\n").split(b";")[0], 16)
            body += reader.exactly(size)
            reader.until(b"\r\n")
            if size == 0:
                return RawResponse(status, headers, body)
    return RawResponse(status, headers, reader.exactly(int(headers.get("content-length", "0"))))
