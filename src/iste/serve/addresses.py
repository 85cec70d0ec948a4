"""Parsing what clients send: DeepZoom paths, client ids and view reports.

Everything a client sends is matched against a strict pattern before it is used; nothing of
it ever becomes a file system path. The rules:

- ``<kind>.dzi`` and ``<kind>_files/<level>/<col>_<row>.jpeg`` (kind ``sr`` or ``bicubic``)
  are the only resources under a slide;
- a path under ``<kind>_files/`` that is not a well-formed tile address (non-numeric parts,
  numbers with more digits than any slide needs, another image format) is a **malformed
  request** (HTTP 400);
- any other path names nothing (HTTP 404), and so does any path with ``.``, ``..`` or empty
  segments (a trailing ``/`` too) or a backslash (a traversal attempt, wherever it is, under
  ``/static/`` as well: :func:`is_plain_path`); so does a well-formed address outside the
  slide's levels or tiles (checked later against the geometry). No path is redirected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["BadRequest", "NotFound", "DziAddress", "TileAddress", "View", "parse_slide_path",
           "parse_client", "parse_view", "is_plain_path", "TILE_FORMAT"]

TILE_FORMAT = "jpeg"
# \Z, not $ (which also matches before a final newline); [0-9], not \d (any script's digits)
_DZI = re.compile(r"^(sr|bicubic)\.dzi\Z")
_TILE = re.compile(r"^(sr|bicubic)_files/([0-9]{1,3})/([0-9]{1,9})_([0-9]{1,9})"
                   r"\.([A-Za-z]{1,5})\Z")
_TILE_PREFIX = re.compile(r"^(sr|bicubic)_files(/|\Z)")
_CLIENT = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_MAX_COORD = 2.0 ** 48  # beyond any slide's pixels at any zoom; sums of two stay finite


class BadRequest(ValueError):
    """A malformed request (HTTP 400)."""


class NotFound(LookupError):
    """A request for something that does not exist (HTTP 404)."""


@dataclass(frozen=True)
class DziAddress:
    kind: str


@dataclass(frozen=True)
class TileAddress:
    kind: str
    level: int
    col: int
    row: int


def is_plain_path(rest: str) -> bool:
    """Whether ``rest`` (a URL path below a route's prefix) names a file the plain way: no
    empty segment (``a//b``, a trailing ``/``), no ``.`` or ``..`` and no backslash. Any
    other path names nothing (404), never what it would name once normalised."""
    return not any(part in ("", ".", "..") for part in rest.split("/")) and "\\" not in rest


def parse_slide_path(rest: str) -> DziAddress | TileAddress:
    """The resource named by the part of a URL path after ``/slides/<id>/``."""
    if not is_plain_path(rest):
        raise NotFound(rest)  # dot segments, empty segments, backslashes: a traversal
    m = _DZI.match(rest)
    if m:
        return DziAddress(m.group(1))
    m = _TILE.match(rest)
    if m:
        kind, level, col, row, fmt = m.groups()
        if fmt != TILE_FORMAT:
            raise BadRequest(f"tiles are {TILE_FORMAT}, not {fmt!r}")
        return TileAddress(kind, int(level), int(col), int(row))
    if _TILE_PREFIX.match(rest):
        raise BadRequest("malformed tile address: expected "
                         f"<kind>_files/<level>/<col>_<row>.{TILE_FORMAT}")
    raise NotFound(rest)


def parse_client(value: str | None) -> str | None:
    """A client id (letters, digits, ``_``, ``-``; at most 64) or None when absent."""
    if value is None:
        return None
    if not _CLIENT.match(value):
        raise BadRequest("client id must be 1-64 letters, digits, '_' or '-'")
    return value


@dataclass(frozen=True)
class View:
    """What a client shows: ``level`` is the super-resolved DeepZoom level it draws (or a
    scan level when it shows no super-resolution); (x, y, width, height) the visible box in
    pixels of the DeepZoom top level."""

    client: str
    generation: int
    slide: str
    level: int
    box: tuple[float, float, float, float]


def parse_view(body) -> View:
    """A view report (decoded JSON) -> :class:`View`; BadRequest on anything unexpected."""
    if not isinstance(body, dict):
        raise BadRequest("a view is a JSON object")
    expected = {"client", "generation", "slide", "level", "x", "y", "width", "height"}
    if set(body) != expected:
        raise BadRequest(f"a view has exactly the fields {', '.join(sorted(expected))}")
    client = parse_client(body["client"]) if isinstance(body["client"], str) else None
    if client is None:
        raise BadRequest("client must be a string")
    ints = [body["generation"], body["level"]]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53 for v in ints):
        raise BadRequest("generation and level must be non-negative integers")
    box = [body[k] for k in ("x", "y", "width", "height")]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               and abs(v) <= _MAX_COORD for v in box) or box[2] < 0 or box[3] < 0:
        raise BadRequest(f"x, y, width, height must be numbers of at most {_MAX_COORD:.0f} "
                         "in size, sizes >= 0")
    if not isinstance(body["slide"], str):
        raise BadRequest("slide must be a string")
    return View(client, body["generation"], body["slide"], body["level"],
                tuple(float(v) for v in box))  # type: ignore[arg-type]
