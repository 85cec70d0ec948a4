"""Cancellation through HTTP: a client that hangs up, and a view report that moves on, drop
queued super-resolution tiles before the model computes them."""

import json
import socket
import threading
from urllib.parse import urlsplit

import pytest

from iste.serve.runner import ServerThread
from serve_helpers import SLIDE_ID, raw_request, small_app, until

SR_LEVEL = 10  # the first super-resolved level of the 300 x 200 test slide


@pytest.fixture()
def gated():
    """A server whose model worker waits for ``gate`` and records what it renders."""
    app = small_app()
    producer = app.state.producer
    gate, rendered = threading.Event(), []
    render = producer._render

    def gated_render(key, ahead):
        if key.kind == "sr":
            gate.wait(30)
            rendered.append(key)
        return render(key, ahead)

    producer._render = gated_render
    with ServerThread(app) as url:
        yield url, gate, rendered, producer
    gate.set()


def tile(col: int, client: str = "") -> str:
    query = f"?client={client}" if client else ""
    return f"/slides/{SLIDE_ID}/sr_files/{SR_LEVEL}/{col}_0.jpeg{query}"


def in_background(url, path, results, **kw):
    t = threading.Thread(target=lambda: results.append(raw_request(url, path, **kw)), daemon=True)
    t.start()
    return t


def test_a_client_that_hangs_up_cancels_its_queued_tile(gated):
    url, gate, rendered, producer = gated
    first: list = []
    in_background(url, tile(0), first)  # occupies the model worker (held at the gate)
    until(lambda: producer.status()["in_flight"] == 1 and producer.status()["model_queue"] == 0)
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port)) as s:
        s.sendall(f"GET {tile(1)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        until(lambda: producer.status()["model_queue"] == 1)
    until(lambda: producer.status().get("cancelled", 0) == 1)  # noticed the hang-up
    gate.set()
    until(lambda: first)
    assert first[0][0] == 200
    until(lambda: producer.status()["in_flight"] == 0)  # anything left to render is done
    assert [k.col for k in rendered] == [0] and producer.status()["disconnected"] == 1


def test_a_view_report_cancels_queued_tiles_outside_the_view(gated):
    url, gate, rendered, producer = gated
    busy: list = []
    in_background(url, tile(0), busy)
    until(lambda: producer.status()["in_flight"] == 1 and producer.status()["model_queue"] == 0)
    stale: list = []
    in_background(url, tile(2, client="viewer1"), stale)
    until(lambda: producer.status()["model_queue"] == 1)
    view = {"client": "viewer1", "generation": 1, "slide": SLIDE_ID, "level": 0,
            "x": 0, "y": 0, "width": 10, "height": 10}  # zoomed out: no SR wanted
    status, _, body = raw_request(url, "/api/view", method="POST",
                                  body=json.dumps(view).encode())
    assert status == 200 and json.loads(body) == {"cancelled": 1}
    until(lambda: stale)
    code, headers, body = stale[0]
    assert code == 503 and headers["retry-after"] == "1"
    assert json.loads(body) == {"error": "no longer in view"}
    gate.set()
    until(lambda: busy)
    until(lambda: producer.status()["in_flight"] == 0)  # anything left to render is done
    assert [k.col for k in rendered] == [0]


def record_tiles_ahead(served) -> dict:
    """{(kind, col, row): the tiles ``served`` was told are ahead} of each tile it renders."""
    told = {}
    render = served.render

    def recording(kind, level, col, row, upscaler=None, ahead=()):
        told[(kind, col, row)] = list(ahead)
        return render(kind, level, col, row, upscaler, ahead=ahead)

    served.render = recording
    return told


def test_a_model_tile_is_told_the_tiles_of_the_reported_view_nearest_first():
    """Browsers ask for a few tiles at a time, so the view report names the rest of the
    view: a model tile's encoding may cover them (iste.engine.shared)."""
    app = small_app()
    served = app.state.catalog.get(SLIDE_ID)
    told = record_tiles_ahead(served)
    view = {"client": "viewer1", "generation": 1, "slide": SLIDE_ID, "level": SR_LEVEL,
            "x": 0, "y": 0, "width": 2400, "height": 1600}  # the whole first SR level
    cols, rows = served.zoom.tile_count(SR_LEVEL)
    with ServerThread(app) as url:
        status, _, _ = raw_request(url, "/api/view", method="POST", body=json.dumps(view).encode())
        assert status == 200
        assert raw_request(url, tile(0))[0] == 200
        assert raw_request(url, tile(1))[0] == 200
    sr = [(c, r) for r in range(rows) for c in range(cols)
          if served.kind_of(SR_LEVEL, "sr", c, r, app.state.upscaler) == "sr"]
    first = told[("sr", 0, 0)]
    assert sorted(first) == sorted(set(sr) - {(0, 0)}) and len(first) >= 2
    distance = [c * c + r * r for c, r in first]
    assert distance == sorted(distance)  # nearest first
    assert (0, 0) not in told[("sr", 1, 0)]  # made already: not ahead any more
    assert (1, 0) not in told[("sr", 1, 0)]


def test_views_at_scan_levels_or_past_the_pyramid_are_not_kept():
    app = small_app()
    with ServerThread(app) as url:
        for level in (0, 99):
            view = {"client": "c", "generation": level + 1, "slide": SLIDE_ID, "level": level,
                    "x": 0, "y": 0, "width": 10, "height": 10}
            assert raw_request(url, "/api/view", method="POST",
                               body=json.dumps(view).encode())[0] == 200
    assert app.state.views.at(SLIDE_ID, 0) == [] and app.state.views.at(SLIDE_ID, 99) == []


def test_two_clients_at_one_level_each_have_their_view_and_a_tile_gets_its_own_views():
    """Two viewers of one slide at one level, far apart: each tile is told the tiles of the
    view that shows it (one view per level for all clients took the latest report's)."""
    app = small_app()
    served = app.state.catalog.get(SLIDE_ID)
    told = record_tiles_ahead(served)
    level, t = SR_LEVEL + 1, served.zoom.tile  # 1200 x 800 px: 5 x 4 tiles
    cols, _ = served.zoom.tile_count(level)
    top = served.zoom.full_size[0] / served.zoom.level_size(level)[0]  # 2: boxes are top px
    assert cols == 5 and top == 2
    views = [{"client": client, "generation": 1, "slide": SLIDE_ID, "level": level,
              "x": x * top, "y": 0, "width": w * top, "height": 1600}
             for client, x, w in (("left", 0, 2 * t - 8), ("right", 3 * t + 8, 2 * t - 16))]
    with ServerThread(app) as url:
        for view in views:  # the right-hand viewer reports last
            assert raw_request(url, "/api/view", method="POST",
                               body=json.dumps(view).encode())[0] == 200
        for col in (0, cols - 1):
            path = f"/slides/{SLIDE_ID}/sr_files/{level}/{col}_0.jpeg"
            assert raw_request(url, path)[0] == 200
    assert [v.client for v in app.state.views.at(SLIDE_ID, level)] == ["right", "left"]
    left, right = told[("sr", 0, 0)], told[("sr", cols - 1, 0)]
    assert left and all(c < 2 for c, _ in left)
    assert right and all(c >= 3 for c, _ in right)
