"""06: the messages' effect measured seed by seed, through the library; and, as an extra, Welch's t."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from mpn_tutorial.exercises.base import Exercise, Mistake, copied, evaluated, on_fresh_inputs

# Messages on against off, seed by seed


class _Runs:
    """A stand-in for ``Tutorial.train`` with made-up results: it validates each config as training does,
    remembers what it was asked for, and answers at once (the check's own inputs)."""

    def __init__(self) -> None:
        self.asked: list = []

    def __call__(self, config):
        config.validate()
        self.asked.append(config)
        noise = np.random.default_rng([config.seed, config.mpn_attention == "none"]).random()
        on = config.mpn_attention != "none"
        metrics = {"recall@1": 0.6 + 0.02 * config.seed + 0.01 * on + 0.01 * noise, "map@r": 0.3 + 0.05 * noise}
        return SimpleNamespace(config=config, test_metrics=metrics)


def _expected(train, config, seeds, key: str = "recall@1", sign: int = 1, same_seed: bool = False) -> list[float]:
    """On minus off (times ``sign``) seed by seed, as the check computes it and as the declared mistakes do."""
    def value(variant, seed):
        return train(variant if same_seed else variant.replace(seed=seed)).test_metrics[key]
    return [sign * (value(config, seed) - value(config.without_messages(), seed)) for seed in seeds]


def _compare_effect(answer, train, config, seeds) -> list[float]:
    asked = len(getattr(train, "asked", []))
    yours = evaluated(answer, train, config, seeds)
    seen = {variant.seed for variant in getattr(train, "asked", [])[asked:]}
    expected = _expected(train, config, seeds)
    if np.ndim(yours) == 0:
        raise AssertionError("return one difference per seed (a list, in the order of seeds), not their mean: the "
                             "spread between seeds is what you read against the noise band")
    yours = [float(value) for value in yours]
    if len(yours) != len(seeds):
        raise AssertionError(f"one difference per seed: {len(seeds)} seeds, {len(yours)} differences")
    if seen and seen == {config.seed} and len(set(seeds)) > 1:
        raise AssertionError(f"every run trained with seed {config.seed}: give each run its seed, "
                             "config.replace(seed=seed)")
    if np.allclose(yours, _expected(train, config, seeds, sign=-1)) and not np.allclose(yours, expected):
        raise AssertionError("that is off minus on: the effect of the messages is on minus off")
    if np.allclose(yours, _expected(train, config, seeds, "map@r")) and not np.allclose(yours, expected):
        raise AssertionError("that is MAP@R; the exercise reads test R@1 (test_metrics['recall@1'])")
    if sorted(yours) == sorted(expected) and yours != expected:
        raise AssertionError("keep the differences in the order of seeds, each seed paired with itself")
    if not np.allclose(yours, expected, atol=1e-9):
        raise AssertionError("for each seed: train(config with that seed) and train(its messages-off control, "
                             "config.without_messages(), with that seed), and subtract their test R@1")
    return yours


def _messages_effect(answer, train, config, seeds) -> str:
    yours = _compare_effect(answer, train, config, seeds)
    on_fresh_inputs(lambda: _compare_effect(answer, _Runs(), config, (3, 1, 4)), "seeds 3, 1 and 4 of runs")
    shown = ", ".join(f"{100 * value:+.2f}" for value in yours)
    return f"on minus off, seed by seed: {shown} points of test R@1"


def _example_effect():
    from mpn_tutorial.presets import get_preset

    return _Runs(), get_preset("glyphs-attention"), (0, 1)


def _effect(mean: bool = False, order=lambda seeds: seeds, **mistake):
    """A mistaken messages_effect: ``mistake`` as :func:`_expected` takes it, the seeds in ``order``, or their mean."""
    def effect(train, config, seeds):
        differences = _expected(train, config, order(seeds), **mistake)
        return float(np.mean(differences)) if mean else differences
    return lambda inputs: effect


# An extra: Welch's t


def _compare_welch(answer, first, second) -> float:
    from scipy.stats import ttest_ind, ttest_rel

    yours = float(evaluated(answer, list(first), list(second)))
    expected = float(ttest_ind(first, second, equal_var=False).statistic)
    biased = (np.mean(first) - np.mean(second)) / np.sqrt(np.var(first) / len(first) + np.var(second) / len(second))
    if abs(yours - biased) < 1e-6 and abs(biased - expected) > 1e-6:
        raise AssertionError("use the sample variance (ddof=1), the unbiased estimate from a few seeds")
    if len(first) == len(second) and abs(yours - float(ttest_rel(first, second).statistic)) < 1e-6:
        raise AssertionError("that is the paired t (the differences seed by seed); Welch's t compares the two "
                             "groups as a whole: (mean_a - mean_b) / sqrt(var_a / n_a + var_b / n_b)")
    pooled = float(ttest_ind(first, second, equal_var=True).statistic)
    if abs(yours - pooled) < 1e-6 and abs(pooled - expected) > 1e-6:
        raise AssertionError("that is Student's pooled t (equal_var=True); it equals Welch's t only for groups of "
                             "equal size. Welch divides by sqrt(var_a / n_a + var_b / n_b)")
    if abs(yours - expected) > 1e-6:
        raise AssertionError(f"t = {yours:.3f} but Welch's t is {expected:.3f}: (mean difference) / "
                             "sqrt(var_a / n_a + var_b / n_b)")
    return yours


def _welch_t(answer, first, second) -> str:
    yours = _compare_welch(answer, first, second)
    # unequal sizes and spreads: Student's pooled t differs from Welch's here
    first, second = [0.61, 0.64, 0.58, 0.66], [0.50, 0.59, 0.41, 0.62, 0.47, 0.55, 0.38]
    on_fresh_inputs(lambda: _compare_welch(answer, first, second), "groups of 4 and 7 seeds")
    return f"t = {yours:+.2f}"


def _scipy_test(name: str, **options):
    def statistic(first, second):
        from scipy import stats

        return float(getattr(stats, name)(first, second, **options).statistic)
    return statistic


EXERCISES = {
    "messages_effect": Exercise(
        "06", "for each seed, train(config.replace(seed=seed)) and train(config.without_messages().replace(seed=seed)) "
        "and append the difference of their test_metrics['recall@1']", _messages_effect, _example_effect, (
            Mistake("off minus on", _effect(sign=-1), "off minus on"),
            Mistake("MAP@R instead of R@1", _effect(key="map@r"), "MAP@R"),
            Mistake("every run with the config's own seed", _effect(same_seed=True), "config.replace(seed=seed)"),
            Mistake("the mean of the differences only", _effect(mean=True), "not their mean"),
            Mistake("the seeds in sorted order", _effect(order=sorted), "in the order of seeds"),
            copied("the notebook's differences, returned for any runs", "messages_effect"),
        )),
    "welch_t": Exercise(
        "06", "difference of the means over sqrt(var_a / n_a + var_b / n_b), with ddof=1", _welch_t,
        lambda: ([0.40, 0.44, 0.38], [0.35, 0.37, 0.30]), (
            Mistake("the biased variance (ddof=0)", lambda inputs: lambda a, b: float(
                (np.mean(a) - np.mean(b)) / np.sqrt(np.var(a) / len(a) + np.var(b) / len(b))), "ddof=1"),
            Mistake("the paired t", lambda inputs: _scipy_test("ttest_rel"), "paired t"),
            Mistake("Student's pooled t (equal_var=True), equal to Welch's for groups of equal size",
                    lambda inputs: _scipy_test("ttest_ind", equal_var=True), "pooled t"),
            copied("the t the notebook printed, returned for any groups", "welch_t"),
        ), optional=True),
}
