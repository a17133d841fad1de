"""Values of typed fields from what people type: one coercion for sampler options (CLI ``--option``,
studio widgets, scheduler configs) and training configs (``--key=value``), and one range check (:class:`Range`)."""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np


@dataclass(frozen=True)
class Range:
    """The values a number may take: ``low`` to ``high`` (``open_low`` / ``open_high``: that bound itself
    excluded), the one range check of sampler options, training configs and the UNet's counts. A bound may be a
    function of T, the model's training timesteps: it is checked once T is known (a sampler's timesteps). ``why``
    is said with the refusal."""

    low: float | Callable[[int], float] = -math.inf
    high: float | Callable[[int], float] = math.inf
    open_low: bool = False
    open_high: bool = False
    why: str = ""

    def check(self, name: str, value: float, T: int | None = None) -> None:
        """Raise ValueError if ``value`` is out of range; bounds that need T are skipped while ``T`` is None."""
        low = self.low(T) if callable(self.low) and T is not None else self.low
        high = self.high(T) if callable(self.high) and T is not None else self.high
        low = -math.inf if callable(low) else low
        high = math.inf if callable(high) else high
        if (value > low if self.open_low else value >= low) and (value < high if self.open_high else value <= high):
            return
        if math.isfinite(low) and math.isfinite(high) and (self.open_low or self.open_high):
            need = f"in {'(' if self.open_low else '['}{low:g}, {high:g}{')' if self.open_high else ']'}"
        elif math.isfinite(low) and math.isfinite(high):
            need = f"between {low:g} and {high:g}"
        elif self.open_low:
            need = "positive" if low == 0 else f"greater than {low:g}"
        elif low == 0:
            need = "a non-negative integer" if isinstance(value, int) else "non-negative"
        elif low == 1 and isinstance(value, int):
            need = "a positive integer"
        else:
            need = f"at least {low:g}" if math.isfinite(low) else f"at most {high:g}"
        why = f" ({self.why}{', T = ' + str(T) if T is not None and callable(self.high) else ''})" if self.why else ""
        raise ValueError(f"{name} must be {need}{why}, got {value!r}.")


TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}


def coerce(name: str, hint: Any, value: Any, owner: str = "") -> Any:
    """``value`` as the type ``hint`` wants, or ValueError naming ``name``, the type and the value.

    Accepted: the type itself; numpy scalars; text as typed on a command line ("50", "0.5", "true");
    a whole float for an int (a number widget's 50.0); an int for a float. Refused: a non-whole number
    for an int (2.5 steps), NaN and infinite floats, booleans for numbers, a value outside a ``Literal``.
    Types it does not know (dicts, tuples...) pass through unchanged."""
    if isinstance(value, np.generic):
        value = value.item()
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else Any
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        kind = type(args[0])
        if kind is not str and isinstance(value, str):
            try:
                value = coerce(name, kind, value, owner)
            except ValueError:
                pass
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if value not in args or (isinstance(value, bool) and not all(isinstance(a, bool) for a in args)):
            raise ValueError(
                f"{owner + ': ' if owner else ''}{name}={value!r} is not one of {', '.join(map(repr, args))}."
            )
        return value
    if hint is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            value = value.strip().lower() == "true"
        ok = isinstance(value, bool)
    elif hint is int:
        if isinstance(value, str):
            value = _number(value, int)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        if isinstance(value, str):
            value = _number(value, float)
        try:  # an int too large for a float (10**400) is not finite either
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
        except OverflowError:
            ok = False
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:
        return value
    if not ok:
        raise ValueError(f"{name} must be {TYPE_NAMES[hint]}, got {value!r}.")
    return value


def env_number(name: str, kind: type, default: Any, low: float, high: float, note: str = "") -> Any:
    """The environment variable ``name`` as ``kind`` (int or float, read as :func:`coerce` reads text)
    within ``low``..``high``; ``default`` when it is unset or empty. Anything else is a ValueError in one
    line naming the variable and the range it accepts (``note`` says where the range comes from)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = coerce(name, kind, text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(f"{name} must be {TYPE_NAMES[kind]} from {low:,} to {high:,}{note}, got {text!r}.")
    return value


def _number(text: str, kind: type) -> Any:
    """``text`` as an int or float if it reads as one (ints also from "50.0"), else the text unchanged."""
    for cast in (int, float) if kind is int else (float,):
        try:
            return cast(text.strip())
        except ValueError:
            pass
    return text
