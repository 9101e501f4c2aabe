"""Explaining test errors by training images (Kobayashi et al., 2020, Fig. 5), for any estimator.

An estimator gives ``infl[i, e]``: the estimated change of the loss of the *predicted (wrong)
class* of misclassified test image ``e`` when training image ``i`` is left out. Positive = without
``z_i`` the wrong class would lose support, i.e. ``z_i`` pushes towards the error. This module
turns such a matrix into the table (``EXPLAIN_COLUMNS``) and the figure; computing ``infl`` is the
estimator's job (turn-over dropout: two forward passes per pair; SGD-influence: one recursion per
test image, started from the gradient of that image's wrong-class loss).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.figures import plt, save_figure, show_image  # plt: headless (Agg) once figures is imported
from datasets import DataBundle

EXPLAIN_COLUMNS = ["test_index", "test_id", "true_label", "predicted_label", "rank", "datasource_index",
                   "train_id", "train_label", "influence_on_wrong"]


def misclassified(preds: np.ndarray, labels: np.ndarray, max_errors: int) -> np.ndarray:
    """Positions of the first ``max_errors`` rows whose prediction differs from the label."""
    return np.flatnonzero(np.asarray(preds) != np.asarray(labels))[:max_errors]


def explanation_table(data: DataBundle, wrong: np.ndarray, preds: np.ndarray, infl: np.ndarray, k: int,
                      same_label: bool = False) -> pd.DataFrame:
    """The ``k`` training images with the largest ``infl[:, e]`` for each test image ``wrong[e]``
    (ties: lower position first). ``preds``: predictions over the whole test split; ``infl``:
    (n_train, len(wrong)). ``same_label``: only training images labelled as the wrong class."""
    infl = np.asarray(infl, dtype=np.float64)
    if infl.shape != (len(data.train), len(wrong)):
        raise ValueError(f"influence matrix of shape {infl.shape}, expected {(len(data.train), len(wrong))}")
    rows = []
    for e, t in enumerate(wrong):
        order = np.lexsort((np.arange(len(data.train)), -infl[:, e]))
        if same_label:
            order = order[data.train.labels[order] == preds[t]]
        for r, i in enumerate(order[:k], start=1):
            rows.append({"test_index": int(t), "test_id": str(data.test.ids[t]),
                         "true_label": int(data.test.labels[t]), "predicted_label": int(preds[t]),
                         "rank": r, "datasource_index": int(i), "train_id": str(data.train.ids[i]),
                         "train_label": int(data.train.labels[i]), "influence_on_wrong": float(infl[i, e])})
    return pd.DataFrame(rows, columns=EXPLAIN_COLUMNS)


def plot_explanations(table: pd.DataFrame, data: DataBundle, path: Path, title: str = "",
                      formula: str = "I > 0: z_i lowers the wrong class's loss") -> None:
    """Top row: misclassified test images; under each, its most influential training images with
    their labels (blue: labelled as the wrong class). ``formula`` says what I is."""
    tests = list(dict.fromkeys(table["test_index"].tolist())) if len(table) else []
    k = int(table["rank"].max()) if len(table) else 0
    ncol, nrow = max(1, len(tests)), 1 + k
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.6 * ncol + 1.0, 1.95 * nrow + 1.0), squeeze=False,
                             constrained_layout=True)
    if not tests:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    for c, t in enumerate(tests):
        sub = table[table["test_index"] == t].sort_values("rank")
        first = sub.iloc[0]
        ax = axes[0, c]
        show_image(ax, data.test.images[t])
        ax.set_title(f"test #{t}\ntrue {first.true_label} -> pred {first.predicted_label}",
                     fontsize=9, color="tab:red")
        for r in range(1, nrow):
            ax = axes[r, c]
            row = sub[sub["rank"] == r]
            if not len(row):
                ax.axis("off")
                continue
            row = row.iloc[0]
            show_image(ax, data.train.images[int(row.datasource_index)])
            same = int(row.train_label) == int(first.predicted_label)
            ax.set_title(f"label {row.train_label}, #{row.datasource_index}\nI={row.influence_on_wrong:+.3g}",
                         fontsize=8, color="tab:blue" if same else "k")
    for r in range(nrow):
        axes[r, 0].set_ylabel("misclassified\ntest image" if r == 0 else f"rank {r}", fontsize=9)
    fig.suptitle((title + "\n" if title else "") +
                 "training images with the largest influence towards the wrong prediction\n"
                 f"{formula} (blue title: labelled as the wrong class)", fontsize=8.5)
    save_figure(fig, path, dpi=130)
