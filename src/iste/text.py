"""Text as it can be written anywhere: a terminal, a log line, a UTF-8 file, a TIFF or DICOM
string, an XML document. File names bring what these cannot hold (bytes that are not UTF-8,
line breaks, control characters); these functions write such characters as escapes."""

from __future__ import annotations

import os
import re

__all__ = ["shown", "one_line", "message_line", "ascii_text", "xml_text", "error_line",
           "decimal", "cut_to_bytes"]


def shown(text: str) -> str:
    """``text`` as it can be written anywhere (a terminal, a UTF-8 file, a figure, an XML
    field): the bytes of a file name that were not UTF-8, which Python keeps as lone
    surrogates, as ``\\xNN`` escapes (``caf\\xe9.svs``). Written as they were, they raised
    UnicodeEncodeError (a log file lost the line, with a traceback on stderr) or showed as
    ``\\udce9``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name decodes to (JSON's "\\ud800")
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


# control characters (C0, DEL, C1) as Python writes them in a string's repr
_CONTROL = {c: repr(chr(c))[1:-1] for c in (*range(32), *range(127, 160))}
# Unicode's line and paragraph separators: no control characters, yet line breaks to
# str.splitlines and the tools that read a log by its lines
_BREAKS = {**_CONTROL, 0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(text: str) -> str:
    """``text`` with its control characters and line breaks as Python escapes
    (``a\\nb.svs``, ``\\x01``, ``\\u2028``): a file name's line break read as the start of
    another message or field, and XML 1.0 (an OME-XML Description, XMP) cannot hold the
    control characters at all."""
    return text.translate(_BREAKS)


def cut_to_bytes(text: str, limit: int) -> str:
    """The longest start of ``text`` (a file name, or part of one) that holds at most
    ``limit`` bytes as the file system stores it (:func:`os.fsencode`), cut at a character's
    end: cut at a byte count, a name beyond ASCII could end in part of a UTF-8 character, a
    name that is not UTF-8, which UTF-8-only file systems refuse (macOS, ZFS utf8only, SMB:
    'illegal byte sequence'). A name's undecodable bytes are one character each."""
    text = text[:limit]  # a character is at least one byte
    while len(os.fsencode(text)) > limit:
        text = text[:-1]
    return text


def message_line(text: str) -> str:
    """``text`` as one line that can be written anywhere: :func:`shown`, then
    :func:`one_line` (a message, a log record, a recorded file name)."""
    return one_line(shown(text))


def ascii_text(text: str) -> str:
    """``text`` as a TIFF string (ImageDescription) and DICOM's default character set hold it
    whole: 7-bit ASCII, other characters as Python escapes (a source named Präparat.svs as
    ``Pr\\xe4parat.svs``: tifffile refused the page, after every tile was made), control
    characters too (:func:`one_line`: a NUL ends a TIFF string, and OpenSlide read the text
    up to it)."""
    return one_line(text).encode("ascii", "backslashreplace").decode("ascii")


# what else XML 1.0 cannot hold: the two non-characters (lone surrogates: :func:`shown`)
_NOT_XML = {**_CONTROL, 0xFFFE: "\\ufffe", 0xFFFF: "\\uffff"}


def xml_text(text: str) -> str:
    """``text`` as any XML 1.0 document holds it (an OME-XML Description, an XMP field):
    control characters, lone surrogates and U+FFFE / U+FFFF as Python escapes
    (:func:`one_line`, :func:`shown`). Written raw, ``\\x01`` or ``\\x1b`` made the
    whole document no XML: Bio-Formats read the OME layout without its metadata."""
    return shown(text).translate(_NOT_XML)


def error_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of ``err``'s message, without the blank space around the message, cut
    to ``limit`` characters (then ending "..."); the exception's type name for a message that
    is empty or only blank space. Libraries' messages run over many lines (a traceback's
    worth from torch, a list of tried formats), and a reason in a one-line error takes the
    first."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if limit is None or len(line) <= limit else line[:limit] + "..."


_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?", re.ASCII)
_WHOLE = re.compile(r"[-+]?\d+", re.ASCII)


def decimal(text: str, *, whole: bool = False) -> float | int:
    """The number a user wrote as ``text`` (an option's value): ASCII digits with an optional
    sign, point and exponent (``2``, ``2.5``, ``.5``, ``1e-3``), blank space around it
    ignored; a whole number (an int) where ``whole``. Python's ``float`` and ``int`` read
    more, none of it meant as a number here: ``2_0`` as 20 (digit grouping: ``-s 2_0`` was
    refused as "x20 is beyond what the models can reach", a typo of 2.0 read as another
    number), ``inf``, ``nan``, other scripts' digits (full-width ``２``) and blank space
    inside.

    Raises:
        ValueError: ``'TEXT' is not a number`` (or not a whole one), with what to write
            instead where the text shows it, or beyond a float's range (``1e400``: inf;
            a whole number of over 4300 digits);
            the caller names the option.
    """
    stripped = text.strip()
    if (_WHOLE if whole else _DECIMAL).fullmatch(stripped):
        try:  # int() refuses over 4300 digits, naming sys.set_int_max_str_digits()
            value = int(stripped) if whole else float(stripped)
        except ValueError:
            value = float("inf")
        if value in (float("inf"), float("-inf")):  # 1e400
            raise ValueError(f"{text[:40]!r} is beyond the range of a number")
        return value
    kind = "a whole number" if whole else "a number"
    hint = ""
    if "_" in stripped:
        hint = (" (write it with the digits 0-9 only: '_' is not one)" if whole else
                " (write it with digits and a point only: '_' is neither)")
    elif not stripped.isascii():
        hint = " (write it with the digits 0-9)"
    elif whole and _DECIMAL.fullmatch(stripped):
        hint = " (no point or exponent)"
    raise ValueError(f"{text[:40]!r} is not {kind}{hint}")
