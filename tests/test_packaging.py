"""The distribution installs as one import package, ``cloudcote``, and nothing else (the
tests stay in the source tree)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _on_disk() -> set[str]:
    """Every package on disk, named as it installs, through the package-dir mapping."""
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    found = set()
    for package, folder in mapping.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            found.add(".".join([package, *rel.parts]))
    return found


def test_every_package_on_disk_is_listed() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    assert _on_disk() == listed


def test_all_packages_are_under_cloudcote() -> None:
    for name in _pyproject()["tool"]["setuptools"]["packages"]:
        assert name == "cloudcote" or name.startswith("cloudcote.")


def _clean_copy(dest: Path) -> Path:
    """The source tree without build output, venvs or caches: a stale ``build/lib`` would
    put files of a removed package into the wheel."""
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                    "__pycache__", ".services", "cloudcote-data", ".*_cache",
                                    ".hypothesis")
    return Path(shutil.copytree(REPO, dest / "src", ignore=ignore, symlinks=True))


def _assert_only_cloudcote(names: list[str]) -> None:
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"cloudcote", next(t for t in top if t.endswith(".dist-info"))}
    packages = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("__init__.py")}
    assert packages == set(_pyproject()["tool"]["setuptools"]["packages"])
    assert "cloudcote/py.typed" in names
    # The tests stay in the source tree: no test module, conftest or test data installs.
    assert not [n for n in names if "/tests/" in n or Path(n).name.startswith("test_")
                or Path(n).name == "conftest.py"]


@pytest.mark.slow
def test_wheel_holds_only_cloudcote(tmp_path: Path) -> None:
    src = _clean_copy(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path / "wheel"), str(src)],
        check=True, capture_output=True,
    )
    wheel = next((tmp_path / "wheel").glob("cloudcote-*.whl"))
    _assert_only_cloudcote(zipfile.ZipFile(wheel).namelist())


@pytest.mark.slow
def test_pip_install_holds_only_cloudcote(tmp_path: Path) -> None:
    """``pip install .`` (not editable) into a fresh environment installs the same files."""
    src = _clean_copy(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "-q", str(src)],
        check=True, capture_output=True,
    )
    site = next(venv.glob("lib/python3*/site-packages"))
    names = [p.relative_to(site).as_posix() for p in site.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    _assert_only_cloudcote(names)


def test_no_generic_top_level_modules_importable() -> None:
    code = ("import importlib.util,sys;"
            "sys.path=[p for p in sys.path if p not in ('', '.')];"
            "print([m for m in ('core','libfs','backends','protocols') "
            "if importlib.util.find_spec(m)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd="/", check=True)
    assert out.stdout.strip() == "[]"
