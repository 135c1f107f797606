"""How a setting of a run is declared: once, on its dataclass field (:func:`setting`); the range check
(:func:`check_setting`, for ``TrainConfig.validate``) and the command-line flag (``cli.add_setting_flags``) derive
from it. A ``machinery`` setting (where or how fast a run computes) or a ``path`` never names a run."""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mpn_tutorial.errors import UsageError


def setting(default, help: str, *, flag: str | None = None, low: float | None = None, high: float | None = None,
            above: float | None = None, below: float | None = None,
            choices: Sequence | Callable[[], Sequence] | None = None, pattern: str | None = None, hint: str = "",
            machinery: bool = False, path: str | None = None, aliases: tuple[str, ...] = ()) -> Any:
    """A settings field: ``default``, what it means (``help``), its ``flag`` (default: the name with dashes) and
    other flags (``aliases``), its range (``low``/``high`` inclusive, ``above``/``below`` exclusive, ``choices``
    or a function returning them, or a regular expression ``pattern``; a tuple's range applies to each
    element), a ``hint`` shown when a value is refused, whether it is machinery or a ``path`` (file/folder)."""
    metadata = {"help": help, "flag": flag, "low": low, "high": high, "above": above, "below": below,
                "choices": choices, "pattern": pattern, "hint": hint, "machinery": machinery, "path": path,
                "aliases": tuple(aliases),
                # where the field is declared: its annotation's names are resolved there (kind_of)
                "module": sys._getframe(1).f_globals.get("__name__")}
    if isinstance(default, (list, dict, set)):
        raise TypeError("a setting's default must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=metadata)


def is_machinery(field: dataclasses.Field) -> bool:
    """Whether a field only says where or how fast a run computes."""
    return bool(field.metadata.get("machinery"))


def flag_of(field: dataclasses.Field) -> str:
    """The field's command-line flag, without the dashes: ``mpn_heads`` -> ``heads`` (declared) or the name."""
    return field.metadata.get("flag") or field.name.replace("_", "-")


ELEMENT_TYPES = (int, float, bool, str, Path)
# bound: (in words, the test a value must pass)
_BOUNDS = {"low": ("at least", operator.ge), "above": ("above", operator.gt), "high": ("at most", operator.le),
           "below": ("below", operator.lt)}


def kind_of(field: dataclasses.Field) -> tuple[type, bool, bool]:
    """(element type, holds several values, may be None) of a field typed ``T``, ``T | None`` (or
    ``Optional[T]``), ``tuple[T, ...]`` or ``list[T]``, T one of :data:`ELEMENT_TYPES`. A string annotation
    (``from __future__ import annotations``) is resolved in the module that declares the field."""
    annotation = field.type
    if isinstance(annotation, str):
        holder = types.new_class("Annotation", exec_body=lambda namespace: namespace.update(
            __annotations__={field.name: field.type}, __module__=field.metadata.get("module") or __name__))
        annotation = typing.get_type_hints(holder)[field.name]
    arguments = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in arguments
    if optional:
        remaining = [argument for argument in arguments if argument is not type(None)]
        annotation = remaining[0] if len(remaining) == 1 else annotation
    many = typing.get_origin(annotation) in (tuple, list)
    element = typing.get_args(annotation)[0] if many else annotation
    if element not in ELEMENT_TYPES:
        raise TypeError(f"setting {field.name}: type {annotation} is not one a setting can have (one of "
                        f"{', '.join(t.__name__ for t in ELEMENT_TYPES)}, optionally in a tuple or list, or None)")
    return element, many, optional


def choices_of(field: dataclasses.Field) -> tuple | None:
    choices = field.metadata.get("choices")
    return tuple(choices() if callable(choices) else choices) if choices is not None else None


def describe_range(field: dataclasses.Field) -> str:
    """The values a field can take, in words: "one of a, b", "a whole number at least 1", ..."""
    element, many, optional = kind_of(field)
    meta, choices = field.metadata, choices_of(field)
    if element is bool:
        text = "true or false"
    elif choices is not None:
        text = "one of " + ", ".join(map(str, choices))
    elif meta.get("pattern"):
        text = f"text matching {meta['pattern']}"
    else:
        text = {int: "a whole number", float: "a number", str: "text", Path: "a path"}[element]
        bounds = [f"{words} {meta[key]:g}" for key, (words, _) in _BOUNDS.items() if meta.get(key) is not None]
        if bounds:
            text += " " + " and ".join(bounds)
    if many:
        text = f"a list of {'numbers' if text.startswith('a ') else 'values'}, each {text.removeprefix('a ')}"
    return text + (" (or none)" if optional else "")


def has_range(field: dataclasses.Field) -> bool:
    """Whether the field's declaration says which values it can take (every setting must)."""
    meta = field.metadata
    return (kind_of(field)[0] is bool or choices_of(field) is not None or meta.get("path") is not None
            or any(meta.get(key) is not None for key in (*_BOUNDS, "pattern")))


def value_error(field: dataclasses.Field, value, element_only: bool = False) -> str | None:
    """What is wrong with ``value`` for ``field`` (None when it is in range); ``element_only``: ``value``
    is one element of a tuple field."""
    element, many, optional = kind_of(field)
    many = many and not element_only
    if value is None:
        return None if optional else f"{field.name} must be {describe_range(field)}, got None"
    if many and not isinstance(value, (tuple, list)):
        return f"{field.name} must be {describe_range(field)}, got {value!r}"
    if not all(_fits(field, element, item) for item in (value if many else (value,))):
        hint = field.metadata.get("hint")
        return f"{field.name} must be {describe_range(field)}, got {value!r}" + (f" ({hint})" if hint else "")
    return None


def check_setting(field: dataclasses.Field, value) -> None:
    """Raise a :class:`~mpn_tutorial.errors.UsageError` if ``value`` is outside the field's range."""
    problem = value_error(field, value)
    if problem:
        raise UsageError(problem)


def _fits(field: dataclasses.Field, element: type, value) -> bool:
    if element is bool:
        return isinstance(value, bool)
    if element is Path:
        return isinstance(value, (str, Path))
    if isinstance(value, bool) or not isinstance(value, {int: int, float: (int, float), str: str}[element]):
        return False  # True is an int to Python, never to a setting
    if element is float and not math.isfinite(value):
        return False
    choices = choices_of(field)
    if choices is not None:
        return value in choices
    meta = field.metadata
    if meta.get("pattern"):
        return re.fullmatch(meta["pattern"], value) is not None
    return all(meta.get(key) is None or test(value, meta[key]) for key, (_, test) in _BOUNDS.items())
