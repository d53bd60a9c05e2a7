"""Issue 30, class 7: read-only and interrupted. A reader of the model store writes nothing there (a store
baked into a container image or on a read-only mount works); Ctrl-C says in one line what was kept and that
a rerun resumes; a report stopped half-way (killed, disk full) is recognised and replaced by the rerun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY, cli, make_dataset
from test_hostile_runs import write_lgbm, write_run
from test_hostile_store import tiny, write_files
from test_rundir import make

from clothprobe.cli import INTERRUPTED
from clothprobe.featurize.model.store import ModelStore
from clothprobe.report.folder import RECORD
from clothprobe.runs import directory as rundir


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_a_reader_creates_no_file_in_the_store(tmp_path: Path) -> None:
    """Holding an entry while it is loaded (so a prune waits) used to create <key>.lock in the store."""
    store = ModelStore(tmp_path / "home")
    entry = store.get_or_build(tiny(), write_files)
    for lock in store.root.glob("*.lock"):  # a store copied into an image: its entries only
        lock.unlink()
    before = snapshot(store.home)
    reader = ModelStore(store.home)
    with reader.in_use(tiny()):
        assert reader.get_or_build(tiny(), lambda d: pytest.fail("built again")).key == entry.key
    assert snapshot(store.home) == before


# --- a real read-only store ---------------------------------------------------------------------------------


def read_only_prefix(folder: Path) -> list[str] | None:
    """A command prefix that runs its command with ``folder`` on a read-only bind mount (root: a private mount
    namespace), or [] when ``folder`` was made read-only by permissions (not root); None when neither works."""
    if os.geteuid() != 0:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        return []
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    prefix = ["unshare", "-m", "sh", "-c", script, str(folder)]
    if not shutil.which("unshare"):
        return None
    probe = subprocess.run([*prefix, "sh", "-c", f'! touch "{folder}/.probe"'], capture_output=True, timeout=30,
                           check=False)
    return prefix if probe.returncode == 0 else None


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from clothprobe.classifiers import fit
    from clothprobe.featurize import featurize

    root = tmp_path_factory.mktemp("readonly")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLOTHPROBE_HOME", str(root / "home"))
        data = make_dataset(root / "clothes", per_class={"hat": 3, "shirt": 3})
        featurize(data, features_dir=root / "features", **{**TINY, "precision": "float32"})
        (made,) = fit("clothes", backbone="vgg16", clf="logreg", balance="none", features_dir=root / "features",
                      models_dir=root / "models")
    return {"root": root, "home": root / "home", "data": data, "run": made.run_dir}


def test_predict_from_a_read_only_store(project: dict[str, Path]) -> None:
    home = project["home"]
    assert any(home.glob("models/*/manifest.json")), "featurize stored its model"
    prefix = read_only_prefix(home)
    if prefix is None:
        pytest.skip("cannot make a folder read-only here (root without a private mount namespace)")
    before = snapshot(home)
    env = {**os.environ, "CLOTHPROBE_HOME": str(home)}
    done = subprocess.run([*prefix, sys.executable, "-m", "clothprobe.cli", "predict", str(project["data"] / "test"),
                           "--model", str(project["run"])], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "hat" in done.stdout and "image(s) with" in done.stderr
    assert snapshot(home) == before


# --- Ctrl-C ---------------------------------------------------------------------------------------------------


class Running:
    """The CLI in a subprocess, its stderr collected line by line as it comes."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "clothprobe.cli", *args], cwd=cwd, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True)
        self._reader.start()

    def wait_for(self, ready, timeout: float = 300) -> None:  # noqa: ANN001 - a callable
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, f"ended before it could be interrupted: {''.join(self.lines)}"
            assert time.monotonic() < deadline, "never got there"
            time.sleep(0.05)

    def interrupt(self) -> tuple[int, list[str]]:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=120)
        self._reader.join(10)
        return code, [line.rstrip("\n") for line in self.lines if line.strip()]


def test_ctrl_c_during_featurize_says_what_was_kept_and_the_rerun_resumes(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "clothes", per_class={"hat": 150, "shirt": 150}, splits=("train",))
    out = tmp_path / "cache.h5"
    args = ("featurize", "--data", str(data), "--weights", "none", "--backbone", "vgg16", "--image-size", "32",
            "--precision", "float32", "--batch-size", "4", "--out", str(out), "--features-dir", str(tmp_path / "f"))
    running = Running(*args, cwd=tmp_path)
    running.wait_for(lambda: any(out.with_name(out.name + ".partial").glob("*.batch.json")))
    code, lines = running.interrupt()
    assert code == 130
    assert lines[-1] == INTERRUPTED["featurize"] and not any("Traceback" in line for line in lines), lines
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    resumed = int(again.stdout.split("(resumed ", 1)[1].split(")", 1)[0])
    assert resumed >= 4  # at least the batch seen finished before the interrupt


def test_ctrl_c_during_fit_says_what_was_kept(tmp_path: Path) -> None:
    from clothprobe.featurize import featurize
    from clothprobe.runs.directory import is_run

    data = make_dataset(tmp_path / "clothes", per_class={"hat": 6, "shirt": 6})
    featurize(data, features_dir=tmp_path / "features", **TINY)
    running = Running("fit", "--data", str(data), "--backbone", "vgg16", "--clf", "all", "--balance", "all",
                      "--features-dir", str(tmp_path / "features"), "--models-dir", str(tmp_path / "models"),
                      cwd=tmp_path)
    running.wait_for(lambda: any(" -> " in line for line in running.lines))
    code, lines = running.interrupt()
    assert code == 130
    assert lines[-1] == INTERRUPTED["fit"] and not any("Traceback" in line for line in lines), lines
    finished = [line.rsplit(" -> ", 1)[1] for line in lines if " -> " in line]
    assert finished and all(is_run(Path(run)) for run in finished)


# --- a report stopped half-way ------------------------------------------------------------------------------


def test_a_report_stopped_half_way_is_replaced_by_the_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full (or a kill) after index.html was replaced and before report.md was: a mixed report, which
    every later `cli report` refused as "not written by this command"."""
    from clothprobe.report import build_report

    models = tmp_path / "models"
    write_run(models / "clothes" / "vgg16" / "lgbm-none")
    site = tmp_path / "site"
    build_report(models, site)
    old_md = (site / "report.md").read_bytes()
    manifest, metrics, predictions = make(run="lgbm-weights")  # the next report differs
    rundir.write_run(models / "clothes" / "vgg16" / "lgbm-weights", manifest, metrics, predictions, write_lgbm)
    real_replace = os.replace

    def disk_full_at_report_md(src, dst):  # noqa: ANN001
        if Path(dst).name == "report.md":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", disk_full_at_report_md)
    with pytest.raises(OSError, match="No space left"):
        build_report(models, site)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (site / "report.md").read_bytes() == old_md and "lgbm-weights" in (site / "index.html").read_text()
    report = build_report(models, site)  # the documented rerun
    assert "lgbm-weights" in report.md_path.read_text()
    record = json.loads((site / RECORD).read_text())
    assert "pending" not in record and set(record["files"]) >= {"index.html", "report.md"}
