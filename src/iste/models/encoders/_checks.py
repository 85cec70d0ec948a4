"""Small validators shared by the encoder configs (private).

Each raises ``ValueError`` naming the config and the field, so a typo or a wrong type in a YAML
file fails at load time with a message that says what to fix.
"""

from __future__ import annotations

from collections.abc import Sequence


def check_int(owner: str, name: str, value: object, *, min_value: int = 1) -> None:
    """``value`` is an int (not a bool) >= ``min_value``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < min_value:
        raise ValueError(f"{owner}.{name} must be >= {min_value}, got {value}")


def check_float(owner: str, name: str, value: object, *, min_value: float,
                max_value: float | None = None, min_inclusive: bool = True) -> float:
    """``value`` is a real number (int accepted, bool not) in range; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}.{name} must be a number, "
                         f"got {value!r} ({type(value).__name__})")
    value = float(value)
    too_small = value < min_value if min_inclusive else value <= min_value
    if too_small or (max_value is not None and value > max_value):
        lo = "[" if min_inclusive else "("
        hi = f"{max_value}]" if max_value is not None else "inf)"
        raise ValueError(f"{owner}.{name} must be in {lo}{min_value}, {hi}, got {value}")
    return value


def check_bool(owner: str, name: str, value: object) -> None:
    """``value`` is a bool (0/1 and strings are rejected)."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be a bool, got {value!r} ({type(value).__name__})")


def check_choice(owner: str, name: str, value: object, choices: Sequence[str]) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {list(choices)}, got {value!r}")


def as_int_tuple(owner: str, name: str, value: object) -> tuple[int, ...]:
    """A non-empty list or tuple of positive ints, returned as a tuple (YAML gives lists)."""
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ValueError(f"{owner}.{name} must be a non-empty list of ints, got {value!r}")
    for i, item in enumerate(value):
        check_int(owner, f"{name}[{i}]", item)
    return tuple(value)
