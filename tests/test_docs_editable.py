"""Issue 30: the contributor's path to the documentation site, ``pip install -e ".[docs]" && mkdocs serve``,
works from a checkout of any folder name. The repository root is the package, so an editable install maps
the name ``clothprobe`` to the checkout through an import hook that mkdocstrings' griffe cannot see; the
mkdocs console script runs from the venv's bin/, next to the ``clothprobe`` console script, which griffe
took for the package. The mkdocs hook docs/package_path.py shows griffe the way. Done for real: a fresh
venv, ``pip install -e`` of a copy of this tree in a folder not named clothprobe, then ``mkdocs build
--strict`` run as the console script runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from test_packaging import ROOT, source_files

pytestmark = pytest.mark.slow


def docs_dependencies(target: Path) -> Path:
    """A folder of links to this environment's installed packages, but not clothprobe itself (so the venv
    imports the editable install, not this environment's clothprobe), nor the code formatters mkdocstrings
    would run as programs of their own (not installed in the venv: the docs extra does not bring them)."""
    target.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        left_out = name.startswith(("clothprobe", "__editable__", "_clothprobe", "ruff", "black"))
        if not (left_out or name.endswith(".pth")):
            (target / entry.name).symlink_to(entry)
    return target


def test_mkdocs_builds_from_an_editable_install_of_a_checkout_of_any_name(tmp_path: Path) -> None:
    checkout = tmp_path / "my-fork"  # not "clothprobe": griffe looks for a folder of the package's name
    for name in source_files(ROOT):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv's own sys.path, as a user has it
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, env=env).stdout.strip()
    (Path(purelib) / "docs_dependencies.pth").write_text(f"{docs_dependencies(tmp_path / 'deps')}\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(checkout)],
                             capture_output=True, text=True, timeout=600, env=env, check=False)
    if install.returncode and any(w in install.stderr for w in ("Could not find a version", "connection",
                                                                "NewConnectionError", "Temporary failure")):
        pytest.skip(f"pip cannot reach a package index for the build backend: {install.stderr.strip()[-300:]}")
    assert install.returncode == 0, install.stderr
    where = subprocess.run([str(python), "-P", "-c", "import clothprobe; print(clothprobe.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env,
                           check=False)
    assert Path(where.stdout.strip()).parent == checkout, where.stderr  # the editable install, nothing else
    assert (python.parent / "clothprobe").is_file()  # pip installed the console scripts next to python
    mkdocs = python.parent / "mkdocs"  # the console script `pip install ".[docs]"` makes, as pip writes them
    mkdocs.write_text(f"#!{python}\nimport sys\nfrom mkdocs.__main__ import cli\nsys.exit(cli())\n")
    built = subprocess.run([str(python), str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           capture_output=True, text=True, cwd=checkout, timeout=600,
                           env={**env, "NO_MKDOCS_2_WARNING": "1"}, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "load_run" in (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
