"""``iste``: arbitrary-scale super-resolution of histopathology images; ``iste COMMAND --help``
says what each command takes. Errors are one line on stderr, exit code 2 (a run whose parts
partly failed, a folder run's items or iste bench's rows, ends with exit code 1).

One sub-command per module of :mod:`iste.cli`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import signal
import sys
import threading
import warnings

from iste.stopping import (StoppedSaved, Terminated, deferred, exit_code, forget, how_stopped,
                           note, raise_if_stopped)

# command -> its module in iste.cli, imported by build_parser (they import torch: inside
# main, whose Ctrl-C is "iste: interrupted", not a traceback of the import)
COMMANDS = {
    "upscale": "upscale",
    "convert-official": "convert",
    "data": "data",
    "info": "info",
    "eval": "evaluate",
    "train": "train",
    "serve": "serve",
    "bench": "bench",
    "downstream": "downstream",
    "figures": "figures",
}


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from iste.data.images import ImageReadError
    from iste.data.samples import SampleUnavailableError
    from iste.models.checkpoint import CheckpointError
    from iste.typed import ConfigError

    return (UserError, ImageReadError, SampleUnavailableError, CheckpointError, ConfigError,
            ValueError, FileNotFoundError, FileExistsError, IsADirectoryError,
            NotADirectoryError, PermissionError)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (where their action is
    the default: a signal the caller ignores, ``nohup``'s SIGHUP, stays ignored). A second
    one while the first is cleaned up ends the process at once, as before. Each one, Ctrl-C
    included, is noted in :mod:`iste.stopping`, whence a lost exception is raised again; in
    its :func:`~iste.stopping.at_boundaries` (training) a signal is only noted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        note(signum)
        # the children that end now (loader workers, sent the same signal by a scheduler or
        # a terminal) end by the stop: torch's SIGCHLD handler raised each as an error of its
        # own over the stop, a traceback and exit code 1 in place of 143
        child_handlers.append(signal.signal(signal.SIGCHLD, _ended_by_the_stop))
        if deferred():  # a loop that stops itself at its next boundary (training's step)
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        raise Terminated(signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP,
                                                         signal.SIGINT)}
    child_handlers = []  # SIGCHLD's before each stop
    default = {signal.SIGINT: signal.default_int_handler}
    caught = [sig for sig, action in previous.items()
              if action is default.get(sig, signal.SIG_DFL)]
    forget()
    for sig in caught:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig in caught:
            signal.signal(sig, previous[sig])
        # torch's again, for a command run next in this process (None: one set from C,
        # which Python cannot put back)
        if child_handlers and child_handlers[0] is not None:
            signal.signal(signal.SIGCHLD, child_handlers[0])
        forget()


def _ended_by_the_stop(signum, frame) -> None:
    """SIGCHLD's handler once a stop is asked for: nothing to do (a Python function, not
    SIG_DFL: Python raises "Signal 17 ignored due to race condition" for a SIGCHLD that
    arrived while the handler was changed)."""


class _VersionAction(argparse.Action):
    """``iste --version``: iste, torch and the slide libraries, one per line."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from iste.cli.runlog import flush_stdout, print_line, stdout_refused
        from iste.provenance import versions

        for name, version in versions().items():  # `iste --version | head -1` too
            print_line(f"{name} {version or 'not installed'}", sys.stdout)
        flush_stdout()
        refused = stdout_refused()  # `iste --version > versions.txt` on a full disk
        parser.exit(*(() if refused is None else (2, f"iste: error: {refused}\n")))


def build_parser() -> argparse.ArgumentParser:
    from iste.cli.options import Parser, add_common_options, describe

    intro = (__doc__ or "").split("\n\n")[0]  # no docstrings under python -OO
    parser = Parser(prog="iste", description=describe(intro, whole=True))
    parser.add_argument("--version", action=_VersionAction,
                        help="print the versions of iste, torch and the slide libraries")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(f"iste.cli.{module}").add_parser(sub, name)
        add_common_options(sub.choices[name])
    parser.commands = sub.choices
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default ``sys.argv[1:]``); returns the exit code. Ctrl-C,
    SIGTERM and SIGHUP from the start, torch's import (a second) included, are one line
    (``iste: interrupted``) and exit code 128 + the signal."""
    from iste.cli.runlog import open_standard_streams

    open_standard_streams()
    if not _working_folder_exists():
        from iste.cli.runlog import print_line

        print_line("iste: error: the current folder no longer exists (it was removed after "
                   "this shell entered it): cd to a folder that exists and rerun", sys.stderr)
        return 2
    try:
        with _terminate_as_interrupt():
            return _main(argv)
    except KeyboardInterrupt as exc:  # before the command ran: while torch is imported
        return _stopped(exc)[1]


# a web address as a word, an option's value (--model=URL) or an item of a list (--methods)
_WEB_ADDRESS = re.compile(r"(?:^|[=,])([A-Za-z][A-Za-z0-9+.-]*://[^,]*)")


def _web_address(argv: list[str], host_names: frozenset[str] = frozenset()) -> str | None:
    """The first word of the command line (or part of one) that is a web address
    (``https://host/slide.svs``) and names no file here. As a path, its '//' was read as '/':
    'cannot open slide https:/host/slide.svs: no such file', a name the user had not given,
    and nothing said that iste reads local files only. ``host_names``: the values given for
    host names (:func:`_host_names`), no files: passed over, their own check names them."""
    for word in argv:
        if word in host_names or word.partition("=")[2] in host_names:
            continue
        for found in _WEB_ADDRESS.finditer(word):
            if not os.path.lexists(found.group(1)) and not os.path.lexists(word):
                return found.group(1)
    return None


def _host_names(args) -> frozenset[str]:
    """The values of ``iste serve``'s --host and --allowed-host: host names, not files. A web
    address there ('--allowed-host http://lab-pc') was refused as a file to download; their
    own check says 'is not a host name (no port, no scheme)'."""
    if args.command != "serve":
        return frozenset()
    return frozenset([args.host, *args.allowed_host])


def _working_folder_exists() -> bool:
    """Whether the process's current folder still exists. Checked before torch is imported:
    run from a removed folder (a job's scratch folder cleaned under the shell), torch's import
    ended the process with "Intel oneMKL FATAL ERROR: Cannot load .../libtorch_cpu.so"."""
    try:
        os.getcwd()
    except FileNotFoundError:
        return False
    return True


def _main(argv: list[str] | None) -> int:
    from iste.cli.options import Parser
    from iste.cli.runlog import print_line, run_logging, to_null_device

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    raise_if_stopped()  # a signal whose exception an import dropped (iste.stopping)
    Parser.dashed_paths = tuple(a for a in argv if a[:1] == "-" and os.path.lexists(a))
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's parser, whose --help lists what it takes
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    address = _web_address(argv, _host_names(args))
    if address is not None:
        from iste.text import message_line

        print_line(f"iste: error: {message_line(address)} is a web address: iste reads local "
                   "files only (it never downloads); download the file and give its path",
                   sys.stderr)
        return 2
    _show_warnings()
    warnings.formatwarning = _warning_line
    from iste.refusals import FileSystemError
    from iste.text import message_line

    code: int | None = None
    try:
        with run_logging(args, argv) as outcome:
            try:
                code = _run(args)
            except BrokenPipeError:  # `iste info | head`: the reader left; nothing more to say
                to_null_device(sys.stdout)
                code = 0
            code = _unless_stdout_refused(code)
            outcome["exit_code"] = code
            return code
    except FileSystemError as err:  # --log-file / --json-summary that cannot be written
        if code is None:  # refused at the start: nothing was done
            print_line(f"iste: error: {message_line(str(err))}", sys.stderr)
            return 2
        # the summary, written once the command has ended: said alone, "(nothing was
        # written)" read as if the command's outputs were not
        print_line(f"iste: error: --json-summary {message_line(str(err))}; the command "
                   f"itself ended with exit code {code}", sys.stderr)
        return code or 2


def _unless_stdout_refused(code: int) -> int:
    """``code``, or 2 (with one error line) where stdout refused the command's lines: a
    results file on a full disk is not a success (:func:`iste.cli.runlog.stdout_refused`)."""
    from iste.cli.runlog import error, flush_stdout, record, stdout_refused

    flush_stdout()
    refused = stdout_refused()
    if refused is None:
        return code
    message = f"{refused}: the lines from then on were not written; the command itself " \
              f"ended with exit code {code}"
    error(message)
    record(error=message)
    return code or 2


_SHOWN_WARNINGS = (UserWarning, RuntimeWarning, ResourceWarning)


def _show_warnings() -> None:
    """Warnings of :data:`_SHOWN_WARNINGS` shown once per place they are raised from, whatever
    -W or PYTHONWARNINGS say: iste's own messages, numerical ones (a divide by zero) and files
    left open (a bug of ours worth a line). Other categories keep the interpreter's rules:
    FutureWarning is shown, deprecations are hidden outside ``__main__`` (PEP 565), a
    library's notice being for iste's developers, not a line on a user's terminal. One filter
    for every warning showed those notices, and in the tests' in-process runs it overrode the
    filters that make a deprecation raised from iste's own code an error (pyproject.toml)."""
    for category in _SHOWN_WARNINGS:
        warnings.filterwarnings("default", category=category)


def _warning_line(message, *_, **__) -> str:
    """A warning as the line ``iste: WARNING: ...``: one line whatever the file names in it
    hold, as every message (:mod:`iste.cli.runlog`)."""
    from iste.text import message_line

    return f"iste: WARNING: {message_line(str(message))}\n"


def _stopped(exc: KeyboardInterrupt) -> tuple[str, int]:
    """Say (on stderr) why the process stops: "interrupted" (Ctrl-C) or "stopped by
    SIGTERM"; returns that and the exit code, 128 + the signal."""
    from iste.cli.runlog import print_line

    signum = exc.signum if isinstance(exc, (Terminated, StoppedSaved)) else signal.SIGINT
    said = how_stopped(signum)
    print_line(f"iste: {said}", sys.stderr)
    return said, exit_code(signum)


def _run(args) -> int:
    from iste.cli.runlog import error, record
    from iste.refusals import is_refusal
    from iste.runtime import set_threads, warn_unusable_thread_variables

    try:
        set_threads(args.threads)
        if args.threads is None:
            warn_unusable_thread_variables()
        return int(args.run(args) or 0)
    except KeyboardInterrupt as exc:
        said, code = _stopped(exc)
        record(error=said)
        return code
    except MemoryError as err:  # first: _user_errors() imports libraries, and the work that
        return _out_of_memory(err)  # failed still holds its memory (through the traceback)
    except _user_errors() as err:
        error(str(err))
        record(error=str(err))
        return 2
    except RuntimeError as err:  # memory ran out, (under torchrun) another rank stopped, or
        from iste.children import lost_child_message  # a child process failed
        from iste.distributed import lost_peer_message

        return _out_of_memory(err, lost_peer_message(err) or lost_child_message(err))
    except OSError as err:  # the file system's refusals not met where files are written
        if not is_refusal(err):
            raise
        message = f"{err.strerror or err}: {err.filename}" if err.filename else str(err)
        error(message)
        record(error=message)
        return 2


def _out_of_memory(err: BaseException, other: str | None = None) -> int:
    """Say ``err`` as running out of memory (else as ``other``) in one line, exit code 2;
    raised again where it is neither."""
    from iste.cli.runlog import error, record
    from iste.runtime import out_of_memory_message

    message = out_of_memory_message(err) or other
    if message is None:
        raise err
    error(message)
    record(error=message)
    return 2


if __name__ == "__main__":
    sys.exit(main())
