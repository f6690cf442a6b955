"""The distribution installs as one import package, ``cloudcote``, and nothing else."""

from __future__ import annotations

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


@pytest.mark.slow
def test_wheel_holds_only_cloudcote(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("cloudcote-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"cloudcote", next(t for t in top if t.endswith(".dist-info"))}
    packages = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("__init__.py")}
    assert packages == set(_pyproject()["tool"]["setuptools"]["packages"])
    assert "cloudcote/py.typed" in names


def test_no_generic_top_level_modules_importable() -> None:
    code = ("import importlib.util,sys;"
            "sys.path=[p for p in sys.path if p not in ('', '.')];"
            "print([m for m in ('core','libfs','backends','protocols') "
            "if importlib.util.find_spec(m)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd="/", check=True)
    assert out.stdout.strip() == "[]"
