"""EK-FAC variants on a finished label-noise run: flipped labels among the 10% most harmful.

Reuses a run folder's trained network (seed 0, final parameters) and its settings (manifest.json):
fits EK-FAC once per ``--fishers`` label mode (seed 0, as the estimator), forms
``v = (G + alpha I)^-1 u`` for every ``--dampings`` alpha, and scores all variants in ONE pass
over the training set: the per-sample gradients come in factored form from the same layer taps
as the fit (forward, and one data-gradient backward with the true labels' cotangent ``p - e_y``),
``score_n = sum_layers sum_t g_t' V [a_t, 1]`` (batch norm: ``<v_gamma, g xhat> + <v_beta, g>``),
divided by ``n_train`` as ``influence_scores``. The printed ``max |diff|`` against the run's own
Influence_functions_ekfac CSV (when its Fisher and damping are among the variants) checks both
this scoring and that the code still gives the run's result.

    python bench/ekfac_detection.py RUN --data-dir DIR [--fishers sampled exact empirical]
        [--dampings 0.01 0.1 1] [--out CSV]

Counts use the pipeline's order (ascending score, ties by position). Rows also give the Spearman
correlation with the run's Influence_functions (MINRES) scores when that CSV exists. Not a
pipeline estimator: no retraining; the test accuracy of a variant needs a run (``--ekfac-fisher``,
``--damping``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def factored_scores(ek, learner, data, vs: dict) -> dict:
    """``<v, grad l(z_j)> / n`` for every v of ``vs`` (a dict of parameter dicts), one pass, split by
    block: ``{key: (n_blocks, n)}`` (the score is the sum over blocks, the preconditioner being
    block-diagonal)."""
    from datasets.batches import split_batches

    n = len(data.train)
    keys = list(vs)
    mats = []  # per block: stacked layer matrices (k, out, in + 1), or bn (k, C) pairs
    for b in ek.blocks:
        if b.kind == "bn":
            mats.append([np.stack([np.asarray(vs[k][name], np.float64).reshape(-1) for k in keys]).astype(np.float32)
                         for name in b.names])
        else:
            mats.append(np.stack([b.to_matrix(vs[k]) for k in keys]).astype(np.float32))
    out = np.zeros((len(keys), len(ek.blocks), n))
    pos = 0
    for x, y in split_batches(data, data.train, ek.batch):
        g = ek.graph(len(x))
        p = g.forward(x)
        acts = [b.activations(h) for b, h in zip(ek.blocks, g.inputs())]
        grads = g.backward(p - np.eye(p.shape[1])[np.asarray(y).reshape(-1)])
        s = np.zeros((len(keys), len(ek.blocks), len(x)))
        for i, (b, M, a, gout) in enumerate(zip(ek.blocks, mats, acts, grads)):
            go = b.output_grads(gout)
            if b.kind == "bn":
                gg = np.einsum("nct,nct->nc", go, a)  # (B, C) per-sample gradients of gamma, beta
                gb = go.sum(axis=2)
                s[:, i] = M[0] @ gg.T + M[1] @ gb.T
                continue
            B, T, din = a.shape
            k, dout = M.shape[0], M.shape[1]
            W = M[:, :, :-1].transpose(2, 0, 1).reshape(din, k * dout)  # (in, k*out)
            z = (a.reshape(B * T, din) @ W).reshape(B, T, k, dout) + M[:, :, -1][None, None]
            s[:, i] = np.einsum("btko,bto->kb", z, go)
        out[:, :, pos:pos + len(x)] = s
        pos += len(x)
    return {k: out[i] / n for i, k in enumerate(keys)}


def load_run(run: Path, data_dir: str):
    """A finished label-noise run's trial 0: ``(manifest, data with the flipped labels, their
    mask, the learner at the final parameters, u, {method: stored scores by position})``."""
    from cleansing.influence_csv import read_influence_csv, scores_by_position
    from cleansing.train import TrainConfig, learner_from_file
    from cleansing.trial import validation_loss_grad
    from datasets import load_dataset
    from datasets.noise import apply_label_noise

    man = json.loads((run / "manifest.json").read_text())
    data = load_dataset(man["dataset"], 0, data_dir=data_dir, n_train=man["n_train"], n_val=man["n_val"],
                        n_test=man["n_test"])
    data, noisy = apply_label_noise(data, man["label_noise"], 0)
    learner = learner_from_file(TrainConfig(model=man["model"]), data, run / "weights" / "seed_00" / "final.h5")
    u = validation_loss_grad(learner, data)
    stored = {}
    for method in ("Influence_functions_ekfac", "Influence_functions", "Random"):
        f = run / "influence" / method / f"influence_{method.lower()}_0.csv"
        if f.is_file():
            stored[method] = scores_by_position(read_influence_csv(f, len(data.train)))
    return man, data, noisy, learner, u, stored


def ranking(scores: np.ndarray) -> np.ndarray:
    return np.lexsort((np.arange(len(scores)), scores))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--fishers", nargs="+", default=["sampled", "exact", "empirical"])
    ap.add_argument("--dampings", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    ap.add_argument("--fraction", type=float, default=0.1, help="checked fraction of the ranking (0.1)")
    ap.add_argument("--out", help="write the table as CSV")
    ap.add_argument("--blocks", action="store_true",
                    help="also rank each variant without batch norm's blocks (Kronfluence tracks only affine and "
                         "convolution layers) and print each block's share of the flipped labels' scores")
    args = ap.parse_args()
    import logging
    logging.getLogger("nnabla").setLevel(logging.WARNING)
    import pandas as pd
    from scipy.stats import spearmanr

    from influence_functions.ekfac import Ekfac, EkfacOptions

    man, data, noisy, learner, u, stored = load_run(Path(args.run), args.data_dir)
    n = len(data.train)
    vs, fits, ek = {}, {}, None
    for fisher in args.fishers:
        t0 = time.time()
        ek = Ekfac(learner, data, EkfacOptions(fisher), seed=0)
        fits[fisher] = time.time() - t0
        print(f"{fisher}: fit {fits[fisher]:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in ek.info.seconds.items())})",
              flush=True)
        for d in args.dampings:
            vs[(fisher, d)] = ek.inverse_product(u, d)
    t0 = time.time()
    parts = factored_scores(ek, learner, data, vs)
    scores = {k: p.sum(axis=0) for k, p in parts.items()}
    if args.blocks:
        bn = np.array([b.kind == "bn" for b in ek.blocks])
        for (f, d), p in list(parts.items()):
            scores[(f + " without bn", d)] = p[~bn].sum(axis=0)
        for (f, d), p in parts.items():
            flipped = p[:, noisy]
            print(f"{f} damping {d:g}: mean score of the flipped labels by block: " +
                  ", ".join(f"{b.prefix} {m:+.2e}" for b, m in zip(ek.blocks, flipped.mean(axis=1))))
    print(f"scores of {len(vs)} variants in one pass: {time.time() - t0:.1f} s", flush=True)
    k = int(round(args.fraction * n))
    rows = []
    for name, s in [*((f"ekfac {f} damping {d:g}", v) for (f, d), v in scores.items()), *stored.items()]:
        row = {"variant": name, "found": int(noisy[ranking(s)[:k]].sum()), "of": int(noisy.sum()), "checked": k}
        if "Influence_functions" in stored:
            row["spearman_vs_minres"] = round(float(spearmanr(s, stored["Influence_functions"])[0]), 4)
        rows.append(row)
    if "Influence_functions_ekfac" in stored and (man["ekfac_fisher"], man["damping"]) in scores:
        ref = stored["Influence_functions_ekfac"]
        diff = np.abs(scores[(man["ekfac_fisher"], man["damping"])] - ref).max() / np.abs(ref).max()
        print(f"max |diff| / max |score| against the run's EK-FAC CSV ({man['ekfac_fisher']}, "
              f"damping {man['damping']:g}): {diff:.2e}")
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
