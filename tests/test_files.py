"""iste.files: folders written atomically (a DICOM series), their leftovers, file digests."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from iste import digest, files, locks, paths, refusals, temps
from iste.files import write_dir_atomic
from iste.refusals import FileSystemError
from iste.temps import remove_stale_temps
from file_times import after_the_tick_of


def _write_series(names):
    def write(tmp):
        for name in names:
            (tmp / name).write_text(name)
    return write


def _siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir())


@pytest.mark.parametrize("exchange", ["renameat2", "two renames"])
def test_a_complete_folder_replaces_the_old_one_and_nothing_is_left_beside(tmp_path, monkeypatch,
                                                                          exchange):
    if exchange == "two renames":
        monkeypatch.setattr(files, "_renameat2_exchange", lambda a, b: False)
    out = tmp_path / "series"
    write_dir_atomic(out, _write_series(["a.dcm", "b.dcm"]))
    write_dir_atomic(out, _write_series(["c.dcm"]))
    assert sorted(p.name for p in out.iterdir()) == ["c.dcm"]
    assert _siblings(out) == ["series"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~files.umask())


@pytest.mark.parametrize("exchange", ["renameat2", "two renames"])
def test_a_failing_write_keeps_the_old_folder_untouched(tmp_path, monkeypatch, exchange):
    if exchange == "two renames":
        monkeypatch.setattr(files, "_renameat2_exchange", lambda a, b: False)
    out = tmp_path / "series"
    write_dir_atomic(out, _write_series(["old.dcm"]))

    def half_then_fail(tmp):
        (tmp / "new.dcm").write_text("half")
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        write_dir_atomic(out, half_then_fail)
    assert [p.name for p in out.iterdir()] == ["old.dcm"]
    assert (out / "old.dcm").read_text() == "old.dcm"
    assert _siblings(out) == ["series"]


def test_a_full_disk_is_one_line_and_a_file_in_the_way_is_refused(tmp_path):
    def full(tmp):
        raise OSError(28, os.strerror(28))

    with pytest.raises(FileSystemError, match="nothing was replaced"):
        write_dir_atomic(tmp_path / "series", full)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileSystemError, match="not a folder"):
        write_dir_atomic(tmp_path / "file", _write_series(["a"]))
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(FileSystemError, match="not a folder"):
        write_dir_atomic(tmp_path / "link", _write_series(["a"]))
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_stale_temporary_folders_of_a_killed_write_are_removed(tmp_path):
    out = tmp_path / "series"
    stale = tmp_path / ".series.abc123.tmpdir"
    (stale / "old").mkdir(parents=True)
    (stale / "old" / "x.dcm").write_text("x")
    other = tmp_path / ".other.abc.tmpdir"
    other.mkdir()
    link = tmp_path / ".series.link.tmpdir"
    link.symlink_to(other, target_is_directory=True)
    assert remove_stale_temps(out) == []  # an older iste's: its writer is unknown
    assert remove_stale_temps(out, locked=True) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc.tmpdir",
                                                          ".series.link.tmpdir"]


_SRC = str(Path(__file__).resolve().parents[1] / "src")


def _writer_in_the_middle(path):
    """A process writing ``path`` with write_atomic, stopped in the middle of it (its
    temporary holds half the data) until it is killed."""
    code = ("import time\nfrom iste.files import write_atomic\n"
            "def write(tmp):\n"
            "    open(tmp, 'wb').write(b'half')\n"
            "    print('writing', flush=True)\n"
            "    time.sleep(600)\n"
            f"write_atomic({str(path)!r}, write)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        _SRC, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline() == b"writing\n"
    return proc


def test_a_killed_writers_temporary_is_removed_by_the_next_write_a_live_ones_kept(tmp_path):
    from iste.data.imagewrite import write_image

    out = tmp_path / "out.png"
    pixels = np.zeros((4, 4, 3), np.uint8)
    proc = _writer_in_the_middle(out)
    try:
        (temp,) = tmp_path.iterdir()
        assert temp.name.startswith(".out.png.") and temp.name.endswith(".tmp")
        write_image(out, pixels)  # another write of the same output while it writes
        assert temp.read_bytes() == b"half"
    finally:
        proc.kill()  # kill -9: it cannot remove its temporary
        proc.wait()
    assert temp.exists()
    write_image(out, pixels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_killed_sidecar_writes_temporary_is_removed_with_the_next_image(tmp_path):
    from iste.provenance import Provenance, write_with_sidecar

    out = tmp_path / "out.png"
    proc = _writer_in_the_middle(tmp_path / "out.png.json")
    proc.kill()
    proc.wait()
    write_with_sidecar(out, np.zeros((4, 4, 3), np.uint8), Provenance(
        model="m", model_sha="0" * 16, architecture="LIIF + edsr-baseline", scale=2.0,
        precision="fp32", stf_keys=0, source="in.png",
        source_sha256=None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "out.png.json"]


def test_only_a_temporary_whose_writer_is_provably_gone_is_removed(tmp_path):
    out = tmp_path / "out.png"
    pid, host = os.getpid(), temps._host_id()
    start = temps._start_time(pid)
    assert start  # this system says when a process started (Linux)
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its id is free
    names = {
        "alive": f".out.png.a1b2c3d4.{pid}-{start}-{host}.tmp",
        "reused": f".out.png.b1b2c3d4.{pid}-{start + 1}-{host}.tmp",  # its id, another start
        "dead": f".out.png.c1b2c3d4.{dead.pid}-1-{host}.partial",
        "elsewhere": f".out.png.d1b2c3d4.{dead.pid}-1-0badf00d.tmp",  # another machine's
        "older": ".out.png.e1b2c3d4.tmp",  # an older iste's, no writer in the name
        "other output": f".out.png.x.png.f1b2c3d4.{dead.pid}-1-{host}.tmp",  # out.png.x.png's
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"half")
    removed = {p.name for p in remove_stale_temps(out)}
    assert removed == {names["reused"], names["dead"]}
    removed = {p.name for p in remove_stale_temps(out, locked=True)}  # we hold the lock
    assert removed == {names["elsewhere"], names["older"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["alive"], names["other output"]])


def test_an_image_is_written_into_a_folder_that_cannot_be_listed(tmp_path, monkeypatch):
    """A drop folder (mode -wx: files may be made, not listed): the search for a killed
    write's temporaries failed, and with it the write (PermissionError)."""
    from iste.data.imagewrite import write_image

    folder = tmp_path / "drop"
    folder.mkdir()
    for name in ("listdir", "scandir"):  # as for a user other than root with mode 0o300
        def refused(path=".", real=getattr(os, name)):
            if Path(path) == folder:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(os, name, refused)
    assert remove_stale_temps(folder / "out.png") == []
    write_image(folder / "out.png", np.zeros((4, 4, 3), np.uint8))
    monkeypatch.undo()
    assert [p.name for p in folder.iterdir()] == ["out.png"]


def test_write_bytes_at_writes_into_the_open_folder_whatever_its_name_is_now(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        folder.rename(tmp_path / "moved")
        files.write_bytes_at(fd, "tile", b"abc", mode=0o600)
        files.write_bytes_at(fd, "tile", b"new")  # replaces
    finally:
        os.close(fd)
    assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == ["tile"]  # no temp left
    assert (tmp_path / "moved" / "tile").read_bytes() == b"new"
    assert oct((tmp_path / "moved" / "tile").stat().st_mode & 0o777) == oct(0o600)


def test_a_write_that_may_not_replace_keeps_a_file_that_appeared_and_leaves_no_temporary(
        tmp_path, monkeypatch):
    import errno as errno_codes

    from iste import files

    path = tmp_path / "out.bin"

    def others_land_first(tmp):  # another process's file appears while ours is written
        path.write_bytes(b"theirs")
        with open(tmp, "wb") as f:
            f.write(b"ours")

    for links in (True, False):  # a file system without hard links: check, then rename
        if not links:
            def no_links(src, dst):
                raise OSError(errno_codes.EPERM, "hard links not permitted")
            monkeypatch.setattr(files.os, "link", no_links)
        path.unlink(missing_ok=True)
        with pytest.raises(FileExistsError, match="--overwrite"):
            files.write_atomic(path, others_land_first, replace=False)
        assert path.read_bytes() == b"theirs"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
        path.unlink()
        files.write_atomic(path, lambda tmp: open(tmp, "wb").write(b"ours"), replace=False)
        assert path.read_bytes() == b"ours"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_file_is_digested_once_while_unchanged_and_again_once_written(tmp_path, monkeypatch):
    import hashlib

    path = tmp_path / "slide.bin"
    path.write_bytes(b"a" * 5000)
    reads = []
    real = hashlib.sha256
    monkeypatch.setattr(digest.hashlib, "sha256", lambda *a: reads.append(1) or real(*a))
    digest.sha256_file(path)  # just written: its times may not have moved yet; not kept
    digest.sha256_file(path)
    assert len(reads) == 2
    reads.clear()
    monkeypatch.setattr(digest, "_now_ns", lambda: path.stat().st_ctime_ns + 10**10)
    first = digest.sha256_file(path)
    assert digest.sha256_file(path) == first == real(b"a" * 5000).hexdigest()
    assert len(reads) == 1  # the second digest came from the first read
    st = path.stat()
    after_the_tick_of(st.st_ctime_ns, tmp_path)  # the clock above says seconds have passed
    path.write_bytes(b"b" * 5000)  # same size, its modification time set back
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert digest.sha256_file(path) == real(b"b" * 5000).hexdigest() and len(reads) == 2


def test_the_writer_tag_is_read_once_per_process_and_anew_under_another_id(monkeypatch):
    calls = []
    real = temps._start_time
    monkeypatch.setattr(temps, "_start_time", lambda pid: calls.append(pid) or real(pid))
    monkeypatch.setattr(temps, "_WRITER_TAG", None)
    own = temps._writer_tag()
    assert temps._writer_tag() == own and calls == [os.getpid()]  # /proc read once
    assert own == f"{os.getpid()}-{real(os.getpid())}-{temps._host_id()}"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a forked child: another id, and its own start time
        monkeypatch.setattr(files.os, "getpid", lambda: other.pid)
        assert temps._writer_tag() == f"{other.pid}-{real(other.pid)}-{temps._host_id()}"
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_names_its_temporaries_by_its_own_id():
    temps._writer_tag()  # known in the parent before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its tag and leave without running pytest's exit
        try:
            os.write(write, temps._writer_tag().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        tag = f.read().decode()
    os.waitpid(pid, 0)
    assert tag.split("-")[0] == str(pid) and tag != temps._writer_tag()


def test_a_folder_in_a_files_place_is_one_line_and_left_as_it_was(tmp_path):
    # os.replace said "[Errno 21] Is a directory: '.x.json.ab12.tmp' -> 'x.json'" (iste eval
    # printed it when a folder sat where a cache record belongs)
    target = tmp_path / "x.json"
    target.mkdir()
    (target / "inside").write_text("kept")
    with pytest.raises(FileSystemError, match=r"cannot write .*x\.json: a folder is in its "
                                              r"place; move it away \(nothing was written\)"):
        files.write_atomic(target, lambda tmp: Path(tmp).write_text("{}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no temporary left
    assert (target / "inside").read_text() == "kept"


@pytest.mark.parametrize("when", ["before", "while writing"])
def test_a_write_whose_folder_was_removed_names_the_folder_not_a_temporary(tmp_path, when):
    # a job's output folder removed under it (a cleanup of scratch): "[Errno 2] No such file
    # or directory: '.x.json.<random>.tmp'", naming a file the user never named
    import shutil

    folder = tmp_path / "out"
    folder.mkdir()

    def write(tmp):
        if when == "while writing":
            shutil.rmtree(folder)  # the temporary goes with it
        Path(tmp).write_text("{}")

    if when == "before":
        shutil.rmtree(folder)
    with pytest.raises(FileNotFoundError, match=r"^cannot write .*out/x\.json: its folder .*out "
                       r"does not exist \(removed while the command ran\?\) \(nothing was "
                       r"written\)$"):
        files.write_atomic(folder / "x.json", write)
    assert not folder.exists()


def test_a_folder_in_an_images_place_leaves_no_sidecar_and_costs_no_work(tmp_path):
    # write_atomic found the folder at os.replace, after the image was encoded and the
    # provenance sidecar written (its ``then``): 'nothing was written' said, x.png.json left
    # without its image
    from iste.provenance import Provenance, write_with_sidecar

    target = tmp_path / "x.png"
    target.mkdir()
    with pytest.raises(FileSystemError, match="a folder is in its place"):
        write_with_sidecar(target, np.zeros((4, 4, 3), np.uint8), Provenance(
            model="m", model_sha="0" * 16, architecture="LIIF + edsr-baseline", scale=2.0,
            precision="fp32", stf_keys=0, source="in.png", source_sha256=None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    written = []
    with pytest.raises(FileSystemError, match="a folder is in its place"):
        files.write_atomic(target, written.append)
    assert not written
    (tmp_path / "link").symlink_to(target)  # a link to a folder is replaced, as before
    files.write_atomic(tmp_path / "link", lambda tmp: Path(tmp).write_text("{}"))
    assert (tmp_path / "link").is_file() and target.is_dir()



def test_a_pipe_in_a_files_place_is_refused_and_kept_before_any_work(tmp_path):
    # an atomic write renamed its temporary over whatever held the name: --json-summary
    # /dev/full (or -o a link to /dev/null, --overwrite) replaced root's device with a file
    pipe, link = tmp_path / "p.json", tmp_path / "link.png"
    os.mkfifo(pipe)
    link.symlink_to(pipe)
    for target in (pipe, link):
        written = []
        with pytest.raises(FileSystemError, match=rf"cannot write .*{target.name}: it is a "
                                                  r"pipe, not a file; give a file name"):
            files.write_atomic(target, written.append)
        with pytest.raises(FileSystemError, match="it is a pipe"):
            paths.check_output_file(target, "--json-summary")
        assert not written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.png", "p.json"]
    assert link.is_symlink() and pipe.is_fifo()
    paths.check_output_file(link, "--log-file", replaced=False)  # a log is appended to
    summary = subprocess.run([sys.executable, "-m", "iste", "data", "--json-summary", str(pipe),
                              "list"], capture_output=True, text=True, timeout=120)
    assert summary.returncode == 2 and pipe.is_fifo()
    assert summary.stderr.splitlines()[-1].endswith("it is a pipe, not a file; give a file "
                                                    "name (nothing was written)")

def test_a_locked_folder_the_block_made_and_left_empty_goes_when_it_fails(tmp_path):
    # a downstream run refused for its data after taking the lock left --out holding .lock
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError):
        with locks.folder_lock(out, "busy"):
            raise RuntimeError("bad data")
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError):  # something written: kept, for the next run to resume
        with locks.folder_lock(out, "busy"):
            (out / "partial.json").write_text("{}")
            raise RuntimeError("later")
    assert (out / "partial.json").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(RuntimeError):  # a folder that was there before: kept
        with locks.folder_lock(mine, "busy"):
            raise RuntimeError("bad data")
    assert mine.is_dir()
    with locks.folder_lock(out, "busy"):  # a success keeps what it made
        pass
    assert (out / ".lock").exists()


def test_a_shared_folders_lock_file_follows_the_umask_as_its_other_files(tmp_path):
    """.lock was made 0600 whatever the umask: in a lab group's folder (umask 002), where
    every other file of a training run was group-writable, a group member's --resume failed
    with "[Errno 13] Permission denied: 'run/.lock'"."""
    old = os.umask(0o002)
    try:
        with locks.folder_lock(tmp_path / "run", "busy"):
            pass
    finally:
        os.umask(old)
    assert oct((tmp_path / "run" / ".lock").stat().st_mode & 0o777) == oct(0o664)


def test_a_lock_file_that_cannot_be_opened_is_one_line_naming_it(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").touch()  # another user's, 0600
    real_open = os.open

    def refused(path, flags, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", refused)
    with pytest.raises(refusals.FileSystemError, match=r"run folder .*run: its lock file \.lock "
                       r"cannot be opened for writing \(permission denied\): another user"):
        with locks.folder_lock(tmp_path / "run", "busy", what="run folder"):
            pass


@pytest.mark.parametrize("code, said", [(errno.EACCES, "permission denied"),
                                         (errno.EROFS, "read-only file system")])
def test_a_folder_that_refuses_its_lock_file_is_named_not_another_users_lock(
        tmp_path, monkeypatch, code, said):
    # iste figures --out into a folder one may read but not write (another user's, a
    # read-only mount): no .lock was there, yet the error said 'another user's run made it;
    # they can allow it (chmod g+w) or remove it', or on a read-only mount gave the raw
    # '[Errno 30] Read-only file system: .../.lock'
    (tmp_path / "figs").mkdir()
    real_open = os.open

    def refused(path, flags, *args, **kwargs):
        if str(path).endswith(".lock") and flags & os.O_CREAT and not os.path.lexists(path):
            raise (PermissionError if code == errno.EACCES else OSError)(
                code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", refused)
    with pytest.raises(refusals.FileSystemError) as caught:
        with locks.folder_lock(tmp_path / "figs", "busy", what="figures folder", remove=True):
            pass
    assert str(caught.value) == f"cannot write figures folder {tmp_path / 'figs'}: {said}"
    assert list((tmp_path / "figs").iterdir()) == []


def test_a_lock_taken_on_a_folder_undone_meanwhile_is_taken_again(tmp_path, monkeypatch):
    # the failed run unlinks .lock while holding it: one that opened it before finds it
    # unlinked once it gets the lock, and locks the folder made anew
    out = tmp_path / "out"
    real = locks.try_lock
    calls = []

    def undone_first(fd, shared=False):
        taken = real(fd, shared=shared)
        if not calls:
            (out / ".lock").unlink()
        calls.append(taken)
        return taken

    monkeypatch.setattr(locks, "try_lock", undone_first)
    with locks.folder_lock(out, "busy"):
        assert (out / ".lock").exists()
    assert calls == [True, True]


def test_a_link_loop_as_input_or_output_is_compared_not_a_traceback(tmp_path):
    # Path.resolve raised RuntimeError ('Symlink loop') from same_file: `iste upscale` with a
    # looping link as its input or output, or in a folder run, ended in a traceback
    loop, real = tmp_path / "loop.png", tmp_path / "in.png"
    loop.symlink_to("loop.png")
    real.write_bytes(b"x")
    assert not paths.same_file(loop, real) and not paths.same_file(real, loop)
    assert paths.same_file(loop, tmp_path / "." / "loop.png")
    paths.check_not_input(loop, real)
    paths.check_not_input(tmp_path / "out", loop)
    (tmp_path / "out").mkdir()
    paths.check_not_input(tmp_path / "out", loop)
    with pytest.raises(FileSystemError, match="holds the input"):
        paths.check_not_input(tmp_path, loop)


def test_a_lock_on_a_folder_undone_before_its_lock_file_opens_is_taken_again(tmp_path,
                                                                              monkeypatch):
    # a failed run removes the folder it made between another run's ensure_dir and its
    # opening .lock: that run ended in a FileNotFoundError traceback from os.open
    out = tmp_path / "out"
    real = paths.ensure_dir
    calls = []

    def undone_after(path, **kwargs):
        made = real(path, **kwargs)
        if not calls:
            made.rmdir()  # the failed run's folders_made_undone, at the worst moment
        calls.append(path)
        return made

    monkeypatch.setattr(locks, "ensure_dir", undone_after)
    with locks.folder_lock(out, "busy"):
        assert (out / ".lock").exists()
    assert len(calls) == 2


def test_a_failed_block_whose_folder_went_keeps_its_own_error(tmp_path):
    # the undo listed the folder to see whether anything was written: gone (removed by the
    # user, the block's own failure), its FileNotFoundError replaced the block's error
    import shutil

    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError, match="the block's"):
        with locks.folder_lock(out, "busy"):
            shutil.rmtree(tmp_path / "new")
            raise RuntimeError("the block's")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_write_is_on_the_disk_before_its_name_and_a_late_full_disk_keeps_the_old(
        tmp_path, monkeypatch, kind):
    """Renamed into place unflushed, a power cut could leave the name on a file of no bytes;
    and NFS or SMB may report a full disk or quota only at the flush, past every write: the
    truncated file was renamed over the old one."""
    real_fsync, flushed = os.fsync, []

    def fsync(fd):
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / ("out.json" if kind == "file" else "series")
    if kind == "file":
        files.write_bytes_atomic(target, b"new")
        assert target.read_bytes() == b"new"
        assert Path(flushed[0]).name.endswith(".tmp") and str(tmp_path) in flushed
    else:
        write_dir_atomic(target, _write_series(["a", "b"]))
        assert [Path(p).name for p in flushed[:2]] == ["a", "b"]
        assert ".tmpdir" in flushed[2] and str(tmp_path) in flushed

    def quota_at_flush(fd):
        raise OSError(122, os.strerror(122))  # EDQUOT, as NFS reports it at close or fsync

    monkeypatch.setattr(os, "fsync", quota_at_flush)
    write = (lambda: files.write_bytes_atomic(target, b"cut")) if kind == "file" else (
        lambda: write_dir_atomic(target, _write_series(["c"])))
    with pytest.raises(refusals.DiskFullError):
        write()
    if kind == "file":
        assert target.read_bytes() == b"new"
    else:
        assert sorted(p.name for p in target.iterdir()) == ["a", "b"]
    assert _siblings(target) == [target.name]


def test_a_folder_blocked_by_a_link_to_nothing_names_the_link(tmp_path):
    # mkdir does not follow a dangling link, and the error called it a file ('runs/a: runs
    # is a file, not a folder') where ls shows a link and no file is anywhere
    (tmp_path / "runs").symlink_to(tmp_path / "unmounted")
    with pytest.raises(FileSystemError, match=r"runs/a: .*runs is a link to .*unmounted, "
                                              "which does not exist: no folder can be made"):
        paths.ensure_dir(tmp_path / "runs" / "a", what="run folder")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(FileSystemError, match="loop is a link in a loop"):
        paths.ensure_dir(tmp_path / "loop")
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileSystemError, match="f is a file, not a folder"):
        paths.ensure_dir(tmp_path / "f" / "a")
    assert not (tmp_path / "unmounted").exists()


@pytest.mark.parametrize("replace", [True, False])
def test_a_temporary_on_another_file_system_is_copied_beside_the_target(tmp_path, monkeypatch,
                                                                       replace):
    # a slide job's work folder mounted on another disk: the assembled pyramid (in its
    # scratch) could not be renamed to the output, "[Errno 18] Invalid cross-device link",
    # a traceback once every tile was made
    import errno

    scratch, out = tmp_path / "mounted", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    real_replace, real_link = os.replace, os.link

    def across(move):
        def moved(src, dst, *args, **kwargs):
            if Path(src).parent != Path(dst).parent:  # two file systems: no rename between
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), str(dst))
            return move(src, dst, *args, **kwargs)
        return moved

    monkeypatch.setattr(os, "replace", across(real_replace))
    monkeypatch.setattr(os, "link", across(real_link))
    target = out / "o.tiff"
    files.write_bytes_atomic(target, b"pyramid", tmp_dir=scratch, replace=replace)
    assert target.read_bytes() == b"pyramid"
    assert list(scratch.iterdir()) == [] and [p.name for p in out.iterdir()] == ["o.tiff"]
    if not replace:  # and a file there meanwhile is still kept
        with pytest.raises(FileExistsError):
            files.write_bytes_atomic(target, b"other", tmp_dir=scratch, replace=False)
        assert target.read_bytes() == b"pyramid" and list(scratch.iterdir()) == []
        assert [p.name for p in out.iterdir()] == ["o.tiff"]


def test_a_file_system_without_locks_is_written_with_one_warning(tmp_path, monkeypatch):
    # NFS mounted nolock (ENOLCK) ended every job in 'no locks available' with advice to
    # remove the folder and rerun, which failed the same way
    import errno
    import warnings

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(locks.fcntl, "flock", no_locks)
    monkeypatch.setattr(locks, "_warned_no_locks", set())
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with locks.folder_lock(tmp_path / "run", "busy"):
            (tmp_path / "run" / "a").write_text("x")
        with locks.folder_lock(tmp_path / "other", "busy"):
            pass
    assert (tmp_path / "run" / "a").read_text() == "x"
    assert [str(w.message) for w in said] == [
        f"the file system of {tmp_path / 'run'} keeps no file locks (no locks available): "
        "another process working on the same files there is not noticed"]

    def other_failure(fd, operation):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(locks.fcntl, "flock", other_failure)
    with pytest.raises(OSError, match="Input/output error"):
        with locks.folder_lock(tmp_path / "third", "busy"):
            pass


@pytest.mark.parametrize("mask", [0o077, 0o002])
def test_where_proc_does_not_say_the_umask_written_files_still_follow_it(tmp_path, monkeypatch,
                                                                         mask):
    """Without /proc/self/status's Umask line (macOS, Linux before 4.7) 022 was assumed: a
    umask of 077 gave world-readable outputs (0644), a lab group's 002 outputs its members
    could not replace (0644)."""
    def no_proc(path, *args, **kwargs):  # the module's open() on a system without /proc
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(files, "open", no_proc, raising=False)
    old = os.umask(mask)
    try:
        assert files.umask() == mask
        files.write_bytes_atomic(tmp_path / "out.bin", b"sr")
    finally:
        os.umask(old)
    assert oct((tmp_path / "out.bin").stat().st_mode & 0o777) == oct(0o666 & ~mask)


def test_a_copy_from_another_file_system_is_on_the_disk_before_its_name(tmp_path, monkeypatch):
    # the EXDEV path (a work folder on another disk) copies the finished temporary beside the
    # target and renames the copy: unflushed, a power cut could leave the output's name on a
    # file of no bytes, as the direct path's test above guards against
    import errno

    scratch, out = tmp_path / "mounted", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    real_replace, real_fsync, flushed = os.replace, os.fsync, []

    def replace(src, dst, *args, **kwargs):
        if Path(src).parent != Path(dst).parent:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), str(dst))
        assert str(src) in flushed, "renamed into place before it was flushed"
        return real_replace(src, dst, *args, **kwargs)

    def fsync(fd):
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    files.write_bytes_atomic(out / "o.tiff", b"pyramid", tmp_dir=scratch)
    assert (out / "o.tiff").read_bytes() == b"pyramid"


def test_a_failing_companion_write_leaves_the_old_file_in_place(tmp_path):
    # ``then`` (a provenance sidecar) runs before the rename: if it fails, the target is as
    # it was, never the new file without its companion
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    seen = []

    def then():
        seen.append(target.read_bytes())
        raise RuntimeError("sidecar failed")

    with pytest.raises(RuntimeError, match="sidecar failed"):
        files.write_atomic(target, lambda tmp: Path(tmp).write_bytes(b"new"), then=then)
    assert seen == [b"old"] and target.read_bytes() == b"old"
    assert _siblings(target) == [target.name]


def test_a_long_name_beyond_ascii_gets_temporaries_whose_names_are_utf8(tmp_path):
    """A temporary's name keeps only so many bytes of its target's: cut inside a character,
    the name was no UTF-8, which UTF-8-only file systems (macOS, ZFS utf8only, SMB) refuse."""
    from iste.files import write_atomic

    for target in ("a" + "é" * 120 + ".png", "中" * 80 + ".png", "x" * 199 + "😀" * 10):
        assert len(os.fsencode(target)) <= 255
        seen = []
        write_atomic(tmp_path / target, lambda tmp: (seen.append(Path(tmp).name),
                                                     Path(tmp).write_bytes(b"x")))
        (name,) = seen
        name.encode("utf-8")  # raised UnicodeEncodeError (a lone surrogate) without the fix
        assert len(os.fsencode(name)) <= 255 and name.startswith(temps.temp_prefix(target))
        assert target.startswith(temps.temp_prefix(target)[1:-1])
    undecodable = os.fsdecode(b"caf\xe9" * 60)  # a name's own bytes are kept as they are
    assert temps.temp_prefix(undecodable) == "." + os.fsdecode(b"caf\xe9" * 50) + "."
