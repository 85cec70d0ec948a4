"""A cohort of slides: listing, output names, and sharding across processes.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the processes form a
torch.distributed group (:func:`iste.distributed.setup`: NCCL on GPUs, each process
on the GPU of its LOCAL_RANK, else gloo); rank r takes slides
r, r + W, r + 2W, ... of the sorted list, so each slide is written by exactly one process
(rank 0 lists the cohort and passes the list on: :func:`from_rank_0`).
Without torchrun there is one process that takes them all. Machines are just more ranks
(``torchrun --nnodes``); the output directory must then be shared.
"""

from __future__ import annotations

import contextlib
import os
import unicodedata
import warnings
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from iste.data.imageformats import SUPPORTED_SUFFIXES
from iste.paths import check_not_input, file_key, link_note, same_file
from iste.slides.formats import DICOM_SUFFIXES, SLIDE_SUFFIXES, TIFF_SUFFIXES, is_dicom
from iste.temps import is_temp_name

IMAGE_SUFFIXES = tuple(s for s in SUPPORTED_SUFFIXES if s not in TIFF_SUFFIXES)

__all__ = ["LIST_SUFFIXES", "list_slides", "output_paths", "shard",
           "distributed", "from_rank_0"]

LIST_SUFFIXES = (".txt", ".lst", ".list")
T = TypeVar("T")


def _dicom_folder(path: Path) -> bool:
    """Whether the sub-folder ``path`` of a listed folder is a DICOM slide; one that cannot
    be read (another user's: a tile cache, ``lost+found``) is passed over with a warning
    rather than stopping the listing of the slides beside it."""
    try:
        return is_dicom(path)
    except OSError as err:
        warnings.warn(f"skipping folder {path}: cannot read it "
                      f"({err.strerror or err}); a DICOM slide there is left out", stacklevel=4)
        return False


def list_slides(spec: str | os.PathLike, *, images: bool = False) -> list[Path]:
    """Slides of a cohort: the slide files in a folder (not recursive; a sub-folder holding
    DICOM files is one DICOM slide, and so ``.dcm`` files are not listed one by one; iste's
    temporaries, outputs still being written, are not listed: :func:`is_temp_name`; an entry
    named as a slide that is not a file, a link to nothing, is listed: it fails), or the
    lines of a text file (one path per line, relative to the list's folder; blank lines and
    ``#`` comments ignored; a line that names a file whole is that file, ``#`` and all).
    Returned sorted and de-duplicated.

    images: also list plain images (PNG, JPEG) of the folder.

    Raises:
        ValueError: nothing found, or a listed path does not exist or is neither a slide nor
            (with ``images``) an image.
    """
    spec = Path(spec)
    if spec.is_dir():
        suffixes = tuple(s for s in SLIDE_SUFFIXES if s not in DICOM_SUFFIXES)
        if images:
            suffixes += IMAGE_SUFFIXES
        # an entry named as a slide that is no file (a link to nothing, a link loop) is
        # listed too: its item fails naming it, where leaving it out lost it without a word
        # a temporary is another process's output as it is written (a DICOM series' folder
        # of instances so far), never an input
        found = [p for p in spec.iterdir() if not is_temp_name(p.name) and (
            (not p.is_dir() and p.suffix.lower() in suffixes) or (p.is_dir() and _dicom_folder(p)))]
        if not found:
            what = "slides or images" if images else "slides"
            raise ValueError(f"no {what} ({', '.join(suffixes)}, DICOM folders) in folder "
                             f"{spec}")
        return sorted(found)
    if not spec.is_file():
        raise ValueError(f"cohort list {spec}: no such file or folder")
    slides = []
    # each line the bytes of a file name, decoded as the file system's names are: read as
    # text in the locale's encoding, a name that was not UTF-8 (caf\xe9.svs from a Windows
    # share), or under an ASCII locale any name beyond ASCII, failed the whole list ("'utf-8'
    # codec can't decode byte 0xe9 in position 3")
    for n, line in enumerate(map(os.fsdecode, spec.read_bytes().splitlines()), 1):
        # a name that begins with a space (Linux and macOS allow it) is the whole line where
        # that names a file: stripped, ' a.svs' was 'a.svs', another slide if one is there
        if not (line.strip() and os.path.lexists(spec.parent / line)):
            line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line) if Path(line).is_absolute() else spec.parent / line
        if not os.path.lexists(p):  # a comment after the path; a name with '#' is a name
            line = line.split("#", 1)[0].strip()
            p = Path(line) if Path(line).is_absolute() else spec.parent / line
        if not p.exists():
            raise ValueError(f"{spec}:{n}: {line}: no such file{link_note(p)}")
        if not (p.is_dir() and is_dicom(p) or p.is_file() and p.suffix.lower() in
                (*SLIDE_SUFFIXES, *(IMAGE_SUFFIXES if images else ()))):
            what = "a slide, an image" if images else "a slide"
            raise ValueError(f"{spec}:{n}: {line} is not {what} or a DICOM folder (by its "
                             "suffix or its files)")
        slides.append(p)
    if not slides:
        raise ValueError(f"cohort list {spec} names no slides")
    return sorted(set(slides))


def _caseless(name: str) -> str:
    """``name`` as a disk that ignores case and Unicode normalisation compares it (Unicode's
    canonical caseless match): macOS takes Präparat.svs spelt with one character for 'ä'
    (Windows, Linux) and with 'a' and a combining accent (macOS's own spelling) for one
    name, which Linux keeps apart: two slides so named had one output there."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def output_paths(slides: list[Path], out_dir: Path,
                 suffix: str | list[str] = ".tiff") -> list[Path]:
    """``out_dir / <slide stem><suffix>`` for each slide (``suffix``: one for all, or one per
    slide); two slides with the same output name, or names that differ only by case (one file
    on disks that ignore case), are an error (their outputs would collide), and so is an
    output folder that holds one of the inputs (under any spelling or through a symlink) and
    an output that is one of the inputs.

    Raises:
        ValueError / FileSystemError: before anything is written.
    """
    suffixes = [suffix] * len(slides) if isinstance(suffix, str) else list(suffix)
    for p in slides:
        # same_file: also an output folder not made yet that will be the input's once it
        # is (F/new/.. is F once new is made): compared by inode alone, it passed, and the
        # outputs were written beside the inputs
        if same_file(out_dir, p.parent):
            raise ValueError(f"output folder {out_dir} holds the input {p.name}: the outputs "
                             "would mix with the inputs (and be read as inputs by the next run "
                             "on it); choose another folder")
        if p.is_dir():  # a DICOM slide: the outputs not in its folder (nor are they it)
            check_not_input(out_dir, p, what="output folder")
    outs = [out_dir / (p.stem + s) for p, s in zip(slides, suffixes, strict=True)]
    seen: dict[str, tuple[Path, Path]] = {}
    for slide, out in zip(slides, outs):
        # by the name's case-folded spelling: on a disk that ignores case (exFAT, SMB, macOS)
        # a.tiff and A.tiff are one file, and the second slide's output was 'skipped: exists'
        name = _caseless(str(out))
        if name in seen:
            other, taken = seen[name]
            ignored = "case is" if str(taken).casefold() == str(out).casefold() else \
                "case and the spelling of accents are (macOS: ä as one character or as a " \
                "and an accent)"
            where = out if taken == out else f"{taken} and {out}, one file where {ignored} ignored"
            raise ValueError(f"{other} and {slide} would both be written to {where}")
        seen[name] = slide, out
    inputs = {file_key(p): p for p in slides}
    for out in outs:
        key = file_key(out)
        if key is not None and key in inputs:
            check_not_input(out, inputs[key])
    return outs


def shard(items: list, rank: int, world: int) -> list:
    """Items rank, rank + world, ... (each item in exactly one shard)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of size {world}")
    return items[rank::world]


@contextlib.contextmanager
def distributed(device=None) -> Iterator[tuple[int, int, object]]:
    """(rank, world size, device): the training's torchrun group
    (:func:`iste.distributed.setup`) under torchrun, else (0, 1, device). ``device``
    (a torch.device) forces the device; by default a process takes its local GPU, or the CPU.

    On exit every rank waits for the others (so a launcher sees the cohort finished only
    when all slides are done) and the group is destroyed.
    """
    from iste.distributed import barrier, process_group

    with process_group(device) as (info, dev):
        yield info.rank, info.world, dev
        barrier(info)


def from_rank_0(make: Callable[[], T]) -> T:
    """``make()`` run by rank 0 alone, its result (or its error, raised on every rank) passed
    to the others (:func:`iste.distributed.broadcast`); ``make()`` without torch.distributed.
    For what every rank must see alike: a cohort's items, listed from a folder that may change
    between two ranks' listings (a slide added), which would shard the items differently."""
    import torch.distributed as dist

    from iste.distributed import DistInfo, broadcast

    if not (dist.is_available() and dist.is_initialized()):
        return make()
    info = DistInfo(dist.get_rank(), dist.get_world_size())
    made, error = None, None
    if info.is_main:
        try:
            made = make()
        except Exception as exc:  # noqa: BLE001 - raised on every rank below
            error = exc
    made, error = broadcast(info, (made, error))
    if error is not None:
        raise error
    return made


def gather_results(counts: dict[str, int], *records: list) -> tuple:
    """Over the group (as given without torch.distributed): the per-rank counters summed and
    each list of per-rank records joined in rank order (every rank gets all), waiting for the
    slowest rank as long as :data:`iste.distributed.PATIENCE`. Returns
    ``(counts, *records)``."""
    import torch.distributed as dist

    from iste.distributed import DistInfo, gather

    if not (dist.is_available() and dist.is_initialized()):
        return (dict(counts), *records)
    parts = gather(DistInfo(dist.get_rank(), dist.get_world_size()), (counts, *records))
    total: dict[str, int] = {}
    for part in parts:
        for k, v in part[0].items():
            total[k] = total.get(k, 0) + v
    return (total, *([r for part in parts for r in part[n]] for n in range(1, len(parts[0]))))
