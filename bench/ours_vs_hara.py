"""How closely Ours follows Hara: per trial, the Pearson and Spearman correlation of the two
influence CSVs of a run folder and the ratio of their norms, and optionally the norm of the
recursion's ``u`` step by step for both (``--norms SEED``: the growth of ``u <- u - lr H_t u`` at the
final parameters, which Ours uses, against the per-step parameters, which Hara uses).

    .venv/bin/python bench/ours_vs_hara.py docs/reproduction/cpu/runs/claim1_mnist_bs32
    .venv/bin/python bench/ours_vs_hara.py /work/runs/ours_logreg --norms 1 -- -ds digits -m logreg -e 3 -nt 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def scores(run: Path, method: str, seed: int) -> np.ndarray:
    f = run / "influence" / method / f"influence_{method.lower()}_{seed}.csv"
    return pd.read_csv(f).sort_values("datasource_index").influence.to_numpy()


def agreement(run: Path) -> pd.DataFrame:
    seeds = sorted(int(f.stem.rsplit("_", 1)[1]) for f in (run / "influence" / "Hara").glob("influence_hara_*.csv"))
    rows = []
    for s in seeds:
        h, o = scores(run, "Hara", s), scores(run, "Ours", s)
        rows.append({"seed": s, "pearson": stats.pearsonr(h, o)[0], "spearman": stats.spearmanr(h, o)[0],
                     "norm_ratio": float(np.linalg.norm(o) / np.linalg.norm(h))})
    return pd.DataFrame(rows)


def recursion_norms(run: Path, seed: int, driver_args: list) -> pd.DataFrame:
    """||u|| after each step of the last epoch (last to first) with Hara's and with Ours' parameters."""
    sys.path.insert(0, str(ROOT))
    import eval_sgd_influence as driver
    from cleansing.trial import trial_context
    from datasets.batches import training_batch
    from estimators import REGISTRY
    cfg = driver.DRIVER.config(driver_args + ["-o", str(run), "--methods", "Hara", "Ours"], REGISTRY)
    trial = trial_context(cfg, seed)
    learner, final = trial.learner, trial.learner.state()
    out = {}
    for name, state_at in (("Hara", trial.step_params), ("Ours", lambda t: final)):
        u, u_stats, norms = {k: np.asarray(v, np.float64) for k, v in trial.u.items()}, dict(trial.u_stats), []
        for t in trial.trace.last_epoch_steps()[::-1]:
            learner.set_state(state_at(int(t)))
            x, y = training_batch(trial.data, *trial.trace.batch(int(t)), cfg.train.augment)
            _, u, u_stats = learner.step_backward(x, y, float(trial.trace.lr[t]), u, u_stats)
            norms.append(float(np.sqrt(sum(np.square(v).sum() for v in u.values()))))
        out[name] = norms
    learner.set_state(final)
    return pd.DataFrame(out).rename_axis("steps_back").reset_index()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--norms", type=int, metavar="SEED", help="also ||u|| step by step for this trial")
    a, rest = p.parse_known_args()
    a.driver_args = [x for x in rest if x != "--"]  # the run's flags (with --norms), after --
    table = agreement(a.run)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"median Spearman {table.spearman.median():.3f}, median norm ratio {table.norm_ratio.median():.3g}")
    if a.norms is not None:
        norms = recursion_norms(a.run, a.norms, a.driver_args)
        rows = sorted({0, 1, 2, 3, 5, 10, 20, len(norms) - 1} & set(range(len(norms))))
        print(norms.iloc[rows].to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
