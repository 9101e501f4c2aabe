"""Figures and tables of turn-over dropout: the loss-curve sanity check (paper Fig. 2) and the
explanation of test errors by their most influential training images (paper Fig. 5)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cleansing.estimator import Explanation, misclassified  # noqa: E402
from datasets import DataBundle  # noqa: E402
from datasets.batches import split_batches  # noqa: E402

from .influence import influence_on_targets, split_features  # noqa: E402
from .network import TDLearner  # noqa: E402


# ---------------------------------------------------------------------------- Fig. 2
def loss_curve_figure(curve: pd.DataFrame, title: str = ""):
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
    return fig


# ---------------------------------------------------------------------------- Fig. 5
TD_FORMULA = "I = L(f^m~(z_i), (x, pred)) - L(f^m(z_i), (x, pred)) > 0: z_i lowers the wrong class's loss"


def explain_errors(td: TDLearner, data: DataBundle, max_errors: int = 8) -> Explanation:
    """For the first ``max_errors`` test images the TD network (no mask) gets wrong, the influence
    of every training image towards the wrong prediction:

    ``influence_on_wrong(z_i) = L(f^{m~(z_i)}, (x, y_pred)) - L(f^{m(z_i)}, (x, y_pred))``: the
    loss of the *predicted (wrong) class* without z_i minus with it. Positive = the sub-network
    that learned z_i gives the wrong class a lower loss, i.e. z_i pushes towards the error.
    """
    preds = np.concatenate([td.losses_and_predictions(x, y)[1] for x, y in split_batches(data, data.test)])
    wrong = misclassified(preds, data.test.labels, max_errors)
    if len(wrong) == 0:
        return Explanation(wrong, preds, np.zeros((len(data.train), 0)), TD_FORMULA)
    h = split_features(td, data, data.test, wrong)
    infl = influence_on_targets(td, h, preds[wrong], len(data.train), reduce_mean=False)  # (n_train, E)
    return Explanation(wrong, preds, infl, TD_FORMULA)
