"""The mislabel-detection table of docs/measurements.md from a run made with ``--label-noise`` (and
optionally cleanlab's reference, ``bench/cleanlab_reference.py``): per method, the flipped labels
found in its first 5/10/20% (mean and sample sd over trials), its measured cost in training epochs,
and the test accuracy after removing its first N and 2N samples (N = the number of flipped labels),
paired against Loss (mean difference and its sd over trials).

    .venv/bin/python bench/detection_table.py /work/runs/detect35 --cleanlab /work/runs/cleanlab35/cleanlab.csv
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import pandas as pd


def _ms(values: pd.Series, scale: float = 100.0, digits: int = 1) -> str:
    v = values.dropna() * scale
    if not len(v):
        return "-"
    sd = f" +- {v.std(ddof=1):.{digits}f}" if len(v) > 1 else ""
    return f"{v.mean():.{digits}f}{sd}"


def table(run: Path, cleanlab: Optional[Path] = None, base: str = "Loss") -> str:
    at = pd.read_csv(run / "summary" / "detection_at.csv")
    scores = pd.concat([pd.read_csv(f).assign(method=f.parent.name, n=int(f.stem.split("_")[3]),
                                              seed=int(f.stem.split("_")[-1]))
                        for f in sorted((run / "score").glob("*/score_delete_worst_*_seed_*.csv"))], ignore_index=True)
    sizes = sorted(n for n in scores.n.unique() if n > 0)
    acc = scores.pivot_table(index=["seed"], columns=["method", "n"], values="test_accuracy")
    head = (["method", "trials", "found in first 5%", "10%", "20%", "cost (epochs)"]
            + [f"test acc. after removing {n} (%)" for n in sizes] + [f"{n}: minus {base} (pp)" for n in sizes])
    lines = ["| " + " | ".join(head) + " |", "| --- | " + " | ".join("---:" for _ in head[1:]) + " |"]
    for method, g in at.groupby("method", sort=False):
        cells = [method, str(g.seed.nunique()), _ms(g.found_at_5), _ms(g.found_at_10), _ms(g.found_at_20),
                 _ms(g.cost_epochs, 1.0, 2)]
        cells += [_ms(acc[(method, n)], 100.0, 2) if (method, n) in acc else "-" for n in sizes]
        cells += [_ms(acc[(method, n)] - acc[(base, n)], 100.0, 2)
                  if (method, n) in acc and (base, n) in acc and method != base else "-" for n in sizes]
        lines.append("| " + " | ".join(cells) + " |")
    if sizes and ("No_Removal", 0) in acc:
        cells = ["No_Removal (nothing removed)", str(acc[("No_Removal", 0)].notna().sum()), "", "", "", ""]
        cells += [_ms(acc[("No_Removal", 0)], 100.0, 2) for _ in sizes] + ["" for _ in sizes]
        lines.append("| " + " | ".join(cells) + " |")
    if cleanlab is not None and cleanlab.is_file():
        import json
        c = pd.read_csv(cleanlab)
        k = int(c.folds.iloc[0])
        epochs = json.loads((run / "manifest.json").read_text())["epochs"]
        # k trainings of the run's epochs, each on (k - 1) / k of the training set
        cost = f"{k * epochs * (k - 1) / k:.0f} ({k} trainings)"
        lines.append(f"| cleanlab, {k}-fold probabilities of the same network | {len(c)} | "
                     f"{_ms(c.found_at_5)} | {_ms(c.found_at_10)} | {_ms(c.found_at_20)} | "
                     f"{cost} |" + "".join(" - |" for _ in sizes * 2))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--cleanlab", type=Path)
    p.add_argument("--base", default="Loss", help="the method the paired differences are taken against")
    a = p.parse_args()
    print(table(a.run, a.cleanlab, a.base))


if __name__ == "__main__":
    main()
