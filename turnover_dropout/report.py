"""Figures and tables of turn-over dropout: the loss-curve sanity check (paper Fig. 2) and the
explanation of test errors by their most influential training images (paper Fig. 5)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.batches import split_batches  # noqa: E402
from common.figures import save_figure, show_image  # noqa: E402
from common.fileio import write_csv_atomic  # noqa: E402
from datasets import DataBundle  # noqa: E402

from .influence import influence_on_targets, split_features  # noqa: E402
from .network import TDLearner  # noqa: E402

EXPLAIN_COLUMNS = ["test_index", "test_id", "true_label", "predicted_label", "rank", "datasource_index",
                   "train_id", "train_label", "influence_on_wrong"]


# ---------------------------------------------------------------------------- Fig. 2
def plot_loss_curve(curve: pd.DataFrame, path: Path, title: str = "") -> None:
    """Training loss with the own mask m(z) and the flipped mask m~(z), against validation loss."""
    fig, ax = plt.subplots(figsize=(6.6, 4.4))
    e = curve["epoch"]
    ax.plot(e, curve["train_loss_own_mask"], "-o", color="tab:red", ms=3,
            label="train, own mask  L(f^m(z), z)")
    ax.plot(e, curve["train_loss_flipped_mask"], "-o", color="tab:blue", ms=3,
            label="train, flipped mask  L(f^m~(z), z)")
    ax.plot(e, curve["val_loss"], ":", color="k", lw=2, label="validation, no mask")
    if "val_loss_random_mask" in curve:
        ax.plot(e, curve["val_loss_random_mask"], ":", color="tab:gray", lw=2,
                label="validation, random half mask")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean cross-entropy loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.set_title(title or "turn-over dropout: loss curves")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)


# ---------------------------------------------------------------------------- Fig. 5
def explain_errors(td: TDLearner, data: DataBundle, k: int = 5, max_errors: int = 8,
                   same_label: bool = False) -> pd.DataFrame:
    """For the first ``max_errors`` test images the TD network (no mask) gets wrong, the ``k``
    training images with the largest influence towards the wrong prediction.

    ``influence_on_wrong(z_i) = L(f^{m~(z_i)}, (x, y_pred)) - L(f^{m(z_i)}, (x, y_pred))``: the
    loss of the *predicted (wrong) class* without z_i minus with it. Positive = the sub-network
    that learned z_i gives the wrong class a lower loss, i.e. z_i pushes towards the error; the
    table lists the k largest values (most positive first). ``same_label``: only training images
    labelled as the wrong class are candidates (the paper's Figs. 3-5 show such images).
    """
    preds = np.concatenate([td.losses_and_predictions(x, y)[1] for x, y in split_batches(data, data.test)])
    wrong = np.flatnonzero(preds != data.test.labels)[:max_errors]
    if len(wrong) == 0:
        return pd.DataFrame(columns=EXPLAIN_COLUMNS)
    h = split_features(td, data, data.test, wrong)
    infl = influence_on_targets(td, h, preds[wrong], len(data.train), reduce_mean=False)  # (n_train, E)
    rows = []
    for j, t in enumerate(wrong):
        order = np.lexsort((np.arange(len(data.train)), -infl[:, j]))
        if same_label:
            order = order[data.train.labels[order] == preds[t]]
        order = order[:k]
        for r, i in enumerate(order, start=1):
            rows.append({"test_index": int(t), "test_id": str(data.test.ids[t]),
                         "true_label": int(data.test.labels[t]), "predicted_label": int(preds[t]),
                         "rank": r, "datasource_index": int(i), "train_id": str(data.train.ids[i]),
                         "train_label": int(data.train.labels[i]), "influence_on_wrong": float(infl[i, j])})
    return pd.DataFrame(rows, columns=EXPLAIN_COLUMNS)


def plot_explain_errors(table: pd.DataFrame, data: DataBundle, path: Path, title: str = "") -> None:
    """Top row: misclassified test images; under each, its most influential training images."""
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
                 "I = L(f^m~(z_i), (x, pred)) - L(f^m(z_i), (x, pred)) > 0: z_i lowers the wrong class's loss "
                 "(blue title: labelled as the wrong class)", fontsize=8.5)
    save_figure(fig, path, dpi=130)


def write_explain_errors(td: TDLearner, data: DataBundle, csv: Path, png: Path, k: int = 5,
                         max_errors: int = 8, title: str = "", same_label: bool = False) -> pd.DataFrame:
    table = explain_errors(td, data, k, max_errors, same_label)
    write_csv_atomic(csv, table)
    plot_explain_errors(table, data, png, title)
    return table
