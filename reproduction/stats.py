"""Pure statistics of the reproduction study (no file I/O): paired comparisons over trials and verdicts.

Every comparison is *paired by trial*: trial k of method A and trial k of method B share the seed,
the train/validation split, the initialisation and the batch order, so the difference
``d_k = A_k - B_k`` removes what the trials share. For ``n`` paired trials:

* mean ``d_bar = sum(d_k) / n``, standard deviation ``s = sqrt(sum((d_k - d_bar)^2) / (n - 1))``;
* 95% interval ``d_bar +- t_{0.975, n-1} * s / sqrt(n)`` (Student t);
* paired t-test p-value (``scipy.stats.ttest_rel``, two-sided) and Wilcoxon signed-rank p-value
  (``scipy.stats.wilcoxon``, two-sided, zero differences dropped);
* minimal detectable effect ``MDE = (t_{0.975, n-1} + t_{0.80, n-1}) * s / sqrt(n)``: the true mean
  difference a two-sided paired t-test at 5% would find with 80% power, given the observed ``s``;
* trials needed to resolve ``delta``: the smallest ``m`` with ``MDE(m) <= delta`` at the observed ``s``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats

NO_REMOVAL = "No_Removal"
RANDOM = "Random"
ALPHA = 0.05
POWER = 0.80
METRICS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss")


@dataclass(frozen=True)
class Paired:
    """Paired difference A - B over ``n`` trials (see the module doc for the formulas)."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    p_t: float
    p_wilcoxon: float
    mde: float

    def as_dict(self, prefix: str = "") -> Dict[str, float]:
        """The fields as a flat dict, keys prefixed (for table rows)."""
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


NAN_PAIRED = Paired(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, sample standard deviation with ddof=1); sd is NaN for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


def paired_difference(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA, power: float = POWER) -> Paired:
    """Paired comparison of ``a - b`` (same length, element k = trial k): mean, sd, (1 - alpha)
    t interval, paired t p-value, Wilcoxon signed-rank p-value, MDE at ``power``. Fewer than 2
    pairs give NaN statistics; Wilcoxon is NaN when every difference is 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    d = a - b
    n = int(d.size)
    if n < 2:
        m = float(d.mean()) if n else math.nan
        return Paired(n, m, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    tcrit = float(stats.t.ppf(1 - alpha / 2, n - 1))
    if sd == 0:
        p_t = 1.0 if mean == 0 else 0.0
    else:
        p_t = float(stats.ttest_rel(a, b).pvalue)
    if np.any(d != 0):
        p_w = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    else:
        p_w = math.nan
    return Paired(n, mean, sd, mean - tcrit * se, mean + tcrit * se, p_t, p_w, float(mde(sd, n, alpha, power)))


def mde(sd: float, n, alpha: float = ALPHA, power: float = POWER):
    """``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)`` (``n`` a count or an array of counts)."""
    n = np.asarray(n)
    return (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / np.sqrt(n)


def trials_needed(sd: float, delta: float, alpha: float = ALPHA, power: float = POWER, most: int = 10**6) -> float:
    """The smallest number of paired trials ``m >= 2`` whose ``mde(sd, m)`` is at most ``delta``, for a
    spread ``sd`` of the paired differences; NaN when ``sd`` is NaN, inf beyond ``most``."""
    if math.isnan(sd):
        return math.nan
    hi = 2  # mde falls with m: double to a count that resolves delta, then take the first in range
    while mde(sd, hi, alpha, power) > delta:
        if hi >= most:
            return math.inf
        hi = min(2 * hi, most)
    m = np.arange(max(2, hi // 2), hi + 1)
    return float(m[np.flatnonzero(mde(sd, m, alpha, power) <= delta)[0]])


def _by_seed(scores: pd.DataFrame, method: str, n: int, metric: str) -> pd.Series:
    sel = scores[(scores.method == method) & (scores.n_drops == n)]
    return sel.set_index("seed")[metric].sort_index()


def paired_by_seed(scores: pd.DataFrame, a: Tuple[str, int], b: Tuple[str, int], metric: str) -> Paired:
    """``paired_difference`` of ``metric`` between (method, n) ``a`` and ``b``, over the seeds both have.

    ``scores`` has one row per (method, n_drops, seed) with the metric columns (as
    ``cleansing.analyze.collect_scores`` returns)."""
    x, y = _by_seed(scores, *a, metric), _by_seed(scores, *b, metric)
    common = x.index.intersection(y.index)
    return paired_difference(x.loc[common].to_numpy(), y.loc[common].to_numpy())


def baseline_of(scores: pd.DataFrame) -> Tuple[str, int]:
    """The No Removal entry of a score table: (``No_Removal``, 0) when present, else (first method, 0)."""
    if ((scores.method == NO_REMOVAL) & (scores.n_drops == 0)).any():
        return NO_REMOVAL, 0
    zero = scores[scores.n_drops == 0]
    if len(zero):
        return str(zero.method.iloc[0]), 0
    raise ValueError("no n = 0 (No Removal) scores to compare with")


def comparison_table(
    scores: pd.DataFrame,
    metrics: Iterable[str] = ("test_accuracy", "test_loss"),
    pair: Tuple[str, str] = ("Ours", "Hara"),
) -> pd.DataFrame:
    """One row per (metric, method, n > 0): trials, mean and sd of the metric, and the paired
    differences against No Removal (``base_*``), against Random at the same n (``rand_*``; NaN for
    Random itself) and, for ``pair[0]``, against ``pair[1]`` at the same n (``pair_*``)."""
    base = baseline_of(scores)
    rows: List[dict] = []
    methods = sorted(m for m in scores.method.unique() if m != NO_REMOVAL)
    ns = sorted(int(n) for n in scores.n_drops.unique() if n > 0)
    for metric in metrics:
        for method in methods:
            for n in ns:
                vals = _by_seed(scores, method, n, metric)
                if vals.empty:
                    continue
                mean, sd = mean_sd(vals.to_numpy())
                row = {
                    "metric": metric,
                    "method": method,
                    "n_drops": n,
                    "trials": int(vals.size),
                    "mean": mean,
                    "sd": sd,
                }
                row.update(paired_by_seed(scores, (method, n), base, metric).as_dict("base_"))
                rand = (
                    paired_by_seed(scores, (method, n), (RANDOM, n), metric)
                    if method != RANDOM and (scores.method == RANDOM).any()
                    else NAN_PAIRED
                )
                row.update(rand.as_dict("rand_"))
                other = (
                    paired_by_seed(scores, (method, n), (pair[1], n), metric)
                    if method == pair[0] and (scores.method == pair[1]).any()
                    else NAN_PAIRED
                )
                row.update(other.as_dict("pair_"))
                rows.append(row)
    return pd.DataFrame(rows)


def baseline_row(scores: pd.DataFrame, metric: str) -> Dict[str, float]:
    """Trials, mean and sd of ``metric`` with nothing removed."""
    vals = _by_seed(scores, *baseline_of(scores), metric)
    mean, sd = mean_sd(vals.to_numpy())
    return {"trials": int(vals.size), "mean": mean, "sd": sd}


# ---------------------------------------------------------------------------- verdicts
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced at this scale"
INCONCLUSIVE = "inconclusive"
PENDING = "pending"  # no complete trial yet: no verdict


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict (one of the three labels) and the reason, written from the numbers."""

    label: str
    reason: str


def _ci(p: Paired, scale: float = 100.0, unit: str = " pp") -> str:
    return f"{scale * p.mean:+.2f}{unit} [{scale * p.ci_low:+.2f}, {scale * p.ci_high:+.2f}]"


def gain_verdict(
    gain: Paired, vs_random: Paired, random_gain: Paired, parity: Optional[Paired], delta: float, what: str = "Ours"
) -> Verdict:
    """Verdict on "removing the most harmful by ``what`` raises test accuracy, random removal does
    not (and ``what`` does as well as the reference)", from paired accuracy differences (fractions):

    * ``gain``: what - No Removal; ``vs_random``: what - Random; ``random_gain``: Random - No Removal;
      ``parity``: what - reference (or None); ``delta``: the smallest gain worth resolving.
    * reproduced: ``gain`` and ``vs_random`` intervals lie above 0;
    * not reproduced at this scale: the ``gain`` interval lies below ``delta`` (a gain of ``delta``
      or more is excluded) or ``vs_random`` lies below ``delta`` while entirely excluding 0 from above,
      i.e. the study could see ``delta`` and did not;
    * inconclusive: otherwise (the gain's interval, or the margin over Random's, still holds both 0
      and ``delta``), with the MDE and the trials the unresolved comparison would need at its
      observed spread (``trials_needed``).
    """
    if gain.n < 2 or math.isnan(gain.ci_low):
        return Verdict(INCONCLUSIVE, f"only {gain.n} paired trial(s): no interval")
    parts = [
        f"{what} - No Removal {_ci(gain)} (p_t {gain.p_t:.3g}, Wilcoxon {gain.p_wilcoxon:.3g})",
        f"{what} - Random {_ci(vs_random)}",
        f"Random - No Removal {_ci(random_gain)}",
    ]
    if parity is not None and parity.n >= 2:
        parts.append(f"{what} - Hara {_ci(parity)}")
    detail = "; ".join(parts) + f"; n = {gain.n} trials, MDE {100 * gain.mde:.2f} pp"
    if gain.ci_low > 0 and vs_random.ci_low > 0:
        return Verdict(REPRODUCED, f"the gain and the margin over Random are above 0: {detail}")
    if gain.ci_high < delta:
        return Verdict(NOT_REPRODUCED, f"a gain of {100 * delta:.2f} pp or more is excluded: {detail}")
    if gain.ci_low > 0 and vs_random.ci_high < delta:
        return Verdict(
            NOT_REPRODUCED, f"accuracy rises, but not by {100 * delta:.2f} pp more than random removal: {detail}"
        )
    if gain.ci_low > 0:  # the gain is shown; the margin over Random is not resolved
        return Verdict(
            INCONCLUSIVE,
            f"accuracy rises (the gain's interval is above 0), but the margin over Random holds both 0 and "
            f"{100 * delta:.2f} pp: {detail}; {_needed(vs_random, delta, f'{what} - Random')}",
        )
    return Verdict(
        INCONCLUSIVE,
        f"the gain's interval holds both 0 and {100 * delta:.2f} pp "
        f"(effects below the MDE cannot be told from noise): {detail}; "
        f"{_needed(gain, delta, f'{what} - No Removal')}",
    )


def _needed(p: Paired, delta: float, what: str) -> str:
    m = trials_needed(p.sd, delta)
    if math.isnan(m):
        return f"the trials {what} needs to resolve {100 * delta:.2f} pp are unknown (no spread)"
    count = "over a million" if math.isinf(m) else f"{int(m):,}"
    return (
        f"resolving {100 * delta:.2f} pp of {what} at its observed spread (sd {100 * p.sd:.2f} pp) "
        f"takes {count} trials"
    )


def parity_text(parity: Paired, delta: float) -> str:
    """ "As well as Hara": equivalent within ``delta`` when the Ours - Hara interval lies inside
    (-delta, delta); different when it excludes 0; else not resolved."""
    if parity.n < 2 or math.isnan(parity.ci_low):
        return "not measured"
    if -delta < parity.ci_low and parity.ci_high < delta:
        return f"equivalent within {100 * delta:.2f} pp ({_ci(parity)})"
    if parity.ci_low > 0 or parity.ci_high < 0:
        return f"different ({_ci(parity)})"
    return f"no difference found, but not resolved to {100 * delta:.2f} pp ({_ci(parity)})"


def correlation(x: Sequence[float], y: Sequence[float]) -> Dict[str, float]:
    """Pearson r and Spearman rho (with scipy's p-values), and the least-squares slope of y on x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return {
            "n": int(x.size),
            "pearson": math.nan,
            "pearson_p": math.nan,
            "spearman": math.nan,
            "spearman_p": math.nan,
            "slope": math.nan,
        }
    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    return {
        "n": int(x.size),
        "pearson": float(pr[0]),
        "pearson_p": float(pr[1]),
        "spearman": float(sr[0]),
        "spearman_p": float(sr[1]),
        "slope": float(stats.linregress(x, y).slope),
    }


def clustered_correlation(x: Sequence[float], y: Sequence[float], clusters: Sequence[int], boot: int = 2000,
                          seed: int = 0, level: float = 0.95) -> Dict[str, float]:
    """``correlation`` of the pairs, with percentile intervals (``<key>_low``/``<key>_high`` for
    pearson, spearman, slope) from a cluster bootstrap: whole clusters (the trials) are resampled with
    replacement, so the pairs of one trial, which share a training and a No Removal model, are not
    treated as independent. ``clusters``: the count of distinct clusters is ``out['clusters']``."""
    x, y, c = np.asarray(x, dtype=float), np.asarray(y, dtype=float), np.asarray(clusters)
    out: Dict[str, float] = dict(correlation(x, y))
    ids = np.unique(c)
    out["clusters"] = int(ids.size)
    members = [np.flatnonzero(c == k) for k in ids]
    rng = np.random.default_rng([seed, 532])
    keys = ("pearson", "spearman", "slope")
    draws: Dict[str, List[float]] = {k: [] for k in keys}
    for _ in range(boot if ids.size > 1 else 0):
        i = np.concatenate([members[k] for k in rng.integers(0, ids.size, ids.size)])
        r = correlation(x[i], y[i])
        for k in keys:
            if np.isfinite(r[k]):
                draws[k].append(r[k])
    tail = 100 * (1 - level) / 2
    for k in keys:
        low, high = np.percentile(draws[k], [tail, 100 - tail]) if draws[k] else (math.nan, math.nan)
        out[f"{k}_low"], out[f"{k}_high"] = float(low), float(high)
    return out


def predicted_vs_actual(
    scores: pd.DataFrame, influence: Dict[Tuple[str, int], pd.DataFrame], estimator_for: Dict[str, str]
) -> pd.DataFrame:
    """Claim 5 pairs, one row per (method, seed, n > 0): ``predicted`` = sum of the estimator's
    influence over the n samples that method removed (its first n rows), ``actual`` = validation
    loss after retraining without them minus the No Removal validation loss of that seed.

    ``influence[(method, seed)]``: that method's influence CSV (sorted, most harmful first, with
    ``datasource_index`` and ``influence``); ``estimator_for[method]``: whose estimates predict the
    removal of ``method``'s samples (e.g. Random's random sets predicted by Ours)."""
    base = baseline_of(scores)
    rows = []
    for (method, seed), frame in influence.items():
        est = estimator_for.get(method)
        if est is None or (est, seed) not in influence:
            continue
        values = influence[(est, seed)].set_index("datasource_index")["influence"]
        b = scores[(scores.method == base[0]) & (scores.n_drops == base[1]) & (scores.seed == seed)]
        if b.empty:
            continue
        b_val = float(b.val_loss.iloc[0])
        for r in scores[(scores.method == method) & (scores.seed == seed) & (scores.n_drops > 0)].itertuples():
            removed = frame.datasource_index.to_numpy()[: int(r.n_drops)]
            rows.append(
                {
                    "method": method,
                    "estimator": est,
                    "seed": int(seed),
                    "n_drops": int(r.n_drops),
                    "predicted": float(values.loc[removed].sum()),
                    "actual": float(r.val_loss) - b_val,
                }
            )
    return pd.DataFrame(rows, columns=["method", "estimator", "seed", "n_drops", "predicted", "actual"])
