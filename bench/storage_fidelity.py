"""The storage-fidelity table (issue 37) from a finished ``--validate`` run of SGD-influence methods.

For one trial of a run made with ``-ra --validate K --validate-repeats R --methods Hara Ours
Hara_all_epochs`` it prints, per method: the cache it keeps at the paper's MNIST scale
(``sgd_influence.cache_table``), its influence stage's cost in training epochs of this run (the
stage's seconds over the median seconds of a training epoch, both from ``logs/timings_seed_<k>.csv``),
and its agreement with the actual leave-one-out changes (``summary/validation_pairs.csv``: the mean
of the R retrainings) as Spearman and Kendall with percentile bootstrap intervals over the validated
samples. The samples are shared by every method, so the difference of each method's Kendall from
Hara's is bootstrapped on the same draws (paired). The noise floor: the agreement of the first two
repeats' truths with each other (``logs/validation_actual_seed_<k>_repeat_<r>.csv``), which is what
a perfect estimator would reach against one retraining, and the Kendall a perfect estimator would
reach against the mean of R (simulated as in ``bench/loo_noise_floor.py``: the mean truth as the
signal plus Gaussian noise of the pooled single-retraining sd, ``sqrt(mean((a0 - a1)^2) / 2)``,
over sqrt(R); approximate, and high by the noise the mean truth still holds).

    .venv/bin/python bench/storage_fidelity.py RUN [--seed 0] [--boot 2000]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("Hara", "Hara_all_epochs", "Ours")  # also their rows in sgd_influence.cache_table
KEYS = ("spearman", "kendall")


def rank_agreement(x: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    """Spearman's rho and Kendall's tau-b of two score vectors (``cleansing.validate.agreement``)."""
    from cleansing.validate import agreement

    return {k: agreement(x, y)[k] for k in KEYS}


def bootstrap(columns: Dict[str, np.ndarray], truth: np.ndarray, reference: str, boot: int, seed: int,
              level: float = 0.95) -> pd.DataFrame:
    """Point values and percentile intervals of each column's agreement with ``truth``, and of its
    Kendall minus ``reference``'s, over samples drawn with replacement (one draw serves every column)."""
    rng = np.random.default_rng([seed, 37])
    n = len(truth)
    draws: Dict[str, List[Dict[str, float]]] = {m: [] for m in columns}
    for _ in range(boot):
        i = rng.integers(0, n, n)
        if np.ptp(truth[i]) == 0:
            continue
        for m, x in columns.items():
            draws[m].append(rank_agreement(x[i], truth[i]))
    tail = 100 * (1 - level) / 2
    ref = np.array([d["kendall"] for d in draws[reference]])
    rows = []
    for m, x in columns.items():
        row = {"method": m, "n": n, **rank_agreement(x, truth)}
        for k in KEYS:
            row[f"{k}_low"], row[f"{k}_high"] = np.nanpercentile([d[k] for d in draws[m]], [tail, 100 - tail])
        diff = np.array([d["kendall"] for d in draws[m]]) - ref
        row["kendall_minus_ref"] = row["kendall"] - rank_agreement(columns[reference], truth)["kendall"]
        row["kendall_minus_ref_low"], row["kendall_minus_ref_high"] = np.nanpercentile(diff, [tail, 100 - tail])
        rows.append(row)
    return pd.DataFrame(rows)


def epochs_cost(timings: pd.DataFrame, methods: List[str]) -> Dict[str, float]:
    """Each method's influence seconds over the median seconds of a training epoch before the last."""
    epoch = timings[(timings.stage == "train") & timings.method.str.match(r"epoch_\d+$")].seconds.median()
    infl = timings[timings.stage == "infl"].set_index("method").seconds
    return {m: float(infl[m] / epoch) for m in methods} | {"_epoch_s": float(epoch)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--boot", type=int, default=2000)
    args = ap.parse_args()
    from sgd_influence.cache_table import SETTINGS, build_table, cnn6_file_bytes

    pairs = pd.read_csv(args.run / "summary" / "validation_pairs.csv")
    pairs = pairs[pairs.seed == args.seed]
    wide = pairs.pivot(index="datasource_index", columns="method", values="estimate")
    truth = pairs.groupby("datasource_index").actual.first().loc[wide.index].to_numpy()
    methods = [m for m in METHODS if m in wide.columns]
    table = bootstrap({m: wide[m].to_numpy() for m in methods}, truth, "Hara", args.boot, args.seed)

    timings = pd.read_csv(args.run / "logs" / f"timings_seed_{args.seed}.csv")
    cost = epochs_cost(timings, methods)
    sizes = {key: cnn6_file_bytes(shape) for _, key, shape in SETTINGS}
    cache = build_table(sizes, 32, 20, with_replay=True)
    cache = cache[cache.dataset == "MNIST"].set_index("method")
    repeats = sorted((args.run / "logs").glob(f"validation_actual_seed_{args.seed}_repeat_*.csv"))

    print(f"run {args.run}, trial {args.seed}: {len(truth)} validated samples, truth = mean of "
          f"{int(pairs.repeats.iloc[0])} leave-one-out retrainings; a training epoch {cost['_epoch_s']:.1f} s "
          f"(median); intervals: 95% percentile bootstrap over samples, {args.boot} draws")
    print("| method | cache at the paper's MNIST scale | influence cost (training epochs) | Spearman | Kendall "
          "| Kendall minus Hara's |")
    print("| --- | ---: | ---: | --- | --- | --- |")
    for r in table.itertuples(index=False):
        gb = cache.loc[r.method, "GB"]
        size = f"{gb:.3g} GB" if gb >= 1 else f"{gb * 1000:.3g} MB"
        diff = ("" if r.method == "Hara" else
                f"{r.kendall_minus_ref:+.3f} [{r.kendall_minus_ref_low:+.3f}, {r.kendall_minus_ref_high:+.3f}]")
        print(f"| {r.method} | {size} | {cost[r.method]:.1f} | {r.spearman:.3f} [{r.spearman_low:.3f}, "
              f"{r.spearman_high:.3f}] | {r.kendall:.3f} [{r.kendall_low:.3f}, {r.kendall_high:.3f}] | {diff} |")
    if len(repeats) >= 2:
        a = [pd.read_csv(f).set_index("datasource_index").actual.loc[wide.index].to_numpy() for f in repeats[:2]]
        floor = bootstrap({"repeat 0": a[0]}, a[1], "repeat 0", args.boot, args.seed).iloc[0]
        print(f"noise floor: repeat 0 against repeat 1, Spearman {floor.spearman:.3f} "
              f"[{floor.spearman_low:.3f}, {floor.spearman_high:.3f}], Kendall {floor.kendall:.3f} "
              f"[{floor.kendall_low:.3f}, {floor.kendall_high:.3f}]")
        sd = float(np.sqrt(np.mean((a[0] - a[1]) ** 2) / 2))
        r = int(pairs.repeats.iloc[0])
        rng = np.random.default_rng([args.seed, 38])
        taus = [stats.kendalltau(truth, truth + sd / np.sqrt(r) * rng.standard_normal(len(truth)))[0]
                for _ in range(500)]
        print(f"single-retraining noise sd {sd:.2e} (truths' sd {truth.std():.2e}); a perfect estimator against "
              f"the mean of {r}: Kendall about {np.mean(taus):.3f} (5-95%: {np.percentile(taus, 5):.3f}-"
              f"{np.percentile(taus, 95):.3f})")


if __name__ == "__main__":
    main()
