"""The command line: help for every command, clear errors without tracebacks, and a run killed mid-way."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, make_image
from typer.testing import CliRunner

from clothprobe.cli import app
from clothprobe.featurize import load_features

runner = CliRunner()
COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


def test_help_of_every_command() -> None:
    assert "featurize" in COMMANDS
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output


def test_featurize_cli_writes_cache_and_reports_skips(dataset: Path, tmp_path: Path) -> None:
    (dataset / "train" / "hat" / "zero.jpg").write_bytes(b"")
    out = tmp_path / "c.h5"
    res = cli("featurize", "--data", str(dataset), "--backbone", "vgg16", "--weights", "none", "--image-size", "32",
              "--out", str(out), "--features-dir", str(tmp_path / "features"))
    assert res.returncode == 0, res.stderr
    assert "computed 27" in res.stdout and "skipped 1" in res.stdout
    assert "train/hat/zero.jpg: empty file" in res.stderr
    assert len(load_features(out).split("train")) == 9


def test_default_cache_location(dataset: Path, tmp_path: Path) -> None:
    res = cli("featurize", "--data", str(dataset), "--backbone", "vgg16", "--weights", "none", "--image-size", "32",
              "--features-dir", str(tmp_path / "features"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "features" / "clothes" / "vgg16.h5").is_file()


def test_offline_weights_error_is_one_clear_message(dataset: Path, tmp_path: Path) -> None:
    res = cli("featurize", "--data", str(dataset), "--backbone", "xception", "--out", str(tmp_path / "c.h5"),
              env={"CLOTHPROBE_OFFLINE": "1", "KERAS_HOME": str(tmp_path / "k"), "XDG_CONFIG_HOME": str(tmp_path / "c"),
                   "CLOTHPROBE_WEIGHTS_DIR": ""})
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "No ImageNet weights for backbone 'xception'" in res.stderr
    assert "--weights PATH" in res.stderr and "CLOTHPROBE_WEIGHTS_DIR" in res.stderr
    assert not (tmp_path / "c.h5").exists()


def test_unknown_backbone_and_strict_exit_2(dataset: Path, tmp_path: Path) -> None:
    res = cli("featurize", "--data", str(dataset), "--backbone", "resnet", "--weights", "none")
    assert res.returncode == 2 and "choose one of: vgg16, xception, mobilenetv2" in res.stderr
    (dataset / "test" / "hat" / "bad.jpg").write_bytes(b"nope")
    res = cli("featurize", "--data", str(dataset), "--backbone", "vgg16", "--weights", "none", "--image-size", "32",
              "--strict", "--out", str(tmp_path / "c.h5"), "--features-dir", str(tmp_path / "features"))
    assert res.returncode == 2 and "test/hat/bad.jpg" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_killed_run_leaves_cache_usable_and_resumes(tmp_path: Path) -> None:
    data, out = tmp_path / "d", tmp_path / "c.h5"
    for i in range(4):
        make_image(data / "train" / "a" / f"first{i}.png", seed=i)
    # float32: a resumed int8 cache keeps the calibration sample of its first run, a fresh one draws its own
    # from the 304 photos, so only a precision without calibration makes the two byte-comparable
    args = ["featurize", "--data", str(data), "--backbone", "vgg16", "--weights", "none", "--image-size", "96",
            "--batch-size", "2", "--precision", "float32", "--out", str(out), "--features-dir", str(tmp_path / "features")]
    assert cli(*args).returncode == 0
    before = load_features(out).split("train").embeddings
    for i in range(300):
        make_image(data / "train" / ("a" if i % 2 else "b") / f"more{i:03d}.png", seed=1000 + i)

    proc = subprocess.Popen([sys.executable, "-m", "clothprobe.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    partial = out.with_name(out.name + ".partial")
    deadline = time.time() + 120
    while len(list(partial.glob("*.batch.json"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(partial.glob("*.batch.json")))
    assert 3 <= done < 150, "the run should have been killed part-way"

    intact = load_features(out).split("train")  # the previous cache, untouched
    assert np.array_equal(intact.embeddings, before) and len(intact) == 4

    res = cli(*args)
    assert res.returncode == 0, res.stderr
    summary = " ".join(res.stdout.split())
    assert f"computed {300 - 2 * done}," in summary and f"(resumed {2 * done})" in summary
    assert not partial.exists()
    full = load_features(out).split("train")
    assert len(full) == 304
    fresh = tmp_path / "fresh.h5"
    assert cli(*[str(fresh) if a == str(out) else a for a in args]).returncode == 0
    assert np.array_equal(load_features(fresh).split("train").embeddings, full.embeddings)


def test_featurize_without_data_reuses_the_last_folder(dataset: Path, tmp_path: Path) -> None:
    features = str(tmp_path / "features")
    args = ["featurize", "--backbone", "vgg16", "--weights", "none", "--image-size", "32", "--features-dir", features]
    res = cli(*args)
    assert res.returncode == 2 and "--data DIR (nothing featurized yet under" in res.stderr
    assert cli(*args, "--data", str(dataset)).returncode == 0
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert f"--data {dataset.resolve()} (the folder featurized last" in " ".join(res.stderr.split())
    assert "cache up to date" in res.stdout


def test_featurize_refuses_to_replace_what_is_not_a_cache(dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    res = cli("featurize", "--data", str(dataset), "--backbone", "vgg16", "--weights", "none", "--out", str(folder))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "is a folder" in res.stderr
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    notes = tmp_path / "notes.h5"
    notes.write_text("my notes")
    res = cli("featurize", "--data", str(dataset), "--backbone", "vgg16", "--weights", "none", "--out", str(notes))
    assert res.returncode == 2 and "not a clothprobe feature cache" in res.stderr and notes.read_text() == "my notes"


def test_export_cli(tmp_path: Path) -> None:
    import pandas as pd
    from synthetic import make_cache

    cache = make_cache(tmp_path / "features", dim=8)
    res = cli("export", str(cache), "--out", str(tmp_path / "e.parquet"))
    assert res.returncode == 0, res.stderr
    df = pd.read_parquet(tmp_path / "e.parquet")
    assert f"wrote {len(df)} rows" in res.stdout and len(df) == sum(len(s) for s in load_features(cache).splits.values())
    assert np.stack(df["embedding"]).shape == (len(df), 8)


@pytest.mark.slow
def test_fit_cli_errors_name_the_cache_and_the_choices(tmp_path: Path) -> None:
    res = cli("fit", "--dataset", "clothes", "--features-dir", str(tmp_path / "features"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "xception.h5" in res.stderr and "cli featurize --backbone xception" in res.stderr
    res = cli("fit", "--dataset", "clothes", "--clf", "svm", cwd=tmp_path)  # refused before any cache is looked for
    assert res.returncode == 2 and "choose one of: logreg, lgbm, dense" in res.stderr
    res = cli("fit", cwd=tmp_path)  # an empty folder: nothing featurized under ./features
    assert res.returncode == 2 and "--data DIR" in res.stderr


def test_fit_cli_trains_on_a_cache(tmp_path: Path) -> None:
    from synthetic import make_cache

    make_cache(tmp_path / "features")
    res = cli("fit", "--dataset", "clothes", "--clf", "logreg", "--features-dir", str(tmp_path / "features"),
              "--models-dir", str(tmp_path / "models"))
    assert res.returncode == 0, res.stderr
    assert "logreg-weights" in res.stdout and "validation split" in res.stdout
    assert "logreg-weights: val" in res.stderr
    assert (tmp_path / "models" / "clothes" / "xception" / "logreg-weights" / "model.npz").is_file()


@pytest.mark.slow
def test_run_is_the_whole_job(dataset: Path, tmp_path: Path) -> None:
    # float32: the int8 build (calibration, accuracy guard) of the default is the documentation pages' to test
    res = cli("run", "--data", str(dataset), "--backbones", "mobilenetv2,vgg16", "--weights", "none",
              "--precision", "float32", "--clf", "logreg", "--balance", "none", "--features-dir", str(tmp_path / "f"),
              "--models-dir", str(tmp_path / "m"), "--reports-dir", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "f" / "clothes" / "mobilenetv2.h5").is_file() and (tmp_path / "f" / "clothes" / "vgg16.h5").is_file()
    for features in ("mobilenetv2", "vgg16", "mobilenetv2+vgg16"):
        assert (tmp_path / "m" / "clothes" / features / "logreg-none-tta" / "manifest.json").is_file()
        assert f"fitted {features}/logreg-none-tta" in res.stderr
    assert (tmp_path / "r" / "index.html").is_file() and (tmp_path / "r" / "report.md").is_file()
    assert "top 3 of 3 runs" in res.stdout and "chosen on validation" in res.stdout and "report:" in res.stdout
    from clothprobe.featurize.cache.read import load_features
    from clothprobe.featurize.model.backbones import BACKBONES

    cache = load_features(tmp_path / "f" / "clothes" / "vgg16.h5")  # cli run caches every tap by default
    assert [name for name, _ in cache.taps] == [t.name for t in BACKBONES["vgg16"].taps]
    assert cache.recipe.precision == "float32"
    metrics = json.loads((tmp_path / "m" / "clothes" / "vgg16" / "logreg-none-tta" / "metrics.json").read_text())
    names = [c["name"] for c in metrics["taps"]["candidates"]]
    assert names[0] == "final" and names[-1] == "all" and metrics["taps"]["chosen"] in names  # fit chose among them


@pytest.mark.slow
def test_report_cli(tmp_path: Path) -> None:
    from synthetic import make_cache

    res = cli("report", "--models-dir", str(tmp_path / "models"), "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "Nothing to report" in res.stderr and "Traceback" not in res.stderr
    make_cache(tmp_path / "features")
    assert cli("fit", "--dataset", "clothes", "--clf", "logreg", "--balance", "all", "--features-dir",
               str(tmp_path / "features"), "--models-dir", str(tmp_path / "models")).returncode == 0
    res = cli("report", "--models-dir", str(tmp_path / "models"), "--out", str(tmp_path / "r"), "--top", "2")
    assert res.returncode == 0, res.stderr
    assert "top 2 of 3 runs" in res.stdout and (tmp_path / "r" / "index.html").is_file()
