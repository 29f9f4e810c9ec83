"""Hostile slow clients over loopback: requests sent a byte at a time, and timed probes.

Used by tests/hardening/test_slow_clients.py and bench/bench_edge.py.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import httpx


def slow_header_request(path: str = "/v1/me") -> bytes:
    """A request whose headers never end (a padding header grows forever)."""
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ".encode() + b"a" * 100_000)


def trickled_body_request(path: str, token: str, content_type: str = "application/json",
                          length: int = 1_000_000) -> tuple[bytes, bytes]:
    """(headers sent at once, body trickled): the server can refuse it from the headers alone
    (401/403) but must not wait on the body with a thread."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n").encode()
    return head, b"[" + b" " * (length - 1)


@dataclass
class SlowClients:
    """Connections that each send their request one byte per `interval` seconds, from one
    background thread, until stopped or the server closes them."""

    port: int
    interval: float = 0.5
    socks: list[tuple[socket.socket, bytes]] = field(default_factory=list)
    closed_by_server: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def add(self, trickled: bytes, head: bytes = b"") -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if head:
            sock.sendall(head)
        sock.setblocking(False)
        self.socks.append((sock, trickled))

    def start(self) -> SlowClients:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        offset = 0
        while not self._stop.wait(self.interval) and self.socks:
            alive = []
            for sock, data in self.socks:
                try:
                    if _peer_closed(sock):
                        raise ConnectionResetError
                    if offset < len(data):
                        sock.send(data[offset:offset + 1])
                    alive.append((sock, data))
                except (BlockingIOError, InterruptedError):
                    alive.append((sock, data))
                except OSError:
                    self.closed_by_server += 1
                    sock.close()
            self.socks = alive
            offset += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for sock, _ in self.socks:
            sock.close()
        self.socks = []


def _peer_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False


def probe(url: str, key: str, count: int, timeout: float) -> list[float | None]:
    """`count` sequential authenticated GET /v1/me, each with its own connection; the latency in
    seconds of each, or None where it got no 200 within `timeout`."""
    out: list[float | None] = []
    for _ in range(count):
        start = time.perf_counter()
        try:
            resp = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {key}"},
                             timeout=timeout)
            out.append(time.perf_counter() - start if resp.status_code == 200 else None)
        except httpx.HTTPError:
            out.append(None)
    return out
