"""A folder of HR images is the same images, in the same order, wherever it is given: as
training or validation data (iste.train.sources) and as a test set (iste.eval.datasets)."""

import os

import numpy as np
import pytest

from eval_helpers import texture
from iste.data.images import ImageReadError
from iste.data.imagewrite import write_image
from iste.eval.datasets import open_test_set
from iste.train.sources import FolderSource


def _histosr_tree(root):
    """HistoSR's layout: HR patches and, beside them, their LR versions at x2 and x4, plus a
    nested HR folder and a stray image at the top."""
    for sub in ("HR/b", "LR_x2", "LR_x4"):
        (root / sub).mkdir(parents=True)
    for n in range(2):
        write_image(root / f"HR/p{n}.png", texture(n, 96))
        write_image(root / f"LR_x2/p{n}.png", texture(n, 48))
        write_image(root / f"LR_x4/p{n}.png", texture(n, 24))
    write_image(root / "HR/b/a.png", texture(5, 96))
    write_image(root / "preview.png", texture(6, 96))
    return root


def test_a_training_folder_in_histosr_layout_trains_on_its_hr_images_only(tmp_path):
    """Given HistoSR's root, iste eval read only its HR folder while iste train also took the
    LR_x2 and LR_x4 images as HR ground truth (9 images instead of 3): crops of images already
    downscaled, counted in the epochs too."""
    root = _histosr_tree(tmp_path / "histosr")
    source = FolderSource(root)
    test_set = open_test_set(str(root))
    names = ["HR/b/a.png", "HR/p0.png", "HR/p1.png"]
    assert [p.relative_to(root).as_posix() for p in source.paths] == names
    assert [image.name for image in test_set.images] == names
    assert source.images == 3 and source.sizes == [96] * 3
    assert test_set.description.endswith("(HR folders only)")


@pytest.mark.parametrize("make, says", [
    (lambda p: os.symlink("gone.png", p), "it is a link to gone.png, which does not exist"),
    (os.mkfifo, "not a regular file"),
])
def test_a_test_folder_names_a_file_it_cannot_read_as_a_training_folder_does(tmp_path, make,
                                                                             says):
    """A link to nothing or a FIFO among the test images: a training folder refused it, a
    test folder left it out without a word (a smaller test set, its mean over other images)."""
    root = tmp_path / "test"
    root.mkdir()
    write_image(root / "a.png", texture(0, 48))
    make(root / "b.png")
    for open_folder in (FolderSource, lambda r: open_test_set(str(r))):
        with pytest.raises(ImageReadError, match=f"1 of 2 images are unusable.*b.png.*{says}"):
            open_folder(root)


def test_a_sub_folder_that_cannot_be_listed_is_named_not_left_out(tmp_path, monkeypatch):
    """A sub-folder of another user's (not listable): training and evaluation went on with the
    images of the other folders, without a word."""
    root = tmp_path / "data"
    (root / "mine").mkdir(parents=True)
    (root / "theirs").mkdir()
    write_image(root / "mine/a.png", texture(0, 48))
    write_image(root / "theirs/b.png", texture(1, 48))
    scandir = os.scandir

    def refuse_theirs(path="."):
        if os.fspath(path).endswith("theirs"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_theirs)  # root may read any folder
    for open_folder in (FolderSource, lambda r: open_test_set(str(r))):
        with pytest.raises(ImageReadError, match=r"cannot list .*theirs \(permission denied\)"):
            open_folder(root)


def test_training_and_test_folders_order_their_images_alike_whatever_the_listing(
        tmp_path, monkeypatch):
    """The order is the paths' (part by part), not the file system's listing: a training
    folder listed its top-level images first, then each sub-folder by its name as text, while
    a test folder of the same images sorted their paths."""
    root = tmp_path / "data"
    for sub in ("a", "a b", "a/c"):
        (root / sub).mkdir(parents=True)
    for name in ("z.png", "a/y.png", "a b/x.png", "a/c/w.png", "a.png"):
        write_image(root / name, np.zeros((16, 16, 3), np.uint8))
    order = ["a/c/w.png", "a/y.png", "a b/x.png", "a.png", "z.png"]

    def names():
        training = [p.relative_to(root).as_posix() for p in FolderSource(root).paths]
        assert [image.name for image in open_test_set(str(root)).images] == training
        return training

    assert names() == order
    scandir = os.scandir

    def backwards(path="."):
        with scandir(path) as entries:
            return _Entries(sorted(entries, key=lambda e: e.name, reverse=True))

    monkeypatch.setattr(os, "scandir", backwards)
    assert names() == order


class _Entries:
    """A listing of the given entries that iterates and closes like os.scandir's."""

    def __init__(self, entries):
        self._left = iter(entries)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._left)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass


def test_a_tiff_too_large_to_read_whole_is_refused_when_the_folder_is_indexed(tmp_path):
    """A whole-slide image saved as a 1 Gpx TIFF in a training folder passed the index (a PNG
    or JPEG of that size did not), then each crop drawn from it decoded 3 GB (or ran the
    machine out of memory) minutes into the run. The file is sparse: a header, no data."""
    import tifffile

    root = tmp_path / "data"
    root.mkdir()
    write_image(root / "a.png", texture(0, 48))
    header_only = tifffile.memmap(root / "slide.tif", shape=(32768, 32769, 3), dtype=np.uint8,
                                  photometric="rgb")
    del header_only  # written as it is dropped
    with pytest.raises(ImageReadError, match="slide.tif: 32769 x 32768 px is beyond the 1 Gpx"
                                             ".* list it in data.train by itself"):
        FolderSource(root)
    with pytest.raises(ImageReadError, match="slide.tif: .* iste eval --data wsi:PATH"):
        open_test_set(str(root))
