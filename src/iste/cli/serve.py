"""``iste serve SLIDE_OR_FOLDER...``: a local slide viewer with super-resolved zoom.

Continuous zoom; beyond the scan's resolution (up to x8) tiles are super-resolved on demand.

Only the slides named (or the slide files in the folders named, not recursive) are served,
on 127.0.0.1 unless --host says otherwise, to requests that name this server by one of the
names it is bound to (--allowed-host adds names). See docs/viewer.md.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from iste.cli.options import (add_deblock_option, add_model_options, describe, load_model_for,
                              query_options, resolve_input)


def add_parser(sub, name: str) -> None:
    from iste.serve.colour import DISPLAY_MODES
    from iste.slides.formats import AUTO_BACKEND, BACKENDS

    p = sub.add_parser(name, help="browse slides in a local web viewer with super-resolved zoom",
                       description=describe(__doc__))
    p.add_argument("slides", nargs="+", metavar="SLIDE_OR_FOLDER",
                   help="whole-slide image(s) (.svs, tiled TIFF, DICOM file or folder ...), "
                        "folder(s) of slides, or sample:cmu-svs")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0: any free)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name clients may use to reach the server, besides localhost, "
                        "127.0.0.1, [::1] and --host (repeatable); requests naming any other "
                        "host are refused (DNS rebinding)")
    p.add_argument("--max-scale", type=float, default=8.0,
                   help="deepest zoom over the slide's level 0, <= 8 (default 8)")
    p.add_argument("--cache-dir", help="disk cache of super-resolved tiles (default: tiles/ "
                                       "in $ISTE_CACHE_DIR or the user cache directory)")
    p.add_argument("--disk-cache-mb", type=float, default=1024,
                   help="disk cache budget in MB, 0 disables it (default 1024)")
    p.add_argument("--memory-cache-mb", type=float, default=256,
                   help="in-memory tile cache budget in MB (default 256)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of tiles (default 90)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help=f"slide reader (default auto: {AUTO_BACKEND})")
    p.add_argument("--tissue", action=argparse.BooleanOptionalAction, default=True,
                   help="run the model on tissue only: glass bicubic, blended into the "
                        "model's pixels over 64 output px beside tissue, as iste upscale "
                        "(default: on)")
    p.add_argument("--colour", choices=DISPLAY_MODES, default="srgb",
                   help="srgb: a slide's pixels converted from its ICC profile to sRGB, as a "
                        "colour-managed viewer shows them (default); stored: as stored, as "
                        "QuPath shows them by default")
    add_model_options(p)
    add_deblock_option(p)
    p.set_defaults(run=run)


def _cache_dir(args) -> Path | None:
    if args.disk_cache_mb <= 0:
        return None
    if args.cache_dir:
        return Path(args.cache_dir)
    from iste.data.samples import cache_root

    return cache_root() / "tiles"


def _model_name(model, path: str | None) -> str:
    """What the page calls the model: its head and encoder (no file name), e.g.
    "iste/edsr-baseline", or "shipped default"."""
    from iste.models.registry import describe_config

    if path is None:
        return "shipped default"
    return describe_config(model.model_config)


def run(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ValueError("the viewer needs FastAPI and uvicorn (dependencies of iste: "
                         "pip install iste, or pip install fastapi uvicorn)") from None
    from iste.cli.runlog import print_line
    from iste.text import message_line
    from iste.runtime import keep_freed_memory
    from iste.serve.app import CacheSettings, create_app
    from iste.serve.catalog import SlideCatalog, find_slides
    from iste.serve.guard import allowed_hosts
    from iste.serve.pixels import Upscaler
    from iste.serve.runner import bind, is_loopback, serve_forever, url_of

    hosts = allowed_hosts(args.host, args.allowed_host)
    cache = CacheSettings(memory_mb=args.memory_cache_mb, disk_dir=_cache_dir(args),
                          disk_mb=args.disk_cache_mb, quality=args.quality)
    paths = find_slides([resolve_input(s) for s in args.slides])
    sock = bind(args.host, args.port)  # fail early, before loading anything
    keep_freed_memory()  # a long-running process: its tiles reuse the memory of the last ones
    catalog = None
    try:
        catalog = SlideCatalog.open(paths, max_scale=args.max_scale, backend=args.backend,
                                    deblock=args.deblock, colour=args.colour)
        model = load_model_for(args)
        upscaler = Upscaler.for_model(model, name=_model_name(model, args.model),
                                      options=query_options(args), tissue=args.tissue)
        app = create_app(catalog, upscaler, cache=cache, hosts=hosts)
        if not is_loopback(args.host):
            warnings.warn(f"listening on {args.host}: anyone who can reach this address can "
                          "view the slides", stacklevel=1)
        for label, source in catalog.sources():  # the console only: clients see the labels
            print_line(message_line(f"iste: {label}: {source}"), sys.stderr)  # one line
        print_line(f"iste: serving {len(catalog.ids())} slide(s) at {url_of(sock)}  (Ctrl-C "
                   "stops)", sys.stderr)  # one write; a full disk under stderr ends nothing
        serve_forever(app, sock)
    finally:
        sock.close()
        if catalog is not None:
            catalog.close()
    return 0
