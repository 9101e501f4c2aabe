"""How noisy is the leave-one-out ground truth of ``--validate``? (finished run, seed 0)

Replays the last epoch of a finished run from its start-of-last-epoch parameters after
multiplying every trainable parameter by ``1 + eps * N(0, 1)`` (``nudge_parameters``) (eps 1e-7: float32 rounding
level), a few times, and reports the change of the mean validation loss. If training amplified
nothing, these changes would be ~1e-7 of the loss; where they are as large as the effect of
leaving one sample out, the "actual" change of a single retraining carries that much noise,
whatever the estimator. With ``summary/validation_pairs.csv`` present it also simulates the
Kendall's tau a perfect estimator would reach against truths with that noise.

    .venv/bin/python bench/loo_noise_floor.py OUTPUT_DIR [--data-dir DIR] [--eps 1e-7] [--repeats 6]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--eps", type=float, default=1e-7)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--data-dir", help="where the run's dataset files are (as given to the run)")
    args = ap.parse_args()
    import pandas as pd
    from scipy import stats

    import cleansing.cli  # noqa: F401  (quiet nnabla)
    from cleansing.config import make_config
    from cleansing.paths import RunPaths
    from cleansing.train import TrainConfig, learner_from_file, load_trace, run_steps
    from cleansing.trial import load_trial_data
    from cleansing.validate import nudge_parameters
    from datasets.batches import split_batches

    out = Path(args.out)
    m = json.loads((out / "manifest.json").read_text())
    train = TrainConfig(model=m["model"], epochs=m["epochs"], batch_size=m["batch_size"], lr=m["lr"],
                        augment=m["augment"])
    cfg = make_config(dataset=m["dataset"], train=train, data_dir=args.data_dir, n_train=m["n_train"],
                      n_val=m["n_val"], n_test=m["n_test"], label_noise=m["label_noise"])
    paths, seed = RunPaths(out), 0
    data = load_trial_data(cfg, seed)
    trace = load_trace(paths.trace(seed), len(data.train))
    steps = trace.last_epoch_steps()
    none_removed = np.zeros(len(data.train), bool)

    def replay(eps: float, rs_seed: int) -> float:
        learner = learner_from_file(cfg.train, data, paths.params(seed, "start_last_epoch"))
        nudge_parameters(learner, eps, [seed, rs_seed])
        run_steps(learner, data, trace, steps, cfg.train.augment, removed=none_removed)
        return learner.evaluate(split_batches(data, data.val))[0]

    base = replay(0.0, 0)
    changes = np.array([replay(args.eps, r) - base for r in range(1, args.repeats + 1)])
    res = {"eps": args.eps, "changes": changes.tolist(), "std": float(changes.std(ddof=1)),
           "mean": float(changes.mean())}
    pairs = out / "summary" / "validation_pairs.csv"
    if pairs.is_file():
        d = pd.read_csv(pairs)
        a = d[d.method == d.method.iloc[0]].actual.to_numpy()
        noise = res["std"]
        shrink = np.sqrt(max(0.0, 1.0 - noise ** 2 / a.var()))
        signal = a.mean() + (a - a.mean()) * shrink
        rs = np.random.RandomState(0)
        taus = [stats.kendalltau(signal, signal + noise * rs.randn(len(a)))[0] for _ in range(200)]
        res.update(actual_std=float(a.std()), n_pairs=len(a), kendall_ceiling=float(np.mean(taus)))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
