// iste viewer: OpenSeadragon with a bicubic and a super-resolved (SR) DeepZoom image of the
// same slide, stacked. Below the scan's resolution both are the scan itself; beyond it the
// bicubic image is always drawn underneath (cheap, immediate) and the SR image on top, which
// requests only the one level that matches the zoom (the model's tiles are expensive), so SR
// tiles replace the bicubic preview as they arrive. The server is told the current view after
// each movement, so it can drop SR tiles nobody looks at any more.
"use strict";

(function () {
  // A level is drawn when its pixels cover at least this many device pixels: 1/sqrt(2)
  // picks the level nearest to the screen's resolution (OpenSeadragon's default, 0.5, would
  // compute SR tiles with up to 4 times more pixels than the screen shows).
  const MIN_PIXEL_RATIO = Math.SQRT1_2;
  const SCALEBAR_PX = 120;            // target length of the scale bar in CSS pixels
  const MAX_RETRIES = 4;              // per tile and view: failed or cancelled tiles retried
  const LABEL_GAP = 10;               // CSS pixels between a swipe label and the divider

  const state = {
    client: randomId(), generation: 0, slides: [], model: null, slide: null,
    mode: "sr", swipe: 0.5, bicubic: null, sr: null, srLevel: null, srVisible: false,
    srLoaded: 0, srFullyLoaded: false, cssPerScanPixel: null, ready: false,
    failedTiles: 0, tileError: null, pendingView: null,
  };
  window.iste = state;  // read by the end-to-end test, handy in the console
  const retries = new Map();
  // tiles given up on (MAX_RETRIES failures) while in view: key -> {tile, image}; shown in the
  // status, since OpenSeadragon counts a tile that failed as done and draws a coarser one
  // (or none). Each one leaves when it loads, or when a movement takes it out of view.
  const failed = new Map();
  const waiting = new Set();  // tiles that failed and wait to be asked again: not loaded yet

  const viewer = OpenSeadragon({
    id: "viewer",
    prefixUrl: "/static/vendor/openseadragon/images/",
    showNavigator: true, navigatorPosition: "TOP_RIGHT",
    navigatorBackground: "#f2f2f2",   // the viewer's own background (#viewer), not black bands
    // a fifth of the view's width and height at any window size; OpenSeadragon kept its area
    // in pixels, so a window made narrow (half a screen) had a minimap a third of its width
    navigatorMaintainSizeRatio: true,
    showRotationControl: false,
    minPixelRatio: MIN_PIXEL_RATIO,
    maxZoomPixelRatio: 1,             // deepest zoom: one screen pixel per pixel of the top level
    visibilityRatio: 0.5,
    // a window resized (or the toolbar wrapped onto a second line) keeps the magnification the
    // pathologist reads at; OpenSeadragon's default kept the width of slide shown instead
    preserveImageSizeOnResize: true,
    imageLoaderLimit: 4,              // leaves browser connections free for view reports
    timeout: 300000,                  // SR tiles can take a while on a CPU
    // The level that fits the screen first, not every coarser one on the way: while the model
    // works those placeholders cost the bicubic view seconds (a 60x screen of the sample:
    // levels x0.25 to x2 loaded one after another before the x4 one began).
    immediateRender: true,
    drawer: pickDrawer(),
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
  });
  state.viewer = viewer;

  // OpenSeadragon 6 redraws at every frame an image that is shown (opacity above 0) but has
  // drawn no tile (TiledImage.setDrawn): a slide whose tiles all failed, or a view moved off
  // the slide, was drawn 60 times a second while nothing changed (a core of the browser's,
  // and the page's readouts updated with each draw). Nothing is lost without that rule: a
  // tile that loads asks for its own redraw (TiledImage.redraw), as do a movement and a
  // change of opacity or clip; so an image is redrawn again only while it blends tiles in.
  OpenSeadragon.TiledImage.prototype.setDrawn = function () {
    this._needsDraw = this._isBlending || this._wasBlending;
    return this._needsDraw;
  };
  // The navigator (minimap) mirrors every image; it shows the scan only, never loading SR.
  const isSR = (item) => /\/sr_files\/$/.test((item.source && item.source.tilesUrl) || "");
  viewer.navigator._matchOpacity = (mine, theirs) =>
    mine.setOpacity(isSR(theirs) ? 0 : theirs.opacity);

  // OpenSeadragon's WebGL drawer where WebGL runs on the CPU (SwiftShader, llvmpipe: no GPU,
  // or one the browser will not use) takes the browser a core that the model needs, and slows
  // every tile it draws: there the canvas drawer. Headless Chromium without a GPU, a 60x screen
  // of the sample slide: the bicubic view in 3-4 s against 9-14 s (docs/viewer.md).
  function pickDrawer() {
    try {
      const gl = document.createElement("canvas").getContext("webgl");
      if (!gl) return "canvas";
      const info = gl.getExtension("WEBGL_debug_renderer_info");
      const renderer = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
      gl.getExtension("WEBGL_lose_context")?.loseContext();  // the probe's context is not kept
      return /swiftshader|llvmpipe|softpipe|software/i.test(renderer) ? "canvas" : "auto";
    } catch (e) {
      return "canvas";
    }
  }

  function randomId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function start() {
    const reply = await fetch("/api/slides");
    const data = await reply.json();
    state.slides = data.slides;
    state.model = data.model;
    const select = document.getElementById("slide");
    for (const s of data.slides) {
      const opt = document.createElement("option");
      opt.value = s.id;
      opt.textContent = s.name;
      select.appendChild(opt);
    }
    select.addEventListener("change", () => {
      document.getElementById("notice").hidden = true;
      open(select.value);
      focusSlide();  // the arrows chose the next slide in the menu instead of panning
    });
    if (data.model.untrained) {
      const w = document.getElementById("warning");
      w.textContent = "The model has untrained (random) weights: super-resolved tiles are not " +
        "meaningful. Start the viewer with --model PATH to use trained weights.";
      w.hidden = false;
    }
    const address = new URLSearchParams(location.hash.slice(1));
    const fromHash = address.get("slide");
    const first = data.slides.find((s) => s.id === fromHash) || data.slides[0];
    if (first.id === fromHash) state.pendingView = viewFromAddress(address, first.id);
    if (fromHash && first.id !== fromHash) {  // was shown the first slide without a word
      const notice = document.getElementById("notice");
      notice.textContent = "The slide of this address is not served now: a slide's address " +
        "changes when its file is changed, moved, copied or its permissions are (so that no " +
        "picture of an older file is ever shown). Showing " + first.name + ".";
      notice.hidden = false;
    }
    select.value = first.id;
    open(first.id);
    focusSlide();
  }

  // OpenSeadragon hears the keys (arrows, +/-, R, F) on its canvas only: with the focus on
  // the page, a comparison button or the slide menu, they did nothing (or chose a slide)
  // until the slide was clicked. The focus goes back to the slide after those controls.
  function focusSlide() {
    viewer.canvas.focus({ preventScroll: true });
  }

  function open(id) {
    const slide = state.slides.find((s) => s.id === id);
    state.slide = slide;
    document.title = slide.name + " \u2013 iste viewer";  // two tabs, two slides: which is which
    state.ready = false;
    state.sr = state.bicubic = null;
    state.srVisible = false;  // the new SR image comes with opacity 0 (below)
    state.srLoaded = 0;
    // OpenSeadragon tells of a change only: the new SR image starts not loaded, and the old
    // image's "fully loaded" said "super-resolved" while the new slide's tiles were computed
    state.srFullyLoaded = false;
    retries.clear();
    waiting.clear();
    failed.clear();
    state.failedTiles = 0;
    state.tileError = null;
    showTileError();
    history.replaceState(null, "", "#slide=" + id);
    const q = "?client=" + state.client + "&m=" + state.model.fingerprint.slice(0, 8);
    viewer.open([
      { tileSource: "/slides/" + id + "/bicubic.dzi" + q },
      { tileSource: "/slides/" + id + "/sr.dzi" + q, opacity: 0 },
    ]);
  }

  viewer.addHandler("open", () => {
    const mine = (i) => ofSlide(viewer.world.getItemAt(i)?.source.tilesUrl);
    if (!mine(0) && !mine(1)) return;  // an earlier slide's images, opened late
    if (!mine(0) || !mine(1)) { failedToOpen(); return; }  // one of the two images failed
    state.bicubic = viewer.world.getItemAt(0);
    state.sr = viewer.world.getItemAt(1);
    state.sr.addHandler("fully-loaded-change", (e) => {
      state.srFullyLoaded = e.fullyLoaded;
      updateStatus();
    });
    state.ready = true;
    if (state.pendingView?.slide === state.slide.id) showView(state.pendingView);
    state.pendingView = null;  // the address's view is the first slide's only
    refresh();
    reportView();
  });

  // The view in the address (#slide=ID&x=..&y=..&zoom=..[&rot=..][&flip=1]): the centre in
  // the scan's pixels, screen (CSS) pixels per scan pixel, the turn in degrees and the
  // mirror; written after every movement, so that a reload or a shared link shows the same
  // place (before, a reload went back to the whole slide).
  function viewFromAddress(address, slide) {
    const number = (key) => Number.parseFloat(address.get(key));
    const view = { slide, x: number("x"), y: number("y"), zoom: number("zoom"),
                   rot: number("rot") || 0, flip: address.get("flip") === "1" };
    const ok = [view.x, view.y, view.zoom].every(Number.isFinite) && view.zoom > 0 &&
      [0, 90, 180, 270].includes(view.rot);
    return ok ? view : null;
  }

  function showView(view) {
    const dziPerScan = dziPixelsPerScanPixel(state.slide);
    const vp = viewer.viewport;
    vp.zoomTo(state.sr.imageToViewportZoom(view.zoom / dziPerScan), null, true);
    vp.panTo(state.sr.imageToViewportCoordinates(view.x * dziPerScan, view.y * dziPerScan),
             true);
    // turned last, about the centre: turned first, the view went back to the whole slide
    if (view.rot) vp.setRotation(view.rot, true);
    if (view.flip) vp.setFlip(true);
    vp.applyConstraints(true);  // a position off the slide comes back into view
  }

  function writeAddress() {
    const slide = state.slide;
    const dziPerScan = dziPixelsPerScanPixel(slide);
    const vp = viewer.viewport;
    const centre = state.sr.viewportToImageCoordinates(vp.getCenter(true));
    const round = (v, digits) => Number(v.toPrecision(digits));
    let hash = "#slide=" + slide.id + "&x=" + round(centre.x / dziPerScan, 7) +
      "&y=" + round(centre.y / dziPerScan, 7) + "&zoom=" + round(imageZoomNow() * dziPerScan, 5);
    const rot = ((Math.round(vp.getRotation(true)) % 360) + 360) % 360;
    if (rot) hash += "&rot=" + rot;
    if (vp.getFlip()) hash += "&flip=1";
    history.replaceState(null, "", hash);
  }

  // A slide whose images cannot be opened (the server stopped, the slide is no longer
  // served): OpenSeadragon keeps the previous slide's images, which were shown under the
  // new slide's name with its readouts and a status of the old view, and said nothing.
  viewer.addHandler("open-failed", (e) => {
    if (typeof e.source !== "string" || ofSlide(e.source)) failedToOpen();
  });

  const ofSlide = (url) => (url || "").startsWith("/slides/" + state.slide.id + "/");

  async function failedToOpen() {
    const slide = state.slide;
    viewer.close();  // a closed viewer draws no more frames: one empty frame clears it
    for (const v of [viewer, viewer.navigator]) v.world.draw();
    state.ready = false;
    state.srLevel = null;
    document.getElementById("mag").textContent = "\u2013";
    document.getElementById("scalebar").hidden = true;
    const status = document.getElementById("status");
    status.textContent = "the slide could not be opened";
    status.classList.remove("busy");
    status.classList.add("failed");
    document.getElementById("slide").value = "";  // so that choosing it again opens it
    const reason = await reasonOf("/slides/" + slide.id + "/bicubic.dzi");
    if (state.slide !== slide || state.ready) return;
    state.tileError = slide.name + " could not be opened: " +
      (reason || "the server answers now; choose it again in the slide menu");
    showTileError();
  }

  viewer.addHandler("tile-loaded", (e) => {
    const key = e.tile.level + "/" + e.tile.x + "_" + e.tile.y + (e.tiledImage === state.sr);
    if (failed.delete(key)) shown();
    if (state.slide && e.tiledImage === state.sr && e.tile.level >= state.slide.first_sr_level) {
      state.srLoaded += 1;
    }
  });

  // A tile that failed (server error) or was cancelled (the view had moved on) is marked
  // missing by OpenSeadragon; let it be requested again if it is still needed.
  viewer.addHandler("tile-load-failed", (e) => {
    if (e.tiledImage !== state.sr && e.tiledImage !== state.bicubic) return;  // slide left
    const key = e.tile.level + "/" + e.tile.x + "_" + e.tile.y + (e.tiledImage === state.sr);
    const n = retries.get(key) || 0;
    if (n >= MAX_RETRIES) { giveUp(key, e.tile, e.tiledImage); return; }
    retries.set(key, n + 1);
    waiting.add(key);
    updateStatus();
    setTimeout(() => {
      waiting.delete(key);
      askAgain(e.tile, e.tiledImage);
      updateStatus();
    }, 400 * (n + 1));
  });

  // A failed tile is marked missing; OpenSeadragon looks for tiles to load only while its
  // image is not fully loaded (a failed tile counts as done) or the view changes, so the
  // image is updated here: setting exists alone asked for nothing.
  function askAgain(tile, image) {
    tile.exists = true;
    image.update(true);
    viewer.forceRedraw();
  }

  function giveUp(key, tile, image) {
    if (failed.has(key)) return;
    failed.set(key, { tile, image });
    state.failedTiles = failed.size;
    if (failed.size === 1 && !state.tileError) explain(tile.getUrl());
    updateStatus();
  }

  // a tile given up on has loaded or left the view
  function shown() {
    state.failedTiles = failed.size;
    if (!failed.size) {
      state.tileError = null;
      showTileError();
    }
    updateStatus();
  }

  // The page cannot read why an image failed: ask the server once (its one-line JSON error).
  async function explain(url) {
    const slide = state.slide;
    const reason = await reasonOf(url);
    if (state.slide !== slide || !failed.size) return;
    state.tileError = "Some tiles of this view could not be shown: " +
      (reason || "it came on a later try; move the view to load it again");
    showTileError();
  }

  // the server's one-line error for url, "" when it answers now
  async function reasonOf(url) {
    try {
      const reply = await fetch(url);
      return reply.ok ? "" : (await reply.json()).error || "HTTP " + reply.status;
    } catch (err) {
      return "the server does not answer (is iste serve still running?)";
    }
  }

  function showTileError() {
    const el = document.getElementById("tile-error");
    el.hidden = !state.tileError;
    el.textContent = state.tileError || "";
  }

  // After a movement, the tiles given up on that are still in view get another chance (the
  // server restarted, a passing fault); the others are forgotten.
  function retryFailed() {
    const view = viewer.viewport.getBounds(true);
    for (const [key, { tile, image }] of failed) {
      const level = Math.min(state.srLevel, image.source.maxLevel);
      if (tile.level === level && image.getTileBounds(tile.level, tile.x, tile.y)
        .intersection(view)) {
        askAgain(tile, image);
      } else {
        failed.delete(key);
      }
    }
    shown();
  }

  for (const ev of ["animation", "resize", "update-viewport"]) viewer.addHandler(ev, refresh);
  viewer.addHandler("animation-finish", reportView);
  for (const ev of ["flip", "rotate"]) {
    viewer.addHandler(ev, () => state.ready && writeAddress());
  }

  // pixels of the DeepZoom images' top level (the deepest SR) per pixel of the scan
  function dziPixelsPerScanPixel(slide) {
    return slide.dzi_size[0] / slide.width;
  }

  // screen (CSS) pixels per pixel of the DeepZoom images' top level, as the view is now
  // (state.cssPerScanPixel is of the last redraw, which a turn made just after a zoom precedes)
  function imageZoomNow() {
    return state.sr.viewportToImageZoom(viewer.viewport.getZoom(true));
  }

  function levelScale(slide, level) {
    const top = slide.level_count - 1;
    return Math.ceil(slide.dzi_size[0] / 2 ** (top - level)) / slide.width;
  }

  function refresh() {
    const slide = state.slide;
    if (!state.ready || !slide) return;
    const top = slide.level_count - 1;
    const imageZoom = imageZoomNow();
    state.cssPerScanPixel = imageZoom * dziPixelsPerScanPixel(slide);
    // the finest level whose pixels cover at least MIN_PIXEL_RATIO device pixels
    const dpr = OpenSeadragon.pixelDensityRatio || 1;
    let best = 0;
    for (let level = top; level >= 0; level--) {
      if (imageZoom * 2 ** (top - level) * dpr >= MIN_PIXEL_RATIO) { best = level; break; }
    }
    state.srLevel = best;
    const visible = state.mode !== "bicubic" && best >= slide.first_sr_level;
    // Only the matching SR level is requested: coarser SR levels would cost model time for
    // pixels the bicubic image underneath already stands in for.
    state.sr.source.minLevel = Math.max(best, slide.first_sr_level);
    if (visible !== state.srVisible) {
      state.srVisible = visible;
      state.sr.setOpacity(visible ? 1 : 0);
    }
    updateSwipe();
    updateReadouts();
  }

  function updateSwipe() {
    const swipe = state.mode === "swipe";
    document.getElementById("divider").hidden = !swipe;
    if (!swipe) { clipSR(null); return; }
    const el = viewer.container;
    const x = state.swipe * el.clientWidth;
    document.getElementById("divider").style.left = x + "px";
    // The labels move with the divider (they sat at fixed places: "Super-resolved" 200 px
    // from the right, which a narrow window or a divider dragged right put on the bicubic
    // side); a label its side has no room for is hidden rather than cut or moved across.
    // Below the SR levels both sides show the scan: no label says otherwise.
    for (const [id, room] of [["label-left", x], ["label-right", el.clientWidth - x]]) {
      const label = document.getElementById(id);
      label.hidden = !state.srVisible;
      if (state.srVisible) label.hidden = label.offsetWidth + LABEL_GAP > room;
    }
    clipSR(rightOf(x, el.clientHeight));
  }

  // The part of the SR image right of the screen's column x, as a rectangle of the image
  // (a clip is one). Rotated (the R key turns the view by 90 degrees) or flipped (F), the
  // screen's right is another side of the image: clipped to the image's right side, the SR
  // image covered the whole screen or its left, under the labels "Bicubic | Super-resolved".
  function rightOf(x, height) {
    const width = viewer.container.clientWidth;
    const flip = viewer.viewport.getFlip();  // a mirror the drawer applies last, about the
    const toImage = (px, py) =>              // middle: OpenSeadragon's coordinates ignore it
      state.sr.viewerElementToImageCoordinates(
        new OpenSeadragon.Point(flip ? width - px : px, py));
    const top = toImage(x, 0), bottom = toImage(x, height), right = toImage(x + 1, 0);
    const [w, h] = state.slide.dzi_size;
    const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
    if (Math.abs(bottom.x - top.x) <= Math.abs(bottom.y - top.y)) {  // the divider runs along y
      const cut = clamp(top.x, w);
      return right.x > top.x ? new OpenSeadragon.Rect(cut, 0, w - cut, h) :
        new OpenSeadragon.Rect(0, 0, cut, h);
    }
    const cut = clamp(top.y, h);
    return right.y > top.y ? new OpenSeadragon.Rect(0, cut, w, h - cut) :
      new OpenSeadragon.Rect(0, 0, w, cut);
  }

  // Only a new clip is set: setClip redraws the image, and refresh() runs on every redraw,
  // so setting it each time drew the whole view 60 times a second for good (a core of the
  // machine the model runs on) and OpenSeadragon's animation never finished, which is when
  // the view is reported (the server never heard of a view after the first).
  function clipSR(rect) {
    const now = state.sr.getClip();
    if (rect === null ? now === null : now !== null && now.equals(rect)) return;
    state.sr.setClip(rect);
  }

  function updateReadouts() {
    const slide = state.slide;
    const zoom = state.cssPerScanPixel;
    const mag = document.getElementById("mag");
    const onScreen = slide.magnification ? (slide.magnification * zoom).toFixed(1) + "x" :
      "x" + zoom.toFixed(2) + " of scan";
    const scan = slide.magnification ? " (scan " + slide.magnification.toFixed(0) + "x)" : "";
    mag.textContent = onScreen + scan;
    updateScalebar(slide, zoom);
    updateStatus();
  }

  function updateStatus() {
    const slide = state.slide;
    const el = document.getElementById("status");
    if (!slide || state.srLevel === null) return;
    el.classList.toggle("failed", failed.size > 0);
    if (failed.size) {  // never "super-resolved" over a hole or a coarser stand-in
      el.textContent = failed.size + (failed.size === 1 ? " tile" : " tiles") +
        " could not be shown";
      el.classList.remove("busy");
      return;
    }
    if (!state.srVisible) {
      el.textContent = state.mode === "bicubic" && state.srLevel >= slide.first_sr_level ?
        "bicubic x" + levelScale(slide, state.srLevel).toFixed(2) : "scan resolution";
      el.classList.remove("busy");
      return;
    }
    const scale = "x" + levelScale(slide, state.srLevel).toFixed(2);
    const done = state.srFullyLoaded && !waiting.size;
    el.textContent = (done ? "super-resolved " : "super-resolving ") + scale + " by " +
      state.model.name;
    el.classList.toggle("busy", !done);
  }

  function updateScalebar(slide, cssPerScanPixel) {
    const box = document.getElementById("scalebar");
    if (!slide.mpp) { box.hidden = true; return; }
    const micronsPerCss = slide.mpp[0] / cssPerScanPixel;
    const raw = micronsPerCss * SCALEBAR_PX;
    const exp = Math.floor(Math.log10(raw));
    let nice = 10 ** exp;
    for (const m of [1, 2, 5, 10]) if (m * 10 ** exp <= raw) nice = m * 10 ** exp;
    box.querySelector(".bar").style.width = (nice / micronsPerCss).toFixed(1) + "px";
    box.querySelector(".text").textContent = nice >= 1000 ? (nice / 1000) + " mm" :
      (nice >= 1 ? nice.toFixed(0) : nice.toPrecision(1)) + " \u00b5m";
    box.hidden = false;
  }

  function reportView() {
    if (!state.ready) return;
    writeAddress();
    retries.clear();
    if (failed.size) retryFailed();
    const rect = state.sr.viewportToImageRectangle(viewer.viewport.getBounds(true));
    const body = {
      client: state.client, generation: ++state.generation, slide: state.slide.id,
      level: state.srVisible ? state.srLevel : 0,
      x: rect.x, y: rect.y, width: rect.width, height: rect.height,
    };
    fetch("/api/view", { method: "POST", body: JSON.stringify(body),
                         headers: { "Content-Type": "application/json" } }).catch(() => {});
  }

  for (const button of document.querySelectorAll(".modes button")) {
    button.addEventListener("click", (e) => {
      state.mode = button.dataset.mode;
      for (const b of document.querySelectorAll(".modes button")) {
        b.classList.toggle("active", b === button);
      }
      refresh();
      reportView();
      if (e.detail) focusSlide();  // a click; one from the keyboard (Tab, Space) keeps it
    });
  }

  // the swipe divider: drag its handle (pointer events do not reach OpenSeadragon)
  const handle = document.querySelector("#divider .handle");
  handle.addEventListener("pointerdown", (e) => {
    handle.setPointerCapture(e.pointerId);
    e.stopPropagation();
  });
  handle.addEventListener("pointermove", (e) => {
    if (!handle.hasPointerCapture(e.pointerId)) return;
    const r = viewer.container.getBoundingClientRect();
    state.swipe = Math.min(Math.max((e.clientX - r.left) / r.width, 0), 1);
    refresh();
  });
  handle.addEventListener("pointerup", (e) => handle.releasePointerCapture(e.pointerId));

  start().catch((err) => {
    const w = document.getElementById("warning");
    w.textContent = "Could not load the slide list: " + err;
    w.hidden = false;
  });
})();
