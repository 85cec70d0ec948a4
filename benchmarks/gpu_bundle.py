"""Pack what the GPU check needs on a lent GPU machine beyond iste's own files (run it here).

    .venv/bin/python benchmarks/gpu_bundle.py                 # -> .gpu/ (git-ignored)
    # then, on the GPU machine, with .gpu carried beside the working tree:
    bash benchmarks/gpu_check.sh

The lent machine (an NVIDIA H200 box) has its own Python 3.12 with CUDA PyTorch and many of
iste's dependencies, no network, and takes at most 64 MiB of working tree and carried files in
all. So this packs, into ``.gpu/``:

* ``site.tar.xz``: the packages the check's steps need that the machine's image lacks
  (:data:`NEEDED`, with their dependencies, minus :data:`DEVICE_HAS`), at the versions
  installed here, as manylinux wheels for the machine's Python, installed into one folder
  and compressed with xz (the wheels themselves are half again as large: imagecodecs
  alone is 25 MiB zipped);
* ``cache/``: the sample files the steps read (:data:`SAMPLES`), laid out as iste's cache
  (``ISTE_CACHE_DIR``), each checked against its pinned sha256 when iste opens it there.

It refuses (exit 1) when the working tree and the bundle together pass the carry limit.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20  # the device tool's limit on the working tree plus carried paths

NEEDED = ("tiffslide", "tifffile", "simplejpeg", "platformdirs")
"""What the check's steps import that the machine's image lacks, or holds too old: the SVS
reader (JPEG tiles through imagecodecs) and the tifffile it reads through (the image's
tifffile predates zarr 3, so tiffslide found no group in its store: seen 2026-12-04), the
strict JPEG decoder, the cache folder."""

DEVICE_HAS = frozenset("""
    attrs certifi filelock fsspec h5py hypothesis imageio jinja2 lazy-loader matplotlib
    networkx numpy packaging pillow pluggy psutil pytest pyyaml safetensors scikit-image scipy
    setuptools six torch tqdm typing-extensions iniconfig sortedcontainers
""".split())
"""Packages of the machine's image that iste uses (its list as read on 2026-11-17, the device
tool's KINDS.md): not packed."""

SAMPLES = ("cmu-svs", "wsidicom-tile")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def closure(roots: tuple[str, ...] = NEEDED, skip: frozenset[str] = DEVICE_HAS) -> list[str]:
    """``name==version`` of ``roots`` and their requirements (those outside extras) as
    installed here, less ``skip``."""
    pins, todo, seen = [], list(roots), set(skip)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = md.distribution(name)
        pins.append(f"{dist.metadata['Name']}=={dist.version}")
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or "extra" not in str(req.marker):
                todo.append(req.name)
    return sorted(pins)


def absent_on_device(skip: frozenset[str] = DEVICE_HAS) -> list[str]:
    """The top-level modules of iste's requirements (its ``test`` extra included) that the
    machine lacks and the bundle does not carry (OpenSlide, wsidicom, the viewer's web
    stack, ...), as installed here: what ``gpu_check.py --dry-run`` refuses to import, so
    that a step or a device test needing one fails here as it would there."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    absent = ({canonicalize_name(Requirement(r).name) for r in wanted}
              - {canonicalize_name(n) for n in skip}
              - {canonicalize_name(pin.split("==")[0]) for pin in closure(skip=skip)})
    return sorted(module for module, dists in md.packages_distributions().items()
                  if {canonicalize_name(d) for d in dists} <= absent
                  and importlib.util.find_spec(module) is not None)  # not a stray RECORD path


def tree_bytes() -> int:
    """Bytes of what the device tool sends: tracked files and untracked ones git does not
    ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / p).stat().st_size for p in listed.decode().split("\0")
               if p and (ROOT / p).is_file())


def build(out: Path, python_version: str) -> int:
    from iste.data.samples import cache_root, sample_path

    if out.exists():
        shutil.rmtree(out)
    (out / "cache").mkdir(parents=True)
    pins = closure()
    with tempfile.TemporaryDirectory(prefix="iste-gpu-bundle-") as tmp:
        site = Path(tmp) / "site"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
               "--only-binary=:all:", "--python-version", python_version,
               "--implementation", "cp", "--target", str(site)]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        subprocess.run(cmd + pins, check=True)
        with tarfile.open(out / "site.tar.xz", "w:xz", preset=9) as tar:
            tar.add(site, arcname="site")
    for name in SAMPLES:
        path = sample_path(name)  # fetched and verified here if needed
        dest = out / "cache" / path.relative_to(cache_root())
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    bundle = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    total = tree_bytes() + bundle
    print(f"packed {len(pins)} packages for Python {python_version} ({' '.join(pins)}) and "
          f"{len(SAMPLES)} samples: {bundle / 2**20:.1f} MiB; with the working tree "
          f"{total / 2**20:.1f} MiB of the {CARRY_LIMIT / 2**20:.0f} MiB the device takes")
    if total > CARRY_LIMIT:
        print("gpu_bundle: error: too large to carry", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu")
    ap.add_argument("--python-version", default="3.12",
                    help="the GPU machine's Python (default 3.12)")
    args = ap.parse_args(argv)
    return build(args.out, args.python_version)


if __name__ == "__main__":
    sys.exit(main())
