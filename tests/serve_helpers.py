"""Shared pieces of the viewer tests: a small served slide, a tiny model, raw HTTP."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import torch

from iste.models.registry import build_model
from iste.serve.app import CacheSettings, create_app
from iste.serve.catalog import SlideCatalog, serve_slide
from iste.serve.pixels import Upscaler
from iste.slides.reader import InMemorySlide
from model_zoo import tiny_config
from slide_data import he_image

SLIDE_ID = "0123456789abcdef"


def tiny_upscaler() -> Upscaler:
    torch.manual_seed(0)
    return Upscaler.for_model(build_model(tiny_config("iste")).eval(), name="tiny")


def small_catalog(width: int = 300, height: int = 200) -> SlideCatalog:
    slide = InMemorySlide(he_image(width, height), mpp=0.5, min_level_size=64)
    return SlideCatalog([(SLIDE_ID, serve_slide(slide, "he.svs"))])


def small_app(catalog: SlideCatalog | None = None, upscaler: Upscaler | None = None, **cache):
    return create_app(catalog or small_catalog(), upscaler or tiny_upscaler(),
                      cache=CacheSettings(**{"disk_dir": None, **cache}))


def swapped_profile() -> bytes:
    """An RGB ICC profile far from sRGB: LittleCMS's sRGB with the red and blue primaries
    swapped (the tag table's rXYZ and bXYZ entries exchanged), so that pixels in it are
    their red and blue channels swapped in sRGB: (255, 0, 0) is pure blue."""
    import struct

    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    entries = {bytes(icc[132 + 12 * i:136 + 12 * i]): 136 + 12 * i
               for i in range(struct.unpack(">I", icc[128:132])[0])}
    r, b = entries[b"rXYZ"], entries[b"bXYZ"]
    icc[r:r + 8], icc[b:b + 8] = icc[b:b + 8], icc[r:r + 8]
    icc[84:100] = bytes(16)  # no profile id (an MD5 of the bytes) to contradict
    return bytes(icc)


def raw_request(url: str, path: str, *, method: str = "GET", body: bytes | None = None,
                timeout: float = 60) -> tuple[int, dict, bytes]:
    """Send ``path`` byte for byte (no client-side normalisation of ``..`` or escapes)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if body is not None:
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def until(predicate, seconds: float = 60) -> None:
    """Wait until ``predicate()`` holds (a server's threads got there), failing after
    ``seconds``: a generous bound, reached only where the server is wrong."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def get_json(url: str, path: str) -> dict:
    status, _, body = raw_request(url, path)
    assert status == 200, (status, body)
    return json.loads(body)
