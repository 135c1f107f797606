"""One source of truth: settings declared once, no hidden state, caches keyed by what decides them."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional  # a setting's annotation may name it (test of the typing machinery below)

import pytest
import torch

from mpn_tutorial.config import TrainConfig, create_model, names_run
from mpn_tutorial.presets import get_preset

REPOSITORY = Path(__file__).resolve().parents[1]


def test_importing_any_module_of_the_package_changes_no_thread_count_and_no_environment_variable():
    code = (
        "import importlib, os, pkgutil, torch\n"
        "import torch._dynamo  # torch's own import sets TORCHINDUCTOR_CACHE_DIR: not the package's doing\n"
        "torch.set_num_threads(3)\n"
        "before = dict(os.environ)\n"
        "import mpn_tutorial\n"
        "modules = [found.name for found in pkgutil.walk_packages(mpn_tutorial.__path__, 'mpn_tutorial.')]\n"
        "for name in modules:\n"
        "    importlib.import_module(name)\n"
        "assert {'mpn_tutorial.exercises', 'mpn_tutorial.tools.cli', 'mpn_tutorial.viz.explorers'} <= set(modules)\n"
        "assert torch.get_num_threads() == 3, torch.get_num_threads()\n"
        "changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}\n"
        "assert not changed, changed\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_no_setting_is_declared_in_two_settings_dataclasses():
    # a redeclaration (TrainConfig saying `image_size: int = 64` again) would leave one field with two defaults
    for field in dataclasses.fields(TrainConfig):
        declaring = [cls.__name__ for cls in TrainConfig.__mro__ if field.name in vars(cls).get("__annotations__", {})]
        assert len(declaring) == 1, f"{field.name} is declared in {declaring}"
    assert {cls.__name__ for cls in TrainConfig.__mro__} >= {"DataConfig", "ModelConfig"}


def _outside(field):
    """A value outside a setting's declared range (see test_command_line for the flags' version)."""
    from mpn_tutorial.tools.settings import choices_of, kind_of

    element, many, _ = kind_of(field)
    meta = field.metadata
    if element is bool:
        value = "yes"
    elif choices_of(field) is not None or meta["pattern"]:
        value = "nope"
    elif meta["path"] is not None:
        value = 3
    elif meta["low"] is not None:
        value = element(meta["low"] - 1)
    else:
        value = element(meta["above"])
    return (value,) if many else value


@pytest.mark.parametrize("field", dataclasses.fields(TrainConfig), ids=lambda field: field.name)
def test_validate_refuses_a_value_outside_each_settings_declared_range_and_names_it(field):
    config = get_preset("glyphs")
    config.validate()
    with pytest.raises(ValueError, match=field.name):
        config.replace(**{field.name: _outside(field)}).validate()


def test_every_setting_declares_its_help_and_its_range():
    from mpn_tutorial.tools.settings import has_range

    for field in dataclasses.fields(TrainConfig):
        assert field.metadata.get("help") and has_range(field), field.name


def _another_value(field, value):
    """A valid value of a setting other than ``value``."""
    from mpn_tutorial.tools.settings import choices_of, kind_of, value_error

    element, many, _ = kind_of(field)
    meta = field.metadata
    if element is bool:
        return not value
    if choices_of(field) is not None:
        return next(choice for choice in choices_of(field) if choice != value)
    if meta["pattern"]:
        return "cpu" if value != "cpu" else "auto"
    if meta["path"] is not None:
        return "elsewhere"
    if many:
        return tuple(value) + (int(meta["low"] or 1) + 3,)
    candidates = [value + 1, value / 2, (value or 0.5) * 0.5, None]
    return next(candidate for candidate in candidates if candidate != value and not value_error(field, candidate))


@pytest.mark.parametrize("field", dataclasses.fields(TrainConfig), ids=lambda field: field.name)
def test_a_machinery_setting_names_no_new_run_and_every_other_setting_does(field):
    from mpn_tutorial.tools.settings import is_machinery

    config = get_preset("glyphs")
    changed = config.replace(**{field.name: _another_value(field, getattr(config, field.name))})
    assert set(config.differences(changed)) == (set() if is_machinery(field) else {field.name})
    assert names_run(field.name) == (not is_machinery(field) and not field.metadata.get("path"))


def test_a_setting_typed_path_list_or_optional_is_read_with_the_typing_machinery():
    from mpn_tutorial.tools.settings import check_setting, describe_range, kind_of, setting

    @dataclasses.dataclass
    class Options:
        folder: Path = setting(Path("data"), "a folder", path="folder")
        sizes: list[int] = setting(None, "sizes", low=1)
        limit: Optional[int] = setting(None, "a limit", low=0)  # noqa: UP007, UP045 - the old spelling must work too
        steps: int | None = setting(3, "steps", low=1)

    kinds = {field.name: kind_of(field) for field in dataclasses.fields(Options)}
    assert kinds == {"folder": (Path, False, False), "sizes": (int, True, False), "limit": (int, False, True),
                     "steps": (int, False, True)}
    fields = {field.name: field for field in dataclasses.fields(Options)}
    assert describe_range(fields["sizes"]) == "a list of numbers, each whole number at least 1"
    check_setting(fields["limit"], None)
    with pytest.raises(ValueError, match="sizes"):
        check_setting(fields["sizes"], [2, 0])


def test_building_a_model_leaves_the_global_random_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    create_model(get_preset("glyphs", embedding_dim=16, mpn_ff_dim=8), 10)
    assert torch.equal(torch.rand(3), expected)


def test_a_model_is_built_from_its_seed_alone():
    config = get_preset("glyphs", embedding_dim=16, mpn_ff_dim=8, seed=4)
    torch.manual_seed(0)
    first = create_model(config, 10).state_dict()
    torch.manual_seed(1)
    second = create_model(config, 10).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_editing_the_training_code_changes_the_run_store_key_and_editing_the_figures_does_not(tmp_path):
    copy = tmp_path / "mpn_tutorial"
    shutil.copytree(REPOSITORY / "mpn_tutorial", copy, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("from mpn_tutorial.tools.run_store import cache_key; from mpn_tutorial.presets import GLYPHS\n"
            "print(cache_key(GLYPHS))")

    def key() -> str:
        completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                                   env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=300)
        assert completed.returncode == 0, completed.stderr[-2000:]
        return completed.stdout.strip()

    original = key()
    for edited, retrains in (("models.py", True), ("data/sampler.py", True), ("tools/settings.py", True),
                             ("viz/figures.py", False), ("exercises/base.py", False)):
        path = copy / edited
        text = path.read_text()
        path.write_text(text + "\n# a learner's edit\n")
        assert (key() != original) == retrains, edited
        path.write_text(text)
    assert key() == original
