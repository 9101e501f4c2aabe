"""The linear datamodeling score in dattri's setting (issue 36): MNIST-10, 5,000 training and 500
test images, logistic regression and the MLP, M = 50 random halves, per-test-target LDS over 100
test images, both counterfactuals; every method the network supports. Each configuration is one
driver run in ``--work`` (resumable: rerun the same command); the table goes to stdout with dattri's
published figures beside it.

    .venv/bin/python bench/bench_lds.py --work /work/runs/bench_lds --data-dir ../shared/datasets/mnist
    .venv/bin/python bench/bench_lds.py --work /work/runs/bench_lds --table-only

Differences from dattri's protocol, said in the table: this project's training (SGD, lr 0.05, batch
32, 20 epochs, no augmentation here) instead of dattri's, and its own MLP (``models.networks``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
#: dattri's published LDS (NeurIPS 2024 benchmark, MNIST-10, 5,000 training / 500 test images, 50 models
#: on random halves), as quoted in issue 36 (approximate values read from its table)
DATTRI = {("logreg", "Influence_functions"): 0.80, ("logreg", "TRAK-50"): 0.68, ("logreg", "TracIn"): 0.33,
          ("mlp", "TRAK-50"): 0.45, ("mlp", "Influence_functions"): 0.26}
METHODS = {"logreg": ["Hara", "Ours", "Influence_functions", "Influence_functions_ekfac", "TracIn", "Random"],
           "mlp": ["Hara", "Ours", "Influence_functions", "Influence_functions_ekfac", "TracIn", "Turnover_dropout",
                   "Random"]}


def run(work: Path, model: str, seeds: str, data_dir: str, subsets: int, targets: int, n_train: int = 5000,
        n_test: int = 500, epochs: int = 20) -> Path:
    out = work / f"{model}_{seeds}"
    cmd = [sys.executable, str(ROOT / "eval_sgd_influence.py"), "-ds", "mnist", "--data-dir", data_dir,
           "--n-train", str(n_train), "--n-test", str(n_test), "--n-val", str(n_test), "-m", model, "-e", str(epochs),
           "--no-augment", "-r", "0", "-ra",
           "--lds", str(subsets), "--lds-targets", str(targets), "--lds-seeds", seeds, "--no-progress",
           "--methods", *METHODS[model], "-o", str(out)]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def table(work: Path) -> str:
    lines = ["| model | counterfactual | method | LDS (mean Spearman over targets) [95% interval] | dattri |",
             "| --- | --- | --- | --- | ---: |"]
    for f in sorted(work.glob("*/summary/lds.csv")):
        model = f.parent.parent.name.split("_")[0]
        for r in pd.read_csv(f).itertuples():
            quoted = DATTRI.get((model, r.method))
            lines.append(f"| {model} | {r.counterfactual} | {r.method} | {r.spearman:.3f} [{r.spearman_low:.3f}, "
                         f"{r.spearman_high:.3f}] | {'' if quoted is None else quoted} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "mnist"))
    p.add_argument("--subsets", type=int, default=50)
    p.add_argument("--targets", type=int, default=100)
    p.add_argument("--models", nargs="+", default=["logreg", "mlp"])
    p.add_argument("--seeds", nargs="+", default=["same", "fresh"], choices=["same", "fresh"])
    p.add_argument("--n-train", type=int, default=5000, help="dattri's 5,000 (smaller: a smoke test)")
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--table-only", action="store_true")
    a = p.parse_args()
    if not a.table_only:
        for model in a.models:
            for seeds in a.seeds:
                run(a.work, model, seeds, a.data_dir, a.subsets, a.targets, a.n_train, a.n_test, a.epochs)
    print(table(a.work))


if __name__ == "__main__":
    main()
