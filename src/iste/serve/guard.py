"""What every request must pass before a route sees it: its Host, its Origin, its body.

- **Host** (against DNS rebinding): a web page on another site can make its own host name
  resolve to 127.0.0.1 and then read this server as "same origin"; its requests still carry
  that foreign name in ``Host``. Only the names the server is reached by are accepted
  (:func:`allowed_hosts`: the loopback names, the bound address, ``--allowed-host``); any other
  Host, or none, is refused with **400** before a slide is touched.
- **Origin** (against cross-site writes): a request that changes state (any method but GET,
  HEAD, OPTIONS) carrying an ``Origin`` other than this server's own (``http://`` + its Host)
  is refused with **403**. Browsers send Origin on every cross-origin write; tools (curl) send
  none and are let through.
- **Body**: at most ``max_body`` bytes (no route takes more): a ``Content-Length`` above it is
  refused with **413** before anything is read, a body streaming past it is cut off at the
  first chunk that exceeds it, and a body that stops arriving for ``body_timeout`` seconds is
  refused with **408**.

Idle connections and request headers that never complete are handled one layer below, in the
HTTP protocol (:mod:`iste.serve.runner`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket

__all__ = ["RequestGuard", "allowed_hosts", "host_name", "LOOPBACK_NAMES", "RefusedRequest"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = {"", "0.0.0.0", "::"}
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_HOST = re.compile(r"^(?:\[([0-9a-f:.]+)\]|([a-z0-9_.-]+))(?::(\d{1,5}))?$")


class RefusedRequest(Exception):
    """A request the guard refuses: ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def host_name(value: str) -> str | None:
    """The host name of a ``Host`` header ("Example.org.:8765" -> "example.org", "[::1]:80"
    -> "::1"), or None when it is not a well-formed host[:port]."""
    m = _HOST.match(value.strip().lower())
    if m is None:
        return None
    return (m.group(1) or m.group(2)).rstrip(".") or None


def allowed_hosts(bound: str, extra: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """Host names a server bound to ``bound`` answers: the loopback names, ``bound`` itself
    (for a wildcard address, this machine's host name instead) and ``extra``.

    Raises:
        ValueError: an ``extra`` name is not a host name.
    """
    names = set(LOOPBACK_NAMES)
    if bound.strip("[]") in _WILDCARDS:
        names.add(socket.gethostname().lower())
    else:
        names.add(bound.strip("[]").lower())
    return frozenset(names | {_allowed_name(name) for name in extra})


def _allowed_name(name: str) -> str:
    """An ``--allowed-host`` as the host name :func:`host_name` reads from a Host header: a
    name, an IPv4 address, or an IPv6 address with or without brackets. A name with a port
    ("cafe:8080", whose hex digits read as an IPv6 address "cafe:8080") is refused, naming
    the host: the server's port is --port, whatever name a client uses.

    Raises:
        ValueError: one line, not a host name.
    """
    bare = name.strip().lower()
    if ":" in bare and not bare.startswith("[") and _is_ipv6(bare):
        return bare
    m = _HOST.match(bare)
    if m is not None and m.group(1) is not None and not _is_ipv6(m.group(1)):
        m = None  # "[a:b]": hex digits and colons, no address
    if m is not None and m.group(3) is not None:
        raise ValueError(f"--allowed-host {name!r} is not a host name: it names a port; give "
                         f"the host alone ({m.group(1) or m.group(2)}): the port is --port")
    parsed = None if m is None else (m.group(1) or m.group(2)).rstrip(".")
    if not parsed:
        raise ValueError(f"--allowed-host {name!r} is not a host name (no port, no scheme)")
    return parsed


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


class RequestGuard:
    """Pure ASGI middleware checking Host, Origin and the body (see the module docstring).
    Refusals are raised as :class:`RefusedRequest` before the application runs (Host, Origin,
    Content-Length) or from the body reader (size, pace); the application turns them into
    JSON errors."""

    def __init__(self, app, *, hosts: frozenset[str] = LOOPBACK_NAMES, max_body: int = 4096,
                 body_timeout: float = 10.0):
        self.app, self.hosts = app, hosts
        self.max_body, self.body_timeout = max_body, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            self._check(scope)
        except RefusedRequest as err:
            return await _refuse(send, err)
        await self.app(scope, self._bounded(receive), send)

    def _check(self, scope) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in (b"host", b"content-length") and name in headers:
                raise RefusedRequest(400, f"more than one {name.decode()} header")
            headers.setdefault(name, value)
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if host is None or host not in self.hosts:
            raise RefusedRequest(400, "unknown host: this server answers only the names it "
                                      "is bound to (see --allowed-host)")
        origin = headers.get(b"origin")
        if scope["method"] not in _SAFE_METHODS and origin is not None:
            own = "http://" + headers[b"host"].decode("latin-1").strip().lower()
            if origin.decode("latin-1").strip().lower() != own:
                raise RefusedRequest(403, "cross-origin request refused")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or len(length) > 18:
                raise RefusedRequest(400, "malformed Content-Length")
            if int(length) > self.max_body:
                raise RefusedRequest(413, f"request body over {self.max_body} bytes")

    def _bounded(self, receive):
        """``receive`` that refuses a body past ``max_body`` bytes or stalled for
        ``body_timeout`` s; once the body is complete it passes messages through (a waiting
        route then learns of a disconnect as before)."""
        state = {"bytes": 0, "done": False}

        async def bounded_receive():
            if state["done"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                raise RefusedRequest(408, "request body too slow") from None
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                if state["bytes"] > self.max_body:
                    raise RefusedRequest(413, f"request body over {self.max_body} bytes")
                state["done"] = not message.get("more_body", False)
            else:
                state["done"] = True
            return message

        return bounded_receive


async def _refuse(send, err: RefusedRequest) -> None:
    body = json.dumps({"error": str(err)}).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
