"""What every check shares: the feedback, the call of the learner's function, the comparison on fresh inputs,
and how an exercise and its common mistakes are declared (the package's docstring says how checks work)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

WIDTH = 96  # feedback lines are wrapped at word boundaries, never mid-word


@dataclass
class Feedback:
    """The outcome of a check: ``status`` is "not tried", "correct" or "wrong"."""

    exercise: str
    status: str
    message: str

    def __repr__(self) -> str:
        mark = {"not tried": "…", "correct": "✔", "wrong": "✘"}[self.status]
        return textwrap.fill(f"{mark} {self.exercise}: {self.status}. {self.message}", WIDTH, subsequent_indent="  ",
                             break_long_words=False, break_on_hyphens=False)


class NotTried(Exception):
    """The answer is still the placeholder."""


RETURNED: list = []  # what the learner's function returned in the current check, call by call


def evaluated(answer, *arguments):
    """What the learner's function returns for ``arguments`` (recorded in ``RETURNED``)."""
    if answer is None:
        raise NotTried
    if not callable(answer):
        raise AssertionError("write a function, not a value: the check calls it on inputs of its own too, so a "
                             "result copied from the notebook cannot be right")
    try:
        value = answer(*arguments)
    except NotImplementedError:
        raise NotTried from None
    if value is None:
        raise NotTried
    RETURNED.append(value)
    return value


def same(first, second) -> bool:
    """Whether two answers are the same value (numbers, arrays, tensors, dicts or tuples of them)."""
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(same(first[key], second[key]) for key in first)
    if isinstance(first, (tuple, list)) and isinstance(second, (tuple, list)):
        return len(first) == len(second) and all(same(a, b) for a, b in zip(first, second))
    try:
        a, b = np.asarray(plain(first), dtype=np.float64), np.asarray(plain(second), dtype=np.float64)
    except (TypeError, ValueError):
        return first is second
    return a.shape == b.shape and np.array_equal(a, b)


def plain(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def on_fresh_inputs(compare: Callable[[], None], what: str) -> None:
    """Run a comparison on the check's own inputs; a failure there (after the notebook's passed) means the
    answer fits the notebook's data only."""
    try:
        compare()
    except AssertionError as error:
        if len(RETURNED) >= 2 and same(RETURNED[0], RETURNED[-1]):
            raise AssertionError(f"your function returns the notebook's answer for {what} that the check drew too: "
                                 "compute the answer from the function's arguments, not from the notebook's "
                                 "variables or numbers") from None
        raise AssertionError(f"right for the notebook's inputs, but not for {what} that the check drew: "
                             f"{error}") from None


def as_array(value, name: str) -> np.ndarray:
    try:
        return np.asarray(plain(value), dtype=np.float64)
    except (TypeError, ValueError):
        raise AssertionError(f"{name} should be numbers (a tensor or an array), got {type(value).__name__}") from None


def same_shape(yours: np.ndarray, expected: np.ndarray, name: str) -> None:
    if yours.shape != expected.shape:
        raise AssertionError(f"{name} should have shape {expected.shape}, yours has {yours.shape}")


def generator(seed: int = 2024) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class Mistake:
    """A common mistake: what it is, a function of an exercise's inputs that builds the mistaken answer,
    and the words the check's feedback gives for it."""

    what: str
    answer: Callable
    says: str


def constant(value):
    """An answer that ignores its arguments and returns ``value`` (a copy of the notebook's result)."""
    return lambda *arguments: value


@dataclass(frozen=True)
class Exercise:
    """An exercise: its notebook, the hint "not tried" gives, its check (the learner's function and the notebook's
    inputs -> the "correct" message, or AssertionError saying what is off), example inputs and common mistakes."""

    notebook: str
    hint: str
    check: Callable[..., str]
    example: Callable[[], tuple]  # inputs like the notebook's, for the tests and the answer key
    mistakes: tuple[Mistake, ...]
    optional: bool = False  # an extra beside the notebook's main exercise


def solved(name: str, arguments: Callable[[tuple], tuple] = lambda inputs: inputs):
    """The reference solution's answer on an exercise's example inputs (what a copy of the notebook's result
    would be); ``arguments`` picks the solution's arguments from the check's inputs where they differ."""
    def build(inputs):
        from mpn_tutorial import solutions

        return getattr(solutions, name)(*arguments(inputs))
    return build


def copied(what: str, name: str) -> Mistake:
    """The shortcut every check catches: a function that returns the notebook's answer (the reference
    solution ``name`` on the example inputs) whatever its arguments."""
    return Mistake(what, lambda inputs: constant(solved(name)(inputs)), "returns the notebook's answer")
