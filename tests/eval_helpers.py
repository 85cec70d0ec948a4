"""Small test sets and command-line checks shared by the evaluation tests."""

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from iste.cli.main import main
from iste.data.imagewrite import write_image


def texture(seed: int, size: int = 40) -> np.ndarray:
    """(size, size, 3) uint8: smoothed Gaussian noise around grey, deterministic per seed."""
    noise = np.random.default_rng(seed).normal(size=(size, size, 3))
    smooth = ndimage.gaussian_filter(noise, sigma=(1.5, 1.5, 0))
    return np.clip(128 + 60 * smooth / smooth.std(), 0, 255).astype(np.uint8)


def texture_folder(root: Path, n: int = 3, size: int = 40) -> Path:
    """``root``/img{i}.png = texture(i, size) for i < n."""
    root.mkdir(parents=True)
    for i in range(n):
        write_image(root / f"img{i}.png", texture(i, size))
    return root


def smooth_tile_folder(root: Path, n: int, base: int, size: int) -> Path:
    """``root``/tile{i}.png: random colours on a base x base grid, bicubic-resized to
    size x size (one seeded generator for all n tiles)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        grid = rng.integers(60, 200, (base, base, 3), dtype=np.uint8)
        img = np.array(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC))
        write_image(root / f"tile{i}.png", img)
    return root


def run_error(argv: list[str], capsys) -> str:
    """Run ``iste ARGV``; assert exit code 2 and one ``iste: error:`` line on stderr, and
    return that line (a usage error too, which argparse ends with SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iste: error: ") and "\n" not in err, err
    return err


TORCHSCRIPT_NOTICE = r"`torch\.jit\.\w+` is deprecated"
"""torch's notice on each torch.jit call: a DeprecationWarning up to torch 2.13, a FutureWarning
from 2.14. A test that calls torch.jit marks itself
``filterwarnings(f"ignore:{TORCHSCRIPT_NOTICE}")``, which leaves iste's deprecations errors."""


def tiny_fid_net(seed: int = 0):
    """A feature network as ``--fid`` takes one, seeded: a strided conv and tanh, (B, 3, 299,
    299) -> (B, 4, h, w) features (averaged over h, w), in eval mode."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.Tanh()).eval()


def tiny_fid_program(path: Path, net=None, *, dynamic_shapes="batch") -> Path:
    """``net`` (default :func:`tiny_fid_net`) exported with ``torch.export`` and saved at
    ``path`` as a .pt2 archive; the batch dimension dynamic from 1 up (``dynamic_shapes``
    "batch"), else as given (None: a static batch of 2)."""
    import torch

    net = tiny_fid_net() if net is None else net
    if dynamic_shapes == "batch":
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},)
    program = torch.export.export(net, (torch.zeros(2, 3, 299, 299),),
                                  dynamic_shapes=dynamic_shapes)
    torch.export.save(program, path)
    return path


def tiny_fid_extractor(path: Path, net=None) -> Path:
    """``net`` (default: a randomly initialised :func:`tiny_fid_net`) as a TorchScript feature
    extractor saved at ``path``, as ``--fid`` takes one. Without torch's notices that
    TorchScript is deprecated (:data:`TORCHSCRIPT_NOTICE`)."""
    import warnings

    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.Tanh()) \
        if net is None else net
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", TORCHSCRIPT_NOTICE)
        torch.jit.save(torch.jit.script(net), str(path))
    return path
