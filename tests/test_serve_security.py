"""The viewer serves only the slides it was given: traversal and unknown ids get 404,
malformed requests 400, failures a one-line 500; never a stack trace or a server path."""

import asyncio
import json
import socket

import numpy as np
import pytest

from iste.serve.catalog import SlideCatalog, serve_slide, slide_id_for
from iste.serve.runner import ServerThread, bind
from iste.slides.reader import InMemorySlide
from iste.slides.formats import open_slide
from serve_helpers import get_json, raw_request, small_app
from slide_data import pyramid_tiff

BROKEN_ID = "fedcba9876543210"


class BrokenSlide(InMemorySlide):
    def _read_level(self, level, x, y, width, height):
        raise RuntimeError("disk failure reading /very/secret/location.svs")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = pyramid_tiff(tmp_path_factory)
    slide_id = slide_id_for(path)
    broken = BrokenSlide(np.zeros((40, 60, 3), np.uint8), mpp=0.5)
    catalog = SlideCatalog([(slide_id, serve_slide(open_slide(path), "Slide A")),
                            (BROKEN_ID, serve_slide(broken, "broken.svs"))])
    bodies = []
    with ServerThread(small_app(catalog)) as url:
        yield url, slide_id, path, bodies
    catalog.close()
    for body in bodies:  # every response any test saw
        assert b"Traceback" not in body and b'File "' not in body
        assert str(path.parent).encode() not in body and b"/very/secret" not in body


def request(served, path, **kw):
    url, _, _, bodies = served
    status, headers, body = raw_request(url, path, **kw)
    bodies.append(body)
    return status, headers, body


TRAVERSALS = [
    "/static/../../../pyproject.toml",
    "/static/%2e%2e/%2e%2e/app.py",
    "/static/..%2f..%2fapp.py",
    "/static//etc/passwd",
    "/static/vendor/../../../../../../etc/passwd",
    "/slides/../../etc/passwd",
    "/slides/%2e%2e%2f%2e%2e%2fetc%2fpasswd/sr.dzi",
    "/slides/{id}/../../../pyproject.toml",
    "/slides/{id}/sr_files/../../../../pyproject.toml",
    "/slides/{id}/sr_files/%2e%2e/%2e%2e/app.py",
    "/slides/{id}/sr_files/9/..%5c..%5capp.py",
    "/slides/{id}/./sr.dzi",
    "/%2e%2e/%2e%2e/etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_not_found(served, path):
    status, _, body = request(served, path.format(id=served[1]))
    assert status == 404, body
    assert json.loads(body) == {"error": "not found"} or b"error" in body
    assert b"[project]" not in body and b"root:" not in body


@pytest.mark.parametrize("slide", ["ffffffffffffffff", "0123456789ABCDEF", "pyramid.tiff",
                                   "pyramid", "..", "%00", "a" * 300])
def test_unknown_slide_ids_are_not_found(served, slide):
    for rest in ("sr.dzi", "sr_files/0/0_0.jpeg"):
        status, _, body = request(served, f"/slides/{slide}/{rest}")
        assert status == 404 and json.loads(body) == {"error": "unknown slide"}


@pytest.mark.parametrize("rest", [
    "sr_files/x/0_0.jpeg", "sr_files/9/0-0.jpeg", "sr_files/9/0_0.png", "sr_files/9/0_0",
    "sr_files/9/0_0.jpeg.jpeg", "sr_files/-1/0_0.jpeg", "sr_files/9/1e3_0.jpeg",
    "sr_files/9/00000000000000000001_0.jpeg", "bicubic_files/9", "sr_files/9/0_0.jpeg/x",
    "sr_files/9/0_0.jpeg?client=%3Cscript%3E",
])
def test_malformed_tile_requests_are_bad_requests(served, rest):
    status, _, body = request(served, f"/slides/{served[1]}/{rest}")
    assert status == 400, body
    assert list(json.loads(body)) == ["error"] and "\n" not in json.loads(body)["error"]


@pytest.mark.parametrize("rest", ["sr_files/99/0_0.jpeg", "sr_files/8/99_0.jpeg",
                                  "sr_files/8/0_99.jpeg", "hr.dzi", "sr.xml", "info"])
def test_well_formed_but_absent_resources_are_not_found(served, rest):
    status, _, _ = request(served, f"/slides/{served[1]}/{rest}")
    assert status == 404


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/slides/"), ("HEAD", "/api/status/"), ("POST", "/api/view/"),
    ("GET", "/static"), ("GET", "/static/viewer.js/"), ("GET", "/static/./viewer.js"),
    ("GET", "/static/vendor/../viewer.js"), ("GET", "/slides/{id}"),
    ("GET", "/slides/{id}/sr.dzi/"),
])
def test_near_miss_paths_are_not_found_never_redirected(served, method, path):
    # were 307 to the path without (or with) the slash, or served normalised (/static/...)
    status, headers, body = request(served, path.format(id=served[1]), method=method,
                                    body=b"{}" if method == "POST" else None)
    assert status == 404 and "location" not in headers, (status, headers)
    assert method == "HEAD" or json.loads(body) == {"error": "not found"}
    for plain in ("/api/slides", "/static/viewer.js", f"/slides/{served[1]}/sr.dzi"):
        assert request(served, plain)[0] == 200


@pytest.mark.parametrize("body", [
    b"{not json", b"[]", b'"x"', b"{}", b"\xff\xfe",
    json.dumps({"client": "a", "generation": -1, "slide": "s", "level": 1, "x": 0, "y": 0,
                "width": 1, "height": 1}).encode(),
    json.dumps({"client": "a b", "generation": 1, "slide": "s", "level": 1, "x": 0, "y": 0,
                "width": 1, "height": 1}).encode(),
    json.dumps({"client": "a", "generation": 1, "slide": "s", "level": 1, "x": "0", "y": 0,
                "width": 1, "height": 1, "extra": 1}).encode(),
    b'{"client": "a", "generation": 1, "slide": "s", "level": 1, "x": NaN, "y": 0, '
    b'"width": 1, "height": 1}',
])
def test_malformed_view_reports_are_bad_requests(served, body):
    status, _, reply = request(served, "/api/view", method="POST", body=body)
    assert status == 400, reply


def test_a_view_of_an_unknown_slide_is_not_found_and_a_good_one_is_accepted(served):
    view = {"client": "abc", "generation": 1, "slide": "ffffffffffffffff", "level": 9,
            "x": 0, "y": 0, "width": 100, "height": 100}
    status, _, _ = request(served, "/api/view", method="POST", body=json.dumps(view).encode())
    assert status == 404
    view["slide"] = served[1]
    body = json.dumps(view).encode()
    status, _, body = request(served, "/api/view", method="POST", body=body)
    assert status == 200 and json.loads(body) == {"cancelled": 0}


def test_a_view_report_over_4_kb_is_too_large(served):
    status, _, reply = request(served, "/api/view", method="POST",
                               body=b"{" + b" " * 10000 + b"}")
    assert status == 413 and json.loads(reply) == {"error": "request body over 4096 bytes"}


def test_only_the_given_slides_are_listed_under_opaque_ids(served):
    url, slide_id, path, _ = served
    listing = get_json(url, "/api/slides")
    assert [s["id"] for s in listing["slides"]] == [slide_id, BROKEN_ID]
    assert listing["slides"][0]["name"] == "Slide A" and path.stem not in slide_id
    assert str(path.parent) not in json.dumps(listing)
    status, _, body = request(served, f"/slides/{slide_id}/sr.dzi")
    assert status == 200 and b"<Image" in body


def test_a_failing_slide_gives_a_one_line_server_error(served):
    # level 6 is the broken slide's native level
    status, _, body = request(served, f"/slides/{BROKEN_ID}/bicubic_files/6/0_0.jpeg")
    assert status == 500
    assert json.loads(body) == {
        "error": "tile 6/0_0 of scan could not be rendered (details in the server log)"}


def test_methods_and_unknown_routes(served):
    assert request(served, "/api/slides", method="DELETE")[0] == 405
    assert request(served, "/api/view")[0] == 405
    assert request(served, "/docs")[0] == 404 and request(served, "/openapi.json")[0] == 404


def test_the_page_forbids_scripts_from_elsewhere(served):
    status, headers, body = request(served, "/")
    assert status == 200 and b"openseadragon.min.js" in body
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


def test_accepted_connections_send_replies_without_waiting_for_delayed_acks():
    # Regression: a listening socket made without IPPROTO_TCP left TCP_NODELAY off on the
    # connections asyncio accepts from it (as uvicorn does), so every reply, headers and body
    # written separately, waited ~40 ms for the client's delayed ACK.
    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        accepted = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await loop.create_server(Probe, sock=bind("127.0.0.1", 0))
        host, port = server.sockets[0].getsockname()[:2]
        _, writer = await asyncio.open_connection(host, port)
        try:
            return await asyncio.wait_for(accepted, 30)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(accepted_nodelay()) != 0
