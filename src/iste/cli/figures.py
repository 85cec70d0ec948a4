"""``iste figures``: explanatory figures of an ISTE checkpoint on one image (paper Figs. 8, 9,
10 and the arXiv STF retrieval figure; see iste.eval.explain).

Example:
  iste figures --image sample:wsidicom-tile --out docs/figures \\
      --ablations TL+LTD=runs/ablations/tl-ltd-only/model.safetensors,\\
LFI+LPD=runs/ablations/lfi-lpd-only/model.safetensors

A figure the model has no part for (the STF retrieval of a model without STF, ...) is skipped
with a note; the image and every model are checked before the first file is written. Figures
already in --out are not replaced without --overwrite (refused before the image is explained).
Without --ablations no Fig. 10 is made: an earlier run's fig10_ablations.png in --out is left
as it was (named in the output). One run writes a folder's figures at a time: a second run
into it is refused while the first runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from iste.cli.options import describe, resolve_input
from iste.cli.runlog import Written, checkpoints_read, record, say


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="explanatory figures of an ISTE model (paper Figs. 8-10, "
                                  "STF retrieval)", description=describe(__doc__, whole=True),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default",
                   help="ISTE checkpoint (default: the shipped model)")
    p.add_argument("--image", default="sample:wsidicom-tile",
                   help="HR image file or sample:NAME (default sample:wsidicom-tile); a larger "
                        "image than 128 LR pixels (512 px at x4) is cut to its most textured "
                        "square")
    p.add_argument("--scale", type=float, default=4.0,
                   help="the LR is the image downscaled by this, then explained at it, <= 8 "
                        "(default 4)")
    p.add_argument("--ablations", help="LABEL=PATH,... models for Fig. 10 (ISTE variants, "
                                       "or bicubic; with the model itself as 'full')")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace figures already in --out (default: an existing one is an "
                        "error)")
    p.set_defaults(run=run, written_paths=written_paths)


_FIG10 = "fig10_ablations.png"


def written_paths(args) -> list[Written]:
    """What no --log-file or --json-summary may name (:func:`iste.cli.runlog.run_logging`):
    the figures' names in --out and temporaries there (a summary named as a figure replaced
    it with --overwrite, and without it made the run refuse the figure as 'exists'), and
    the --ablations checkpoints the run reads."""
    from iste.eval.explain import FIGURES

    names = {f"{stem}.png" for stem in FIGURES} | {_FIG10}
    out = Path(args.out)
    return [Written(out, f"{out}, the figures folder",
                    claims=lambda name: name in names or name.startswith(".")),
            *checkpoints_read(args.ablations, "--ablations")]


def _refuse_existing(out: Path, names: list[str], *, overwrite: bool) -> None:
    """FileExistsError (one line: how many, the first) when any of the figures ``names`` is
    in ``out`` and ``overwrite`` is not set."""
    from iste.paths import occupied

    there = [out / name for name in names if occupied(out / name)]
    if there and not overwrite:
        raise FileExistsError(f"{len(there)} of the {len(names)} figure(s) this run writes "
                              f"exist in {out} (the first: {there[0].name}); pass --overwrite "
                              "to replace them")


def _makers() -> dict:
    """{figure's stem: function writing it (explained, path)} of the model's own figures."""
    from iste.eval import explain as ex

    return {"fig8_texture_learner": ex.texture_learner_figure,
            "fig9_decoders": ex.decoder_figure, "stf_retrieval": ex.retrieval_figure}


def run(args) -> int:
    from iste.data.images import read_image
    from iste.engine.frame import check_scale
    from iste.eval import explain as ex
    from iste.eval.methods import load_methods, parse_method_list
    from iste.locks import folder_lock
    from iste.models.heads.iste import ISTE
    from iste.runtime import pick_device

    scale = check_scale(args.scale)
    device = pick_device(args.device)
    image = read_image(resolve_input(args.image))
    ex.check_image(image.shape[:2], scale)
    specs = [f"full={args.model}"] + (parse_method_list(args.ablations) if args.ablations else [])
    methods = load_methods(specs, device=device)
    model = methods[0].model
    if not isinstance(model, ISTE):
        raise ValueError(f"--model {args.model}: the figures explain an ISTE model's parts; "
                         "give an ISTE checkpoint (or default)")
    for method in methods[1:]:
        method.at(scale)  # a fixed-scale ablation without this scale is refused now
    skipped = ex.lacking(model)
    if len(skipped) == len(ex.FIGURES) and len(methods) == 1:
        raise ValueError(f"--model {args.model} makes none of the figures "
                         f"({'; '.join(skipped.values())}): add --ablations for Fig. 10")
    names = [f"{stem}.png" for stem in _makers() if stem not in skipped]
    names += [_FIG10] if len(methods) > 1 else []
    # one run writes a folder's figures at a time: two at once each found them missing, and
    # the folder held the figures of both (Fig. 8 of one model beside Fig. 9 of the other)
    with folder_lock(args.out, f"another iste figures is writing {args.out}; wait for it or "
                     "choose another --out", what="figures folder", remove=True):
        return _write_figures(args, methods, model, image, scale, skipped, names)


def _write_figures(args, methods, model, image, scale: float, skipped: dict[str, str],
                   names: list[str]) -> int:
    """Explain ``model`` on ``image`` and write the figures ``names`` (the folder locked, and
    made by its lock: removed again if this fails before a figure is written)."""
    from iste.eval import explain as ex
    from iste.refusals import FileSystemError

    _refuse_existing(Path(args.out), names, overwrite=args.overwrite)
    for why in skipped.values():
        say(f"skipping: {why}")
    explained = ex.explain(model, image, scale)
    if explained.region is not None:
        r, c, side = explained.region
        say(f"explaining the {side} x {side} px square at row {r}, column {c} (the most "
            f"textured): the image ({image.shape[1]} x {image.shape[0]} px) is larger than "
            f"{ex.MAX_LR_SIDE} LR pixels at x{scale:g}, and STF's key window covers the whole "
            "figure")
    results = ([(m.name, m.upscale(explained.lr, explained.hr.shape[:2])) for m in methods]
               if len(methods) > 1 else [])  # all computed before the first file is written
    out = Path(args.out)
    written: list[Path] = []
    try:
        for stem, make in _makers().items():
            if stem not in skipped:
                written.append(make(explained, out / f"{stem}.png"))
        if len(methods) > 1:
            written.append(ex.ablation_figure(results, explained.lr, explained.hr,
                                              out / _FIG10, scale=scale))
    except FileSystemError as err:  # a full disk after some figures: the same command
        if not written:  # rerun was refused for them, without a word of it here
            raise
        raise type(err)(f"{err}; the figure(s) written before it stay "
                        f"({', '.join(p.name for p in written)}): free space and rerun "
                        "with --overwrite") from None
    for path in written:
        say(f"wrote {path}")
    if len(methods) == 1 and (out / _FIG10).exists():
        say(f"note: {out / _FIG10} is an earlier run's (this one makes no Fig. 10 without "
            "--ablations): left as it was")
    record(outputs=[str(p) for p in written])
    return 0
