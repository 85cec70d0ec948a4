"""``iste`` command line: one sub-command per module, errors as one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
import warnings

from iste.cli import bench, convert, data, evaluate, info, serve, train, upscale


COMMANDS = {
    "upscale": upscale,
    "convert-official": convert,
    "data": data,
    "info": info,
    "eval": evaluate,
    "train": train,
    "serve": serve,
    "bench": bench,
}


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from iste.data.images import ImageReadError
    from iste.data.samples import SampleUnavailableError
    from iste.models.checkpoint import CheckpointError
    from iste.typed import ConfigError

    return (UserError, ImageReadError, SampleUnavailableError, CheckpointError, ConfigError,
            ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            FileExistsError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iste", description=__doc__.split("\n")[0].strip("`"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"iste: WARNING: {msg}\n"
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("iste: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        print(f"iste: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
