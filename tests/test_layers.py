"""The package's shape, read from the source: dependencies point one way
(data -> models -> engine -> slides -> eval/train -> cli/serve, DESIGN / STYLE), no two modules
import each other (directly or through others), no module reaches into another module's
private (underscore) names, and nothing below the command line imports the public API
module."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import iste

PACKAGE = Path(iste.__file__).parent

# Layer of each top-level part of the package; a module may import only lower layers (and its
# own part). Small shared modules sit at the bottom; the API and the bench sit above the
# libraries they call; the command line and the viewer at the top.
LAYER = {
    # the file system's edges, each below what uses it: text as any output holds it (progress
    # shows a file name as one line), refusals as one-line errors, digests; temporaries; path
    # checks; atomic writes and folder locks
    "text": -6, "refusals": -6, "digest": -6, "temps": -5, "paths": -4, "files": -3, "locks": -3,
    "typed": 0, "runtime": 0, "progress": 0, "distributed": 0, "__version__": 0,
    "process_memory": 0, "children": 0, "lru": 0,
    "stopping": -1,  # below progress, whose update raises a stop whose exception was lost
    "data": 1, "provenance": 2, "models": 3, "default_model": 4, "engine": 5, "slides": 6,
    "eval": 7, "train": 7, "downstream": 8, "bench": 8, "api": 9, "serve": 10, "cli": 11,
    "__init__": 12, "__main__": 12,
}
# Known upward (or sideways) imports, each lazy and each with its reason; not to grow.
ALLOWED_UPWARD = {
    # the untrained fallback's architecture is the model section of the shipped weights'
    # bundled training config: written once there, and only train.config reads those files
    # (bundled names, validation); default_model sits below the engine, which the API uses
    ("default_model.py", "iste.train.config"),
}


@functools.cache
def _modules() -> tuple[tuple[str, ast.AST], ...]:
    """(path relative to the package, parsed source) of every module."""
    return tuple((path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text("utf-8")))
                 for path in sorted(PACKAGE.rglob("*.py")))


def _part(name: str) -> str:
    """'iste.slides.formats' -> 'slides'; 'slides/job.py' -> 'slides'; 'iste' -> '__init__'."""
    parts = name.removesuffix(".py").replace("/", ".").split(".")
    if parts[0] == "iste":
        parts = parts[1:]
    return parts[0] if parts else "__init__"


def _imports(tree: ast.AST):
    """(line, imported module, imported names) of every absolute import of iste."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "iste":
                    yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "iste":
            names = tuple(a.name for a in node.names)
            if node.module == "iste":  # from iste import distributed: the submodule
                for n in names:
                    yield node.lineno, f"iste.{n}", ()
            else:
                yield node.lineno, node.module, names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(rel) for rel, _ in _modules()}
    assert parts <= set(LAYER), f"give these a layer: {sorted(parts - set(LAYER))}"


def test_imports_point_down_the_layers():
    upward = []
    for rel, tree in _modules():
        here = _part(rel)
        for line, module, _ in _imports(tree):
            there = _part(module)
            if there != here and LAYER[there] >= LAYER[here] \
                    and (rel, module) not in ALLOWED_UPWARD:
                upward.append(f"{rel}:{line} imports {module}")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


# Within a part: the modules that reading (and writing) a kind of file is made of, lowest rank
# first. Each imports, of these, only modules of a lower rank: the shared pieces never the
# readers, a reader never another reader, and only formats (which picks one) all of them.
RANK = {
    "data/imageformats.py": 0, "data/integrity.py": 1,
    # imagemeta below images: the pixel reader converts CMYK by the profile rules it holds
    "data/imagemeta.py": 1, "data/images.py": 2, "data/imagewrite.py": 2,
    "slides/scale.py": 0,
    "slides/filebackend.py": 1, "slides/omeread.py": 1, "slides/quantisation.py": 1,
    "slides/dicomseries.py": 1, "slides/tiffcheck.py": 2,
    "slides/tiffslide_reader.py": 3, "slides/openslide_reader.py": 3,
    "slides/wsidicom_reader.py": 3, "slides/formats.py": 4,
}


def test_image_and_slide_readers_import_down_their_ranks():
    ranked = {f"iste.{rel.removesuffix('.py').replace('/', '.')}": rank
              for rel, rank in RANK.items()}
    against = []
    for rel, tree in _modules():
        if rel not in RANK:
            continue
        for line, module, names in _imports(tree):
            for name in [module, *(f"{module}.{n}" for n in names)]:
                if name in ranked and ranked[name] >= RANK[rel]:
                    against.append(f"{rel}:{line} imports {name}")
    assert not against, "imports against the ranks:\n" + "\n".join(against)


def _module_name(rel: str) -> str:
    """'cli/upscale.py' -> 'iste.cli.upscale'; 'models/encoders/__init__.py' ->
    'iste.models.encoders'."""
    parts = rel.removesuffix(".py").split("/")
    return ".".join(["iste", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def _module_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (lazy and relative imports included; the
    package root, whose ``__version__`` a few modules read, is left out)."""
    names = {_module_name(rel) for rel, _ in _modules()}
    graph = {}
    for rel, tree in _modules():
        here = _module_name(rel)
        package = here if rel.endswith("__init__.py") else here.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(p for p in (base, node.module) if p)
                found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in names else module
                          for a in node.names}
        graph[here] = found & names - {here, "iste"}
    return graph


def test_no_import_cycles_between_modules():
    graph, done, cycles = _module_graph(), set(), []

    def visit(module: str, path: list[str]) -> None:
        path.append(module)
        for dep in sorted(graph[module]):
            if dep in path:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, path)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [])
    assert not cycles, "modules that import each other:\n" + "\n".join(cycles)


def test_no_module_imports_private_names_of_another_module():
    found = []
    for rel, tree in _modules():
        for line, module, names in _imports(tree):
            bad = [n for n in names if _private(n)]
            folder = module.rsplit(".", 1)[0].removeprefix("iste").lstrip(".").replace(".", "/")
            if _private(module.rsplit(".", 1)[-1]) and not rel.startswith(folder + "/"):
                bad.append(module)  # a private module, outside its own folder
            if bad:
                found.append(f"{rel}:{line} from {module} import {', '.join(bad)}")
    assert not found, "private names used outside their module:\n" + "\n".join(found)


def test_no_module_reads_private_attributes_of_what_it_imports_from_iste():
    found = []
    for rel, tree in _modules():
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.asname or a.name.split(".")[0] for a in node.names
                             if a.name.split(".")[0] == "iste"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "iste":
                imported |= {a.asname or a.name for a in node.names}
        found += [f"{rel}:{node.lineno} {node.value.id}.{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and _private(node.attr)
                  and isinstance(node.value, ast.Name) and node.value.id in imported]
    assert not found, "private attributes read from outside:\n" + "\n".join(found)


def test_only_the_command_line_imports_the_public_api():
    users = sorted(rel for rel, tree in _modules()
                   for _, module, names in _imports(tree)
                   if module == "iste.api" or (module == "iste" and "api" in names))
    assert all(_part(rel) in ("cli", "__init__") for rel in users), users


def test_the_declared_model_interface_is_read_never_probed():
    """What the model base classes declare (and build_model guarantees) is read directly:
    no getattr / hasattr with a default, which would hide a model that breaks the
    declaration."""
    from iste.models.base import SRModel
    from iste.models.fixed.base import FixedScaleSR
    from iste.models.heads.base import SRHead

    declared = {name for cls in (SRModel, SRHead, FixedScaleSR) for name in cls.__annotations__}
    assert {"model_config", "checkpoint_meta", "query_reach", "uses_key_set", "scale",
            "reach"} <= declared
    probes = []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value in declared:
                probes.append(f"{rel}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    assert not probes, "probes of the declared model interface:\n" + "\n".join(probes)


def test_pickles_are_read_in_one_place_with_weights_only():
    """A model file a lab is handed may be a pickle of code: torch.load is called only by
    iste.models.checkpoint.load_torch_file (weights_only=True), and nothing calls pickle's
    loaders or numpy's load with allow_pickle (off by default)."""
    calls = []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = (f"{func.value.id}.{func.attr}" if isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Name) else getattr(func, "id", ""))
            keywords = {k.arg: k.value for k in node.keywords}
            allow = keywords.get("allow_pickle")
            if name in ("pickle.load", "pickle.loads", "torch.load") \
                    or (name == "np.load" and allow is not None
                        and not (isinstance(allow, ast.Constant) and allow.value is False)):
                weights_only = keywords.get("weights_only")
                safe = isinstance(weights_only, ast.Constant) and weights_only.value is True
                calls.append(f"{rel} {name}{' weights_only' if safe else ''}")
    assert calls == ["models/checkpoint.py torch.load weights_only"], calls
