"""Dataset assembly for claim 4 (turn-over dropout under a domain shift), from data already here.

Training domain: scikit-learn's bundled digits (1,797 images, 8x8, upscaled to 32x32 by
``datasets.digits.load``). Validation and test domain: MNIST (28x28 -> 32x32): the validation set
is the first ``n_val`` of trial 0's seeded validation split of MNIST's training file, the test set
the first ``n_test`` of MNIST's test file. The three splits are written once as an NNC CSV dataset
(``train.csv``, ``validation.csv``, ``test.csv`` beside PNGs), which every driver already reads
(``-ds path/to/train.csv``); the pipeline itself is unchanged. Every run then trains on the same
data; its seed decides the initialisation, the batch order, the turn-over dropout masks and Random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from common.fileio import write_text_atomic


def _write_split(folder: Path, name: str, images: np.ndarray, labels: np.ndarray) -> None:
    sub = folder / name
    sub.mkdir(parents=True, exist_ok=True)
    lines = ["x:image,y:label"]
    for i, (img, y) in enumerate(zip(images, labels)):
        rel = f"{name}/{i:05d}.png"
        path = folder / rel
        if not path.is_file():
            Image.fromarray(np.asarray(img[0], dtype=np.uint8), mode="L").save(path)
        lines.append(f"{rel},{int(y)}")
    write_text_atomic(folder / f"{name}.csv", "\n".join(lines) + "\n")


def build_digits_to_mnist(
    folder: Path, n_val: int, n_test: int, data_dir: Optional[str], n_train: Optional[int] = None
) -> Path:
    """Write the digits -> MNIST dataset under ``folder`` (once) and return its ``train.csv``.

    ``n_train`` (default: all 1,797) keeps the first digits of ``np.random.RandomState(0)``'s
    permutation. A finished folder (``train.csv`` written last) is reused as it is."""
    folder = Path(folder)
    train_csv = folder / "train.csv"
    if train_csv.is_file():
        return train_csv
    from datasets import digits
    from datasets.loader import load_dataset

    src = digits.load()
    images = np.concatenate([src.pool.images, src.test.images])
    labels = np.concatenate([src.pool.labels, src.test.labels])
    order = np.random.RandomState(0).permutation(len(labels))[: n_train or len(labels)]
    mnist = load_dataset("mnist", 0, data_dir=data_dir, n_val=n_val, n_test=n_test)
    folder.mkdir(parents=True, exist_ok=True)
    _write_split(folder, "validation", mnist.val.images, mnist.val.labels)
    _write_split(folder, "test", mnist.test.images, mnist.test.labels)
    _write_split(folder, "train", images[order], labels[order])  # last: marks the folder complete
    return train_csv
