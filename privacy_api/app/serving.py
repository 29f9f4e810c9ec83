"""A gunicorn worker that serves with waitress: slow and idle clients cost a socket, not a thread.

Why this shape. gunicorn's gthread worker hands a connection to a thread as soon as it is
readable and that thread then blocks reading headers and body, so 16 connections trickling a
byte at a time pinned all 2 x 4 threads (issue 12). waitress reads every request - headers
*and* body, spooling bodies over 512 KiB to a temporary file - on one non-blocking I/O thread,
and hands it to a worker thread only once it is complete; responses are buffered the same way.
A slow client therefore holds a socket and a few kilobytes, never a thread. gevent would also
multiplex slow clients, but our requests are CPU-bound (NumPy, Fernet, TenSEAL): one cold query
would stall every connection of its worker, and the decryption thread pool would stop being
parallel under monkey-patching. gunicorn stays the process manager (workers, restarts,
heartbeat, graceful shutdown, the Prometheus multi-process directory); this class only swaps
the per-worker server loop.

On top of waitress's inactivity timeout (`channel_timeout`) the server closes a connection
whose request is still incomplete after `PRIVACY_API_HEADER_TIMEOUT` seconds unless its body
arrives at `PRIVACY_API_MIN_BODY_RATE` bytes/s or more: a request trickled a byte every few
seconds never becomes "inactive", so an idle timeout alone would let it live forever.
"""

from __future__ import annotations

import os
import time
from typing import Any

from gunicorn.workers.base import Worker
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


class _TimedRequestParser(HTTPRequestParser):  # type: ignore[misc]
    """Records when the request's first byte arrived and how many bytes it has had."""

    def __init__(self, adj: Adjustments) -> None:
        super().__init__(adj)
        self.started = time.time()
        self.bytes_in = 0

    def received(self, data: bytes) -> int:
        consumed = int(super().received(data))
        self.bytes_in += consumed
        return consumed


class _TimedChannel(HTTPChannel):  # type: ignore[misc]
    parser_class = _TimedRequestParser


class DeadlineServer(TcpWSGIServer):  # type: ignore[misc]
    """waitress's TCP server plus a deadline on reading each request."""

    channel_class = _TimedChannel
    header_timeout = 10.0
    min_body_rate = 16384.0

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        for channel in list(self.active_channels.values()):
            request = getattr(channel, "request", None)
            if not isinstance(request, _TimedRequestParser):
                continue
            elapsed = now - request.started
            if elapsed <= self.header_timeout:
                continue
            # Past the header deadline only a body arriving at the minimum rate may go on.
            too_slow = (not request.headers_finished
                        or request.bytes_in < self.min_body_rate * (elapsed - self.header_timeout))
            if too_slow:
                channel.will_close = True


class WaitressWorker(Worker):  # type: ignore[misc]
    """gunicorn worker class ``privacy_api.app.serving.WaitressWorker`` (see the module docstring)."""

    def run(self) -> None:
        max_body = int(getattr(self.wsgi, "config", {}).get("MAX_CONTENT_LENGTH") or 64 * 2**20)
        adj = Adjustments(
            sockets=[s.sock if hasattr(s, "sock") else s for s in self.sockets],
            threads=max(1, int(self.cfg.threads)),
            # Idle keep-alive connections (an SDK client after its last call) are closed after
            # this long; they hold no thread meanwhile.
            channel_timeout=int(_env_float("PRIVACY_API_IDLE_TIMEOUT", 30)),
            cleanup_interval=1,
            # Slow clients are cheap now, so allow many; poll() has no FD_SETSIZE ceiling.
            connection_limit=int(_env_float("PRIVACY_API_CONNECTION_LIMIT", 1000)),
            asyncore_use_poll=True,
            max_request_header_size=64 * 1024,
            # The largest body any route accepts (the upload cap); routes enforce their own,
            # smaller limits (privacy_api.edge) before reading.
            max_request_body_size=max_body,
            ident="privacy-api",
            expose_tracebacks=False,
            clear_untrusted_proxy_headers=False,
        )
        # Imported here, in the worker (the app is loaded): the arbiter imports this module.
        from ..http.work_limits import BODY_BUFFERED

        app = self.wsgi

        def buffered_app(environ: dict[str, Any], start_response: Any) -> Any:
            environ[BODY_BUFFERED] = True
            return app(environ, start_response)

        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(adj.threads)
        channels: dict[int, Any] = {}
        servers: list[DeadlineServer] = []
        for sock in adj.sockets:
            server = DeadlineServer(
                buffered_app, channels, True, sock, dispatcher=dispatcher, adj=adj,
                bind_socket=False,
                sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()),
            )
            server.header_timeout = _env_float("PRIVACY_API_HEADER_TIMEOUT", 10.0)
            server.min_body_rate = _env_float("PRIVACY_API_MIN_BODY_RATE", 16384.0)
            servers.append(server)
        # The I/O loop itself sends the heartbeat: if it ever blocked, the arbiter would
        # restart this worker after `timeout` seconds.
        while self.alive:
            wasyncore.loop(timeout=1.0, map=channels, use_poll=True, count=1)
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
        self._drain(servers, channels, dispatcher)

    def _drain(self, servers: list[DeadlineServer], channels: dict[int, Any],
               dispatcher: ThreadedTaskDispatcher) -> None:
        """Graceful stop: accept nothing new, let requests in progress finish and flush."""
        for server in servers:
            # Out of the poll map only: the listening socket is gunicorn's to close.
            server.accepting = False
            server.del_channel()
        deadline = time.monotonic() + float(self.cfg.graceful_timeout)
        while time.monotonic() < deadline:
            busy = [c for c in channels.values()
                    if getattr(c, "requests", None) or getattr(c, "total_outbufs_len", 0)]
            if not busy:
                break
            wasyncore.loop(timeout=0.2, map=channels, use_poll=True, count=1)
            self.notify()
        dispatcher.shutdown(cancel_pending=True, timeout=1)
        for channel in list(channels.values()):
            try:
                channel.close()
            except OSError:
                pass
