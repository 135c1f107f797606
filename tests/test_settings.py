"""One source of truth: settings declared once, no hidden state, caches keyed by what decides them."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mpn_tutorial.config import TrainConfig, create_model, names_run
from mpn_tutorial.presets import get_preset

REPOSITORY = Path(__file__).resolve().parents[1]


def test_importing_the_package_changes_no_thread_count_and_no_environment_variable():
    code = (
        "import os, torch\n"
        "torch.set_num_threads(3)\n"
        "before = dict(os.environ)\n"
        "import mpn_tutorial, mpn_tutorial.metrics, mpn_tutorial.models, mpn_tutorial.training, mpn_tutorial.notebook\n"
        "import mpn_tutorial.tools.run_store, mpn_tutorial.viz, mpn_tutorial.tools.stats, mpn_tutorial.tools.cli\n"
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


def test_a_machinery_setting_names_no_new_run_and_a_computed_one_does():
    config = get_preset("glyphs")
    assert config.differences(config.replace(device="cpu", num_workers=3, eval_batch_size=7, data_root="x")) == {}
    assert set(config.differences(config.replace(lr=0.5, mpn_zero_out=True))) == {"lr", "mpn_zero_out"}
    assert not names_run("device") and not names_run("weights_path") and names_run("mpn_heads")


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
                             ("viz/figures.py", False), ("exercises.py", False)):
        path = copy / edited
        text = path.read_text()
        path.write_text(text + "\n# a learner's edit\n")
        assert (key() != original) == retrains, edited
        path.write_text(text)
    assert key() == original
