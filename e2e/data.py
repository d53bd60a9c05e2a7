"""Images for end-to-end training: decoded once with featurize's decoder (same formats, EXIF, pixel limit,
skip-and-report), kept as uint8, and fed in seeded shuffled batches with the backbone's preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clothprobe._util.progress import progress_bar
from clothprobe.featurize.dataset import Dataset, check_every_class_trains
from clothprobe.featurize.embed import decoded_batches
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS


@dataclass
class ImageSplit:
    """Rows aligned: decoded images (uint8, n x size x size x 3), labels and paths relative to the root."""

    images: np.ndarray
    y: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return len(self.y)


def load_splits(dataset: Dataset, size: int, skipped: dict[str, str], max_pixels: int = DEFAULT_MAX_PIXELS,
                progress: bool = False) -> dict[str, ImageSplit]:
    """Decode every split at ``size``; files that cannot be used are left out and added to ``skipped``."""
    out = {}
    for split, files in dataset.files.items():
        images, labels, paths = [], [], []
        with progress_bar(f"decoding {split}", len(files), progress) as advance:
            for start, batch in decoded_batches([f.path for f in files], size, 64, max_pixels):
                for f, (image, reason) in zip(files[start:], batch):
                    if image is None:
                        skipped[f.rel_path] = reason
                    else:
                        images.append(image)
                        labels.append(f.label)
                        paths.append(f.rel_path)
                advance(len(batch))
        out[split] = ImageSplit(np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
                                np.asarray(labels, dtype=np.int64), paths)
        if split == "train":
            check_every_class_trains(dataset.class_names, out[split].y, dataset.root / split)
    return out


def batches(split: ImageSplit, preprocess: Callable, n_classes: int, batch_size: int,
            sample_weight: np.ndarray | None = None, order: np.ndarray | None = None,
            augment: Callable | None = None):  # noqa: ANN201
    """A ``keras.utils.PyDataset`` over ``split`` in ``order`` (one epoch's shuffle), augmenting (training
    only) and preprocessing per batch, so memory holds uint8 images, not float copies of the whole split."""
    import keras

    order = np.arange(len(split)) if order is None else order
    onehot = np.eye(n_classes, dtype=np.float32)

    class Batches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return -(-len(order) // batch_size)

        def __getitem__(self, i: int):  # noqa: ANN204
            rows = order[i * batch_size : (i + 1) * batch_size]
            x = split.images[rows].astype(np.float32)
            if augment is not None:
                x = np.array(augment(x, training=True))  # a writable copy: preprocess_input works in place
            x = preprocess(x)
            if sample_weight is None:
                return x, onehot[split.y[rows]]
            return x, onehot[split.y[rows]], sample_weight[rows]

    return Batches()
