"""Turn-over dropout with label noise: flipped labels found among the 10% most harmful, against the
number of TD networks averaged (``--td-networks``), for the plain and the residual score.

Reads a finished ``eval_turnover_dropout.py --label-noise F --td-networks R`` run (its cached
networks; nothing is trained) and prints, for r = 1..R (the first r networks), how many flipped
samples each ranking puts into its 10% lowest scores, the mean flipped-minus-clean score in units
of the scores' standard deviation, and the correlation of the networks' scores with each other.

    .venv/bin/python bench/td_ensemble.py OUTPUT_DIR --data-dir DIR [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--data-dir", help="where the run's dataset files are (as given to the run)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import cleansing.cli  # noqa: F401  (quiet nnabla)
    from cleansing.config import make_config
    from cleansing.estimator import RunSettings
    from cleansing.paths import RunPaths
    from cleansing.train import TrainConfig, load_trace
    from cleansing.trial import load_artefact, load_noisy_trial_data
    from estimators import REGISTRY
    from turnover_dropout import TDOptions
    from turnover_dropout.influence import residual_validation_influence, validation_influence
    from turnover_dropout.train import network_config, network_name, new_td_learner

    out = Path(a.out)
    m = json.loads((out / "manifest.json").read_text())
    train = TrainConfig(model=m["model"], epochs=m["epochs"], batch_size=m["batch_size"], lr=m["lr"],
                        augment=m["augment"])
    cfg = make_config(REGISTRY, dataset=m["dataset"], train=train, data_dir=a.data_dir, n_train=m["n_train"],
                      n_val=m["n_val"], n_test=m["n_test"], label_noise=m["label_noise"],
                      td_layers=tuple(m["td_layers"]))
    layers = cfg.option(TDOptions).layers(RunSettings.of(cfg))
    data, noisy, _ = load_noisy_trial_data(cfg, a.seed)
    if not noisy.any():
        raise SystemExit("this run has no flipped labels: use a run made with --label-noise")
    paths = RunPaths(out)
    trace = load_trace(paths.trace(a.seed), len(data.train))
    k = len(noisy) // 10

    def found(score):
        return int(noisy[np.argsort(score, kind="stable")[:k]].sum())

    def shift(score):
        return float((score[noisy].mean() - score[~noisy].mean()) / score.std())

    plain, resid = [], []
    rows = []
    for net in range(m.get("td_networks", 1)):
        config = network_config(data, trace, a.seed, layers, network=net)
        stored = load_artefact(paths, a.seed, network_name(net), config)
        if stored is None:
            raise SystemExit(f"network {net} was not stored in {out}")
        td = new_td_learner(train, data, a.seed, layers, network=net)
        td.set_state(stored.params)
        plain.append(validation_influence(td, data))
        resid.append(residual_validation_influence(td, data))
        p, r = np.mean(plain, axis=0), np.mean(resid, axis=0)
        rows.append({"networks": net + 1, "plain_found": found(p), "residual_found": found(r),
                     "plain_shift": round(shift(p), 3), "residual_shift": round(shift(r), 3),
                     "this_network_plain_found": found(plain[-1]), "this_network_residual_found": found(resid[-1])})
        print(json.dumps(rows[-1]), flush=True)
    c = np.corrcoef(plain)
    print(json.dumps({"random_10pct_expected": float(noisy.sum() / 10), "k": k,
                      "mean_correlation_between_networks": float(c[np.triu_indices(len(c), 1)].mean())
                      if len(c) > 1 else None}))


if __name__ == "__main__":
    main()
