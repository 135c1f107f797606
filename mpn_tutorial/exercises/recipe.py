"""07: the optimizer steps of the full recipe (an extra)."""

from __future__ import annotations

from mpn_tutorial.exercises.base import Exercise, Mistake, constant, evaluated, on_fresh_inputs

# CUB-200-2011's training classes hold 5,864 images; with 10 of the 100 classes held out for validation,
# about 5,280 train the model (the figure notebook 07 gives). The check uses these, never the learner's variables.
CUB_TRAINING_IMAGES, CUB_IMAGES_BEFORE_VALIDATION = 5280, 5864


def _compare_steps(answer, epochs, training_images, batch_size) -> int:
    yours = evaluated(answer, epochs, training_images, batch_size)
    expected = epochs * (training_images // batch_size)
    if training_images == CUB_TRAINING_IMAGES and yours in (epochs * (CUB_IMAGES_BEFORE_VALIDATION // batch_size),
                                                            epochs * CUB_IMAGES_BEFORE_VALIDATION // batch_size):
        raise AssertionError(f"that counts all {CUB_IMAGES_BEFORE_VALIDATION:,} images of the training classes; the "
                             f"validation classes are held out, so about {CUB_TRAINING_IMAGES:,} remain")
    if yours == epochs * training_images // batch_size and yours != expected:
        raise AssertionError("an epoch has a whole number of batches: round down per epoch, then multiply")
    if yours != expected:
        raise AssertionError(f"{yours} instead of {expected}: epochs × (training images // images per batch)")
    return expected


def _training_steps(answer, epochs, batch_size) -> str:
    expected = _compare_steps(answer, epochs, CUB_TRAINING_IMAGES, batch_size)
    on_fresh_inputs(lambda: _compare_steps(answer, 3, 1000, 48), "3 epochs of 1,000 images in batches of 48")
    return f"{expected:,} optimizer steps of {batch_size} images"


EXERCISES = {
    "training_steps": Exercise(
        "07", "an epoch is len(train) // (P·K) batches, of the 5,280 images that train the model", _training_steps,
        lambda: (70, 54), (
            Mistake("rounding once for the whole run", lambda inputs: lambda e, n, b: e * n // b,
                    "round down per epoch"),
            Mistake("counting the validation classes' images too", lambda inputs: lambda e, n, b: e * (5864 // b),
                    "5,864"),
            Mistake("the notebook's number, returned for any run", lambda inputs: constant(6790),
                    "returns the notebook's answer"),
        ), optional=True),
}
