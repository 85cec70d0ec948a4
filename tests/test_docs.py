"""The documentation as a new user meets it: README.md and docs/*.md name what exists.

Cheap checks of classes of doc errors that reading alone lets through: a command shown in a
code block that iste's parser refuses (an option renamed, a choice dropped), a link or anchor
to nothing (a page moved, a heading reworded), a file of the repository named that is not
there, a module of the package missing from the README's map of them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

import iste
from iste.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_COMMAND = re.compile(r"(?:^|\s)(?:\S*/)?(?:iste|-m iste) ((?:%s)\b.*)"
                      % "|".join(map(re.escape, build_parser().commands)))
_PLACEHOLDER = re.compile(r"\.\.\.|…|<|NAME")  # an elided or templated command, not one to run


def _code_lines(page: Path) -> list[tuple[int, str]]:
    """(line number, line) of the page's fenced code blocks, a line continued with a
    backslash joined to the next as the shell joins it."""
    out, fenced, pending = [], False, None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced, pending = not fenced, None
            continue
        if not fenced:
            continue
        start, text = pending if pending else (number, "")
        text += line
        if text.rstrip().endswith("\\"):
            pending = (start, text.rstrip()[:-1])
            continue
        pending = None
        out.append((start, text))
    return out


def _doc_commands() -> list[tuple[str, list[str]]]:
    """("page:line", argv after 'iste') of every iste command in the pages' code blocks."""
    found = []
    for page in PAGES:
        for number, line in _code_lines(page):
            match = _COMMAND.search(line.split(" #")[0])
            if match and not _PLACEHOLDER.search(match.group(1)):
                found.append((f"{page.name}:{number}", shlex.split(match.group(1))))
    return found


def test_the_pages_show_commands_to_check():
    assert len(_doc_commands()) >= 40


def _exact(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` and its commands' parsers taking whole option names only: argparse reads
    a prefix (``--target-mp``) as the option it begins, so a renamed option would still
    parse in the docs while the name shown no longer exists."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action.choices, dict):  # the sub-commands' parsers by name
            for command in action.choices.values():
                _exact(command)
    return parser


@pytest.mark.parametrize("where, argv", _doc_commands(), ids=[w for w, _ in _doc_commands()])
def test_every_command_shown_in_the_docs_parses(where, argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            _exact(build_parser()).parse_args(argv)
        except SystemExit as stop:
            assert not stop.code, f"{where}: iste {shlex.join(argv)}\n{err.getvalue()}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_every_link_between_the_pages_reaches_a_file_and_heading():
    broken = []
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                file = (page.parent / path).resolve() if path else page
                if not file.exists() or (anchor and file.suffix == ".md"
                                         and anchor not in _anchors(file)):
                    broken.append(f"{page.relative_to(ROOT)}:{number}: {target}")
    assert not broken


def test_the_readme_names_every_module_of_the_package():
    table = (ROOT / "README.md").read_text().partition("## What is inside")[2]
    named = set(re.findall(r"`(iste(?:\.\w+)?)`", table))
    package = Path(iste.__file__).parent
    modules = {f"iste.{p.stem}" for p in package.glob("*.py") if not p.stem.startswith("_")}
    packages = {f"iste.{p.parent.name}" for p in package.glob("*/__init__.py")}
    missing = sorted((modules | packages) - named)
    assert not missing, f"README's 'What is inside' does not name {missing}"


def test_every_file_of_the_repository_the_pages_name_exists():
    """``tests/...``, ``src/iste/...`` (or ``iste/...``), ``scripts/...``, ``benchmarks/...``,
    ``docs/...``: a file moved or renamed leaves the page pointing at nothing."""
    named = re.compile(r"(?<![\w/.-])(?:tests|benchmarks|scripts|src/iste|iste|docs)/[\w./-]+"
                       r"\.(?:py|md|json|png|sh|yaml|safetensors)\b")
    missing = []
    for page in PAGES:
        for path in set(named.findall(page.read_text())):
            if "NAME" not in path and not (ROOT / path).exists() \
                    and not (ROOT / "src" / path).exists():
                missing.append(f"{page.name}: {path}")
    assert not missing


def _resolves(name: str) -> bool:
    """Whether dotted ``name`` (``iste.slides.tissue.TissueBlend``) is a module of the package
    or an attribute reached from the longest such module."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[k:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def test_every_dotted_name_of_the_package_the_pages_give_exists():
    """``iste.data.deblock.deblock``, ``iste.provenance.RUN_FIELDS`` ...: the pages tell users
    and contributors to call or read these; a function or constant renamed or moved leaves the
    name pointing at nothing (the parser and file checks above do not see it)."""
    dotted = re.compile(r"(?<![\w./-])iste(?:\.[A-Za-z_]\w*)+")
    files = re.compile(r"\.(?:safetensors|pt|pth|pt2|json|png|tiff?|svs|yaml)$")
    missing = []
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for name in dotted.findall(line):
                if not files.search(name) and not _resolves(name):
                    missing.append(f"{page.relative_to(ROOT)}:{number}: {name}")
    assert not missing


def test_the_pages_give_the_shipped_models_encoder_as_it_is():
    """A page naming the shipped default's size ("the shipped default model (compact ISTE,
    EDSR-baseline 6 x 32 ...") stays true when a new default is shipped (wsi.md said 6 x 32
    of the 16-block v3); a figure of an earlier default says "shipped then"."""
    from iste.models.checkpoint import read_metadata

    config, _ = read_metadata(Path(iste.__file__).parent / "weights" / "default.safetensors")
    size = f"{config.encoder_args['n_resblocks']} x {config.encoder_args['n_feats']}"
    claim = re.compile(r"shipped default model \((?:compact\s+)?ISTE,\s+EDSR-baseline\s+"
                       r"(\d+ x \d+)")
    wrong = [f"{page.name}: {found}" for page in PAGES
             for found in claim.findall(" ".join(page.read_text().split())) if found != size]
    assert not wrong, f"the shipped default's encoder is {size}"


def test_the_pages_module_tables_name_every_module_of_their_package():
    """A page's table of a package's modules (viewer.md's "The server (src/iste/serve/)")
    names each of them: serve/latency.py was missing from it."""
    missing = []
    for page in PAGES:
        for package, body in re.findall(r"^#+ .*\(src/iste/(\w+)/\)\n(.*?)(?=^#)",
                                        page.read_text(), flags=re.S | re.M):
            listed = set(re.findall(r"^\| `(\w+)\.py` \|", body, flags=re.M))
            if not listed:
                continue
            modules = {p.stem for p in (ROOT / "src" / "iste" / package).glob("*.py")
                       if not p.stem.startswith("_")}
            missing += [f"{page.name}: {package}/{m}.py" for m in sorted(modules - listed)]
    assert not missing
