"""How every ``iste`` command talks: results, messages, progress, a log file, a JSON summary.

- results ("wrote out.tiff ...") go to stdout (:func:`say`), unless ``--quiet``; errors
  (:func:`error`) to stderr, always;
- every result, message and log record is one line whatever the file names in it hold (their
  line breaks and other control characters as escapes, ``a\\nb.png``: a line of its own read
  as another message, in a log file as a line without its time); a result of several lines
  (a table) is said line by line;
- messages and progress lines go to stderr through the ``iste`` logger: INFO and up by
  default, WARNING and up with ``--quiet``, DEBUG with ``--verbose``; progress lines are left
  out of the terminal while a bar is drawn there;
- ``--log-file`` receives everything (results and progress included), one timestamped line
  per record, no carriage returns;
- ``--json-summary`` receives, once the command ends (also on an error), what it did
  (:func:`record`), its exit code, times and the versions of what ran.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from iste.paths import check_output_file, same_file
from iste.refusals import FileSystemError, refusal
from iste.text import message_line, shown
from iste.progress import set_bars

__all__ = ["say", "echo", "error", "print_line", "flush_stdout", "stdout_refused",
           "to_null_device", "record", "run_logging", "shell_join", "open_standard_streams",
           "command_line", "say_stopped",
           "Written", "no_written_paths", "checkpoints_read", "images_read"]

log = logging.getLogger("iste")
_summary: dict[str, Any] = {}
_quiet = False
_argv: list[str] = []  # the arguments of the command run_logging set up




def open_standard_streams() -> None:
    """Make the process's standard streams usable whatever started it; what the command line
    (:func:`iste.cli.main.main`) does first, before any file is opened.

    - A standard descriptor (0, 1, 2) that is closed (``iste ... >&- 2>&-``, some schedulers
      and daemons) is opened on the null device. Python leaves ``sys.stdout`` None there: the
      first result line or progress bar raised AttributeError, a traceback, exit code 1,
      after the output was written; and the next file opened took the free number, so what a
      library writes to descriptor 1 or 2 (libtiff's and OpenMP's warnings) went into it.
    - stdout writes what its encoding cannot hold as escapes (``\\xe4``, ``\\u5207``),
      as Python's stderr does. Under an ASCII locale (``LC_ALL=C`` with ``PYTHONUTF8=0``,
      ``PYTHONIOENCODING=ascii``) the result line of an image named Schnitt_ä.png raised
      UnicodeEncodeError: exit code 2, its output written."""
    _refused_streams.clear()  # an earlier command's, in this process (iste.cli.main(argv))
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        try:
            os.fstat(fd)
        except OSError:  # closed: the lower descriptors are open, so this number is free
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False,
                                    errors="backslashreplace", buffering=1 if fd == 2 else -1))
    with contextlib.suppress(AttributeError, ValueError):  # not a TextIOWrapper, or closed
        sys.stdout.reconfigure(errors="backslashreplace")


def say(message: str) -> None:
    """A result line: stdout (unless --quiet) and the log file; one line (the module's
    docstring): a result of several lines is said one line at a time."""
    message = message_line(message)
    if not _quiet:
        print_line(message, sys.stdout)
    log.info(message, extra={"result": True})


def echo(text: str = "") -> None:
    """``text`` and a line break on stdout, as :func:`print` writes them (also with --quiet,
    and not to the log file: what ``iste info`` or ``iste data list`` prints is its result),
    a full disk under stdout kept for the command's end (:func:`stdout_refused`)."""
    print_line(text, sys.stdout)


def error(message: str, *, prefix: str = "") -> None:
    """An error line: ``{prefix}iste: error: {message}`` on stderr (also with --quiet) and in
    the log file; one line whatever it names (a file name's line breaks and other control
    characters as escapes, ``a\\nb.svs``: a line of its own read as another message)."""
    message = message_line(message)
    print_line(f"{prefix}iste: error: {message}", sys.stderr)
    log.error("%serror: %s", prefix, message, extra={"printed": True})


def print_line(line: str, stream) -> None:
    """``line`` and its line break on ``stream`` in one write: processes that share a pipe
    (torchrun's ranks) keep their lines whole. ``print`` writes the line and its end apart,
    and unbuffered (``PYTHONUNBUFFERED``, set by many containers and schedulers) each is its
    own write, so one rank's line ran into another's ("rank 1 exit 0rank 0 exit 0").

    Once the stream's reader has left (``iste upscale DIR | head -1``), its lines are dropped
    and the work goes on: a run stopped by the first line after that (BrokenPipeError) counted
    the slide it had just written as failed and ended with exit code 0, the rest of the folder
    not done. A stream the system refuses to write (a full disk, ``/dev/full``) is treated
    the same way, the refusal kept for the command's end (:func:`stdout_refused`). The log
    file still receives every line."""
    _unless_dropped(stream, lambda: (stream.write(line + "\n"), stream.flush()))


def flush_stdout() -> None:
    """Flush stdout (what ``print`` left in its buffer), a refusal kept as
    :func:`stdout_refused` says."""
    _unless_dropped(sys.stdout, sys.stdout.flush)


def _unless_dropped(stream, write: Callable[[], object]) -> None:
    """Run ``write`` on ``stream``; where its reader has left (BrokenPipeError) or the system
    refuses it (:func:`_stream_refused`), the stream goes to the null device instead."""
    try:
        write()
    except BrokenPipeError:
        to_null_device(stream)
    except OSError as exc:
        if not _stream_refused(stream, exc):
            raise


def stdout_refused() -> FileSystemError | None:
    """Why stdout took no more lines of this command (its file on a full disk, a quota,
    ``> /dev/full``), or None. Its lines from then on are dropped and the work goes on:
    the first result line refused ended a folder run's item as failed ('a.png: [Errno 28]
    No space left on device', naming the input, whose output had been written), and each
    later item the same; the command ends in this one error line (:func:`iste.cli.main`),
    not exit code 0 over a results file that lacks its lines."""
    return _refused_streams.get("stdout")


_refused_streams: dict[str, FileSystemError] = {}


def _stream_refused(stream, exc: OSError) -> bool:
    """Whether ``exc`` is the file system refusing a write to ``stream`` (stdout or stderr
    redirected to a file): then its descriptor is pointed at the null device (so the lines
    still buffered, and Python's flush at exit, go nowhere rather than raise again) and the
    refusal kept for stdout. Nothing is said here: on stderr it could not be said."""
    name = "stdout" if stream is sys.stdout else "stderr" if stream is sys.stderr else None
    refused = None if name is None else refusal(exc, f"cannot write {_target(stream, name)}")
    if refused is None:
        return False
    _refused_streams.setdefault(name, refused)
    with contextlib.suppress(OSError, ValueError):  # no descriptor: a test's capture
        to_null_device(stream)
    return True


def to_null_device(stream) -> None:
    """Point ``stream``'s descriptor at the null device: its later writes (and Python's
    flush at exit) go nowhere, where its reader has left or its disk refuses them."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, stream.fileno())
    finally:
        os.close(null)


def _target(stream, name: str) -> str:
    """``stdout (run.out)``: the stream and the file it goes to, where the system says."""
    with contextlib.suppress(OSError, ValueError):
        target = os.readlink(f"/proc/self/fd/{stream.fileno()}")
        if target.startswith("/"):  # not a pipe:[...] or socket:[...]
            return f"{name} ({target})"
    return name


def record(**fields: Any) -> None:
    """Add fields to the JSON summary of this run."""
    _summary.update(fields)


def shell_join(argv: list[str]) -> str:
    """``argv`` as a shell command line to copy (:func:`shlex.join`), an argument holding
    control characters or bytes that are not UTF-8 in bash's ``$'...'`` form
    (``$'runs/a\\nb'``): quoted as they are, they could not be said on one line."""
    def quoted(arg: str) -> str:
        if message_line(arg) == arg:
            return shlex.quote(arg)
        return "$'" + message_line(arg.replace("\\", "\\\\").replace("'", "\\'")) + "'"
    return " ".join(quoted(a) for a in argv)


def command_line() -> str:
    """The command being run (``iste`` and its arguments) as a shell line to copy."""
    return shell_join(["iste", *_argv])


def say_stopped(signum: int, step: int, steps: int, state: Path | str, again: str) -> int:
    """A run that ``signum`` stopped at ``step`` of ``steps``, saved in ``state``: the line of
    :func:`iste.stopping.saved_line` on stderr (rank 0's alone under torchrun: every rank
    saved the step they agreed on) and in the summary. Returns the exit code."""
    from iste.distributed import launched_rank
    from iste.stopping import exit_code, how_stopped, saved_line

    record(error=how_stopped(signum))
    if launched_rank() == 0:
        print_line(message_line(saved_line(signum, step, steps, str(state), again)), sys.stderr)
    return exit_code(signum)


class _Shown(logging.Formatter):
    """Records as one line each (the module's docstring), with the bytes of non-UTF-8 file
    names as escapes (:func:`iste.text.shown`): as they were, a log file's handler failed on
    them (a traceback on stderr, the line lost)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = message_line(record.message)
        return shown(super().formatMessage(record))


class _LogFile(logging.FileHandler):
    """``--log-file``: once the file system refuses a line (a full disk, a quota), one
    warning on stderr names the file and the lines after it are dropped; the command goes on,
    its outputs unaffected. Python's handler printed a '--- Logging error ---' traceback for
    every line after that, and its flush at the end raised: a traceback, exit code 1, after
    the outputs were written."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._refused(sys.exc_info()[1]):
            super().handleError(record)

    def close(self) -> None:
        try:
            super().close()
        except OSError as exc:  # the last lines' flush
            if not self._refused(exc):
                raise

    def _refused(self, exc: BaseException | None) -> bool:
        """Whether ``exc`` is the file system refusing the log's writes (said once)."""
        refused = None if exc is None else refusal(exc, f"--log-file {self.baseFilename}")
        if refused is not None and not self.failed:
            self.failed = True
            log.warning("%s; its later lines are dropped", refused)
        return refused is not None


class _Console(logging.Filter):
    def filter(self, rec: logging.LogRecord) -> bool:
        return not any(getattr(rec, flag, False) for flag in ("result", "bar", "printed"))


@contextlib.contextmanager
def run_logging(args, argv: list[str]) -> Iterator[dict[str, Any]]:
    """Set up the handlers for one command; write the summary when it ends. Yields the
    outcome the summary records (the command sets its ``exit_code``)."""
    global _quiet
    quiet, verbose = args.quiet, args.verbose  # every command has the common options
    _quiet = quiet
    _summary.clear()
    _argv[:] = argv
    set_bars(False if quiet else None)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    handlers: list[logging.Handler] = []
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    console.setFormatter(_Shown("iste: %(message)s"))
    console.addFilter(_Console())
    handlers.append(console)
    log_file = args.log_file
    found: dict[str, str | None] = {}
    _check_not_an_argument(args, argv)
    _check_not_written_by_the_command(args)
    if args.json_summary is not None:  # refused now, not after the work
        check_output_file(args.json_summary, "--json-summary")
        # read now: read at the end (0.6 s of imports), a SIGTERM or Ctrl-C meanwhile lost
        # the summary of a command that had done its work
        from iste.provenance import versions

        found = versions()
    if log_file is not None:
        check_output_file(log_file, "--log-file", replaced=False)  # appended to
        try:
            fh = _LogFile(log_file, encoding="utf-8")
        except OSError as exc:
            raise FileSystemError(f"--log-file {log_file}: {exc.strerror or exc}") from None
        fh.setLevel(logging.DEBUG if verbose else logging.INFO)
        fh.setFormatter(_Shown("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(fh)
    for h in handlers:
        log.addHandler(h)
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    log.debug("iste %s", " ".join(argv))
    outcome: dict[str, Any] = {"exit_code": 1}
    try:
        yield outcome
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        set_bars(None)
        path = args.json_summary
        if path is not None:
            _write_summary(Path(path), args, argv, started, time.perf_counter() - t0, outcome,
                           found)


_COMMAND_DESTS = {"command", "data_command", "task"}  # the (sub-)command names, not files


def _check_not_an_argument(args, argv: list[str]) -> None:
    """FileSystemError, before anything is written, where --log-file or --json-summary names
    a file the command itself reads or writes (any of its arguments: the input, -o, --model
    ...): the summary, written last, replaced the output image (``-o o.png --json-summary
    o.png``: exit code 0, the image gone) or the input; the log was appended to the input.
    (The one file of both: the summary replaced the log.)"""
    for own, what in (("log_file", "--log-file"), ("json_summary", "--json-summary")):
        mine = getattr(args, own, None)
        if mine is None:
            continue
        for dest, value in vars(args).items():
            if dest == own or dest in _COMMAND_DESTS:  # `iste eval ... --log-file eval`
                continue
            for one in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(one, (str, os.PathLike)) and same_file(mine, one):
                    option = "--" + dest.replace("_", "-")
                    said = option if any(a.split("=")[0] == option for a in argv) else dest
                    raise FileSystemError(
                        f"{what} and the command's {said} are the same file ({one}): it "
                        "would be written over; give it a file of its own")


class Written(NamedTuple):
    """A path a command writes besides its arguments' own (``args.written_paths(args)``, set
    by the command's parser): ``role`` says what it is, naming it ("the provenance sidecar of
    the output out.png", "out/, the output folder of this folder run"). ``claims``: for a
    folder, which names directly inside it the command may write (a name's first part for a
    path deeper in it; every name where the command owns the folder whole); None for a file.
    ``reads``: a path the command reads, not writes (a training image, a checkpoint; for a
    folder, ``claims`` the names it reads as input)."""

    path: Path
    role: str
    claims: Callable[[str], bool] | None = None
    reads: bool = False


def checkpoints_read(methods: str | None, option: str) -> list[Written]:
    """The checkpoints a methods list (``--methods``, ``--ablations``: ``LABEL=PATH,...``)
    names, as files the command reads (a log appended to one damaged it); none for a list
    that does not parse (the command says why)."""
    from iste.eval.methods import method_files, parse_method_list

    try:
        files = method_files(parse_method_list(methods)) if methods else []
    except ValueError:
        files = []
    return [Written(path, f"the checkpoint {path} of {option}", reads=True) for path in files]


def images_read(folder: Path, role: str) -> Written:
    """A folder whose images the command reads: every image name directly in it (one written
    there became an input of the command's next run)."""
    from iste.data.imageformats import SUPPORTED_SUFFIXES

    return Written(folder, role, reads=True,
                   claims=lambda name: Path(name).suffix.lower() in SUPPORTED_SUFFIXES)


def _check_not_written_by_the_command(args) -> None:
    """FileSystemError, before anything is written, where --log-file or --json-summary names
    a path the command writes that no argument names (:class:`Written`): ``iste upscale
    in.png -o o.png --json-summary o.png.json`` replaced the output's provenance sidecar, and
    a summary named as an item's output or sidecar in a folder run's output folder made the
    rerun fail on that item (or skip it as done). Other names in that folder (run.log) are
    the user's."""
    for own, what in (("log_file", "--log-file"), ("json_summary", "--json-summary")):
        mine = getattr(args, own, None)
        if mine is None:
            continue
        for path, role, claims, reads in args.written_paths(args):
            if same_file(mine, path):
                harm = ", which the command reads" if reads else ": it would be written over"
                raise FileSystemError(f"{what} {mine} is {role}{harm}; give it a file of "
                                      "its own")
            if claims is None:
                continue
            where = Path(os.path.realpath(mine))
            folder = Path(os.path.realpath(path))
            if where.is_relative_to(folder) and claims(where.relative_to(folder).parts[0]):
                use = "reads as input" if reads else "may write"
                raise FileSystemError(f"{what} {mine} lies inside {role}, under a name the "
                                      f"command {use}; give it another name or a file "
                                      "outside it")


def no_written_paths(args) -> list[Written]:
    """A command that writes nothing beyond its arguments' own paths (the default of
    ``args.written_paths``)."""
    return []


def _write_summary(path: Path, args, argv, started, seconds: float, outcome: dict,
                   found: dict[str, str | None]) -> None:
    from iste.eval.files import write_json_atomic

    write_json_atomic(path, {
        "command": args.command, "argv": list(argv),
        "exit_code": outcome.get("exit_code"), "error": outcome.get("error"),
        "started": started.isoformat(timespec="seconds"), "seconds": round(seconds, 3),
        "versions": found, **_summary})
