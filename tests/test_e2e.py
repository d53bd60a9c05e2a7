"""End-to-end training on tiny made-up images with a random-weights VGG16 at 32 px (its graph of 19 layers
traces in a few seconds, where MobileNetV2's takes about three times as long): files the report reads,
fine-tuning that unfreezes exactly N layers (on MobileNetV2, whose batch normalization stays in inference
mode), and resumes after an interrupted run, in the middle of fine-tuning too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clothprobe.e2e import e2e
from clothprobe.e2e.train import E2EConfig, build_model, conv_base, unfreeze_top
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.model.recipe import Recipe
from clothprobe.report import build_report
from clothprobe.runs import directory as rundir
from clothprobe.runs.directory import RunKind

TINY_E2E = dict(backbone="vgg16", weights=None, image_size=32, batch_size=4)


@pytest.mark.slow
def test_tiny_run_writes_what_the_report_reads(dataset: Path, tmp_path: Path) -> None:
    (dataset / "train" / "hat" / "broken.jpg").write_bytes(b"not an image")
    result = e2e(dataset, epochs=2, models_dir=tmp_path / "models", **TINY_E2E)
    assert result.run_dir == tmp_path / "models" / "clothes" / "vgg16" / "e2e-none-32px"
    m = rundir.read_metrics(result.run_dir)
    assert m.kind is RunKind.END_TO_END and m.selection == "validation split" and m.selection_n == 9
    assert [e["epoch"] for e in m.epochs] == [1, 2] and all(e["seconds"] > 0 for e in m.epochs)
    first_best = max(m.epochs, key=lambda e: e["val_accuracy"])  # the first epoch of the highest accuracy
    assert m.chosen == {"best_epoch": first_best["epoch"], "best_phase": "head"}
    assert m.fit_seconds == pytest.approx(sum(e["seconds"] for e in m.epochs))
    assert m.skipped == [["train/hat/broken.jpg", "not an image Pillow can read (unknown or corrupt format)"]]
    assert np.array(m.test.confusion_matrix).sum() == 9 and set(m.test.ci) == {"accuracy", "macro_f1", "balanced_accuracy"}
    manifest = rundir.read_manifest(result.run_dir)
    assert set(manifest.sha256) == {"metrics.json", "predictions.csv", "model.keras"}
    recipe = Recipe.from_dict(manifest.recipe)  # what predict needs to feed new photos to the network
    assert (recipe.backbone, recipe.input_size, recipe.runtime, recipe.precision) == ("vgg16", 32, "keras", "float32")
    assert manifest.calibration.fitted_on == "validation split"
    assert not result.run_dir.with_name(result.run_dir.name + ".partial").exists()
    report = build_report(tmp_path / "models", tmp_path / "reports")
    comparison = report.sections[0].tables[1]
    assert any(row[1].text == "measured here (end-to-end)" and row[0].text == "vgg16/e2e-none-32px"
               for row in comparison.rows)


def test_fine_tune_unfreezes_exactly_n_layers() -> None:
    config = E2EConfig("mobilenetv2", 32, 1, 5, 1, 4, 1e-3, 1e-5, 8, 0.5, "none", "categorical", 0, "random-init-seed-0")
    model = build_model(config, None, 3)
    base = conv_base(model)
    assert not any(layer.trainable for layer in base.layers) and not base.trainable_weights
    assert unfreeze_top(model, 5, 1e-5, "categorical") == 5
    assert [layer.trainable for layer in base.layers] == [False] * (len(base.layers) - 5) + [True] * 5
    assert base.trainable_weights  # the top layers of MobileNetV2 hold weights
    with pytest.raises(ClothprobeError, match="--fine-tune must be between 1 and"):
        unfreeze_top(model, len(base.layers) + 1, 1e-5, "categorical")


@pytest.mark.slow
def test_fine_tune_phase_runs_after_the_head(dataset: Path, tmp_path: Path) -> None:
    result = e2e(dataset, epochs=1, fine_tune=3, fine_tune_epochs=1, balance="weights", loss="focal",
                 models_dir=tmp_path / "m", **{**TINY_E2E, "backbone": "mobilenetv2"})
    phases = [e["phase"] for e in result.metrics.epochs]
    assert phases == ["head", "fine-tune"] and result.run_dir.name == "e2e-weights-ft3-focal-32px"


@pytest.mark.slow
def test_resume_after_an_interrupted_run(dataset: Path, tmp_path: Path) -> None:
    def stop_after_first(record: dict) -> None:
        raise KeyboardInterrupt  # killed after epoch 1 was saved, during epoch 2

    with pytest.raises(KeyboardInterrupt):
        e2e(dataset, epochs=3, models_dir=tmp_path / "m", on_epoch=stop_after_first, **TINY_E2E)
    partial = tmp_path / "m" / "clothes" / "vgg16" / "e2e-none-32px.partial"
    assert len(json.loads((partial / "state.json").read_text())["history"]) == 1
    first = json.loads((partial / "state.json").read_text())["history"][0]
    result = e2e(dataset, epochs=3, models_dir=tmp_path / "m", **TINY_E2E)
    assert result.metrics.resumed_from_epoch == 1
    assert [e["epoch"] for e in result.metrics.epochs] == [1, 2, 3] and result.metrics.epochs[0] == first
    # other settings do not resume from that checkpoint
    other = e2e(dataset, epochs=2, models_dir=tmp_path / "m2", **TINY_E2E)
    assert other.metrics.resumed_from_epoch == 0


@pytest.mark.slow
def test_resume_in_the_middle_of_fine_tuning(dataset: Path, tmp_path: Path) -> None:
    """Killed after the first fine-tuning epoch: the resumed run fine-tunes on from the saved model (its
    unfrozen layers, optimizer state and Dropout's random state), exactly as the uninterrupted run does."""
    settings = dict(epochs=1, fine_tune=3, fine_tune_epochs=2, **TINY_E2E)

    def stop_in_fine_tuning(record: dict) -> None:
        if record["phase"] == "fine-tune":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        e2e(dataset, models_dir=tmp_path / "m", on_epoch=stop_in_fine_tuning, **settings)
    resumed = e2e(dataset, models_dir=tmp_path / "m", **settings)
    straight = e2e(dataset, models_dir=tmp_path / "s", **settings)
    assert resumed.metrics.resumed_from_epoch == 2
    assert [e["phase"] for e in resumed.metrics.epochs] == ["head", "fine-tune", "fine-tune"]
    strip = lambda m: [{k: v for k, v in e.items() if k != "seconds"} for e in m.epochs]  # noqa: E731
    assert strip(resumed.metrics)[:2] == strip(straight.metrics)[:2]
    assert resumed.metrics.epochs[2]["loss"] == straight.metrics.epochs[2]["loss"]
    from clothprobe.classifiers.modelio import load_e2e_model

    for run in (resumed, straight):  # exactly the top 3 layers of the base hold trainable weights
        base = conv_base(load_e2e_model(run.run_dir)[1])
        assert [bool(layer.trainable_weights) for layer in base.layers[:-3]] == [False] * (len(base.layers) - 3)


def test_errors_name_the_choices(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="takes none or weights"):
        e2e(dataset, balance="smote", **TINY_E2E)
    with pytest.raises(ClothprobeError, match="Unknown backbone 'resnet'; choose one of"):
        e2e(dataset, **{**TINY_E2E, "backbone": "resnet"})


@pytest.mark.slow
def test_same_seed_same_model(dataset: Path, tmp_path: Path) -> None:
    a = e2e(dataset, epochs=2, models_dir=tmp_path / "a", **TINY_E2E)
    b = e2e(dataset, epochs=2, models_dir=tmp_path / "b", **TINY_E2E)
    drop = ("seconds",)
    strip = [{k: v for k, v in e.items() if k not in drop} for e in a.metrics.epochs]
    assert strip == [{k: v for k, v in e.items() if k not in drop} for e in b.metrics.epochs]
    assert (a.run_dir / "predictions.csv").read_text() == (b.run_dir / "predictions.csv").read_text()


def make_colour_dataset(root: Path, per_split: dict[str, int]) -> Path:
    """Two classes anyone can tell apart: reddish and bluish photos with noise (root/<split>/<class>/<n>.png)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for cls, channel in (("red", 0), ("blue", 2)):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 96, size=(32, 32, 3))
                pixels[..., channel] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{i}.png")
    return root


@pytest.mark.slow
def test_learns_an_easy_separable_set(tmp_path: Path) -> None:
    """Red against blue: the trained network gets nearly every test photo right (a constant guess gets half).
    A random VGG16 (plain convolutions) keeps the colour in its pooled output; a random MobileNetV2 does not."""
    data = make_colour_dataset(tmp_path / "colours", {"train": 24, "validation": 8, "test": 10})
    result = e2e(data, epochs=5, models_dir=tmp_path / "models", **{**TINY_E2E, "backbone": "vgg16"})
    assert result.metrics.test.n == 20 and result.metrics.test.accuracy >= 0.9
    assert result.metrics.validation.accuracy >= 0.9
