"""Typed configs from plain mappings (YAML, JSON): unknown keys and wrong types are errors.

Hostile input is bounded here, once for every config: YAML is parsed without aliases (an
"alias bomb" of a few hundred bytes expands to gigabytes) from files of at most
:data:`MAX_YAML_BYTES`; every size in a model config (widths, block counts, heads) lies in
1..:data:`MAX_SIZE` (:func:`check_size`); error messages quote at most a short excerpt of the
offending value (:func:`excerpt`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from iste.text import error_line

T = TypeVar("T")

MAX_SIZE = 4096
"""Upper bound of every size field of a model config (channels, hidden widths, block counts,
attention heads, windows): ten times the largest published value, small enough that a
typo (hidden: 1e9, 1e6 residual blocks) fails at once instead of allocating for minutes."""

MAX_LOADER_WORKERS = 256
"""The most data-loader worker processes a run may ask for (training's run.workers,
downstream's --workers): each is a process of its own, and a typo (10000) forked until the
machine ran out of them."""
MAX_YAML_BYTES = 1 << 16  # configs are ~1-2 KB; PyYAML's parser needs ~15 s per MB
_EXCERPT = 60
_YAML_TEXT_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")  # 1e-3, 5E4, 2.5e3


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names where."""


def excerpt(value: Any, limit: int = _EXCERPT) -> str:
    """``repr(value)`` cut to ``limit`` characters (an error line never carries a whole
    megabyte value)."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        value = type(value).__name__ + f" of {len(value)} items"
        return value
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def clip_text(text: str, limit: int = 200) -> str:
    """The first line of ``text``, cut to ``limit`` characters."""
    lines = str(text).splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[:limit] + "..."


def check_size(where: str, value: Any, *, low: int = 1, high: int = MAX_SIZE) -> int:
    """An integer size in ``low``..``high`` (bool refused).

    Raises:
        ValueError: naming ``where`` and an excerpt of the value.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer, got {excerpt(value)}")
    if not low <= value <= high:
        raise ValueError(f"{where} must be in {low}..{high}, got {excerpt(value)}")
    return value


def check_sizes(where: str, values: Any, *, low: int = 1, high: int = MAX_SIZE,
                max_len: int = 64) -> tuple[int, ...]:
    """A non-empty list of sizes (see :func:`check_size`) of at most ``max_len`` entries."""
    if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= max_len:
        raise ValueError(f"{where} must be a list of 1..{max_len} integers, got {excerpt(values)}")
    return tuple(check_size(f"{where}[{i}]", v, low=low, high=high) for i, v in enumerate(values))


def check_no_repeats(where: str, values: Any) -> None:
    """ValueError naming ``where`` when a list gives one value twice (a copy-paste slip:
    ``val_scales: [2, 2, 4]`` scored x2 twice, ``downsamples: [1, 1]`` drew the full
    resolution twice as often)."""
    seen: list = []
    for value in values:
        if value in seen:
            raise ValueError(f"{where} lists {excerpt(value)} twice, got {excerpt(list(values))}")
        seen.append(value)


def check_unused_at_default(obj: Any, names: tuple[str, ...], where: str, uses: str) -> None:
    """ValueError naming ``where.NAME`` for the first of the dataclass ``obj``'s fields
    ``names`` not at its default: a setting the rest of the config makes no use of (``uses``
    says what would), which would otherwise be silently ignored (``min_lr_ratio`` without
    ``schedule: cosine``: the run kept its learning rate)."""
    defaults = {f.name: f.default for f in dataclasses.fields(obj)}
    for name in names:
        if getattr(obj, name) != defaults[name]:
            raise ValueError(f"{where}.{name} ({excerpt(getattr(obj, name))}) would be ignored: "
                             f"only {uses} uses it")


def check_not_blank(where: str, text: str) -> None:
    """ValueError naming ``where`` for an empty or all-blank path: ``Path("")`` is the current
    folder, so ``data.train: [""]`` trained on whatever lay where the run was started."""
    if not text.strip():
        raise ValueError(f"{where} is empty: write the path (a blank one would be the folder "
                         "iste runs in)")


def path_from_text(text: str) -> str:
    """A path written in a config (text, decoded as UTF-8 whatever the locale) as this
    process's file system calls take it: as written where the file system's encoding holds
    every character (UTF-8, or Latin-1 for a Latin-1 name), else its UTF-8 bytes (as
    :func:`os.fsdecode` gives them). Under an ASCII locale (``LC_ALL=C`` with
    ``PYTHONUTF8=0``) a name beyond ASCII cannot be encoded: ``data.train: [Präparat]`` was
    "training source Pr\\xe4parat does not exist" beside the folder ``ls`` shows as such."""
    try:
        text.encode(sys.getfilesystemencoding(), "surrogateescape")
    except UnicodeEncodeError:
        return os.fsdecode(text.encode("utf-8", "surrogateescape"))
    return text


def _as_written(node: Any, value: Any, path: Path) -> Any:
    """``value``, the number YAML 1.1 (PyYAML) read from scalar ``node``; ConfigError where
    that is not the number written: ``010`` is octal 8, ``1:30`` base 60 (90), so ``seed:
    010`` or ``steps: 1:30`` took those values unsaid."""
    text = node.value.replace("_", "").lstrip("+-")
    octal = len(text) > 1 and text.startswith("0") and text.isdigit() and value != int(text)
    if octal or ":" in text:
        raise ConfigError(f"{path}: line {node.start_mark.line + 1}: {node.value} is read by "
                          f"YAML as {value}; write the number without "
                          f"{'its leading zero' if octal else 'colons'} (or quote a text)")
    return value


def load_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file safely for configs: plain data only (``yaml.SafeLoader``), no aliases
    or anchors-with-references, no key given twice in one mapping, at most
    :data:`MAX_YAML_BYTES` (64 KB).

    Raises:
        ConfigError: one line naming the file (and the line for YAML errors).
    """
    import yaml

    path = Path(path)
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {size} bytes is too large for a config "
                          f"(max {MAX_YAML_BYTES})")

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise ConfigError(f"{path}: line {mark.line + 1}: YAML aliases (*name) are not "
                                  "allowed in configs; write the values out")
            return super().compose_node(parent, index)

        def construct_object(self, node, deep=False):
            try:
                return super().construct_object(node, deep=deep)
            except ConfigError:
                raise
            except ValueError as err:  # a value PyYAML cannot build (an integer of over 4300
                # digits, the date 2024-13-01) raised an error naming neither file nor line
                raise ConfigError(f"{path}: line {node.start_mark.line + 1}: invalid value: "
                                  f"{clip_text(str(err), 120)}") from None

        def construct_yaml_int(self, node):
            return _as_written(node, super().construct_yaml_int(node), path)

        def construct_yaml_float(self, node):
            return _as_written(node, super().construct_yaml_float(node), path)

        def construct_mapping(self, node, deep=False):
            seen: set = set()
            for key_node, _ in node.value:  # a key given twice: YAML keeps the last silently
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)):
                    continue  # an unhashable key: the mapping itself refuses it
                if key in seen:
                    raise ConfigError(f"{path}: line {key_node.start_mark.line + 1}: {key!r} "
                                      "is given twice; the first would be ignored")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    NoAliasLoader.add_constructor("tag:yaml.org,2002:int", NoAliasLoader.construct_yaml_int)
    NoAliasLoader.add_constructor("tag:yaml.org,2002:float", NoAliasLoader.construct_yaml_float)
    data = path.read_bytes()
    try:
        return yaml.load(data, Loader=NoAliasLoader)  # noqa: S506 (SafeLoader)
    except yaml.reader.ReaderError as err:  # said as "invalid YAML: ReaderError", no more
        if err.encoding == "unicode":  # decoded, but a control character (a bell, a NUL);
            # its position counts characters
            line = data.decode("utf-8", "replace").count("\n", 0, err.position) + 1
            what = f"character #x{err.character:02x} is not allowed in YAML; remove it"
        else:  # its position counts bytes
            line = data.count(b"\n", 0, err.position) + 1
            what = (f"not UTF-8 text (byte #x{err.character:02x}: {err.reason}); save it as "
                    "UTF-8")
        raise ConfigError(f"{path}: line {line}: {what}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{path}: invalid YAML: {where}{clip_text(str(problem), 120)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {list(typing.get_args(tp))}, "
                              f"got {excerpt(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check(value, option, where)
            except ConfigError as err:
                errors.append((option, err))
        real = [err for option, err in errors if option is not type(None)]
        if len(real) == 1:  # an optional value (int | None): the error of the value's own type
            raise real[0]
        raise ConfigError(f"{where}: {excerpt(value)} does not match {tp}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {excerpt(value)}")
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {excerpt(value)}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_check(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp in (dict,):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {excerpt(value)}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, where=where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {excerpt(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {excerpt(value)}"
                              f"{_whole_number_hint(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML_TEXT_NUMBER.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML) reads 1e-3 as text: it needs a dot (1.0e-3); take what was meant
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {excerpt(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            # YAML 1.1 reads no, off, yes, on (any case) as booleans
            hint = " (YAML reads no/off/yes/on as false/true: quote the text)" \
                if isinstance(value, bool) else ""
            raise ConfigError(f"{where}: expected a string, got {excerpt(value)}{hint}")
        return value
    return value


def _whole_number_hint(value: Any) -> str:
    """For a count written as a float (``5e5``, ``1.0e6``, ``16.0``): how to write it, with
    its digits (an integer field takes no float, whose rounding would pass unseen)."""
    if isinstance(value, str) and _YAML_TEXT_NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e18:
        return f" (write the digits out: {int(value)})"
    return ""


def parse_dataclass(cls: type[T], data: Mapping[str, Any] | None, *, where: str) -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and ill-typed values.

    Missing keys take the dataclass defaults. Errors are :class:`ConfigError` naming
    ``where.key``. ``__post_init__`` checks of ``cls`` run as usual (their ValueErrors are
    re-raised as ConfigError with ``where`` prefixed).
    """
    if isinstance(data, cls):
        return data
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {excerpt(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {excerpt([str(k) for k in unknown], 120)}; "
                          f"allowed: {sorted(fields)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:  # said as "__init__() missing 1 required positional argument: 'scale'"
        raise ConfigError(f"{where}: missing key(s) {missing}")
    kwargs = {k: _check(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {error_line(err, 200)}") from err


def to_plain(obj: Any) -> Any:
    """A dataclass (nested) as JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
