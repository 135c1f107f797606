"""The notebooks' "your turn" exercises: a check for each, and the feedback a learner sees (one module per
notebook; ``base`` holds what every check shares; the reference solutions are in :mod:`mpn_tutorial.solutions`).

An exercise cell holds a placeholder (``return None  # your code``); its check cell calls :func:`check` with the
learner's function and what the exercise works on. The feedback is "not tried" (with a hint) while the
placeholder is there, "correct" for a right answer, and otherwise says what is off, in plain text: it names code
as written (``keepdim=True``) and never uses Markdown marks. A check compares the learner's function with the
library on the notebook's inputs and on **fresh inputs it draws itself** (another size, other labels, runs of
other seeds), so an answer hard-coded from the notebook's data, or read from its variables, is not correct.
Each exercise's **common mistakes** (``Exercise.mistakes``) must each get "not correct" with the hint declared
there (the tests), and the teachers' answer key prints them with the check's feedback.
"""

from __future__ import annotations

from mpn_tutorial.errors import UsageError
from mpn_tutorial.exercises import attention, embeddings, message_passing, mining, recipe, retrieval, seeds
from mpn_tutorial.exercises.base import RETURNED, Exercise, Feedback, Mistake, NotTried

EXERCISES: dict[str, Exercise] = {**retrieval.EXERCISES, **mining.EXERCISES, **message_passing.EXERCISES,
                                  **attention.EXERCISES, **embeddings.EXERCISES, **seeds.EXERCISES, **recipe.EXERCISES}


def check(exercise: str, answer, *inputs) -> Feedback:
    """Check a learner's function for ``exercise`` on the notebook's ``inputs`` and on the check's own."""
    if exercise not in EXERCISES:
        raise UsageError(f"unknown exercise {exercise!r}; the exercises are {', '.join(EXERCISES)}")
    entry = EXERCISES[exercise]
    RETURNED.clear()
    try:
        message = entry.check(answer, *inputs)
    except NotTried:
        return Feedback(exercise, "not tried", f"Replace the placeholder with your code. Hint: {entry.hint}.")
    except AssertionError as error:
        return Feedback(exercise, "wrong", str(error))
    except Exception as error:  # the learner's code failed: say how, never crash the check cell
        return Feedback(exercise, "wrong", f"your code raised {type(error).__name__}: {error}")
    return Feedback(exercise, "correct", message)


def common_mistakes(exercise: str) -> list[tuple[str, Feedback]]:
    """Each common mistake of ``exercise`` with the feedback the check gives it on the example inputs."""
    entry = EXERCISES[exercise]
    inputs = entry.example()
    return [(mistake.what, check(exercise, mistake.answer(inputs), *inputs)) for mistake in entry.mistakes]


__all__ = ["EXERCISES", "Exercise", "Feedback", "Mistake", "check", "common_mistakes"]
