"""Whether a DICOM instance's pixel data lies whole in its file (a truncated copy is refused).

wsidicom indexes an instance's frames from its offset table when the instance is first read
and reads a frame's bytes as far as the file goes: a copy cut short inside the last frames
gives a JPEG stream without its end, which libjpeg decodes to grey blocks without an error.
:func:`truncation` finds the cut from the header alone, reading the pixel data's item headers
from the last frame the offset table names (from the first frame where there is no table).
"""

from __future__ import annotations

import os
import struct
from typing import Literal

__all__ = ["truncation"]

_PIXEL_DATA = 0x7FE00010
_ITEM = 0xFFFEE000
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


def truncation(fd: int, offset: int, size: int, *, explicit_vr: bool, rows: bool,
               extended_offsets: bytes | None = None) -> str | None:
    """Where the pixel data of a little-endian DICOM file ``fd`` of ``size`` bytes, whose
    element starts at byte ``offset`` (where pydicom's ``stop_before_pixels`` stops), runs
    past the file's end (a phrase for "truncated file (...)"); None when it lies whole, or
    when its layout is not one this reads (left to the reader). ``rows``: the dataset is an
    image (it has Rows), so it must have pixel data; ``extended_offsets``: its Extended
    Offset Table (uint64 per frame), if any."""
    head = os.pread(fd, 12 if explicit_vr else 8, offset)
    if len(head) < 8:
        return f"no pixel data before its end at byte {size}" if rows else None
    if _tag(head) != _PIXEL_DATA:
        return None
    if explicit_vr:
        if len(head) < 12:
            return f"the pixel data's header runs past byte {size}"
        length, start = struct.unpack("<L", head[8:12])[0], offset + 12
    else:
        length, start = struct.unpack("<L", head[4:8])[0], offset + 8
    if length != _UNDEFINED:  # native pixels, one block of bytes
        end = start + length
        return None if end <= size else f"pixel data ends at byte {end}, past its {size} bytes"
    table = _item(fd, start, size)  # encapsulated: the Basic Offset Table's item first
    if not isinstance(table, int):
        return table
    first = start + 8 + table
    if extended_offsets:
        last = struct.unpack_from("<Q", extended_offsets, len(extended_offsets) - 8)[0]
    elif table >= 4:
        last = struct.unpack("<L", os.pread(fd, 4, first - 4))[0]
    else:
        last = 0
    found = _walk(fd, first + last, size) if last and first + last < size else None
    if found is None:  # no table, or it points nowhere useful: every item from the first
        found = _walk(fd, first, size)
    return None if found is True else found


def _tag(head: bytes) -> int:
    group, element = struct.unpack("<HH", head[:4])
    return group << 16 | element


def _item(fd: int, at: int, size: int) -> int | str | None:
    """The length of the item whose header is at byte ``at``; a reason when it runs past the
    end; None when no item is there."""
    head = os.pread(fd, 8, at)
    if len(head) < 8:
        return f"the pixel data's items run past byte {size}"
    if _tag(head) != _ITEM:
        return None
    length = struct.unpack("<L", head[4:])[0]
    if length == _UNDEFINED:
        return None
    if at + 8 + length > size:
        return f"a frame ends at byte {at + 8 + length}, past its {size} bytes"
    return length


def _walk(fd: int, at: int, size: int) -> Literal[True] | str | None:
    """Follow the fragment items from byte ``at`` to the sequence's end: True when they all
    lie in the file, a reason when one does not, None when something other than an item is
    met (not judged)."""
    while True:
        head = os.pread(fd, 4, at)
        if len(head) == 4 and _tag(head) == _SEQUENCE_END:
            return True
        length = _item(fd, at, size)
        if not isinstance(length, int):
            return length
        at += 8 + length
