"""Running the application with uvicorn: in the foreground (the CLI) or in a thread (tests,
benchmarks, screenshots). The socket is bound before the server starts, so port 0 picks a
free port and the URL is known up front."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

__all__ = ["bind", "is_loopback", "ServerThread", "serve_forever"]


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
        ValueError: the port is taken or the address is not local.
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
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _server(app, log_level: str):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def serve_forever(app, sock: socket.socket, *, log_level: str = "warning") -> None:
    """Serve until interrupted (Ctrl-C)."""
    _server(app, log_level).run(sockets=[sock])


class ServerThread:
    """``with ServerThread(app) as url:`` serves ``app`` on 127.0.0.1 in a daemon thread."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning"):
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = _server(app, log_level)
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
