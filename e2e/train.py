"""``e2e()``: the reference notebooks' end-to-end approach as one command, for the comparison.

The frozen ImageNet base with a Dense + Dropout head, trained on the images with augmentation (shear,
zoom, horizontal flip); the best epoch by validation accuracy is kept. ``fine_tune=N`` then unfreezes the
top N layers of the base and continues at a low learning rate. It writes the same ``metrics.json``,
``manifest.json`` and ``predictions.csv`` as ``fit``, so ``cli report`` shows both side by side.

Resumable: after every epoch the model (with its optimizer state) and the history are saved in
``<run>.partial/``; a killed run continues from the last finished epoch. Epoch ``k`` is seeded with
``seed + k`` (shuffle, augmentation and the random state of the model's Dropout, which Keras does not save
with a model), so a resumed run trains exactly as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clothprobe._util.files import atomic_path, atomic_write, open_regular, read_json, write_text_atomic
from clothprobe._util.progress import progress_bar
from clothprobe._util.seeding import keras_seeded
from clothprobe.classifiers.dense import make_loss
from clothprobe.classifiers.fitting import FitResult, calibrate
from clothprobe.classifiers.metrics import classification_metrics
from clothprobe.classifiers.modelio import save_e2e_model
from clothprobe.classifiers.registry import check_balance, check_loss
from clothprobe.classifiers.select import Held
from clothprobe.e2e.data import ImageSplit, batches, load_splits
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.dataset import scan
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS
from clothprobe.featurize.model.backbones import DEFAULT_BACKBONE, get_backbone
from clothprobe.featurize.model.recipe import Recipe, resolve_recipe
from clothprobe.runs.directory import (
    Manifest,
    Metrics,
    Predictions,
    RunKind,
    RunRecord,
    check_target,
    e2e_run_name,
    run_path,
    write_run,
)

HELD_OUT = 0.1  # share of train held out for epoch selection when there is no validation split


@dataclass(frozen=True)
class E2EConfig:
    """Every setting that shapes the training; a resume is refused if any differs."""

    backbone: str
    image_size: int
    epochs: int
    fine_tune: int
    fine_tune_epochs: int
    batch_size: int
    learning_rate: float
    fine_tune_learning_rate: float
    hidden: int
    dropout: float
    balance: str
    loss: str
    seed: int
    weights_sha256: str

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def phases(self) -> list[tuple[str, int]]:
        return [("head", self.epochs)] + ([("fine-tune", self.fine_tune_epochs)] if self.fine_tune else [])


def build_model(config: E2EConfig, weights_path: str | None, n_classes: int):  # noqa: ANN201 - keras.Model
    import keras

    bb = get_backbone(config.backbone)
    keras.utils.set_random_seed(config.seed)
    base = bb.build(weights_path or None, config.image_size)
    base.trainable = False
    inputs = keras.Input((config.image_size, config.image_size, 3))
    x = base(inputs, training=False)  # batch norm stays in inference mode, also once layers are unfrozen
    x = keras.layers.Dense(config.hidden, activation="relu")(x)
    x = keras.layers.Dropout(config.dropout)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    _compile(model, config.learning_rate, config.loss)
    return model


def augmentation(seed: int):  # noqa: ANN201 - keras.Sequential
    """Horizontal flip, zoom and shear as the notebooks' ImageDataGenerator, applied to training batches in
    the data pipeline (not inside the model, which stays a plain base + head that saves and loads cleanly)."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomZoom(0.1, seed=seed + 1),
        keras.layers.RandomShear(x_factor=0.1, y_factor=0.1, seed=seed + 2),
    ])


def _compile(model, learning_rate: float, loss: str) -> None:  # noqa: ANN001
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=make_loss(loss), metrics=["accuracy"])


def conv_base(model):  # noqa: ANN001, ANN201
    """The backbone inside the trained model: its only layer that is itself a model."""
    import keras

    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def unfreeze_top(model, n: int, learning_rate: float, loss: str) -> int:  # noqa: ANN001
    """Make exactly the top ``n`` layers of the base trainable (the rest stay frozen) and recompile."""
    base = conv_base(model)
    if not 0 < n <= len(base.layers):
        raise ClothprobeError(f"--fine-tune must be between 1 and {len(base.layers)} (layers in the base), got {n}.")
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= len(base.layers) - n
    _compile(model, learning_rate, loss)
    return sum(layer.trainable for layer in base.layers)


class _Checkpoint:
    """``<run>.partial/``: the last finished epoch (model with optimizer state), the best weights, history."""

    def __init__(self, run_dir: Path, fingerprint: str) -> None:
        self.dir = run_dir.with_name(run_dir.name + ".partial")
        self.fingerprint = fingerprint
        self.state: dict = {"fingerprint": fingerprint, "history": [], "best": None}
        state_file = self.dir / "state.json"
        if self.dir.exists():
            try:
                saved = read_json(state_file)
            except (OSError, ValueError):
                saved = {}
            if (isinstance(saved, dict) and saved.get("fingerprint") == fingerprint
                    and (self.dir / "last.keras").is_file() and (self.dir / "best.npz").is_file()):
                self.state = saved
            else:  # other settings or a damaged checkpoint: start over rather than mix two trainings
                shutil.rmtree(self.dir)

    @property
    def done(self) -> int:
        return len(self.state["history"])

    def load_last(self):  # noqa: ANN201
        import keras

        return keras.saving.load_model(self.dir / "last.keras", safe_mode=True)

    def load_best(self, model) -> None:  # noqa: ANN001
        with open_regular(self.dir / "best.npz") as fh, np.load(fh, allow_pickle=False) as arrays:
            model.set_weights([arrays[f"arr_{i}"] for i in range(len(arrays.files))])

    def save(self, model, record: dict, improved: bool) -> None:  # noqa: ANN001
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.dir / "last.keras", suffix=".keras") as tmp:  # Keras reads the format from the name
            model.save(tmp)
        if improved:  # the weights only (no optimizer state), as plain arrays: never a pickle
            with atomic_write(self.dir / "best.npz", "wb") as fh:
                np.savez(fh, *model.get_weights())
            self.state["best"] = record
        self.state["history"].append(record)
        write_text_atomic(self.dir / "state.json", json.dumps(self.state, indent=2))


def _predict(model, split: ImageSplit, preprocess, n_classes: int, batch_size: int) -> np.ndarray:  # noqa: ANN001
    proba = model.predict(batches(split, preprocess, n_classes, batch_size), verbose=0)
    return np.asarray(proba, dtype=np.float64) / np.asarray(proba, dtype=np.float64).sum(1, keepdims=True)


@dataclass
class _Job:
    """What ``e2e`` trains on and writes, decided before any training."""

    recipe: Recipe
    config: E2EConfig
    name: str
    run_dir: Path


def _plan(backbone: str, weights, image_size: int | None, batch_size: int, epochs: int, fine_tune: int,  # noqa: ANN001
          balance: str, loss: str, seed: int, out: str | Path | None) -> tuple[Recipe, str | None]:
    """Check every option and resolve the embedding recipe (weights found and hashed) before any work."""
    check_balance(balance)
    check_loss(loss)
    if balance == "smote":
        raise ClothprobeError("--balance smote needs embeddings; end-to-end training takes none or weights.")
    if epochs < 1 or batch_size < 1 or fine_tune < 0:
        raise ClothprobeError(f"--epochs and --batch-size must be at least 1 and --fine-tune at least 0; got "
                              f"{epochs}, {batch_size}, {fine_tune}.")
    get_backbone(backbone)  # end to end trains registry backbones (keras.applications) only
    recipe = resolve_recipe(backbone, weights=weights, image_size=image_size, runtime="keras",
                            precision="float32", seed=seed)
    if out is not None:
        check_target(out)
    return recipe, recipe.model_path or None


def e2e(
    data: str | Path,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | Path | None = "imagenet",
    epochs: int = 12,
    image_size: int | None = None,
    batch_size: int = 32,
    fine_tune: int = 0,
    fine_tune_epochs: int = 4,
    learning_rate: float = 1e-3,
    fine_tune_learning_rate: float = 1e-5,
    hidden: int = 100,
    dropout: float = 0.5,
    balance: str = "none",
    loss: str = "categorical",
    seed: int = 0,
    models_dir: str | Path = "models",
    out: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    on_epoch=None,  # noqa: ANN001 - called with each epoch's record
) -> FitResult:
    """Train end to end on the images under ``data``; return the run (same files as ``fit`` writes)."""
    recipe, weights_path = _plan(backbone, weights, image_size, batch_size, epochs, fine_tune, balance, loss, seed, out)
    dataset = scan(data)
    bb = get_backbone(recipe.backbone)
    config = E2EConfig(bb.name, recipe.input_size, epochs, fine_tune, fine_tune_epochs if fine_tune else 0,
                       batch_size, learning_rate, fine_tune_learning_rate, hidden, dropout, balance, loss, seed,
                       recipe.weights_sha256)
    name = e2e_run_name(balance, fine_tune, loss, recipe.input_size, bb.input_size)
    job = _Job(recipe, config, name, run_path(models_dir, dataset.name, bb.name, name, out))
    check_target(job.run_dir)
    started = time.perf_counter()
    skipped: dict[str, str] = {}
    splits = load_splits(dataset, recipe.input_size, skipped, max_pixels, progress)
    if "train" not in splits or not len(splits["train"]):
        raise ClothprobeError(f"No usable training images under {dataset.root}; e2e needs DIR/train/<class>/.")
    train, val, selection = _selection_splits(splits, seed)
    ckpt = _Checkpoint(job.run_dir, config.fingerprint())
    resumed = ckpt.done
    with keras_seeded(seed):  # every epoch reseeds Keras; the caller's random state is put back afterwards
        model = ckpt.load_last() if resumed else build_model(config, weights_path, len(dataset.class_names))
        _train(model, ckpt, job, train, val, len(dataset.class_names), progress, on_epoch)
    ckpt.load_best(model)
    result = _write(model, ckpt, job, dataset, splits, train, val, selection, resumed, started, skipped)
    shutil.rmtree(ckpt.dir, ignore_errors=True)
    return result


def _selection_splits(splits: dict[str, ImageSplit], seed: int) -> tuple[ImageSplit, ImageSplit, str]:
    """Train and the split the best epoch is chosen on: validation, or a held-out share of train."""
    train, val = splits["train"], splits.get("validation")
    if val is not None and len(val):
        return train, val, "validation split"
    from sklearn.model_selection import train_test_split

    tr, va = train_test_split(np.arange(len(train)), test_size=HELD_OUT, stratify=train.y, random_state=seed)
    train, val = (ImageSplit(train.images[idx], train.y[idx], [train.paths[i] for i in idx]) for idx in (tr, va))
    return train, val, f"{int(HELD_OUT * 100)}% of train held out"


def _train(model, ckpt: _Checkpoint, job: _Job, train: ImageSplit, val: ImageSplit, n_classes: int,  # noqa: ANN001
           progress: bool, on_epoch) -> None:  # noqa: ANN001
    """Every epoch not yet in the checkpoint: the head, then (optionally) fine-tuning from the best head."""
    config, preprocess = job.config, job.recipe.preprocess.apply
    weight = None
    if config.balance == "weights":
        from sklearn.utils.class_weight import compute_sample_weight

        weight = compute_sample_weight("balanced", train.y).astype(np.float32)
    epoch = 0
    for phase, n_epochs in config.phases:
        for k in range(n_epochs):
            epoch += 1
            if epoch <= ckpt.done:  # finished before a resume; the saved model carries its unfrozen layers
                continue
            if phase == "fine-tune" and k == 0:
                ckpt.load_best(model)  # continue from the converged head
                unfreeze_top(model, config.fine_tune, config.fine_tune_learning_rate, config.loss)
            record = _train_epoch(model, phase, epoch, train, val, preprocess, n_classes, config, weight, progress)
            best = ckpt.state["best"]
            ckpt.save(model, record, improved=best is None or record["val_accuracy"] > best["val_accuracy"])
            if on_epoch:
                on_epoch(record)


def _write(model, ckpt: _Checkpoint, job: _Job, dataset, splits: dict[str, ImageSplit], train: ImageSplit,  # noqa: ANN001
           val: ImageSplit, selection: str, resumed: int, started: float, skipped: dict[str, str]) -> FitResult:
    """Score validation and (once) test with the best epoch, and write the run."""
    import keras

    config, classes, preprocess = job.config, dataset.class_names, job.recipe.preprocess.apply
    val_proba = _predict(model, val, preprocess, len(classes), config.batch_size)
    test = splits.get("test")
    test_proba, predictions, t = None, None, time.perf_counter()
    if test is not None and len(test):
        test_proba = _predict(model, test, preprocess, len(classes), config.batch_size)
        predictions = Predictions(list(test.paths), [classes[i] for i in test.y], test_proba, classes)
    predict_seconds = time.perf_counter() - t if test_proba is not None else None
    held = Held(val.y, val_proba, selection, val.y, val_proba)
    calibration, calibrated_ece = calibrate(held, None if test is None else test.y, test_proba)
    params = {k: v for k, v in asdict(config).items() if k not in ("backbone", "seed", "balance", "loss", "weights_sha256")}
    chosen = {"best_epoch": ckpt.state["best"]["epoch"], "best_phase": ckpt.state["best"]["phase"]}
    record = RunRecord(
        run=job.name, dataset=dataset.name, kind=RunKind.END_TO_END, classifier="dense-head-e2e",
        balance=config.balance, tta=False, loss=config.loss, seed=config.seed, params=params, chosen=chosen,
        calibration=calibration,
    )
    metrics = Metrics(
        **record.shared(), backbone=config.backbone, selection=selection, selection_n=len(val), candidates=[],
        fit_seconds=sum(r["seconds"] for r in ckpt.state["history"]), featurize_seconds=None,
        predict_seconds=predict_seconds,
        train_counts=dict(zip(classes, np.bincount(train.y, minlength=len(classes)).tolist())),
        validation=classification_metrics(val.y, val_proba, classes, config.seed, selection),
        test=None if test_proba is None else classification_metrics(test.y, test_proba, classes, config.seed,
                                                                     "test split"),
        calibrated_test_ece=calibrated_ece, epochs=ckpt.state["history"],
        resumed_from_epoch=resumed, skipped=[list(item) for item in sorted(skipped.items())],
        wall_seconds=time.perf_counter() - started,
    )
    manifest = Manifest(
        **record.shared(), classes=classes, backbones=[config.backbone], versions={"keras": keras.__version__},
        recipe=job.recipe.to_dict(), config=asdict(config), data_root=str(dataset.root.resolve()),
    )
    write_run(job.run_dir, manifest, metrics, predictions, lambda d: save_e2e_model(model, d))
    return FitResult(job.run_dir, metrics)


def _reseed_layers(model, seed: int) -> None:  # noqa: ANN001 - a keras.Model
    """Set the random state of every layer that draws random numbers (Dropout's ``seed_generator_state``,
    one per layer) from ``seed`` and the layer's place. Keras saves a model's weights and optimizer state but
    not these, so without this a resumed run would drop other units than the uninterrupted one."""
    states = [v for v in model.variables if v.name == "seed_generator_state"]
    for i, state in enumerate(states):
        base = int(np.random.default_rng([seed, i]).integers(1, 2**30))
        state.assign(np.array([base, 0], dtype=state.dtype))


def _train_epoch(model, phase: str, epoch: int, train: ImageSplit, val: ImageSplit, preprocess, n_classes: int,  # noqa: ANN001
                 config: E2EConfig, weight: np.ndarray | None, progress: bool) -> dict:
    """One epoch, seeded with ``seed + epoch`` (shuffle, augmentation, Dropout), then validation accuracy."""
    import keras

    keras.utils.set_random_seed(config.seed + epoch)
    _reseed_layers(model, config.seed + epoch)
    order = np.random.default_rng(config.seed + epoch).permutation(len(train))
    data = batches(train, preprocess, n_classes, config.batch_size, weight, order, augmentation(config.seed + 7 * epoch))
    started = time.perf_counter()
    with progress_bar(f"epoch {epoch} ({phase})", len(train), progress) as advance:
        class Advance(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
                advance(min(config.batch_size, len(train) - batch * config.batch_size))

        history = model.fit(data, epochs=1, verbose=0, callbacks=[Advance()])
    proba = _predict(model, val, preprocess, n_classes, config.batch_size)
    return {
        "epoch": epoch, "phase": phase, "seconds": time.perf_counter() - started,
        "loss": float(history.history["loss"][-1]), "accuracy": float(history.history["accuracy"][-1]),
        "val_accuracy": float(np.mean(proba.argmax(1) == val.y)),
    }
