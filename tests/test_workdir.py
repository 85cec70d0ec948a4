"""The slide job's work folder: opened once, verified on that open, and used through it."""

import os

import pytest

from iste.slides.workdir import (Finished, TileDamagedError, WorkDir, WorkDirTrustError,
                                finished_tiles, holds_tiles)

PARAMS = {"scale": 2.0, "model": "abc"}


def _folder_with_tiles(path, tiles):
    with WorkDir(path, PARAMS) as wd:
        for (row, col), data in tiles.items():
            wd.put(row, col, data)


@pytest.mark.parametrize("swap", ["another folder", "a link"])
def test_a_work_folder_replaced_by_name_while_open_redirects_nothing(tmp_path, swap):
    path, moved, other = tmp_path / "o.tiff.iste-work", tmp_path / "moved", tmp_path / "other"
    # a folder of well-formed tiles that are not ours (their hashes verify)
    _folder_with_tiles(other, {(0, 0): b"foreign", (0, 1): b"foreign"})
    with WorkDir(path, PARAMS) as wd:
        wd.put(0, 0, b"mine")
        os.rename(path, moved)  # the race: the folder is swapped after it was verified
        if swap == "a link":
            path.symlink_to(other, target_is_directory=True)
        else:
            os.rename(other, path)
        assert wd.get(0, 0) == b"mine"
        assert not wd.has(0, 1)
        wd.put(0, 1, b"mine too")
        (wd.scratch / "level1.bin").write_bytes(b"scratch")
        assert (moved / "scratch" / "level1.bin").read_bytes() == b"scratch"
        wd.remove()
    assert list(moved.iterdir()) == []  # emptied through the open folder
    with WorkDir(other if swap == "a link" else path, PARAMS) as foreign:
        assert foreign.get(0, 0) == foreign.get(0, 1) == b"foreign"  # untouched
        assert not (foreign.scratch / "level1.bin").exists()


def test_links_inside_the_folder_are_never_followed(tmp_path):
    path, victim = tmp_path / "w", tmp_path / "victim"
    victim.mkdir()
    (victim / "0").write_bytes(b"not a tile")
    _folder_with_tiles(path, {(0, 0): b"tile", (1, 0): b"tile"})
    (path / "tiles" / "0" / "0").unlink()
    (path / "tiles" / "0" / "0").symlink_to(victim / "0")
    (path / "tiles" / "1").rename(tmp_path / "row1")
    (path / "tiles" / "1").symlink_to(victim, target_is_directory=True)
    with WorkDir(path, PARAMS) as wd:
        for row in (0, 1):
            with pytest.raises(TileDamagedError):
                wd.get(row, 0)
            assert not wd.has(row, 0)  # discarded: the link itself, not its target
            wd.put(row, 0, b"new")
            assert wd.get(row, 0) == b"new"
    assert sorted(p.name for p in victim.iterdir()) == ["0"]
    assert (victim / "0").read_bytes() == b"not a tile"
    (path / "scratch").rmdir()
    (path / "scratch").symlink_to(victim, target_is_directory=True)
    with pytest.raises(WorkDirTrustError, match="symlink"):
        WorkDir(path, PARAMS).__enter__()


def test_finished_tiles_reads_what_a_rerun_would_resume_from_and_changes_nothing(tmp_path):
    path = tmp_path / "o.tiff.iste-work"
    assert finished_tiles(path, PARAMS) == Finished() and not path.exists()
    _folder_with_tiles(path, {(0, 0): b"a" * 10, (0, 1): b"b", (2, 3): b"c"})
    stored = path / "tiles" / "0" / "1"
    stored.write_bytes(stored.read_bytes()[:-1] + b"x")  # damaged: a rerun recomputes it
    (path / "tiles" / "notes.txt").write_bytes(b"")  # not a tile
    before = sorted((p, p.stat().st_mtime_ns) for p in path.rglob("*"))
    done = finished_tiles(path, PARAMS)
    assert done.tiles == {(0, 0), (2, 3)} and not done.busy and not done.stale
    assert done.bytes == (path / "tiles" / "0" / "0").stat().st_size + \
        (path / "tiles" / "2" / "3").stat().st_size
    assert sorted((p, p.stat().st_mtime_ns) for p in path.rglob("*")) == before
    other = finished_tiles(path, {**PARAMS, "scale": 3.0})  # another job's tiles
    assert other.tiles == frozenset() and other.stale
    with WorkDir(path, PARAMS):  # a job holds the folder: counted, and said
        held = finished_tiles(path, PARAMS)
        assert held.busy and held.tiles == done.tiles


def test_finished_tiles_refuses_a_folder_the_run_would_refuse(tmp_path):
    path, victim = tmp_path / "w", tmp_path / "victim"
    _folder_with_tiles(victim, {(0, 0): b"tile"})
    path.symlink_to(victim, target_is_directory=True)
    with pytest.raises(WorkDirTrustError, match="symlink"):
        finished_tiles(path, PARAMS)
    path.unlink()
    path.mkdir(mode=0o777)
    os.chmod(path, 0o777)
    with pytest.raises(WorkDirTrustError, match="writable by other users"):
        finished_tiles(path, PARAMS)


def test_a_finished_folder_emptied_in_place_keeps_its_lock_until_the_rest_is_removed(
        tmp_path, monkeypatch):
    # the lock file went first when listed first: a second job then locked a new one, started,
    # and the first deleted its manifest and tiles under it (where the folder cannot be
    # renamed aside first: a folder this user may not rename in)
    from iste.slides import workdir
    from iste.slides.workdir import WorkDirBusyError

    path = tmp_path / "o.tiff.iste-work"
    removed, refused = [], []
    remove_at = workdir._remove_at

    def spy(dir_fd, name):
        if name != "lock":  # a second job arriving during the cleanup is refused
            with pytest.raises(WorkDirBusyError):
                WorkDir(path, PARAMS).__enter__()
            refused.append(name)
        removed.append(name)
        remove_at(dir_fd, name)

    def refused_rename(folder):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(workdir, "move_aside", refused_rename)
    monkeypatch.setattr(workdir.os, "listdir", lambda fd: ["lock", "manifest.json", "tiles",
                                                           "scratch"])
    with WorkDir(path, PARAMS) as wd:
        wd.put(0, 0, b"tile")
        monkeypatch.setattr(workdir, "_remove_at", spy)
        wd.remove()
    assert removed[-1] == "lock" and sorted(refused) == ["manifest.json", "scratch", "tiles"]
    assert not path.exists()


def test_a_finished_folder_is_renamed_aside_before_it_is_emptied(tmp_path, monkeypatch):
    # emptied under its name, a job killed meanwhile left a half-emptied work folder beside
    # its output; renamed aside first, a job arriving meanwhile works in a folder of its own
    from iste.slides import workdir

    path = tmp_path / "o.tiff.iste-work"
    remove_at, seen = workdir._remove_at, []

    def spy(dir_fd, name):
        if not seen:
            seen.append(sorted(p.name for p in tmp_path.iterdir()))
            with WorkDir(path, PARAMS) as second:  # a new folder, not the one being emptied
                assert not second.has(0, 0)
                second.put(0, 1, b"second")
        remove_at(dir_fd, name)

    with WorkDir(path, PARAMS) as wd:
        wd.put(0, 0, b"tile")
        monkeypatch.setattr(workdir, "_remove_at", spy)
        wd.remove()
    assert len(seen[0]) == 1 and seen[0][0].startswith(".o.tiff.iste-work.") \
        and seen[0][0].endswith(".tmpdir")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the aside folder removed
    with WorkDir(path, PARAMS) as second:
        assert second.get(0, 1) == b"second"


def test_what_a_killed_removal_left_aside_is_removed_by_the_next_job(tmp_path):
    from iste.temps import move_aside
    from iste.slides.workdir import remove_leftovers

    output = tmp_path / "o.tiff"
    _folder_with_tiles(tmp_path / "o.tiff.iste-work", {(0, 0): b"tile"})
    aside = move_aside(tmp_path / "o.tiff.iste-work")
    dead = aside.with_name(aside.name.replace(f".{os.getpid()}-", ".999999999-"))
    os.rename(aside, dead)  # as a process that no longer runs left it
    (tmp_path / "o.tiff.iste-work").mkdir()
    live = move_aside(tmp_path / "o.tiff.iste-work")  # this process's: being deleted, kept
    assert remove_leftovers(output) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


def test_a_tile_that_cannot_be_made_is_one_line_naming_the_work_folder(tmp_path, monkeypatch):
    # the folder deleted while the job ran was "No such file or directory: '1'"; a disk that
    # filled at a new row's folder "No space left on device: 2", without the resume hint
    # the caller adds to a DiskFullError
    import errno
    import shutil

    from iste.refusals import DiskFullError, FileSystemError

    path = tmp_path / "out" / "o.tiff.iste-work"
    path.parent.mkdir()
    with WorkDir(path, PARAMS) as wd:
        wd.put(0, 0, b"tile")
        shutil.rmtree(tmp_path / "out")  # the output's folder, the work folder with it
        for row in (0, 1):  # a tile in a row whose folder was open, and a new row's
            with pytest.raises(FileSystemError, match=r"o.tiff.iste-work was removed while"):
                wd.put(row, 1, b"tile")
    real = os.mkdir
    path.parent.mkdir()

    def full(name, *args, **kwargs):
        if name == "2":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        return real(name, *args, **kwargs)

    with WorkDir(path, PARAMS) as wd:
        monkeypatch.setattr(os, "mkdir", full)
        with pytest.raises(DiskFullError, match=r"tiles/2: no space left on device"):
            wd.put(2, 0, b"tile")


def test_a_manifest_that_is_not_a_json_object_is_another_jobs(tmp_path):
    path = tmp_path / "w"
    with WorkDir(path, {"a": 1}) as wd:
        wd.put(0, 0, b"tile")
    (path / "manifest.json").write_text("[1, 2]")  # JSON, but no manifest
    with pytest.warns(UserWarning, match="no readable record of the job"):
        with WorkDir(path, {"a": 1}) as wd:
            assert not wd.has(0, 0)


def test_the_discarded_tiles_are_counted_without_a_killed_writes_temporary(tmp_path):
    path = tmp_path / "w"
    with WorkDir(path, {"a": 1}) as wd:
        wd.put(0, 0, b"tile")
    (path / "tiles" / "0" / ".1.5f2a.tmp").write_bytes(b"half a tile")
    with pytest.warns(UserWarning, match=r"^1 finished tile\(s\) in .* other a: discarded"):
        with WorkDir(path, {"a": 2}):
            pass


def test_a_killed_writes_temporary_or_a_linked_folder_holds_no_tiles_to_name(tmp_path):
    path = tmp_path / "w"
    (path / "tiles" / "0").mkdir(parents=True)
    (path / "tiles" / "0" / ".1.5f2a.tmp").write_bytes(b"half a tile")
    assert not holds_tiles(path)  # what a failed job's removal counts too
    (tmp_path / "link").symlink_to(path)
    (path / "tiles" / "0" / "1").write_bytes(b"tile")
    assert holds_tiles(path)
    assert not holds_tiles(tmp_path / "link")  # a run never follows it
    assert not holds_tiles(tmp_path / "missing")


def test_tiles_of_the_old_tissue_rule_are_said_to_be_an_older_istes(tmp_path):
    # a folder of session 30's job (its manifest without "tissue") resumed by the same command
    # was "made by a job with other tissue: discarded (the command that made them resumes
    # them)": no option tells them apart, the command that made them makes them anew
    path, job = tmp_path / "w", {"tissue": True}
    with WorkDir(path, {"job": job}) as wd:
        wd.put(0, 0, b"tile")
    with pytest.warns(UserWarning) as said:
        with WorkDir(path, {"job": job, "tissue": "smoothstep"}):
            pass
    (message,) = [str(w.message) for w in said]
    assert message.endswith("were made by a job with other tissue rule (an older iste's: "
                            "model or bicubic per tile): discarded")
    with WorkDir(path, {"job": job, "tissue": "smoothstep"}) as wd:  # --no-tissue's tiles
        wd.put(0, 0, b"tile")
    with pytest.warns(UserWarning, match=r"other job options: discarded \(the command that "
                      r"made them resumes them\)$"):
        with WorkDir(path, {"job": {"tissue": False}}):
            pass


def test_tiles_of_another_iste_version_are_not_said_to_be_resumed_by_their_command(tmp_path):
    # "(the command that made them resumes them)" was said of another iste's tiles: the same
    # command under this iste had just discarded them
    path = tmp_path / "w"
    with WorkDir(path, {"iste": "0.1.0", "job": 1}) as wd:
        wd.put(0, 0, b"tile")
    with pytest.warns(UserWarning, match=r"other iste version: discarded$"):
        with WorkDir(path, {"iste": "0.2.0", "job": 1}):
            pass


def test_a_filled_tile_is_resumed_only_where_asked_and_gives_back_its_bytes_and_note(tmp_path):
    # a tile not made from its input (filled where the slide could not be read) is stored with
    # its note; a rerun that does not keep filled tiles recomputes it, one that does gets the
    # tile's own bytes (not the note before them) and the note; a tile put over it is plain
    path, note = tmp_path / "w", {"filled": "white", "why": "unreadable"}
    with WorkDir(path, PARAMS) as wd:
        wd.put(0, 0, b"fill bytes", note)
        wd.put(0, 1, b"model bytes")
    with WorkDir(path, PARAMS) as wd:
        assert not wd.has(0, 0) and wd.has(0, 1) and wd.filled == {}
    with WorkDir(path, PARAMS, keep_filled=True) as wd:
        assert wd.has(0, 0) and wd.get(0, 0) == b"fill bytes"
        assert wd.filled == {(0, 0): note}
        wd.put(0, 0, b"model bytes now")
        assert wd.filled == {}
    with WorkDir(path, PARAMS) as wd:
        assert wd.has(0, 0) and wd.get(0, 0) == b"model bytes now"


def test_a_damaged_tile_is_counted_and_a_note_that_is_no_object_is_damage(tmp_path):
    import hashlib

    path = tmp_path / "w"
    _folder_with_tiles(path, {(0, 0): b"tile", (0, 1): b"tile"})
    blob = (path / "tiles" / "0" / "0").read_bytes()
    (path / "tiles" / "0" / "0").write_bytes(blob[:-1] + b"X")  # a changed byte
    payload = b"[1, 2]\nbytes"  # a fill note that verifies but is no JSON object
    (path / "tiles" / "0" / "1").write_bytes(b"iste-fill-sha256\n"
                                             + hashlib.sha256(payload).digest() + payload)
    with WorkDir(path, PARAMS, keep_filled=True) as wd:
        assert not wd.has(0, 0) and not wd.has(0, 1)
        assert wd.damaged == 2


def test_tiles_under_a_manifest_of_another_format_version_are_discarded(tmp_path):
    # the same job's parameters under another work-folder format: its tiles may be laid out
    # or hashed otherwise, so they are not resumed
    import json

    path = tmp_path / "w"
    _folder_with_tiles(path, {(0, 0): b"tile"})
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest,
                                                    "version": manifest["version"] + 1}))
    with pytest.warns(UserWarning, match="discarded"):
        with WorkDir(path, PARAMS) as wd:
            assert not wd.has(0, 0)
