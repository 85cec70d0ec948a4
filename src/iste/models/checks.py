"""Small validators shared by the model configs (encoders and fixed-scale networks).

Each raises ``ValueError`` naming the config and the field, so a typo or a wrong type in a YAML
file fails at load time with a message that says what to fix.
"""

from __future__ import annotations

from collections.abc import Sequence

from iste.typed import MAX_SIZE, excerpt


def check_int(owner: str, name: str, value: object, *, min_value: int = 1,
              max_value: int = MAX_SIZE) -> None:
    """``value`` is an int (not a bool) in ``min_value``..``max_value`` (every size of a model
    is bounded: :data:`iste.typed.MAX_SIZE`)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{name} must be an int, got {excerpt(value)} "
                         f"({type(value).__name__})")
    if value < min_value:
        raise ValueError(f"{owner}.{name} must be >= {min_value}, got {excerpt(value)}")
    if value > max_value:
        raise ValueError(f"{owner}.{name} must be <= {max_value}, got {excerpt(value)}")


def check_float(owner: str, name: str, value: object, *, min_value: float,
                max_value: float | None = None, min_inclusive: bool = True) -> float:
    """``value`` is a real number (int accepted, bool not) in range; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}.{name} must be a number, "
                         f"got {excerpt(value)} ({type(value).__name__})")
    value = float(value)
    if value != value:
        raise ValueError(f"{owner}.{name} must be a number, got nan")
    too_small = value < min_value if min_inclusive else value <= min_value
    if too_small or (max_value is not None and value > max_value):
        lo = "[" if min_inclusive else "("
        hi = f"{max_value}]" if max_value is not None else "inf)"
        raise ValueError(f"{owner}.{name} must be in {lo}{min_value}, {hi}, got {value}")
    return value


def check_bool(owner: str, name: str, value: object) -> None:
    """``value`` is a bool (0/1 and strings are rejected)."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be a bool, got {excerpt(value)} "
                         f"({type(value).__name__})")


def check_choice(owner: str, name: str, value: object, choices: Sequence[str]) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {list(choices)}, got {excerpt(value)}")


def as_int_tuple(owner: str, name: str, value: object) -> tuple[int, ...]:
    """A non-empty list or tuple of positive ints, returned as a tuple (YAML gives lists)."""
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 64:
        raise ValueError(f"{owner}.{name} must be a non-empty list of ints (at most 64), "
                         f"got {excerpt(value)}")
    for i, item in enumerate(value):
        check_int(owner, f"{name}[{i}]", item)
    return tuple(value)
