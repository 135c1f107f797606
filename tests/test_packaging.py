"""The install, CI and command-line promises of the README."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPOSITORY = Path(__file__).resolve().parents[1]


def _names_and_specifiers(requirements):
    """{normalised name: SpecifierSet}, so that clause order does not matter."""
    parsed = {}
    for text in requirements:
        requirement = Requirement(text)
        parsed[requirement.name.lower().replace("_", "-")] = requirement.specifier
    return parsed


def _declared_requirements() -> list[str]:
    """Runtime and dev requirements as pyproject.toml declares them (read from the installed metadata)."""
    declared = []
    for requirement in importlib.metadata.requires("mpn_tutorial"):
        specifier, _, marker = requirement.partition(";")
        if not marker or 'extra == "dev"' in marker:
            declared.append(specifier.strip())
    return declared


def test_environment_yml_installs_the_same_packages_as_pyproject():
    expected = _names_and_specifiers(_declared_requirements())
    environment = yaml.safe_load((REPOSITORY / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    listed = [line for line in pip_section if not line.startswith("-e")]
    assert _names_and_specifiers(listed) == expected
    assert '-e ".[dev]"' in pip_section or "-e .[dev]" in pip_section
    assert "python=3.11" in environment["dependencies"]


def test_the_declared_torch_ranges_admit_the_installed_releases():
    from packaging.version import Version

    specifiers = _names_and_specifiers(_declared_requirements())
    for name in ("torch", "torchvision"):
        installed = Version(importlib.metadata.version(name)).base_version  # 2.14.1+cu130 -> 2.14.1
        assert installed in specifiers[name], f"{name} {installed} is installed but pyproject asks {specifiers[name]}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPOSITORY / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme
    commands = [line for line in (REPOSITORY / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert commands == ["make test"]


def test_command_line_help_lists_the_commands():
    completed = subprocess.run([sys.executable, "-m", "mpn_tutorial", "--help"], capture_output=True, text=True,
                               check=True)
    for command in ("train", "evaluate", "make-data", "fetch"):
        assert command in completed.stdout


def test_an_entry_point_pins_the_threads_the_environment_asks_for():
    code = ("import torch; from mpn_tutorial.tools.runtime import pin_threads; pin_threads(); "
            "print(torch.get_num_threads())")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={"MPN_TUTORIAL_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert completed.stdout.strip() == "1"
