"""Options several ``iste`` commands share, defined once: the model and how it runs, and the
conventions every command follows (threads, logging, a JSON summary).

Commands take what applies to them: :func:`add_model_options` (upscale, serve),
:func:`add_run_options` (eval, bench: device, precision, chunk, STF keys without a model);
:func:`add_common_options` is added to every command by :mod:`iste.cli.main`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from iste.engine.render import (CPU_CHUNK, GPU_CHUNK, MAX_CHUNK, MAX_STF_KEYS, NARROW_CPU_CHUNK,
                                PRECISIONS, QueryOptions, check_stf_keys)
from iste.text import decimal

__all__ = ["Parser", "whole_number", "describe", "add_common_options", "add_model_options",
           "add_run_options", "add_deblock_option", "query_options", "resolve_input",
           "check_file_name", "file_path",
           "load_model_for"]


class Parser(argparse.ArgumentParser):
    """The parser of ``iste`` and (as argparse makes them of the parent's class) of each of its
    commands. Its usage errors are one line (:meth:`error`). An empty value (``-o ""``,
    ``iste upscale "$UNSET" ...``) is one, naming the option, for every option and argument
    whose value is text or a path.
    ``Path("")`` is the current folder: ``iste upscale "" -s 2 -o out/`` upscaled every image
    there, ``--host ""`` listened on every interface, ``iste info ""`` acted as if no file had
    been named. Typed values (numbers, lists) and choices keep their own messages.
    ``commands``: the parser of each sub-command by name (``iste``'s; empty for the others)."""

    commands: dict[str, "Parser"] = {}
    # the words of the command line that begin with '-' and name a file or folder here (set
    # by iste.cli.main): argparse reads them as options
    dashed_paths: tuple[str, ...] = ()

    def error(self, message: str):
        """A usage error (a missing argument, a value of the wrong type or out of range, an
        unknown option) said as every other refusal: one line ``iste: error: argument
        --chunk: ... (iste upscale --help lists the options)``, exit code 2, instead of
        argparse's usage block of up to 20 lines above it. Where a file's name begins with
        '-' (``-lead.png``), read as an option, it says so and how to give it: argparse's
        'the following arguments are required: input' named no file."""
        from iste.text import message_line

        dashed = "".join(f"; {name} was read as an option: give it as ./{name}"
                         for name in self.dashed_paths)
        self.exit(2, f"iste: error: {message_line(message + dashed)} ({self.prog} --help lists "
                     "the options)\n")

    def _get_value(self, action, arg_string):
        """argparse's conversion of one string (given, or a text default) for ``action``.
        Overridden, though argparse does not document it, because it is the one place every
        value of every option passes: a public ``add_argument`` override would miss the
        options added through argument groups (theirs is the container's, not the parser's),
        and a non-empty ``type`` on each text and path option would leave the next one added
        unguarded. A number option (``type=int`` or ``float``) takes a number as a user writes
        it (:func:`iste.text.decimal`): Python's ``int`` and ``float`` also read ``1_000``,
        ``inf``, ``nan`` and full-width digits (``--threads 1_6`` ran 16 threads)."""
        if (action.type in (None, str, Path, file_path) and action.choices is None
                and not arg_string.strip()
                and action.nargs not in (argparse.PARSER, argparse.REMAINDER)):
            # not the sub-command's: argparse hands it every string after the command too
            raise argparse.ArgumentError(action, "must not be empty")
        if action.type in (int, float):  # as a user writes a number (iste.text.decimal)
            try:
                return decimal(arg_string, whole=action.type is int)
            except ValueError as exc:
                raise argparse.ArgumentError(action, str(exc)) from None
        return super()._get_value(action, arg_string)


_SEPARATORS = tuple(sep for sep in (os.sep, os.altsep) if sep)


def check_file_name(text: str, what: str) -> None:
    """ValueError where ``text``, given as the name of one file to write, ends in a path
    separator: a folder's name. pathlib drops the separator (``Path("x.png/")`` is
    ``x.png``): ``-o x.png/``, a folder meant, wrote a file named x.png. ``what``: the option
    (``-o``)."""
    if text.endswith(_SEPARATORS):
        raise ValueError(f"{what} {text} ends in {text[-1]}: a folder's name; give a file name")


def file_path(text: str) -> Path:
    """An option's value as the path of one file to write (``type=file_path``): refused as
    :func:`check_file_name` says, in the option's usage error."""
    try:
        check_file_name(text, "")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).lstrip()) from None
    return Path(text)


def whole_number(low: int, high: int | None = None):
    """An argparse ``type``: a whole number in ``low..high`` (no upper bound without ``high``),
    else a usage error naming the option and the range (``argument --chunk: must be a whole
    number from 1 to 4194304, got '0'``, exit code 2), before anything is loaded. For options
    whose own check, further down, could not name the option it was given as."""
    wanted = f"from {low} to {high}" if high is not None else f">= {low}"

    def convert(text: str) -> int:
        try:
            value = decimal(text, whole=True)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a whole number {wanted}, got "
                                             f"{text[:40]!r}")  # not a page of digits
        return value

    convert.__name__ = "whole number"
    return convert


def describe(doc: str | None, *, whole: bool = False) -> str:
    """A command's description from its module docstring: the first line (or all of it),
    without reStructuredText markup (double backquotes); empty where Python was started
    with -OO (PYTHONOPTIMIZE=2), which leaves every ``__doc__`` None."""
    doc = doc or ""
    text = doc if whole else doc.split("\n")[0]
    return text.replace("``", "").strip()


THREADS_DEFAULT = ("one per core this process may use; under torchrun 1 unless "
                   "OMP_NUM_THREADS is set")


def add_common_options(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """--threads and the logging conventions (every command). ``nested``: for the tasks of a
    command that has its own (``iste downstream glas ... -q``): no defaults there, so that the
    command's own values (``iste downstream -q glas ...``) are not overwritten. The help says
    what a command uses without --threads and $ISTE_THREADS: :data:`THREADS_DEFAULT`, or the
    command's own words where it differs, given as ``p.set_defaults(threads_default=...)``
    (``iste bench``)."""
    threads_default = p.get_default("threads_default") or THREADS_DEFAULT
    g = p.add_argument_group("run and logging")
    keep = {"default": argparse.SUPPRESS} if nested else {}
    g.add_argument("--threads", type=int, help=f"torch CPU threads (default: $ISTE_THREADS, "
                   f"else {threads_default})", **keep)
    g.add_argument("-q", "--quiet", action="store_true",
                   help="only warnings and errors on the terminal (no progress)", **keep)
    g.add_argument("-v", "--verbose", action="store_true", help="also debug messages", **keep)
    g.add_argument("--log-file", type=file_path, help="append the messages, progress included, "
                   "to this file", **keep)
    g.add_argument("--json-summary", type=file_path, metavar="FILE",
                   help="write a JSON summary of the run (what was done, versions, times)",
                   **keep)
    if not nested and p.get_default("written_paths") is None:
        from iste.cli.runlog import no_written_paths

        p.set_defaults(written_paths=no_written_paths)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model plus :func:`add_run_options` (precision: auto)."""
    p.add_argument("--model", help="checkpoint (.safetensors); default: the shipped model")
    add_run_options(p, precision="auto")


def add_run_options(p: argparse.ArgumentParser, *, chunk_default_text: str = "the output "
                    "does not change", precision: str = "fp32") -> None:
    """--device, --precision (default ``precision``), --chunk, --stf-keys."""
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", choices=PRECISIONS, default=precision,
                   help=f"auto: bf16 for wide models on CPUs/GPUs with native bfloat16 units, "
                        f"else fp32 (docs/performance.md); default {precision}")
    p.add_argument("--chunk", type=whole_number(1, MAX_CHUNK), default=None,
                   help=f"queries per model call (default: {CPU_CHUNK} on CPU, {NARROW_CPU_CHUNK} "
                        f"for narrow models such as the shipped one, {GPU_CHUNK} on GPU); a speed "
                        f"and memory knob, {chunk_default_text}")
    p.add_argument("--stf-keys", type=whole_number(1, MAX_STF_KEYS),
                   help=f"ISTE: STF keys per 48x48 window (default {QueryOptions.stf_keys}; "
                        "a speed knob; refused for a model without STF)")


def add_deblock_option(p: argparse.ArgumentParser) -> None:
    """--deblock (upscale, serve): what is done to JPEG-compressed input before the model."""
    from iste.slides.deblocked import DEBLOCK_MODES

    p.add_argument("--deblock", choices=DEBLOCK_MODES, default="auto",
                   help="auto (default): remove the 8x8 block edges of JPEG-compressed input "
                        "(JPEG files, SVS/TIFF and DICOM JPEG tiles) with the file's own "
                        "quantisation tables before super-resolution; off: feed the decoded "
                        "pixels as they are (docs/real-scans.md)")


def query_options(args) -> QueryOptions:
    keys = QueryOptions.stf_keys if args.stf_keys is None else args.stf_keys
    return QueryOptions(chunk=args.chunk, stf_keys=keys, precision=args.precision)


def check_model_options(args, model) -> None:
    """Refuse options that do not apply to ``model``: ``--stf-keys`` for a model without STF
    key windows (every head but ISTE with STF, every fixed-scale network), which would run as
    if it were not given while the output's provenance recorded it.

    Raises:
        ValueError: one line naming the model.
    """
    if getattr(args, "stf_keys", None) is None:
        return
    from iste.models.registry import describe_config

    check_stf_keys(True, {describe_config(model.model_config): model.uses_key_set},
                   what="model")


def resolve_input(spec: str) -> Path:
    """A path, or ``sample:NAME`` (fetched and cached on first use)."""
    if spec.startswith("sample:"):
        from iste.data.samples import sample_path

        return sample_path(spec[len("sample:"):])
    return Path(spec)


def load_model_for(args, device: str | None = None):
    """The model of ``--model`` (the shipped default without it) on ``device`` (default:
    ``--device``, else CUDA when available). ValueError for options that do not apply to it
    (:func:`check_model_options`)."""
    from iste.default_model import load_model_or_default
    from iste.runtime import pick_device

    # not through iste.load: the command has set its threads and said what the thread
    # variables hold (iste.cli.main), which iste.load would say again, --threads or not
    model = load_model_or_default(
        args.model, device=pick_device(device if device is not None else args.device))
    check_model_options(args, model)
    return model
