"""How a setting of a run is declared: once, on its dataclass field, and everything else derived from it.

:func:`setting` is a ``dataclasses.field`` whose metadata says what the setting means (``help``), the
values it can take (a range, or choices) and its command-line flag. From that one declaration:

- :func:`check_setting` refuses a value outside the range, naming the field, the value and what would
  work (``TrainConfig.validate`` runs it on every field; the command line runs it on every flag);
- the command line declares one flag per field (``__main__.add_setting_flags``), with the field's
  help, range and type, and maps each flag back to its field by name;
- ``machinery=True`` marks a setting that says only where or how fast a run computes (the device,
  data-loading workers...): what names a run, what ``--resume`` compares and what keys the run
  store derive from it; ``path=True`` a file or folder (it never names a run folder).

The dataclasses that use it (``data.build.DataConfig``, ``models.ModelConfig``, ``config.TrainConfig``)
need nothing else from this module; it imports nothing of the package.
"""

from __future__ import annotations

import dataclasses
import math
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
    """A settings field: ``default``, what it means (``help``), its flag (``--flag``; default: the field's
    name with dashes), its range (``low``/``high`` inclusive, ``above``/``below`` exclusive, or ``choices``,
    which may be a function that returns them, or a regular expression ``pattern`` the text must match), a
    ``hint`` shown when a value is refused, and whether it is
    machinery or a ``path`` ("file" or "folder"); ``aliases``: other flags for it. A tuple field's range applies
    to each element."""
    metadata = {"help": help, "flag": flag, "low": low, "high": high, "above": above, "below": below,
                "choices": choices, "pattern": pattern, "hint": hint, "machinery": machinery, "path": path,
                "aliases": tuple(aliases),
                # where the field is declared: its annotation's names are resolved there (type_of)
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


def type_of(field: dataclasses.Field) -> Any:
    """The field's type as an object: a string annotation (``from __future__ import annotations``) is
    resolved by the typing machinery in the module that declares the field."""
    if not isinstance(field.type, str):
        return field.type
    holder = types.new_class("Annotation", exec_body=lambda namespace: namespace.update(
        __annotations__={field.name: field.type}, __module__=field.metadata.get("module") or __name__))
    return typing.get_type_hints(holder)[field.name]


def kind_of(field: dataclasses.Field) -> tuple[type, bool, bool]:
    """(element type, holds several values, may be None) of a field typed ``T``, ``T | None`` (or
    ``Optional[T]``), ``tuple[T, ...]`` or ``list[T]``, T one of :data:`ELEMENT_TYPES`."""
    annotation = type_of(field)
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
        bounds = [f"at least {meta['low']:g}" if meta.get("low") is not None else "",
                  f"above {meta['above']:g}" if meta.get("above") is not None else "",
                  f"at most {meta['high']:g}" if meta.get("high") is not None else "",
                  f"below {meta['below']:g}" if meta.get("below") is not None else ""]
        bounds = [bound for bound in bounds if bound]
        if bounds:
            text += " " + " and ".join(bounds)
    if many:
        text = f"a list of {'numbers' if text.startswith('a ') else 'values'}, each {text.removeprefix('a ')}"
    return text + (" (or none)" if optional else "")


def has_range(field: dataclasses.Field) -> bool:
    """Whether the field's declaration says which values it can take (every setting must)."""
    element = kind_of(field)[0]
    meta = field.metadata
    return (element is bool or choices_of(field) is not None or meta.get("path") is not None
            or any(meta.get(key) is not None for key in ("low", "high", "above", "below", "pattern")))


def value_error(field: dataclasses.Field, value, element_only: bool = False) -> str | None:
    """What is wrong with ``value`` for ``field`` (None when it is in range); ``element_only``: ``value``
    is one element of a tuple field."""
    element, many, optional = kind_of(field)
    if element_only:
        many = False
    if value is None:
        return None if optional else f"{field.name} must be {describe_range(field)}, got None"
    values = value if many else (value,)
    if many and not isinstance(value, (tuple, list)):
        return f"{field.name} must be {describe_range(field)}, got {value!r}"
    for item in values:
        if not _fits(field, element, item):
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
    if element is int and (not isinstance(value, int) or isinstance(value, bool)):
        return False
    if element is float and (not isinstance(value, (int, float)) or isinstance(value, bool)
                             or not math.isfinite(value)):
        return False
    if element is str and not isinstance(value, str):
        return False
    if element is Path:
        return isinstance(value, (str, Path))
    choices = choices_of(field)
    if choices is not None:
        return value in choices
    meta = field.metadata
    if meta.get("pattern"):
        return re.fullmatch(meta["pattern"], value) is not None
    return ((meta.get("low") is None or value >= meta["low"]) and (meta.get("high") is None or value <= meta["high"])
            and (meta.get("above") is None or value > meta["above"])
            and (meta.get("below") is None or value < meta["below"]))


__all__ = ["ELEMENT_TYPES", "check_setting", "choices_of", "describe_range", "flag_of", "has_range", "is_machinery",
           "kind_of", "setting", "type_of", "value_error"]
