"""End to end: ``iste serve`` on a small pyramidal TIFF (a damaged one, a tiny one) with a tiny
model, driven in Debian's headless Chromium by Playwright: load the viewer, zoom past the scan's
resolution with the mouse wheel, wait for the super-resolved tiles, look at the screenshot;
the view reported after each movement; a slide whose tiles fail says so."""

import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from model_zoo import tiny_config
from slide_data import damaged_tiff, he_image, pyramid_tiff

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 480, "height": 320}

# CI installs Chromium (.ci/run) and must run this test; elsewhere it is skipped without it.
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                reason=f"Debian's chromium is not installed at {CHROMIUM} "
                                       "(apt-get install chromium)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``iste serve`` in a subprocess on a free loopback port, on the small pyramid (Slide 1,
    shown first), a damaged slide (Slide 2) and a small sound one (Slide 3, 128 x 128: its
    home view is past the scan's resolution); yields its URL."""
    tmp = tmp_path_factory.mktemp("serve")
    model = tmp / "tiny.safetensors"
    save_model(build_model(tiny_config("iste")), model)
    small = tmp / "small.tiff"
    tifffile.imwrite(small, he_image()[:128, :128], tile=(64, 64), photometric="rgb",
                     compression="zlib", metadata=None)
    cmd = [sys.executable, "-m", "iste", "serve", str(pyramid_tiff(tmp_path_factory)),
           str(damaged_tiff(tmp / "damaged.tiff")), str(small), "--model", str(model),
           "--port", "0",
           "--cache-dir", str(tmp / "cache"), "--threads", "1", "--stf-keys", "64"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    found: list[str] = []
    log: list[str] = []

    def read():
        for line in proc.stderr:
            log.append(line)
            m = re.search(r"serving 3 slide\(s\) at (http://127\.0\.0\.1:\d+/)", line)
            if m:
                found.append(m.group(1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for _ in range(1200):
            if found or proc.poll() is not None:
                break
            threading.Event().wait(0.05)
        assert found, "iste serve did not start:\n" + "".join(log)
        yield found[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not any("Traceback" in line for line in log), "".join(log)


@pytest.fixture()
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport=VIEWPORT)
        try:
            yield ctx.pages[0] if ctx.pages else ctx.new_page()
        finally:
            ctx.close()


def shot(page, path: Path) -> np.ndarray:
    png = page.locator("#viewer").screenshot(path=str(path))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_zooming_past_native_resolution_shows_super_resolved_tiles(server, page, tmp_path):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    page.wait_for_function("() => window.iste && window.iste.ready", timeout=60_000)
    page.wait_for_function("() => window.iste.bicubic.getFullyLoaded()", timeout=60_000)
    home = shot(page, tmp_path / "home.png")
    assert home.std(axis=(0, 1)).mean() > 15, "the slide at home zoom looks blank"
    assert page.evaluate("() => window.iste.cssPerScanPixel") < 1

    box = page.locator("#viewer").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(12):  # OpenSeadragon zooms x1.2 per wheel step; stop past x1.5
        page.mouse.wheel(0, -100)
        page.wait_for_timeout(300)
        if page.evaluate("() => window.iste.cssPerScanPixel") > 1.5:
            break
    page.wait_for_function(
        "() => window.iste.cssPerScanPixel > 1.42 && window.iste.srVisible"
        " && window.iste.srLoaded > 0 && window.iste.srFullyLoaded", timeout=120_000)
    state = page.evaluate("() => ({level: iste.srLevel, first: iste.slide.first_sr_level, "
                          "id: iste.slide.id, zoom: iste.cssPerScanPixel})")
    assert state["level"] >= state["first"]
    sr = shot(page, tmp_path / "sr.png")
    # the drawn picture is the model's: compare with an SR tile fetched directly
    url = f"{server}slides/{state['id']}/sr_files/{state['level']}/0_0.jpeg"
    with urllib.request.urlopen(url, timeout=60) as reply:
        tile = np.asarray(Image.open(io.BytesIO(reply.read())).convert("RGB")).astype(int)
    h, w = sr.shape[:2]
    centre = sr[h // 3:2 * h // 3, w // 3:2 * w // 3]
    assert np.abs(np.median(centre, axis=(0, 1)) - np.median(tile, axis=(0, 1))).max() < 12
    assert np.abs(centre.mean(axis=(0, 1)) - 242).max() > 30, "the viewer area is blank"
    status = page.text_content("#status")
    assert status.startswith("super-resolved x2.00") and "iste/edsr-baseline" in status
    assert "tiny.safetensors" not in page.content()  # no file names reach the page
    # read together: the zoom may still be settling since `state` was taken
    mag_text, zoom = page.evaluate("() => [document.getElementById('mag').textContent, "
                                   "window.iste.cssPerScanPixel]")
    mag = float(re.match(r"([\d.]+)x", mag_text).group(1))
    assert mag == pytest.approx(20 * zoom, rel=0.02)  # 0.5 um/px: a 20x scan
    assert re.fullmatch(r"\d+ µm", page.text_content("#scalebar .text"))

    page.click("button[data-mode=swipe]")  # bicubic on the left, SR on the right
    page.wait_for_timeout(500)
    page.wait_for_function("() => window.iste.srFullyLoaded", timeout=120_000)
    swipe = shot(page, tmp_path / "swipe.png")
    left = swipe[h // 5:4 * h // 5, w // 20:9 * w // 20]
    right = swipe[h // 5:4 * h // 5, 11 * w // 20:w * 3 // 4]  # clear of the minimap
    assert left.std(axis=(0, 1)).mean() > 15, "the bicubic side looks blank"
    assert np.abs(np.median(right, axis=(0, 1)) - np.median(tile, axis=(0, 1))).max() < 12
    # no GPU here: WebGL would run on the CPU (SwiftShader), so the viewer draws on a canvas
    assert page.evaluate("() => iste.viewer.drawer.getType()") == "canvas"
    assert not errors, errors


def _view_reports(page) -> list[dict]:
    reports: list[dict] = []
    page.on("request", lambda r: reports.append(json.loads(r.post_data))
            if r.url.endswith("/api/view") else None)
    return reports


def test_every_movement_is_reported_to_the_server(server, page):
    """The page reports its view when a movement ends (OpenSeadragon's animation-finish), so
    the server can drop SR tiles nobody looks at and encode the view's tiles together. The
    page set the SR image's clip on every redraw, and a clip set redraws: it drew the view
    60 times a second for good, the animation never finished, and the server heard of the
    first view only."""
    reports = _view_reports(page)
    page.goto(server)
    page.wait_for_function("() => window.iste && window.iste.ready", timeout=60_000)
    box = page.locator("#viewer").bounding_box()
    for mode in ("sr", "swipe"):  # swipe mode clips the SR image to the divider's right
        page.click(f"button[data-mode={mode}]")
        page.mouse.move(box["x"] + box["width"] / 4, box["y"] + box["height"] / 2)
        before = page.evaluate("() => window.iste.generation")
        with page.expect_request(lambda r: r.url.endswith("/api/view"), timeout=30_000):
            page.mouse.wheel(0, -100)
        page.wait_for_function(f"() => window.iste.generation > {before}", timeout=30_000)
        for _ in range(150):  # the zoom may bounce (constraints): each end is a report
            shown = page.evaluate(_SHOWN)
            if _box(reports[-1]) == pytest.approx(shown, rel=1e-6, abs=1e-6):
                break
            page.wait_for_timeout(200)
        assert _box(reports[-1]) == pytest.approx(shown, rel=1e-6, abs=1e-6), \
            f"the server was told {_box(reports[-1])}, the page shows {shown}"


_SHOWN = ("() => { const r = window.iste.sr.viewportToImageRectangle("
          "window.iste.viewer.viewport.getBounds(true)); return [r.x, r.y, r.width, r.height]; }")


def _box(report: dict) -> list[float]:
    return [report[k] for k in ("x", "y", "width", "height")]


def test_a_slide_whose_tiles_fail_says_so(server, page):
    """A damaged slide's tiles all fail (500): the page showed an empty view under 'super-
    resolved x2.00', as OpenSeadragon counts a failed tile as done. Now each failed tile is
    asked for again (a few times), then the status counts the tiles that could not be shown
    and a banner gives the server's one-line reason."""
    with urllib.request.urlopen(f"{server}api/slides", timeout=30) as reply:
        damaged = json.loads(reply.read())["slides"][1]["id"]
    page.goto(f"{server}#slide={damaged}")
    page.wait_for_function("() => window.iste && window.iste.ready && window.iste.srVisible"
                           " && window.iste.srFullyLoaded && !document.getElementById("
                           "'status').classList.contains('busy')", timeout=60_000)
    status = page.text_content("#status")
    assert "super-resolved" not in status and re.fullmatch(r"\d+ tiles? could not be shown",
                                                           status), status
    banner = page.locator("#tile-error")
    banner.wait_for(state="visible", timeout=30_000)
    assert "could not be rendered" in banner.text_content()
    assert "damaged.tiff" not in page.content()



_COUNT_DRAWS = """() => new Promise(done => {
  let draws = 0, frames = 0;
  const count = () => draws++;
  iste.viewer.addHandler("update-viewport", count);  // raised by each draw of the view
  const frame = () => {
    if (++frames < 120) { requestAnimationFrame(frame); return; }
    iste.viewer.removeHandler("update-viewport", count);
    done({draws, frames});
  };
  requestAnimationFrame(frame);
})"""


def test_a_view_with_nothing_to_draw_is_not_redrawn_at_every_frame(server, page):
    """OpenSeadragon redraws an image that is shown but has drawn no tile at every frame: the
    damaged slide, its tiles given up on, was drawn 60 times a second while nothing moved
    (so was a view panned off a slide)."""
    with urllib.request.urlopen(f"{server}api/slides", timeout=30) as reply:
        damaged = json.loads(reply.read())["slides"][1]["id"]
    page.goto(f"{server}#slide={damaged}")
    page.wait_for_function("() => window.iste && window.iste.ready && window.iste.failedTiles"
                           " && !document.getElementById('status').classList.contains('busy')",
                           timeout=60_000)
    page.locator("#tile-error").wait_for(state="visible", timeout=30_000)
    counted = page.evaluate(_COUNT_DRAWS)  # 120 frames of an idle page
    assert counted["draws"] <= counted["frames"] // 10, counted  # was one draw a frame


def test_an_address_of_a_slide_no_longer_served_says_so(server, page):
    """A bookmark of a slide whose file was since moved, copied or changed (a new id): the
    page showed the first slide as if it were the bookmarked one."""
    page.goto(f"{server}#slide=ffffffffffffffff")
    page.wait_for_function("() => window.iste && window.iste.ready", timeout=60_000)
    notice = page.locator("#notice")
    assert notice.is_visible() and "not served now" in notice.text_content()
    assert page.evaluate("() => iste.slide.id === iste.slides[0].id")
    page.select_option("#slide", page.evaluate("() => iste.slides[1].id"))
    assert not notice.is_visible()
    page.goto(server)  # no slide named: no notice
    page.wait_for_function("() => window.iste && window.iste.ready", timeout=60_000)
    assert not page.locator("#notice").is_visible()


def test_the_super_resolved_layer_is_drawn_after_switching_slides(server, page):
    """Switching slides while zoomed past the scan's resolution into a view that is past it
    too (the damaged slide's home): the new SR image came with opacity 0 and the page, which
    sets it only when SR visibility changes, left it so. The bicubic image showed under the
    status 'super-resolved', and once the page stopped redrawing for ever its status said
    'super-resolving' for good."""
    page.goto(server)
    page.wait_for_function("() => window.iste && window.iste.ready", timeout=60_000)
    page.evaluate("() => { const s = iste.slide, v = iste.viewer.viewport;"
                  " v.zoomTo(iste.sr.imageToViewportZoom(2 * s.width / s.dzi_size[0]),"
                  " null, true); }")
    page.wait_for_function("() => window.iste.srVisible", timeout=30_000)
    damaged = page.evaluate("() => iste.slides[1].id")
    page.select_option("#slide", damaged)
    page.wait_for_function(f"() => iste.ready && iste.slide.id === '{damaged}'"
                           " && iste.srVisible", timeout=30_000)
    assert page.evaluate("() => iste.sr.getOpacity()") == 1


def test_a_profiled_slide_looks_as_the_browser_shows_its_pixels_with_the_profile(page):
    """A slide's colours are those of its ICC profile (kept in ``iste upscale``'s outputs).
    Chromium colour-manages an image that carries a profile: with one that swaps red and
    blue (:func:`swapped_profile`), the slide's pixels tagged with it are shown far from the
    same pixels untagged. The server sends tiles untagged, converted to sRGB: they must look
    as the tagged pixels do. Before, they were the stored pixels, shown as if sRGB."""
    from iste.serve.catalog import SlideCatalog, serve_slide
    from iste.serve.runner import ServerThread
    from iste.slides.reader import InMemorySlide
    from serve_helpers import small_app, swapped_profile

    colours = [(200, 60, 80), (70, 90, 200), (225, 150, 190), (120, 60, 160)]
    rgb = np.zeros((64, 64, 3), np.uint8)
    for i, colour in enumerate(colours):  # flat quadrants: JPEG keeps them to a level or two
        rgb[32 * (i // 2):32 * (i // 2 + 1), 32 * (i % 2):32 * (i % 2 + 1)] = colour

    def data_url(icc):
        out = io.BytesIO()
        Image.fromarray(rgb).save(out, "JPEG", quality=95, subsampling=0,
                                  **({"icc_profile": icc} if icc else {}))
        return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()

    icc = swapped_profile()
    slide_id = "0123456789abcdef"
    catalog = SlideCatalog([(slide_id, serve_slide(InMemorySlide(rgb, mpp=0.5,
                                                                 icc_profile=icc), "Slide 1"))])
    with ServerThread(small_app(catalog)) as url:
        level = catalog.get(slide_id).zoom.native_level
        served = f"{url}slides/{slide_id}/bicubic_files/{level}/0_0.jpeg"
        page.set_content('<body style="margin:0">' + "".join(
            f'<img id="{name}" src="{src}" style="display:block">' for name, src in
            [("served", served), ("tagged", data_url(icc)), ("untagged", data_url(None))]))
        page.wait_for_function("() => [...document.images].every(i => i.complete"
                               " && i.naturalWidth == 64)", timeout=60_000)
        shown = {name: np.asarray(Image.open(io.BytesIO(page.locator(f"#{name}").screenshot()))
                                  .convert("RGB")).astype(int)
                 for name in ("served", "tagged", "untagged")}
    quadrant_means = {name: np.array([a[8 + 32 * (i // 2):24 + 32 * (i // 2),
                                        8 + 32 * (i % 2):24 + 32 * (i % 2)].mean(axis=(0, 1))
                                      for i in range(4)]) for name, a in shown.items()}
    # the browser applied the profile: red shown as blue
    assert np.abs(quadrant_means["tagged"] - quadrant_means["untagged"]).max() > 100
    assert np.abs(quadrant_means["served"] - quadrant_means["tagged"]).max() <= 4, \
        quadrant_means


def _open_at_x2(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("() => window.iste && window.iste.ready", timeout=60_000)
    page.evaluate("() => { const s = iste.slide, v = iste.viewer.viewport;"
                  " v.zoomTo(iste.sr.imageToViewportZoom(2 * s.width / s.dzi_size[0]),"
                  " null, true); }")


_SETTLED = ("iste.srVisible === (iste.mode !== 'bicubic') && iste.bicubic.getFullyLoaded()"
            " && (!iste.srVisible || iste.srFullyLoaded)")


@pytest.mark.parametrize("key, turned", [("r", "getRotation(true) === 90"), ("f", "getFlip()")])
def test_swipe_shows_bicubic_left_of_the_divider_when_rotated_or_flipped(server, page, key,
                                                                          turned):
    """The R key turns the view by 90 degrees, F mirrors it. Swipe clipped the SR image to
    the image's right of the divider, which is then the screen's bottom (R) or left (F): the
    SR image covered the whole screen, or its left, under the labels "Bicubic | Super-
    resolved"."""
    _open_at_x2(page, server)
    page.add_style_tag(content=".side-label { visibility: hidden; }")  # the images only
    page.locator("#viewer > .openseadragon-container .openseadragon-canvas").first.focus()
    page.keyboard.press(key)
    shots = {}
    for mode in ("sr", "bicubic", "swipe"):
        page.click(f"button[data-mode={mode}]")
        page.wait_for_function(f"() => iste.viewer.viewport.{turned} && {_SETTLED}",
                               timeout=120_000)
        page.mouse.move(0, 0)
        shots[mode] = np.asarray(Image.open(io.BytesIO(page.locator("#viewer").screenshot()))
                                 .convert("RGB")).astype(int)
    h, w = shots["swipe"].shape[:2]
    for side, cols in (("bicubic", slice(w // 20, 9 * w // 20)),
                       ("sr", slice(11 * w // 20, 3 * w // 4))):  # clear of the minimap
        part = (slice(h // 5, 4 * h // 5), cols)
        other = "sr" if side == "bicubic" else "bicubic"
        assert np.abs(shots[side][part] - shots[other][part]).mean() > 3  # they differ there
        same = (np.abs(shots["swipe"][part] - shots[side][part]).sum(axis=2) < 6).mean()
        assert same > 0.9, f"the swipe's {side} side shows {side} in {same:.0%} of it"


def test_a_slide_that_cannot_be_opened_says_so_and_shows_nothing_of_the_last(server, page,
                                                                               tmp_path):
    """Choosing a slide while the server does not answer (stopped, or a network fault): the
    page kept showing the previous slide under the new one's name, with its magnification
    and status, and said nothing."""
    damaged = json.loads(urllib.request.urlopen(f"{server}api/slides", timeout=30).read()
                         )["slides"][1]["id"]
    page.route(f"**/slides/{damaged}/*.dzi*", lambda route: route.abort())
    _open_at_x2(page, server)
    page.wait_for_function(f"() => {_SETTLED}", timeout=120_000)
    page.select_option("#slide", damaged)
    banner = page.locator("#tile-error")
    banner.wait_for(state="visible", timeout=30_000)
    assert banner.text_content() == ("Slide 2 could not be opened: the server does not answer"
                                     " (is iste serve still running?)")
    assert page.text_content("#status") == "the slide could not be opened"
    assert page.text_content("#mag") == "\u2013" and not page.is_visible("#scalebar")
    view = shot(page, tmp_path / "failed.png")[100:]  # below the banner and the buttons
    assert view.std(axis=(0, 1)).max() < 3, "the previous slide is still drawn"


def test_the_status_says_super_resolving_until_a_new_slides_sr_tiles_arrive(server, page):
    """Switched to another slide at a zoom past its scan, the status said 'super-resolved'
    for as long as the new slide's SR tiles took: OpenSeadragon tells of changes of 'fully
    loaded' only, and the previous slide's SR image had been fully loaded."""
    _open_at_x2(page, server)
    page.wait_for_function(f"() => {_SETTLED}", timeout=120_000)
    assert page.text_content("#status").startswith("super-resolved ")
    small = page.evaluate("() => iste.slides[2].id")
    held = []  # the new slide's SR tiles, never answered: as if still being computed
    page.route(f"**/slides/{small}/sr_files/**", lambda route: held.append(route))
    page.select_option("#slide", small)
    page.wait_for_function(f"() => iste.ready && iste.slide.id === '{small}' && iste.srVisible"
                           " && iste.bicubic.getFullyLoaded()", timeout=60_000)
    page.wait_for_function("() => document.getElementById('status').textContent.length > 0")
    assert held, "no SR tile of the new slide was asked for"
    assert page.text_content("#status").startswith("super-resolving ")


def _view(page) -> dict:
    """The view as the page shows it: centre in scan pixels, CSS pixels per scan pixel, turn."""
    return page.evaluate(
        "() => { const s = iste.slide, v = iste.viewer.viewport, k = s.dzi_size[0] / s.width;"
        " const c = iste.sr.viewportToImageCoordinates(v.getCenter(true));"
        " return {x: c.x / k, y: c.y / k, zoom: iste.cssPerScanPixel,"
        " rot: v.getRotation(true), flip: v.getFlip()}; }")


def test_a_reload_or_a_shared_address_shows_the_same_view(server, page):
    """The address held the slide only: a reload, or a link sent to a colleague, showed the
    whole slide again instead of the place and zoom the pathologist was looking at."""
    page.goto(server)
    page.wait_for_function("() => window.iste && iste.ready && iste.bicubic.getFullyLoaded()",
                           timeout=60_000)
    # zoomed, moved and turned before the next frame: the turn's address, written at once,
    # held the zoom of the last drawn frame (the whole slide's), and a reload missed the zoom
    written = page.evaluate(
        "() => { const s = iste.slide, v = iste.viewer.viewport;"
        " v.zoomTo(iste.sr.imageToViewportZoom(2 * s.width / s.dzi_size[0]), null, true);"
        " v.panTo(iste.sr.imageToViewportCoordinates(new OpenSeadragon.Point("
        " 0.3 * s.dzi_size[0], 0.6 * s.dzi_size[1])), true);"
        " v.setRotation(90, true); return location.hash; }")
    assert re.search(r"&zoom=2&rot=90$", written), written
    # the moves drawn (the view may resize as the toolbar's text changes) and the address
    # written after the last of them
    page.wait_for_function(f"() => {_SETTLED} && Math.abs(Number(new URLSearchParams("
                           "location.hash.slice(1)).get('zoom')) / iste.cssPerScanPixel - 1)"
                           " < 1e-4", timeout=120_000)
    before = _view(page)
    address = page.url
    for reload in (True, False):  # a reload; the address opened in a fresh page
        if reload:
            page.reload()
        else:
            page.goto("about:blank")
            page.goto(address)
        # the view, turned about its centre, settles at the address's zoom
        page.wait_for_function(f"() => window.iste && iste.ready && Math.abs("
                               f"iste.cssPerScanPixel / {before['zoom']} - 1) < 1e-3",
                               timeout=60_000)
        after = _view(page)
        assert after["x"] == pytest.approx(before["x"], abs=0.5)
        assert after["y"] == pytest.approx(before["y"], abs=0.5)
        assert after["rot"] == 90 and not after["flip"]


def test_an_address_with_a_view_that_makes_no_sense_opens_the_whole_slide(server, page):
    slide = json.loads(urllib.request.urlopen(f"{server}api/slides", timeout=30).read()
                       )["slides"][0]["id"]
    page.goto(server)
    page.wait_for_function("() => window.iste && window.iste.ready", timeout=60_000)
    home = _view(page)
    for view in ("x=NaN&y=1&zoom=2", "x=1&y=1&zoom=-3", "x=1&y=1&zoom=2&rot=45"):
        page.goto("about:blank")  # a new hash alone would not load the page again
        page.goto(f"{server}#slide={slide}&{view}")
        page.wait_for_function("() => window.iste && window.iste.ready", timeout=60_000)
        assert _view(page) == pytest.approx(home, rel=1e-3), view
    page.goto("about:blank")  # and a sound one is shown: the check above can fail
    page.goto(f"{server}#slide={slide}&x=100&y=100&zoom=2")
    page.wait_for_function("() => window.iste && iste.ready && Math.abs(iste.cssPerScanPixel"
                           " / 2 - 1) < 1e-3", timeout=60_000)


@pytest.mark.parametrize("turn", [0, 90])
def test_a_window_resized_keeps_the_magnification(server, page, turn):
    """A window made taller or shorter (or the toolbar wrapping onto a second line as the
    status text grows) keeps the magnification the pathologist reads at."""
    _open_at_x2(page, server)
    page.evaluate(f"() => iste.viewer.viewport.setRotation({turn}, true)")
    page.wait_for_function("() => Math.abs(iste.cssPerScanPixel / 2 - 1) < 1e-3")
    for size in ({"width": VIEWPORT["width"], "height": VIEWPORT["height"] - 150},
                 {"width": VIEWPORT["width"] - 100, "height": VIEWPORT["height"]}):
        page.set_viewport_size(size)
        page.wait_for_function("() => iste.viewer.viewport.getContainerSize().y"
                               f" < {size['height']} && iste.viewer.viewport.getContainerSize().x"
                               f" <= {size['width']}")
        # OpenSeadragon has seen the new size: two frames later the view is drawn at it
        zoom = page.evaluate("() => new Promise((done) => requestAnimationFrame(() =>"
                             " requestAnimationFrame(() => done(iste.cssPerScanPixel))))")
        assert zoom == pytest.approx(2, rel=1e-3), (size, turn)


def test_swipe_labels_stay_on_their_side_of_the_divider(server, page):
    """The swipe's labels name the sides of the divider wherever it is dragged: "Super-
    resolved" sat 200 px from the window's right, on the bicubic side of the divider in a
    window under ~640 px wide (or with the divider dragged right), and over the minimap."""
    _open_at_x2(page, server)
    page.click("button[data-mode=swipe]")
    page.wait_for_function("() => iste.srVisible", timeout=60_000)
    boxes = """() => Object.fromEntries(["#viewer", "#divider .line", "#label-left",
        "#label-right", "#viewer .navigator"].map((s) => {
            const e = document.querySelector(s);
            const r = e.getBoundingClientRect();
            return [s, e.closest("[hidden]") ? null : [r.left, r.top, r.right, r.bottom]];
        }))"""
    for where in (0.5, 0.97, 0.6, 0.03):
        handle = page.locator("#divider .handle").bounding_box()
        viewer = page.locator("#viewer").bounding_box()
        page.mouse.move(handle["x"] + 16, handle["y"] + 16)
        page.mouse.down()
        page.mouse.move(viewer["x"] + where * viewer["width"], handle["y"] + 16, steps=4)
        page.mouse.up()
        b = page.evaluate(boxes)
        x = (b["#divider .line"][0] + b["#divider .line"][2]) / 2
        left, right, nav, view = (b["#label-left"], b["#label-right"], b["#viewer .navigator"],
                                  b["#viewer"])
        if where in (0.5, 0.6):
            assert left and right, f"a label is hidden with the divider at {where}"
        for label, side in ((left, "left"), (right, "right")):
            if label is None:
                continue
            assert (label[2] <= x) if side == "left" else (label[0] >= x), (where, side, b)
            assert view[0] <= label[0] and label[2] <= view[2], (where, side, b)
            assert (label[2] <= nav[0] or label[0] >= nav[2] or label[3] <= nav[1]
                    or label[1] >= nav[3]), f"the {side} label covers the minimap: {b}"


def test_the_keyboard_moves_the_slide_without_clicking_it_first(server, page):
    """The keys (R turns, - zooms out, arrows pan) work on the slide as the page opens, after a
    comparison button is clicked and after a slide is chosen: they went to the page, a button
    or the slide menu (the arrows chose another slide) until the slide itself was clicked."""
    page.goto(server)
    page.wait_for_function("() => window.iste && iste.ready", timeout=60_000)
    page.keyboard.press("r")
    page.wait_for_function("() => iste.viewer.viewport.getRotation() === 90", timeout=5_000)
    page.click("button[data-mode=bicubic]")
    zoom = page.evaluate("() => iste.viewer.viewport.getZoom()")
    page.keyboard.press("-")
    page.wait_for_function(f"() => iste.viewer.viewport.getZoom() < {zoom}", timeout=5_000)
    page.focus("#slide")
    page.select_option("#slide", label="Slide 3")
    page.wait_for_function("() => iste.ready && iste.slide.name === 'Slide 3'", timeout=60_000)
    turn = page.evaluate("() => iste.viewer.viewport.getRotation()")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("r")
    page.wait_for_function(f"() => iste.viewer.viewport.getRotation() === {turn + 90}",
                           timeout=5_000)
    assert page.evaluate("() => iste.slide.name") == "Slide 3"


def test_the_minimap_keeps_its_share_of_a_resized_window(server, page):
    """The minimap keeps its share of the view's width and height however the window got its
    size: OpenSeadragon kept its area in pixels, so a window made narrow (a browser moved to
    half a screen) had a minimap a third of its width, and one made wide a small one."""
    share = ("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame("
             "() => { const n = iste.viewer.navigator.element.getBoundingClientRect(),"
             " v = iste.viewer.container.getBoundingClientRect();"
             " done([n.width / v.width, n.height / v.height]); })))")
    page.goto(server)
    page.wait_for_function("() => window.iste && iste.ready", timeout=60_000)
    first = page.evaluate(share)
    for size in ({"width": 300, "height": VIEWPORT["height"]},
                 {"width": 2 * VIEWPORT["width"], "height": VIEWPORT["height"] + 100}):
        page.set_viewport_size(size)
        page.wait_for_function(f"() => iste.viewer.container.clientWidth === {size['width']}")
        assert page.evaluate(share) == pytest.approx(first, abs=0.02), size


def test_swipe_names_no_sides_where_both_show_the_scan(server, page):
    """Below the first super-resolved level both sides of the divider show the scan (the
    status says "scan resolution"): they were labelled "Bicubic | Super-resolved", as if the
    model's pixels looked the same as bicubic's."""
    page.goto(server)  # Slide 1's home view is below the scan's resolution
    page.wait_for_function("() => window.iste && iste.ready && iste.cssPerScanPixel < 1",
                           timeout=60_000)
    page.click("button[data-mode=swipe]")
    assert page.is_visible("#divider .handle")
    assert not page.is_visible("#label-left") and not page.is_visible("#label-right")
    _open_at_x2(page, server)
    page.click("button[data-mode=swipe]")
    page.wait_for_function("() => iste.srVisible", timeout=60_000)
    assert page.is_visible("#label-left") and page.is_visible("#label-right")


def test_the_tab_names_its_slide(server, page):
    """Two slides open in two tabs: both tabs read "iste viewer", which told them apart only
    by a look at each."""
    page.goto(server)
    page.wait_for_function("() => window.iste && iste.ready", timeout=60_000)
    assert page.title() == "Slide 1 \u2013 iste viewer"
    page.select_option("#slide", label="Slide 3")
    page.wait_for_function("() => document.title === 'Slide 3 \u2013 iste viewer'",
                           timeout=5_000)
