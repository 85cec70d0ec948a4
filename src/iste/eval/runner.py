"""The evaluation loop: images x scales x methods, with a resumable per-result cache.

For each HR image and scale s (DESIGN.md section 4): ``lr, hr = evaluation_pair(HR, s)``
(HR cropped to round(floor(H/s)*s), LR of floor(H/s)), then every method super-resolves
``lr`` back to the size of ``hr``; the SR is scored with :func:`~iste.data.metrics.psnr` and
:func:`~iste.data.metrics.ssim`: by default the float prediction clamped to [0, 1], as the
published test code scores it; with ``metric_precision="uint8"`` the SR rounded to 8 bits (the
image a user gets as a file). ``Protocol.geometry="published"`` runs the published test's
geometry instead of our engine (:mod:`iste.eval.published`): flip-padded LR, 30 000-query
chunks that fix STF's key set, 8 pixels shaved at every scale.

Cache: every (method, image, scale) result is a small JSON file written atomically under
``OUT/cache/`` as soon as it is computed, named by a hash of everything that determines it:
the method's fingerprint (checkpoint sha256), the image's name and pixel digest, the scale and
the :class:`~iste.eval.protocol.Protocol` (including the iste version). A rerun — after an
interruption, or with more methods or scales — computes only what is missing (a relabelled
method's results are found under its old label's folder); changed weights, images or
protocol never reuse stale results. Changes to the code within one version are not detected: delete
``cache/`` after editing the model or engine code.
With FID on, each SR's features are cached next to it (``.npy``); for the figure image the SR
itself is kept (``.png``). ``cache/`` holds a ``.gitignore`` so reports can be committed
without it.

Nothing in the cache is trusted: a record carries its key and a sha256 over its fields and
the sha256 of each file beside it, so a record copied under another image's, scale's or
protocol's name, an edited number, or a replaced ``.npy`` / ``.png`` is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from iste.data.degrade import cropped_size
from iste.data.degradations import degradation_pair, parse_degradation
from iste.data import metrics
from iste.data.images import read_image
from iste.data.imagewrite import write_image
from iste.data.tensors import quantize
from iste.eval.datasets import TestSet
from iste.eval.fid import FeatureExtractor
from iste.eval.files import (jsonable, pixels_digest, save_npy_atomic, write_json_atomic,
                             write_text_atomic)
from iste.eval.methods import Method
from iste.eval.protocol import Protocol
from iste.digest import sha256_file
from iste.paths import ensure_dir, folders_made_undone
from iste.text import cut_to_bytes

__all__ = ["ResultCache", "EvalOutcome", "check_sizes", "evaluate", "load_kept_sr"]

_IGNORE = "# evaluation cache: not part of a report\n*\n"  # the cache's .gitignore


_SAFE_BYTES = 180  # of a name's safe form: with the scale, the key and a suffix, under 255


def _safe(text: str) -> str:
    """A file-name-safe, dot-free form of ``text`` (dots would look like suffixes): its first
    60 characters, fewer where they hold more than 180 bytes (60 letters of 4 bytes, CJK
    Extension B or mathematical letters, made a cache file name of 265 bytes: 'File name
    too long', the evaluation stopped)."""
    return cut_to_bytes("".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:60],
                        _SAFE_BYTES)


def _file(stem: Path, suffix: str) -> Path:
    return stem.parent / f"{stem.name}{suffix}"


class ResultCache:
    """Files under ``root``: ``<method>/<image>_x<scale>_<key>.{json,npy,png}``."""

    def __init__(self, root: Path, protocol: Protocol):
        self.root, self.protocol = Path(root), protocol
        # a cache folder made here goes again when its .gitignore cannot be written (a full
        # disk): an empty cache/ kept a refused run's --out from being removed with its lock
        with folders_made_undone(self.root):
            ensure_dir(self.root, what="evaluation cache")
            # written atomically, and again where it lacks its rule: written in place, a full
            # disk left it empty (kept so, the cache was no longer ignored) and said only
            # '[Errno 28] No space left on device'
            ignore = self.root / ".gitignore"
            try:
                kept = "*" in ignore.read_text(errors="replace").splitlines()
            except OSError:
                kept = False
            if not kept:
                write_text_atomic(ignore, _IGNORE)

    def stem(self, method: str, fingerprint: str, image: str, digest: str, scale: float,
             model: torch.nn.Module | None = None) -> Path:
        """The files of one result; ``model`` (None for bicubic and HR features) resolves the
        protocol's precision ("auto") in the key."""
        ident = json.dumps([fingerprint, image, digest, repr(float(scale)),
                            self.protocol.fingerprint(model)], sort_keys=True)
        key = hashlib.sha256(ident.encode()).hexdigest()[:16]
        return self.root / _safe(method) / f"{_safe(image)}_x{_safe(f'{scale:g}')}_{key}"

    def holding(self, stem: Path) -> Path:
        """Where the result of ``stem`` is: ``stem``, or else the same file name under
        another method's folder that holds a record (the name's key covers all the result
        depends on: weights, image, scale, protocol; the folder is only the label, so a
        relabelled method takes its results); ``stem`` when none does."""
        if _file(stem, ".json").is_file():
            return stem
        for found in sorted(self.root.glob(f"*/{stem.name}.json")):
            other = found.parent / stem.name
            if self.read_record(other) is not None:
                return other
        return stem

    @staticmethod
    def read_record(stem: Path, required: frozenset[str] = frozenset({"psnr", "ssim"})
                    ) -> dict | None:
        """The record cached at ``stem`` if it is one: its fields and the sha256 written with
        them agree, it was written under this name (its key), and it holds ``required``; the
        scores come back as floats (nan, +-inf included). None (recompute) if missing,
        unreadable, of another shape, edited or moved."""
        try:
            stored = json.loads(_file(stem, ".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or not (_RECORD_KEYS | required) <= stored.keys():
            return None
        record = {k: v for k, v in stored.items() if k != "sha256"}
        if stored["sha256"] != _record_sha(record) or record["key"] != _key(stem):
            return None
        if not isinstance(record["files"], dict):
            return None
        for name in required & _SCORES:
            value = _score(record[name])
            if value is None:
                return None
            record[name] = value
        return record

    @staticmethod
    def side_file(stem: Path, record: dict, suffix: str) -> Path | None:
        """The ``.png`` / ``.npy`` beside ``stem`` if it is the file ``record`` was written
        with (its sha256), else None."""
        path = _file(stem, suffix)
        expected = record["files"].get(suffix)
        if expected is None or not path.is_file():
            return None
        return path if sha256_file(path) == expected else None

    @staticmethod
    def write(stem: Path, record: dict, *, sr: np.ndarray | None = None,
              feats: np.ndarray | None = None) -> dict:
        """Write the files of one result, the record last (it marks the entry complete);
        returns the record as written (with its key and the sha256 of the bytes written to
        each file: none is read back, which could find another process's file there)."""
        ensure_dir(stem.parent, what="evaluation cache folder")
        files = {}
        if sr is not None:
            files[".png"] = write_image(_file(stem, ".png"), sr)
        if feats is not None:
            files[".npy"] = save_npy_atomic(_file(stem, ".npy"), feats)
        record = jsonable({**record, "key": _key(stem), "files": files})
        write_json_atomic(_file(stem, ".json"), {**record, "sha256": _record_sha(record)})
        return record


_RECORD_KEYS = {"method", "image", "scale", "key", "files", "sha256"}
_SCORES = frozenset({"psnr", "ssim"})


def _key(stem: Path) -> str:
    """The key a result's files are named by (the hash after the last ``_``)."""
    return stem.name.rsplit("_", 1)[-1]


def _score(value) -> float | None:
    """A stored score as a float: JSON keeps nan as null and +-inf as strings
    (:func:`iste.eval.files.jsonable`); None for anything else."""
    if value is None:
        return math.nan
    if value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _record_sha(record: dict) -> str:
    """sha256 of ``record`` as JSON stores it (so a record holding inf verifies when read)."""
    return hashlib.sha256(json.dumps(jsonable(record), sort_keys=True).encode()).hexdigest()


@dataclass
class EvalOutcome:
    """Per-result records, SR feature rows for FID, and where figure SRs are kept."""

    records: list[dict]
    sr_feats: dict[tuple[str, float], dict[str, np.ndarray]]  # (method, scale) -> image -> (D,)
    hr_feats: dict[float, dict[str, np.ndarray]]  # scale -> image -> (D,)
    kept_sr: dict[tuple[str, str, float], Path]  # (method, image, scale) -> png
    computed: int  # SR computations done in this run (the rest came from the cache)
    seconds: float


def _hr_features(cache: ResultCache, fid: FeatureExtractor, name: str, digest: str,
                 scale: float, hr: np.ndarray) -> np.ndarray:
    stem = cache.stem("_hr", f"hr-{fid.fingerprint}", name, digest, scale)
    record = cache.read_record(stem, required=frozenset())
    path = None if record is None else cache.side_file(stem, record, ".npy")
    if path is not None:
        return np.load(path)
    feats = fid.features([hr])[0]
    cache.write(stem, {"method": "_hr", "image": name, "scale": float(scale)}, feats=feats)
    return feats


def _progress(total: int, enabled: bool):
    from iste.progress import Progress

    return Progress(total, unit="sr", desc="eval", show=None if enabled else False)


def evaluate(test_set: TestSet, methods: Sequence[Method], scales: Sequence[float],
             out_dir: Path, *, protocol: Protocol = Protocol(),
             fid: FeatureExtractor | None = None, keep_sr_for: Sequence[str] = (),
             progress: bool = True, log: Callable[[str], None] = lambda msg: None
             ) -> EvalOutcome:
    """Run (or resume) the evaluation; results are cached in ``out_dir / "cache"``.

    keep_sr_for: names of images whose SR outputs are kept as PNG (for figures).
    """
    cache = ResultCache(Path(out_dir) / "cache", protocol)
    fid_tag = None if fid is None else f"fid-{fid.fingerprint}"
    outcome = EvalOutcome([], {}, {}, {}, 0, 0.0)
    start = time.perf_counter()
    total = len(test_set.images) * len(scales) * len(methods)
    skipped = len(test_set.images) * sum(not m.supports(s) for m in methods for s in scales)
    degradation = parse_degradation(protocol.degradation, allow_random=False)
    check_sizes(test_set, scales, protocol)
    with _progress(total, progress) as bar:
        for test_image in test_set.images:
            full = test_image.load()
            digest = pixels_digest([full])
            _check_evaluable(test_image.name, full.shape[:2], scales, protocol)
            for scale in scales:
                lr, hr = degradation_pair(full, scale, degradation)
                if fid is not None:
                    outcome.hr_feats.setdefault(scale, {})[test_image.name] = _hr_features(
                        cache, fid, test_image.name, digest, scale, hr)
                for method in methods:
                    bar.update(1)
                    if not method.supports(scale):  # fixed-scale, not this one: a "—" cell
                        continue
                    bar.set_postfix_str(f"{method.name} x{scale:g}")
                    keep = test_image.name in keep_sr_for
                    record = _one(cache, method.at(scale), test_image.name, digest, scale,
                                  hr, lr, protocol=protocol, fid=fid, fid_tag=fid_tag,
                                  keep=keep, outcome=outcome)
                    outcome.records.append(record)
    outcome.seconds = time.perf_counter() - start
    done = total - skipped
    log(f"evaluated {done} results ({outcome.computed} computed, "
        f"{done - outcome.computed} from the cache; {skipped} not applicable: fixed-scale "
        f"methods at other scales) in {outcome.seconds:.0f} s")
    return outcome


def check_sizes(test_set: TestSet, scales: Sequence[float], protocol: Protocol) -> None:
    """ValueError naming the first image whose size, known before loading it, is too small to
    score at one of ``scales`` (:func:`iste.data.metrics.check_evaluable`); the others are
    checked as they are loaded."""
    for test_image in test_set.images:
        if test_image.hw is not None:
            _check_evaluable(test_image.name, test_image.hw, scales, protocol)


def _check_evaluable(name: str, hw: tuple[int, int], scales: Sequence[float],
                     protocol: Protocol) -> None:
    for scale in scales:
        metrics.check_evaluable(cropped_size(hw, scale), scale, name=f"image {name}",
                                border=protocol.border)


def _one(cache: ResultCache, method: Method, image: str, digest: str, scale: float,
         hr: np.ndarray, lr: np.ndarray, *, protocol: Protocol, fid: FeatureExtractor | None,
         fid_tag: str | None, keep: bool, outcome: EvalOutcome) -> dict:
    """One (method, image, scale) result, from the cache or computed and cached."""
    stem = cache.stem(method.name, method.fingerprint, image, digest, scale, method.model)
    held = cache.holding(stem)  # under another label's folder when relabelled
    record = cache.read_record(held)
    png = npy = None
    if record is not None:
        png = cache.side_file(held, record, ".png") if keep else None
        npy = cache.side_file(held, record, ".npy") if fid is not None else None
    complete = (record is not None and (not keep or png is not None)
                and (fid is None or (npy is not None and record.get("fid_net") == fid_tag)))
    if complete:
        feats = np.load(npy) if fid is not None else None
        # the results follow the model (its fingerprint is in the key), not its label: a
        # relabelled method, or two labels of one file name, take them under their own name
        record = {**record, "method": method.name}
    else:
        t0 = time.perf_counter()
        sr = _super_resolve(method, lr, hr.shape[:2], scale, protocol)
        seconds = time.perf_counter() - t0
        if not np.isfinite(sr).all():  # scores of such an output mean nothing
            raise ValueError(f"method {method.name} gave non-finite pixels (nan or inf) for "
                             f"{image} at x{scale:g}: its weights or precision are broken; "
                             "check the model (iste info) or rerun with --precision fp32")
        scored = sr if protocol.metric_precision == "float" else quantize(sr)
        border = protocol.border
        record = {
            "method": method.name, "image": image, "scale": float(scale),
            "psnr": metrics.psnr(scored, hr, scale=scale, border=border),
            "ssim": metrics.ssim(scored, hr, scale=scale, variant=protocol.ssim_variant,
                                 border=border),
            "hr_hw": list(hr.shape[:2]), "lr_hw": list(lr.shape[:2]),
            "sr_seconds": round(seconds, 4), "fid_net": fid_tag,
            "precision": protocol.precision_for(method.model),
        }
        sr = quantize(sr)  # FID and the kept figure image are 8-bit images
        feats = fid.features([sr])[0] if fid is not None else None
        written = cache.write(stem, record, sr=sr if keep else None, feats=feats)
        record = {**written, "psnr": record["psnr"], "ssim": record["ssim"]}  # as floats
        png = _file(stem, ".png")
        outcome.computed += 1
    if keep:
        outcome.kept_sr[(method.name, image, float(scale))] = png
    if feats is not None:
        outcome.sr_feats.setdefault((method.name, float(scale)), {})[image] = feats
    return {k: v for k, v in record.items() if k not in ("key", "files")}  # the cache's own


def _super_resolve(method: Method, lr: np.ndarray, hr_hw: tuple[int, int], scale: float,
                   protocol: Protocol) -> np.ndarray:
    """SR of ``lr`` at the HR size: float32 in [0, 1] for models, uint8 for bicubic."""
    if protocol.geometry == "published" and not method.is_bicubic:
        from iste.eval.published import published_upscale

        return published_upscale(method.model, lr, hr_hw, scale, options=protocol.options)
    return method.upscale(lr, hr_hw, options=protocol.options, dtype="float32")


def load_kept_sr(outcome: EvalOutcome, method: str, image: str, scale: float) -> np.ndarray:
    """The kept SR PNG of (method, image, scale): uint8 (H, W, 3)."""
    return read_image(outcome.kept_sr[(method, image, float(scale))])

