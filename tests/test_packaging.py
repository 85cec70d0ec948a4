"""What ``pip install`` builds from pyproject.toml: setuptools' reading of it, as a wheel or an
sdist build does, without building one (a wheel build takes seconds and the package index)."""

import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "iste"


def _distribution(monkeypatch):
    """setuptools' Distribution as the build backend configures it from pyproject.toml,
    deprecated settings raised as errors."""
    setuptools = pytest.importorskip("setuptools", minversion="77")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.warnings import SetuptoolsDeprecationWarning

    monkeypatch.chdir(ROOT)  # pyproject's paths are relative to it
    with warnings.catch_warnings():
        warnings.simplefilter("error", SetuptoolsDeprecationWarning)
        return apply_configuration(setuptools.Distribution(), ROOT / "pyproject.toml")


def test_pyproject_uses_no_setting_setuptools_has_deprecated(monkeypatch):
    # `license = { text = "MIT" }` warned at every build that setuptools stops building
    # it after 2027-02-18: `pip install .` and `pip install -e .` (README's first command)
    # would then fail, the build backend being the newest setuptools
    dist = _distribution(monkeypatch)
    assert dist.metadata.license_expression == "MIT AND BSD-3-Clause"
    assert {Path(f).name for f in dist.metadata.license_files} == {"LICENSE", "LICENSE.txt"}


def test_the_wheel_holds_every_data_file_of_the_package(monkeypatch):
    """Every file of src/iste that is not Python (the shipped weights, the bundled configs,
    the viewer's page and OpenSeadragon) is matched by package-data: one left out works from
    the checkout and is missing from an installed wheel."""
    dist = _distribution(monkeypatch)
    dist.include_package_data = False  # package-data's globs alone (no MANIFEST.in, no egg-info)
    build_py = dist.get_command_obj("build_py")
    build_py.ensure_finalized()
    in_wheel = {Path(src_dir, name).resolve()
                for _, src_dir, _, names in build_py.data_files for name in names}
    data = {p.resolve() for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
            and not p.name.startswith(".")}
    assert PACKAGE / "weights" / "default.safetensors" in data
    assert data - in_wheel == set()


def test_the_package_finds_its_files_through_importlib_resources_only():
    """An installed wheel has src/iste's files and nothing around them (no docs/, configs of
    the checkout, tests/): a path built from a module's ``__file__`` (``parents[2] / ...``)
    works from the checkout and fails once installed. The package reads its data with
    importlib.resources (weights, configs, the viewer's static files), whose folders are
    package-data (the test above)."""
    import ast

    from_file = sorted(f"{path.relative_to(ROOT)}:{node.lineno}"
                       for path in PACKAGE.rglob("*.py")
                       for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                       if isinstance(node, ast.Name) and node.id == "__file__")
    assert from_file == []


def test_the_version_is_written_once_and_the_citation_repeats_it(monkeypatch):
    """pyproject.toml, iste.__version__ and CITATION.cff each held the version: a release that
    bumped one recorded another in its outputs' provenance (iste.__version__) than pip
    shows. pyproject now reads iste.__version__; CITATION.cff, plain text, must agree."""
    import tomllib

    import iste

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "iste.__version__"}
    dist = _distribution(monkeypatch)
    assert dist.metadata.version == iste.__version__
    cited = [line.split(":", 1)[1].strip().strip("\"'")
             for line in (ROOT / "CITATION.cff").read_text().splitlines()
             if line.startswith("version:")]
    assert cited == [iste.__version__]


def test_the_sdist_holds_what_a_packager_builds_tests_and_reads(monkeypatch, tmp_path):
    """The sdist held src/, README and the test_*.py files setuptools adds by default, not the
    tests' helpers and fixtures, the docs, the benchmarks or constraints.txt: its tests could
    not run. MANIFEST.in grafts them; the file list is egg_info's, as an sdist build makes it
    (written under tmp_path, not into the checkout)."""
    dist = _distribution(monkeypatch)
    dist.script_name = "setup.py"  # the standard-files check reads it; pyproject has none
    egg_info = dist.get_command_obj("egg_info")
    egg_info.egg_base = str(tmp_path)
    egg_info.ensure_finalized()
    egg_info.run()
    in_sdist = {Path(name) for name in egg_info.filelist.files}
    wanted = {p.relative_to(ROOT) for folder in ("tests", "docs", "benchmarks", "scripts")
              for p in (ROOT / folder).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert Path("tests/fixtures/official/iste.safetensors") in wanted
    assert Path("tests/serve_helpers.py") in wanted and Path("docs/performance.md") in wanted
    assert wanted - in_sdist == set()
    assert {Path("constraints.txt"), Path("CITATION.cff"), Path("README.md")} <= in_sdist
    assert not any("__pycache__" in p.parts or p.suffix == ".pyc" for p in in_sdist)


# (distribution, the last release without what iste needs, the first with it)
_FLOORS = [
    # openslide-python finds the C library in the openslide-bin wheel from 1.4 on: with 1.3
    # `import openslide` failed ('libopenslide.so.0: cannot open shared object file') where
    # the system has no OpenSlide, and iste --version said "openslide not installed"
    ("openslide-python", "1.3.1", "1.4.0"),
    # TiffPage.iccprofile and imwrite(iccprofile=): with 2024.1.30 every TIFF image write
    # failed ('unexpected keyword argument iccprofile') and a TIFF's metadata read as none
    ("tifffile", "2024.1.30", "2024.5.22"),
    # every DICOM output failed inside 0.36.0's metadata dump, with the marshmallow 4 it
    # requires ("TypeError: object of type 'NoneType' has no len()")
    ("wsidicom", "0.36.0", "0.36.1"),
]


@pytest.mark.parametrize("name, without, first", _FLOORS)
def test_a_declared_floor_admits_no_release_without_what_iste_calls(monkeypatch, name,
                                                                    without, first):
    """A lab's environment may hold the oldest release a requirement admits (pip keeps an
    installed one that satisfies it); found by running the tests on the declared floors."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    requires = {r.name: r for r in map(Requirement, _distribution(monkeypatch).install_requires)}
    assert not requires[name].specifier.contains(Version(without))
    assert requires[name].specifier.contains(Version(first))


def test_the_declared_platforms_are_those_iste_runs_on(monkeypatch):
    # the package declared no platform: an index or a lab's admin could not see that Windows
    # itself is refused at import (iste/__init__.py) and WSL 2 is where it runs there
    dist = _distribution(monkeypatch)
    systems = {c for c in dist.metadata.classifiers if c.startswith("Operating System ::")}
    assert systems == {"Operating System :: POSIX :: Linux", "Operating System :: MacOS"}
