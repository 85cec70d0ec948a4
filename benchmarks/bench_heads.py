"""LIT, ITSRN and LMI: our heads against their published code, with the same weights.

    .venv/bin/python benchmarks/bench_heads.py --published-lit ../CLIT \\
        --published-itsrn ../ITSRN/code --published-lmi ../COZ --pythonpath ../pylib \\
        [--size 48] [--scale 4] [--rounds 2] [--threads 2] [--methods lit,itsrn,lmi]

Each checkout is an exported work tree of the repository the registry names, imported as is
(:func:`iste.bench.published.import_published`: ``.cuda()`` a no-op, stand-ins for
tensorboardX/timm; ``--pythonpath`` for einops). ITSRN's registry has only RDN: its EDSR-baseline
is registered at run time from the LMI checkout's ``models/edsr.py`` (the LIIF-family module).
The model is the paper-size head on EDSR-baseline (16 blocks, 64 channels), built by the
published registry after ``torch.manual_seed(0)``; our side converts that state dict
(:func:`iste.models.official.convert_spec`). Every measurement is a fresh process (its own peak
RSS); published and ours alternate over ``--rounds`` and the fastest of each counts. The
published side decodes in chunks of 4096 queries as ``iste bench`` does; ours uses the engine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

_ENCODER = {"name": "edsr-baseline", "args": {"no_upsampling": True}}
SPECS = {
    "lit": {"name": "clit", "args": {
        "encoder_spec": _ENCODER, "base_dim": 256, "head": 8, "r": 3, "imnet_num": 1,
        "conv_num": 1, "is_cell": True, "local_attn": True,
        "pb_spec": {"name": "posenc", "args": {"posenc_type": "sinusoid", "posenc_scale": 10,
                                               "hidden_dims": 64, "enc_dims": 64, "gamma": 1}},
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256] * 4,
                                               "act": "gelu"}}}},
    "itsrn": {"name": "ITNSR", "args": {
        "encoder_spec": _ENCODER, "feat_unfold": True, "local_ensemble": True,
        "scale_token": True,
        "imnet_spec": {"name": "mlp", "args": {"hidden_list": [256] * 4, "act": "gelu"}}}},
    "lmi": {"name": "lmi", "args": {
        "encoder_spec": _ENCODER,
        "imnet_spec": {"name": "MLP-mixer-all-no_norm-sr64-localE",
                       "args": {"depth": 1, "out_dim": 3, "hidden_list": [256]}}}},
}
PUBLISHED_CHUNK = 4096


def _published_model(job: dict):
    from iste.bench.published import import_published

    models = import_published(job["checkout"])
    if job["method"] == "itsrn":
        spec = importlib.util.spec_from_file_location("models.edsr", job["edsr_from"])
        module = importlib.util.module_from_spec(spec)
        sys.modules["models.edsr"] = module
        spec.loader.exec_module(module)
    torch.manual_seed(0)
    return models.make(SPECS[job["method"]]).eval()


def _published_sr(model, method: str, x: torch.Tensor, out_hw) -> torch.Tensor:
    from iste.data.coords import make_coord

    coord = make_coord(out_hw)[None]
    cell = torch.tensor([2 / out_hw[0], 2 / out_hw[1]]).expand_as(coord).contiguous()
    if method == "lit":
        model.inp, model.prev_feat, model.im_idx, model.conv_idx = x, None, 0, 0
        model.gen_feat()
    else:
        model.inp = x
        model.gen_feat(x)
    preds = []
    for i in range(0, coord.shape[1], PUBLISHED_CHUNK):
        c, k = coord[:, i:i + PUBLISHED_CHUNK], cell[:, i:i + PUBLISHED_CHUNK]
        if method == "lit":
            model.prev_pred = None
            preds.append(model.query_rgb(c, k[:, 0]))
        elif method == "itsrn":
            preds.append(model.query_rgb(c, k / 2))  # ITSRN's scale: 1 / HR size
        else:
            preds.append(model.query_rgb(c, k))
    return (torch.cat(preds, 1)[0] * 0.5 + 0.5).clamp(0, 1).view(*out_hw, 3)


def child(job: dict) -> dict:
    from iste.eval.cost import peak_rss_bytes

    torch.set_num_threads(job["threads"])
    size, scale = job["size"], job["scale"]
    out_hw = (round(size * scale), round(size * scale))
    lr = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    if job["side"] == "weights":
        model = _published_model(job)
        torch.save({"model": {**SPECS[job["method"]], "sd": model.state_dict()}}, job["ckpt"])
        return {}
    if job["side"] == "published":
        model = _published_model(job)
        run = lambda: _published_sr(model, job["method"], (lr - 0.5) / 0.5, out_hw)  # noqa: E731
    else:
        from iste.engine.render import QueryOptions, super_resolve
        from iste.models.official import build_converted, load_official

        model = build_converted(load_official(job["ckpt"]))
        opts = QueryOptions(precision=job.get("precision", "fp32"))
        run = lambda: super_resolve(model, lr, out_hw, options=opts)[0].permute(1, 2, 0)  # noqa: E731
    with torch.no_grad():
        t0 = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - t0
    np.save(job["out"], out.float().numpy())
    return {"seconds": seconds, "mpx_per_s": out_hw[0] * out_hw[1] / 1e6 / seconds,
            "peak_mb": peak_rss_bytes() / 2 ** 20}


def _spawn(job: dict, pythonpath: list[str]) -> dict:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{job['method']} {job['side']}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for method in SPECS:
        parser.add_argument(f"--published-{method}", metavar="DIR")
    parser.add_argument("--pythonpath", action="append", default=[])
    parser.add_argument("--methods", default="lit,itsrn,lmi")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16", help="of our side")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    paths = [str(Path(p).resolve()) for p in args.pythonpath]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.size} x {args.size} LR "
          f"x{args.scale:g}, fastest of {args.rounds} interleaved rounds")
    print("| method | code | Mpx/s | peak RSS MB | speed vs published | max abs diff |")
    print("|---|---|---|---|---|---|")
    sides = ["published"] + [f"ours-{p}" for p in args.precisions.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            checkout = getattr(args, f"published_{method}")
            job = {"method": method, "checkout": str(Path(checkout).resolve()),
                   "edsr_from": str(Path(args.published_lmi or ".").resolve() / "models/edsr.py"),
                   "threads": args.threads, "size": args.size, "scale": args.scale,
                   "ckpt": f"{tmp}/{method}.pth"}
            _spawn({**job, "side": "weights"}, paths)
            best = {}
            for _ in range(args.rounds):
                for side in sides:
                    res = _spawn({**job, "side": side.split("-")[0], "out": f"{tmp}/{side}.npy",
                                  "precision": side.split("-")[-1]}, paths)
                    if side not in best or res["seconds"] < best[side]["seconds"]:
                        best[side] = res
            published = np.load(f"{tmp}/published.npy")
            for side in sides:
                r = best[side]
                ratio = best["published"]["seconds"] / r["seconds"]
                diff = float(np.abs(np.load(f"{tmp}/{side}.npy") - published).max())
                print(f"| {method} | {side} | {r['mpx_per_s']:.4f} | {r['peak_mb']:.0f} | "
                      f"{ratio:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
