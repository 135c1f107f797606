"""The install, CI and command-line promises of the README."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPOSITORY = Path(__file__).resolve().parents[1]


def _names_and_specifiers(requirements):
    parsed = {}
    for requirement in requirements:
        match = re.match(r"^([A-Za-z0-9_.\-]+)(.*)$", requirement.strip())
        parsed[match.group(1).lower().replace("_", "-")] = match.group(2).replace(" ", "")
    return parsed


def test_environment_yml_installs_the_same_packages_as_pyproject():
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    expected = _names_and_specifiers(project["dependencies"] + project["optional-dependencies"]["dev"])
    environment = yaml.safe_load((REPOSITORY / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    listed = [line for line in pip_section if not line.startswith("-e")]
    assert _names_and_specifiers(listed) == expected
    assert '-e ".[dev]"' in pip_section or "-e .[dev]" in pip_section
    assert "python=3.11" in environment["dependencies"]


def test_torch_range_admits_the_locally_available_release():
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    torch_spec = next(d for d in project["dependencies"] if d.startswith("torch>"))
    lower, upper = re.findall(r"[<>]=?([\d.]+)", torch_spec)
    version = (2, 14, 1)
    assert tuple(map(int, lower.split("."))) <= version < tuple(map(int, upper.split(".")))


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


def test_importing_the_package_pins_torch_threads():
    code = "import mpn_tutorial, torch; print(torch.get_num_threads())"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={"MPN_TUTORIAL_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert completed.stdout.strip() == "1"
