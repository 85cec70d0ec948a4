"""The hostile-input corpus: small bad files made by the tests, and a CLI runner that records
how ``iste`` ends (exit code, stderr, traceback, a deadline standing in for a hang)."""

from __future__ import annotations

import contextlib
import re
import signal
import warnings
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iste.cli.main import main
from iste.data.imagewrite import write_image


_PROGRESS = re.compile(r"\d+%(\||\s\()")  # progress lines on stderr (a bar or a log line)


class Hang(Exception):
    """The command ran past its deadline."""


@dataclass
class Outcome:
    code: int | str  # exit code, or "traceback: ..." / "hang" when it did not end cleanly
    out: str
    err: str

    @property
    def one_line_error(self) -> bool:
        lines = [ln for ln in self.err.strip().splitlines() if not _PROGRESS.search(ln)]
        return (self.code == 2 and len(lines) == 1 and lines[0].startswith("iste: error:")
                and "Traceback" not in self.err and len(lines[0]) < 400)


@contextlib.contextmanager
def deadline(seconds: int):
    """Raise :class:`Hang` in the main thread after ``seconds`` (an absurd input must fail
    quickly; on the old code these cases ran for minutes)."""
    def fire(*_):
        raise Hang()
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_cli(argv: list[str], capsys, *, seconds: int = 30) -> Outcome:
    """``iste ARGV`` in this process; exceptions that escape ``main`` are tracebacks."""
    capsys.readouterr()
    caught: list = []
    try:
        with deadline(seconds), warnings.catch_warnings(record=True) as caught:
            code: int | str = main([str(a) for a in argv])
    except Hang:
        code = "hang"
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException as exc:  # noqa: BLE001  (what a user would see as a traceback)
        code = f"traceback: {type(exc).__name__}: {str(exc)[:200]}"
    captured = capsys.readouterr()
    shown = "".join(f"iste: WARNING: {w.message}\n" for w in caught)
    return Outcome(code, captured.out, shown + captured.err)


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def png(path: Path, h: int = 20, w: int = 24, seed: int = 0) -> Path:
    write_image(path, rgb(h, w, seed))
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (8-bit RGB) with a tiny IDAT: a file of
    a few hundred bytes that a careless reader would allocate gigabytes for."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))
    return path


def corrupt_jpeg(path: Path) -> Path:
    """A JPEG with 64 random bytes over the middle of its entropy-coded data (decoders return
    garbage blocks; libjpeg notes "Corrupt JPEG data")."""
    from PIL import Image
    import io

    yy, xx = np.mgrid[0:96, 0:96]
    img = np.stack([128 + 100 * np.sin(0.2 * xx + c * yy * 0.1) for c in range(3)], -1)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    data = bytearray(buf.getvalue())
    mid = len(data) // 2
    data[mid:mid + 64] = np.random.default_rng(0).integers(0, 255, 64, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


ALIAS_BOMB = """\
a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
model: [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""
