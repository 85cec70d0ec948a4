"""Running the application with uvicorn: in the foreground (the CLI) or in a thread (tests,
benchmarks, screenshots). The socket is bound before the server starts, so port 0 picks a
free port and the URL is known up front.

Connections are bounded at the HTTP layer (:class:`ConnectionLimits`): a request's headers
must arrive complete within ``header_timeout`` seconds of the connection opening (or of the
previous response), idle keep-alive connections close after ``keep_alive`` seconds, and beyond
``max_connections`` open connections the longest-idle ones without a request in progress are
closed, so connections that never send anything cannot pile up or lock others out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import threading
import time
from dataclasses import dataclass

__all__ = ["bind", "is_loopback", "ConnectionLimits", "ServerThread", "serve_forever"]


@dataclass(frozen=True)
class ConnectionLimits:
    """header_timeout: seconds for a request's headers to arrive complete; keep_alive: seconds
    an idle keep-alive connection stays open; max_connections: open connections before the
    longest-idle ones are closed."""

    header_timeout: float = 10.0
    keep_alive: float = 5.0
    max_connections: int = 512

    def __post_init__(self):
        if not (self.header_timeout > 0 and self.keep_alive > 0 and self.max_connections >= 1):
            raise ValueError(f"invalid connection limits {self}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one.

    Raises:
        ValueError: the port is taken, the address is not local or no address at all.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be named: asyncio sets TCP_NODELAY on accepted connections only when the
    # socket says IPPROTO_TCP, and without it every reply waits ~40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    except (TypeError, UnicodeError):  # a NUL or bytes no encoding can spell: a traceback
        sock.close()
        raise ValueError(f"cannot listen on {host!r}: not a host name or address") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _guarded_protocol(limits: ConnectionLimits):
    """uvicorn's h11 protocol with a deadline for request headers and a connection cap."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer = None  # the pending header deadline (an asyncio.TimerHandle)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()
            if len(self.connections) > limits.max_connections:
                self._close_idle_connections()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def connection_lost(self, exc) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

        def _busy(self) -> bool:
            """A request's headers have arrived and its response is not complete."""
            return self.cycle is not None and not self.cycle.response_complete

        def _arm_header_deadline(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._idle_since = time.monotonic()
            self._header_timer = self.loop.call_later(limits.header_timeout, self._deadline)

        def _deadline(self) -> None:
            if not self._busy() and not self.transport.is_closing():
                self.transport.close()  # headers incomplete (or none) after header_timeout

        def _close_idle_connections(self) -> None:
            idle = sorted((c for c in self.connections if c is not self
                           and isinstance(c, GuardedH11Protocol) and not c._busy()),
                          key=lambda c: c._idle_since)
            for conn in idle[:len(self.connections) - limits.max_connections]:
                conn.transport.close()

    return GuardedH11Protocol


def _server(app, log_level: str, limits: ConnectionLimits):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=2, http=_guarded_protocol(limits),
                            timeout_keep_alive=limits.keep_alive)
    return uvicorn.Server(config)


def serve_forever(app, sock: socket.socket, *, log_level: str = "warning",
                  limits: ConnectionLimits = ConnectionLimits()) -> None:
    """Serve until interrupted: Ctrl-C, SIGTERM or SIGHUP shut the server down, then the
    signal takes its course (the command line's: one line, exit code 128 + the signal)."""
    server = _server(app, log_level, limits)
    with _hangup_shuts_down(server):
        server.run(sockets=[sock])


@contextlib.contextmanager
def _hangup_shuts_down(server):
    """SIGHUP (the terminal or ssh session closed) shuts ``server`` down as uvicorn does for
    SIGINT and SIGTERM, and is raised again once it has. uvicorn leaves SIGHUP alone: its
    exception, raised inside the event loop, cancelled the application's lifespan, whose
    CancelledError was logged as a traceback wall before 'iste: stopped by SIGHUP'."""
    previous = signal.getsignal(signal.SIGHUP)
    if threading.current_thread() is not threading.main_thread() \
            or previous in (signal.SIG_IGN, None):  # nohup's, or not set from Python
        yield
        return
    received = []

    def hangup(signum, frame):
        server.force_exit = bool(received)  # a second one: at once, as uvicorn's Ctrl-C
        received.append(signum)
        server.should_exit = True

    signal.signal(signal.SIGHUP, hangup)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)
    if received:
        signal.raise_signal(signal.SIGHUP)


class ServerThread:
    """``with ServerThread(app) as url:`` serves ``app`` on 127.0.0.1 in a daemon thread."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", limits: ConnectionLimits = ConnectionLimits()):
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = _server(app, log_level, limits)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True, name="iste-serve")

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the viewer server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
