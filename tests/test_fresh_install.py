"""A notebook runs where a learner opens it: the package installed with pip (not editable) into a new
environment, one notebook copied alone into an empty folder, no environment variable of ours set."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh_environment(tmp_path_factory) -> Path:
    """A new virtual environment with mpn_tutorial installed from a wheel (a regular install, not the
    editable one of the development environment). Its third-party packages (torch, JupyterLab...)
    are the development environment's, reached through a .pth file, so that the test does not
    download gigabytes; the editable install of the project is not among them."""
    root = tmp_path_factory.mktemp("fresh")
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(wheels), str(REPOSITORY)], check=True, capture_output=True, text=True, timeout=600)
    environment = root / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True, timeout=300)
    python = environment / "bin" / "python"
    packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    (packages / "development-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("mpn_tutorial-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(packages),
                    str(wheel)], check=True, capture_output=True, text=True, timeout=600)
    return python


def _run(python: Path, arguments: list[str], folder: Path, home: Path, timeout: int = 900):
    environment = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(home), "MPLBACKEND": "Agg"}
    return subprocess.run([str(python), *arguments], cwd=folder, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def test_the_installed_package_is_the_wheel_not_the_project(fresh_environment, tmp_path):
    completed = _run(fresh_environment, ["-c", "import mpn_tutorial; print(mpn_tutorial.__file__)"], tmp_path,
                     tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert str(REPOSITORY) not in completed.stdout and "site-packages" in completed.stdout


def test_a_notebook_copied_alone_into_an_empty_folder_runs_top_to_bottom(fresh_environment, tmp_path):
    folder, home = tmp_path / "course", tmp_path / "home"
    folder.mkdir()
    home.mkdir()
    notebook = shutil.copy(REPOSITORY / "notebooks" / "01_data_and_retrieval.ipynb", folder)
    completed = _run(fresh_environment, ["-m", "nbconvert", "--to", "notebook", "--execute",
                                         "--output", "executed.ipynb", str(notebook)], folder, home)
    assert completed.returncode == 0, completed.stderr[-3000:]
    executed = (folder / "executed.ipynb").read_text()
    assert "per-user data folder" in executed  # start() says where the data went
    assert list((home / ".cache" / "mpn_tutorial" / "glyphs").glob("*.npz"))  # generated there on first use


SHIPPED = sorted(path.name.removesuffix("_study.json") for path in (REPOSITORY / "mpn_tutorial" / "results").glob(
    "*_study.json"))


@pytest.mark.parametrize("study", SHIPPED)
def test_the_studies_results_ship_with_the_package(fresh_environment, tmp_path, study):
    committed = REPOSITORY / "mpn_tutorial" / "results" / f"{study}_study.json"
    code = (f"import json; from mpn_tutorial.notebook import load_study; "
            f"print(load_study({study!r}) == json.load(open({str(committed)!r})))")
    completed = _run(fresh_environment, ["-c", code], tmp_path, tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "True"


def test_site_packages_of_the_development_environment_hold_no_copy_of_the_project():
    # the .pth above must not bring the project back in: the development install is editable (a finder)
    for folder in site.getsitepackages():
        assert not (Path(folder) / "mpn_tutorial" / "__init__.py").exists()
