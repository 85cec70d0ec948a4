"""Hostile clients against a live viewer on loopback (issue 16, items 9-11): foreign Host
names (DNS rebinding), cross-origin writes, oversized and stalled bodies, connections that
never finish a request, floods of abandoned requests, zoomed-out tiles of a huge single-level
slide, file names in the listing, and a world-readable tile cache.

Every reply is checked for the right status and a one-line JSON error without a stack trace.
"""

import json
import os
import socket
import stat
import threading
import time
from urllib.parse import urlsplit

import numpy as np
import pytest

from iste.serve.app import CacheSettings, create_app
from iste.serve.cache import DiskCache
from iste.serve.catalog import SlideCatalog, find_slides, serve_slide
from iste.serve.guard import allowed_hosts
from iste.serve.runner import ConnectionLimits, ServerThread
from iste.slides.reader import SlideReader
from serve_helpers import SLIDE_ID, raw_request, small_catalog, tiny_upscaler, until
from slide_data import damaged_tiff

LIMITS = ConnectionLimits(header_timeout=1.0, keep_alive=1.0, max_connections=512)
EXTRA_HOST = "viewer.example.org"


@pytest.fixture(scope="module")
def server():
    catalog = small_catalog()
    app = create_app(catalog, tiny_upscaler(), cache=CacheSettings(disk_dir=None),
                     hosts=allowed_hosts("127.0.0.1", [EXTRA_HOST]), body_timeout=1.0)
    with ServerThread(app, limits=LIMITS) as url:
        parts = urlsplit(url)
        yield parts.hostname, parts.port, app.state.producer


def exchange(server, data: bytes, *, timeout: float = 30) -> tuple[int, dict, bytes]:
    """Send raw bytes on a new connection; read the reply until the server closes."""
    host, port, _ = server
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = _read_all(s)
    return parse_reply(reply)


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        if _complete(b"".join(chunks)):
            break
    return b"".join(chunks)


def _complete(reply: bytes) -> bool:
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def parse_reply(reply: bytes) -> tuple[int, dict, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 "), reply[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    return int(lines[0].split()[1]), headers, body


def request(method: str, path: str, host: str, *, headers=(), body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def assert_one_line_error(status: int, body: bytes, expected: int) -> None:
    assert status == expected, body
    assert b"Traceback" not in body and b'File "' not in body
    message = json.loads(body)["error"]
    assert message and "\n" not in message


def own(server) -> str:
    return f"127.0.0.1:{server[1]}"


def view_report(client="c1", generation=1) -> bytes:
    return json.dumps({"client": client, "generation": generation, "slide": SLIDE_ID,
                       "level": 9, "x": 0, "y": 0, "width": 10, "height": 10}).encode()


# --- item 9: Host names (DNS rebinding) ----------------------------------------------------
FOREIGN_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                 "localhost.evil.example", "[::2]:{port}", "0.0.0.0:{port}", "", "a b",
                 "127.0.0.1:{port}@evil.example", "%31%32%37.0.0.1"]
PATHS = ["/", "/api/slides", "/api/status", f"/slides/{SLIDE_ID}/sr.dzi",
         f"/slides/{SLIDE_ID}/bicubic_files/8/0_0.jpeg", "/static/viewer.js"]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
@pytest.mark.parametrize("path", PATHS)
def test_foreign_host_names_are_refused_before_any_slide_is_read(server, host, path):
    producer = server[2]
    before = producer.counts["requests"]
    status, _, body = exchange(server, request("GET", path, host.format(port=server[1])))
    assert_one_line_error(status, body, 400)
    assert b"Slide" not in body and b"<Image" not in body
    assert producer.counts["requests"] == before


def test_a_request_without_host_or_with_two_is_refused(server):
    raw = "GET /api/slides HTTP/1.0\r\n\r\n".encode()
    status, _, body = exchange(server, raw)
    assert_one_line_error(status, body, 400)
    two = request("GET", "/api/slides", own(server), headers=["Host: evil.example"])
    status, _, body = exchange(server, two)
    assert status == 400 and b"Traceback" not in body


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST",
                                  "localhost.:{port}", "[::1]:{port}", EXTRA_HOST + ":{port}"])
def test_the_names_the_server_is_bound_to_are_served(server, host):
    status, _, body = exchange(server, request("GET", "/api/slides", host.format(port=server[1])))
    assert status == 200 and json.loads(body)["slides"][0]["id"] == SLIDE_ID


def test_allowed_hosts_from_the_command_line():
    assert allowed_hosts("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert "192.168.1.7" in allowed_hosts("192.168.1.7")
    assert {"viewer.lan", "fe80::1"} <= allowed_hosts("::1", ["Viewer.LAN", "[fe80::1]"])
    assert socket.gethostname().lower() in allowed_hosts("0.0.0.0")
    for bad in ["http://viewer.lan", "viewer.lan:8765", "a/b", "", "a b", "a:b", "[a:b]"]:
        with pytest.raises(ValueError, match="not a host name"):
            allowed_hosts("127.0.0.1", [bad])
    assert allowed_hosts("127.0.0.1", ["fe80::1", "[::ffff:1.2.3.4]"]) >= {"fe80::1",
                                                                          "::ffff:1.2.3.4"}


@pytest.mark.parametrize("spec,host", [("cafe:8080", "cafe"), ("Viewer.LAN:8765", "viewer.lan"),
                                       ("10.0.0.7:80", "10.0.0.7"), ("[fe80::1]:80", "fe80::1")])
def test_an_allowed_host_with_a_port_is_refused_naming_the_host(spec, host):
    """A host with a port whose letters are hex digits ("cafe:8080", "a:b") was taken as an
    IPv6 address and allowed (no Host header ever names it); now a port is refused, the host
    named."""
    with pytest.raises(ValueError, match=f"it names a port; give the host alone \\({host}\\)"):
        allowed_hosts("127.0.0.1", [spec])


# --- item 11: cross-origin writes, names in the listing ------------------------------------
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1",
                                    "https://127.0.0.1:{port}", "http://localhost:{port}"])
def test_cross_origin_writes_are_forbidden(server, origin):
    headers = [f"Origin: {origin.format(port=server[1])}", "Content-Type: text/plain"]
    for method in ("POST", "DELETE", "PUT"):
        status, _, body = exchange(server, request(method, "/api/view", own(server),
                                                   headers=headers, body=view_report()))
        assert_one_line_error(status, body, 403)


def test_same_origin_and_origin_less_writes_are_accepted(server):
    same = [f"Origin: http://{own(server)}", "Content-Type: application/json"]
    status, _, body = exchange(server, request("POST", "/api/view", own(server), headers=same,
                                               body=view_report("same", 1)))
    assert status == 200 and json.loads(body) == {"cancelled": 0}
    status, _, body = exchange(server, request("POST", "/api/view", own(server),
                                               body=view_report("tool", 1)))
    assert status == 200


def test_cross_origin_reads_get_no_cors_permission(server):
    status, headers, _ = exchange(server, request("GET", "/api/slides", own(server),
                                                  headers=["Origin: http://evil.example"]))
    assert status == 200 and "access-control-allow-origin" not in headers


def test_the_source_file_stays_on_the_server():
    source = "/secret/cases/PATIENT-Doe-1234.svs"
    catalog = SlideCatalog([(SLIDE_ID, small_catalog().get(SLIDE_ID))], sources=[source])
    assert "PATIENT" not in json.dumps(catalog.describe(SLIDE_ID))
    assert catalog.sources() == [("he.svs", source)]


def test_slides_opened_from_files_are_listed_as_numbered_slides(tmp_path_factory):
    from slide_data import pyramid_tiff

    path = pyramid_tiff(tmp_path_factory)
    catalog = SlideCatalog.open([path])
    try:
        listing = json.dumps([catalog.describe(i) for i in catalog.ids()])
        assert json.loads(listing)[0]["name"] == "Slide 1"
        assert path.name not in listing and path.stem not in listing
        assert str(path.parent) not in listing
        assert catalog.sources() == [("Slide 1", str(path))]
    finally:
        catalog.close()


def test_a_slide_whose_file_name_is_not_utf8_is_served(tmp_path):
    """A file name in another encoding (Latin-1 'é' copied from another system): the slide has
    an id like any other; the whole server stopped with "'utf-8' codec can't encode
    character '\\udce9'"."""
    folder = tmp_path / "slides"
    folder.mkdir()
    _tiff_slide(folder / "a.tiff")
    os.rename(folder / "a.tiff", os.fsdecode(os.fsencode(folder) + b"/caf\xe9.tiff"))
    catalog = SlideCatalog.open(find_slides([folder]))
    try:
        assert len(catalog.ids()) == 1 and "caf" in catalog.sources()[0][1]
        assert catalog.describe(catalog.ids()[0])["width"] == 128
    finally:
        catalog.close()


def test_a_slide_that_cannot_be_read_is_skipped_as_a_corrupt_one_is(tmp_path, monkeypatch):
    """A slide of the folder that the server may not read (another user's file, mode 600; a
    disk error): the others are served and it is named in a warning, as a corrupt one is; the
    whole server stopped ('Permission denied', or a traceback for an I/O error)."""
    import errno

    from iste.serve import catalog as catalog_module

    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("a.tiff", "locked.tiff", "bad-disk.tiff"):
        _tiff_slide(folder / name)
    opened = catalog_module.open_slide

    def open_slide(path, **kwargs):  # what open() raises there (root reads any mode)
        code = {"locked.tiff": errno.EACCES, "bad-disk.tiff": errno.EIO}.get(path.name)
        if code:
            raise OSError(code, os.strerror(code), str(path))
        return opened(path, **kwargs)

    monkeypatch.setattr(catalog_module, "open_slide", open_slide)
    with pytest.warns(UserWarning) as said:
        catalog = SlideCatalog.open(find_slides([folder]))
    try:
        assert [source for _, source in catalog.sources()] == [str(folder / "a.tiff")]
    finally:
        catalog.close()
    messages = sorted(str(w.message) for w in said)
    assert messages[0].startswith("skipping bad-disk.tiff: cannot open slide ")
    assert messages[0].endswith(": Input/output error")
    assert messages[1].startswith("skipping locked.tiff: cannot open slide ")
    assert messages[1].endswith(": Permission denied")


def _tiff_slide(path, x=900):
    import tifffile

    from slide_data import he_image

    tifffile.imwrite(path, he_image(x=x)[:128, :128], tile=(64, 64), photometric="rgb",
                     metadata=None)
    return path


def _sr_tile(path, cache, *, beside=(), backend="auto", **options):
    """(bytes, disk hits) of an SR tile (level 9: x4 of the 128 px slide) from a new server
    on ``path`` (and the slides ``beside`` it, read by ``backend``) with --cache-dir
    ``cache``."""
    from iste.engine.render import QueryOptions
    from iste.serve.pixels import Upscaler

    catalog = SlideCatalog.open([path, *beside], backend=backend)
    upscaler = Upscaler.for_model(tiny_upscaler().model, name="tiny",
                                  options=QueryOptions(**options))
    app = create_app(catalog, upscaler, cache=CacheSettings(disk_dir=cache))
    try:
        with ServerThread(app) as url:
            status, _, body = raw_request(url, f"/slides/{catalog.ids()[0]}/sr_files/9/0_0.jpeg")
            assert status == 200
            return body, json.loads(raw_request(url, "/api/status")[2])["disk_hits"]
    finally:
        catalog.close()


def test_a_slide_replaced_in_place_is_not_served_from_the_disk_cache_of_a_past_run(tmp_path):
    """Another slide of the same size copied over the served one with its modification time
    set back (``cp``, ``touch -r``): the next server renders its tiles instead of serving the
    old slide's from --cache-dir; an unchanged slide's come from the cache."""
    path, other = _tiff_slide(tmp_path / "s.tiff"), _tiff_slide(tmp_path / "o.tiff", x=1300)
    first, _ = _sr_tile(path, tmp_path / "cache")
    assert _sr_tile(path, tmp_path / "cache") == (first, 1)
    st = path.stat()
    path.write_bytes(other.read_bytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again, hits = _sr_tile(path, tmp_path / "cache")
    assert hits == 0 and again != first and again == _sr_tile(path, None)[0]


def test_a_slide_added_to_the_served_ones_keeps_the_others_disk_cache(tmp_path):
    """A slide's cached tiles are named by that slide, not by the set served beside it: a
    restart with a new slide in the folder took none of the old ones' tiles from the disk
    (every SR tile rendered again), nor one without it."""
    path, other = _tiff_slide(tmp_path / "s.tiff"), _tiff_slide(tmp_path / "o.tiff", x=1300)
    first, _ = _sr_tile(path, tmp_path / "cache")
    assert _sr_tile(path, tmp_path / "cache", beside=[other]) == (first, 1)
    assert _sr_tile(other, tmp_path / "cache")[1] == 0  # another slide: its own tiles
    assert _sr_tile(path, tmp_path / "cache", beside=[other]) == (first, 1)


def test_the_disk_cache_of_a_past_run_serves_other_chunks_but_not_other_keys(tmp_path):
    """--chunk changes only the speed: a server with another one takes the tiles on disk;
    another --stf-keys changes the pixels: it renders them again."""
    path = _tiff_slide(tmp_path / "s.tiff")
    first, _ = _sr_tile(path, tmp_path / "cache", chunk=4096)
    assert _sr_tile(path, tmp_path / "cache", chunk=512) == (first, 1)
    assert _sr_tile(path, tmp_path / "cache", chunk=512, stf_keys=64)[1] == 0


def test_the_disk_cache_of_another_slide_decoder_is_not_served(tmp_path):
    """Tiles decoded by OpenSlide were served from the disk cache to a server restarted with
    --backend tiffslide (and back): the decoders can put a tile a level or more apart, and
    the cache names did not say which one read the slide (SlideReader.decoder)."""
    path = _tiff_slide(tmp_path / "s.tiff")
    first, _ = _sr_tile(path, tmp_path / "cache", backend="openslide")
    assert _sr_tile(path, tmp_path / "cache", backend="tiffslide")[1] == 0
    assert _sr_tile(path, tmp_path / "cache", backend="openslide") == (first, 1)


def test_the_disk_cache_of_another_iste_version_is_not_served(tmp_path, monkeypatch):
    import iste

    path = _tiff_slide(tmp_path / "s.tiff")
    _sr_tile(path, tmp_path / "cache")
    monkeypatch.setattr(iste, "__version__", iste.__version__ + ".post1")
    assert _sr_tile(path, tmp_path / "cache")[1] == 0


def test_tiles_of_a_slide_rewritten_while_served_are_refused_not_mixed(tmp_path, caplog):
    """Another slide copied over the served file: its tiles are not shown beside the old
    slide's (the tiles in memory) under the old slide's id; the server says to restart, in
    one line, once (it logged a traceback for every tile)."""
    path, other = _tiff_slide(tmp_path / "s.tiff"), _tiff_slide(tmp_path / "o.tiff", x=1300)
    catalog = SlideCatalog.open([path])
    app = create_app(catalog, tiny_upscaler(), cache=CacheSettings(disk_dir=tmp_path / "c"))
    try:
        with ServerThread(app) as url:
            tile = f"/slides/{catalog.ids()[0]}/sr_files/8/{{}}_0.jpeg"
            status, _, first = raw_request(url, tile.format(0))
            assert status == 200
            path.write_bytes(other.read_bytes())
            assert raw_request(url, tile.format(0))[::2] == (200, first)  # from memory
            for _ in range(2):  # asked again: refused again, not said again
                status, _, body = raw_request(url, tile.format(1))
                assert status == 500 and b"could not be rendered" in body
    finally:
        catalog.close()
    said = [r for r in caplog.records if "changed on disk" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None  # one line, once
    assert "restart iste serve" in said[0].getMessage()
    assert len(list((tmp_path / "c").rglob("*.tile"))) == 1  # the first only: none of other
    # pixels under the old slide's id


def test_a_changed_slide_s_tiles_are_refused_before_the_model_runs_saying_why(
        tmp_path, monkeypatch):
    """A slide replaced while served: each SR tile the viewer asked for (and asked again, as
    it retries) took the model a whole tile's time before it was thrown away, and the
    viewer was told only 'could not be rendered'. Now the tile is refused before any pixel
    is rendered, with the reason the page can show (and no file name)."""
    from iste.serve.pixels import ServedSlide

    path, other = _tiff_slide(tmp_path / "s.tiff"), _tiff_slide(tmp_path / "o.tiff", x=1300)
    catalog = SlideCatalog.open([path])
    app = create_app(catalog, tiny_upscaler(), cache=CacheSettings(disk_dir=None))
    rendered = []
    real = ServedSlide.render
    monkeypatch.setattr(ServedSlide, "render",
                        lambda self, *a, **k: rendered.append(a[:2]) or real(self, *a, **k))
    try:
        with ServerThread(app) as url:
            path.write_bytes(other.read_bytes())
            for kind, level in (("sr", 9), ("bicubic", 9), ("bicubic", 6)):
                status, _, body = raw_request(
                    url, f"/slides/{catalog.ids()[0]}/{kind}_files/{level}/0_0.jpeg")
                error = json.loads(body)["error"]
                assert status == 500 and "changed on disk" in error, error
                assert "restart iste serve" in error and "s.tiff" not in error
    finally:
        catalog.close()
    assert rendered == []


def test_a_slide_cut_short_while_served_is_said_to_have_changed_not_logged_per_tile(
        tmp_path, caplog):
    """The served file cut short (a copy over it under way): the tiles whose reads now fail
    get the same one line, once, as tiles read whole from a changed file (each logged the
    decoder's traceback, and the restart was never said while every read failed)."""
    path = _tiff_slide(tmp_path / "s.tiff")
    cut = lambda: path.write_bytes(path.read_bytes()[:2000])  # noqa: E731 - first tile only
    _tiles_fail(path, (5, 6, 8), then=cut)  # a scan, the native (level 0) and an SR tile
    said = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(said) == 1 and said[0].exc_info is None  # one line, once
    assert "changed on disk" in said[0].getMessage()


def test_a_damaged_slide_that_has_not_changed_is_one_line_per_read_not_a_traceback(
        tmp_path, caplog):
    """Tiles of a slide whose stored data does not decode (damaged before the server started)
    answered 500 'internal error' and logged a traceback for every request."""
    path = damaged_tiff(tmp_path / "s.tiff")
    _tiles_fail(path, (6, 8, 8))  # the native (level 0) and an SR tile, twice
    said = [r for r in caplog.records if r.levelname == "ERROR"]
    assert said and all(r.exc_info is None for r in said)
    assert all("cannot read" in r.getMessage() for r in said)


def _tiles_fail(path, levels, *, then=lambda: None):
    """Serve ``path``, call ``then`` (the file changing under the server), and check that
    tile 0_0 of each of ``levels`` answers 500 'could not be rendered'."""
    catalog = SlideCatalog.open([path])
    app = create_app(catalog, tiny_upscaler(), cache=CacheSettings(disk_dir=None))
    try:
        with ServerThread(app) as url:
            then()
            for level in levels:
                status, _, body = raw_request(url, f"/slides/{catalog.ids()[0]}/"
                                                   f"sr_files/{level}/0_0.jpeg")
                assert status == 500 and b"could not be rendered" in body
    finally:
        catalog.close()


# --- item 10: bodies ------------------------------------------------------------------------
def test_a_huge_declared_body_is_refused_before_it_is_read(server):
    head = request("POST", "/api/view", own(server)).replace(
        b"Content-Length: 0", f"Content-Length: {2 ** 30}".encode())
    status, headers, body = exchange(server, head + b"{" * 1000)  # 1 GiB announced, 1 KB sent
    assert_one_line_error(status, body, 413)
    assert headers.get("connection") == "close"


def test_a_streamed_body_is_cut_off_past_the_limit(server):
    host, port, _ = server
    head = (f"POST /api/view HTTP/1.1\r\nHost: {own(server)}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"%x\r\n%s\r\n" % (1024, b" " * 1024)
    sent = 0
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(head)
        try:
            for _ in range(16 * 1024):  # up to 16 MB, unless the server stops us first
                s.sendall(chunk)
                sent += 1024
                if sent > 64 * 1024:
                    s.settimeout(0.01)
                    try:
                        if s.recv(1, socket.MSG_PEEK):
                            break
                    except (TimeoutError, BlockingIOError):
                        pass
                    s.settimeout(30)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(30)
        status, _, body = parse_reply(_read_all(s))
    assert_one_line_error(status, body, 413)
    assert sent < 16 * 1024 * 1024


def test_a_stalled_body_times_out(server):
    head = request("POST", "/api/view", own(server)).replace(b"Content-Length: 0",
                                                             b"Content-Length: 100")
    status, _, body = exchange(server, head + b'{"client":')
    assert_one_line_error(status, body, 408)


@pytest.mark.parametrize("length", ["abc", "-1", "1" * 30])
def test_malformed_content_lengths_are_refused(server, length):
    head = request("POST", "/api/view", own(server)).replace(
        b"Content-Length: 0", f"Content-Length: {length}".encode())
    status, _, body = exchange(server, head)
    assert status == 400 and b"Traceback" not in body


# --- item 10: connections that never finish a request --------------------------------------
def wait_closed(socks, seconds: float) -> list:
    """Sockets the server has closed (EOF or reset) within ``seconds``."""
    closed, deadline = [], time.monotonic() + seconds
    pending = list(socks)
    while pending and time.monotonic() < deadline:
        for s in list(pending):
            s.settimeout(0.01)
            try:
                if s.recv(1024) == b"":
                    closed.append(s)
                    pending.remove(s)
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                closed.append(s)
                pending.remove(s)
    return closed


def test_connections_that_send_nothing_are_closed_and_the_page_still_answers(server):
    host, port, _ = server
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(300)]
    try:
        status, _, body = exchange(server, request("GET", "/", own(server)))
        assert status == 200 and b"openseadragon" in body
        assert len(wait_closed(idle, 30)) == len(idle)
    finally:
        for s in idle:
            s.close()


def test_headers_sent_byte_by_byte_do_not_keep_a_connection(server):
    host, port, _ = server
    s = socket.create_connection((host, port), timeout=10)
    stop = threading.Event()

    def drip():
        data = request("GET", "/api/slides", own(server)) * 100
        for i in range(len(data)):
            if stop.is_set():
                return
            try:
                s.send(data[i:i + 1])
            except OSError:
                return
            time.sleep(0.05)

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    try:
        assert wait_closed([s], 30) == [s]  # the header deadline, though bytes kept coming
    finally:
        stop.set()
        s.close()


def test_beyond_the_connection_cap_the_longest_idle_connections_are_closed():
    app = create_app(small_catalog(), tiny_upscaler(), cache=CacheSettings(disk_dir=None))
    limits = ConnectionLimits(header_timeout=60, keep_alive=60, max_connections=32)
    with ServerThread(app, limits=limits) as url:
        parts = urlsplit(url)
        idle = [socket.create_connection((parts.hostname, parts.port), timeout=10)
                for _ in range(100)]
        try:
            status, _, _ = raw_request(url, "/api/slides")
            assert status == 200
            # long before the 60 s header deadline: only the cap can have closed them
            closed = wait_closed(idle, 5)
            assert len(closed) >= 100 - 32
            assert idle[-1] not in closed  # the newest stay
        finally:
            for s in idle:
                s.close()


# --- item 10: abandoned work ----------------------------------------------------------------
def test_a_flood_of_abandoned_requests_is_not_computed(server):
    host, port, producer = server
    gate, rendered = threading.Event(), []
    render = producer._render

    def gated(key, ahead):
        gate.wait(30)
        rendered.append(key)
        return render(key, ahead)

    producer._render = gated
    try:
        flood = []
        for col in range(4):
            for row in range(5):  # 20 bicubic tiles of level 12 (cheap: the I/O threads)
                s = socket.create_connection((host, port), timeout=10)
                s.sendall(request("GET", f"/slides/{SLIDE_ID}/bicubic_files/12/{col}_{row}.jpeg",
                                  own(server)))
                flood.append(s)
        until(lambda: producer.status()["in_flight"] >= 20)
        cancelled = producer.counts["cancelled"]
        for s in flood:
            s.close()
        until(lambda: producer.counts["cancelled"] >= cancelled + 18)
        gate.set()
        status, _, body = exchange(server, request(
            "GET", f"/slides/{SLIDE_ID}/bicubic_files/10/1_0.jpeg", own(server)))
        assert status == 200 and body[:2] == b"\xff\xd8"
        until(lambda: producer.status()["in_flight"] == 0)  # the two on the threads finished
        # the two tiles already on the I/O threads and the fresh one, in the order their
        # threads got to them (one woken late renders after the fresh one); nothing abandoned
        assert sorted(k.level for k in rendered) == [10, 12, 12]
    finally:
        producer._render = render
        gate.set()


# --- item 10: memory of a zoomed-out tile ---------------------------------------------------
class HugeFlatSlide(SlideReader):
    """A single-level 12 000 x 12 000 slide computed on the fly (a colour ramp), recording
    the largest rectangle any read asked for."""

    SIZE = 12_000

    def __init__(self):
        self.largest = 0

    @property
    def level_dimensions(self):
        return [(self.SIZE, self.SIZE)]

    @property
    def level_downsamples(self):
        return [1.0]

    @property
    def mpp(self):
        return (0.25, 0.25)

    def _read_level(self, level, x, y, width, height):
        self.largest = max(self.largest, width * height)
        cols = (np.arange(x, x + width) * 200 // self.SIZE).astype(np.uint8)
        rgb = np.empty((height, width, 3), np.uint8)
        rgb[..., 0] = cols
        rgb[..., 1] = 128
        rgb[..., 2] = 255 - cols
        return rgb


def test_zoomed_out_tiles_of_a_single_level_slide_read_in_bounded_pieces():
    from PIL import Image
    import io

    slide = HugeFlatSlide()
    catalog = SlideCatalog([(SLIDE_ID, serve_slide(slide, "huge"))])
    zoom = catalog.get(SLIDE_ID).zoom
    app = create_app(catalog, tiny_upscaler(), cache=CacheSettings(disk_dir=None))
    with ServerThread(app) as url:
        for level in (0, 8, 11, 12, 13):
            cols, rows = zoom.tile_count(level)
            status, _, body = raw_request(url, f"/slides/{SLIDE_ID}/bicubic_files/{level}/"
                                               f"{cols // 2}_{rows // 2}.jpeg")
            assert status == 200, body
            tile = np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(int)
            assert abs(tile[..., 1].mean() - 128) < 3
            assert (np.diff(tile[..., 0].mean(axis=0)) >= -3).all()  # still the ramp
    # a whole-level read would be 144 M pixels; bands of the overview or of a tile's region
    assert slide.largest <= 5 << 20


# --- item 11: the tile cache is private -----------------------------------------------------
def test_the_disk_cache_is_private_to_its_user(tmp_path):
    root = tmp_path / "tiles"
    root.mkdir(mode=0o755)
    cache = DiskCache(root, 1 << 20)
    cache.put("ab" * 16, b"tile")
    path = root / "ab" / ("ab" * 16 + ".tile")
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_cache_folder_deleted_while_the_server_runs_is_made_private_again(tmp_path):
    # its subfolder was made with mkdir -p: the cache folder came back with the umask's mode
    # (0755), open to every user of the machine, while its tiles stayed 0600
    import os
    import shutil

    root = tmp_path / "tiles"
    cache = DiskCache(root, 1 << 20)
    cache.put("ab" * 16, b"tile")
    shutil.rmtree(root)  # a cleaner of ~/.cache, or the user, while the server runs
    old = os.umask(0o022)
    try:
        cache.put("cd" * 16, b"tile")
    finally:
        os.umask(old)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "cd").stat().st_mode) == 0o700
    assert cache.get("cd" * 16) == b"tile"


def test_an_older_world_readable_cache_is_made_private(tmp_path):
    root = tmp_path / "tiles"
    (root / "cd").mkdir(parents=True, mode=0o755)
    old = root / "cd" / ("cd" * 16 + ".tile")
    old.write_bytes(b"old tile")  # unsealed, as older versions wrote tiles
    old.chmod(0o644)
    cache = DiskCache(root, 1 << 20)
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "cd").stat().st_mode) == 0o700
    assert cache.get("cd" * 16) is None and not old.exists()  # not served: rendered again



def test_a_cache_folder_holding_other_files_is_refused_and_left_as_it_is(tmp_path):
    """--cache-dir naming a shared folder (/tmp, the slides' folder) made it 0700: closed to
    everyone else, /tmp's sticky bit gone, without a word. A folder that holds anything but
    the cache's own folders (and dot files) is refused; an empty one, or a cache, is
    taken."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "slide.svs").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"^tile cache .*shared holds other things than "
                                         r"tiles \('slide.svs'\): give --cache-dir a folder"):
        DiskCache(shared, 1 << 20)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    (tmp_path / "empty").mkdir(mode=0o755)
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"a file browser's")
    DiskCache(tmp_path / "empty", 1 << 20).put("ab" * 16, b"tile")
    assert DiskCache(tmp_path / "empty", 1 << 20).get("ab" * 16) == b"tile"


def test_a_cache_folder_of_another_user_is_refused_as_such(tmp_path, monkeypatch):
    """Another user's private folder cannot be listed: that is not the message to give."""
    import os

    def locked(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", locked)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    with pytest.raises(ValueError, match=r"^tile cache .* belongs to another user"):
        DiskCache(tmp_path, 1 << 20)

def test_user_outputs_keep_the_usual_permissions(tmp_path):
    from iste.files import umask, write_bytes_atomic

    out = write_bytes_atomic(tmp_path / "sr.png", b"x")
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask()


def test_a_cache_folder_that_is_a_file_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "tiles"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        DiskCache(blocker, 1 << 20)


# --- a later hunt: view boxes, nested JSON, path tails, HEAD, cache folder races -----------
def test_a_view_box_of_absurd_numbers_is_refused_and_tiles_still_render(server):
    host = own(server)
    for box in ({"y": 1e308, "height": 1e308}, {"x": -1e300, "width": 1e300}):
        report = json.loads(view_report(client="evil", generation=5))
        report.update(box)
        status, _, body = exchange(server, request("POST", "/api/view", host,
                                                   body=json.dumps(report).encode()))
        assert_one_line_error(status, body, 400)
    nested = b"[" * 2000
    status, _, body = exchange(server, request("POST", "/api/view", host, body=nested))
    assert_one_line_error(status, body, 400)


def test_tiles_of_a_box_far_outside_the_image_are_none():
    from iste.serve.deepzoom import DeepZoom

    zoom = DeepZoom(300, 200)
    top = zoom.level_count - 1
    assert zoom.tiles_in(top, (0.0, 2.0 ** 48, 10.0, 2.0 ** 48)) == []
    assert zoom.tiles_in(top, (-2.0 ** 48, 0.0, 2.0 ** 48 + 10, 10.0)) == [(0, 0)]


@pytest.mark.parametrize("tail", ["sr.dzi%0A", "bicubic_files/8/0_0.jpeg%0A",
                                  "bicubic_files/%EF%BC%98/0_0.jpeg"])
def test_addresses_with_a_newline_or_other_scripts_digits_name_nothing(server, tail):
    status, _, body = exchange(server, request("GET", f"/slides/{SLIDE_ID}/{tail}", own(server)))
    assert status in (400, 404), body


@pytest.mark.parametrize("path", ["/", "/api/slides", "/api/status", f"/slides/{SLIDE_ID}/sr.dzi",
                                  f"/slides/{SLIDE_ID}/bicubic_files/8/0_0.jpeg"])
def test_head_is_answered_wherever_get_is(server, path):
    status, headers, body = exchange(server, request("HEAD", path, own(server)), timeout=10)
    assert status == 200 and body == b""



@pytest.mark.parametrize("method, path, allowed", [
    ("DELETE", "/api/slides", "GET, HEAD"), ("GET", "/api/view", "POST"),
    ("OPTIONS", f"/slides/{SLIDE_ID}/sr.dzi", "GET, HEAD"),
    ("POST", "/static/index.html", "GET, HEAD")])
def test_a_method_not_allowed_names_the_allowed_ones(server, method, path, allowed):
    """HTTP requires a 405 to say which methods are allowed (Allow); it was left out."""
    status, headers, body = exchange(server, request(method, path, own(server)), timeout=10)
    assert status == 405 and json.loads(body) == {"error": "method not allowed"}
    assert set(headers["allow"].split(", ")) == set(allowed.split(", "))

def test_a_static_file_names_its_methods_on_a_405_whatever_starlette_says(server, monkeypatch):
    # the Starlette releases fastapi >= 0.110 accepts (0.36 ...) said a static file's 405
    # without Allow: the page's files answered what the API's routes did not
    from starlette.exceptions import HTTPException
    from starlette.staticfiles import StaticFiles

    async def as_starlette_0_36(self, path, scope):
        raise HTTPException(status_code=405)

    monkeypatch.setattr(StaticFiles, "get_response", as_starlette_0_36)
    status, headers, body = exchange(server, request("POST", "/static/viewer.js", own(server)))
    assert status == 405 and json.loads(body) == {"error": "method not allowed"}
    assert headers["allow"] == "GET, HEAD"


def test_a_max_scale_that_adds_no_pixel_is_refused():
    from iste.serve.deepzoom import DeepZoom

    with pytest.raises(ValueError, match="adds no pixel"):
        DeepZoom(2220, 2967, max_scale=1.0001)
    assert DeepZoom(2220, 2967, max_scale=1.01).first_sr_level >= 0


@pytest.mark.parametrize("sizes", [{"memory_mb": float("inf")}, {"disk_mb": float("nan")}])
def test_cache_sizes_must_be_finite(sizes):
    with pytest.raises(ValueError, match="finite"):
        CacheSettings(**sizes)


def test_a_second_server_on_the_cache_folder_keeps_the_first_ones_writes(tmp_path):
    import os

    first = DiskCache(tmp_path, 1 << 20)
    first.put("ab" * 8, b"tile")
    live_tmp = tmp_path / "ab" / ".abababababababab.tile.x1.tmp"  # being written now
    live_tmp.write_bytes(b"half")
    old_tmp = tmp_path / "ab" / ".cdcdcdcdcdcdcdcd.tile.x2.tmp"  # a killed write
    old_tmp.write_bytes(b"half")
    os.utime(old_tmp, (time.time() - 3600,) * 2)
    os.mkfifo(tmp_path / "ab" / ("ef" * 8 + ".tile"))
    second = DiskCache(tmp_path, 1 << 20)
    assert live_tmp.exists() and not old_tmp.exists()
    assert second.get("ab" * 8) == b"tile" and len(second) == 1  # the FIFO is not adopted


def test_cache_temporaries_are_removed_by_their_writer_as_other_temporaries_are(tmp_path):
    """A temporary whose writer (named in it: iste.files' writer tag) no longer runs on this
    system is removed at the next open at once, not 10 minutes later; a live writer's never,
    however old; one whose writer cannot be told (another machine's) after 10 minutes."""
    import subprocess

    from iste import temps

    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its id is free
    pid, host = os.getpid(), temps._host_id()
    tag = {"alive": f"{pid}-{temps._start_time(pid)}-{host}", "dead": f"{dead.pid}-1-{host}",
           "elsewhere": f"{dead.pid}-1-0badf00d"}
    (tmp_path / "ab").mkdir(mode=0o700)
    made = {}
    for writer, age in [("dead", 0), ("alive", 3600), ("elsewhere", 0), ("elsewhere", 3600)]:
        path = tmp_path / "ab" / f".{'ab' * 8}.tile.r{len(made)}.{tag[writer]}.tmp"
        path.write_bytes(b"half")
        os.utime(path, (time.time() - age,) * 2)
        made[writer, age] = path
    DiskCache(tmp_path, 1 << 20)
    kept = {key for key, path in made.items() if path.exists()}
    assert kept == {("alive", 3600), ("elsewhere", 0)}


def test_a_fifo_in_place_of_a_cached_tile_is_refused_without_blocking(tmp_path):
    import os

    cache = DiskCache(tmp_path, 1 << 20)
    cache.put("ab" * 8, b"tile")
    path = tmp_path / "ab" / ("ab" * 8 + ".tile")
    path.unlink()
    os.mkfifo(path)
    done = []
    reader = threading.Thread(target=lambda: done.append(cache.get("ab" * 8)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert done == [None] and len(cache) == 0


def test_a_slide_narrower_than_the_model_reads_gets_bicubic_sr_tiles(tmp_path, caplog):
    """A slide 1 pixel wide: ISTE's LFI needs 2 x 2 LR pixels, so every SR tile answered 500
    with a traceback in the server log. They are the bicubic tiles now, said once."""
    import tifffile

    from iste.engine.render import QueryOptions
    from iste.serve.pixels import Upscaler
    from slide_data import he_image

    path = tmp_path / "thin.tiff"
    tifffile.imwrite(path, np.ascontiguousarray(he_image()[:300, :1]), tile=(64, 64),
                     photometric="rgb", metadata=None)
    catalog = SlideCatalog.open([path])
    upscaler = Upscaler.for_model(tiny_upscaler().model, name="tiny", options=QueryOptions())
    app = create_app(catalog, upscaler, cache=CacheSettings(disk_dir=None))
    try:
        with caplog.at_level("WARNING", logger="iste.serve"), ServerThread(app) as url:
            for level in (10, 11):
                status, _, body = raw_request(url, f"/slides/{catalog.ids()[0]}/sr_files/"
                                                   f"{level}/0_0.jpeg")
                assert status == 200 and body[:2] == b"\xff\xd8"
            status = json.loads(raw_request(url, "/api/status")[2])
    finally:
        catalog.close()
    assert status["errors"] == 0 and status["rendered_model"] == 0
    said = [r.getMessage() for r in caplog.records if r.name.startswith("iste")]
    assert said == [f"{path} is 1 x 300 px, under the 2 x 2 its model reads: its SR tiles "
                    "are bicubic"]


def test_a_slide_that_cannot_be_served_is_skipped_as_an_unreadable_one_is(tmp_path):
    """A 1 x 1 px slide beside others at --max-scale 1.2 (no level of it would be super-
    resolved) stopped the server: no slide was served. It is skipped with a warning; alone,
    it is still the one-line error."""
    import warnings

    import tifffile

    from slide_data import he_image

    one, other = tmp_path / "one.tiff", _tiff_slide(tmp_path / "ok.tiff")
    tifffile.imwrite(one, np.ascontiguousarray(he_image()[:1, :1]), photometric="rgb",
                     metadata=None)
    with pytest.warns(UserWarning, match=r"skipping one\.tiff: max scale x1\.2 adds no pixel"):
        catalog = SlideCatalog.open([one, other], max_scale=1.2)
    try:
        assert [source for _, source in catalog.sources()] == [str(other)]
    finally:
        catalog.close()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no slide could be opened: "
                                                                    "max scale x1.2"):
        SlideCatalog.open([one], max_scale=1.2)
    with warnings.catch_warnings():  # an option of the whole server: refused, none skipped
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"^max scale must be > 1 and <= 8, got 9"):
            SlideCatalog.open([one, other], max_scale=9)


def test_a_tile_cache_that_cannot_be_made_on_a_full_disk_serves_tiles_uncached(
        tmp_path, monkeypatch, caplog):
    """A cache folder the full disk cannot hold stopped the server before it started ('cannot
    create the tile cache ... (No space left on device)'), while a disk that fills once it
    runs only stops tiles being kept: now the same, said once at the start."""
    import errno

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pathlib.Path.mkdir", full)
    catalog = small_catalog()
    app = create_app(catalog, tiny_upscaler(), cache=CacheSettings(disk_dir=tmp_path / "c"))
    monkeypatch.undo()
    with ServerThread(app) as url:
        status, _, body = raw_request(url, f"/slides/{SLIDE_ID}/sr_files/8/0_0.jpeg")
    assert status == 200 and body.startswith(b"\xff\xd8")
    said = [r.getMessage() for r in caplog.records if "served but not cached" in r.getMessage()]
    assert said == [f"cannot create the tile cache {tmp_path / 'c'}: no space left on device; "
                    "tiles are served but not cached"]
    assert not (tmp_path / "c").exists()
