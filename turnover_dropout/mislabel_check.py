"""Label-noise check of turn-over dropout: do the most harmful samples contain the mislabeled ones?

Loads a dataset (default: 2,000 MNIST training samples), flips the labels of a seeded 10% of the
training samples (each to a *different* class, uniformly), trains the turn-over dropout network
on the noisy data (same TrainConfig, seeded schedule and augmentation as the pipeline), scores
every training sample by its mean influence on the (clean) validation set, and compares the
number of flipped samples among the 10% most harmful (most negative influence) with a seeded
random 10% (the pipeline's Random order) and with its expectation.

    python -m turnover_dropout.mislabel_check --data-dir /work/shared/datasets/mnist -m mlp
    python -m turnover_dropout.mislabel_check --data-dir /work/shared/datasets/mnist -m cnn6

Prints one line per measure and writes, under ``-o``: the influence CSV (with a ``noisy`` column),
the loss curve CSV/PNG of the TD training and ``mislabel_check_<seed>.json`` with the numbers.
Exit status 0 when the criterion (at least twice the random count) holds, 1 when not.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from common.cli import positive_float, positive_int, run_main
from common.errors import UserError
from common.fileio import write_csv_atomic, write_text_atomic
from common.influence_csv import influence_frame, write_influence_csv
from datasets import DataBundle, Split, load_dataset
from models import MODELS
from sgd_influence.trace import make_schedule
from sgd_influence.train import TrainConfig

from .influence import instance_losses, validation_influence
from .masks import resolve_layers
from .report import plot_loss_curve
from .train import train_turnover


def flip_labels(data: DataBundle, fraction: float, seed: int):
    """(noisy bundle, bool flipped mask): a seeded ``fraction`` of training labels moved to another class."""
    rng = np.random.default_rng([seed, 20200101])
    n = len(data.train)
    chosen = rng.choice(n, size=int(round(fraction * n)), replace=False)
    labels = data.train.labels.copy()
    labels[chosen] = (labels[chosen] + rng.integers(1, data.num_classes, size=len(chosen))) % data.num_classes
    flipped = np.zeros(n, bool)
    flipped[chosen] = True
    train = Split(data.train.images, labels, data.train.ids)
    return DataBundle(data.name, train, data.val, data.test, data.num_classes, data.mean, data.std), flipped


def auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative) (ties count 1/2)."""
    allv = np.concatenate([scores_pos, scores_neg])
    ranks = np.empty(len(allv))
    order = np.argsort(allv, kind="mergesort")
    ranks[order] = np.arange(1, len(allv) + 1)
    for v in np.unique(allv):  # average ranks of ties
        t = allv == v
        if t.sum() > 1:
            ranks[t] = ranks[t].mean()
    r = ranks[:len(scores_pos)].sum()
    return float((r - len(scores_pos) * (len(scores_pos) + 1) / 2) / (len(scores_pos) * len(scores_neg)))


def mask_explained(td, scores: np.ndarray):
    """(R^2, residual) of a least-squares fit of the scores on the instances' mask bits.

    The score of z_i is a difference between two sub-networks chosen by its mask alone; the part a
    linear function of the mask bits explains is sub-network quality, not anything about z_i.
    """
    n = len(scores)
    cols = [np.ones((n, 1))] + [(m > 0).astype(np.float64) for m in td.masks(np.arange(n)).values()]
    X = np.concatenate(cols, axis=1)
    beta = np.linalg.lstsq(X, scores, rcond=None)[0]
    resid = scores - X @ beta
    return float(1.0 - resid.var() / max(scores.var(), 1e-300)), resid


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-ds", "--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("-m", "--model", default="mlp", choices=["cnn6", "mlp"])
    p.add_argument("-e", "--epochs", type=positive_int, default=20)
    p.add_argument("-bs", "--batch-size", type=positive_int, default=32)
    p.add_argument("-lr", "--learning-rate", type=positive_float, default=0.05)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--n-train", type=positive_int, default=2000)
    p.add_argument("--n-val", type=positive_int, default=1000)
    p.add_argument("--n-test", type=positive_int, default=1000)
    p.add_argument("--noise", type=positive_float, default=0.1, help="fraction of training labels flipped")
    p.add_argument("--top", type=positive_float, default=0.1, help="fraction inspected (most harmful)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--td-layers", nargs="+", default=None)
    p.add_argument("-c", "--context", choices=["cpu", "cudnn"], default=None)
    p.add_argument("-o", "--output", default="output_turnover_mislabel")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    if not 0 < a.noise < 1 or not 0 < a.top < 1:
        raise UserError("--noise and --top must be fractions between 0 and 1")
    from common.context import set_context
    set_context(a.context)
    try:
        layers = resolve_layers(a.model, MODELS[a.model].mask_points, a.td_layers)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    clean = load_dataset(a.dataset, a.seed, data_dir=a.data_dir, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test)
    data, flipped = flip_labels(clean, a.noise, a.seed)
    cfg = TrainConfig(model=a.model, epochs=a.epochs, batch_size=a.batch_size, lr=a.learning_rate,
                      augment=not a.no_augment)
    trace = make_schedule(len(data.train), cfg.epochs, cfg.batch_size, cfg.lr, a.seed)
    out = Path(a.output)

    t0 = time.time()
    td, curve = train_turnover(cfg, data, trace, a.seed, layers, show_progress=not a.no_progress)
    t_train = time.time() - t0
    t0 = time.time()
    scores = validation_influence(td, data, show_progress=not a.no_progress)
    t_infl = time.time() - t0
    own, flip_loss, _ = instance_losses(td, data, np.arange(len(data.train)))
    self_infl = flip_loss - own  # L(f^m~(z), z) - L(f^m(z), z): large = z memorised by its own half

    n = len(data.train)
    k = int(round(a.top * n))
    worst = np.lexsort((np.arange(n), scores))[:k]
    td_hits = int(flipped[worst].sum())
    random_order = np.argsort(np.random.default_rng([a.seed, 7]).random(n), kind="stable")[:k]
    random_hits = int(flipped[random_order].sum())
    expected = k * flipped.mean()
    self_hits = int(flipped[np.lexsort((np.arange(n), -self_infl))[:k]].sum())
    r2, resid = mask_explained(td, scores)
    resid_hits = int(flipped[np.lexsort((np.arange(n), resid))[:k]].sum())
    result = {
        "dataset": a.dataset, "model": a.model, "layers": list(layers), "epochs": a.epochs,
        "augment": not a.no_augment, "n_train": n, "n_val": len(data.val), "seed": a.seed,
        "n_flipped": int(flipped.sum()), "top_k": k,
        "flipped_in_td_top": td_hits, "flipped_in_random_top": random_hits, "expected_random": expected,
        "ratio_td_over_random": td_hits / max(random_hits, 1e-9),
        "auc_td_harmful": auc(-scores[flipped], -scores[~flipped]),
        "flipped_in_self_influence_top": self_hits,
        "score_variance_explained_by_mask_bits": r2, "flipped_in_mask_residual_top": resid_hits,
        "final_own_mask_loss_clean": float(own[~flipped].mean()), "final_flipped_mask_loss_clean": float(flip_loss[~flipped].mean()),
        "final_own_mask_loss_mislabeled": float(own[flipped].mean()),
        "final_flipped_mask_loss_mislabeled": float(flip_loss[flipped].mean()),
        "final_val_loss": float(curve["val_loss"].iloc[-1]),
        "final_val_loss_random_mask": float(curve["val_loss_random_mask"].iloc[-1]),
        "mean_influence_flipped": float(scores[flipped].mean()), "mean_influence_clean": float(scores[~flipped].mean()),
        "td_val_accuracy": float(curve["val_accuracy"].iloc[-1]), "td_test_accuracy": float(curve["test_accuracy"].iloc[-1]),
        "seconds_td_train": round(t_train, 2), "seconds_influence": round(t_infl, 2),
        "criterion_met": bool(td_hits >= 2 * max(random_hits, expected)),
    }
    write_influence_csv(out / f"influence_turnover_dropout_{a.seed}.csv",
                        influence_frame(data.train.ids, data.train.labels, scores, noisy=flipped))
    write_csv_atomic(out / f"turnover_loss_curve_{a.seed}.csv", curve)
    plot_loss_curve(curve, out / f"turnover_loss_curve_{a.seed}.png",
                    f"{a.dataset} {n} ({int(flipped.sum())} labels flipped; training losses at the noisy labels)\n"
                    f"{a.model}, turn-over dropout on {'+'.join(layers)}")
    write_text_atomic(out / f"mislabel_check_{a.seed}.json", json.dumps(result, indent=1))
    for key, v in result.items():
        print(f"{key}: {v}")
    return 0 if result["criterion_met"] else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
