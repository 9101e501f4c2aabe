"""How much of turn-over dropout's validation influence is the quality of the instance's half-mask?

Fits, by least squares, every instance's score on its own mask bits ``(1 - 2 m)`` at the masked
layer (one coefficient per unit plus an intercept): a score that measured the instance alone would
be unrelated to which units its random mask keeps. Prints the variance explained (in-sample and
cross-fitted over 10 folds) and, with label noise, how many flipped samples the 10% lowest scores
hold before and after removing the fitted part.

    .venv/bin/python bench/td_mask_quality.py OUTPUT_FOLDER [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import MODELS  # noqa: E402
from turnover_dropout.influence import mask_design  # noqa: E402
from turnover_dropout.masks import resolve_layers  # noqa: E402
from turnover_dropout.network import TDLearner  # noqa: E402


def masks_only(seed: int, model_name: str, layers) -> TDLearner:
    """A TD learner whose masks are those of the run (unit counts do not depend on the input size)."""
    model = MODELS[model_name]((1, 32, 32), 10)
    return TDLearner(model, model.create_parameters(np.random.RandomState(0)), layers, seed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.output)
    manifest = json.loads((out / "manifest.json").read_text())
    layers = resolve_layers(manifest["model"], MODELS[manifest["model"]].mask_points, manifest.get("td_layers"))
    f = pd.read_csv(out / "influence" / "Turnover_dropout" / f"influence_turnover_dropout_{a.seed}.csv")
    f = f.sort_values("datasource_index")
    s = f["influence"].to_numpy()
    n = len(s)
    X = mask_design(masks_only(a.seed, manifest["model"], layers), np.arange(n))
    resid = s - X @ np.linalg.lstsq(X, s, rcond=None)[0]
    folds = np.arange(n) % 10
    cross = np.empty(n)
    for k in range(10):
        te = folds == k
        cross[te] = s[te] - X[te] @ np.linalg.lstsq(X[~te], s[~te], rcond=None)[0]
    print(f"{n} instances, {X.shape[1] - 1} mask units ({'+'.join(layers)})")
    print(f"variance explained by the mask bits: {1 - resid.var() / s.var():.3f} "
          f"(cross-fitted: {1 - cross.var() / s.var():.3f}); score std {s.std():.4f}")
    if "noisy" in f:
        noisy = f["noisy"].to_numpy().astype(bool)
        k = n // 10

        def found(score):
            return int(noisy[np.argsort(score, kind="stable")[:k]].sum())

        print(f"flipped in the 10% lowest: scores {found(s)}, cross-fitted residuals {found(cross)}, "
              f"a random 10% about {noisy.sum() / 10:.0f}")
        print(f"mean score flipped {s[noisy].mean():+.4f}, clean {s[~noisy].mean():+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
