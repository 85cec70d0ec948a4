"""Run under torchrun by test_slides_cli.py: ``iste`` (the CLI) where the cohort folder, if
rank 1 listed it, would show rank 1 one slide more, sorted first (a slide added between the
ranks' listings: the path in ``ISTE_TEST_EXTRA``); prints the items each rank upscales."""

import os
import sys
from pathlib import Path

from iste.cli import upscale_slides
from iste.cli.main import main
from iste.slides import cohort

real_list, real_one = cohort.list_slides, upscale_slides._upscale_one


def listed_late(*args, **kwargs):
    found = real_list(*args, **kwargs)
    return [Path(os.environ["ISTE_TEST_EXTRA"]), *found] if os.environ["RANK"] == "1" else found


def named(args, path, *rest):
    sys.stdout.write(f"rank {os.environ['RANK']} item {path.name}\n")  # one write: the
    sys.stdout.flush()  # ranks share the pipe, and print's two writes could interleave
    return real_one(args, path, *rest)


cohort.list_slides, upscale_slides._upscale_one = listed_late, named
sys.exit(main(sys.argv[1:]))
