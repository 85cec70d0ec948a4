"""InceptionV3 as FID uses it (pytorch-fid's variant of the 2015-12-05 TensorFlow graph).

This is the network whose weights pytorch-fid publishes as ``pt_inception-2015-12-05-*.pth``
(a plain state dict; we never download it — the user points to the file). Module and
parameter names follow that state dict, so it loads strictly. The FID variant differs from
the ImageNet classifier InceptionV3 in three places, all to match the TensorFlow graph:
the 3 x 3 average pools inside the A, C and first E blocks exclude the padding from their
count (``count_include_pad=False``), the last E block pools with a 3 x 3 *max* pool, and the
classifier has 1008 outputs (unused here). Batch norms use eps = 1e-3.

Convention:
    input: (B, 3, 299, 299) float RGB in [-1, 1] (resize and scaling are done by the caller,
    :mod:`iste.eval.fid`). Output: (B, 2048) the global average of the last block's
    features (the "pool3" features of FID).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InceptionV3FID", "FID_INPUT_SIZE", "FID_FEATURES"]

FID_INPUT_SIZE = 299
FID_FEATURES = 2048
_NUM_CLASSES = 1008


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3 x 3 average pool, stride 1, padding excluded from the count (the TF graph)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """35 x 35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class BlockB(nn.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    """17 x 17 block with factorised 7x7 convolutions of ``c7`` channels."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class BlockD(nn.Module):
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    """8 x 8 block with split 1x3 / 3x1 convolutions; ``pool`` is "avg" or "max"."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
                          self.branch_pool(pooled)], 1)


class InceptionV3FID(nn.Module):
    """(B, 3, 299, 299) in [-1, 1] -> (B, 2048) pool3 features. Random weights until loaded."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, "avg")
        self.Mixed_7c = BlockE(2048, "max")
        self.fc = nn.Linear(FID_FEATURES, _NUM_CLASSES)  # in the weights file; unused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))

    @classmethod
    def from_weights(cls, path: str | os.PathLike) -> "InceptionV3FID":
        """Load pytorch-fid's ``pt_inception-2015-12-05-*.pth`` state dict (strictly), eval mode.

        Raises ValueError naming the file when it is not such a state dict.
        """
        from iste.models.checkpoint import load_torch_file

        try:
            state = load_torch_file(path)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
            raise ValueError(f"cannot read Inception weights {path}: not a torch file of "
                             f"tensors ({type(err).__name__}); give pytorch-fid's "
                             "pt_inception-2015-12-05-*.pth or a TorchScript network") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                   for v in state.values()):
            raise ValueError(f"{path} is not a state dict of tensors")
        model = cls()
        own = model.state_dict()
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
        missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(f"{path} is not pytorch-fid's InceptionV3 state dict (missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]}, "
                             f"wrong shape {wrong[:3]})")
        model.load_state_dict(state, strict=False)
        return model.eval()
