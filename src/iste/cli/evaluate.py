"""``iste eval``: compare methods on a test set by the paper's protocol, resumably.

Example: ``iste eval --data sample:cmu-test --methods bicubic,default --out report``
writes results.json, report.md, tables (Markdown, CSV, JSON), figures and the cost table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from iste.cli.options import add_run_options, describe, query_options, whole_number
from iste.cli.runlog import Written, checkpoints_read, images_read, record, say
from iste.data.metrics import METRIC_PRECISIONS, SSIM_VARIANTS
from iste.eval.protocol import GEOMETRIES

log = logging.getLogger("iste")


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="evaluate methods on a test set the way the paper does",
                       description=describe(__doc__, whole=True))
    p.add_argument("--data", required=True,
                   help="folder of HR images (HistoSR-style HR/ folders found recursively), "
                        "regions file (.csv headed slide,x,y,width,height, or .json: a list "
                        "of objects with those keys), wsi:SLIDE, or "
                        "sample:cmu-test, sample:other-sources")
    p.add_argument("--methods", required=True,
                   help="comma-separated: bicubic, default (shipped model), checkpoint paths, "
                        "LABEL=PATH (a path that exists is read whole, ',' and '=' "
                        "included); a fixed-scale method (EDSR, RDN, SwinIR, ...) is "
                        "evaluated at its own scale only, and one label repeated over its "
                        "per-scale checkpoints is one row: EDSR=e_x2.safetensors,"
                        "EDSR=e_x3.safetensors")
    p.add_argument("--scales", default="2,3,4,6,8,1.5,2.4,3.3,4.2,5.1",
                   help="comma-separated scales > 1 (default: the paper's ten)")
    p.add_argument("--out", required=True, help="report folder (created; reruns resume)")
    p.add_argument("--reference", help="method the t-tests compare against "
                                       "(default: the first full ISTE model, else the first ISTE "
                                       "model, else the last method)")
    p.add_argument("--fid", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a "
                                 "feature extractor saved by torch.export.save (.pt2) or "
                                 "torch.jit.save; FID is skipped without it")
    p.add_argument("--ssim", choices=SSIM_VARIANTS, default="uniform-rgb",
                   help="SSIM window and channels: uniform 7x7 (skimage default) or gaussian "
                        "11x11 sigma 1.5 (Wang et al.); mean over R, G, B or the BT.601 luma Y "
                        "(the published code computes no SSIM)")
    p.add_argument("--metric-precision", choices=METRIC_PRECISIONS, default="float",
                   help="score the float SR clamped to [0, 1] (default, as the published test) "
                        "or the SR rounded to 8 bits (the image a user gets)")
    p.add_argument("--protocol", choices=GEOMETRIES, default="iste",
                   help="iste: our engine, ceil(s)+6 shaved; published: the published test's "
                        "geometry (LR flip-padded to a multiple of 8, 30000-query chunks that "
                        "fix STF's keys, 8 shaved at every scale; docs/reproduction.md)")
    p.add_argument("--degradation", default="paper",
                   help="how LR is made from HR: paper (blur + bicubic, default), jpeg<Q> "
                        "(then JPEG at quality Q, YCbCr 4:2:0, e.g. jpeg75) or jpeg<Q>-rgb "
                        "(Aperio's RGB JPEG); -deblock after either (jpeg75-deblock): the "
                        "JPEG deblocked as iste upscale does (docs/real-scans.md)")
    add_run_options(p, chunk_default_text="results do not change")
    p.add_argument("--max-images", type=whole_number(1),
                   help="evaluate only the first N images (default: all)")
    p.add_argument("--figure-image", help="test image shown in the figures "
                                          "(default: the one with the most texture)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--no-cost", action="store_true", help="skip the cost table (Table 8)")
    p.add_argument("--cost-repeats", type=whole_number(1),
                   help="timed runs per cost cell (default 3; refused with --no-cost)")
    p.add_argument("--tile", type=int,
                   help="wsi: the test tiles' size in pixels (default 256; refused for other "
                        "--data)")
    p.add_argument("--min-tissue", type=float,
                   help="wsi: minimum tissue fraction of a test tile (default 0.5; refused for "
                        "other --data)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run, written_paths=written_paths)


def written_paths(args) -> list[Written]:
    """What no --log-file or --json-summary may name (:func:`iste.cli.runlog.run_logging`):
    the report folder's own names (:func:`iste.eval.report.report_writes`: a summary named
    ``OUT/results.json`` replaced the results, one named ``OUT/report.md`` the report), and
    what the evaluation reads: the images of a --data folder (a log written there as an
    image became a test image of the next run), a wsi: slide and the methods' checkpoints
    (a log appended to one damaged it). Bad --methods leave them out (the command says
    why)."""
    from iste.eval.report import report_writes

    out = Path(args.out)
    written = [Written(out, f"{out}, the report folder", claims=report_writes)]
    data = Path(args.data.removeprefix("wsi:"))
    if args.data.startswith("wsi:"):
        written.append(Written(data, f"the slide {data} of --data", reads=True))
    elif data.is_dir():
        written.append(images_read(data, f"{data}, the --data folder"))
    return written + checkpoints_read(args.methods, "--methods")


def run(args) -> int:
    from iste.data.degradations import parse_degradation

    parse_degradation(args.degradation, allow_random=False)  # before any slow loading
    from iste.eval.methods import parse_method_list
    from iste.eval.report import EvalRequest, parse_scales, run_evaluation

    request = EvalRequest(
        data=args.data, methods=tuple(parse_method_list(args.methods)), out=Path(args.out),
        scales=parse_scales(args.scales), reference=args.reference, device=args.device,
        fid=None if args.fid is None else Path(args.fid), ssim_variant=args.ssim,
        metric_precision=args.metric_precision, geometry=args.protocol,
        degradation=args.degradation, options=query_options(args),
        figures=not args.no_figures, figure_image=args.figure_image, cost=not args.no_cost,
        cost_repeats=args.cost_repeats, max_images=args.max_images, tile=args.tile,
        min_tissue=args.min_tissue, progress=not args.no_progress,
        stf_keys_given=args.stf_keys is not None)
    report = run_evaluation(request, log=lambda msg: log.info("eval: %s", msg))
    if request.fid is None:
        from iste.eval.fid import FID_MISSING_MESSAGE

        log.info("eval: %s", FID_MISSING_MESSAGE)
    say(f"wrote {report.out / 'report.md'} and {len(report.files) - 1} other files")
    record(outputs=[str(report.out / "report.md")])
    return 0
