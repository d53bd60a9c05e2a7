"""What users install: the wheel holds every module of the source tree and nothing else, the sdist holds
what its tests need, the tests run against the installed package (in CI), and the console scripts start.

CI (.ci/run) builds the sdist and, from it, the wheel, installs the wheel into a clean venv and runs the
tests from the unpacked sdist with CLOTHPROBE_WHEEL, CLOTHPROBE_SDIST and CLOTHPROBE_SOURCE (the
repository) set. Elsewhere the wheel is built here from a copy of the source tree.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import clothprobe

ROOT = Path(__file__).resolve().parents[1]  # the repository, or in CI the unpacked sdist
SOURCE = Path(os.environ.get("CLOTHPROBE_SOURCE") or ROOT)
NOT_SHIPPED = ("tests", "bench", "docs")  # top-level folders of Python files that are not part of clothprobe
BUILD_FILES = ("pyproject.toml", "README.md", "MANIFEST.in")
in_ci = pytest.mark.skipif(not os.environ.get("CLOTHPROBE_WHEEL"), reason="CI only (.ci/run installs the wheel)")
with_sdist = pytest.mark.skipif(not os.environ.get("CLOTHPROBE_SDIST"), reason="CI only (.ci/run builds the sdist)")


def source_files(tree: Path) -> list[str]:
    """Every file of ``tree`` as a posix path: git's list (tracked and untracked, not ignored) where there
    is one, else every file outside hidden folders."""
    if (tree / ".git").exists():
        listed = subprocess.run(["git", "-C", str(tree), "ls-files", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, text=True, check=True).stdout.splitlines()
        return [p for p in listed if (tree / p).is_file()]
    out = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        out += [(Path(dirpath) / f).relative_to(tree).as_posix() for f in filenames]
    return out


def package_modules(tree: Path) -> set[str]:
    """``clothprobe/featurize/images.py`` for every Python file of ``tree`` that belongs to the package."""
    return {f"clothprobe/{p}" for p in source_files(tree)
            if p.endswith(".py") and p.split("/")[0] not in NOT_SHIPPED}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("CLOTHPROBE_WHEEL"):
        return Path(os.environ["CLOTHPROBE_WHEEL"])
    copy = tmp_path_factory.mktemp("source")  # a clean copy: no stale build/ folder can leak into the wheel
    for rel in [m.removeprefix("clothprobe/") for m in package_modules(SOURCE)] + list(BUILD_FILES):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SOURCE / rel, copy / rel)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(copy)],
                   check=True, timeout=600)
    return next(out.glob("clothprobe-*.whl"))


@pytest.mark.slow
def test_wheel_holds_every_module_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    expected = package_modules(SOURCE)
    missing = sorted(expected - shipped)
    assert not missing, f"not in the wheel: {missing}; add each folder to `packages` in pyproject.toml"
    assert shipped == expected, f"in the wheel but not package modules: {sorted(shipped - expected)}"
    entry_points = next(zipfile.Path(wheel, n) for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "cli = clothprobe.cli:main" in entry_points.read_text()
    assert "clothprobe = clothprobe.cli:main" in entry_points.read_text()


@with_sdist
def test_sdist_holds_what_its_tests_need_and_nothing_made_by_the_tool() -> None:
    with tarfile.open(os.environ["CLOTHPROBE_SDIST"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    tracked = source_files(SOURCE)
    needed = {p for p in tracked if p.split("/")[0] in NOT_SHIPPED} | set(BUILD_FILES) | {".ci/run"}
    needed |= {"mkdocs.yml", "CONTRIBUTING.md"}  # CI builds the site and tests the docs from the sdist
    needed |= {m.removeprefix("clothprobe/") for m in package_modules(SOURCE)}
    assert not needed - names, f"missing from the sdist: {sorted(needed - names)}"
    made = [n for n in names if n.split("/")[0] in (".venv", "features", "models", "reports", "build", "dist")]
    assert not made, f"in the sdist but made by the tool or a build: {made}"


@in_ci
def test_tests_run_against_the_installed_wheel() -> None:
    """Not the source tree nor an editable install: the package the wheel put in site-packages."""
    installed = Path(clothprobe.__file__).resolve().parent
    assert installed == Path(sysconfig.get_paths()["purelib"]).resolve() / "clothprobe"
    assert not installed.is_relative_to(ROOT) and not installed.is_relative_to(SOURCE)
    direct_url = importlib.metadata.distribution("clothprobe").read_text("direct_url.json")  # absent for a wheel
    assert not (direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"))


@pytest.mark.parametrize("script", ["cli", "clothprobe"])
def test_console_script_runs_as_installed(script: str) -> None:
    exe = Path(sysconfig.get_path("scripts")) / (script + (".exe" if os.name == "nt" else ""))
    assert exe.is_file(), f"{exe} is not installed"
    res = subprocess.run([str(exe), "--help"], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout and all(c in res.stdout for c in ("featurize", "fit", "report", "predict", "run"))
