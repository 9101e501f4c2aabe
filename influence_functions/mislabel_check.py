"""Do influence functions find mislabeled training samples? A check on MNIST with flipped labels.

Flips a fraction of the training labels (seeded; each to a different class), trains, computes the
influence-function scores (SPEC sign: negative = harmful) and counts the flipped samples among the
most harmful fraction, against a random selection and against the original example's (negated)
sign. Validation and test labels stay clean, so a mislabeled training sample raises the
validation loss and removing it should look harmful-to-keep (negative influence).

    python -m influence_functions.mislabel_check --data-dir /work/shared/datasets/mnist -m mlp

Training uses ``sgd_influence.train`` (same schedule and SGD step as the pipeline).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import numpy as np

from common.cli import nonneg_int, positive_float, positive_int, run_main
from datasets import DataBundle, Split, load_dataset
from sgd_influence.infl import validation_loss_grad
from sgd_influence.trace import make_schedule
from sgd_influence.train import TrainConfig, evaluate_splits, new_learner, run_steps

from .estimator import default_damping, influence_functions
from .solvers import SOLVERS, SolverOptions


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int, seed: int):
    """(new labels, bool mask of flipped positions): ``round(fraction * n)`` samples, each moved to
    a uniformly drawn *different* class."""
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    rng = np.random.default_rng([seed, 1013])
    k = int(round(fraction * n))
    idx = rng.choice(n, size=k, replace=False)
    new = labels.copy()
    new[idx] = (labels[idx] + rng.integers(1, num_classes, size=k)) % num_classes
    flipped = np.zeros(n, bool)
    flipped[idx] = True
    return new, flipped


def with_train_labels(data: DataBundle, labels: np.ndarray) -> DataBundle:
    tr = data.train
    return DataBundle(data.name, Split(tr.images, labels, tr.ids), data.val, data.test, data.num_classes,
                      data.mean, data.std)


def most_harmful(scores: np.ndarray, k: int) -> np.ndarray:
    """The k lowest scores (ties by position), as the influence CSV orders them."""
    return np.lexsort((np.arange(len(scores)), scores))[:k]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-ds", "--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("-m", "--model", default="mlp", choices=["cnn6", "logreg", "mlp"])
    p.add_argument("--n-train", type=positive_int, default=2000)
    p.add_argument("--n-val", type=positive_int, default=None)
    p.add_argument("--n-test", type=positive_int, default=None)
    p.add_argument("-e", "--epochs", type=positive_int, default=10)
    p.add_argument("-bs", "--batch-size", type=positive_int, default=32)
    p.add_argument("-lr", "--learning-rate", type=positive_float, default=0.05)
    p.add_argument("--augment", action="store_true", help="train with random crop and flip (default: off)")
    p.add_argument("--flip", type=float, default=0.1, help="fraction of training labels flipped (default 0.1)")
    p.add_argument("--top", type=float, default=0.1, help="fraction inspected, most harmful first (default 0.1)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--damping", type=positive_float, default=None)
    p.add_argument("--solver", choices=SOLVERS, default="minres")
    p.add_argument("--cg-iters", type=positive_int, default=50, help="cg, minres: most iterations")
    p.add_argument("-c", "--context", choices=["cpu", "cudnn"], default=None)
    p.add_argument("-di", "--device-id", type=nonneg_int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    from common.context import set_context
    set_context(a.context, a.device_id)
    t0 = time.time()
    data = load_dataset(a.dataset, a.seed, data_dir=a.data_dir, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test)
    labels, flipped = flip_labels(data.train.labels, a.flip, data.num_classes, a.seed)
    data = with_train_labels(data, labels)
    n = len(data.train)
    print(f"{a.dataset}: {n} training samples ({int(flipped.sum())} labels flipped), {len(data.val)} validation, "
          f"{len(data.test)} test; model {a.model}")

    cfg = TrainConfig(model=a.model, epochs=a.epochs, batch_size=a.batch_size, lr=a.learning_rate,
                      augment=a.augment)
    trace = make_schedule(n, cfg.epochs, cfg.batch_size, cfg.lr, a.seed)
    learner = new_learner(cfg, data, a.seed)
    for epoch in range(cfg.epochs):
        loss = run_steps(learner, data, trace, trace.epoch_steps(epoch), cfg.augment)
        s = evaluate_splits(learner, data)
        print(f"epoch {epoch + 1:2d}: train loss {loss:.4f}  val loss {s['val_loss']:.4f}  "
              f"val acc {s['val_accuracy']:.4f}  test acc {s['test_accuracy']:.4f}")
    t_train = time.time() - t0

    damping = default_damping(a.dataset) if a.damping is None else a.damping
    u = validation_loss_grad(learner, data)
    t1 = time.time()
    scores, info = influence_functions(learner, data, u, damping, SolverOptions(solver=a.solver, cg_iters=a.cg_iters),
                                       batch_size=a.batch_size, seed=a.seed, show_progress=not a.no_progress)
    t_infl = time.time() - t1
    print(f"solver {info.solver}: damping {damping:g}, {info.iterations} iterations, relative residual "
          f"{info.residual:.3g}" + (f" ({info.note})" if info.note else "")
          + f"; training {t_train:.1f} s, influence {t_infl:.1f} s")

    k = int(round(a.top * n))
    expected = k * flipped.mean()
    rand = np.random.default_rng([a.seed, 4242]).permutation(n)[:k]
    ours = int(flipped[most_harmful(scores, k)].sum())
    original = int(flipped[most_harmful(-scores, k)].sum())
    drawn = int(flipped[rand].sum())
    print(f"flipped samples among the {k} most harmful ({a.top:.0%}):")
    print(f"  Influence_functions (this project's sign): {ours}")
    print(f"  original example's sign (negated):         {original}")
    print(f"  random {k}: expected {expected:.1f}, one seeded draw {drawn}")
    print(f"  mean influence: flipped {scores[flipped].mean():.3e}, clean {scores[~flipped].mean():.3e}")
    ok = ours >= 2 * expected and original < 2 * expected
    print(("PASS" if ok else "FAIL") + f": Influence_functions finds {ours / max(expected, 1e-12):.2f}x the random "
          f"rate, the original sign {original / max(expected, 1e-12):.2f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
