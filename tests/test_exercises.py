"""Every exercise's check accepts the reference solution, rejects each of its common mistakes with that
mistake's hint (the shortcuts that copy the notebook's result included), and says "not tried" for the
placeholder."""

import re

import pytest

from mpn_tutorial import solutions
from mpn_tutorial.exercises import EXERCISES, check, common_mistakes

MISTAKES = [(name, index) for name, exercise in sorted(EXERCISES.items()) for index in range(len(exercise.mistakes))]


def test_every_exercise_has_a_reference_solution_and_shortcut_mistakes():
    for name, exercise in EXERCISES.items():
        assert callable(getattr(solutions, name)), name
        assert any("notebook" in mistake.what for mistake in exercise.mistakes), f"{name}: no shortcut is tried"


def _solution(name):
    if name == "training_steps":  # the notebook passes epochs and the batch size; the images are the check's
        return solutions.training_steps
    return getattr(solutions, name)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_reference_solution_is_accepted(name):
    feedback = check(name, _solution(name), *EXERCISES[name].example())
    assert feedback.status == "correct", feedback


@pytest.mark.parametrize("name, index", MISTAKES, ids=[f"{n}-{i}" for n, i in MISTAKES])
def test_each_common_mistake_is_not_correct_and_gets_its_own_hint(name, index):
    mistake = EXERCISES[name].mistakes[index]
    inputs = EXERCISES[name].example()
    feedback = check(name, mistake.answer(inputs), *inputs)
    assert feedback.status == "wrong" and mistake.says in feedback.message, (mistake.what, feedback)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_placeholder_says_not_tried_with_a_hint(name):
    inputs = EXERCISES[name].example()
    feedback = check(name, None, *inputs)
    assert feedback.status == "not tried" and "Hint" in feedback.message
    assert check(name, lambda *args: None, *inputs).status == "not tried"


def test_a_crashing_answer_is_reported_not_raised():
    feedback = check("batch_hard", lambda e, y: e[100], *EXERCISES["batch_hard"].example())
    assert feedback.status == "wrong" and "IndexError" in feedback.message


def test_the_answer_keys_list_of_mistakes_is_the_checks_own_feedback():
    listed = common_mistakes("welch_t")
    assert [what for what, _ in listed] == [mistake.what for mistake in EXERCISES["welch_t"].mistakes]
    assert all(feedback.status == "wrong" for _, feedback in listed)


def test_feedback_lines_wrap_at_word_boundaries():
    feedback = check("welch_t", lambda a, b: 1.0, *EXERCISES["welch_t"].example())
    lines = repr(feedback).splitlines()
    assert len(lines) > 1 and all(len(line) <= 96 for line in lines)
    words = repr(feedback).split()
    assert " ".join(words) == " ".join(f"✘ welch_t: wrong. {feedback.message}".split())  # no word was cut


# Markdown marks a learner would see as such in plain-text feedback: code spans, emphasis, links
MARKDOWN_MARKS = re.compile(r"`|\*|(?<!\w)_\w|\w_(?!\w)|\]\(")


def _every_feedback(name):
    inputs = EXERCISES[name].example()
    yield check(name, _solution(name), *inputs)
    yield check(name, None, *inputs)
    for _, feedback in common_mistakes(name):
        yield feedback


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_feedback_is_plain_text_without_markdown_marks(name):
    for feedback in _every_feedback(name):
        assert not MARKDOWN_MARKS.search(feedback.message), feedback
