"""Confident learning (cleanlab) as a reference ranking of suspicious labels, on the trials of a run.

For each trial of a run made with ``--label-noise`` (same flags, so the same flipped labels), the
training set is split into K stratified folds; cnn6 (or the run's model) is trained on K - 1 folds
with the run's training (epochs, lr, batch, augmentation: the project's own trace and SGD step) and
predicts class probabilities for the held-out fold. cleanlab then ranks every sample by its label
quality (``cleanlab.rank.get_label_quality_scores``, self-confidence, lowest first) and flags label
issues (``cleanlab.filter.find_label_issues``). cleanlab is not a dependency of the tool: the
probabilities are computed here with the project's environment and written to ``<work>/probs_seed_<k>.npz``;
``--score`` runs in an environment that has cleanlab (e.g. ``python -m venv /work/venv_cleanlab &&
/work/venv_cleanlab/bin/pip install cleanlab``) and writes ``<work>/cleanlab.csv``.

    .venv/bin/python bench/cleanlab_reference.py --work /work/runs/cleanlab35 --folds 5 -- \\
        -ds mnist --data-dir ../shared/datasets/mnist --n-train 2000 --n-val 2000 --label-noise 0.1 -nt 3
    /work/venv_cleanlab/bin/python bench/cleanlab_reference.py --work /work/runs/cleanlab35 --score
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHECKED = (0.05, 0.10, 0.20)


def probabilities(work: Path, folds: int, driver_args: list, only: Optional[int] = None, from_last: bool = False
                  ) -> None:
    """Out-of-fold class probabilities of every trial's training samples (resumes per fold; ``from_last``:
    the folds last first, so that a second process on the same trial meets the first halfway)."""
    sys.path.insert(0, str(ROOT))
    from sklearn.model_selection import StratifiedKFold

    import eval_sgd_influence as driver
    from cleansing.trace import make_schedule
    from cleansing.train import new_learner, run_steps
    from cleansing.trial import load_noisy_trial_data
    from common.fileio import atomic_path
    from datasets.batches import split_batches
    from estimators import REGISTRY
    from models.per_sample import TapGraph

    cfg = driver.DRIVER.config(driver_args + ["-o", str(work / "unused")], REGISTRY)
    work.mkdir(parents=True, exist_ok=True)
    for seed in cfg.seeds if only is None else [only]:
        out = work / f"probs_seed_{seed}.npz"
        if out.is_file():
            continue
        data, noisy, true = load_noisy_trial_data(cfg, seed)
        n = len(data.train)
        probs = np.full((n, data.num_classes), np.nan)
        t0 = time.time()
        splits = list(enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(n),
                                                                                               data.train.labels)))
        for k, (fit, held) in reversed(splits) if from_last else splits:
            part = work / f"probs_seed_{seed}_fold_{k}.npy"
            if part.is_file():
                probs[held] = np.load(part)
                continue
            sub = dataclasses.replace(data, train=data.train.subset(fit))
            trace = make_schedule(len(fit), cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, 1000 * seed + k)
            learner = new_learner(cfg.train, sub, 1000 * seed + k)
            run_steps(learner, sub, trace, range(trace.n_steps), cfg.train.augment, report=False)
            held_data = dataclasses.replace(data, train=data.train.subset(held))
            graph = None
            rows = []
            for x, _ in split_batches(held_data, held_data.train, 256):
                if graph is None or len(x) != graph.x.shape[0]:
                    graph = TapGraph(learner, len(x))
                rows.append(graph.forward(x))
            with atomic_path(part) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, np.concatenate(rows))
            probs[held] = np.load(part)
            print(f"seed {seed} fold {k + 1}/{folds}: trained on {len(fit)}, {time.time() - t0:.0f} s", flush=True)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, probs=probs, labels=data.train.labels, noisy=noisy, true=true,
                         seconds=time.time() - t0, folds=folds)


def score(work: Path) -> None:
    """``cleanlab.csv``: per trial, the flipped labels found in the first 5/10/20% of cleanlab's
    label-quality ranking and the precision and recall of its flagged issues."""
    import cleanlab
    import pandas as pd
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    rows = []
    for f in sorted(work.glob("probs_seed_*.npz")):
        if "_fold_" in f.name:
            continue
        z = np.load(f)
        probs, labels, noisy = z["probs"], z["labels"].reshape(-1), z["noisy"].astype(bool)
        order = np.argsort(get_label_quality_scores(labels, probs), kind="stable")
        found = np.cumsum(noisy[order]) / noisy.sum()
        flagged = find_label_issues(labels, probs)
        row = {"seed": int(f.stem.split("_")[-1]), "n": len(labels), "flipped": int(noisy.sum()),
               **{f"found_at_{round(100 * c)}": float(found[int(np.floor(c * len(labels) + 0.5)) - 1])
                  for c in CHECKED},
               "flagged": int(flagged.sum()), "flagged_precision": float(noisy[flagged].mean()),
               "flagged_recall": float(noisy[flagged].sum() / noisy.sum()), "folds": int(z["folds"]),
               "seconds": float(z["seconds"]), "cleanlab": cleanlab.__version__}
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(work / "cleanlab.csv", index=False)
    print(table.to_string(index=False))
    print(json.dumps({k: float(table[k].mean()) for k in table.columns if k.startswith("found_at")}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--score", action="store_true", help="rank with cleanlab (its own environment)")
    p.add_argument("--seed", type=int, help="only this trial (to share the trials between processes)")
    p.add_argument("--from-last", action="store_true", help="the folds last first (a second process on one trial)")
    p.add_argument("driver_args", nargs="*", help="the run's flags, after --")
    a = p.parse_args()
    if a.score:
        score(a.work)
    else:
        probabilities(a.work, a.folds, a.driver_args, a.seed, a.from_last)


if __name__ == "__main__":
    main()
