"""``iste figures``: explanatory figures of an ISTE checkpoint on one image (paper Figs. 8, 9,
10 and the arXiv STF retrieval figure; see iste.eval.explain).

Example: ``iste figures --image sample:wsidicom-tile --ablations
TL+LTD=runs/ablations/tl-ltd-only/model.safetensors,LFI+LPD=runs/ablations/lfi-lpd-only/model.safetensors
--out docs/figures``
"""

from __future__ import annotations

from pathlib import Path

from iste.cli.options import describe, resolve_input
from iste.cli.runlog import record, say


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="explanatory figures of an ISTE model (paper Figs. 8-10, "
                                  "STF retrieval)", description=describe(__doc__, whole=True))
    p.add_argument("--model", default="default",
                   help="ISTE checkpoint (default: the shipped model)")
    p.add_argument("--image", default="sample:wsidicom-tile",
                   help="HR image file or sample:NAME; a larger image than 128 LR pixels "
                        "(512 px at x4) is cut to its most textured square")
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--ablations", help="LABEL=PATH,... ISTE variants for Fig. 10 (with the "
                                       "model itself as 'full')")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(run=run)


def run(args) -> int:
    from iste.data.images import read_image
    from iste.engine.frame import check_scale
    from iste.engine.image import upscale_to
    from iste.eval import explain as ex
    from iste.eval.methods import load_methods, parse_method_list
    from iste.files import ensure_dir
    from iste.runtime import pick_device

    if not args.out.strip():
        raise ValueError("--out is empty: give a folder for the figures")
    scale = check_scale(args.scale)
    device = pick_device(args.device)
    image = read_image(resolve_input(args.image))
    specs = [f"full={args.model}"] + (parse_method_list(args.ablations) if args.ablations else [])
    methods = load_methods(specs, device=device)
    if methods[0].model is None:
        raise ValueError(f"--model {args.model}: the figures explain an ISTE model's parts; "
                         "give an ISTE checkpoint (or default)")
    explained = ex.explain(methods[0].model, image, scale)
    if explained.region is not None:
        r, c, side = explained.region
        say(f"explaining the {side} x {side} px square at row {r}, column {c} (the most "
            f"textured): the image ({image.shape[1]} x {image.shape[0]} px) is larger than "
            f"{ex.MAX_LR_SIDE} LR pixels at x{scale:g}, and STF's key window covers the whole "
            "figure")
    out = ensure_dir(args.out, what="figures folder")  # only once there is something to write
    written = [ex.texture_learner_figure(explained, out / "fig8_texture_learner.png"),
               ex.decoder_figure(explained, out / "fig9_decoders.png"),
               ex.retrieval_figure(explained, out / "stf_retrieval.png")]
    if len(methods) > 1:
        results = [(m.name, upscale_to(explained.lr, explained.hr.shape[:2], m.model))
                   for m in methods]
        written.append(ex.ablation_figure(results, explained.lr, explained.hr,
                                          out / "fig10_ablations.png", scale=scale))
    for path in written:
        say(f"wrote {path}")
    record(outputs=[str(p) for p in written])
    return 0
