"""The paper's Table 1 (cache sizes of SGD-influence), for a run's setting and as published.

Storing every parameter of every step costs ``theta x T x k`` (T steps per epoch, k epochs), Hara's
per-step cache of the last epoch ``theta x T``, Ours only the final parameters ``theta``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from common.errors import UserError

#: The paper's Table 1 (GB), with its setting: 20 epochs, batch size 32.
PAPER_TABLE1 = {
    "mnist": {"n_train": 50_000, "All parameters": 38.64, "Hara": 1.932, "Ours": 0.001236},
    "cifar10": {"n_train": 40_000, "All parameters": 30.90, "Hara": 1.545, "Ours": 0.001236},
}
CACHE_TABLE_COLUMNS = ["n_train", "batch_size", "epochs", "steps_per_epoch", "param_file_bytes",
                       "method", "stored", "files", "bytes", "GB"]


def cache_table_rows(param_file_bytes: int, n_train: int, batch_size: int, epochs: int) -> pd.DataFrame:
    """Rows All parameters (theta x T x k), Hara (theta x T), Ours (theta); GB = 10^9 bytes.

    T = ceil(n_train / batch_size) steps per epoch, k = epochs, theta = one parameter file.
    """
    theta, n_train, batch_size, epochs = int(param_file_bytes), int(n_train), int(batch_size), int(epochs)
    if theta <= 0 or n_train <= 0 or batch_size <= 0 or epochs <= 0:
        raise UserError("cache table: parameter file size, training size, batch size and epochs must be positive")
    steps = -(-n_train // batch_size)
    rows = [("All parameters", "theta x T x k", steps * epochs), ("Hara", "theta x T", steps), ("Ours", "theta", 1)]
    return pd.DataFrame([{"n_train": n_train, "batch_size": batch_size, "epochs": epochs, "steps_per_epoch": steps,
                          "param_file_bytes": theta, "method": m, "stored": s, "files": f, "bytes": f * theta,
                          "GB": f * theta / 1e9} for m, s, f in rows], columns=CACHE_TABLE_COLUMNS)


def cache_table(param_file_bytes: int, dataset: str, n_train: int, batch_size: int, epochs: int,
                measured: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Table 1 for a run (``summary/cache_table.csv``): ``cache_table_rows`` with the dataset and,
    from ``measured`` (the run's ``cache_size.csv``: method, seed, files, bytes), the mean bytes per
    method as ``measured_bytes`` (empty for 'All parameters', which is never stored)."""
    table = cache_table_rows(param_file_bytes, n_train, batch_size, epochs)
    table.insert(0, "dataset", str(dataset))
    if measured is not None and len(measured):
        means = measured.groupby("method")["bytes"].mean()
        table["measured_bytes"] = table["method"].map(means)
    return table


#: The paper's two settings of Table 1: (label, dataset key, cnn6 input shape).
SETTINGS = (("MNIST", "mnist", (1, 32, 32)), ("CIFAR-10", "cifar10", (3, 32, 32)))


def cnn6_file_bytes(input_shape, num_classes: int = 10) -> int:
    """Size in bytes of a cnn6 parameter file written by ``save_params``."""
    from common.params_io import save_params
    from models.networks import build_model

    params = build_model("cnn6", input_shape, num_classes).create_parameters(np.random.RandomState(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cnn6.h5"
        save_params(path, params)
        return path.stat().st_size


def replay_row(param_file_bytes: int, n_train: int, batch_size: int, epochs: int) -> pd.DataFrame:
    """The row of ``Hara_all_epochs`` (issue 37): the parameters after every epoch (``theta x k``) on
    disk, replayed a segment at a time (the segment is held in memory, not stored)."""
    theta, steps = int(param_file_bytes), -(-int(n_train) // int(batch_size))
    return pd.DataFrame([{"n_train": int(n_train), "batch_size": int(batch_size), "epochs": int(epochs),
                          "steps_per_epoch": steps, "param_file_bytes": theta, "method": "Hara_all_epochs",
                          "stored": "theta x k", "files": int(epochs), "bytes": int(epochs) * theta,
                          "GB": int(epochs) * theta / 1e9}], columns=CACHE_TABLE_COLUMNS)


def build_table(param_bytes: dict, batch_size: int, epochs: int, with_replay: bool = False):
    """One DataFrame: dataset, n_train, T, method, stored, bytes, GB, paper GB, ours/paper
    (``with_replay``: also ``Hara_all_epochs``, which the paper does not have)."""
    frames = []
    for label, key, _ in SETTINGS:
        paper = PAPER_TABLE1[key]
        rows = cache_table_rows(param_bytes[key], paper["n_train"], batch_size, epochs)
        if with_replay:
            rows = pd.concat([rows.iloc[:2], replay_row(param_bytes[key], paper["n_train"], batch_size, epochs),
                              rows.iloc[2:]], ignore_index=True)
        rows.insert(0, "dataset", label)
        paper_setting = batch_size == 32 and epochs == 20
        rows["paper_GB"] = [paper[m] if paper_setting and m in paper else float("nan") for m in rows["method"]]
        rows["ratio"] = rows["GB"] / rows["paper_GB"]
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)
