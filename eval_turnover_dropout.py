"""Data cleansing with turn-over dropout (Kobayashi et al., 2020): train the network once with
instance-specific dropout masks, score every training sample by the mean validation-loss gap
between the sub-network that never saw it and the one that did, then retrain (standard training,
no turn-over dropout) without the most harmful samples and summarise, beside Random removal.

Besides the tree of eval_sgd_influence.py it writes, per trial: summary/turnover_loss_curve_<seed>.csv
and fig/turnover_loss_curve_<seed>.png (paper Fig. 2), summary/explain_errors_<seed>.csv and
fig/explain_errors_<seed>.png (paper Fig. 5), and the TD network in weights/seed_NN/turnover/."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from cleansing.cli import OneLineParser, add_run_arguments, positive_int, run_main
from cleansing.pipeline import DEFAULT_REMOVE, config_fields, run
from turnover_dropout import NAME, TDRunConfig


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, "output_turnover_dropout", DEFAULT_REMOVE, explain_max=8)
    p.add_argument("--methods", nargs="+", default=[NAME, "Random"],
                   help="estimators to run (default: %(default)s; Turnover_dropout_self (self-influence, to find "
                        "mislabeled samples), Hara and Ours may be added)")
    p.add_argument("--td-layers", nargs="+", default=None, metavar="POINT",
                   help="mask points turn-over dropout masks: cnn6 block1 block2 block3, mlp fc1, or 'all' "
                        "(default: the topmost only, cnn6 block3 = the 128 maps feeding the affine layer)")
    p.add_argument("--td-networks", type=positive_int, default=1, metavar="R",
                   help="train R turn-over dropout networks per trial, each with its own masks, and average "
                        "their scores (R times the TD training; 1 = the paper's method, the default)")
    return p


def config_from_args(a: argparse.Namespace) -> TDRunConfig:
    layers = tuple(t for s in a.td_layers for t in s.split(",") if t) if a.td_layers else None
    return TDRunConfig(**config_fields(a), td_layers=layers, td_networks=a.td_networks)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    summary = run(config_from_args(args), overwrite=args.overwrite)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"results in {args.output}/ (summary/summary.csv, fig/result.png, "
          f"fig/turnover_loss_curve_<seed>.png, fig/explain_errors_<seed>.png)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
