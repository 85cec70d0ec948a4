"""A ``torch.export`` program (``torch.export.save`` .pt2 archive) as FID's feature network.

``torch.export.load`` is not safe on a file someone else wrote (torch's own docstring: "uses
pickle under the hood ... Never load data from an untrusted source"). Read in torch 2.13's
``torch/export/pt2_archive/_package.py`` and ``torch/_export/serde/serialize.py``, loading
an archive runs code it holds in any of these places:

- ``data/sample_inputs/<model>.pt`` (always written): ``torch.load`` tries ``weights_only=True``
  and, when that fails, falls back to ``weights_only=False``, a full unpickle;
- a weight or tensor constant whose config says ``use_pickle`` (tensor subclasses), and the
  legacy ``data/weights/<model>.pt`` / ``data/constants/<model>.pt``: ``weights_only=False``;
- ``data/constants/opaque_obj_*`` (``pickle.loads``), ``custom_obj_*`` (TorchScript's pickler);
- ``data/aotinductor/``: compiled shared libraries, loaded with the program;
- every symbolic-shape expression (``expr_str`` in ``models/<model>.json``) goes through
  ``sympy.sympify``, which ``eval``s its string.

So the archive is read into memory once, checked for all of these (:func:`check_archive`),
and only then handed, from that memory, to ``torch.export.load``: no pickle is loaded other
than the sample inputs through iste's ``weights_only`` loader, and an expression may hold only
numbers, operators, shape symbols (``s0``, ``u3``) and sympy's shape functions. Nodes that
call anything but torch operators are refused by torch's own verifier when the program is
built. The program's contract is checked from its signature before any image is run
(:func:`check_signature`).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from typing import Any

import torch

from iste.eval.inception import FID_INPUT_SIZE

__all__ = ["is_exported_program", "load_exported_program"]

MODEL = "model"  # the name torch.export.save gives the one program it writes
_SAFE_ENTRIES = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    rf"|models/{MODEL}\.json|data/sample_inputs/{MODEL}\.pt"
    rf"|data/weights/{MODEL}_weights_config\.json|data/weights/weight_\d+"
    rf"|data/constants/{MODEL}_constants_config\.json|data/constants/tensor_\d+"
    r"|extra/[^/]+)")
# torch writes expressions as sympy's srepr: Add(Mod(Symbol('s77', positive=True,
# integer=True), Integer(2)), Integer(5)); a quoted string may only be a symbol's name
_TOKEN = re.compile(r"\s+|\d+\.?\d*(?:[eE][-+]?\d+)?|[A-Za-z_][A-Za-z0-9_]*|'[a-z]+\d+'"
                    r"|\*\*|//|[<>=!]=|[-+*/%(),<>&|~=]")
_SYMBOL = re.compile(r"[a-z]+\d+")
_SHAPE_FUNCTIONS = frozenset((
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "Max", "Min", "Abs", "Eq", "Ne",
    "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "floor", "ceiling", "oo", "True", "False",
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "StrictLessThan",
    "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality", "Infinity",
    "NegativeInfinity", "positive", "negative", "nonnegative", "nonpositive", "integer",
    "real", "finite", "zero", "nonzero"))
_RUNS_CODE = "loading it would run code it holds"


def _entries(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo] | None:
    """Entries of a .pt2 archive by their name below its one root folder, or None when the
    file is not one (a .pt2 names its format in ``<root>/archive_format``: ``pt2``)."""
    entries = {}
    for info in zf.infolist():
        entries[info.filename.partition("/")[2]] = info
    format_entry = entries.get("archive_format")
    roots = {info.filename.partition("/")[0] for info in zf.infolist()}
    if format_entry is None or len(roots) != 1 or format_entry.file_size > 16:
        return None
    return entries if zf.read(format_entry).strip() == b"pt2" else None


def is_exported_program(zf: zipfile.ZipFile) -> bool:
    """Whether the open zip archive is a ``torch.export.save`` archive (by content)."""
    return _entries(zf) is not None


def _check_payloads(config: Any, what: str) -> None:
    items = config.get("config") if isinstance(config, dict) else None
    if not isinstance(items, dict):
        raise ValueError(f"its {what} config is not torch.export's")
    for name, meta in items.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise ValueError(f"its {what} {name!r} is a pickle: {_RUNS_CODE}")


def _check_expression(text: Any) -> None:
    """Refuse a symbolic-shape expression that is more than numbers, operators, shape symbols
    and shape functions: sympy evaluates the string as Python."""
    if not isinstance(text, str):
        raise ValueError("it holds a shape expression that is not a string")
    pos = 0
    while pos < len(text):
        token = _TOKEN.match(text, pos)
        if token is None:
            raise ValueError(f"its shape expression {text[:60]!r} is not arithmetic on shape "
                             f"symbols: {_RUNS_CODE}")
        word = token.group()
        if word[0].isalpha() or word[0] == "_":  # a quoted symbol name is checked by _TOKEN
            if not (_SYMBOL.fullmatch(word) or word in _SHAPE_FUNCTIONS):
                raise ValueError(f"its shape expression {text[:60]!r} names {word!r}: "
                                 f"{_RUNS_CODE}")
        pos = token.end()


def _check_expressions(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr_str":
                _check_expression(value)
            else:
                _check_expressions(value)
    elif isinstance(node, list):
        for value in node:
            _check_expressions(value)


def check_archive(zf: zipfile.ZipFile) -> None:
    """Refuse (ValueError naming what) a .pt2 archive that ``torch.export.load`` could not
    load without running code from it (module notes)."""
    from iste.models.checkpoint import load_torch_file

    entries = _entries(zf)
    if entries is None:
        raise ValueError("not a torch.export archive")
    if len(entries) != len(zf.infolist()):  # torch's zip reader might read the other one
        raise ValueError("it holds two entries of one name")
    if any(info.compress_type != zipfile.ZIP_STORED for info in zf.infolist()):
        raise ValueError("it holds compressed entries (torch.export.save stores them as they "
                         "are)")
    unsafe = sorted(rel for rel in entries if rel and not rel.endswith("/")
                    and not _SAFE_ENTRIES.fullmatch(rel))
    if unsafe:
        raise ValueError(f"it holds {unsafe[0]} (pickled objects, compiled code or a second "
                         f"program), which torch.export.load would run")
    try:
        program = json.loads(zf.read(entries[f"models/{MODEL}.json"]))
        for what in ("weights", "constants"):
            _check_payloads(json.loads(zf.read(
                entries[f"data/{what}/{MODEL}_{what}_config.json"])), what)
    except KeyError as err:
        raise ValueError(f"it lacks {err.args[0]}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"its program description is not JSON ({err})") from None
    _check_expressions(program)
    sample = entries.get(f"data/sample_inputs/{MODEL}.pt")
    if sample is not None and sample.file_size:
        try:
            load_torch_file(io.BytesIO(zf.read(sample)))
        except Exception as err:  # noqa: BLE001 - torch's fallback would unpickle it fully
            raise ValueError(f"its sample inputs are not plain tensors ({type(err).__name__}): "
                             f"{_RUNS_CODE}") from None


def _rebuilt(zf: zipfile.ZipFile) -> io.BytesIO:
    """The entries of ``zf`` (checked, one per name) as a new in-memory zip, so that torch's
    zip reader reads exactly what Python's did (no bytes outside the entries)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as rebuilt:
        for info in zf.infolist():
            rebuilt.writestr(info.filename, zf.read(info))
    out.seek(0)
    return out


def _batch_range(size: Any, program: torch.export.ExportedProgram) -> tuple[int, float]:
    """The batch sizes (lowest, highest) a program's first input dimension accepts."""
    if isinstance(size, int):
        return size, size
    expr = size.node.expr
    bounds = program.range_constraints.get(expr)
    if bounds is None:
        raise ValueError(f"its batch dimension is {expr}, not one dynamic dimension")
    upper = bounds.upper  # a sympy Integer, or torch's int_oo when unbounded
    return int(bounds.lower), int(upper) if upper.is_Integer else float("inf")


def check_signature(program: torch.export.ExportedProgram, *, batch: int) -> int:
    """Check that ``program`` maps one float32 (B, 3, 299, 299) tensor to one (B, D) or
    (B, D, h, w) tensor and accepts every batch size from 1 to some B >= 1; return the batch
    size to run it with: ``batch`` or the program's largest, if smaller. Raises ValueError."""
    signature = program.graph_signature
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs = [placeholders[name].meta.get("val") for name in signature.user_inputs]
    outputs = [n.meta.get("val") for n in program.graph.output_node().args[0]
               if isinstance(n, torch.fx.Node) and n.name in signature.user_outputs]
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor) \
            or len(signature.user_outputs) != 1 or len(outputs) != 1 \
            or not isinstance(outputs[0], torch.Tensor):
        raise ValueError(f"it takes {len(inputs)} input(s) and returns "
                         f"{len(signature.user_outputs)} output(s); expected one image batch "
                         "in and one feature tensor out")
    x, y = inputs[0], outputs[0]
    want = (3, FID_INPUT_SIZE, FID_INPUT_SIZE)
    if x.ndim != 4 or tuple(x.shape[1:]) != want or x.dtype != torch.float32:
        raise ValueError(f"its input is {x.dtype} {_shape(x)}; expected float32 "
                         f"(B, {', '.join(map(str, want))})")
    if y.ndim < 2 or str(y.shape[0]) != str(x.shape[0]) or not y.dtype.is_floating_point:
        raise ValueError(f"it returns {y.dtype} {_shape(y)} for input {_shape(x)}; expected "
                         "float (B, D) or (B, D, h, w)")
    lowest, highest = _batch_range(x.shape[0], program)
    if lowest > 1:
        raise ValueError(f"it accepts batches of {lowest} to {highest} images only, and the last "
                         "batch may hold 1: export it with dynamic_shapes "
                         "{0: torch.export.Dim('batch', min=1)} on its input")
    return int(min(batch, highest))


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def load_exported_program(zf: zipfile.ZipFile, *, device: torch.device | str,
                          batch: int) -> tuple[torch.nn.Module, int]:
    """The program in the open .pt2 archive ``zf`` as a module on ``device`` and the batch size
    to run it with, after :func:`check_archive` and :func:`check_signature`.

    Raises ValueError (the reason, to be prefixed with the file's name)."""
    try:
        check_archive(zf)
        buffer = _rebuilt(zf)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RecursionError) as err:
        raise ValueError(f"its zip archive is damaged ({_one_line(err)})") from None
    try:
        program = torch.export.load(buffer)
    except Exception as err:  # noqa: BLE001 - any failure means an unusable program
        raise ValueError(f"torch.export.load failed: {_one_line(err)}") from None
    batch = check_signature(program, batch=batch)
    if torch.device(device) != torch.device("cpu"):
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return program.module(), batch


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"
