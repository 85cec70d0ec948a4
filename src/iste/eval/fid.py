"""Frechet Inception Distance: features from a network the user points to, distance with scipy.

No weights are ever downloaded. The user gives either

- pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a plain state dict, loaded into our
  plain-torch :class:`~iste.eval.inception.InceptionV3FID`) — the usual FID; or
- a feature extractor that maps (B, 3, 299, 299) float RGB in [-1, 1] to (B, D) features (or
  (B, D, h, w), averaged over h, w): a ``torch.export.save`` program (.pt2, checked before it
  is loaded: :mod:`iste.eval.exported`) or a TorchScript archive (``torch.jit.save``). Which
  one a file is is read from its content, not its suffix.

Preprocessing (pytorch-fid's): uint8 RGB / 255, bilinear resize to 299 x 299
(``align_corners=False``, no antialiasing), then ``2 x - 1``.

FID between feature sets X1 (n1, D) and X2 (n2, D) with means mu and covariances S (ddof 1):
``|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2))``. :func:`frechet_distance` computes
it from (mu, S) with ``scipy.linalg.sqrtm``, as pytorch-fid does. With fewer images than
feature dimensions (always, on small test sets: D = 2048) the covariances are low-rank and
``sqrtm`` of a 2048 x 2048 singular matrix is both slow (minutes on a CPU) and inexact, so
:func:`fid_from_features` then uses an exact identity instead: with S1 = A A^T,
S2 = B B^T (A = (X1 - mu1)^T / sqrt(n1 - 1), likewise B), the non-zero eigenvalues of S1 S2
are the squared singular values of A^T B, so ``Tr(sqrtm(S1 S2)) = ||A^T B||_*`` (nuclear norm).
Both routes agree to rounding (tested). Caveat for reports: FID on few images is dominated by
estimation bias; compare methods on the same images only, and prefer thousands of images.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from iste.eval.exported import is_exported_program, load_exported_program
from iste.eval.inception import FID_INPUT_SIZE, InceptionV3FID

__all__ = ["FID_MISSING_MESSAGE", "FID_TOO_FEW_MESSAGE", "FeatureExtractor",
           "load_feature_extractor", "feature_statistics", "frechet_distance",
           "fid_from_features"]

FID_MISSING_MESSAGE = (
    "FID not computed: no Inception network given. Pass --fid PATH with pytorch-fid's "
    "pt_inception-2015-12-05-6726825d.pth weights or a feature extractor saved by "
    "torch.export.save (.pt2) or torch.jit.save (TorchScript) (weights are never downloaded "
    "at run time)")
FEATURE_BATCH = 8  # images per forward pass of the feature network
FID_TOO_FEW_MESSAGE = ("FID not computed: it compares the statistics of a set of images and "
                       "needs at least 2 test images; this test set has 1")


class FeatureExtractor:
    """uint8 (H, W, 3) images -> (N, D) float64 features, with pytorch-fid's preprocessing.

    net: a module mapping (B, 3, 299, 299) in [-1, 1] to (B, D) or (B, D, h, w).
    fingerprint: identifies the network's weights (cached features are keyed by it).
    """

    def __init__(self, net: torch.nn.Module, *, device: torch.device | str = "cpu",
                 name: str = "", fingerprint: str = "", batch: int = FEATURE_BATCH):
        self.net, self.device, self.name, self.batch = net, torch.device(device), name, batch
        self.fingerprint = fingerprint or name

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 (H, W, 3) images (any sizes) -> (N, 3, 299, 299) float32 in [-1, 1]."""
        out = []
        for img in images:
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"expected uint8 (H, W, 3) images, got {img.dtype} {img.shape}")
            x = torch.from_numpy(np.array(img)).to(self.device)  # a writable copy
            x = x.permute(2, 0, 1)[None].float() / 255
            x = F.interpolate(x, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear",
                              align_corners=False)
            out.append(2 * x - 1)
        return torch.cat(out)

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float64 features of ``images``."""
        if len(images) == 0:
            raise ValueError("no images to extract features from")
        feats = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch):
                y = self.net(self.preprocess(images[i:i + self.batch]))
                if y.ndim > 2:
                    y = y.flatten(2).mean(-1)
                if y.ndim != 2:
                    raise ValueError(f"feature extractor {self.name} returned shape "
                                     f"{tuple(y.shape)}; expected (B, D)")
                if not bool(torch.isfinite(y).all()):  # said now, not after every SR is done
                    raise ValueError(f"feature extractor {self.name} returned NaN or "
                                     "infinite features")
                feats.append(y.double().cpu().numpy())
        return np.concatenate(feats)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in f"/{n}" for n in zf.namelist())


def load_feature_extractor(path: str | os.PathLike, *,
                           device: torch.device | str = "cpu") -> FeatureExtractor:
    """The FID network in ``path``: a torch.export program, a TorchScript archive, else
    pytorch-fid's state dict (told apart by content).

    Raises ValueError (one line) when the file is missing or is neither.
    """
    from iste.digest import sha256_file

    path = Path(path)
    if path.is_dir():  # 'not found' of a folder that is there read as a typing slip
        raise ValueError(f"FID network {path} is a folder; give the network's file (pytorch-fid's "
                         ".pth, a .pt2 or TorchScript file)")
    if not path.is_file():
        raise ValueError(f"FID network not found: {path}")
    ident = {"name": path.name, "fingerprint": f"{path.name}:{sha256_file(path)[:16]}"}
    if zipfile.is_zipfile(path):
        # read once: what is checked is what is loaded, whatever happens to the file meanwhile
        with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as zf:
            if is_exported_program(zf):
                try:
                    net, batch = load_exported_program(zf, device=device, batch=FEATURE_BATCH)
                except ValueError as err:
                    raise ValueError(f"cannot use torch.export program {path} as the FID "
                                     f"network: {err}") from None
                return FeatureExtractor(net, device=device, batch=batch, **ident)
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                # torch's notice that TorchScript is deprecated ("use torch.export"): a
                # DeprecationWarning up to torch 2.13, a FutureWarning, which a user sees,
                # from 2.14; neither is anything a user of --fid can act on
                warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated")
                net = torch.jit.load(str(path), map_location=device)
        except Exception as err:  # noqa: BLE001 - any failure means an unusable file
            raise ValueError(f"cannot load TorchScript feature extractor {path}: {err}") from err
        return FeatureExtractor(net.eval(), device=device, **ident)
    net = InceptionV3FID.from_weights(path).to(device)
    return FeatureExtractor(net, device=device, **ident)


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) with ddof 1 of features (N, D), N >= 2."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need features of >= 2 images as (N, D), got {feats.shape}")
    return feats.mean(0), np.atleast_2d(np.cov(feats, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     *, eps: float = 1e-6) -> float:
    """Frechet distance of two Gaussians N(mu1, sigma1), N(mu2, sigma2) with scipy's sqrtm.

    When the product of the covariances is singular enough for sqrtm to fail, ``eps`` is
    added to both diagonals; an imaginary part larger than 1e-3 of the trace is an error.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("the two feature statistics have different dimensions")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular products; handled below
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.all(np.isfinite(covmean)):
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    trace = np.trace(covmean)
    if np.iscomplexobj(covmean):
        if abs(trace.imag) > 1e-3 * max(1.0, abs(trace.real)):
            raise ValueError(f"sqrtm gave a complex trace {trace}: covariances ill-conditioned")
        trace = trace.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace)


def fid_from_features(feats1: np.ndarray | Sequence[np.ndarray],
                      feats2: np.ndarray | Sequence[np.ndarray]) -> float:
    """FID of two feature sets (n1, D), (n2, D): sqrtm when both n > D, else the exact
    low-rank identity (module notes). Clamped at 0 against rounding."""
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with one D, got {f1.shape}, {f2.shape}")
    if min(len(f1), len(f2)) < 2:
        raise ValueError("FID needs features of at least 2 images per set")
    dim = f1.shape[1]
    if min(len(f1), len(f2)) > dim:
        return max(0.0, frechet_distance(*feature_statistics(f1), *feature_statistics(f2)))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a = (f1 - mu1) / np.sqrt(len(f1) - 1)
    b = (f2 - mu2) / np.sqrt(len(f2) - 1)
    nuclear = scipy.linalg.svdvals(a @ b.T).sum()
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + (a * a).sum() + (b * b).sum() - 2 * nuclear))
